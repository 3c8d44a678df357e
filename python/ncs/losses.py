"""Task losses (Eq. 1) and the weighted multi-task loss (Eq. 2).

Eq. 1: L_k = sum_i delta_ik loss_k(y_k(x_i), y_ik) / sum_i delta_ik, where delta_ik says
whether sample i lies in task k's space (e.g. CVR: clicked rows only). A batch with no sample
in the space contributes exactly 0 (the sum is divided by max(count, 1)), never NaN, and no
host sync is needed to find out.

Eq. 2: L = sum_k lambda_k * omega_k * L_k; lambda_k (does the batch hold task k samples?) is
implied by L_k = 0 for an empty space.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def elementwise_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                     alpha: Optional[float] = 0.25) -> torch.Tensor:
    """Per-sample loss on logits: bce (sigmoid + BCE), focal (sigmoid + focal), mse (sigmoid + MSE)."""
    target = target.to(logits.dtype)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "focal":
        # FL = alpha_t (1 - p_t)^gamma * BCE; p_t = p for positives, 1 - p for negatives
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t).pow(gamma)
        if alpha is not None:
            loss = loss * (alpha * target + (1 - alpha) * (1 - target))
        return loss
    if kind == "mse":
        return (torch.sigmoid(logits) - target).pow(2)
    raise ValueError(f"kind: expected one of bce, focal, mse, got {kind!r}")


def task_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, in_space: Optional[torch.Tensor] = None,
              gamma: float = 2.0, alpha: Optional[float] = 0.25) -> torch.Tensor:
    """Eq. 1: the mean of the per-sample loss over the samples in the task's space (bool
    `in_space`, None = all). 0 (exactly, with a zero gradient) when the space is empty."""
    per = elementwise_loss(kind, logits, target, gamma, alpha)
    if in_space is None:
        return per.mean() if per.numel() else per.sum()
    w = in_space.to(per.dtype)
    # where() rather than a product, so a non-finite loss outside the space cannot leak in
    per = torch.where(in_space, per, torch.zeros((), dtype=per.dtype, device=per.device))
    return per.sum() / w.sum().clamp_min(1.0)


def multitask_loss(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                   spaces: Mapping[str, Optional[torch.Tensor]], tasks: Sequence[dict],
                   gamma: float = 2.0, alpha: Optional[float] = 0.25) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Eq. 2 over a mixed batch: sum_k omega_k * L_k. tasks: config task dicts (name, loss, weight).
    Returns (total, {task: L_k}) with every L_k still on the device (no .item())."""
    parts: Dict[str, torch.Tensor] = {}
    total = None
    for t in tasks:
        name = t["name"]
        lk = task_loss(t["loss"], logits[name], targets[name], spaces.get(name), gamma, alpha)
        parts[name] = lk
        term = t["weight"] * lk
        total = term if total is None else total + term
    return total, parts
