// Element-wise mask kernels: W ⊙ M, t ⊙= M, and the fp32-workspace -> masked T conversion that
// ends a split-K dW (the loops over the elements: detail::for_each_element).
#include "common.cuh"
#include "ncs_cuda.cuh"

namespace ncs {
namespace cuda {
namespace {

using namespace detail;  // the helpers of common.cuh

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    apply_mask_kernel(const T* __restrict__ w, const int32_t* __restrict__ packed, T* out, int64_t n, int64_t k) {
  // select, not multiply: a masked-out NaN/Inf must still give exactly 0
  for_each_element(packed, n, k, [&](int64_t i, bool keep) { out[i] = keep ? w[i] : zero<T>(); });
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    mask_inplace_kernel(T* t, const int32_t* __restrict__ packed, int64_t n, int64_t k) {
  for_each_element(packed, n, k, [&](int64_t i, bool keep) {
    if (!keep) t[i] = zero<T>();
  });
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    masked_convert_kernel(const float* src, const int32_t* __restrict__ packed, T* out, int64_t n, int64_t k) {
  for_each_element(packed, n, k, [&](int64_t i, bool keep) {
    const float v = src[i];  // read before the write: out may alias src when T = float
    out[i] = keep ? from_float<T>(v) : zero<T>();
  });
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
