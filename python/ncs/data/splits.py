"""Train / validation / test splits that keep a request's (or a user's) rows together."""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

from .types import EncodedData


def _check_fractions(fractions: Sequence[float]) -> Tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three numbers >= 0 summing to 1, got {tuple(fractions)}")
    return fr  # type: ignore[return-value]


def split_index(data: EncodedData, by: str = "request", fractions: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices (sorted, int64) of the three parts."""
    fr = _check_fractions(fractions)
    n = len(data)
    g = torch.Generator()
    g.manual_seed(int(seed))
    cuts = torch.tensor([fr[0], fr[0] + fr[1]], dtype=torch.float64)
    if by == "random":
        perm = torch.randperm(n, generator=g)
        bounds = (cuts * n).round().long().tolist()
        parts = [perm[: bounds[0]], perm[bounds[0]: bounds[1]], perm[bounds[1]:]]
        return tuple(p.sort().values for p in parts)  # type: ignore[return-value]
    if by not in data.groups:
        if by == "time":
            raise ValueError(f"by='time' needs a 'time' group (a schema's groups: {{time: COLUMN}}); the data has "
                             f"groups {sorted(data.groups)}")
        raise ValueError(f"by must be 'random' or a group of the data {sorted(data.groups)}, got {by!r}")
    uniq, inverse, counts = torch.unique(data.groups[by], return_inverse=True, return_counts=True)
    # Shuffle the groups (by="time": keep them in time order), then cut where the running row
    # count crosses each fraction, so the parts get about the requested share of rows even when
    # group sizes vary; a group (a time value) is never in two parts.
    perm = torch.arange(uniq.numel()) if by == "time" else torch.randperm(uniq.numel(), generator=g)
    before = torch.cumsum(counts[perm], 0) - counts[perm]  # rows in groups placed earlier
    part_of_perm = torch.bucketize(before.double() / max(n, 1), cuts, right=True)
    part_of_group = torch.empty_like(part_of_perm)
    part_of_group[perm] = part_of_perm
    row_part = part_of_group[inverse]
    return tuple(torch.nonzero(row_part == k).squeeze(1) for k in range(3))  # type: ignore[return-value]


def split(data: EncodedData, by: str = "request", fractions: Sequence[float] = (0.8, 0.1, 0.1),
          seed: int = 0) -> Tuple[EncodedData, EncodedData, EncodedData]:
    """(train, valid, test). by="request"/"user" (any group of the data) keeps every group in
    one part; by="time" orders rows by the "time" group and cuts at the fractions (earliest rows
    train, latest test; no time value in two parts); by="random" splits rows. Deterministic by seed; rows keep their order."""
    a, b, c = split_index(data, by, fractions, seed)
    return data.subset(a), data.subset(b), data.subset(c)


def _part_summary(d: EncodedData) -> Dict:
    out: Dict = {"rows": len(d)}
    if "click" in d.labels:
        click = d.labels["click"]
        out["clicks"] = int(click.sum().item())
        out["click_rate"] = float(click.mean().item()) if len(d) else 0.0
        if "conversion" in d.labels:
            conv = d.labels["conversion"][click > 0]
            out["conversion_mean"] = float(conv.mean().item()) if conv.numel() else 0.0
    for g, v in d.groups.items():
        out[g + "s"] = int(torch.unique(v).numel())
    return out


def split_summary(train: EncodedData, valid: EncodedData, test: EncodedData) -> Dict:
    """Rows, clicks, rates and group counts per part, and whether each group is disjoint."""
    parts = {"train": train, "valid": valid, "test": test}
    out: Dict = {k: _part_summary(v) for k, v in parts.items()}
    disjoint = {}
    for g in train.groups:
        sets = [set(torch.unique(p.groups[g]).tolist()) for p in parts.values() if g in p.groups]
        disjoint[g] = all(not (sets[i] & sets[j]) for i in range(len(sets)) for j in range(i + 1, len(sets)))
    out["disjoint"] = disjoint
    return out
