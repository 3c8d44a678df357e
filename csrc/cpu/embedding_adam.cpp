// Fused embedding-bag backward + row-wise sparse Adam on the CPU (fbgemm_gpu TBE's design):
// from the pooled gradient grad [bags, d] and the bags' row ids rows [bags, L], sort the valid
// (row, bag) entries by row (ties in bag order; an LSD radix sort), reduce each unique row's contributions
// (grad[bag] / count(bag) for mean pooling) into a d-wide buffer, and apply Adam to that row of
// the table and its moments in place. No [bags*L, d] COO gradient, no coalesce, no sparse_mask.
// Arithmetic: torch.optim.SparseAdam's, operation by operation (constants rounded to the
// tensor dtype as PyTorch rounds a Python scalar), and the same per-row summation order as
// ncs_kernels.embedding_adam.reference_rowwise_adam_ (sorted entries, starting from zero).
#include "ncs_native.h"
#include "cpu/cpu_common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace ncs {

namespace {

// LSD radix sort of (key, val) by key in [0, V), 16 bits a pass: stable, so entries with equal
// keys keep their input (bag) order; O(passes * (n + 65536)) whatever the table size, where the
// comparison sort it replaces was O(n log n) (a fifth of the fused step at the paper's shapes).
void stable_sort_by_row(std::vector<int64_t>& key, std::vector<int64_t>& val, int64_t V) {
  constexpr int kBits = 16;
  constexpr int64_t kRadix = int64_t(1) << kBits;
  const size_t n = key.size();
  if (n < 64) {  // tiny: insertion sort (stable)
    for (size_t i = 1; i < n; ++i) {
      const int64_t k = key[i], v = val[i];
      size_t j = i;
      for (; j > 0 && key[j - 1] > k; --j) {
        key[j] = key[j - 1];
        val[j] = val[j - 1];
      }
      key[j] = k;
      val[j] = v;
    }
    return;
  }
  std::vector<int64_t> k2(n), v2(n), hist(static_cast<size_t>(kRadix));
  for (int shift = 0; shift < 63 && (V - 1) >> shift > 0; shift += kBits) {
    std::fill(hist.begin(), hist.end(), 0);
    for (size_t i = 0; i < n; ++i) ++hist[static_cast<size_t>((key[i] >> shift) & (kRadix - 1))];
    int64_t sum = 0;
    for (auto& h : hist) {
      const int64_t c = h;
      h = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; ++i) {
      const size_t at = static_cast<size_t>(hist[static_cast<size_t>((key[i] >> shift) & (kRadix - 1))]++);
      k2[at] = key[i];
      v2[at] = val[i];
    }
    key.swap(k2);
    val.swap(v2);
  }
}

template <typename scalar_t>
void rowwise_adam_kernel(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& rows,
                         const at::Tensor& grad, int64_t step, double lr, double beta1, double beta2, double eps,
                         bool mean, int64_t padding_idx) {
  const int64_t V = weight.size(0), d = weight.size(1), bags = rows.size(0), L = rows.size(1);
  const int64_t* r = rows.data_ptr<int64_t>();
  const scalar_t* g = grad.data_ptr<scalar_t>();
  scalar_t* p = weight.data_ptr<scalar_t>();
  scalar_t* m = exp_avg.data_ptr<scalar_t>();
  scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();

  // valid entries (row id, bag) in bag order, and each bag's count of valid entries
  const int64_t n_all = bags * L;
  std::vector<int64_t> key, val;
  key.reserve(static_cast<size_t>(n_all));
  val.reserve(static_cast<size_t>(n_all));
  std::vector<int64_t> count(mean ? bags : 0, 0);
  for (int64_t b = 0; b < bags; ++b) {
    for (int64_t j = 0; j < L; ++j) {
      const int64_t id = r[b * L + j];
      if (id == padding_idx) continue;
      TORCH_CHECK(id >= 0 && id < V, "rows: id ", id, " at [", b, ", ", j, "] is outside the table [0, ", V, ")");
      key.push_back(id);
      val.push_back(b);
      if (mean) ++count[b];
    }
  }
  if (key.empty()) return;
  stable_sort_by_row(key, val, V);  // by row; ties stay in bag order
  const size_t n = key.size();
  std::vector<int64_t> seg;  // segment starts, plus the end
  seg.reserve(n + 1);
  for (size_t i = 0; i < n; ++i)
    if (i == 0 || key[i] != key[i - 1]) seg.push_back(static_cast<int64_t>(i));
  seg.push_back(static_cast<int64_t>(n));
  const int64_t U = static_cast<int64_t>(seg.size()) - 1;

  const scalar_t omb1 = static_cast<scalar_t>(1.0 - beta1), omb2 = static_cast<scalar_t>(1.0 - beta2);
  const scalar_t e = static_cast<scalar_t>(eps);
  const double step_size = lr * std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))) /
                           (1.0 - std::pow(beta1, static_cast<double>(step)));
  const scalar_t neg_step = static_cast<scalar_t>(-step_size);
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, d));
  at::parallel_for(0, U, grain, [&](int64_t u0, int64_t u1) {
    std::vector<scalar_t> acc(static_cast<size_t>(d));
    for (int64_t u = u0; u < u1; ++u) {
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      for (int64_t i = seg[u]; i < seg[u + 1]; ++i) {
        const int64_t b = val[i];
        const scalar_t* gb = g + b * d;
        if (mean) {
          const scalar_t c = static_cast<scalar_t>(count[b]);
          for (int64_t k = 0; k < d; ++k) acc[k] = acc[k] + gb[k] / c;
        } else {
          for (int64_t k = 0; k < d; ++k) acc[k] = acc[k] + gb[k];
        }
      }
      const int64_t off = key[seg[u]] * d;
      scalar_t* pr = p + off;
      scalar_t* mr = m + off;
      scalar_t* vr = v + off;
      for (int64_t k = 0; k < d; ++k) {
        const scalar_t gk = acc[k], mo = mr[k], vo = vr[k];
        const scalar_t mn = mo + (gk - mo) * omb1;
        const scalar_t vn = vo + (gk * gk - vo) * omb2;
        const scalar_t den = std::sqrt(vn) + e;
        mr[k] = mn;
        vr[k] = vn;
        pr[k] = pr[k] + neg_step * (mn / den);
      }
    }
  });
}

}  // namespace

