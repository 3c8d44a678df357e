#!/usr/bin/env python3
"""How much can a test split resolve? A paired bootstrap over the test split's groups.

    python scripts/experiments/bootstrap_test.py --study runs/exp/tune_real_ctr \\
        [--ref connection] [--resamples 2000] [--json out.json]
    python scripts/experiments/bootstrap_test.py --run single=DIR1,DIR2 --run connection=DIR3,DIR4 ...

Each model is given as its run directories, one per seed (--study D: D/final/<kind>/seed*/, the
final runs of `ncs tune`; --run KIND=DIRS: model KIND of each run, e.g. runs of several models). Every run must hold the same data, split and test rows. Each run's
served models score the run's TEST split (the split the run's metrics.json reports; the script
recomputes the CVR MSE and CTR AUC and checks them against metrics.json), and then the test
split is resampled B times by GROUP (the split's unit, e.g. request: rows of one request stay
together, as they were split) with replacement. In every resample each model's metric is the
mean over its seeds, and the reference model's paired CVR gain over each other model,
(mse_other - mse_ref) / mse_other, and CTR AUC difference, auc_ref - auc_other, are taken. The
report: the observed values (the seed means of the real test split), the 2.5 / 97.5 percentiles
of the resamples and the share of resamples in which the reference is better.

This is the test split's own sampling noise, on top of the seed spread that mean +- std over
seeds shows: it says whether a difference of a few tenths of a percent between models could be
told apart on this split at all, whatever the models. No model is trained here and nothing is
selected on test.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "python"))


def weighted_auc(score: np.ndarray, label: np.ndarray, w: np.ndarray) -> float:
    """ROC AUC with row weights (ties count one half): sum over positive/negative pairs of
    w_p w_n [s_p > s_n] + w_p w_n / 2 [s_p == s_n], over the product of the total weights."""
    pos = label > 0.5
    wp, wn = w * pos, w * ~pos
    tp, tn = wp.sum(), wn.sum()
    if tp <= 0 or tn <= 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s, wp, wn = score[order], wp[order], wn[order]
    # tie groups: [start, end) of equal scores
    edge = np.flatnonzero(np.diff(s) != 0) + 1
    starts = np.concatenate([[0], edge])
    gp = np.add.reduceat(wp, starts)
    gn = np.add.reduceat(wn, starts)
    below_n = np.cumsum(gn) - gn  # negative weight strictly below each group
    return float((gp * (below_n + 0.5 * gn)).sum() / (tp * tn))


def _scores(run_dir: str, kind: str, splits: Dict[str, object]):
    """(the run, its test split, {task: probabilities} of model `kind`, metrics.json's test metrics).
    splits: the test splits built so far, by data config (runs of one data set load it once)."""
    import torch

    from ncs.serve.predict import score
    from ncs.serve.replay import _test_split
    from ncs.serve.runs import open_run
    run = open_run(run_dir)
    kind = run.choose_kind(kind)
    key = json.dumps(run.cfg.data.to_dict(), sort_keys=True, default=str)
    if key not in splits:
        splits[key] = _test_split(run, None, None)[0]
    ds = splits[key]
    model, _ = run.model(kind, torch.device("cpu"))
    p = score(model, ds.ids, run.task_names, 8192, torch.device("cpu"))
    with open(os.path.join(run_dir, "metrics.json"), "r", encoding="utf-8") as f:
        reported = json.load(f)["models"][kind]
    return run, ds, p, reported


def collect(models: Dict[str, List[str]], group: str = "request"):
    """Per model: per seed (squared CVR errors on the clicked rows, pCTR); and the shared labels."""
    base = None
    splits: Dict[str, object] = {}
    out: Dict[str, List[Dict[str, np.ndarray]]] = {}
    for kind, dirs in models.items():
        if not dirs:
            raise SystemExit(f"--run {kind}: no run directories")
        for d in dirs:
            run, ds, p, reported = _scores(d, kind, splits)
            ctr, cvr = run.ctr_task(), run.cvr_task()
            click = ds.labels[run.label_of(ctr)].double().numpy()
            play = ds.labels[run.label_of(cvr)].double().numpy()
            groups = ds.groups[group].numpy()
            if base is None:
                base = {"click": click, "play": play, "groups": groups, "ctr": ctr, "cvr": cvr, "rows": len(ds)}
            elif len(ds) != base["rows"] or not np.array_equal(click, base["click"]) or \
                    not np.array_equal(groups, base["groups"]):
                raise SystemExit(f"{d}: another test split than the first run's")
            clicked = click > 0.5
            se = (p[cvr].astype(np.float64) - play) ** 2
            mse = float(se[clicked].mean())
            auc = weighted_auc(p[ctr].astype(np.float64), click, np.ones_like(click))
            for name, mine in ((f"{cvr}_mse", mse), (f"{ctr}_auc", auc)):
                theirs = reported.get(name)
                if theirs is not None and abs(theirs - mine) > 1e-4 * max(1.0, abs(theirs)):
                    raise SystemExit(f"{d}: recomputed test {name} {mine:.6f}, metrics.json says {theirs:.6f}")
            out.setdefault(kind, []).append({"se": se, "pctr": p[ctr].astype(np.float64), "mse": mse, "auc": auc})
    return base, out


def bootstrap(base, per: Dict[str, List[Dict[str, np.ndarray]]], ref: str, resamples: int = 2000,
              seed: int = 0) -> Dict[str, object]:
    if ref not in per:
        raise SystemExit(f"--ref: {ref} is not among the models {sorted(per)}")
    click, groups = base["click"], base["groups"]
    clicked = click > 0.5
    uniq, inv = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    G = len(uniq)

    def metrics(w):
        wc = w * clicked
        res = {}
        for kind, seeds in per.items():
            mse = np.mean([(s["se"] * wc).sum() / wc.sum() for s in seeds])
            auc = np.mean([weighted_auc(s["pctr"], click, w) for s in seeds])
            res[kind] = (mse, auc)
        return res

    obs = metrics(np.ones(len(click)))
    draws = {k: [] for k in per if k != ref}
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, G, G), minlength=G).astype(np.float64)
        m = metrics(counts[inv])
        for k in draws:
            draws[k].append(((m[k][0] - m[ref][0]) / m[k][0] * 100.0, m[ref][1] - m[k][1]))
    report = {"ref": ref, "resamples": resamples, "group": "request", "test_rows": int(len(click)),
              "test_clicked": int(clicked.sum()), "test_groups": int(G),
              "observed": {k: {"cvr_mse": v[0], "ctr_auc": v[1], "seeds": len(per[k])} for k, v in obs.items()},
              "versus": {}}
    for k, d in draws.items():
        a = np.asarray(d)
        report["versus"][k] = {
            "cvr_gain_pct": (obs[k][0] - obs[ref][0]) / obs[k][0] * 100.0,
            "cvr_gain_ci95": [float(np.percentile(a[:, 0], 2.5)), float(np.percentile(a[:, 0], 97.5))],
            "p_ref_lower_cvr_mse": float((a[:, 0] > 0).mean()),
            "ctr_auc_diff": obs[ref][1] - obs[k][1],
            "ctr_auc_diff_ci95": [float(np.percentile(a[:, 1], 2.5)), float(np.percentile(a[:, 1], 97.5))],
            "p_ctr_within_0.002": float((a[:, 1] >= -0.002).mean()),
        }
    return report


def table(rep) -> str:
    from ncs.models import PAPER_NAMES
    ref = PAPER_NAMES.get(rep["ref"], rep["ref"])
    lines = [f"| model | test CVR MSE (seed mean) | test CTR AUC (seed mean) | {ref}'s CVR gain | "
             f"95 % interval (test resampled) | share of resamples {ref} lower | CTR AUC diff | 95 % interval |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in rep["versus"].items():
        o = rep["observed"][k]
        lines.append(f"| {PAPER_NAMES.get(k, k)} | {o['cvr_mse']:.5f} | {o['ctr_auc']:.4f} | {v['cvr_gain_pct']:+.2f} % | "
                     f"[{v['cvr_gain_ci95'][0]:+.2f}, {v['cvr_gain_ci95'][1]:+.2f}] % | {v['p_ref_lower_cvr_mse']:.2f} | "
                     f"{v['ctr_auc_diff']:+.4f} | [{v['ctr_auc_diff_ci95'][0]:+.4f}, {v['ctr_auc_diff_ci95'][1]:+.4f}] |")
    o = rep["observed"][rep["ref"]]
    lines.append(f"| **{ref}** | {o['cvr_mse']:.5f} | {o['ctr_auc']:.4f} | | | | | |")
    return "\n".join(lines)


def _study_models(study: str, kinds: Sequence[str]) -> Dict[str, List[str]]:
    out = {}
    for k in kinds:
        dirs = sorted(glob.glob(os.path.join(study, "final", k, "seed*")))
        if dirs:
            out[k] = dirs
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", help="an ncs tune directory: its final/<kind>/seed*/ runs (comma-separated: "
                                   "the parts of one study)")
    p.add_argument("--run", action="append", default=[], help="KIND=DIR1,DIR2,... (one run directory per seed)")
    p.add_argument("--ref", default="connection")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--doc", help="a markdown file whose <!-- table:MARKER --> block gets the table")
    p.add_argument("--marker")
    p.add_argument("--from-json", help="render the table of a report written earlier by --json (no scoring)")
    a = p.parse_args(argv)
    from ncs.models import RUN_ORDER
    models: Dict[str, List[str]] = {}
    for st in (a.study.split(",") if a.study else []):  # several: one study split over processes
        models.update(_study_models(st, RUN_ORDER))
    for spec in a.run:
        kind, _, dirs = spec.partition("=")
        models[kind] = [d for d in dirs.split(",") if d]
    if a.from_json:
        rep = json.loads(Path(a.from_json).read_text())
    else:
        if len(models) < 2:
            raise SystemExit("expected at least two models (--study or --run)")
        base, per = collect(models)
        rep = bootstrap(base, per, a.ref, a.resamples, a.seed)
        rep["runs"] = models
    sys.path.insert(0, str(HERE))
    from protocol_report import emit
    return emit(rep, table(rep), None if a.from_json else a.json, a.doc, a.marker)


if __name__ == "__main__":
    sys.exit(main())
