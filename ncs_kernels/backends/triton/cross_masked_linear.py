"""cross_masked_linear on the Triton kernels of masked_linear.py, without the [B, F*F + F*d]
crossed input ever existing in memory.

Forward:  G = emb·embᵀ [B, F*F] (torch.bmm: 1/4 of the crossed width at the paper's F=20,
          d=64), then the masked GEMM's A-tile loader reads column k < F*F from G and
          k >= F*F from emb_flat[:, k - F*F].
Backward: dW with the same two-source loader (G recomputed; only emb is saved) and the mask in
          the epilogue. dX is computed tile by tile in registers and written to two places:
          columns >= F*F straight into d(emb) (they are dE), columns < F*F into dG [B, F*F];
          then d(emb) += (dG + dGᵀ) emb with one batched GEMM.

Computing the Gram entries inside the GEMM from emb (d multiply-adds per entry, repeated for every
N tile, on CUDA cores instead of tensor cores) costs about d/BLOCK_N of the GEMM's FLOPs again on
slower units; reading a precomputed G of F*F columns costs one small extra pass, so G is kept.
"""
from __future__ import annotations

import torch

from ._common import assert_contiguous
from .masked_linear import launch_masked_dw, launch_masked_mm


def _gram(emb: torch.Tensor) -> torch.Tensor:
    b, f, _ = emb.shape
    return torch.bmm(emb, emb.transpose(1, 2)).reshape(b, f * f)


def cross_masked_linear_forward(emb, weight, packed, bias=None):
    assert_contiguous(emb=emb, weight=weight, packed=packed, bias=bias)
    b, f, d = emb.shape
    n, width = weight.shape
    if b == 0 or n == 0 or width == 0:
        y = torch.zeros(b, n, dtype=emb.dtype, device=emb.device)
        return y + bias if bias is not None else y
    g = _gram(emb)
    y = torch.empty(b, n, dtype=emb.dtype, device=emb.device)
    return launch_masked_mm(g, weight, packed, y, w_t=True, bias=bias, a2=emb.view(b, f * d), ff=f * f, r=width)


def cross_masked_linear_backward(dy, emb, weight, packed, need_emb=True, need_w=True, need_b=True, *, splits=None):
    assert_contiguous(dy=dy, emb=emb, weight=weight, packed=packed)
    b, f, d = emb.shape
    n, width = weight.shape
    ff = f * f
    demb = dw = db = None
    if need_emb:
        demb = torch.empty_like(emb)
        if b == 0 or n == 0 or width == 0:
            demb.zero_()
        else:
            dg = torch.empty(b, ff, dtype=emb.dtype, device=emb.device)
            launch_masked_mm(dy, weight, packed, dg, w_t=False, out2=demb.view(b, f * d), ff=ff, p=width)
            dg = dg.view(b, f, f)
            # d(emb) = dE + (dG + dGᵀ) emb: the Gram backward, one batched GEMM into demb in place
            demb.baddbmm_(dg + dg.transpose(1, 2), emb)
    if need_w:
        if n == 0 or width == 0:
            dw = torch.zeros(n, width, dtype=weight.dtype, device=weight.device)
        else:
            dw = launch_masked_dw(dy, _gram(emb), packed, n, width, x2=emb.view(b, f * d), ff=ff, splits=splits)
    if need_b:
        db = dy.sum(0)
    return demb, dw, db
