// Python bindings of ncs_kernels._C: every function of csrc/ncs_native.h under its own name
// (the *_cpu ones always, the *_cuda ones when built with -DNCS_WITH_CUDA), plus has_cuda().
// Backward functions return a tuple whose undefined entries (gradients not asked for) are None.
// ncs_kernels/backends/native.py (NativeBackend) is the only caller of the kernel functions.
#include <torch/extension.h>

#include "ncs_native.h"
#include "cpu/data_bind.h"

#include <string>

namespace {

// std::vector<at::Tensor> -> tuple; torch's caster turns an undefined tensor into None.
pybind11::tuple as_tuple(const std::vector<at::Tensor>& ts) {
  pybind11::tuple out(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    out[i] = ts[i].defined() ? pybind11::cast(ts[i]) : pybind11::none();
  }
  return out;
}

// The kernel entry points of one device: the *_cpu or the *_cuda functions of ncs_native.h
// (their signatures are the same), bound by bind_device_ops under <name><suffix>.
struct DeviceOps {
  decltype(&ncs::apply_mask_cpu) apply_mask;
  decltype(&ncs::mask_inplace_cpu) mask_inplace;
  decltype(&ncs::masked_linear_forward_cpu) masked_linear_forward;
  decltype(&ncs::masked_linear_backward_cpu) masked_linear_backward;
  decltype(&ncs::cross_masked_linear_forward_cpu) cross_masked_linear_forward;
  decltype(&ncs::cross_masked_linear_backward_cpu) cross_masked_linear_backward;
  decltype(&ncs::masked_adam_step_cpu) masked_adam_step;
};

// A forward (inp, weight, packed, bias) and its backward (dy, inp, weight, packed, need_inp,
// need_w, need_b) -> (d inp, dW, db), bound as <name>_forward<suffix> and <name>_backward<suffix>:
// masked_linear (inp = x) and cross_masked_linear (inp = emb).
void bind_op_pair(pybind11::module_& m, const std::string& name, const std::string& suffix,
                  decltype(&ncs::masked_linear_forward_cpu) fwd,
                  decltype(&ncs::masked_linear_backward_cpu) bwd, const char* inp, const char* need_inp) {
  namespace py = pybind11;
  m.def((name + "_forward" + suffix).c_str(), fwd, py::arg(inp), py::arg("weight"), py::arg("packed"),
        py::arg("bias") = py::none());
  m.def((name + "_backward" + suffix).c_str(),
        [bwd](const at::Tensor& dy, const at::Tensor& in, const at::Tensor& w, const at::Tensor& p, bool ni, bool nw,
              bool nb) { return as_tuple(bwd(dy, in, w, p, ni, nw, nb)); },
        py::arg("dy"), py::arg(inp), py::arg("weight"), py::arg("packed"), py::arg(need_inp) = true,
        py::arg("need_w") = true, py::arg("need_b") = true);
}

void bind_device_ops(pybind11::module_& m, const std::string& suffix, const DeviceOps& d) {
  namespace py = pybind11;
  m.def(("apply_mask" + suffix).c_str(), d.apply_mask, "W ⊙ M from the packed mask", py::arg("weight"),
        py::arg("packed"));
  m.def(("mask_inplace" + suffix).c_str(),
        [f = d.mask_inplace](at::Tensor t, const at::Tensor& packed) { f(t, packed); },
        "t ⊙= M in place (exact 0 where the bit is 0)", py::arg("t"), py::arg("packed"));
  bind_op_pair(m, "masked_linear", suffix, d.masked_linear_forward, d.masked_linear_backward, "x", "need_x");
  bind_op_pair(m, "cross_masked_linear", suffix, d.cross_masked_linear_forward, d.cross_masked_linear_backward,
               "emb", "need_emb");
  m.def(("masked_adam_step" + suffix).c_str(),
        [f = d.masked_adam_step](at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg, at::Tensor exp_avg_sq,
                                 const c10::optional<at::Tensor>& packed, int64_t step, double lr, double beta1,
                                 double beta2, double eps, double weight_decay, bool decoupled) {
          f(param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps, weight_decay, decoupled);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("packed"),
        py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "ncs_kernels native kernels (C++ CPU; CUDA when has_cuda())";
  m.def("has_cuda", []() {
#ifdef NCS_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled into this extension.");

  bind_device_ops(m, "_cpu", {&ncs::apply_mask_cpu, &ncs::mask_inplace_cpu, &ncs::masked_linear_forward_cpu,
                             &ncs::masked_linear_backward_cpu, &ncs::cross_masked_linear_forward_cpu,
                             &ncs::cross_masked_linear_backward_cpu, &ncs::masked_adam_step_cpu});
  // cross_masked_linear keeping the forward's Gram triangle and folded weight for backward (CPU eager path)
  m.def("cross_masked_linear_forward_saved_cpu",
        [](const at::Tensor& emb, const at::Tensor& w, const at::Tensor& p, const c10::optional<at::Tensor>& b) {
          return as_tuple(ncs::cross_masked_linear_forward_saved_cpu(emb, w, p, b));
        },
        "(y, gu, wf)", py::arg("emb"), py::arg("weight"), py::arg("packed"), py::arg("bias") = py::none());
  m.def("cross_masked_linear_backward_saved_cpu",
        [](const at::Tensor& dy, const at::Tensor& emb, const at::Tensor& gu, const at::Tensor& wf,
           const at::Tensor& p, bool ne, bool nw, bool nb) {
          return as_tuple(ncs::cross_masked_linear_backward_saved_cpu(dy, emb, gu, wf, p, ne, nw, nb));
        },
        "(d emb, dW, db) from the forward's gu and wf", py::arg("dy"), py::arg("emb"), py::arg("gu"), py::arg("wf"),
        py::arg("packed"), py::arg("need_emb") = true, py::arg("need_w") = true, py::arg("need_b") = true);
  m.def("embedding_rowwise_adam_cpu",
        [](at::Tensor weight, at::Tensor exp_avg, at::Tensor exp_avg_sq, const at::Tensor& rows,
           const at::Tensor& grad, int64_t step, double lr, double beta1, double beta2, double eps, bool mean,
           int64_t padding_idx) {
          ncs::embedding_rowwise_adam_cpu(weight, exp_avg, exp_avg_sq, rows, grad, step, lr, beta1, beta2, eps, mean,
                                          padding_idx);
        },
        "fused embedding-bag backward + row-wise sparse Adam, in place", py::arg("weight"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("rows"), py::arg("grad"), py::arg("step"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("mean"), py::arg("padding_idx"));

  // ncs data convert: the TFRecord parser, CRC-32C and the vocabulary (csrc/cpu/data_bind.cpp)
  ncs::bind_data(m);

#ifdef NCS_WITH_CUDA
  bind_device_ops(m, "_cuda", {&ncs::apply_mask_cuda, &ncs::mask_inplace_cuda, &ncs::masked_linear_forward_cuda,
                              &ncs::masked_linear_backward_cuda, &ncs::cross_masked_linear_forward_cuda,
                              &ncs::cross_masked_linear_backward_cuda, &ncs::masked_adam_step_cuda});
  m.def("set_cuda_gemm_strategy", &ncs::set_cuda_gemm_strategy,
        "GEMM strategy of the cuda backend: 'cublas' (W*M materialised, cuBLAS) or 'fused' (own kernels)",
        py::arg("name"));
  m.def("cuda_gemm_strategy", &ncs::cuda_gemm_strategy, "The cuda backend's current GEMM strategy");
#endif
}
