"""Per-task models out of a run: plain-torch networks, TorchScript and ONNX files.

    sig = export_run("runs/x", "export/x", kind="connection", formats=("torchscript", "onnx"))

For every task the trained model gives one plain-torch network (no ncs or ncs_kernels op in
it): nn.Embedding lookups pooled per field, the feature cross (bmm + cat), nn.Linear layers
whose weights are W ⊙ M (the task's mask folded in: a masked-out weight is exactly 0.0), ReLU,
the task's head and a sigmoid. It maps ids int64 [B, F, L] (the run's encoding: 0 = missing or
unseen, -1 = padding) to float32 [B] probabilities (CTR: p(click); CVR: the predicted play rate
in [0, 1]), the sigmoid of model.predict(ids)[task].

A model kind provides its per-task network in one of two ways (looked up in this order):
  * a method ``model.export_task(task) -> nn.Module`` (ids -> logits [B], plain torch only), or
  * a function registered with ``register_exporter(kind, fn)``, fn(model, task) -> nn.Module.
The three kinds of ncs.models (single, layer, connection) are registered (ncs.serve.exporters);
any other kind without either is an ExportError naming it.

compact=True removes hidden neurons that cannot matter: a neuron whose every out-connection is
masked (dropped; exact), a neuron whose every in-connection is masked (its output is the
constant relu(b); folded into the next layer's bias, then dropped), and first-layer inputs
(cross features) that no kept weight reads (dropped; exact), repeated until nothing changes.

Modules: ncs.serve.network (CrossMLP, TaskScorer, compact), ncs.serve.exporters (the per-kind
registry, task_network), this one (the export directory: files, signature.json, verify_export);
every name is importable from here. The directory is built under a temporary name beside --out
and renamed into place; its JSON files are written through ncs_kernels.atomic.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ncs_kernels.atomic import atomic_write_json, atomic_write_text

from .exporters import EXPORTERS, Exporter, cross_mlp, register_exporter, task_network  # noqa: F401
from .network import CrossMLP, TaskScorer, compact  # noqa: F401
from .runs import ExportError, ServeError  # noqa: F401

FORMAT = "ncs-export"
VERSION = 1
FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
ONNX_OPSET = 17


# ---------------------------------------------------------------------------------------------
# Files

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_torchscript(scorer: TaskScorer, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks TorchScript deprecated; it still works
        scripted = torch.jit.script(scorer)
    scripted.save(path)


def save_onnx(scorer: TaskScorer, path: str, num_fields: int, slots: int) -> None:
    example = torch.zeros(2, num_fields, max(slots, 1), dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy (TorchScript-based) exporter's deprecation / tracer notes
        torch.onnx.export(scorer, (example,), path, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["ids"], output_names=["prob"],
                          dynamic_axes={"ids": {0: "batch", 2: "slots"}, "prob": {0: "batch"}})
    import onnx

    onnx.checker.check_model(onnx.load(path), full_check=True)  # a well-formed, type-checked graph


def _need_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(f"--formats onnx needs {' and '.join(missing)}: pip install 'ncs[export]' "
                          f"(or pass --formats torchscript)")


def _check_formats(formats: Sequence[str]) -> List[str]:
    out = []
    for f in formats:
        f = f.strip().lower()
        if f not in FORMATS:
            raise ExportError(f"--formats: unknown format {f!r}; expected a comma-separated subset of {list(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ExportError(f"--formats: expected at least one of {list(FORMATS)}")
    return out


def _self_check(scorer: TaskScorer, ref: torch.Tensor, ids: torch.Tensor, files: Dict[str, str], task: str,
                tol: float = 1e-5) -> Dict[str, float]:
    """Load what was written and compare it with the trained model on `ids`; ExportError if off."""
    out: Dict[str, float] = {}
    got = {"module": scorer(ids)}
    if "torchscript" in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(files["torchscript"], map_location="cpu")
        got["torchscript"] = loaded(ids)
    if "onnx" in files:
        import onnxruntime as ort
        sess = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        got["onnx"] = torch.from_numpy(sess.run(None, {"ids": ids.numpy()})[0])
    for name, p in got.items():
        err = float((p.double() - ref.double()).abs().max()) if ref.numel() else 0.0
        if not err <= tol:
            raise ExportError(f"task {task}: the {name} export differs from the trained model by {err:.3g} "
                              f"(> {tol}); please report this")
        out[name] = err
    return out


def _sample_ids(vocab_sizes: Sequence[int], slots: int, rows: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, int(v), (rows, slots), generator=g) for v in vocab_sizes]
    ids = torch.stack(cols, dim=1)
    if slots > 1:
        pad = torch.rand(rows, len(vocab_sizes), slots, generator=g) < 0.3
        pad[:, :, 0] = False
        ids[pad] = -1
    return ids


def export_model(model: nn.Module, out_dir: str, fields: List[Dict[str, Any]], tasks: Optional[Sequence[str]] = None,
                 formats: Sequence[str] = FORMATS, compact_nets: bool = False,
                 meta: Optional[Dict[str, Any]] = None, vocab: Optional[Dict[str, Any]] = None,
                 log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Export every task (or `tasks`) of a trained model into out_dir; returns signature.json's dict.

    The directory is built beside out_dir and moved into place at the end, so out_dir is either
    the old export or the new one. An existing out_dir must be an earlier export (it has a
    signature.json) or empty."""
    log = log or (lambda msg: None)
    formats = _check_formats(formats)
    if "onnx" in formats:
        _need_onnx()
    all_tasks = list(getattr(model, "tasks", ()))
    tasks = list(all_tasks if not tasks else tasks)
    for t in tasks:
        if t not in all_tasks:
            raise ExportError(f"--tasks: unknown task {t!r}; the model has tasks {all_tasks}")
    vocab_sizes = [int(f["vocab_size"]) for f in fields]
    slots = max(int(f.get("max_len", 1)) for f in fields)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ExportError(f"--out: {out_dir} exists and is not a directory")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "signature.json")):
            raise ExportError(f"--out: {out_dir} is not empty and not an earlier export (no signature.json); "
                              f"choose another directory")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary directory
    model = model.eval()
    try:
        sample = _sample_ids(vocab_sizes, slots)
        device = next(model.parameters()).device
        with torch.no_grad():
            ref_all = model.predict(sample.to(device))
        task_docs: Dict[str, Any] = {}
        for t in tasks:
            net = task_network(model, t)
            sizes = None
            if compact_nets:
                net, sizes = compact(net)
                b, a = sizes["before"], sizes["after"]
                log(f"{t}: compacted widths {b['widths']} -> {a['widths']}, inputs {b['inputs']} -> {a['inputs']}, "
                    f"dense weights {b['dense_weights']} -> {a['dense_weights']}")
            scorer = TaskScorer(net, vocab_sizes).eval()
            os.makedirs(os.path.join(tmp, t))
            files: Dict[str, str] = {}
            with torch.no_grad():
                if "torchscript" in formats:
                    files["torchscript"] = os.path.join(tmp, t, FILES["torchscript"])
                    save_torchscript(scorer, files["torchscript"])
                if "onnx" in formats:
                    files["onnx"] = os.path.join(tmp, t, FILES["onnx"])
                    save_onnx(scorer, files["onnx"], len(vocab_sizes), slots)
                ref = torch.sigmoid(ref_all[t].float().cpu())
                errs = _self_check(scorer, ref, sample, files, t)
            doc: Dict[str, Any] = {
                "files": {f: f"{t}/{FILES[f]}" for f in files},
                "bytes": {f: os.path.getsize(p) for f, p in files.items()},
                "output": "probability: sigmoid of the task's head (CTR: p(click); CVR / play rate: the "
                          "predicted value in [0, 1])",
                "max_abs_error_vs_trained_model": errs,
            }
            if sizes is not None:
                doc["compaction"] = sizes
            task_docs[t] = doc
        atomic_write_text(os.path.join(tmp, "vocab.json"), json.dumps(vocab if vocab is not None else {},
                                                                      ensure_ascii=False))
        atomic_write_text(os.path.join(tmp, "fields.json"), json.dumps(fields, indent=2))
        from .. import __version__
        sig: Dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "ncs_version": __version__,
            **(meta or {}),
            "model": getattr(model, "kind", type(model).__name__),
            "tasks": task_docs,
            "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", len(vocab_sizes), "slots"],
                        "slots_trained": slots,
                        "meaning": "per field (fields.json order) the row ids of its values, encoded with "
                                   "vocab.json: 0 = missing or unseen value, -1 = padding (an empty slot); "
                                   "field i's ids lie in [-1, fields[i].vocab_size - 1]"}],
            "outputs": [{"name": "prob", "dtype": "float32", "shape": ["batch"]}],
            "vocab": "vocab.json maps field -> value -> id" if vocab else
                     "none: the run's data had no vocabulary (synthetic or cached), ids are used as given",
            "formats": formats,
            "onnx_opset": ONNX_OPSET if "onnx" in formats else None,
            "torch_version": torch.__version__,
        }
        sums = {}
        for root, _, names in os.walk(tmp):
            for n in sorted(names):
                p = os.path.join(root, n)
                sums[os.path.relpath(p, tmp).replace(os.sep, "/")] = sha256_file(p)
        sig["sha256"] = dict(sorted(sums.items()))
        atomic_write_json(os.path.join(tmp, "signature.json"), sig)
        if os.path.exists(out_dir):
            old = out_dir + ".old-" + os.path.basename(tmp)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sig


