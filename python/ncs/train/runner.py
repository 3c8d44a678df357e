"""A whole run: data, split, every requested model, and the run directory.

    results = run(cfg, "runs/x")                  # fresh run
    results = run(cfg, "runs/x", resume=True)     # continue from the last checkpoints

Run directory:
  .lock                held (fcntl.flock, pid inside) while a run uses the directory (rundir.py)
  config.yaml          the resolved config (every key)
  split.json           sizes / click rates / groups of train, valid, test; skipped_bad_rows
  fields.json          the fields (name, vocab_size, max_len) the models were built for
  vocab.json           file data only: field -> value -> id, to encode other files alike
  checkpoints/         <kind>.safetensors (+ .json copy of its metadata; <kind>.prev.safetensors: the one
                       before, the fallback of a damaged one), connection_init.safetensors,
                       <kind>_best.safetensors (early stopping)
  models/<kind>.safetensors   final weights (+ masks for connection)
  metrics.json         {"models": {kind: test metrics}, "valid": {kind: validation metrics of the
                       served model (tuning reads these, never the test ones)}, "stages": {kind: stage summary}}
  masks.safetensors    the connection model's kept masks (nk.save_masks); masks.json their stats
  rounds.json, rounds.csv   the mask-generation rounds table
  curves.json          per epoch / round: training loss and validation metrics
  figures/masks.png, figures/curves.png, figures/diagnostics.png (gradient diagnostics)
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

if TYPE_CHECKING:
    from ..config import Config

import torch

import ncs_kernels as nk

from ..config import ConfigError, dump_config, load_config
from ..config.sizing import resolve_auto
from ..metrics import json_safe
from ..models import check_ids
from . import batches as B
from .checkpoint import atomic_write_json
from .rundir import RunError, lock_run_dir
from .outputs import load_model, results_table, save_model, write_mask_outputs  # noqa: F401  (their old home)
from .stages import ModelTrainer, StopTraining


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def _data_api():
    import ncs.data as D
    return D


def _source(cfg: "Config") -> Dict[str, Any]:
    d = cfg.data
    src: Dict[str, Any] = {"kind": d.kind}
    if d.kind == "synthetic":
        src.update(rows=d.rows, seed=d.seed, conflict=d.conflict)
    else:
        src["path"] = d.path
    src.update(d.options)
    return src


def load_data(cfg: "Config", with_vocab: bool = False, stats: Optional[Dict[str, int]] = None):
    """The dataset named by cfg.data (an EncodedData); with_vocab: (data, vocab or None).

    Files are encoded with vocabularies built from the data; the vocab (field -> value -> id)
    is what `ncs eval --data FILE` needs to encode another file the same way. It is returned for
    file sources read directly; with data.cache_dir the cached encoding is used and no vocab is
    available (None). stats: a dict updated with the reader's counts (bad_rows skipped...)."""
    D = _data_api()
    d = cfg.data
    if d.kind == "encoded" or isinstance(d.path, dict):  # streamed / given split (ncs.data.sources)
        from ..data.sources import load_source
        return load_source(cfg, with_vocab)
    src = _source(cfg)
    vocab = None
    if stats is None:
        stats = {}
    if d.kind == "synthetic" or d.cache_dir is not None or not with_vocab:
        data = D.load_dataset(src, cache_dir=d.cache_dir, stats=stats)
    elif d.kind == "tfrecord":
        bad = set(src) - {"kind", "path", "max_len", "skip_corrupt", "on_bad_row"}
        if bad:  # the same check load_dataset makes
            raise D.DataError(f"data.options: unknown keys {sorted(bad)} for kind 'tfrecord'; "
                              f"allowed max_len, skip_corrupt, on_bad_row")
        data, vocab = D.encode_lt4rec(src["path"], max_len=int(src.get("max_len", 8)),
                                      skip_corrupt=bool(src.get("skip_corrupt", False)), stats=stats,
                                      on_bad_row=src.get("on_bad_row", "error"))
    else:
        if "schema" not in src:
            raise D.DataError(f"data.options.schema: a schema is needed for kind {d.kind!r}")
        data, vocab = D.encode_table(src["path"], src["schema"], fmt=d.kind, stats=stats,
                                     on_bad_row=src.get("on_bad_row", "error"))
    return (data, vocab) if with_vocab else data


def split_data(cfg: "Config", data):
    D = _data_api()
    s = cfg.data.split
    if hasattr(data, "split_parts"):  # encoded directories, or a {train, valid, test} mapping
        return data.split_parts(s.by, tuple(s.fractions), s.seed)
    return D.split(data, by=s.by, fractions=tuple(s.fractions), seed=s.seed)


def _summary(cfg, train, valid, test) -> Dict[str, Any]:
    D = _data_api()
    s = cfg.data.split
    if getattr(train, "streamed", False):
        from ..data.stream import part_summary
        out = part_summary([train, valid, test])
        out.update(by=getattr(train, "split_by", None) or s.by, fractions=s.fractions, seed=s.seed)
        return out
    out = dict(D.split_summary(train, valid, test))
    out.setdefault("by", s.by)
    out.setdefault("fractions", s.fractions)
    out.setdefault("seed", s.seed)
    return out


