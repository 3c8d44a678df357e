"""A whole run: data, split, every requested model, and the run directory.

    results = run(cfg, "runs/x")                  # fresh run
    results = run(cfg, "runs/x", resume=True)     # continue from the last checkpoints

Run directory:
  config.yaml          the resolved config (every key)
  split.json           sizes / click rates / groups of train, valid, test
  fields.json          the fields (name, vocab_size, max_len) the models were built for
  vocab.json           file data only: field -> value -> id, to encode other files alike
  checkpoints/         <kind>.safetensors (+ .json copy of its metadata), connection_init.safetensors,
                       <kind>_best.safetensors (early stopping)
  models/<kind>.safetensors   final weights (+ masks for connection)
  metrics.json         {"models": {kind: test metrics}, "stages": {kind: stage summary}}
  masks.safetensors    the connection model's kept masks (nk.save_masks); masks.json their stats
  rounds.json, rounds.csv   the mask-generation rounds table
  curves.json          per epoch / round: training loss and validation metrics
  figures/masks.png, figures/curves.png
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Callable, Dict, List, Optional

import torch

import ncs_kernels as nk

from ..config import ConfigError, dump_config, load_config
from ..metrics import json_safe
from ..models import PAPER_NAMES, build_model, check_ids
from . import batches as B
from .checkpoint import atomic_write_json, load_tensors, save_tensors
from .stages import ModelTrainer, StopTraining


class RunError(RuntimeError):
    """A run directory problem the user must fix (exists without --resume, config mismatch...)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def _data_api():
    import ncs.data as D
    return D


def _source(cfg: Dict[str, Any]) -> Dict[str, Any]:
    d = cfg["data"]
    src: Dict[str, Any] = {"kind": d["kind"]}
    if d["kind"] == "synthetic":
        src.update(rows=d["rows"], seed=d["seed"], conflict=d["conflict"])
    else:
        src["path"] = d["path"]
    src.update(d["options"])
    return src


def load_data(cfg: Dict[str, Any], with_vocab: bool = False):
    """The dataset named by cfg['data'] (an EncodedData); with_vocab: (data, vocab or None).

    Files are encoded with vocabularies built from the data; the vocab (field -> value -> id)
    is what `ncs eval --data FILE` needs to encode another file the same way. It is returned for
    file sources read directly; with data.cache_dir the cached encoding is used and no vocab is
    available (None)."""
    D = _data_api()
    d = cfg["data"]
    if d["kind"] == "encoded" or isinstance(d["path"], dict):  # streamed / given split (ncs.data.sources)
        from ..data.sources import load_source
        return load_source(cfg, with_vocab)
    src = _source(cfg)
    vocab = None
    if d["kind"] == "synthetic" or d["cache_dir"] is not None or not with_vocab:
        data = D.load_dataset(src, cache_dir=d["cache_dir"])
    elif d["kind"] == "tfrecord":
        bad = set(src) - {"kind", "path", "max_len", "skip_corrupt"}
        if bad:  # the same check load_dataset makes
            raise D.DataError(f"data.options: unknown keys {sorted(bad)} for kind 'tfrecord'; "
                              f"allowed max_len, skip_corrupt")
        data, vocab = D.encode_lt4rec(src["path"], max_len=int(src.get("max_len", 8)),
                                      skip_corrupt=bool(src.get("skip_corrupt", False)))
    else:
        if "schema" not in src:
            raise D.DataError(f"data.options.schema: a schema is needed for kind {d['kind']!r}")
        data, vocab = D.encode_table(src["path"], src["schema"], fmt=d["kind"])
    return (data, vocab) if with_vocab else data


def split_data(cfg: Dict[str, Any], data):
    D = _data_api()
    s = cfg["data"]["split"]
    if hasattr(data, "split_parts"):  # encoded directories, or a {train, valid, test} mapping
        return data.split_parts(s["by"], tuple(s["fractions"]), s["seed"])
    return D.split(data, by=s["by"], fractions=tuple(s["fractions"]), seed=s["seed"])


def _summary(cfg, train, valid, test) -> Dict[str, Any]:
    D = _data_api()
    s = cfg["data"]["split"]
    if getattr(train, "streamed", False):
        from ..data.stream import part_summary
        out = part_summary([train, valid, test])
        out.update(by=getattr(train, "split_by", None) or s["by"], fractions=s["fractions"], seed=s["seed"])
        return out
    try:
        out = D.split_summary(train, valid, test, by=s["by"])
    except TypeError:
        out = D.split_summary(train, valid, test)
    out = dict(out) if isinstance(out, dict) else {"summary": out}
    out.setdefault("by", s["by"])
    out.setdefault("fractions", s["fractions"])
    out.setdefault("seed", s["seed"])
    return out