void embedding_rowwise_adam_cpu(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                const at::Tensor& rows, const at::Tensor& grad, int64_t step, double lr, double beta1,
                                double beta2, double eps, bool mean, int64_t padding_idx) {
  cpu::check_cpu_float("weight", weight, 2);
  cpu::check_cpu_float("exp_avg", exp_avg, 2);
  cpu::check_cpu_float("exp_avg_sq", exp_avg_sq, 2);
  cpu::check_cpu_float("grad", grad, 2);
  cpu::check_same_dtype("exp_avg", exp_avg, weight, "weight");
  cpu::check_same_dtype("exp_avg_sq", exp_avg_sq, weight, "weight");
  cpu::check_same_dtype("grad", grad, weight, "weight");
  TORCH_CHECK(exp_avg.sizes() == weight.sizes() && exp_avg_sq.sizes() == weight.sizes(),
              "exp_avg, exp_avg_sq: expected the shape of weight ", weight.sizes());
  TORCH_CHECK(weight.is_contiguous() && exp_avg.is_contiguous() && exp_avg_sq.is_contiguous(),
              "weight, exp_avg, exp_avg_sq: expected contiguous tensors");
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kLong && rows.dim() == 2 && rows.is_contiguous(),
              "rows: expected a contiguous int64 CPU tensor [bags, L]");
  TORCH_CHECK(grad.is_contiguous() && grad.size(0) == rows.size(0) && grad.size(1) == weight.size(1),
              "grad: expected a contiguous [bags, d] = [", rows.size(0), ", ", weight.size(1), "], got ", grad.sizes());
  TORCH_CHECK(step >= 1, "step: expected a 1-based step count >= 1, got ", step);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "embedding_rowwise_adam_cpu", [&] {
    rowwise_adam_kernel<scalar_t>(weight, exp_avg, exp_avg_sq, rows, grad, step, lr, beta1, beta2, eps, mean,
                                  padding_idx);
  });
}

}  // namespace ncs