def _check_run_dir(cfg: "Config", out: str, resume: bool) -> None:
    cfg_path = os.path.join(out, "config.yaml")
    ckpts = os.path.join(out, "checkpoints")
    has_ckpt = os.path.isdir(ckpts) and any(f.endswith(".safetensors") for f in os.listdir(ckpts))
    if resume:
        if not os.path.isfile(cfg_path):
            if has_ckpt:
                raise RunError(f"--resume: {out} has checkpoints but no config.yaml; cannot check the config")
            return  # killed before the config was written: nothing to lose, the run simply starts
        saved = load_config(cfg_path)
        diff = _first_difference(saved.to_dict(), cfg.to_dict())
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


def run(cfg: "Config", out: str, resume: bool = False, progress: bool = False,
        log: Optional[Callable[[str], None]] = None, stop_after_checkpoints: Optional[int] = None,
        data=None) -> Dict[str, Any]:
    """Train every model of cfg.models and write the run directory; returns metrics.json's dict.

    stop_after_checkpoints: raise StopTraining right after that many checkpoint writes (a
    simulated kill, for tests). data: an EncodedData to use instead of cfg.data (tests).
    """
    log = log or (lambda msg: None)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    from .. import distributed as Dist
    dp = Dist.init(cfg.device)  # None unless launched by torchrun with WORLD_SIZE > 1
    try:
        # a second run on `out` is a RunError naming the pid; under torchrun rank 0 holds the lock
        # (the other ranks write only to private scratch directories)
        lock = lock_run_dir(out, log, error=RunError) if dp is None or dp.rank == 0 else contextlib.nullcontext()
        with lock:
            if dp is None:
                return _run(cfg, out, resume, progress, log, stop_after_checkpoints, data)
            return _run_data_parallel(dp, cfg, out, resume, progress, log, stop_after_checkpoints, data)
    except BaseException as e:
        if dp is not None:
            dp.record_failure(e)
        raise
    finally:
        if dp is not None:
            dp.close()
        torch.set_num_threads(threads)


DIST_FILE = "distributed.json"


