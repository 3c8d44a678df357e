// The scalars of one Adam/AdamW step, shared by the cpu backend (csrc/cpu/masked_adam.cpp, in the
// param's dtype) and the cuda backend (csrc/cuda_backend.cpp -> csrc/cuda/adam.cu, in fp32).
// Plain C++ (no torch, no CUDA), so both the host compiler and nvcc include it.
#pragma once

#include <cmath>
#include <cstdint>

namespace ncs {

template <typename S>
struct AdamStepScalars {
  S lr;
  S beta1, beta2;
  S one_minus_beta1, one_minus_beta2;
  S bias_correction1, bias_correction2;  // 1 - beta^step
  S eps;
  S weight_decay;
  S decay_factor;  // 1 - lr * weight_decay (decoupled only)
  bool l2;         // weight_decay != 0 and not decoupled: g += wd * p
  bool decoupled;  // weight_decay != 0 and decoupled: p *= decay_factor
};

// Each scalar computed in double (as the reference computes them in Python), rounded once to S.
template <typename S>
inline AdamStepScalars<S> adam_step_scalars(int64_t step, double lr, double beta1, double beta2, double eps,
                                            double weight_decay, bool decoupled) {
  AdamStepScalars<S> s;
  s.lr = static_cast<S>(lr);
  s.beta1 = static_cast<S>(beta1);
  s.beta2 = static_cast<S>(beta2);
  s.one_minus_beta1 = static_cast<S>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<S>(1.0 - beta2);
  s.bias_correction1 = static_cast<S>(1.0 - std::pow(beta1, static_cast<double>(step)));
  s.bias_correction2 = static_cast<S>(1.0 - std::pow(beta2, static_cast<double>(step)));
  s.eps = static_cast<S>(eps);
  s.weight_decay = static_cast<S>(weight_decay);
  s.decay_factor = static_cast<S>(1.0 - lr * weight_decay);
  s.l2 = weight_decay != 0.0 && !decoupled;
  s.decoupled = weight_decay != 0.0 && decoupled;
  return s;
}

}  // namespace ncs
