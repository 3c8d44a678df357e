// The `*_cuda` functions of csrc/ncs_native.h: argument checks, device guard and stream, dtype
// dispatch, and the choice between two GEMM strategies (the kernels are in csrc/cuda/*.cu).
//
//   "cublas" (default): W ⊙ M is materialised once per call in the compute dtype with apply_mask
//            and the GEMMs go to cuBLAS (at::mm / at::addmm); dW = dy^T x is masked in place
//            afterwards (exact zeros).
//   "fused":  the tiled kernels of csrc/cuda/masked_gemm.cu and cross.cu: the mask is unpacked
//            while loading W tiles, applied in the dW epilogue, and dW is split over the batch
//            (partials combined with atomicAdd; not split under
//            torch.use_deterministic_algorithms(True), see fused_dw_splits).
// The feature cross never materialises its [B, F*F + F*d] input in either strategy: a Gram
// kernel writes G [B, F*F], then "cublas" runs two GEMMs over the column slices of W ⊙ M
// (G and emb) and "fused" one GEMM whose tile loader reads G and emb through two pointers.
//
// Which strategy is faster has not been measured on a GPU yet (bench/bench_ops.py times both:
// `nk:cuda` against `nk:cuda~fused`), so "cublas" is the default: cuBLAS GEMMs are the safer bet
// on performance. The environment variable NCS_CUDA_GEMM=cublas|fused, read once at the first
// call, chooses; set_cuda_gemm_strategy() changes it at run time (tests, benchmarks).
#include "ncs_native.h"

#ifdef NCS_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "cuda/ncs_cuda.cuh"

namespace ncs {

namespace {

enum class GemmStrategy : int { kCublas = 0, kFused = 1 };

GemmStrategy parse_strategy(const std::string& name, const char* what) {
  if (name == "cublas") return GemmStrategy::kCublas;
  if (name == "fused") return GemmStrategy::kFused;
  TORCH_CHECK(false, what, ": expected 'cublas' or 'fused', got '", name, "'");
}

std::atomic<int>& strategy_slot() {
  // read NCS_CUDA_GEMM once (thread-safe static initialisation); a bad value fails the first call
  static std::atomic<int> slot{[] {
    const char* env = std::getenv("NCS_CUDA_GEMM");
    if (env == nullptr || *env == '\0') return static_cast<int>(GemmStrategy::kCublas);
    return static_cast<int>(parse_strategy(env, "environment variable NCS_CUDA_GEMM"));
  }()};
  return slot;
}

GemmStrategy strategy() { return static_cast<GemmStrategy>(strategy_slot().load(std::memory_order_relaxed)); }

// ---- checks ---------------------------------------------------------------------------------------

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, ": expected a tensor, got an undefined one");
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", t.strides());
}

void check_float_type(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, name,
              ": the cuda backend supports float32, float16 and bfloat16, got ", st);
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected device ", ref.device(), " (the device of ", ref_name,
              "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(), " (the dtype of ",
              ref_name, "), got ", t.scalar_type());
}

// The op's input (x or emb) is a contiguous CUDA float tensor, and the weight one of its device and dtype.
void check_input_and_weight(const at::Tensor& inp, const char* inp_name, const at::Tensor& weight) {
  check_cuda(inp, inp_name);
  check_float_type(inp, inp_name);
  check_cuda(weight, "weight");
  check_same(weight, "weight", inp, inp_name);
}

void check_packed(const at::Tensor& packed, int64_t n, int64_t k, const at::Tensor& ref) {
  check_cuda(packed, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kInt, "packed: expected an int32 packed mask, got ", packed.scalar_type());
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == n && packed.size(1) == (k + 31) / 32,
              "packed: expected shape [", n, ", ", (k + 31) / 32, "] = [out_features, ceil(in_features/32)], got ",
              packed.sizes());
  TORCH_CHECK(packed.device() == ref.device(), "packed: expected device ", ref.device(), ", got ", packed.device());
}

void check_fits_int(int64_t v, const char* what) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max(), what, " = ", v, " is too large for the cuda kernels (max ",
              std::numeric_limits<int>::max(), ")");
}

