"""masked_adam_step_: one strict masked Adam/AdamW step for a weight shared by tasks, in place.
masked_adam_task_step_: the same step with per-task moments stacked [T, N, K] (task t's step
reads and writes slice t only).

Where the current task's bit is 0, the weight and both moments stay exactly as they were.
Mixed-dtype state (grad or moments in another dtype than param, e.g. fp32 moments of a bf16
weight) runs on the `torch` backend only: backend="auto" picks it, an explicit other backend is
an error.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import FLOAT_DTYPES, check_packed, check_same_device, check_tensor


def _backend_for(backend: str, param, grad, exp_avg) -> str:
    be = _backends.resolve(backend, param)
    if be != "torch" and (grad.dtype != param.dtype or exp_avg.dtype != param.dtype):
        if backend != "auto":
            raise ValueError(
                f"backend: {backend!r} needs grad and moments in the dtype of param ({param.dtype}), got grad "
                f"{grad.dtype} and exp_avg {exp_avg.dtype}; only backend='torch' (or 'auto') runs mixed-dtype state")
        be = "torch"  # "auto" (even under use_backend / NCS_BACKEND): the reference handles it
    return be


def masked_adam_step_(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    packed: Optional[torch.Tensor], step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
    eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False, backend: str = "auto",
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
    _backends.impl(_backend_for(backend, param, grad, exp_avg)).masked_adam_step_(
        param, grad, exp_avg, exp_avg_sq, packed, int(step), float(lr), float(beta1), float(beta2),
        float(eps), float(weight_decay), bool(decoupled),
    )


def masked_adam_task_step_(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    packed: Optional[torch.Tensor], task: int, step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
    eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False, backend: str = "auto",
) -> None:
    """Adam/AdamW step of task `task` on a 2-D weight [N, K] with per-task moments.

    exp_avg, exp_avg_sq: [T, N, K] contiguous, slice t holding task t's moments; task: 0 <= task < T;
    step: the task's own 1-based step count. Only slice `task` is read and written (the other
    tasks' moments stay bit-identical); strict masking under `packed` as in masked_adam_step_.

    The fused path is the backend's masked_adam_step_ kernel run on exp_avg[task] and
    exp_avg_sq[task]: the slice of a contiguous stack is itself a contiguous view (the data
    pointer moved by task * N * K elements), so each backend's one-pass kernel reads and writes
    the task's moments in place; nothing is copied or gathered. The reference,
    ncs_kernels.reference.masked_adam_task_step_, states the same step over the whole stack.
    """
    check_tensor("param", param, ndim=2, dtypes=FLOAT_DTYPES)
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_tensor(name, t, ndim=3, dtypes=FLOAT_DTYPES)
        if tuple(t.shape[1:]) != tuple(param.shape):
            raise ValueError(f"{name}: expected shape [tasks, {param.shape[0]}, {param.shape[1]}] (per-task "
                             f"moments of param), got {tuple(t.shape)}")
    if exp_avg_sq.shape[0] != exp_avg.shape[0]:
        raise ValueError(f"exp_avg_sq: expected {exp_avg.shape[0]} task slices (as exp_avg), got {exp_avg_sq.shape[0]}")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < exp_avg.shape[0]:
        raise ValueError(f"task: expected a task index in [0, {exp_avg.shape[0]}), got {task!r}")
    masked_adam_step_(param, grad, exp_avg[task], exp_avg_sq[task], packed, step, lr, beta1, beta2, eps,
                      weight_decay, decoupled, backend=backend)
