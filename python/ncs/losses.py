"""Task losses (Eq. 1) and the weighted multi-task loss (Eq. 2).

Eq. 1: L_k = sum_i delta_ik loss_k(y_k(x_i), y_ik) / sum_i delta_ik, where delta_ik says
whether sample i lies in task k's space (e.g. CVR: clicked rows only). A batch with no sample
in the space contributes exactly 0 (the sum is divided by max(count, 1)), never NaN, and no
host sync is needed to find out.

Eq. 2: L = sum_k lambda_k * omega_k * L_k; lambda_k (does the batch hold task k samples?) is
implied by L_k = 0 for an empty space.

ESMM (model kind esmm) trains on its own loss over all impressions: esmm_loss; mixed_loss picks
the loss of a model kind.
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


def _prob_loss(kind: str, logp: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: Optional[float] = 0.25) -> torch.Tensor:
    """Per-sample loss on a probability given by its log (logp <= 0): what elementwise_loss
    computes from logits, for a product of probabilities (ESMM's pCTCVR)."""
    target = target.to(logp.dtype)
    p = logp.exp()
    if kind == "mse":
        return (p - target).pow(2)
    if kind not in ("bce", "focal"):
        raise ValueError(f"kind: expected one of bce, focal, mse, got {kind!r}")
    # log(1 - p) without cancellation when p -> 1; clamped so that p = 1 stays finite
    log1m = torch.log(-torch.expm1(logp.clamp_max(-1e-7)))
    ce = -(target * logp + (1 - target) * log1m)
    if kind == "bce":
        return ce
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def esmm_loss(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
              spaces: Mapping[str, Optional[torch.Tensor]], tasks: Sequence[dict],
              gamma: float = 2.0, alpha: Optional[float] = 0.25) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """ESMM (Ma et al., SIGIR 2018) over a mixed batch, every term on ALL impressions.

    tasks[0] is the click task (space all, bce/focal): L_0 = mean over all rows of its loss on
    pCTR = sigmoid(logits[click]) against click. Every later task k is post-click (space
    "clicked", the rows with click = 1): its model output is pCVR_k = sigmoid(logits[k]) and
    L_k = mean over ALL rows of loss_k(pCTCVR_k = pCTR * pCVR_k, click * y_k), where click * y_k
    is y_k on the clicked rows and 0 elsewhere. pCVR_k is never fitted on its own, so it is not
    biased towards the clicked rows (sample selection bias). Total = sum_k omega_k * L_k, as in
    Eq. 2. Returns (total, {task: L_k}) like multitask_loss."""
    if len(tasks) < 2:
        raise ValueError("tasks: ESMM needs a click task and at least one post-click task")
    click = tasks[0]
    if click["loss"] == "mse" or spaces.get(click["name"]) is not None:
        raise ValueError(f"tasks[0]: ESMM's first task must be the click task (space all, bce or focal), "
                         f"got {click['name']!r} (space {'clicked' if spaces.get(click['name']) is not None else 'all'}, "
                         f"loss {click['loss']})")
    l0 = logits[click["name"]]
    parts: Dict[str, torch.Tensor] = {click["name"]: task_loss(click["loss"], l0, targets[click["name"]], None,
                                                               gamma, alpha)}
    log_ctr = F.logsigmoid(l0)
    for t in tasks[1:]:
        name = t["name"]
        sp = spaces.get(name)
        if sp is None:
            raise ValueError(f"tasks: ESMM's task {name!r} must be post-click (space: clicked), got space all")
        tgt = torch.where(sp, targets[name].to(l0.dtype), torch.zeros((), dtype=l0.dtype, device=l0.device))
        per = _prob_loss(t["loss"], log_ctr + F.logsigmoid(logits[name]), tgt, gamma, alpha)
        parts[name] = per.mean() if per.numel() else per.sum()
    total = None
    for t in tasks:
        term = t["weight"] * parts[t["name"]]
        total = term if total is None else total + term
    return total, parts


def mixed_loss(kind: str, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               spaces: Mapping[str, Optional[torch.Tensor]], tasks: Sequence[dict],
               gamma: float = 2.0, alpha: Optional[float] = 0.25) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss of a mixed batch for model `kind`: esmm_loss for ESMM, Eq. 2 (multitask_loss)
    for every other model. Same return value: (total, {task: L_k})."""
    fn = esmm_loss if kind == "esmm" else multitask_loss
    return fn(logits, targets, spaces, tasks, gamma, alpha)