void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, "ncs cuda kernel ", kernel, " failed to launch: ", cudaGetErrorString(err));
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with the CUDA element type T of `st`.
template <class F>
void dispatch_float(at::ScalarType st, const char* op, F&& f) {
  switch (st) {
    case at::kFloat:
      f(Tag<float>{});
      break;
    case at::kHalf:
      f(Tag<__half>{});
      break;
    case at::kBFloat16:
      f(Tag<__nv_bfloat16>{});
      break;
    default:
      TORCH_CHECK(false, op, ": the cuda backend supports float32, float16 and bfloat16, got ", st);
  }
}

// at::Half / at::BFloat16 share the bit layout of __half / __nv_bfloat16.
template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
const T* cptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
const T* cptr_or_null(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

bool has_bias(const c10::optional<at::Tensor>& bias) { return bias.has_value() && bias->defined(); }

void check_bias(const c10::optional<at::Tensor>& bias, int64_t n, const at::Tensor& ref) {
  if (!has_bias(bias)) return;
  check_cuda(*bias, "bias");
  check_same(*bias, "bias", ref, "x");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "bias: expected shape [", n, "], got ", bias->sizes());
}

// Zeroed fp32 workspace for a split-K dW (or nothing when not split). With fp32 dW the output
// itself is the workspace (zeroed here; the finishing conversion works in place).
at::Tensor dw_workspace(at::Tensor& dw, int splits) {
  if (splits <= 1) return at::Tensor();
  if (dw.scalar_type() == at::kFloat) {
    dw.zero_();
    return dw;
  }
  return at::zeros(dw.sizes(), dw.options().dtype(at::kFloat));
}

float* float_ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// Batch splits of a fused dW. The split partial sums are combined with atomicAdd, whose order
// (and so the last bits of dW) varies from run to run; under
// torch.use_deterministic_algorithms(True) the batch is not split (one block per output tile
// reduces the whole batch in a fixed order), so dW is bitwise reproducible, at the cost of
// fewer blocks when dW has few tiles.
int fused_dw_splits(int64_t n, int64_t k, int64_t b) {
  if (at::globalContext().deterministicAlgorithms()) return 1;
  return cuda::dw_splits(static_cast<int>(n), static_cast<int>(k), static_cast<int>(b));
}

}  // namespace

void set_cuda_gemm_strategy(const std::string& name) {
  strategy_slot().store(static_cast<int>(parse_strategy(name, "strategy")), std::memory_order_relaxed);
}

std::string cuda_gemm_strategy() { return strategy() == GemmStrategy::kFused ? "fused" : "cublas"; }

// ---- mask ops ---------------------------------------------------------------------------------------

at::Tensor apply_mask_cuda(const at::Tensor& weight, const at::Tensor& packed) {
  check_cuda(weight, "weight");
  check_float_type(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight: expected a 2-D [out_features, in_features] tensor, got shape ",
              weight.sizes());
  check_packed(packed, weight.size(0), weight.size(1), weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor out = at::empty_like(weight);
  dispatch_float(weight.scalar_type(), "apply_mask", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(cuda::apply_mask<T>(cptr<T>(weight), packed.data_ptr<int32_t>(), ptr<T>(out), weight.size(0),
                                     weight.size(1), current_stream()),
                 "apply_mask");
  });
  return out;
}

void mask_inplace_cuda(at::Tensor& t, const at::Tensor& packed) {
  check_cuda(t, "t");
  check_float_type(t, "t");
  TORCH_CHECK(t.dim() == 2, "t: expected a 2-D tensor, got shape ", t.sizes());
  check_packed(packed, t.size(0), t.size(1), t);
  const c10::cuda::CUDAGuard guard(t.device());
  dispatch_float(t.scalar_type(), "mask_inplace", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(
        cuda::mask_inplace<T>(ptr<T>(t), packed.data_ptr<int32_t>(), t.size(0), t.size(1), current_stream()),
        "mask_inplace");
  });
}

// ---- masked_linear ------------------------------------------------------------------------------------

