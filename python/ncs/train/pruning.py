"""Iterative magnitude pruning of a task's mask (step 2 of Algorithm 1).

One round removes a fraction q of the task's SURVIVING weights, those of smallest |w| among the
survivors (weights already pruned are never counted or ranked again):

    survivors s = popcount(mask)            (per layer with scope="layer", summed with "global")
    removed   c = round_half_up(q * s)      (count_rounding="round", the default)
              c = floor(q * s)              (count_rounding="floor")
    with q * s computed in float64 and c capped at s - 1, so a scope never loses its last weight.

Ranking: |w| ascending; ties broken by position (layer order, then row-major index within the
layer), so the result is deterministic and removes exactly c weights.
q = 1 - r^(1/n) ends n rounds at density about r (exactly r^(1/n) compounding up to rounding).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

import ncs_kernels as nk


def prune_count(q: float, survivors: int, rounding: str = "round") -> int:
    """How many of `survivors` weights one round removes (see the module docstring)."""
    if not 0.0 <= q < 1.0:
        raise ValueError(f"q: expected a prune fraction in [0, 1), got {q}")
    if survivors <= 0:
        return 0
    x = float(q) * float(survivors)
    if rounding == "round":
        c = math.floor(x + 0.5)
    elif rounding == "floor":
        c = math.floor(x)
    else:
        raise ValueError(f"rounding: expected 'round' or 'floor', got {rounding!r}")
    return int(min(c, survivors - 1))


def fraction_per_round(final_density: float, rounds: int) -> float:
    """q = 1 - r^(1/n)."""
    if not 0.0 < final_density < 1.0:
        raise ValueError(f"final_density: expected a value in (0, 1), got {final_density}")
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    return 1.0 - final_density ** (1.0 / rounds)


def _prune_flat(mag: torch.Tensor, keep: torch.Tensor, c: int) -> torch.Tensor:
    """Remove the c smallest magnitudes among keep==True (flat tensors); returns the new keep."""
    if c <= 0:
        return keep.clone()
    idx = keep.nonzero().squeeze(1)
    order = torch.argsort(mag[idx], stable=True)  # stable: ties keep position order
    new = keep.clone()
    new[idx[order[:c]]] = False
    return new


@torch.no_grad()
def prune_round(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], q: float,
                scope: str = "global", rounding: str = "round") -> Tuple[Dict[str, torch.Tensor], Dict[str, int]]:
    """One pruning round.

    weights: {layer: weight [N, K]} (trained values), masks: {layer: packed int32 mask}, same keys
    and order (the order is the global tie-break). Returns ({layer: new packed mask},
    {layer: removed count}).
    """
    names = list(weights)
    if set(names) != set(masks):
        raise ValueError(f"masks: expected the layers {sorted(names)}, got {sorted(masks)}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope: expected 'global' or 'layer', got {scope!r}")
    keeps = {n: nk.unpack_mask(masks[n], weights[n].shape[1]).flatten() for n in names}
    mags = {n: weights[n].detach().abs().flatten().to(torch.float64) for n in names}
    new: Dict[str, torch.Tensor] = {}
    if scope == "layer":
        for n in names:
            c = prune_count(q, int(keeps[n].sum()), rounding)
            new[n] = _prune_flat(mags[n], keeps[n], c)
    else:
        keep = torch.cat([keeps[n].cpu() for n in names])
        mag = torch.cat([mags[n].cpu() for n in names])
        c = prune_count(q, int(keep.sum()), rounding)
        flat = _prune_flat(mag, keep, c)
        start = 0
        for n in names:
            size = keeps[n].numel()
            new[n] = flat[start:start + size].to(keeps[n].device)
            start += size
    out, removed = {}, {}
    for n in names:
        shape = weights[n].shape
        out[n] = nk.pack_mask(new[n].view(shape))
        removed[n] = int(keeps[n].sum()) - int(new[n].sum())
    return out, removed


def mask_density(masks: Mapping[str, torch.Tensor], in_features: Mapping[str, int]) -> float:
    """Density over all layers together (kept weights / weights)."""
    kept = sum(nk.popcount(m) for m in masks.values())
    total = sum(m.shape[0] * int(in_features[n]) for n, m in masks.items())
    return kept / total if total else 0.0


def select_round(table: Sequence[dict], higher_is_better: bool, select: str = "best") -> int:
    """The round whose mask the task keeps. table rows: {"round", "metric", ...}, round 0 = dense.

    best: best validation metric among rounds 1..n (the pruned masks of Algorithm 1; NaN never
    wins; ties go to the later, sparser round); last: round n; best_any: best of rounds 0..n.
    """
    rounds = list(table)
    if not rounds:
        raise ValueError("table: no rounds to select from")
    if select == "last":
        return int(rounds[-1]["round"])
    if select not in ("best", "best_any"):
        raise ValueError(f"select: expected best, last or best_any, got {select!r}")
    cands: List[dict] = [r for r in rounds if select == "best_any" or r["round"] >= 1] or rounds
    best = None
    for r in cands:
        m = r["metric"]
        if m is None or (isinstance(m, float) and math.isnan(m)):
            continue
        if best is None or (m >= best["metric"] if higher_is_better else m <= best["metric"]):
            best = r
    return int((best or cands[-1])["round"])
