// Python bindings of ncs_kernels._C: every function of csrc/ncs_native.h under its own name
// (the *_cpu ones always, the *_cuda ones when built with -DNCS_WITH_CUDA), plus has_cuda().
// Backward functions return a tuple whose undefined entries (gradients not asked for) are None.
// The thin Python wrappers in ncs_kernels/backends/{cpu,cuda}.py are the only callers.
#include <torch/extension.h>

#include "ncs_native.h"
#include "cpu/tfrecord.h"
#include "cpu/vocab.h"

namespace {

// std::vector<at::Tensor> -> tuple; torch's caster turns an undefined tensor into None.
pybind11::tuple as_tuple(const std::vector<at::Tensor>& ts) {
  pybind11::tuple out(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    out[i] = ts[i].defined() ? pybind11::cast(ts[i]) : pybind11::none();
  }
  return out;
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

  m.def("apply_mask_cpu", &ncs::apply_mask_cpu, "W ⊙ M from the packed mask", py::arg("weight"), py::arg("packed"));
  m.def("mask_inplace_cpu", [](at::Tensor t, const at::Tensor& packed) { ncs::mask_inplace_cpu(t, packed); },
        "t ⊙= M in place (exact 0 where the bit is 0)", py::arg("t"), py::arg("packed"));
  m.def("masked_linear_forward_cpu", &ncs::masked_linear_forward_cpu, py::arg("x"), py::arg("weight"),
        py::arg("packed"), py::arg("bias") = py::none());
  m.def("masked_linear_backward_cpu",
        [](const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& p, bool nx, bool nw,
           bool nb) { return as_tuple(ncs::masked_linear_backward_cpu(dy, x, w, p, nx, nw, nb)); },
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("packed"), py::arg("need_x") = true,
        py::arg("need_w") = true, py::arg("need_b") = true);
  m.def("cross_masked_linear_forward_cpu", &ncs::cross_masked_linear_forward_cpu, py::arg("emb"), py::arg("weight"),
        py::arg("packed"), py::arg("bias") = py::none());
  m.def("cross_masked_linear_backward_cpu",
        [](const at::Tensor& dy, const at::Tensor& emb, const at::Tensor& w, const at::Tensor& p, bool ne, bool nw,
           bool nb) { return as_tuple(ncs::cross_masked_linear_backward_cpu(dy, emb, w, p, ne, nw, nb)); },
        py::arg("dy"), py::arg("emb"), py::arg("weight"), py::arg("packed"), py::arg("need_emb") = true,
        py::arg("need_w") = true, py::arg("need_b") = true);
  m.def("masked_adam_step_cpu",
        [](at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg, at::Tensor exp_avg_sq,
           const c10::optional<at::Tensor>& packed, int64_t step, double lr, double beta1, double beta2, double eps,
           double weight_decay, bool decoupled) {
          ncs::masked_adam_step_cpu(param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps,
                                    weight_decay, decoupled);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("packed"),
        py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"));
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

  // ncs data convert: native TFRecord + tf.train.Example parser (csrc/cpu/tfrecord.cpp)
  // (both release the GIL, so a reader thread can inflate the next chunk meanwhile)
  m.def("tfrecord_parse_cpu", &ncs::tfrecord_parse_cpu, "parse the whole TFRecord records of a uint8 buffer",
        py::arg("buf"), py::arg("features"), py::arg("check_crc") = true, py::call_guard<py::gil_scoped_release>());
  m.def("crc32c_cpu", &ncs::crc32c_cpu, "CRC-32C of a uint8 tensor", py::arg("buf"), py::arg("software") = false);
  // ncs data convert: the vocabulary of a field (csrc/cpu/vocab.cpp)
  py::class_<ncs::NativeVocab>(m, "NativeVocab", "value -> id table: ids from 1 in first appearance order")
      .def(py::init<bool>(), py::arg("frozen"))
      .def("add_missing", &ncs::NativeVocab::add_missing, py::arg("key"))
      .def("add_fixed", &ncs::NativeVocab::add_fixed, py::arg("key"), py::arg("id"))
      .def("lookup_bytes", &ncs::NativeVocab::lookup_bytes, py::arg("offsets"), py::arg("data"),
           py::arg("valid") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def("lookup_int64", &ncs::NativeVocab::lookup_int64, py::arg("values"), py::arg("valid") = py::none(),
           py::call_guard<py::gil_scoped_release>())
      .def("values", &ncs::NativeVocab::values)
      .def("__len__", &ncs::NativeVocab::size);

#ifdef NCS_WITH_CUDA
  m.def("apply_mask_cuda", &ncs::apply_mask_cuda, py::arg("weight"), py::arg("packed"));
  m.def("mask_inplace_cuda", [](at::Tensor t, const at::Tensor& packed) { ncs::mask_inplace_cuda(t, packed); },
        py::arg("t"), py::arg("packed"));
  m.def("masked_linear_forward_cuda", &ncs::masked_linear_forward_cuda, py::arg("x"), py::arg("weight"),
        py::arg("packed"), py::arg("bias") = py::none());
  m.def("masked_linear_backward_cuda",
        [](const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& p, bool nx, bool nw,
           bool nb) { return as_tuple(ncs::masked_linear_backward_cuda(dy, x, w, p, nx, nw, nb)); },
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("packed"), py::arg("need_x") = true,
        py::arg("need_w") = true, py::arg("need_b") = true);
  m.def("cross_masked_linear_forward_cuda", &ncs::cross_masked_linear_forward_cuda, py::arg("emb"),
        py::arg("weight"), py::arg("packed"), py::arg("bias") = py::none());
  m.def("cross_masked_linear_backward_cuda",
        [](const at::Tensor& dy, const at::Tensor& emb, const at::Tensor& w, const at::Tensor& p, bool ne, bool nw,
           bool nb) { return as_tuple(ncs::cross_masked_linear_backward_cuda(dy, emb, w, p, ne, nw, nb)); },
        py::arg("dy"), py::arg("emb"), py::arg("weight"), py::arg("packed"), py::arg("need_emb") = true,
        py::arg("need_w") = true, py::arg("need_b") = true);
  m.def("masked_adam_step_cuda",
        [](at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg, at::Tensor exp_avg_sq,
           const c10::optional<at::Tensor>& packed, int64_t step, double lr, double beta1, double beta2, double eps,
           double weight_decay, bool decoupled) {
          ncs::masked_adam_step_cuda(param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps,
                                     weight_decay, decoupled);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("packed"),
        py::arg("step"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"));
  m.def("set_cuda_gemm_strategy", &ncs::set_cuda_gemm_strategy,
        "GEMM strategy of the cuda backend: 'cublas' (W*M materialised, cuBLAS) or 'fused' (own kernels)",
        py::arg("name"));
  m.def("cuda_gemm_strategy", &ncs::cuda_gemm_strategy, "The cuda backend's current GEMM strategy");
#endif
}