namespace {
void check_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& packed) {
  check_input_and_weight(x, "x", weight);
  TORCH_CHECK(x.dim() == 2, "x: expected a 2-D [batch, in_features] tensor, got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), "weight: expected shape [out_features, ", x.size(1),
              "], got ", weight.sizes());
  check_packed(packed, weight.size(0), weight.size(1), x);
  check_fits_int(x.size(0), "batch size");
  check_fits_int(weight.size(0), "out_features");
  check_fits_int(weight.size(1), "in_features");
}
}  // namespace

at::Tensor masked_linear_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& packed,
                                      const c10::optional<at::Tensor>& bias) {
  check_linear(x, weight, packed);
  check_bias(bias, weight.size(0), x);
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::NoGradGuard no_grad;
  const int64_t b = x.size(0), n = weight.size(0), k = weight.size(1);
  if (strategy() == GemmStrategy::kCublas) {
    const at::Tensor wm = apply_mask_cuda(weight, packed);
    return has_bias(bias) ? at::addmm(*bias, x, wm.t()) : at::mm(x, wm.t());
  }
  at::Tensor y = at::empty({b, n}, x.options());
  dispatch_float(x.scalar_type(), "masked_linear_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(cuda::masked_linear_fwd<T>(cptr<T>(x), cptr<T>(weight), packed.data_ptr<int32_t>(),
                                            cptr_or_null<T>(bias), ptr<T>(y), static_cast<int>(b),
                                            static_cast<int>(n), static_cast<int>(k), current_stream()),
                 "masked_linear_fwd");
  });
  return y;
}

std::vector<at::Tensor> masked_linear_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& packed, bool need_x,
                                                    bool need_w, bool need_b) {
  check_linear(x, weight, packed);
  check_cuda(dy, "dy");
  check_same(dy, "dy", x, "x");
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == x.size(0) && dy.size(1) == weight.size(0), "dy: expected shape [",
              x.size(0), ", ", weight.size(0), "], got ", dy.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::NoGradGuard no_grad;
  const int64_t b = x.size(0), n = weight.size(0), k = weight.size(1);
  at::Tensor dx, dw, db;
  if (strategy() == GemmStrategy::kCublas) {
    if (need_x) dx = at::mm(dy, apply_mask_cuda(weight, packed));
    if (need_w) {
      dw = at::mm(dy.t(), x);  // a fresh contiguous [N, K]
      mask_inplace_cuda(dw, packed);
    }
  } else {
    dispatch_float(x.scalar_type(), "masked_linear_backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      if (need_x) {
        dx = at::empty({b, k}, x.options());
        check_launch(cuda::masked_linear_dx<T>(cptr<T>(dy), cptr<T>(weight), packed.data_ptr<int32_t>(), ptr<T>(dx),
                                               static_cast<int>(b), static_cast<int>(n), static_cast<int>(k),
                                               current_stream()),
                     "masked_linear_dx");
      }
      if (need_w) {
        dw = at::empty({n, k}, x.options());
        const int splits = fused_dw_splits(n, k, b);
        const at::Tensor ws = dw_workspace(dw, splits);
        check_launch(cuda::masked_linear_dw<T>(cptr<T>(dy), cptr<T>(x), packed.data_ptr<int32_t>(), ptr<T>(dw),
                                               float_ptr_or_null(ws), splits, static_cast<int>(b),
                                               static_cast<int>(n), static_cast<int>(k), current_stream()),
                     "masked_linear_dw");
      }
    });
  }
  if (need_b) db = dy.sum(0);
  return {dx, dw, db};
}

// ---- cross_masked_linear --------------------------------------------------------------------------------