def _check_run_dir(cfg: Dict[str, Any], out: str, resume: bool) -> None:
    cfg_path = os.path.join(out, "config.yaml")
    ckpts = os.path.join(out, "checkpoints")
    has_ckpt = os.path.isdir(ckpts) and any(f.endswith(".safetensors") for f in os.listdir(ckpts))
    if resume:
        if not os.path.isfile(cfg_path):
            raise RunError(f"--resume: {out} has no config.yaml; nothing to resume")
        saved = load_config(cfg_path)
        diff = _first_difference(saved, cfg)
        if diff is not None:
            raise RunError(f"--resume: the config differs from {cfg_path} at {diff}; resume with the same config")
    elif has_ckpt:
        raise RunError(f"{out} already holds a run (checkpoints/); pass --resume to continue it or choose another --out")


def _first_difference(a: Any, b: Any, path: str = "") -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{path}{k}"
            d = _first_difference(a[k], b[k], f"{path}{k}.")
            if d is not None:
                return d
        return None
    return None if a == b else (path[:-1] if path.endswith(".") else path or "<root>")


def run(cfg: Dict[str, Any], out: str, resume: bool = False, progress: bool = False,
        log: Optional[Callable[[str], None]] = None, stop_after_checkpoints: Optional[int] = None,
        data=None) -> Dict[str, Any]:
    """Train every model of cfg['models'] and write the run directory; returns metrics.json's dict.

    stop_after_checkpoints: raise StopTraining right after that many checkpoint writes (a
    simulated kill, for tests). data: an EncodedData to use instead of cfg['data'] (tests).
    """
    log = log or (lambda msg: None)
    threads = torch.get_num_threads()
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    try:
        return _run(cfg, out, resume, progress, log, stop_after_checkpoints, data)
    finally:
        torch.set_num_threads(threads)


def _run(cfg, out, resume, progress, log, stop_after_checkpoints, data) -> Dict[str, Any]:
    os.makedirs(out, exist_ok=True)
    _check_run_dir(cfg, out, resume)
    device = resolve_device(cfg["device"])
    if cfg["backend"] != "auto":
        from ncs_kernels._backends import why_unavailable
        why = why_unavailable(cfg["backend"], device.type)
        if why is not None:
            raise ConfigError(f"backend: {cfg['backend']!r} cannot run on {device.type} here: {why}")
    dump_config(cfg, os.path.join(out, "config.yaml"))

    if data is None:
        data, vocab = load_data(cfg, with_vocab=True)
        if vocab is not None:
            atomic_write_json(os.path.join(out, "vocab.json"), vocab)
    train, valid, test = split_data(cfg, data)
    atomic_write_json(os.path.join(out, "split.json"), json_safe(_summary(cfg, train, valid, test)))
    fields = [{"name": f.name, "vocab_size": int(f.vocab_size), "max_len": int(f.max_len)} for f in data.fields]
    atomic_write_json(os.path.join(out, "fields.json"), fields)
    try:
        for part in ([train, valid, test] if hasattr(data, "split_parts") else [data]):
            if not getattr(part, "streamed", False):  # encoded shards: ranges checked when written
                check_ids(part.ids, [f["vocab_size"] for f in fields], "data.ids")
    except ValueError as e:
        raise RunError(str(e)) from None
    log(f"data: {len(train)} train, {len(valid)} valid, {len(test)} test rows, {len(fields)} fields; device {device}")

    tasks = cfg["tasks"]
    click = cfg["data"]["click_label"]
    try:
        st = cfg["data"].get("stream")
        tr = B.prepare_split(train, tasks, click, device, stream=st)
        va = B.prepare_split(valid, tasks, click, device, stream=st)
        te = B.prepare_split(test, tasks, click, device, stream=st)
    except ValueError as e:  # a task's label or the click label is not in the data
        raise ConfigError(str(e)) from None

    count = {"n": 0}

    def on_checkpoint(kind: str) -> None:
        count["n"] += 1
        if stop_after_checkpoints is not None and count["n"] >= stop_after_checkpoints:
            raise StopTraining(f"stopped after {count['n']} checkpoints (in {kind})")

    ckpt_dir = os.path.join(out, "checkpoints")
    results: Dict[str, Any] = {"models": {}, "stages": {}}
    curves: Dict[str, Any] = {}
    for kind in cfg["models"]:
        trainer = ModelTrainer(kind, cfg, data.fields, tr, va, device, ckpt_dir, progress=progress,
                               on_checkpoint=on_checkpoint, log=log)
        if resume and trainer.restore():
            log(f"{kind}: resumed at stage {trainer.pos['stage']}, epoch {trainer.pos['epoch']}, "
                f"round {trainer.pos['round']}")
        trainer.run()
        metrics = trainer.evaluate(te)
        results["models"][kind] = metrics
        results["stages"][kind] = trainer.stage_summary()
        curves[kind] = trainer.pos["curves"]
        save_model(trainer, os.path.join(out, "models", f"{kind}.safetensors"), fields)
        if kind == "connection":
            write_mask_outputs(trainer, out)
        log(f"{kind}: test " + " ".join(f"{k} {v:.5f}" for k, v in metrics.items()
                                        if isinstance(v, float) and not k.endswith("_rows")))
    results["config"] = {"models": cfg["models"], "tasks": [t["name"] for t in tasks], "device": str(device),
                         "backend": cfg["backend"], "backends_available": nk.backends()}
    atomic_write_json(os.path.join(out, "metrics.json"), json_safe(results))
    atomic_write_json(os.path.join(out, "curves.json"), json_safe(curves))
    try:
        from ..report import plot_curves
        plot_curves(curves, os.path.join(out, "figures", "curves.png"))
    except ImportError as e:  # matplotlib missing: the numbers are still all there
        log(f"figures skipped ({e})")
    return results


