"""masked_linear: y = x (W ⊙ M)^T + b with a bit-packed mask M, and its masked backward.

Dispatch over backends happens in Python before the custom op is entered, so the op itself
receives a concrete backend name; the op is registered with torch.library (with a fake impl),
so torch.compile(fullgraph=True) traces through it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import check_linear_args


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


@torch.library.custom_op("ncs::masked_linear", mutates_args=())
def _masked_linear_op(
    x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], backend: str
) -> torch.Tensor:
    return _backends.impl(backend).masked_linear_forward(x, weight, packed, bias)


@_masked_linear_op.register_fake
def _(x, weight, packed, bias, backend):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("ncs::masked_linear_backward", mutates_args=())
def _masked_linear_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    packed: torch.Tensor,
    backend: str,
    need_x: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _backends.impl(backend).masked_linear_backward(
        dy.contiguous(), x, weight, packed, need_x, need_w, need_b
    )
    return (
        dx if dx is not None else _empty(x),
        dw if dw is not None else _empty(weight),
        db if db is not None else _empty(weight),
    )


@_masked_linear_backward_op.register_fake
def _(dy, x, weight, packed, backend, need_x, need_w, need_b):
    return (
        torch.empty_like(x) if need_x else _empty(x),
        torch.empty_like(weight) if need_w else _empty(weight),
        weight.new_empty(weight.shape[0]) if need_b else _empty(weight),
    )


def _setup_context(ctx, inputs, output):
    x, weight, packed, bias, backend = inputs
    ctx.save_for_backward(x, weight, packed)
    ctx.backend = backend
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    x, weight, packed = ctx.saved_tensors
    need_x, need_w, _, need_b, _ = ctx.needs_input_grad
    need_b = bool(need_b and ctx.has_bias)
    if not (need_x or need_w or need_b):
        return None, None, None, None, None
    dx, dw, db = _masked_linear_backward_op(dy, x, weight, packed, ctx.backend, need_x, need_w, need_b)
    return (dx if need_x else None, dw if need_w else None, None, db if need_b else None, None)


_masked_linear_op.register_autograd(_backward, setup_context=_setup_context)


class _MaskedLinearFn(torch.autograd.Function):
    """The eager path: the same backend calls as the custom op, without the custom-op dispatch
    overhead (measured ~0.3 ms per fwd+bwd at B=4096, K=256, N=128 on CPU, ~6 % of the layer)."""

    @staticmethod
    def forward(ctx, x, weight, packed, bias, backend):
        ctx.save_for_backward(x, weight, packed)
        ctx.backend = backend
        ctx.has_bias = bias is not None
        return _backends.impl(backend).masked_linear_forward(x, weight, packed, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, packed = ctx.saved_tensors
        need_x, need_w, _, need_b, _ = ctx.needs_input_grad
        need_b = bool(need_b and ctx.has_bias)
        if not (need_x or need_w or need_b):
            return None, None, None, None, None
        dx, dw, db = _backends.impl(ctx.backend).masked_linear_backward(
            dy.contiguous(), x, weight, packed, need_x, need_w, need_b
        )
        return dx, dw, None, db, None


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    packed: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """y = x (W ⊙ M)^T + b.

    x [B, K], weight [N, K] (nn.Linear layout), packed int32 [N, ceil(K/32)] (see pack_mask),
    bias [N] or None. Gradients: dx = dy (W ⊙ M), dW = (dy^T x) ⊙ M written with zeros where
    the bit is 0 (no float mask is materialised), db = sum dy.
    backend: "auto" | "torch" | "cpu" | "triton" | "cuda".
    """
    check_linear_args(x, weight, packed, bias)
    be = _backends.resolve(backend, x)
    if torch.compiler.is_compiling():
        return _masked_linear_op(x, weight, packed, bias, be)  # traced as one opaque custom op
    return _MaskedLinearFn.apply(x, weight, packed, bias, be)