namespace {
struct CrossDims {
  int64_t b, f, d, ff, fd, k, n;
};

CrossDims check_cross(const at::Tensor& emb, const at::Tensor& weight, const at::Tensor& packed) {
  check_input_and_weight(emb, "emb", weight);
  TORCH_CHECK(emb.dim() == 3, "emb: expected a 3-D [batch, fields, dim] tensor, got shape ", emb.sizes());
  CrossDims c;
  c.b = emb.size(0);
  c.f = emb.size(1);
  c.d = emb.size(2);
  c.ff = c.f * c.f;
  c.fd = c.f * c.d;
  c.k = c.ff + c.fd;
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == c.k, "weight: expected shape [out_features, ", c.k,
              "] (F*F + F*d for F = ", c.f, ", d = ", c.d, "), got ", weight.sizes());
  c.n = weight.size(0);
  check_packed(packed, c.n, c.k, emb);
  check_fits_int(c.b, "batch size");
  check_fits_int(c.n, "out_features");
  check_fits_int(c.k, "in_features");
  check_fits_int(c.b * std::max<int64_t>(c.ff, c.fd), "batch size * max(F*F, F*d)");
  return c;
}

at::Tensor gram_of(const at::Tensor& emb, const CrossDims& c) {
  at::Tensor g = at::empty({c.b, c.ff}, emb.options());
  dispatch_float(emb.scalar_type(), "gram", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(cuda::gram<T>(cptr<T>(emb), ptr<T>(g), static_cast<int>(c.b), static_cast<int>(c.f),
                               static_cast<int>(c.d), current_stream()),
                 "gram");
  });
  return g;
}
}  // namespace

at::Tensor cross_masked_linear_forward_cuda(const at::Tensor& emb, const at::Tensor& weight, const at::Tensor& packed,
                                            const c10::optional<at::Tensor>& bias) {
  const CrossDims c = check_cross(emb, weight, packed);
  check_bias(bias, c.n, emb);
  const c10::cuda::CUDAGuard guard(emb.device());
  const c10::NoGradGuard no_grad;
  const at::Tensor g = gram_of(emb, c);
  if (strategy() == GemmStrategy::kCublas) {
    const at::Tensor wm = apply_mask_cuda(weight, packed);
    const at::Tensor wg = wm.narrow(1, 0, c.ff).t();     // [F*F, N], a strided view: no copy
    const at::Tensor we = wm.narrow(1, c.ff, c.fd).t();  // [F*d, N]
    at::Tensor y = has_bias(bias) ? at::addmm(*bias, g, wg) : at::mm(g, wg);
    if (c.fd > 0) y.addmm_(emb.view({c.b, c.fd}), we);
    return y;
  }
  at::Tensor y = at::empty({c.b, c.n}, emb.options());
  dispatch_float(emb.scalar_type(), "cross_masked_linear_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(cuda::cross_fwd<T>(cptr<T>(g), cptr<T>(emb), cptr<T>(weight), packed.data_ptr<int32_t>(),
                                    cptr_or_null<T>(bias), ptr<T>(y), static_cast<int>(c.b), static_cast<int>(c.f),
                                    static_cast<int>(c.d), static_cast<int>(c.n), current_stream()),
                 "cross_fwd");
  });
  return y;
}

