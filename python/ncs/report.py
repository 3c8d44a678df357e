"""Mask statistics and figures of a run (matplotlib, Agg backend: no display needed).

mask_stats: per masked layer, each task's density, the fraction of weights shared by every
task, kept by one task only, and unused, and the pairwise Jaccard of the tasks' masks; all
computed on the packed words (popcounts), never on unpacked floats.

plot_masks: the picture of the paper's Fig. 2 as numbers: per layer a stacked bar of
shared / task-only / unused weights, and each task's density. plot_curves: training loss and
validation metrics per epoch / round for every model.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Dict, Mapping

import torch

import ncs_kernels as nk
from ncs_kernels.atomic import atomic_path


def mask_stats(masks: Mapping[str, Mapping[str, torch.Tensor]], in_features: Mapping[str, int]) -> Dict[str, Any]:
    """masks[layer][task] = packed int32. Returns {"layers": {layer: {...}}, "total": {...}}."""
    layers: Dict[str, Any] = {}
    tot: Dict[str, Any] = {"weights": 0, "kept": {}, "shared": 0, "only": {}, "unused": 0, "pairs": {}}
    for layer, per in masks.items():
        tasks = list(per)
        k = int(in_features[layer])
        first = next(iter(per.values()))
        n_w = first.shape[0] * k
        all_and = first.clone()
        any_or = first.clone()
        for p in list(per.values())[1:]:
            all_and &= p
            any_or |= p
        kept = {t: nk.popcount(per[t]) for t in tasks}
        only = {}
        for t in tasks:
            others = torch.zeros_like(first)
            for u in tasks:
                if u != t:
                    others |= per[u]
            only[t] = nk.popcount(per[t] & ~others)
        shared = nk.popcount(all_and)
        unused = n_w - nk.popcount(any_or)
        pairs = {}
        for a, b in itertools.combinations(tasks, 2):
            o = nk.overlap(per[a], per[b])
            pairs[f"{a}&{b}"] = {"jaccard": o["jaccard"], "intersection": o["intersection"], "union": o["union"]}
        layers[layer] = {
            "shape": [int(first.shape[0]), k],
            "weights": n_w,
            "density": {t: kept[t] / n_w for t in tasks},
            "shared_fraction": shared / n_w,
            "only_fraction": {t: only[t] / n_w for t in tasks},
            "unused_fraction": unused / n_w,
            "shared_of_kept": {t: (shared / kept[t] if kept[t] else 0.0) for t in tasks},
            "pairs": pairs,
        }
        tot["weights"] += n_w
        tot["shared"] += shared
        tot["unused"] += unused
        for t in tasks:
            tot["kept"][t] = tot["kept"].get(t, 0) + kept[t]
            tot["only"][t] = tot["only"].get(t, 0) + only[t]
        for key, v in pairs.items():
            agg = tot["pairs"].setdefault(key, {"intersection": 0, "union": 0})
            agg["intersection"] += v["intersection"]
            agg["union"] += v["union"]
    n = tot["weights"] or 1
    total = {
        "weights": tot["weights"],
        "density": {t: v / n for t, v in tot["kept"].items()},
        "shared_fraction": tot["shared"] / n,
        "only_fraction": {t: v / n for t, v in tot["only"].items()},
        "unused_fraction": tot["unused"] / n,
        "pairs": {k: {"jaccard": (v["intersection"] / v["union"] if v["union"] else 1.0), **v}
                  for k, v in tot["pairs"].items()},
    }
    return {"layers": layers, "total": total}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str, dpi: int) -> str:
    """Lay out, write `path` atomically (ncs_kernels.atomic; the format from its suffix, PNG when
    it has none), close the figure; returns path."""
    fig.tight_layout()
    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    plt.close(fig)
    return path


def plot_masks(stats: Dict[str, Any], path: str) -> str:
    """Stacked bars per layer (shared by all tasks / one task only / other / unused) and task densities."""
    plt = _plt()
    layers = list(stats["layers"])
    if not layers:
        raise ValueError("stats: no layers to plot")
    tasks = list(stats["layers"][layers[0]]["density"])
    labels = [f"{name}\n{'x'.join(map(str, stats['layers'][name]['shape']))}" for name in layers]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    bottom = [0.0] * len(layers)
    palette = {"shared": "#3a9d5d", "unused": "#d9d9d9", "other": "#9e9ac8"}
    task_colors = ["#e6b422", "#3b75af", "#c44e52", "#8172b2", "#64b5cd"]

    def bar(values, label, color):
        ax.bar(range(len(layers)), values, bottom=bottom, label=label, color=color)
        for i, v in enumerate(values):
            bottom[i] += v

    bar([stats["layers"][n]["shared_fraction"] for n in layers], "shared (all tasks)", palette["shared"])
    for i, t in enumerate(tasks):
        bar([stats["layers"][n]["only_fraction"][t] for n in layers], f"{t} only", task_colors[i % len(task_colors)])
    if len(tasks) > 2:
        other = [1.0 - stats["layers"][n]["unused_fraction"] - stats["layers"][n]["shared_fraction"]
                 - sum(stats["layers"][n]["only_fraction"].values()) for n in layers]
        bar(other, "some tasks", palette["other"])
    bar([stats["layers"][n]["unused_fraction"] for n in layers], "unused", palette["unused"])
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("fraction of the layer's weights")
    ax.set_ylim(0, 1)
    ax.set_title("Connection sharing per layer")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    width = 0.8 / max(1, len(tasks))
    for i, t in enumerate(tasks):
        ax.bar([j + i * width for j in range(len(layers))], [stats["layers"][n]["density"][t] for n in layers],
               width=width, label=t, color=task_colors[i % len(task_colors)])
    ax.set_xticks([j + width * (len(tasks) - 1) / 2 for j in range(len(layers))])
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("mask density")
    ax.set_ylim(0, 1)
    pairs = stats.get("total", {}).get("pairs", {})
    jac = ", ".join(f"{k} Jaccard {v['jaccard']:.2f}" for k, v in pairs.items())
    ax.set_title("Task densities" + (f" ({jac})" if jac else ""), fontsize=9)
    ax.legend(fontsize=8)
    return _save(plt, fig, path, dpi=110)


def plot_curves(curves: Dict[str, Any], path: str) -> str:
    """Per model: training loss and validation AUC / MSE by epoch (connection: warmup epochs then
    joint epochs), and the mask rounds: each task's validation metric relative to its dense
    round 0, against the round's mask density."""
    plt = _plt()
    kinds = [k for k, v in curves.items() if v]
    if not kinds:
        raise ValueError("curves: nothing to plot")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_loss, ax_rounds, ax_auc, ax_mse = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    nan = float("nan")
    for kind in kinds:
        recs = curves[kind]
        epochs = [r for r in recs if r.get("stage") in ("train", "warmup", "joint")]
        xs = list(range(1, len(epochs) + 1))
        ax_loss.plot(xs, [r["train_loss"] for r in epochs], marker="o", label=kind)
        keys = [k for k in (epochs[0] if epochs else {}) if k.endswith(("_auc", "_mse"))]
        for mk in keys:
            ax = ax_auc if mk.endswith("_auc") else ax_mse
            ax.plot(xs, [nan if r.get(mk) is None else r[mk] for r in epochs], marker="o", label=f"{kind} {mk}")
        rounds = [r for r in recs if r.get("stage") == "masks"]
        for task in sorted({r["task"] for r in rounds}):
            rs = [r for r in rounds if r["task"] == task]
            mk = next((k for k in rs[0] if k.startswith(task + "_") and k.endswith(("_auc", "_mse"))), None)
            if mk is None or not rs[0].get(mk):
                continue
            base = rs[0][mk]
            ax_rounds.plot([r["density"] for r in rs],
                           [nan if r.get(mk) is None else (r[mk] / base - 1) * 100 for r in rs],
                           marker="x", label=f"{mk}")
    ax_loss.set_title("training loss per epoch")
    ax_loss.set_xlabel("epoch (connection: warmup, then joint)")
    ax_rounds.set_title("mask rounds: validation metric vs round 0 (dense)")
    ax_rounds.set_xlabel("mask density of the round")
    ax_rounds.set_ylabel("change vs round 0 (%)")
    ax_rounds.invert_xaxis()
    ax_auc.set_title("validation AUC per epoch")
    ax_mse.set_title("validation MSE per epoch")
    for ax in (ax_auc, ax_mse):
        ax.set_xlabel("epoch")
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path, dpi=100)


