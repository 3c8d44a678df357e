// Element-wise mask kernels: W ⊙ M, t ⊙= M, and the fp32-workspace -> masked T conversion that
// ends a split-K dW.
//
// Threads run along a row (k), so the 32 lanes of a warp read 32 consecutive elements and, since
// blockDim.x is a multiple of 32 and the row loop starts at a multiple of 32, exactly one packed
// word: one broadcast load of the word per warp, coalesced loads and stores of the data.
#include "common.cuh"
#include "ncs_cuda.cuh"

namespace ncs {
namespace cuda {
namespace {

using detail::from_float;
using detail::kEltThreads;
using detail::to_float;
using detail::word_bit;
using detail::zero;

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    apply_mask_kernel(const T* __restrict__ w, const int32_t* __restrict__ packed, T* out, int64_t n, int64_t k) {
  const int64_t words = (k + 31) >> 5;
  for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
    const T* wr = w + row * k;
    T* orow = out + row * k;
    const int32_t* pr = packed + row * words;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < k;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const bool keep = word_bit(__ldg(pr + (c >> 5)), static_cast<int>(c & 31));
      // select, not multiply: a masked-out NaN/Inf must still give exactly 0
      orow[c] = keep ? wr[c] : zero<T>();
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    mask_inplace_kernel(T* t, const int32_t* __restrict__ packed, int64_t n, int64_t k) {
  const int64_t words = (k + 31) >> 5;
  for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
    T* tr = t + row * k;
    const int32_t* pr = packed + row * words;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < k;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      if (!word_bit(__ldg(pr + (c >> 5)), static_cast<int>(c & 31))) tr[c] = zero<T>();
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    masked_convert_kernel(const float* src, const int32_t* __restrict__ packed, T* out, int64_t n, int64_t k) {
  const int64_t words = (k + 31) >> 5;
  for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
    const float* sr = src + row * k;
    T* orow = out + row * k;
    const int32_t* pr = packed + row * words;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < k;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const bool keep = word_bit(__ldg(pr + (c >> 5)), static_cast<int>(c & 31));
      const float v = sr[c];  // read before the write: out may alias src when T = float
      orow[c] = keep ? from_float<T>(v) : zero<T>();
    }
  }
}

}  // namespace

template <typename T>
cudaError_t apply_mask(const T* weight, const int32_t* packed, T* out, int64_t n, int64_t k, cudaStream_t stream) {
  if (n <= 0 || k <= 0) return cudaSuccess;
  apply_mask_kernel<T><<<detail::elementwise_grid(n, k), kEltThreads, 0, stream>>>(weight, packed, out, n, k);
  return cudaGetLastError();
}

template <typename T>
cudaError_t mask_inplace(T* t, const int32_t* packed, int64_t n, int64_t k, cudaStream_t stream) {
  if (n <= 0 || k <= 0) return cudaSuccess;
  mask_inplace_kernel<T><<<detail::elementwise_grid(n, k), kEltThreads, 0, stream>>>(t, packed, n, k);
  return cudaGetLastError();
}

template <typename T>
cudaError_t masked_convert(const float* src, const int32_t* packed, T* out, int64_t n, int64_t k,
                           cudaStream_t stream) {
  if (n <= 0 || k <= 0) return cudaSuccess;
  masked_convert_kernel<T><<<detail::elementwise_grid(n, k), kEltThreads, 0, stream>>>(src, packed, out, n, k);
  return cudaGetLastError();
}

#define NCS_INSTANTIATE_MASK_OPS(T)                                                                        \
  template cudaError_t apply_mask<T>(const T*, const int32_t*, T*, int64_t, int64_t, cudaStream_t);       \
  template cudaError_t mask_inplace<T>(T*, const int32_t*, int64_t, int64_t, cudaStream_t);               \
  template cudaError_t masked_convert<T>(const float*, const int32_t*, T*, int64_t, int64_t, cudaStream_t);

NCS_INSTANTIATE_MASK_OPS(float)
NCS_INSTANTIATE_MASK_OPS(__half)
NCS_INSTANTIATE_MASK_OPS(__nv_bfloat16)

#undef NCS_INSTANTIATE_MASK_OPS

}  // namespace cuda
}  // namespace ncs
