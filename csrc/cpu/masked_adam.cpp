// Strict masked Adam / AdamW step on the CPU: one fused pass over param, grad, exp_avg and
// exp_avg_sq, reading the mask bits word by word. Where the bit is 0 the old values are
// written back unchanged (a bitwise select, not arithmetic), so p, m and v stay bit-identical there.
// The arithmetic follows ncs_kernels.reference.masked_adam_step_ operation by operation.
#include "ncs_native.h"
#include "cpu/cpu_common.h"
#include "adam_scalars.h"

#include <cmath>
#include <utility>

namespace ncs {

namespace {

template <typename scalar_t>
using AdamConsts = AdamStepScalars<scalar_t>;  // csrc/adam_scalars.h; l2 / decoupled pick the instance

// Update `count` (<= 32) consecutive elements under `word` (all ones for a plain step).
// L2 and DECOUPLED are template parameters so that the loop has no branch left in it and the
// compiler vectorises it (the mask becomes a per-lane select).
template <typename scalar_t, bool L2, bool DECOUPLED>
inline void adam_span(scalar_t* p, const scalar_t* g, scalar_t* m, scalar_t* v, uint32_t word, int count,
                      const AdamConsts<scalar_t>& k) {
  using U = typename cpu::same_width_uint<scalar_t>::type;
  for (int j = 0; j < count; ++j) {
    const U keep = cpu::bit_set(word, j) ? ~U(0) : U(0);
    const scalar_t pj = p[j], mj = m[j], vj = v[j];
    scalar_t gj = g[j];
    if (L2) gj = gj + k.weight_decay * pj;
    const scalar_t m_new = k.beta1 * mj + k.one_minus_beta1 * gj;
    const scalar_t v_new = k.beta2 * vj + k.one_minus_beta2 * gj * gj;
    const scalar_t denom = std::sqrt(v_new / k.bias_correction2) + k.eps;
    scalar_t p_new = pj;
    if (DECOUPLED) p_new = p_new * k.decay_factor;
    p_new = p_new - k.lr * (m_new / k.bias_correction1) / denom;
    m[j] = cpu::select_bits(keep, m_new, mj);
    v[j] = cpu::select_bits(keep, v_new, vj);
    p[j] = cpu::select_bits(keep, p_new, pj);
  }
}

template <typename scalar_t, bool L2, bool DECOUPLED>
void adam_kernel(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                 const at::Tensor* packed, const AdamConsts<scalar_t>& k) {
  const int64_t N = param.size(0), K = param.size(1), nw = cpu::words_for(K);
  scalar_t* p = param.data_ptr<scalar_t>();
  const scalar_t* g = grad.data_ptr<scalar_t>();
  scalar_t* m = exp_avg.data_ptr<scalar_t>();
  scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
  const int32_t* pk = packed ? packed->data_ptr<int32_t>() : nullptr;
  at::parallel_for(0, N, cpu::row_grain(K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * K;
      for (int64_t w = 0; w < nw; ++w) {
        const int64_t off = base + w * 32;
        const int count = static_cast<int>(std::min<int64_t>(32, K - w * 32));
        const uint32_t word = pk ? static_cast<uint32_t>(pk[r * nw + w]) : 0xFFFFFFFFu;
        if (count == 32)
          adam_span<scalar_t, L2, DECOUPLED>(p + off, g + off, m + off, v + off, word, 32, k);
        else
          adam_span<scalar_t, L2, DECOUPLED>(p + off, g + off, m + off, v + off, word, count, k);
      }
    }
  });
}

}  // namespace

void masked_adam_step_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                          const c10::optional<at::Tensor>& packed, int64_t step, double lr, double beta1,
                          double beta2, double eps, double weight_decay, bool decoupled) {
  cpu::check_cpu_float("param", param, 2);
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"grad", &grad}, {"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}};
  for (const auto& nt : others) {
    cpu::check_cpu_float(nt.first, *nt.second, 2);
    cpu::check_same_dtype(nt.first, *nt.second, param, "param");
    TORCH_CHECK(nt.second->sizes() == param.sizes(), nt.first, ": expected shape ", param.sizes(),
                " (the shape of param), got ", nt.second->sizes());
  }
  TORCH_CHECK(step >= 1, "step: expected a 1-based step count >= 1, got ", step);
  const bool masked = packed.has_value() && packed->defined();
  if (masked) cpu::check_packed(*packed, param.size(0), param.size(1));
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "masked_adam_step_cpu", [&] {
    const auto k = adam_step_scalars<scalar_t>(step, lr, beta1, beta2, eps, weight_decay, decoupled);
    const at::Tensor* pk = masked ? &*packed : nullptr;
    if (k.l2)
      adam_kernel<scalar_t, true, false>(param, grad, exp_avg, exp_avg_sq, pk, k);
    else if (k.decoupled)
      adam_kernel<scalar_t, false, true>(param, grad, exp_avg, exp_avg_sq, pk, k);
    else
      adam_kernel<scalar_t, false, false>(param, grad, exp_avg, exp_avg_sq, pk, k);
  });
}

}  // namespace ncs
