// The contract between the Python wrapper (ncs_kernels/backends/native.py), the binding
// file (csrc/ops.cpp) and the kernels (csrc/cpu/*.cpp, csrc/cuda_backend.cpp + csrc/cuda/*.cu).
//
// Semantics are those of ncs_kernels/backends/pytorch.py (the `torch` backend, nk.reference):
//   masked_linear:        y = x (W*M)^T + b; dx = dy (W*M); dW = (dy^T x)*M (exactly 0 where the
//                         bit is 0); db = sum_b dy
//   cross_masked_linear:  masked_linear(feature_cross(emb)) with feature_cross(emb)[b] =
//                         [flatten(emb[b] emb[b]^T), flatten(emb[b])]; backward returns d(emb)
//   masked_adam_step:     strict masked Adam/AdamW in place; packed undefined = plain step
// Mask format: bit (k % 32) of int32 word packed[n, k / 32] is the bit of weight[n, k]; bits past
// K are zero. Inputs arrive validated and contiguous from Python; kernels still TORCH_CHECK.
// Backward functions return {dx_or_demb, dW, db}; an entry that was not asked for is an
// undefined tensor (None in Python).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <string>
#include <vector>

namespace ncs {

// ---- CPU (csrc/cpu) --------------------------------------------------------------------
at::Tensor apply_mask_cpu(const at::Tensor& weight, const at::Tensor& packed);
void mask_inplace_cpu(at::Tensor& t, const at::Tensor& packed);
at::Tensor masked_linear_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& packed, const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> masked_linear_backward_cpu(const at::Tensor& dy, const at::Tensor& x,
                                                   const at::Tensor& weight, const at::Tensor& packed,
                                                   bool need_x, bool need_w, bool need_b);
at::Tensor cross_masked_linear_forward_cpu(const at::Tensor& emb, const at::Tensor& weight,
                                           const at::Tensor& packed, const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> cross_masked_linear_backward_cpu(const at::Tensor& dy, const at::Tensor& emb,
                                                         const at::Tensor& weight, const at::Tensor& packed,
                                                         bool need_emb, bool need_w, bool need_b);
// The same, forward also returning Gu [B, T] and Wf [N, T + F*d] for the backward that takes them.
std::vector<at::Tensor> cross_masked_linear_forward_saved_cpu(const at::Tensor& emb, const at::Tensor& weight,
                                                              const at::Tensor& packed,
                                                              const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> cross_masked_linear_backward_saved_cpu(const at::Tensor& dy, const at::Tensor& emb,
                                                               const at::Tensor& gu, const at::Tensor& wf,
                                                               const at::Tensor& packed, bool need_emb, bool need_w,
                                                               bool need_b);
void masked_adam_step_cpu(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                          at::Tensor& exp_avg_sq, const c10::optional<at::Tensor>& packed, int64_t step,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          bool decoupled);
// fused embedding-bag backward + row-wise sparse Adam (csrc/cpu/embedding_adam.cpp)
void embedding_rowwise_adam_cpu(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                const at::Tensor& rows, const at::Tensor& grad, int64_t step, double lr, double beta1,
                                double beta2, double eps, bool mean, int64_t padding_idx);

#ifdef NCS_WITH_CUDA
// ---- CUDA (csrc/cuda_backend.cpp, kernels in csrc/cuda/*.cu) --------------------------------
at::Tensor apply_mask_cuda(const at::Tensor& weight, const at::Tensor& packed);
void mask_inplace_cuda(at::Tensor& t, const at::Tensor& packed);
at::Tensor masked_linear_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& packed, const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> masked_linear_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& packed,
                                                    bool need_x, bool need_w, bool need_b);
at::Tensor cross_masked_linear_forward_cuda(const at::Tensor& emb, const at::Tensor& weight,
                                            const at::Tensor& packed, const c10::optional<at::Tensor>& bias);
std::vector<at::Tensor> cross_masked_linear_backward_cuda(const at::Tensor& dy, const at::Tensor& emb,
                                                          const at::Tensor& weight, const at::Tensor& packed,
                                                          bool need_emb, bool need_w, bool need_b);
void masked_adam_step_cuda(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                           at::Tensor& exp_avg_sq, const c10::optional<at::Tensor>& packed, int64_t step,
                           double lr, double beta1, double beta2, double eps, double weight_decay,
                           bool decoupled);
// "cublas": W*M materialised once per call, GEMMs through cuBLAS (default); "fused": own kernels
void set_cuda_gemm_strategy(const std::string& name);
std::string cuda_gemm_strategy();
#endif

}  // namespace ncs
