// masked_linear on the CPU: y = x (W ⊙ M)^T + b and its backward.
//
// The GEMMs go through ATen (MKL / oneDNN); what is ours is the mask: W ⊙ M is materialised
// once per call in the compute dtype (O(N*K), negligible next to the O(B*N*K) GEMM), and dW is
// masked in place on the GEMM result. W ⊙ M is recomputed in backward rather than saved, so
// the autograd graph keeps only x, W and the packed bits.
#include "ncs_native.h"
#include "cpu/cpu_common.h"

namespace ncs {

at::Tensor masked_linear_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& packed,
                                     const c10::optional<at::Tensor>& bias) {
  cpu::check_cpu_float("x", x, 2);
  cpu::check_cpu_float("weight", weight, 2);
  cpu::check_same_dtype("weight", weight, x, "x");
  TORCH_CHECK(weight.size(1) == x.size(1), "weight: expected in_features ", x.size(1), " (x.shape[1]), got shape ",
              weight.sizes());
  cpu::check_bias(bias, weight);
  const at::Tensor wm = apply_mask_cpu(weight, packed);
  if (bias.has_value() && bias->defined()) return at::addmm(*bias, x, wm.t());
  return at::mm(x, wm.t());
}

std::vector<at::Tensor> masked_linear_backward_cpu(const at::Tensor& dy, const at::Tensor& x,
                                                   const at::Tensor& weight, const at::Tensor& packed,
                                                   bool need_x, bool need_w, bool need_b) {
  cpu::check_cpu_float("dy", dy, 2);
  cpu::check_cpu_float("x", x, 2);
  cpu::check_cpu_float("weight", weight, 2);
  cpu::check_same_dtype("x", x, dy, "dy");
  cpu::check_same_dtype("weight", weight, dy, "dy");
  TORCH_CHECK(dy.size(0) == x.size(0) && dy.size(1) == weight.size(0), "dy: expected shape [", x.size(0), ", ",
              weight.size(0), "], got ", dy.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "weight: expected in_features ", x.size(1), ", got shape ",
              weight.sizes());
  cpu::check_packed(packed, weight.size(0), weight.size(1));
  at::Tensor dx, dw, db;
  if (need_x) dx = at::mm(dy, apply_mask_cpu(weight, packed));
  if (need_w) {
    // (dy^T x) ⊙ M: dW is a fresh GEMM output, masked in place (exact +0.0 where the bit is 0)
    dw = at::mm(dy.t(), x);
    mask_inplace_cpu(dw, packed);
  }
  if (need_b) db = dy.sum(0);
  return {dx, dw, db};
}

}  // namespace ncs
