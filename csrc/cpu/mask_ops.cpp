// W ⊙ M materialised in the compute dtype (apply_mask_cpu) and a gradient masked in place
// (mask_inplace_cpu), both straight from the packed bits: no float or bool mask tensor exists.
#include "ncs_native.h"
#include "cpu/cpu_common.h"

namespace ncs {

namespace {

template <typename scalar_t>
void mask_rows(const scalar_t* src, scalar_t* dst, const int32_t* packed, int64_t n, int64_t k) {
  const int64_t nw = cpu::words_for(k);
  at::parallel_for(0, n, cpu::row_grain(k), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      cpu::mask_row<scalar_t>(src + r * k, dst + r * k, packed + r * nw, k);
    }
  });
}

}  // namespace

at::Tensor apply_mask_cpu(const at::Tensor& weight, const at::Tensor& packed) {
  cpu::check_cpu_float("weight", weight, 2);
  cpu::check_packed(packed, weight.size(0), weight.size(1));
  at::Tensor out = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "apply_mask_cpu", [&] {
    mask_rows<scalar_t>(weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), packed.data_ptr<int32_t>(),
                        weight.size(0), weight.size(1));
  });
  return out;
}

void mask_inplace_cpu(at::Tensor& t, const at::Tensor& packed) {
  cpu::check_cpu_float("t", t, 2);
  cpu::check_packed(packed, t.size(0), t.size(1));
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "mask_inplace_cpu", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    mask_rows<scalar_t>(p, p, packed.data_ptr<int32_t>(), t.size(0), t.size(1));
  });
}

}  // namespace ncs
