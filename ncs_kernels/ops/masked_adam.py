"""masked_adam_step_: one strict masked Adam/AdamW step for a weight shared by tasks, in place.

Where the current task's bit is 0, the weight and both moments stay exactly as they were.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import FLOAT_DTYPES, check_packed, check_same_device, check_tensor


def masked_adam_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    packed: Optional[torch.Tensor],
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    backend: str = "auto",
) -> None:
    """Adam (decoupled=False, L2 decay) or AdamW (decoupled=True) step on a 2-D weight [N, K]
    under the packed mask [N, ceil(K/32)] (None: a plain, unmasked step). step is 1-based."""
    check_tensor("param", param, ndim=2, dtypes=FLOAT_DTYPES)
    for name, t in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_tensor(name, t, ndim=2, dtypes=FLOAT_DTYPES)
        if t.shape != param.shape:
            raise ValueError(f"{name}: expected shape {tuple(param.shape)} (the shape of param), got {tuple(t.shape)}")
    if exp_avg.dtype != exp_avg_sq.dtype:
        raise TypeError(f"exp_avg_sq: expected dtype {exp_avg.dtype} (the dtype of exp_avg), got {exp_avg_sq.dtype}")
    if packed is not None:
        check_packed("packed", packed, param.shape[0], param.shape[1])
    check_same_device(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, packed=packed)
    if int(step) < 1:
        raise ValueError(f"step: expected a 1-based step count >= 1, got {step}")
    be = _backends.resolve(backend, param)
    if be != "torch" and (grad.dtype != param.dtype or exp_avg.dtype != param.dtype):
        be = _backends.resolve("torch", param)  # mixed-dtype state: only the reference handles it
    _backends.impl(be).masked_adam_step_(
        param, grad, exp_avg, exp_avg_sq, packed, int(step), float(lr), float(beta1), float(beta2),
        float(eps), float(weight_decay), bool(decoupled),
    )
