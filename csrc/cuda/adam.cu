// Fused strict masked Adam / AdamW step: one pass over param, grad, exp_avg, exp_avg_sq, the
// task's bit taken from the packed word. Semantics of ncs_kernels.reference.masked_adam_step_:
//   g = grad (+ wd * p if L2);  m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g g;
//   p' = p (* (1 - lr wd) if decoupled) - lr (m' / bc1) / (sqrt(v' / bc2) + eps)
// computed in fp32, and where the bit is 0 nothing at all is written (strict masking).
// The arithmetic uses the explicitly rounded intrinsics so that nvcc cannot contract it into
// FMAs: with fp32 state each step rounds once, as the reference's separate element-wise ops do
// (results agree to within an ulp or so: PyTorch divides by a scalar as a multiply by its
// reciprocal). With 16-bit state the math is still fp32, rounded once when stored, where the
// reference rounds after every op in the state dtype.
#include "common.cuh"
#include "ncs_cuda.cuh"

namespace ncs {
namespace cuda {
namespace {

using namespace detail;  // the helpers of common.cuh

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    masked_adam_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ exp_avg,
                       T* __restrict__ exp_avg_sq, const int32_t* __restrict__ packed, int64_t n, int64_t k,
                       AdamScalars s) {
  for_each_element(packed, n, k, [&](int64_t i, bool keep) {
    if (!keep) return;
    const float p = to_float(param[i]);
    float g = to_float(grad[i]);
    if (s.l2) g = __fadd_rn(g, __fmul_rn(s.weight_decay, p));
    const float m = __fadd_rn(__fmul_rn(s.beta1, to_float(exp_avg[i])), __fmul_rn(s.one_minus_beta1, g));
    const float v = __fadd_rn(__fmul_rn(s.beta2, to_float(exp_avg_sq[i])),
                              __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, s.bias_correction2)), s.eps);
    float pn = s.decoupled ? __fmul_rn(p, s.decay_factor) : p;
    pn = __fsub_rn(pn, __fdiv_rn(__fmul_rn(s.lr, __fdiv_rn(m, s.bias_correction1)), denom));
    exp_avg[i] = from_float<T>(m);
    exp_avg_sq[i] = from_float<T>(v);
    param[i] = from_float<T>(pn);
  });
}

}  // namespace

template <typename T>
cudaError_t masked_adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, const int32_t* packed, int64_t n,
                             int64_t k, const AdamScalars& s, cudaStream_t stream) {
  if (n <= 0 || k <= 0) return cudaSuccess;
  masked_adam_kernel<T><<<detail::elementwise_grid(n, k), kEltThreads, 0, stream>>>(param, grad, exp_avg,
                                                                                      exp_avg_sq, packed, n, k, s);
  return cudaGetLastError();
}

#define NCS_INSTANTIATE_ADAM(T)                                                                        \
  template cudaError_t masked_adam_step<T>(T*, const T*, T*, T*, const int32_t*, int64_t, int64_t,    \
                                           const AdamScalars&, cudaStream_t);

NCS_INSTANTIATE_ADAM(float)
NCS_INSTANTIATE_ADAM(__half)
NCS_INSTANTIATE_ADAM(__nv_bfloat16)

#undef NCS_INSTANTIATE_ADAM

}  // namespace cuda
}  // namespace ncs