def plot_diagnostics(curves: Dict[str, Any], path: str) -> str:
    """The gradient diagnostics of curves.json (records with a "grad" entry): per model, each
    task's gradient norm on the shared embeddings and on every shared layer by epoch (log
    scale), and the cosine between the tasks' gradients per group (over all shared parameters
    too). x axis: the epochs in training order (connection: warmup, then joint)."""
    plt = _plt()
    kinds = [k for k, v in curves.items() if any("grad" in r for r in v)]
    if not kinds:
        raise ValueError("curves: no gradient diagnostics to plot")
    fig, axes = plt.subplots(len(kinds), 2, figsize=(12, 3.6 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        recs = [r for r in curves[kind] if "grad" in r]
        xs = list(range(1, len(recs) + 1))
        labels = [f"{r['stage'][0]}{r['epoch'] + 1}" for r in recs]
        groups = [g for g in recs[-1]["grad"]["groups"]]
        ax_n, ax_c = axes[row, 0], axes[row, 1]
        styles = ["-", "--", ":", "-."]
        for gi, g in enumerate(groups):
            if g == "all_shared":
                continue
            tasks = list(recs[-1]["grad"]["groups"][g]["norm"])
            for ti, t in enumerate(tasks):
                ys = [r["grad"]["groups"].get(g, {}).get("norm", {}).get(t, float("nan")) for r in recs]
                ax_n.plot(xs, ys, linestyle=styles[gi % len(styles)], marker="o", markersize=3,
                          color=f"C{ti}", label=f"{t} {g}")
        for gi, g in enumerate(groups):
            pairs = list(recs[-1]["grad"]["groups"][g]["cos"])
            for p in pairs:
                ys = [r["grad"]["groups"].get(g, {}).get("cos", {}).get(p) for r in recs]
                ax_c.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", markersize=3,
                          linewidth=2.5 if g == "all_shared" else 1.0, label=f"{p} {g}")
        ax_n.set_yscale("log")
        ax_n.set_title(f"{kind}: gradient norm per task on shared groups")
        ax_c.set_title(f"{kind}: cosine between the tasks' gradients")
        ax_c.axhline(0.0, color="k", linewidth=0.6)
        for ax in (ax_n, ax_c):
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_xlabel("epoch (w = warmup, j = joint, t = train)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    return _save(plt, fig, path, dpi=100)
