// Host launch functions of the CUDA kernels (csrc/cuda/*.cu), over raw pointers.
//
// This header is included by csrc/cuda_backend.cpp (compiled by the host C++ compiler, with torch)
// and by the .cu files (compiled by nvcc, without torch), so it holds declarations only and
// nothing from torch. T is float, __half or __nv_bfloat16; every template below is explicitly
// instantiated for those three in its .cu file. Accumulation is always fp32.
//
// Layouts are row-major and contiguous: x [B, K], weight [N, K] (nn.Linear), packed int32
// [N, ceil(K/32)] (bit k%32 of word k/32 is the bit of weight[n, k]), emb [B, F, d].
// Every launcher enqueues its work on `stream` and returns cudaGetLastError() (no sync).
// Sizes must fit in int (the backend checks); zero-sized problems are no-ops.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "adam_scalars.h"

namespace ncs {
namespace cuda {

// ---- mask_ops.cu ----------------------------------------------------------------------------
// out = weight ⊙ M (out must not alias weight).
template <typename T>
cudaError_t apply_mask(const T* weight, const int32_t* packed, T* out, int64_t n, int64_t k, cudaStream_t stream);
// t ⊙= M, writing exactly 0 where the bit is 0 (also over NaN/Inf).
template <typename T>
cudaError_t mask_inplace(T* t, const int32_t* packed, int64_t n, int64_t k, cudaStream_t stream);
// out = T(src) where the bit is 1, exactly 0 elsewhere; src is an fp32 [n, k] buffer. With
// T = float, out may alias src (element-wise, same index).
template <typename T>
cudaError_t masked_convert(const float* src, const int32_t* packed, T* out, int64_t n, int64_t k,
                           cudaStream_t stream);

// ---- masked_gemm.cu: the fused-mask GEMM family (strategy "fused") --------------------------
// y[B, N] = x[B, K] (W ⊙ M)^T + bias (bias may be nullptr); bits unpacked while loading W tiles.
template <typename T>
cudaError_t masked_linear_fwd(const T* x, const T* weight, const int32_t* packed, const T* bias, T* y, int b,
                              int n, int k, cudaStream_t stream);
// dx[B, K] = dy[B, N] (W ⊙ M).
template <typename T>
cudaError_t masked_linear_dx(const T* dy, const T* weight, const int32_t* packed, T* dx, int b, int n, int k,
                             cudaStream_t stream);
// How many slices to split the batch (reduction) dimension of a dW GEMM [n x k] <- B into, so
// that the few output tiles still fill the current device. 1 = no split.
int dw_splits(int n, int k, int b);
// dW[N, K] = (dy^T x) ⊙ M, exactly 0 where the bit is 0. With splits > 1, `workspace` must be a
// zeroed fp32 buffer of n*k floats (partial sums are atomically added there, then converted and
// masked into dw; with T = float it may be dw itself); with splits == 1 it is unused.
template <typename T>
cudaError_t masked_linear_dw(const T* dy, const T* x, const int32_t* packed, T* dw, float* workspace, int splits,
                             int b, int n, int k, cudaStream_t stream);

// ---- cross.cu: the fused feature cross (first layer) ----------------------------------------
// The cross input row of sample b is [flatten(emb[b] emb[b]^T), flatten(emb[b])], width
// F*F + F*d; it is never materialised: GEMM tiles read its first F*F columns from the Gram
// buffer G [B, F*F] and the rest from emb.
// G[b] = emb[b] emb[b]^T (fp32 accumulation, stored in T).
template <typename T>
cudaError_t gram(const T* emb, T* g, int b, int f, int d, cudaStream_t stream);
// y[B, N] = cross(emb) (W ⊙ M)^T + bias; weight [N, F*F + F*d].
template <typename T>
cudaError_t cross_fwd(const T* g, const T* emb, const T* weight, const int32_t* packed, const T* bias, T* y, int b,
                      int f, int d, int n, cudaStream_t stream);
// dg[B, F*F] = dy (W ⊙ M)[:, :F*F] and demb[B, F*d] = dy (W ⊙ M)[:, F*F:] in one GEMM.
template <typename T>
cudaError_t cross_dinput(const T* dy, const T* weight, const int32_t* packed, T* dg, T* demb, int b, int f, int d,
                         int n, cudaStream_t stream);
// demb[b] += (dg[b] + dg[b]^T) emb[b]   (dg [B, F, F], emb/demb [B, F, d]).
template <typename T>
cudaError_t cross_emb_grad(const T* emb, const T* dg, T* demb, int b, int f, int d, cudaStream_t stream);
// dW[N, F*F + F*d] = (dy^T cross(emb)) ⊙ M; workspace/splits as for masked_linear_dw.
template <typename T>
cudaError_t cross_dw(const T* dy, const T* g, const T* emb, const int32_t* packed, T* dw, float* workspace,
                     int splits, int b, int f, int d, int n, cudaStream_t stream);

// ---- adam.cu -----------------------------------------------------------------------------------
// Scalars of one step, computed on the host in double (as Python computes them in
// ncs_kernels.reference.masked_adam_step_) and rounded once to float.
using AdamScalars = AdamStepScalars<float>;  // csrc/adam_scalars.h
// One strict masked Adam/AdamW step in place over [n, k] tensors of one dtype; packed == nullptr
// updates every element. Where the bit is 0 nothing is written.
template <typename T>
cudaError_t masked_adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, const int32_t* packed, int64_t n,
                             int64_t k, const AdamScalars& s, cudaStream_t stream);

}  // namespace cuda
}  // namespace ncs