def verify_export(export_dir: str) -> Dict[str, Any]:
    """Check every file listed in signature.json against its sha256; returns the signature.
    (A loader without ncs can do the same with hashlib: see docs/SERVING.md.)"""
    path = os.path.join(export_dir, "signature.json")
    if not os.path.isfile(path):
        raise ExportError(f"{export_dir}: no signature.json (not an ncs export)")
    with open(path, "r", encoding="utf-8") as f:
        sig = json.load(f)
    if sig.get("format") != FORMAT:
        raise ExportError(f"{path}: format {sig.get('format')!r}, expected {FORMAT!r}")
    for rel, want in sig.get("sha256", {}).items():
        p = os.path.join(export_dir, rel)
        if not os.path.isfile(p):
            raise ExportError(f"{export_dir}: {rel} is listed in signature.json but missing")
        if sha256_file(p) != want:
            raise ExportError(f"{export_dir}: {rel} fails its sha256 check (file changed or corrupt)")
    return sig


def export_run(run_dir: str, out_dir: str, kind: Optional[str] = None, tasks: Optional[Sequence[str]] = None,
               formats: Sequence[str] = FORMATS, compact_nets: bool = False,
               log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Export a run's trained model of `kind` (default: connection if trained, else the first
    trained kind of the run's config)."""
    from .runs import open_run

    r = open_run(run_dir)
    kind = r.choose_kind(kind)
    model, fields = r.model(kind, torch.device("cpu"))
    meta = {"run": os.path.abspath(run_dir), "encoding": r.encoding()}
    return export_model(model, out_dir, r.fields, tasks, formats, compact_nets, meta=meta, vocab=r.vocab, log=log)
