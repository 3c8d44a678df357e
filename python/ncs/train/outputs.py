"""What a run leaves behind besides checkpoints: the served model file, the mask outputs, and
the results table (runner.py writes them; `ncs eval` and serving read the model back)."""
from __future__ import annotations

import csv
import io
import os
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from ..config import Config

import torch

import ncs_kernels as nk
from ncs_kernels.atomic import atomic_write_text

from ..metrics import json_safe
from ..models import PAPER_NAMES, RUN_ORDER, build_model
from .checkpoint import atomic_write_json, load_tensors, save_tensors
from .rundir import RunError


def save_model(trainer, path: str, fields: List[dict]) -> None:
    """The served model: "model/..." weights, and with per-task selection "task/<t>/model/..."
    for every task whose best validation epoch differs (load_model rebuilds the per-task predictor)."""
    tensors, meta = trainer.served_tensors()
    save_tensors(path, tensors, {"kind": trainer.kind, "tasks": trainer.names, "fields": fields, **meta},
                 sidecar=False)


def load_model(run_dir: str, kind: str, cfg: "Config", device: torch.device):
    """Rebuild a trained model of a run directory."""
    path = os.path.join(run_dir, "models", f"{kind}.safetensors")
    if not os.path.isfile(path):
        raise RunError(f"{path}: no trained {kind} model in this run")
    tensors, doc = load_tensors(path, device)
    from ..data.types import FieldSpec
    fields = [FieldSpec(f["name"], f["vocab_size"], f["max_len"]) for f in doc["fields"]]
    model = build_model(kind, fields, doc["tasks"], cfg.model, backend=cfg.backend).to(device)
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    src = doc.get("per_task_weights") or {}
    if any(v != "model" for v in src.values()):
        # per-task selection: task t predicts with its own best epoch's weights
        from .protocol import PerTaskModel
        built: Dict[str, Any] = {"model": model}
        per = {}
        for t in doc["tasks"]:
            pre = src.get(t, "model")
            if pre not in built:
                m = build_model(kind, fields, doc["tasks"], cfg.model, backend=cfg.backend).to(device)
                m.load_state_dict({k[len(pre) + 1:]: v for k, v in tensors.items() if k.startswith(pre + "/")})
                built[pre] = m
            per[t] = built[pre]
        model = PerTaskModel(per, doc["tasks"])
    return model, fields


def write_mask_outputs(trainer, out: str) -> None:
    from ..report import mask_stats
    masks = trainer.selected_masks()
    nk.save_masks(os.path.join(out, "masks.safetensors"), masks, trainer.in_features)
    stats = mask_stats(masks, trainer.in_features)
    stats["selected_round"] = trainer.pos.selected
    atomic_write_json(os.path.join(out, "masks.json"), json_safe(stats))
    rows = [r for t in trainer.names for r in trainer.pos.rounds.get(t, [])]
    atomic_write_json(os.path.join(out, "rounds.json"), json_safe(rows))
    buf = io.StringIO()
    cols = ["task", "round", "density", "metric_name", "metric", "train_loss", "pruned"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    atomic_write_text(os.path.join(out, "rounds.csv"), buf.getvalue())
    try:
        from ..report import plot_masks
        plot_masks(stats, os.path.join(out, "figures", "masks.png"))
    except ImportError:
        pass


def results_table(results: Dict[str, Any], tasks: List[dict]) -> str:
    """A text table in the spirit of the paper's Table 2: each model's CVR MSE and CTR AUC
    (the first mse task and the first bce/focal task) and the relative gains vs Single_Task
    (MSE: (single - model) / single; AUC: (model - single) / single)."""
    ctr = next((t.name for t in tasks if t.loss != "mse"), None)
    cvr = next((t.name for t in tasks if t.loss == "mse"), None)
    models = results["models"]
    base = models.get("single")
    lines = []
    head = f"{'Model':<18}{'CVR MSE':>10}{'CTR AUC':>10}{'CVR gain':>10}{'CTR gain':>10}"
    lines.append(head)
    lines.append("-" * len(head))

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"

    for kind in RUN_ORDER:
        if kind not in models:
            continue
        m = models[kind]
        mse = m.get(f"{cvr}_mse") if cvr else None
        auc = m.get(f"{ctr}_auc") if ctr else None
        g_cvr = g_ctr = None
        if base is not None and kind != "single":
            b_mse = base.get(f"{cvr}_mse") if cvr else None
            b_auc = base.get(f"{ctr}_auc") if ctr else None
            if mse is not None and b_mse:
                g_cvr = (b_mse - mse) / b_mse * 100
            if auc is not None and b_auc:
                g_ctr = (auc - b_auc) / b_auc * 100
        gc = "-" if g_cvr is None else f"{g_cvr:+.2f}%"
        ga = "-" if g_ctr is None else f"{g_ctr:+.2f}%"
        lines.append(f"{PAPER_NAMES[kind]:<18}{num(mse, '.5f'):>10}{num(auc, '.5f'):>10}{gc:>10}{ga:>10}")
    return "\n".join(lines)