std::vector<at::Tensor> cross_masked_linear_backward_cuda(const at::Tensor& dy, const at::Tensor& emb,
                                                          const at::Tensor& weight, const at::Tensor& packed,
                                                          bool need_emb, bool need_w, bool need_b) {
  const CrossDims c = check_cross(emb, weight, packed);
  check_cuda(dy, "dy");
  check_same(dy, "dy", emb, "emb");
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == c.b && dy.size(1) == c.n, "dy: expected shape [", c.b, ", ", c.n,
              "], got ", dy.sizes());
  const c10::cuda::CUDAGuard guard(emb.device());
  const c10::NoGradGuard no_grad;
  const bool cublas = strategy() == GemmStrategy::kCublas;
  at::Tensor demb, dw, db;
  dispatch_float(emb.scalar_type(), "cross_masked_linear_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (need_emb) {
      at::Tensor dg;
      if (cublas) {
        const at::Tensor wm = apply_mask_cuda(weight, packed);
        dg = at::mm(dy, wm.narrow(1, 0, c.ff));                         // [B, F*F]
        demb = at::mm(dy, wm.narrow(1, c.ff, c.fd)).view({c.b, c.f, c.d});  // dE, contiguous
      } else {
        dg = at::empty({c.b, c.ff}, emb.options());
        demb = at::empty({c.b, c.f, c.d}, emb.options());
        check_launch(cuda::cross_dinput<T>(cptr<T>(dy), cptr<T>(weight), packed.data_ptr<int32_t>(), ptr<T>(dg),
                                           ptr<T>(demb), static_cast<int>(c.b), static_cast<int>(c.f),
                                           static_cast<int>(c.d), static_cast<int>(c.n), current_stream()),
                     "cross_dinput");
      }
      // demb += (dG + dG^T) emb, on top of dE
      check_launch(cuda::cross_emb_grad<T>(cptr<T>(emb), cptr<T>(dg), ptr<T>(demb), static_cast<int>(c.b),
                                           static_cast<int>(c.f), static_cast<int>(c.d), current_stream()),
                   "cross_emb_grad");
    }
    if (need_w) {
      const at::Tensor g = gram_of(emb, c);  // recomputed: cheaper than keeping [B, F*F] alive
      if (cublas) {
        dw = at::empty({c.n, c.k}, emb.options());
        const at::Tensor dyt = dy.t();
        at::Tensor dw_g = dw.narrow(1, 0, c.ff);  // column slices of dW: cuBLAS writes them in place
        at::Tensor dw_e = dw.narrow(1, c.ff, c.fd);
        at::mm_out(dw_g, dyt, g);
        at::mm_out(dw_e, dyt, emb.view({c.b, c.fd}));
        mask_inplace_cuda(dw, packed);
      } else {
        dw = at::empty({c.n, c.k}, emb.options());
        const int splits = fused_dw_splits(c.n, c.k, c.b);
        const at::Tensor ws = dw_workspace(dw, splits);
        check_launch(cuda::cross_dw<T>(cptr<T>(dy), cptr<T>(g), cptr<T>(emb), packed.data_ptr<int32_t>(), ptr<T>(dw),
                                       float_ptr_or_null(ws), splits, static_cast<int>(c.b), static_cast<int>(c.f),
                                       static_cast<int>(c.d), static_cast<int>(c.n), current_stream()),
                     "cross_dw");
      }
    }
  });
  if (need_b) db = dy.sum(0);
  return {demb, dw, db};
}

// ---- masked Adam ---------------------------------------------------------------------------------------

void masked_adam_step_cuda(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                           const c10::optional<at::Tensor>& packed, int64_t step, double lr, double beta1,
                           double beta2, double eps, double weight_decay, bool decoupled) {
  check_cuda(param, "param");
  check_float_type(param, "param");
  TORCH_CHECK(param.dim() == 2, "param: expected a 2-D tensor (view 1-D parameters as [1, n]), got shape ",
              param.sizes());
  const struct {
    const at::Tensor& t;
    const char* name;
  } others[] = {{grad, "grad"}, {exp_avg, "exp_avg"}, {exp_avg_sq, "exp_avg_sq"}};
  for (const auto& o : others) {
    check_cuda(o.t, o.name);
    check_same(o.t, o.name, param, "param");
    TORCH_CHECK(o.t.sizes() == param.sizes(), o.name, ": expected shape ", param.sizes(), " (the shape of param), got ",
                o.t.sizes());
  }
  const bool masked = packed.has_value() && packed->defined();
  if (masked) check_packed(*packed, param.size(0), param.size(1), param);
  TORCH_CHECK(step >= 1, "step: expected a 1-based step count >= 1, got ", step);
  const c10::cuda::CUDAGuard guard(param.device());

  const cuda::AdamScalars s = adam_step_scalars<float>(step, lr, beta1, beta2, eps, weight_decay, decoupled);

  dispatch_float(param.scalar_type(), "masked_adam_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(cuda::masked_adam_step<T>(ptr<T>(param), cptr<T>(grad), ptr<T>(exp_avg), ptr<T>(exp_avg_sq),
                                           masked ? packed->data_ptr<int32_t>() : nullptr, param.size(0),
                                           param.size(1), s, current_stream()),
                 "masked_adam_step");
  });
}

}  // namespace ncs

#endif  // NCS_WITH_CUDA
