// cross_masked_linear on the CPU: masked_linear(feature_cross(emb), W, M, b) without the
// [B, F*F + F*d] crossed input, in forward or backward.
//
// The Gram block G = emb emb^T is symmetric, so its F*F columns carry only T = F(F+1)/2
// distinct values per sample. We fold the weight instead of expanding the input:
//   Wf[n, p(i,j)] = Wm[n, i*F+j] + Wm[n, j*F+i]   (i < j),   Wf[n, p(i,i)] = Wm[n, i*F+i]
// (Wm = W ⊙ M), and use the upper triangle Gu [B, T] of G. Then
//   y      = Gu Wf_G^T + E Wf_E^T + b                     (E = emb viewed [B, F*d])
//   dGu    = dy Wf_G      -> S = dG + dG^T is exactly dGu off the diagonal, 2 dGu on it
//   d(emb) = S emb + dy Wf_E                               (one bmm into the dE buffer)
//   dW[:, i*F+j] = dW[:, j*F+i] = (dy^T Gu)[:, p(i,j)],  dW[:, F*F:] = dy^T E,  then ⊙ M
// At F=20, d=64 every GEMM runs over K' = 210 + 1280 = 1490 instead of 1680 columns (-11 %
// FLOPs in all three GEMMs), and nothing but emb is needed from forward.
// The *_saved entry points keep Gu and Wf from forward for backward (no second Gram bmm or fold
// per step, for 4 B x (B T + N (T + F*d)) of memory until backward; the eager CPU path uses them).
#include "ncs_native.h"
#include "cpu/cpu_common.h"

#include <utility>
#include <vector>

namespace ncs {

namespace {

struct CrossDims {
  int64_t B, F, d, FF, T, Fd, K;
};

CrossDims dims_of(const at::Tensor& emb) {
  CrossDims c;
  c.B = emb.size(0);
  c.F = emb.size(1);
  c.d = emb.size(2);
  c.FF = c.F * c.F;
  c.T = c.F * (c.F + 1) / 2;
  c.Fd = c.F * c.d;
  c.K = c.FF + c.Fd;
  TORCH_CHECK(c.F >= 1, "emb: expected at least one field, got shape ", emb.sizes());
  return c;
}

CrossDims cross_dims(const at::Tensor& emb, const at::Tensor& weight) {
  const CrossDims c = dims_of(emb);
  TORCH_CHECK(weight.size(1) == c.K, "weight: expected in_features F*F + F*d = ", c.K, " for emb of shape ",
              emb.sizes(), ", got weight shape ", weight.sizes());
  return c;
}

// (i, j) of the T upper-triangle pairs, row-major (i <= j).
std::vector<std::pair<int64_t, int64_t>> upper_pairs(int64_t F) {
  std::vector<std::pair<int64_t, int64_t>> p;
  p.reserve(F * (F + 1) / 2);
  for (int64_t i = 0; i < F; ++i)
    for (int64_t j = i; j < F; ++j) p.emplace_back(i, j);
  return p;
}

// Wf [N, T + F*d] = fold(W ⊙ M), see the file comment.
template <typename scalar_t>
at::Tensor fold_weight(const at::Tensor& weight, const at::Tensor& packed, const CrossDims& c) {
  const int64_t N = weight.size(0), nw = cpu::words_for(c.K), Kf = c.T + c.Fd;
  at::Tensor wf = at::empty({N, Kf}, weight.options());
  const scalar_t* w = weight.data_ptr<scalar_t>();
  const int32_t* pk = packed.data_ptr<int32_t>();
  scalar_t* out = wf.data_ptr<scalar_t>();
  const auto pairs = upper_pairs(c.F);
  at::parallel_for(0, N, cpu::row_grain(c.K), [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> row(c.K);  // one masked row at a time, per task
    for (int64_t n = r0; n < r1; ++n) {
      cpu::mask_row<scalar_t>(w + n * c.K, row.data(), pk + n * nw, c.K);
      scalar_t* o = out + n * Kf;
      for (int64_t p = 0; p < c.T; ++p) {
        const int64_t i = pairs[p].first, j = pairs[p].second;
        o[p] = i == j ? row[i * c.F + i] : row[i * c.F + j] + row[j * c.F + i];
      }
      std::copy(row.data() + c.FF, row.data() + c.K, o + c.T);
    }
  });
  return wf;
}

// Gu [B, T]: upper triangle of emb[b] emb[b]^T (bmm, then gathered; both are transient).
template <typename scalar_t>
at::Tensor gram_upper(const at::Tensor& emb, const CrossDims& c) {
  const at::Tensor g = at::bmm(emb, emb.transpose(1, 2));  // [B, F, F], contiguous
  at::Tensor gu = at::empty({c.B, c.T}, emb.options());
  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* up = gu.data_ptr<scalar_t>();
  at::parallel_for(0, c.B, cpu::row_grain(c.FF), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* gb = gp + b * c.FF;
      scalar_t* ub = up + b * c.T;
      for (int64_t i = 0; i < c.F; ++i) {
        const int64_t len = c.F - i;
        std::copy(gb + i * c.F + i, gb + i * c.F + c.F, ub);
        ub += len;
      }
    }
  });
  return gu;
}

