#!/usr/bin/env python3
"""How much does the seed alone move a model's VALIDATION metrics? The config trained as it is
(the point `ncs tune --start-at-base` would try first) with seeds S, each model kind, scored on
the validation split (the test split is not prepared), as a markdown table.

    python scripts/experiments/seed_spread.py --config configs/lt4rec_sample.yaml \\
        --models single,layer,connection --seeds 0-5 --metric ctr_auc \\
        [--json out.json] [--doc docs/RESULTS.md --marker seed_spread_real]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "python"))


def parse_seeds(text: str) -> List[int]:
    if "-" in text:
        a, b = text.split("-", 1)
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",") if x]


def spread(config: str, kinds: List[str], seeds: List[int], work: str) -> Dict[str, Dict[int, Dict[str, float]]]:
    """{kind: {seed: validation metrics}} (tune's _Study: the data loaded and split once per seed)."""
    import torch

    from ncs.config import load_config
    from ncs.tune import _sized, _Study, base_params
    out: Dict[str, Dict[int, Dict[str, float]]] = {k: {} for k in kinds}
    for s in seeds:
        base, loaded = _sized(load_config(config, {"seed": s, "models": kinds}), lambda m: None)
        if base.threads is not None:
            torch.set_num_threads(base.threads)
        st = _Study(base, work, "cvr_mse", "minimize", None, lambda m: None, loaded=loaded)
        for k in kinds:
            out[k][s] = st.evaluate(k, base_params(k, base), os.path.join(work, f"{k}_seed{s}"))
    return out


def table(res: Dict[str, Dict[int, Dict[str, float]]], metric: str) -> str:
    from ncs.models import PAPER_NAMES
    seeds = sorted({s for v in res.values() for s in v})
    lines = ["| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | max - min |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for k, v in res.items():
        vals = [v[s][metric] for s in seeds]
        lines.append(f"| {PAPER_NAMES.get(k, k)} | " + " | ".join(f"{x:.4f}" for x in vals)
                     + f" | {sum(vals) / len(vals):.4f} | {max(vals) - min(vals):.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--models", default="single,layer,connection")
    p.add_argument("--seeds", default="0-5", help="a-b or a,b,c")
    p.add_argument("--metric", default="ctr_auc", help="the validation metric of the table")
    p.add_argument("--work", default="/tmp/ncs_seed_spread", help="scratch directory for the checkpoints")
    p.add_argument("--json")
    p.add_argument("--doc")
    p.add_argument("--marker")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = spread(a.config, [k for k in a.models.split(",") if k], parse_seeds(a.seeds), a.work)
    sys.path.insert(0, str(HERE))
    from protocol_report import emit
    return emit({"config": a.config, "metric": a.metric, "valid": res}, table(res, a.metric), a.json, a.doc, a.marker)


if __name__ == "__main__":
    sys.exit(main())
