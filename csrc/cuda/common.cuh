// Device-side helpers shared by the kernels in csrc/cuda/*.cu.
//
// torch's CUDAExtension builds with -D__CUDA_NO_HALF_CONVERSIONS__, -D__CUDA_NO_HALF_OPERATORS__
// and -D__CUDA_NO_BFLOAT16_CONVERSIONS__, so nothing here relies on the implicit conversions or
// operators of __half / __nv_bfloat16: every conversion goes through the explicit intrinsics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ncs {
namespace cuda {
namespace detail {

template <typename T>
struct Num;

template <>
struct Num<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
  static __device__ __forceinline__ float zero() { return 0.0f; }
};

template <>
struct Num<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ __half zero() { return __ushort_as_half(static_cast<unsigned short>(0)); }
};

template <>
struct Num<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ __nv_bfloat16 zero() {
    return __ushort_as_bfloat16(static_cast<unsigned short>(0));
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return Num<T>::to_float(v);
}
template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return Num<T>::from_float(v);
}
template <typename T>
__device__ __forceinline__ T zero() {
  return Num<T>::zero();
}

// Bit s of a packed int32 word. `>>` on a negative int32 may be arithmetic; masking with 1 after
// the shift makes the result right either way.
__device__ __forceinline__ bool word_bit(int32_t word, int s) { return ((word >> s) & 1) != 0; }

// The mask bit of weight[n, k] for a packed mask with `words` int32 words per row.
__device__ __forceinline__ bool mask_bit(const int32_t* __restrict__ packed, int64_t words, int64_t n, int64_t k) {
  return word_bit(__ldg(packed + n * words + (k >> 5)), static_cast<int>(k & 31));
}

// Launch-shape helpers for the element-wise [rows, cols] kernels: x covers columns with a
// grid-stride loop, y covers rows with a grid-stride loop (gridDim.y is capped at 65535).
constexpr int kEltThreads = 256;

inline dim3 elementwise_grid(int64_t rows, int64_t cols) {
  int64_t gx = (cols + kEltThreads - 1) / kEltThreads;
  if (gx > 4096) gx = 4096;
  if (gx < 1) gx = 1;
  int64_t gy = rows;
  if (gy > 65535) gy = 65535;
  if (gy < 1) gy = 1;
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), 1);
}

// The grid-stride loops of an element-wise [n, k] kernel launched on elementwise_grid: calls
// f(i, keep) for every element (row, c), with i = row * k + c and keep its mask bit (true
// everywhere when packed is nullptr). Threads run along a row (k), so the 32 lanes of a warp read
// 32 consecutive elements and, since blockDim.x is a multiple of 32 and the row loop starts at a
// multiple of 32, exactly one packed word: one broadcast load per warp, coalesced data accesses.
template <class F>
__device__ __forceinline__ void for_each_element(const int32_t* __restrict__ packed, int64_t n, int64_t k, F&& f) {
  const int64_t words = (k + 31) >> 5;
  for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
    const int32_t* pr = packed == nullptr ? nullptr : packed + row * words;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < k;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      f(row * k + c, pr == nullptr || word_bit(__ldg(pr + (c >> 5)), static_cast<int>(c & 31)));
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace ncs
