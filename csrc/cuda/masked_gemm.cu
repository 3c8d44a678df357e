// The fused-mask GEMMs of masked_linear (strategy "fused"): forward and input gradient unpack the
// mask while loading W tiles; the weight gradient applies it in the epilogue (exact zeros), with
// the batch split across blocks when the [N x K] output has too few tiles to fill the device
// (dW of [512 x 1680] at B = 4096 is 4 x 27 = 108 tiles of 128 x 64).
#include "gemm_tile.cuh"
#include "ncs_cuda.cuh"

namespace ncs {
namespace cuda {

template <typename T>
cudaError_t masked_linear_fwd(const T* x, const T* weight, const int32_t* packed, const T* bias, T* y, int b,
                              int n, int k, cudaStream_t stream) {
  const int64_t words = (static_cast<int64_t>(k) + 31) / 32;
  gemm::RowMajorA<T> a{x, k};
  gemm::MaskedWeightT<T> bw{weight, packed, k, words};
  gemm::StoreBias<T> epi{y, bias, n};
  return gemm::launch_gemm<T>(a, bw, epi, b, n, k, 1, stream);
}

template <typename T>
cudaError_t masked_linear_dx(const T* dy, const T* weight, const int32_t* packed, T* dx, int b, int n, int k,
                             cudaStream_t stream) {
  const int64_t words = (static_cast<int64_t>(k) + 31) / 32;
  gemm::RowMajorA<T> a{dy, n};
  gemm::MaskedWeight<T> bw{weight, packed, k, words};
  gemm::StoreBias<T> epi{dx, nullptr, k};
  return gemm::launch_gemm<T>(a, bw, epi, b, k, n, 1, stream);
}

int dw_splits(int n, int k, int b) { return gemm::choose_splits(n, k, b); }

template <typename T>
cudaError_t masked_linear_dw(const T* dy, const T* x, const int32_t* packed, T* dw, float* workspace, int splits,
                             int b, int n, int k, cudaStream_t stream) {
  if (n <= 0 || k <= 0) return cudaSuccess;
  const int64_t words = (static_cast<int64_t>(k) + 31) / 32;
  const bool split = splits > 1;
  if (split && workspace == nullptr) return cudaErrorInvalidValue;
  gemm::TransposedA<T> a{dy, n};
  gemm::RowMajorB<T> bx{x, k};
  gemm::MaskedGradStore<T> epi{dw, split ? workspace : nullptr, packed, k, words};
  cudaError_t err = gemm::launch_gemm<T>(a, bx, epi, n, k, b, split ? splits : 1, stream);
  if (err != cudaSuccess || !split) return err;
  return masked_convert<T>(workspace, packed, dw, n, k, stream);
}

#define NCS_INSTANTIATE_MASKED_GEMM(T)                                                                      \
  template cudaError_t masked_linear_fwd<T>(const T*, const T*, const int32_t*, const T*, T*, int, int, int, \
                                            cudaStream_t);                                                 \
  template cudaError_t masked_linear_dx<T>(const T*, const T*, const int32_t*, T*, int, int, int, cudaStream_t); \
  template cudaError_t masked_linear_dw<T>(const T*, const T*, const int32_t*, T*, float*, int, int, int, int,   \
                                           cudaStream_t);

NCS_INSTANTIATE_MASKED_GEMM(float)
NCS_INSTANTIATE_MASKED_GEMM(__half)
NCS_INSTANTIATE_MASKED_GEMM(__nv_bfloat16)

#undef NCS_INSTANTIATE_MASKED_GEMM

}  // namespace cuda
}  // namespace ncs
