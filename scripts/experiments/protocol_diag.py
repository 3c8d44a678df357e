#!/usr/bin/env python3
"""Gradient diagnostics of issue 10's protocol study, summarised over seeds, and their figure.

    python scripts/experiments/protocol_diag.py --runs runs/exp --grid protocol_real \
        --variants today,cycle_pcgrad --json docs/results/diag_real.json --figure docs/figures/diagnostics_real.png

Per variant, model and epoch (in training order): the mean over seeds of each task's gradient
norm on the shared embeddings and on all shared parameters, the CTR/CVR norm ratio, and the
cosine between the two tasks' gradients (curves.json "grad" records; see docs/TRAINER.md).
The figure plots, for seed 0 of each variant, ncs.report.plot_diagnostics' panels.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def summarise(runs: Path, grid: str, variant: str) -> dict:
    out: dict = {}
    for tags in sorted((runs / grid).glob(f"{variant}_seed*.tags.json")):
        t = json.loads(tags.read_text())
        if t["variant"] != variant:
            continue
        cpath = runs / grid / t["run_id"] / "curves.json"
        if not cpath.is_file():
            continue
        curves = json.loads(cpath.read_text())
        for kind, recs in curves.items():
            recs = [r for r in recs if "grad" in r]
            for i, r in enumerate(recs):
                key = f"{r['stage']}{r['epoch'] + 1}"
                slot = out.setdefault(kind, {}).setdefault(key, {"i": i})
                for g in ("embeddings", "all_shared"):
                    st = r["grad"]["groups"].get(g)
                    if not st:
                        continue
                    n = st["norm"]
                    slot.setdefault(f"{g}_ratio_ctr_cvr", []).append(n.get("ctr", 0) / max(n.get("cvr", 0), 1e-12))
                    cos = st["cos"].get("ctr&cvr")
                    if cos is not None:
                        slot.setdefault(f"{g}_cos", []).append(cos)
    res: dict = {}
    for kind, per in out.items():
        res[kind] = {}
        for key, slot in sorted(per.items(), key=lambda kv: kv[1]["i"]):
            res[kind][key] = {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                                  "n": len(v)} for k, v in slot.items() if k != "i"}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/exp")
    p.add_argument("--grid", required=True)
    p.add_argument("--variants", required=True)
    p.add_argument("--json")
    p.add_argument("--figure")
    a = p.parse_args(argv)
    runs = Path(a.runs)
    variants = a.variants.split(",")
    res = {v: summarise(runs, a.grid, v) for v in variants}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.figure:
        from ncs.report import plot_diagnostics
        curves = {}
        for v in variants:
            c = runs / a.grid / f"{v}_seed0" / "curves.json"
            if c.is_file():
                for kind, recs in json.loads(c.read_text()).items():
                    if kind in ("layer", "connection") and any("grad" in r for r in recs):
                        curves[f"{kind} ({v}, seed 0)"] = recs
        plot_diagnostics(curves, a.figure)
    for v, per in res.items():
        for kind, eps in per.items():
            if kind not in ("layer", "connection"):
                continue
            line = " ".join(f"{e}: ratio {d['embeddings_ratio_ctr_cvr']['mean']:.1f} cos {d['embeddings_cos']['mean']:+.2f}"
                            for e, d in eps.items() if "embeddings_ratio_ctr_cvr" in d and "embeddings_cos" in d)
            print(f"{v} {kind} embeddings: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