def save_model(trainer: ModelTrainer, path: str, fields: List[dict]) -> None:
    tensors = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    save_tensors(path, tensors, {"kind": trainer.kind, "tasks": trainer.names, "fields": fields}, sidecar=False)


def load_model(run_dir: str, kind: str, cfg: Dict[str, Any], device: torch.device):
    """Rebuild a trained model of a run directory."""
    path = os.path.join(run_dir, "models", f"{kind}.safetensors")
    if not os.path.isfile(path):
        raise RunError(f"{path}: no trained {kind} model in this run")
    tensors, doc = load_tensors(path, device)
    from ..data.types import FieldSpec
    fields = [FieldSpec(f["name"], f["vocab_size"], f["max_len"]) for f in doc["fields"]]
    model = build_model(kind, fields, doc["tasks"], cfg["model"], backend=cfg["backend"]).to(device)
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items()})
    return model, fields


def write_mask_outputs(trainer: ModelTrainer, out: str) -> None:
    from ..report import mask_stats
    masks = trainer.selected_masks()
    nk.save_masks(os.path.join(out, "masks.safetensors"), masks, trainer.in_features)
    stats = mask_stats(masks, trainer.in_features)
    stats["selected_round"] = trainer.pos["selected"]
    atomic_write_json(os.path.join(out, "masks.json"), json_safe(stats))
    rows = [r for t in trainer.names for r in trainer.pos["rounds"].get(t, [])]
    atomic_write_json(os.path.join(out, "rounds.json"), json_safe(rows))
    buf = io.StringIO()
    cols = ["task", "round", "density", "metric_name", "metric", "train_loss", "pruned"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    with open(os.path.join(out, "rounds.csv.tmp"), "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    os.replace(os.path.join(out, "rounds.csv.tmp"), os.path.join(out, "rounds.csv"))
    try:
        from ..report import plot_masks
        plot_masks(stats, os.path.join(out, "figures", "masks.png"))
    except ImportError:
        pass


def results_table(results: Dict[str, Any], tasks: List[dict]) -> str:
    """A text table in the spirit of the paper's Table 2: each model's CVR MSE and CTR AUC
    (the first mse task and the first bce/focal task) and the relative gains vs Single_Task
    (MSE: (single - model) / single; AUC: (model - single) / single)."""
    ctr = next((t["name"] for t in tasks if t["loss"] != "mse"), None)
    cvr = next((t["name"] for t in tasks if t["loss"] == "mse"), None)
    models = results["models"]
    base = models.get("single")
    lines = []
    head = f"{'Model':<18}{'CVR MSE':>10}{'CTR AUC':>10}{'CVR gain':>10}{'CTR gain':>10}"
    lines.append(head)
    lines.append("-" * len(head))

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"

    for kind in ("single", "layer", "connection"):
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
