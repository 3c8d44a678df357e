#!/usr/bin/env python3
"""Aggregate the experiment run directories into the tables and figures of docs/RESULTS.md.

    python scripts/experiments/make_report.py --runs runs/exp \
        --stages docs/results/stages_cpu.json --doc docs/RESULTS.md

Reads RUNS/<grid>/<id>/metrics.json (+ masks.json, masks.safetensors, <id>.tags.json,
<id>.time.json) of the grids in grids.py; a run without metrics.json (unfinished) is left out
and the tables say how many seeds each number averages. Writes:
  docs/results/<table>.json and .csv   the aggregated numbers (small)
  docs/results/tables.md               every table in Markdown, each under the command that made it
  docs/figures/*.png                   sweep, ablations, masks (Fig. 2 in spirit), rounds, speed
and with --doc replaces each block between `<!-- table:NAME -->` and `<!-- /table:NAME -->` of
that Markdown file by the table NAME, so RESULTS.md is regenerated, not hand-copied.

Gains are computed as in the paper's Table 2: CVR gain = (MSE_single - MSE_model) / MSE_single,
CTR gain = (AUC_model - AUC_single) / AUC_single, on the seed means ("gain"); "paired" is the
mean +- std over seeds of the same gain computed seed by seed (same seed, same data order).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODELS = ("single", "layer", "connection")
PAPER = {"single": "Single_Task", "layer": "Layer_Share", "connection": "Connection_Share"}
RUN_CMD = "python scripts/experiments/run_experiments.py {grid} --runs runs/exp --jobs 2"


# ----------------------------------------------------------------------------------- loading
def load_grid(runs: Path, grid: str) -> List[Dict[str, Any]]:
    """Finished runs of a grid: tags + metrics (+ masks stats, wall time), sorted by run id."""
    gdir = runs / grid
    out = []
    if not gdir.is_dir():
        return out
    for tags_path in sorted(gdir.glob("*.tags.json")):
        run_id = tags_path.name[: -len(".tags.json")]
        mpath = gdir / run_id / "metrics.json"
        if not mpath.is_file():
            continue
        rec = json.loads(tags_path.read_text())
        m = json.loads(mpath.read_text())
        rec["dir"] = str(gdir / run_id)
        rec["models"] = m.get("models", {})
        rec["stages"] = m.get("stages", {})
        masks = gdir / run_id / "masks.json"
        rec["masks"] = json.loads(masks.read_text()) if masks.is_file() else None
        split = gdir / run_id / "split.json"
        rec["split"] = json.loads(split.read_text()) if split.is_file() else None
        t = gdir / f"{run_id}.time.json"
        rec["wall_s"] = json.loads(t.read_text())["wall_s"] if t.is_file() else None
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------- stats
def mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else float("nan")


def std(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def cvr_gain(base_mse: float, mse: float) -> float:
    return (base_mse - mse) / base_mse * 100.0


def ctr_gain(base_auc: float, auc: float) -> float:
    return (auc - base_auc) / base_auc * 100.0


def fmt(v: Optional[float], spec: str = ".5f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def pm(m: float, s: float, spec: str = ".5f") -> str:
    if isinstance(s, float) and math.isnan(s):
        return fmt(m, spec)
    return f"{fmt(m, spec)} ± {fmt(s, spec)}"


def pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:+.2f}%"


def pct_pm(m: float, s: float) -> str:
    if math.isnan(m):
        return "-"
    return pct(m) if math.isnan(s) else f"{m:+.2f}% ± {s:.2f}"


def compare(records: List[Dict[str, Any]], model: str, base: str) -> Dict[str, Any]:
    """Gains of `model` over `base` in the runs holding both: of the means and paired by seed."""
    pairs = [(r["models"][base], r["models"][model]) for r in records
             if base in r["models"] and model in r["models"]]
    if not pairs:
        return {"n": 0}
    b_mse, m_mse = mean([b["cvr_mse"] for b, _ in pairs]), mean([m["cvr_mse"] for _, m in pairs])
    b_auc, m_auc = mean([b["ctr_auc"] for b, _ in pairs]), mean([m["ctr_auc"] for _, m in pairs])
    pc = [cvr_gain(b["cvr_mse"], m["cvr_mse"]) for b, m in pairs]
    pa = [ctr_gain(b["ctr_auc"], m["ctr_auc"]) for b, m in pairs]
    return {
        "n": len(pairs),
        "cvr_gain": cvr_gain(b_mse, m_mse), "ctr_gain": ctr_gain(b_auc, m_auc),
        "cvr_gain_paired_mean": mean(pc), "cvr_gain_paired_std": std(pc),
        "ctr_gain_paired_mean": mean(pa), "ctr_gain_paired_std": std(pa),
        "cvr_wins": sum(m["cvr_mse"] < b["cvr_mse"] for b, m in pairs),
        "ctr_wins": sum(m["ctr_auc"] > b["ctr_auc"] for b, m in pairs),
    }


def model_summary(records: List[Dict[str, Any]], model: str) -> Dict[str, Any]:
    ms = [r["models"][model] for r in records if model in r["models"]]
    return {
        "n": len(ms),
        "cvr_mse_mean": mean([m["cvr_mse"] for m in ms]), "cvr_mse_std": std([m["cvr_mse"] for m in ms]),
        "ctr_auc_mean": mean([m["ctr_auc"] for m in ms]), "ctr_auc_std": std([m["ctr_auc"] for m in ms]),
        "ctr_logloss_mean": mean([m.get("ctr_logloss", float("nan")) for m in ms]),
    }


# ----------------------------------------------------------------------------------- tables
def table2(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    rows = []
    for model in MODELS:
        s = model_summary(records, model)
        if not s["n"]:
            continue
        row = {"model": PAPER[model], **s}
        if model != "single":
            row["vs_single"] = compare(records, model, "single")
        if model == "connection":
            row["vs_layer"] = compare(records, "connection", "layer")
        rows.append(row)
    return {"rows": rows, "seeds": sorted({r.get("seed") for r in records})}


def table2_md(t: Dict[str, Any]) -> str:
    out = io.StringIO()
    n = len(t["seeds"])
    out.write(f"| Model | CVR MSE (mean ± std, {n} seeds) | CTR AUC (mean ± std) | CVR gain | CTR gain "
              f"| CVR gain, paired | CTR gain, paired | seeds better than Single (CVR / CTR) |\n")
    out.write("|---|---|---|---|---|---|---|---|\n")
    for r in t["rows"]:
        g = r.get("vs_single", {"n": 0})
        if g["n"]:
            cells = [pct(g["cvr_gain"]), pct(g["ctr_gain"]),
                     pct_pm(g["cvr_gain_paired_mean"], g["cvr_gain_paired_std"]),
                     pct_pm(g["ctr_gain_paired_mean"], g["ctr_gain_paired_std"]),
                     f"{g['cvr_wins']}/{g['n']} / {g['ctr_wins']}/{g['n']}"]
        else:
            cells = ["-"] * 5
        out.write(f"| {r['model']} | {pm(r['cvr_mse_mean'], r['cvr_mse_std'])} | "
                  f"{pm(r['ctr_auc_mean'], r['ctr_auc_std'], '.4f')} | " + " | ".join(cells) + " |\n")
    conn = next((r for r in t["rows"] if r["model"] == PAPER["connection"]), None)
    if conn and conn.get("vs_layer", {}).get("n"):
        g = conn["vs_layer"]
        out.write(f"\nConnection_Share vs Layer_Share: CVR gain {pct(g['cvr_gain'])} "
                  f"(paired {pct_pm(g['cvr_gain_paired_mean'], g['cvr_gain_paired_std'])}, better in "
                  f"{g['cvr_wins']}/{g['n']} seeds), CTR gain {pct(g['ctr_gain'])} (paired "
                  f"{pct_pm(g['ctr_gain_paired_mean'], g['ctr_gain_paired_std'])}, better in "
                  f"{g['ctr_wins']}/{g['n']} seeds).\n")
    return out.getvalue()


def sweep_table(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for c in sorted({r["conflict"] for r in records}):
        rs = [r for r in records if r["conflict"] == c]
        row: Dict[str, Any] = {"conflict": c, "seeds": len(rs)}
        for m in MODELS:
            s = model_summary(rs, m)
            row[f"{m}_cvr_mse"] = s["cvr_mse_mean"]
            row[f"{m}_ctr_auc"] = s["ctr_auc_mean"]
        for m, base in (("layer", "single"), ("connection", "single"), ("connection", "layer")):
            g = compare(rs, m, base)
            for k in ("cvr_gain", "ctr_gain", "cvr_gain_paired_std", "ctr_gain_paired_std", "cvr_wins", "ctr_wins"):
                row[f"{m}_vs_{base}_{k}"] = g.get(k, float("nan"))
        rows.append(row)
    return rows


def sweep_md(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write("| conflict | seeds | CVR MSE Single / Layer / Connection | CVR gain Layer | CVR gain Connection "
              "| Connection vs Layer (CVR) | CTR AUC Single / Layer / Connection | CTR gain Layer "
              "| CTR gain Connection | Connection vs Layer (CTR) |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        n = r["seeds"]
        out.write(
            f"| {r['conflict']:g} | {n} | {fmt(r['single_cvr_mse'])} / {fmt(r['layer_cvr_mse'])} / "
            f"{fmt(r['connection_cvr_mse'])} | {pct(r['layer_vs_single_cvr_gain'])} | "
            f"{pct(r['connection_vs_single_cvr_gain'])} | {pct(r['connection_vs_layer_cvr_gain'])} "
            f"({r['connection_vs_layer_cvr_wins']}/{n}) | {fmt(r['single_ctr_auc'], '.4f')} / "
            f"{fmt(r['layer_ctr_auc'], '.4f')} / {fmt(r['connection_ctr_auc'], '.4f')} | "
            f"{pct(r['layer_vs_single_ctr_gain'])} | {pct(r['connection_vs_single_ctr_gain'])} | "
            f"{pct(r['connection_vs_layer_ctr_gain'])} ({r['connection_vs_layer_ctr_wins']}/{n}) |\n")
    return out.getvalue()


def _conn_facts(rec: Dict[str, Any]) -> Dict[str, Any]:
    st = rec["stages"].get("connection", {})
    masks = st.get("masks", {})
    secs = st.get("seconds", {})
    return {
        "ctr_density": masks.get("ctr", {}).get("density"), "cvr_density": masks.get("cvr", {}).get("density"),
        "ctr_round": masks.get("ctr", {}).get("selected_round"), "cvr_round": masks.get("cvr", {}).get("selected_round"),
        "seconds": sum(secs.values()) if secs else None,
        "jaccard": (rec["masks"] or {}).get("total", {}).get("pairs", {}).get("ctr&cvr", {}).get("jaccard"),
    }


def ablation_table(abl: List[Dict[str, Any]], default: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Connection model per variant vs the default config (the sweep's conflict-0.5 runs)."""
    variants: Dict[str, List[Dict[str, Any]]] = {"default": default}
    for r in abl:
        variants.setdefault(r["variant"], []).append(r)
    base_by_seed = {r["seed"]: r["models"]["connection"] for r in default if "connection" in r["models"]}
    rows = []
    for v, rs in variants.items():
        rs = [r for r in rs if "connection" in r["models"]]
        if not rs:
            continue
        conn = [r["models"]["connection"] for r in rs]
        d_cvr = [cvr_gain(base_by_seed[r["seed"]]["cvr_mse"], r["models"]["connection"]["cvr_mse"])
                 for r in rs if r["seed"] in base_by_seed]
        d_ctr = [ctr_gain(base_by_seed[r["seed"]]["ctr_auc"], r["models"]["connection"]["ctr_auc"])
                 for r in rs if r["seed"] in base_by_seed]
        facts = [_conn_facts(r) for r in rs]
        row = {
            "variant": v, "seeds": len(rs),
            "cvr_mse_mean": mean([m["cvr_mse"] for m in conn]), "cvr_mse_std": std([m["cvr_mse"] for m in conn]),
            "ctr_auc_mean": mean([m["ctr_auc"] for m in conn]), "ctr_auc_std": std([m["ctr_auc"] for m in conn]),
            "cvr_vs_default": mean(d_cvr), "ctr_vs_default": mean(d_ctr),
            "ctr_density": mean([f["ctr_density"] for f in facts]), "cvr_density": mean([f["cvr_density"] for f in facts]),
            "rounds": ", ".join(f"{f['ctr_round']}/{f['cvr_round']}" for f in facts),
            "jaccard": mean([f["jaccard"] for f in facts]),
            "connection_s": mean([f["seconds"] for f in facts]),
        }
        if all("single" in r["models"] for r in rs):
            g = compare(rs, "connection", "single")
            gl = compare(rs, "connection", "layer")
            row["conn_vs_single_cvr_gain"] = g["cvr_gain"]
            row["conn_vs_layer_cvr_gain"] = gl["cvr_gain"]
            row["conn_vs_single_ctr_gain"] = g["ctr_gain"]
            row["conn_vs_layer_ctr_gain"] = gl["ctr_gain"]
        rows.append(row)
    return rows