// S [B, F, F] from dGu [B, T]: S_ij = S_ji = dGu_p(i,j) (i < j), S_ii = 2 dGu_p(i,i).
template <typename scalar_t>
at::Tensor unfold_sym(const at::Tensor& dgu, const CrossDims& c) {
  at::Tensor s = at::empty({c.B, c.F, c.F}, dgu.options());
  const scalar_t* up = dgu.data_ptr<scalar_t>();
  scalar_t* sp = s.data_ptr<scalar_t>();
  at::parallel_for(0, c.B, cpu::row_grain(c.FF), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* ub = up + b * c.T;
      scalar_t* sb = sp + b * c.FF;
      for (int64_t i = 0; i < c.F; ++i) {
        sb[i * c.F + i] = scalar_t(2) * ub[0];
        for (int64_t j = i + 1; j < c.F; ++j) {
          const scalar_t v = ub[j - i];
          sb[i * c.F + j] = v;
          sb[j * c.F + i] = v;
        }
        ub += c.F - i;
      }
    }
  });
  return s;
}

// dW[:, :F*F] from dWu [N, T] (both triangles), then the whole row masked.
template <typename scalar_t>
void scatter_gram_grad_and_mask(at::Tensor& dw, const at::Tensor& dwu, const at::Tensor& packed,
                                const CrossDims& c) {
  const int64_t N = dw.size(0), nw = cpu::words_for(c.K);
  scalar_t* o = dw.data_ptr<scalar_t>();
  const scalar_t* u = dwu.data_ptr<scalar_t>();
  const int32_t* pk = packed.data_ptr<int32_t>();
  const auto pairs = upper_pairs(c.F);
  at::parallel_for(0, N, cpu::row_grain(c.K), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      scalar_t* row = o + n * c.K;
      const scalar_t* ur = u + n * c.T;
      for (int64_t p = 0; p < c.T; ++p) {
        const int64_t i = pairs[p].first, j = pairs[p].second;
        row[i * c.F + j] = ur[p];
        row[j * c.F + i] = ur[p];
      }
      cpu::mask_row<scalar_t>(row, row, pk + n * nw, c.K);
    }
  });
}

void check_cross(const at::Tensor& emb, const at::Tensor& weight, const at::Tensor& packed) {
  cpu::check_cpu_float("emb", emb, 3);
  cpu::check_cpu_float("weight", weight, 2);
  cpu::check_same_dtype("weight", weight, emb, "emb");
  cpu::check_packed(packed, weight.size(0), weight.size(1));
}

}  // namespace