def _run_data_parallel(dp, cfg, out, resume, progress, log, stop_after_checkpoints, data) -> Dict[str, Any]:
    """A torchrun rank (ncs.distributed): rank 0 runs in `out`; every other rank in a private
    scratch directory (seeded with the run's config and checkpoints on resume), removed at the end."""
    import shutil
    import tempfile

    from ..distributed import check_batch
    if cfg.train.batch_size != "auto":  # auto: checked once it is resolved (_run)
        check_batch(dp.world_size, int(cfg.train.batch_size))
    _check_run_dir(cfg, out, resume)  # every rank, before any writes: the same error everywhere
    if resume:
        prev = _run_world_size(out)
        if prev is not None and prev != dp.world_size:
            raise RunError(f"--resume: {out} was trained with world size {prev}, now {dp.world_size}; resume with "
                           f"torchrun --nproc_per_node {prev} (or {'without torchrun' if prev == 1 else 'the same'})")
    dp.barrier()
    if dp.rank == 0:
        os.makedirs(out, exist_ok=True)
        atomic_write_json(os.path.join(out, DIST_FILE), {"world_size": dp.world_size, "backend": dp.backend})
        return _run(cfg, out, resume, progress, log, stop_after_checkpoints, data, dist=dp)
    scratch = tempfile.mkdtemp(prefix=f"ncs-rank{dp.rank}-")
    try:
        if resume:
            shutil.copy2(os.path.join(out, "config.yaml"), os.path.join(scratch, "config.yaml"))
            if os.path.isdir(os.path.join(out, "checkpoints")):
                shutil.copytree(os.path.join(out, "checkpoints"), os.path.join(scratch, "checkpoints"))
        return _run(cfg, scratch, resume, False, lambda msg: None, stop_after_checkpoints, data, dist=dp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_world_size(out: str) -> Optional[int]:
    """The world size a run directory was trained with: distributed.json, else 1 if it has
    checkpoints (a one-process run), else None (nothing trained yet)."""
    path = os.path.join(out, DIST_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return int(json.load(f)["world_size"])
    ckpts = os.path.join(out, "checkpoints")
    if os.path.isdir(ckpts) and any(f.endswith(".safetensors") for f in os.listdir(ckpts)):
        return 1
    return None


def _run(cfg, out, resume, progress, log, stop_after_checkpoints, data, dist=None) -> Dict[str, Any]:
    os.makedirs(out, exist_ok=True)
    _check_run_dir(cfg, out, resume)
    if dist is None and resume and (_run_world_size(out) or 1) != 1:
        raise RunError(f"--resume: {out} was trained with world size {_run_world_size(out)}, now 1; resume with "
                       f"torchrun --nproc_per_node {_run_world_size(out)}")
    device = resolve_device(cfg.device)
    if cfg.backend != "auto":
        from ncs_kernels._backends import why_unavailable
        why = why_unavailable(cfg.backend, device.type)
        if why is not None:
            raise ConfigError(f"backend: {cfg.backend!r} cannot run on {device.type} here: {why}")
    dump_config(cfg, os.path.join(out, "config.yaml"))

    read_counts: Dict[str, int] = {}
    if data is None:
        data, vocab = load_data(cfg, with_vocab=True, stats=read_counts)
        if vocab is not None:
            atomic_write_json(os.path.join(out, "vocab.json"), vocab)
    train, valid, test = split_data(cfg, data)
    cfg, auto = resolve_auto(cfg, len(train))
    if auto:
        log("auto sizes for " + f"{len(train)} training rows: " + ", ".join(f"{k} {v:g}" for k, v in auto.items()))
        if dist is not None:
            from ..distributed import check_batch
            check_batch(dist.world_size, int(cfg.train.batch_size))
    summary = _summary(cfg, train, valid, test)
    summary["skipped_bad_rows"] = int(read_counts.get("bad_rows", 0))  # data.options.on_bad_row: skip
    if "corrupt_records" in read_counts:
        summary["skipped_corrupt_records"] = int(read_counts["corrupt_records"])
    atomic_write_json(os.path.join(out, "split.json"), json_safe(summary))
    fields = [{"name": f.name, "vocab_size": int(f.vocab_size), "max_len": int(f.max_len)} for f in data.fields]
    atomic_write_json(os.path.join(out, "fields.json"), fields)
    try:
        for part in ([train, valid, test] if hasattr(data, "split_parts") else [data]):
            if not getattr(part, "streamed", False):  # encoded shards: ranges checked when written
                check_ids(part.ids, [f["vocab_size"] for f in fields], "data.ids")
    except ValueError as e:
        raise RunError(str(e)) from None
    log(f"data: {len(train)} train, {len(valid)} valid, {len(test)} test rows, {len(fields)} fields; device {device}")

    tasks = cfg.tasks
    click = cfg.data.click_label
    try:
        st = cfg.data.stream.to_dict()
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
    results: Dict[str, Any] = {"models": {}, "stages": {}, "world_size": 1 if dist is None else dist.world_size}
    digests: Dict[str, Any] = {}
    curves: Dict[str, Any] = {}
    for kind in cfg.models:
        trainer = ModelTrainer(kind, cfg, data.fields, tr, va, device, ckpt_dir, progress=progress,
                               on_checkpoint=on_checkpoint, log=log)
        trainer.dist = dist
        if resume and trainer.restore():
            log(f"{kind}: resumed at stage {trainer.pos.stage}, epoch {trainer.pos.epoch}, "
                f"round {trainer.pos.round}")
        trainer.run()
        if dist is not None:  # every rank must hold the same weights (and masks), bit for bit
            from ..distributed import masks_digest, tensors_digest
            digests[kind] = {"parameters": dist.check_same(f"{kind}: the trained parameters",
                                                           tensors_digest(trainer.model.state_dict()))[0]}
            if kind == "connection":
                digests[kind]["masks"] = dist.check_same("connection: the kept masks",
                                                         masks_digest(trainer.selected_masks()))
        metrics = trainer.evaluate(te)
        results["models"][kind] = metrics
        results.setdefault("valid", {})[kind] = trainer.evaluate(va)  # the served model on validation
        results["stages"][kind] = trainer.stage_summary()
        curves[kind] = trainer.pos.curves
        save_model(trainer, os.path.join(out, "models", f"{kind}.safetensors"), fields)
        if kind == "connection":
            write_mask_outputs(trainer, out)
        log(f"{kind}: test " + " ".join(f"{k} {v:.5f}" for k, v in metrics.items()
                                        if isinstance(v, float) and not k.endswith("_rows")))
    results["config"] = {"models": list(cfg.models), "tasks": [t.name for t in tasks], "device": str(device),
                         "backend": cfg.backend, "backends_available": nk.backends(),
                         "world_size": results["world_size"], "auto": auto}
    if dist is not None:
        atomic_write_json(os.path.join(out, DIST_FILE), {"world_size": dist.world_size, "backend": dist.backend,
                                                         "sha256": digests})
    atomic_write_json(os.path.join(out, "metrics.json"), json_safe(results))
    atomic_write_json(os.path.join(out, "curves.json"), json_safe(curves))
    try:
        from ..report import plot_curves
        plot_curves(curves, os.path.join(out, "figures", "curves.png"))
        if any("grad" in r for v in curves.values() for r in v):
            from ..report import plot_diagnostics
            plot_diagnostics(curves, os.path.join(out, "figures", "diagnostics.png"))
    except ImportError as e:  # matplotlib missing: the numbers are still all there
        log(f"figures skipped ({e})")
    return results
