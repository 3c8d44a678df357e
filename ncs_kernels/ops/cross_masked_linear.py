"""cross_masked_linear: masked_linear(feature_cross(emb), W, M, b) without materialising the
[B, F*F + F*d] crossed input in forward or its gradient in backward.

Only `emb` (and the weight and mask) are saved for backward; backends rebuild what they need.
Registered as ncs::cross_masked_linear and ncs::cross_masked_linear_backward (_masked_family.py).

The eager `cpu` path with gradients on (training) keeps two more tensors from forward instead:
the upper triangle of the Gram matrix Gu [B, F(F+1)/2] and the folded masked weight
Wf [N, F(F+1)/2 + F*d] (csrc/cpu/cross_masked_linear.cpp), so that backward does not rebuild
them (one batched Gram bmm and one fold of W ⊙ M less per step: ~4 % of a step at the paper's
shapes, for ~6.4 MB held until backward at B=4096). Its results are bit-identical to the
rebuilding backward. torch.compile traces the custom op (which rebuilds) instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import check_cross_args
from ..backends.native import native
from ._masked_family import define_masked_op

_apply = define_masked_op("cross_masked_linear", "cross_masked_linear_forward", "cross_masked_linear_backward")


class _CrossSavedCPU(torch.autograd.Function):
    """The cpu backend's cross_masked_linear, backward from the forward's Gu and Wf."""

    @staticmethod
    def forward(ctx, emb, weight, packed, bias):
        y, gu, wf = native().cross_masked_linear_forward_saved_cpu(emb, weight, packed, bias)
        ctx.save_for_backward(emb, gu, wf, packed)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        emb, gu, wf, packed = ctx.saved_tensors
        need_emb, need_w, _, need_b = ctx.needs_input_grad
        need_b = bool(need_b and ctx.has_bias)
        if not (need_emb or need_w or need_b):
            return None, None, None, None
        g_emb, g_w, g_b = native().cross_masked_linear_backward_saved_cpu(
            dy.contiguous(), emb, gu, wf, packed, bool(need_emb), bool(need_w), need_b)
        return g_emb if need_emb else None, g_w if need_w else None, None, g_b if need_b else None


def _saved_path(backend: str, emb, weight, bias) -> bool:
    """The cpu backend in eager mode with a gradient to compute, and an extension that has it."""
    if backend != "cpu" or torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return False
    if not (emb.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    ext = native()
    return ext is not None and hasattr(ext, "cross_masked_linear_backward_saved_cpu")


def cross_masked_linear(emb: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                        bias: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """== masked_linear(feature_cross(emb), weight, packed, bias), fused.

    emb [B, F, d]; weight [N, F*F + F*d] whose first F*F columns read the Gram matrix
    emb·embᵀ (row-major) and the rest the flattened emb; packed int32 [N, ceil((F*F+F*d)/32)].
    """
    check_cross_args(emb, weight, packed, bias)
    be = _backends.resolve(backend, emb)
    if _saved_path(be, emb, weight, bias):
        return _CrossSavedCPU.apply(emb, weight, packed, bias)
    return _apply(emb, weight, packed, bias, be)
