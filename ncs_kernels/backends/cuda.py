"""The `cuda` backend: CUDA C++ kernels of csrc/cuda (ncs_kernels._C.*_cuda); CUDA tensors, fp32/fp16/bf16.

Same functions and semantics as ncs_kernels.reference; inputs arrive validated from the ops.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _backends


def _c():
    ext = _backends.native()
    if ext is None:
        raise RuntimeError(
            f"backend 'cuda' needs the native extension ncs_kernels._C ({_backends.native_error()}); "
            "run `pip install --no-build-isolation -e .`"
        )
    if not ext.has_cuda():
        raise RuntimeError(
            "backend 'cuda': ncs_kernels._C was built without CUDA kernels (torch without CUDA, no nvcc, "
            "or NCS_BUILD_CUDA=0); rebuild with NCS_BUILD_CUDA=1"
        )
    return ext


def apply_mask(weight: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return _c().apply_mask_cuda(weight, packed)


def masked_linear_forward(x, weight, packed, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _c().masked_linear_forward_cuda(x, weight, packed, bias)


def masked_linear_backward(
    dy, x, weight, packed, need_x: bool = True, need_w: bool = True, need_b: bool = True
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    return tuple(_c().masked_linear_backward_cuda(dy, x, weight, packed, bool(need_x), bool(need_w), bool(need_b)))


def cross_masked_linear_forward(emb, weight, packed, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _c().cross_masked_linear_forward_cuda(emb, weight, packed, bias)


def cross_masked_linear_backward(
    dy, emb, weight, packed, need_emb: bool = True, need_w: bool = True, need_b: bool = True
):
    return tuple(
        _c().cross_masked_linear_backward_cuda(dy, emb, weight, packed, bool(need_emb), bool(need_w), bool(need_b))
    )


@torch.no_grad()
def masked_adam_step_(
    param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False
) -> None:
    _c().masked_adam_step_cuda(
        param, grad, exp_avg, exp_avg_sq, packed, int(step), float(lr), float(beta1), float(beta2), float(eps),
        float(weight_decay), bool(decoupled),
    )
