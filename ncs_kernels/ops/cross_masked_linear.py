"""cross_masked_linear: masked_linear(feature_cross(emb), W, M, b) without materialising the
[B, F*F + F*d] crossed input in forward or its gradient in backward.

Only `emb` (and the weight and mask) are saved for backward; backends rebuild what they need.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import check_cross_args


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


@torch.library.custom_op("ncs::cross_masked_linear", mutates_args=())
def _cross_op(
    emb: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], backend: str
) -> torch.Tensor:
    return _backends.impl(backend).cross_masked_linear_forward(emb, weight, packed, bias)


@_cross_op.register_fake
def _(emb, weight, packed, bias, backend):
    return emb.new_empty(emb.shape[0], weight.shape[0])


@torch.library.custom_op("ncs::cross_masked_linear_backward", mutates_args=())
def _cross_backward_op(
    dy: torch.Tensor,
    emb: torch.Tensor,
    weight: torch.Tensor,
    packed: torch.Tensor,
    backend: str,
    need_emb: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    demb, dw, db = _backends.impl(backend).cross_masked_linear_backward(
        dy.contiguous(), emb, weight, packed, need_emb, need_w, need_b
    )
    return (
        demb if demb is not None else _empty(emb),
        dw if dw is not None else _empty(weight),
        db if db is not None else _empty(weight),
    )


@_cross_backward_op.register_fake
def _(dy, emb, weight, packed, backend, need_emb, need_w, need_b):
    return (
        torch.empty_like(emb) if need_emb else _empty(emb),
        torch.empty_like(weight) if need_w else _empty(weight),
        weight.new_empty(weight.shape[0]) if need_b else _empty(weight),
    )


def _setup_context(ctx, inputs, output):
    emb, weight, packed, bias, backend = inputs
    ctx.save_for_backward(emb, weight, packed)
    ctx.backend = backend
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    emb, weight, packed = ctx.saved_tensors
    need_e, need_w, _, need_b, _ = ctx.needs_input_grad
    need_b = bool(need_b and ctx.has_bias)
    if not (need_e or need_w or need_b):
        return None, None, None, None, None
    de, dw, db = _cross_backward_op(dy, emb, weight, packed, ctx.backend, need_e, need_w, need_b)
    return (de if need_e else None, dw if need_w else None, None, db if need_b else None, None)


_cross_op.register_autograd(_backward, setup_context=_setup_context)


class _CrossFn(torch.autograd.Function):
    """The eager path (no custom-op dispatch overhead); torch.compile traces the custom op."""

    @staticmethod
    def forward(ctx, emb, weight, packed, bias, backend):
        ctx.save_for_backward(emb, weight, packed)
        ctx.backend = backend
        ctx.has_bias = bias is not None
        return _backends.impl(backend).cross_masked_linear_forward(emb, weight, packed, bias)

    @staticmethod
    def backward(ctx, dy):
        emb, weight, packed = ctx.saved_tensors
        need_e, need_w, _, need_b, _ = ctx.needs_input_grad
        need_b = bool(need_b and ctx.has_bias)
        if not (need_e or need_w or need_b):
            return None, None, None, None, None
        de, dw, db = _backends.impl(ctx.backend).cross_masked_linear_backward(
            dy.contiguous(), emb, weight, packed, need_e, need_w, need_b
        )
        return de, dw, None, db, None


def cross_masked_linear(
    emb: torch.Tensor,
    weight: torch.Tensor,
    packed: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """== masked_linear(feature_cross(emb), weight, packed, bias), fused.

    emb [B, F, d]; weight [N, F*F + F*d] whose first F*F columns read the Gram matrix
    emb·embᵀ (row-major) and the rest the flattened emb; packed int32 [N, ceil((F*F+F*d)/32)].
    """
    check_cross_args(emb, weight, packed, bias)
    be = _backends.resolve(backend, emb)
    if torch.compiler.is_compiling():
        return _cross_op(emb, weight, packed, bias, be)  # traced as one opaque custom op
    return _CrossFn.apply(emb, weight, packed, bias, be)