namespace {

// y, and what backward needs of it: Gu [B, T] and Wf [N, T + F*d] (see the file comment).
std::vector<at::Tensor> forward_impl(const at::Tensor& emb, const at::Tensor& weight, const at::Tensor& packed,
                                     const c10::optional<at::Tensor>& bias) {
  check_cross(emb, weight, packed);
  const CrossDims c = cross_dims(emb, weight);
  cpu::check_bias(bias, weight);
  at::Tensor y, wf, gu;
  AT_DISPATCH_FLOATING_TYPES(emb.scalar_type(), "cross_masked_linear_forward_cpu", [&] {
    wf = fold_weight<scalar_t>(weight, packed, c);
    gu = gram_upper<scalar_t>(emb, c);
    const at::Tensor wg = wf.narrow(1, 0, c.T).t();    // [T, N], leading dimension T + F*d: BLAS reads it in place
    const at::Tensor we = wf.narrow(1, c.T, c.Fd).t(); // [F*d, N]
    y = (bias.has_value() && bias->defined()) ? at::addmm(*bias, gu, wg) : at::mm(gu, wg);
    y.addmm_(emb.view({c.B, c.Fd}), we);
  });
  return {y, gu, wf};
}

// The gradients from dy, emb and, when defined, the forward's Gu and Wf (else rebuilt from emb
// and from weight ⊙ packed): the same arithmetic either way, so the results are bit-identical.
std::vector<at::Tensor> backward_impl(const at::Tensor& dy, const at::Tensor& emb, const CrossDims& c, int64_t N,
                                      const at::Tensor& gu_saved, const at::Tensor& wf_saved,
                                      const at::Tensor& weight, const at::Tensor& packed, bool need_emb, bool need_w,
                                      bool need_b) {
  TORCH_CHECK(dy.size(0) == c.B && dy.size(1) == N, "dy: expected shape [", c.B, ", ", N, "], got ", dy.sizes());
  at::Tensor demb, dw, db;
  AT_DISPATCH_FLOATING_TYPES(emb.scalar_type(), "cross_masked_linear_backward_cpu", [&] {
    const at::Tensor e = emb.view({c.B, c.Fd});
    if (need_w) {
      const at::Tensor gu = gu_saved.defined() ? gu_saved : gram_upper<scalar_t>(emb, c);
      const at::Tensor dwu = at::mm(dy.t(), gu);  // [N, T]
      dw = at::empty({N, c.K}, dy.options());
      // dy^T E straight into the E column block of dW (a strided view BLAS writes in place)
      at::Tensor dw_e = dw.narrow(1, c.FF, c.Fd);
      at::mm_out(dw_e, dy.t(), e);
      scatter_gram_grad_and_mask<scalar_t>(dw, dwu, packed, c);
    }
    if (need_emb) {
      const at::Tensor wf = wf_saved.defined() ? wf_saved : fold_weight<scalar_t>(weight, packed, c);
      const at::Tensor dgu = at::mm(dy, wf.narrow(1, 0, c.T));  // [B, T]
      demb = at::mm(dy, wf.narrow(1, c.T, c.Fd)).view({c.B, c.F, c.d});  // dE, then += S emb
      demb.baddbmm_(unfold_sym<scalar_t>(dgu, c), emb);
    }
  });
  if (need_b) db = dy.sum(0);
  return {demb, dw, db};
}

}  // namespace

at::Tensor cross_masked_linear_forward_cpu(const at::Tensor& emb, const at::Tensor& weight, const at::Tensor& packed,
                                           const c10::optional<at::Tensor>& bias) {
  return forward_impl(emb, weight, packed, bias)[0];
}

std::vector<at::Tensor> cross_masked_linear_forward_saved_cpu(const at::Tensor& emb, const at::Tensor& weight,
                                                              const at::Tensor& packed,
                                                              const c10::optional<at::Tensor>& bias) {
  return forward_impl(emb, weight, packed, bias);
}

std::vector<at::Tensor> cross_masked_linear_backward_cpu(const at::Tensor& dy, const at::Tensor& emb,
                                                         const at::Tensor& weight, const at::Tensor& packed,
                                                         bool need_emb, bool need_w, bool need_b) {
  check_cross(emb, weight, packed);
  cpu::check_cpu_float("dy", dy, 2);
  cpu::check_same_dtype("dy", dy, emb, "emb");
  const CrossDims c = cross_dims(emb, weight);
  return backward_impl(dy, emb, c, weight.size(0), at::Tensor(), at::Tensor(), weight, packed, need_emb, need_w,
                       need_b);
}

std::vector<at::Tensor> cross_masked_linear_backward_saved_cpu(const at::Tensor& dy, const at::Tensor& emb,
                                                               const at::Tensor& gu, const at::Tensor& wf,
                                                               const at::Tensor& packed, bool need_emb, bool need_w,
                                                               bool need_b) {
  cpu::check_cpu_float("emb", emb, 3);
  const std::pair<const char*, const at::Tensor*> two_d[] = {{"dy", &dy}, {"gu", &gu}, {"wf", &wf}};
  for (const auto& [name, t] : two_d) {
    cpu::check_cpu_float(name, *t, 2);
    cpu::check_same_dtype(name, *t, emb, "emb");
  }
  const CrossDims c = dims_of(emb);
  const int64_t N = wf.size(0);
  TORCH_CHECK(gu.size(0) == c.B && gu.size(1) == c.T, "gu: expected shape [", c.B, ", ", c.T, "], got ", gu.sizes());
  TORCH_CHECK(wf.size(1) == c.T + c.Fd, "wf: expected shape [", N, ", ", c.T + c.Fd, "], got ", wf.sizes());
  cpu::check_packed(packed, N, c.K);
  return backward_impl(dy, emb, c, N, gu, wf, at::Tensor(), packed, need_emb, need_w, need_b);
}

}  // namespace ncs