def ablation_md(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write("| variant | seeds | CVR MSE | CTR AUC | CVR gain vs default | CTR gain vs default | kept density "
              "CTR / CVR | selected rounds CTR/CVR per seed | CTR∩CVR Jaccard | connection model s |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        out.write(f"| {r['variant']} | {r['seeds']} | {pm(r['cvr_mse_mean'], r['cvr_mse_std'])} | "
                  f"{pm(r['ctr_auc_mean'], r['ctr_auc_std'], '.4f')} | "
                  f"{'-' if r['variant'] == 'default' else pct(r['cvr_vs_default'])} | "
                  f"{'-' if r['variant'] == 'default' else pct(r['ctr_vs_default'])} | "
                  f"{fmt(r['ctr_density'], '.3f')} / {fmt(r['cvr_density'], '.3f')} | {r['rounds']} | "
                  f"{fmt(r['jaccard'], '.3f')} | {fmt(r['connection_s'], '.0f')} |\n")
    both = [r for r in rows if "conn_vs_single_cvr_gain" in r]
    if both:
        out.write("\nWith all three models trained in the run (same loss weights for each):\n\n")
        out.write("| variant | Connection vs Single CVR | vs Layer CVR | Connection vs Single CTR | vs Layer CTR |\n")
        out.write("|---|---|---|---|---|\n")
        for r in both:
            out.write(f"| {r['variant']} | {pct(r['conn_vs_single_cvr_gain'])} | {pct(r['conn_vs_layer_cvr_gain'])} | "
                      f"{pct(r['conn_vs_single_ctr_gain'])} | {pct(r['conn_vs_layer_ctr_gain'])} |\n")
    return out.getvalue()


def masks_table(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per masked layer (and in total): each task's density, the shared / task-only / unused
    fractions and the Jaccard of the kept masks, averaged over the runs."""
    recs = [r for r in records if r.get("masks")]
    if not recs:
        return []
    layers = list(recs[0]["masks"]["layers"]) + ["total"]
    rows = []
    for layer in layers:
        per = [r["masks"]["total"] if layer == "total" else r["masks"]["layers"][layer] for r in recs]
        shape = "" if layer == "total" else "x".join(map(str, per[0]["shape"]))
        rows.append({
            "layer": layer, "shape": shape, "runs": len(per),
            "ctr_density": mean([p["density"]["ctr"] for p in per]),
            "cvr_density": mean([p["density"]["cvr"] for p in per]),
            "shared": mean([p["shared_fraction"] for p in per]),
            "ctr_only": mean([p["only_fraction"]["ctr"] for p in per]),
            "cvr_only": mean([p["only_fraction"]["cvr"] for p in per]),
            "unused": mean([p["unused_fraction"] for p in per]),
            "jaccard": mean([p["pairs"]["ctr&cvr"]["jaccard"] for p in per]),
        })
    return rows


def masks_md(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write("| layer | shape (out x in) | CTR density | CVR density | shared by both | CTR only | CVR only "
              "| unused | Jaccard CTR/CVR |\n|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        out.write(f"| {r['layer']} | {r['shape']} | {r['ctr_density']:.3f} | {r['cvr_density']:.3f} | "
                  f"{r['shared']:.3f} | {r['ctr_only']:.3f} | {r['cvr_only']:.3f} | {r['unused']:.3f} | "
                  f"{r['jaccard']:.3f} |\n")
    return out.getvalue()


def _epoch_rows(rec: Dict[str, Any]) -> Dict[str, int]:
    sp = rec.get("split") or {}
    tr = sp.get("train", {})
    return {"rows": int(tr.get("rows", 0)), "clicks": int(tr.get("clicks", 0))}


def stage_times(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Wall seconds of each trainer stage (training + the validation pass after each epoch or
    round) and the training samples/s they imply, averaged over the runs."""
    acc: Dict[str, List[tuple]] = {}
    for r in records:
        n = _epoch_rows(r)
        cfg_path = Path(r["dir"] + ".yaml")
        if not cfg_path.is_file() or not n["rows"]:
            continue
        import yaml
        cfg = yaml.safe_load(cfg_path.read_text())
        rounds = cfg["stages"]["masks"]["rounds"] + 1
        epr = cfg["stages"]["masks"]["epochs_per_round"]
        for kind, st in r["stages"].items():
            secs = st.get("seconds", {})
            if kind == "connection":
                joint_epochs = st.get("joint", {}).get("epochs_run", 0)
                samples = {"warmup": cfg["stages"]["warmup"]["epochs"] * n["rows"],
                           "masks": rounds * epr * (n["rows"] + n["clicks"]),
                           "joint": joint_epochs * (n["rows"] + n["clicks"])}
            else:
                samples = {"train": st.get("train", {}).get("epochs_run", 0) * n["rows"]}
            for stage, s in secs.items():
                acc.setdefault(f"{kind}/{stage}", []).append((s, samples.get(stage, 0)))
    rows = []
    for key, vals in acc.items():
        kind, stage = key.split("/")
        s = mean([v[0] for v in vals])
        smp = mean([v[1] for v in vals])
        rows.append({"model": PAPER[kind], "stage": stage, "runs": len(vals), "seconds": s,
                     "samples": smp, "samples_per_s": smp / s if s else float("nan")})
    return rows


def stage_times_md(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write("| model | stage | runs | wall s (mean) | training samples | samples/s |\n|---|---|---|---|---|---|\n")
    for r in rows:
        out.write(f"| {r['model']} | {r['stage']} | {r['runs']} | {r['seconds']:.1f} | {r['samples']:,.0f} | "
                  f"{r['samples_per_s']:,.0f} |\n")
    return out.getvalue()


def speed_rows(stages_json: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for res in stages_json.get("results", []):
        row = {"backend": res["backend"], "resolved": res.get("resolved_backend")}
        for st in ("warmup", "masks", "joint", "evaluate"):
            if isinstance(res.get(st), dict):
                row[f"{st}_samples_per_s"] = res[st]["samples_per_s"]
                row[f"{st}_s"] = res[st]["seconds"]
                if st == "masks":
                    row["prune_s"] = sum(v.get("prune_s", 0.0) for v in res[st].get("per_task", {}).values())
        rows.append(row)
    return rows


def speed_md(rows: List[Dict[str, Any]], env: Dict[str, Any], config: Dict[str, Any]) -> str:
    out = io.StringIO()
    out.write(f"{env.get('device_name', '?')}, {env.get('torch_threads', '?')} torch thread(s), "
              f"torch {env.get('versions', {}).get('torch', '?')}; batch {config.get('batch', '?')}, "
              f"{config.get('steps', '?')} timed steps per stage.\n\n")
    out.write("| backend | warmup samples/s | masks samples/s | joint samples/s | evaluate samples/s | prune s (2 tasks) |\n")
    out.write("|---|---|---|---|---|---|\n")
    torch_row = next((r for r in rows if r["backend"] == "torch"), None)
    for r in rows:
        cells = []
        for st in ("warmup", "masks", "joint", "evaluate"):
            v = r.get(f"{st}_samples_per_s")
            ratio = ""
            if torch_row and r is not torch_row and v and torch_row.get(f"{st}_samples_per_s"):
                ratio = f" ({v / torch_row[f'{st}_samples_per_s']:.2f}x)"
            cells.append("-" if v is None else f"{v:,.0f}{ratio}")
        name = r["backend"] + (f" -> {r['resolved']}" if r.get("resolved") and r["resolved"] != r["backend"] else "")
        out.write(f"| {name} | " + " | ".join(cells) + f" | {fmt(r.get('prune_s'), '.3f')} |\n")
    return out.getvalue()


# ----------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def fig_sweep(rows: List[Dict[str, Any]], path: Path) -> None:
    plt = _plt()
    xs = [r["conflict"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, title in ((axes[0], "cvr", "CVR MSE gain vs Single_Task (%)"),
                              (axes[1], "ctr", "CTR AUC gain vs Single_Task (%)")):
        for m, color in (("layer", "#c44e52"), ("connection", "#3a9d5d")):
            ys = [r[f"{m}_vs_single_{metric}_gain"] for r in rows]
            es = [0.0 if math.isnan(r[f"{m}_vs_single_{metric}_gain_paired_std"]) else
                  r[f"{m}_vs_single_{metric}_gain_paired_std"] for r in rows]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color, label=PAPER[m])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("planted conflict")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_ablations(rows: List[Dict[str, Any]], path: Path) -> None:
    plt = _plt()
    rs = [r for r in rows if r["variant"] != "default"]
    if not rs:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.35 * len(rs) + 1.4), sharey=True)
    ys = list(range(len(rs)))
    for ax, key, title in ((axes[0], "cvr_vs_default", "CVR MSE gain vs default (%)"),
                           (axes[1], "ctr_vs_default", "CTR AUC gain vs default (%)")):
        vals = [r[key] for r in rs]
        ax.barh(ys, vals, color=["#3a9d5d" if v > 0 else "#c44e52" for v in vals])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels([r["variant"] for r in rs], fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_masks(runs: List[Dict[str, Any]], path: Path) -> None:
    """Fig. 2 in spirit: per layer, the shares of weights kept by both tasks (green), CTR only
    (yellow), CVR only (blue) and neither (grey), for each run given; and the last masked
    layer of the first run drawn as a picture, one pixel per connection, in the same colours."""
    import numpy as np
    import ncs_kernels as nk
    plt = _plt()
    runs = [r for r in runs if r.get("masks")]
    if not runs:
        return
    colors = {"shared": "#3a9d5d", "ctr": "#e6b422", "cvr": "#3b75af", "unused": "#e0e0e0"}
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(3.6 * (len(runs) + 1), 3.6))
    for ax, r in zip(axes, runs):
        layers = list(r["masks"]["layers"])
        bottom = np.zeros(len(layers))
        for key, label in (("shared", "both"), ("ctr", "CTR only"), ("cvr", "CVR only"), ("unused", "neither")):
            vals = np.array([r["masks"]["layers"][n]["shared_fraction"] if key == "shared" else
                             r["masks"]["layers"][n]["unused_fraction"] if key == "unused" else
                             r["masks"]["layers"][n]["only_fraction"][key] for n in layers])
            ax.bar(range(len(layers)), vals, bottom=bottom, color=colors[key], label=label)
            bottom += vals
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(["x".join(map(str, r["masks"]["layers"][n]["shape"])) for n in layers], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(r["label"], fontsize=9)
    axes[0].set_ylabel("fraction of the layer's weights")
    # legend where the bars are low: the synthetic panel's first layer is pruned the most
    axes[min(1, len(runs) - 1)].legend(fontsize=7, loc="upper left")
    r = runs[0]
    masks, meta = nk.load_masks(os.path.join(r["dir"], "masks.safetensors"))
    last = list(masks)[-1]
    k = meta["layers"][last]["shape"][1]
    ctr = nk.unpack_mask(masks[last]["ctr"], k).numpy()
    cvr = nk.unpack_mask(masks[last]["cvr"], k).numpy()
    img = np.ones(ctr.shape + (3,))
    for sel, c in ((ctr & cvr, colors["shared"]), (ctr & ~cvr, colors["ctr"]), (~ctr & cvr, colors["cvr"]),
                   (~ctr & ~cvr, colors["unused"])):
        img[sel] = [int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    ax = axes[-1]
    ax.imshow(img, interpolation="nearest", aspect="auto")
    ax.set_title(f"{r['label']}: {last} ({ctr.shape[0]}x{k}),\none pixel per connection", fontsize=9)
    ax.set_xlabel("input unit")
    ax.set_ylabel("output unit")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fig_rounds(groups: Dict[str, List[Dict[str, Any]]], path: Path) -> None:
    """Validation metric of each mask round relative to the dense round 0, mean over seeds."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.3))
    if len(groups) == 1:
        axes = [axes]
    for ax, (label, recs) in zip(axes, groups.items()):
        for task, sign, color in (("ctr", 1, "#e6b422"), ("cvr", -1, "#3b75af")):
            series = []
            for r in recs:
                rounds = r["stages"].get("connection", {}).get("masks", {}).get(task, {}).get("rounds", [])
                if rounds and rounds[0]["metric"]:
                    base = rounds[0]["metric"]
                    series.append([(x["density"], sign * (x["metric"] / base - 1) * 100) for x in rounds])
            if not series:
                continue
            n = min(len(s) for s in series)
            xs = [mean([s[i][0] for s in series]) for i in range(n)]
            ys = [mean([s[i][1] for s in series]) for i in range(n)]
            ax.plot(xs, ys, marker="o", color=color,
                    label=f"{task.upper()} ({'AUC' if task == 'ctr' else 'MSE'}, better = up)")
        ax.axhline(0, color="k", lw=0.8)
        ax.invert_xaxis()
        ax.set_xlabel("mask density of the round")
        ax.set_ylabel("validation gain vs round 0 (%)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_speed(rows: List[Dict[str, Any]], title: str, path: Path) -> None:
    plt = _plt()
    stages = ["warmup", "masks", "joint", "evaluate"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    w = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        vals = [r.get(f"{s}_samples_per_s", 0) or 0 for s in stages]
        ax.bar([j + i * w for j in range(len(stages))], vals, width=w, label=r["backend"])
    ax.set_xticks([j + w * (len(rows) - 1) / 2 for j in range(len(stages))])
    ax.set_xticklabels(stages)
    ax.set_yscale("log")
    ax.set_ylabel("samples/s (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------------- output
def write_json_csv(name: str, rows: Any, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)

    def clean(o):
        if isinstance(o, float):
            return None if math.isnan(o) else round(o, 7)
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    (outdir / f"{name}.json").write_text(json.dumps(clean(rows), indent=1) + "\n")
    flat = rows["rows"] if isinstance(rows, dict) and "rows" in rows else rows
    if isinstance(flat, list) and flat and isinstance(flat[0], dict):
        cols: List[str] = []
        for r in flat:
            for k, v in r.items():
                if not isinstance(v, dict) and k not in cols:
                    cols.append(k)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in flat:
            w.writerow({k: clean(r.get(k)) for k in cols})
        (outdir / f"{name}.csv").write_text(buf.getvalue())


def replace_blocks(doc: Path, tables: Dict[str, str]) -> List[str]:
    """Fill every `<!-- table:NAME -->...<!-- /table:NAME -->` block of doc; returns the names filled."""
    text = doc.read_text()
    done = []
    for name, body in tables.items():
        pat = re.compile(rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)", re.S)
        if pat.search(text):
            text = pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
            done.append(name)
    doc.write_text(text)
    return done


def environment() -> Dict[str, Any]:
    import numpy
    import torch
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "cuda_available": torch.cuda.is_available(), "git_commit": commit}


def build(runs: Path, results: Path, figures: Path, stages_json: Optional[Path]) -> Dict[str, str]:
    """Every table (Markdown, keyed by name) from the run directories; writes JSON/CSV and figures."""
    tables: Dict[str, str] = {}
    figures.mkdir(parents=True, exist_ok=True)
    cmd = lambda g: f"Command: `{RUN_CMD.format(grid=g)}` then `python scripts/experiments/make_report.py`.\n\n"  # noqa: E731

    grids = {g: load_grid(runs, g) for g in ("real", "real_splits", "synth1m")}
    for g, recs in grids.items():   # Table 2 of each grid
        if recs:
            t = table2(recs)
            write_json_csv(f"table2_{g}", t, results)
            tables[f"table2_{g}"] = cmd(g) + table2_md(t)
    real, synth = grids["real"], grids["synth1m"]
    sweep = load_grid(runs, "sweep")
    if sweep:
        rows = sweep_table(sweep)
        write_json_csv("sweep", rows, results)
        tables["sweep"] = cmd("sweep") + sweep_md(rows)
        fig_sweep(rows, figures / "sweep.png")
    abl = load_grid(runs, "ablation")
    default = [r for r in sweep if r.get("conflict") == 0.5]
    if abl or default:
        rows = ablation_table(abl, default)
        write_json_csv("ablations", rows, results)
        tables["ablations"] = (cmd("ablation") + "The default row is the sweep's conflict-0.5 runs (same config); "
                               "gains vs default are paired by seed, as the paper computes gains "
                               "(CVR: MSE reduction, CTR: AUC increase).\n\n" + ablation_md(rows))
        fig_ablations(rows, figures / "ablations.png")
    real_abl = load_grid(runs, "real_ablation")
    if real_abl:
        rows = ablation_table(real_abl, real)
        write_json_csv("ablations_real", rows, results)
        tables["ablations_real"] = (cmd("real_ablation") + "The default row is the `real` grid's runs (same "
                                    "seeds); gains vs default are paired by seed.\n\n" + ablation_md(rows))
    s1_abl = load_grid(runs, "synth1m_ablation")
    if s1_abl:
        rows = ablation_table(s1_abl, [r for r in synth if r["seed"] in {a["seed"] for a in s1_abl}])
        write_json_csv("ablations_synth1m", rows, results)
        tables["ablations_synth1m"] = (cmd("synth1m_ablation") + "The default row is the `synth1m` run of the "
                                       "same seed.\n\n" + ablation_md(rows))
    mask_groups = {}
    if real:
        mask_groups["real"] = real
    if synth:
        mask_groups["synth1m"] = synth
    mk = []
    for label, recs in mask_groups.items():
        rows = masks_table(recs)
        write_json_csv(f"masks_{label}", rows, results)
        tables[f"masks_{label}"] = (f"Kept masks of the connection model, mean over {len(recs)} seeds "
                                    f"(grid `{label}`).\n\n" + masks_md(rows))
        first = next((r for r in recs if r.get("masks")), None)
        if first is not None:
            mk.append({**first, "label": f"{label} ({first['run_id']})"})
    if mk:
        fig_masks(mk, figures / "masks.png")
    if mask_groups:
        fig_rounds({f"{k} (mean of {len(v)} seeds)": v for k, v in mask_groups.items()}, figures / "rounds.png")
    timing = {}
    for label, recs in (("real", real), ("synth1m", synth), ("sweep", sweep)):
        if recs:
            rows = stage_times(recs)
            timing[label] = rows
            tables[f"stage_times_{label}"] = stage_times_md(rows)
    if timing:
        write_json_csv("stage_times", timing, results)
    if stages_json is not None and stages_json.is_file():
        sj = json.loads(stages_json.read_text())
        rows = speed_rows(sj)
        tables["speed_cpu"] = (f"Command: `python bench/stages.py --device cpu --batch {sj['config'].get('batch')} "
                               f"--steps {sj['config'].get('steps')} --threads {sj['env'].get('torch_threads')} "
                               f"--json {stages_json.as_posix()}` (file: `{stages_json.as_posix()}`).\n\n"
                               + speed_md(rows, sj["env"], sj["config"]))
        fig_speed(rows, f"trainer stages, {sj['env'].get('device_name')}, batch {sj['config'].get('batch')}, "
                        f"{sj['env'].get('torch_threads')} thread(s)", figures / "speed_cpu.png")
    env = environment()
    (results / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    tables["env"] = (f"CPU: {env['cpu']} ({env['cpus']} cores visible), Python {env['python']}, torch {env['torch']}, "
                     f"numpy {env['numpy']}, CUDA available: {env['cuda_available']}, report built at commit "
                     f"{env['git_commit']}.\n")
    return tables


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/exp", help="root of the run directories")
    p.add_argument("--results", default=str(REPO / "docs" / "results"), help="where the JSON/CSV go")
    p.add_argument("--figures", default=str(REPO / "docs" / "figures"), help="where the PNGs go")
    p.add_argument("--stages", help="a bench/stages.py JSON to report (CPU speed)")
    p.add_argument("--doc", help="a Markdown file whose <!-- table:NAME --> blocks are refilled")
    args = p.parse_args(argv)
    results, figures = Path(args.results), Path(args.figures)
    tables = build(Path(args.runs), results, figures, Path(args.stages) if args.stages else None)
    md = io.StringIO()
    for name, body in tables.items():
        md.write(f"## {name}\n\n{body}\n")
    (results / "tables.md").write_text(md.getvalue())
    print(f"tables: {', '.join(tables)}; wrote {results}/tables.md")
    if args.doc:
        done = replace_blocks(Path(args.doc), tables)
        print(f"{args.doc}: filled {', '.join(done) or 'no blocks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
