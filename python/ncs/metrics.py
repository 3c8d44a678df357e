"""Offline metrics of the paper: AUC (CTR), MSE (CVR, over clicked rows), plus logloss.

Every function returns a Python float; NaN when undefined (AUC with one class, MSE of an empty
space). json_safe() turns NaN into None for metrics.json.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counted 1/2
    (the Mann-Whitney statistic with average ranks). labels: > 0.5 is positive."""
    scores = scores.detach().double().flatten().cpu()
    pos = labels.detach().flatten().cpu() > 0.5
    n_pos = int(pos.sum())
    n_neg = int(pos.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores, stable=True)
    s = scores[order]
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    # average 1-based rank of each tie group
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = avg_rank[inverse]
    r_pos = ranks[pos].sum().item()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if logits.numel() == 0:
        return float("nan")
    x = logits.detach().double().flatten()
    y = labels.detach().double().flatten()
    return float(torch.nn.functional.binary_cross_entropy_with_logits(x, y).item())


def mse(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """MSE of sigmoid(logits) against labels."""
    if logits.numel() == 0:
        return float("nan")
    p = torch.sigmoid(logits.detach().double().flatten())
    return float((p - labels.detach().double().flatten()).pow(2).mean().item())


def task_metrics(task: Dict[str, Any], logits: torch.Tensor, labels: torch.Tensor,
                 in_space: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Metrics of one task over the samples of its space: {name_auc, name_logloss} for bce/focal
    tasks, {name_mse} for mse tasks, plus name_rows (samples evaluated)."""
    if in_space is not None:
        logits, labels = logits[in_space], labels[in_space]
    name = task["name"]
    out: Dict[str, float] = {}
    if task["loss"] == "mse":
        out[f"{name}_mse"] = mse(logits, labels)
    else:
        out[f"{name}_auc"] = auc(logits, labels)
        out[f"{name}_logloss"] = logloss(logits, labels)
    out[f"{name}_rows"] = int(logits.numel())
    return out


def json_safe(x: Any) -> Any:
    """NaN/inf -> None, recursively, so that json.dumps writes strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
