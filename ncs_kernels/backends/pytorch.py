"""Pure-PyTorch definitions of every op: the oracle for all tests and the `torch` backend.

Every function here is written for clarity, not speed. Backends must match these to within
floating-point tolerance (and exactly where the mask zeroes something: a masked-out gradient
entry is 0.0, not a small number).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..masks import unpack_mask


def apply_mask(weight: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """W ⊙ M in the dtype of W."""
    m = unpack_mask(packed, weight.shape[1])
    return torch.where(m, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def masked_linear_forward(x, weight, packed, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x (W ⊙ M)^T + b;  x [B, K], weight [N, K], packed [N, ceil(K/32)]."""
    return F.linear(x, apply_mask(weight, packed), bias)


def masked_linear_backward(
    dy, x, weight, packed, need_x: bool = True, need_w: bool = True, need_b: bool = True
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """dx = dy (W ⊙ M);  dW = (dy^T x) ⊙ M (exactly 0 where the bit is 0);  db = sum_b dy."""
    dx = dy @ apply_mask(weight, packed) if need_x else None
    dw = apply_mask(dy.t() @ x, packed) if need_w else None
    db = dy.sum(0) if need_b else None
    return dx, dw, db


def feature_cross(emb: torch.Tensor) -> torch.Tensor:
    """emb [B, F, d] -> [B, F*F + F*d]: the full F x F Gram matrix (row-major) then flat emb."""
    b, f, d = emb.shape
    gram = torch.bmm(emb, emb.transpose(1, 2)).reshape(b, f * f)
    return torch.cat([gram, emb.reshape(b, f * d)], dim=1)


def feature_cross_backward(dz: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """d(emb) from d(feature_cross(emb)): (dG + dG^T) emb + dE."""
    b, f, d = emb.shape
    dg = dz[:, : f * f].reshape(b, f, f)
    de = dz[:, f * f:].reshape(b, f, d)
    return torch.bmm(dg + dg.transpose(1, 2), emb) + de


def cross_masked_linear_forward(emb, weight, packed, bias=None) -> torch.Tensor:
    return masked_linear_forward(feature_cross(emb), weight, packed, bias)


def cross_masked_linear_backward(
    dy, emb, weight, packed, need_emb: bool = True, need_w: bool = True, need_b: bool = True
):
    x = feature_cross(emb)
    dx, dw, db = masked_linear_backward(dy, x, weight, packed, need_emb, need_w, need_b)
    demb = feature_cross_backward(dx, emb) if need_emb else None
    return demb, dw, db


def _adam_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """(m_new, v_new, p_new) of one unmasked Adam/AdamW step, in the moments' dtype (nothing is
    written): the arithmetic both masked references below apply where their mask keeps it."""
    g = grad.to(exp_avg.dtype)
    p = param.to(exp_avg.dtype)
    if weight_decay and not decoupled:
        g = g + weight_decay * p
    m_new = beta1 * exp_avg + (1 - beta1) * g
    v_new = beta2 * exp_avg_sq + (1 - beta2) * g * g
    denom = (v_new / (1 - beta2 ** step)).sqrt() + eps
    p_new = p * (1 - lr * weight_decay) if weight_decay and decoupled else p
    return m_new, v_new, p_new - lr * (m_new / (1 - beta1 ** step)) / denom


def _keep(param: torch.Tensor, packed: Optional[torch.Tensor]) -> torch.Tensor:
    """Where a step may write: the task's mask as bool [N, K], or everywhere (packed None)."""
    if packed is None:
        return torch.ones_like(param, dtype=torch.bool)
    return unpack_mask(packed, param.shape[1])


@torch.no_grad()
def masked_adam_step_(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    packed: Optional[torch.Tensor], step: int, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float = 0.0, decoupled: bool = False,
) -> None:
    """One Adam (decoupled=False, L2 weight decay) or AdamW (decoupled=True) step, in place.

    Strict masking: where the task's bit is 0 the weight and both moments are left exactly as
    they were. packed=None updates everything (a plain step). `step` is the 1-based step count
    used for bias correction. State is kept in fp32 or the param's dtype, whatever was passed.
    """
    m_new, v_new, p_new = _adam_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                                       weight_decay, decoupled)
    keep = _keep(param, packed)
    exp_avg.copy_(torch.where(keep, m_new, exp_avg))
    exp_avg_sq.copy_(torch.where(keep, v_new, exp_avg_sq))
    param.copy_(torch.where(keep, p_new.to(param.dtype), param))


@torch.no_grad()
def masked_adam_task_step_(
    param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    packed: Optional[torch.Tensor], task: int, step: int, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float = 0.0, decoupled: bool = False,
) -> None:
    """One Adam/AdamW step of task `task` with per-task moments, in place.

    exp_avg, exp_avg_sq: [T, N, K], one slice of moments per task; `step` is the task's own
    1-based step count (bias correction). The step reads and writes only slice `task` of the
    moments: every other slice is left bit-identical, and the result does not depend on them.
    Within the slice, strict masking as in masked_adam_step_ (packed None: the whole slice and
    every weight are updated). Written over the whole stack, with a per-slice selector, so that
    it is an independent statement of what the fused backends do on the task's slice.
    """
    t_count = exp_avg.shape[0]
    own = (torch.arange(t_count, device=exp_avg.device) == int(task)).view(t_count, 1, 1)
    # the task's moments, broadcast from its slice only (the other slices are never read)
    m_t = exp_avg.select(0, int(task))
    v_t = exp_avg_sq.select(0, int(task))
    m_new, v_new, p_new = _adam_update(param, grad, m_t, v_t, step, lr, beta1, beta2, eps, weight_decay, decoupled)
    keep = _keep(param, packed)
    keep_stack = own & keep.unsqueeze(0)
    exp_avg.copy_(torch.where(keep_stack, m_new.unsqueeze(0), exp_avg))
    exp_avg_sq.copy_(torch.where(keep_stack, v_new.unsqueeze(0), exp_avg_sq))
    param.copy_(torch.where(keep, p_new.to(param.dtype), param))
