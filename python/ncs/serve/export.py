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
The three kinds of ncs.models (single, layer, connection) are registered here; any other kind
without either is an ExportError naming it.

compact=True removes hidden neurons that cannot matter: a neuron whose every out-connection is
masked (dropped; exact), a neuron whose every in-connection is masked (its output is the
constant relu(b); folded into the next layer's bias, then dropped), and first-layer inputs
(cross features) that no kept weight reads (dropped; exact), repeated until nothing changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "ncs-export"
VERSION = 1
FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
ONNX_OPSET = 17


from .runs import ServeError


class ExportError(ServeError):
    """A user-facing export problem (unknown kind / task / format, missing dependency...)."""


# ---------------------------------------------------------------------------------------------
# The plain-torch per-task network

class CrossMLP(nn.Module):
    """ids [B, F, L] -> logits [B]: pooled field embeddings, feature cross, ReLU MLP, head.

    table     [rows + 1, d]: every field's rows (field i starts at offsets[i]); the last row is
              all zero and is where padding slots (-1) point.
    layers    [(W, b)] of the hidden layers (W already W ⊙ M); the first reads the cross
              features cat(gram [F*F], flat embeddings [F*d]) at columns `inputs`.
    head      (W [1, h], b [1]).
    """

    def __init__(self, table: torch.Tensor, vocab_sizes: Sequence[int], pooling: str, pad_included: bool,
                 layers: Sequence[Tuple[torch.Tensor, torch.Tensor]], head: Tuple[torch.Tensor, torch.Tensor],
                 inputs: Optional[torch.Tensor] = None):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ExportError(f"pooling: expected 'mean' or 'sum', got {pooling!r}")
        vocab = [int(v) for v in vocab_sizes]
        if table.shape[0] != sum(vocab) + 1:
            raise ExportError(f"table: expected {sum(vocab) + 1} rows (the fields' rows + a padding row), "
                              f"got {table.shape[0]}")
        self.num_fields = len(vocab)
        self.embed_dim = int(table.shape[1])
        self.pad_row = sum(vocab)
        self.mean = pooling == "mean"
        self.pad_included = bool(pad_included)
        self.embedding = nn.Embedding(table.shape[0], self.embed_dim)
        with torch.no_grad():
            self.embedding.weight.copy_(table.detach().float())
        self.embedding.weight.requires_grad_(False)
        offsets = torch.tensor([0] + vocab[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets.view(1, -1, 1))
        width = self.num_fields * self.num_fields + self.num_fields * self.embed_dim
        if inputs is None:
            inputs = torch.arange(width, dtype=torch.int64)
        self.register_buffer("inputs", inputs.to(torch.int64).clone())
        self.all_inputs = bool(inputs.numel() == width and torch.equal(inputs.cpu(), torch.arange(width)))
        self.layers = nn.ModuleList([_linear(w, b) for w, b in layers])
        self.head = _linear(*head)

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pad_included:
            rows = ids.clamp_min(0) + self.offsets
            e = self.embedding(rows)                                   # [B, F, L, d]
            if self.mean:
                return e.mean(dim=2)
            return e.sum(dim=2)
        valid = ids >= 0
        rows = torch.where(valid, ids + self.offsets, torch.full_like(ids, self.pad_row))
        e = self.embedding(rows)                                       # the padding row is 0
        s = e.sum(dim=2)
        if self.mean:
            n = valid.to(e.dtype).sum(dim=2, keepdim=True).clamp_min(1.0)
            return s / n
        return s

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.pooled(ids)                                         # [B, F, d]
        b = emb.shape[0]
        gram = torch.bmm(emb, emb.transpose(1, 2)).reshape(b, self.num_fields * self.num_fields)
        x = torch.cat([gram, emb.reshape(b, self.num_fields * self.embed_dim)], dim=1)
        if not self.all_inputs:
            x = x.index_select(1, self.inputs)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w.detach().float())
        lin.bias.copy_(b.detach().float())
    lin.requires_grad_(False)
    return lin


class TaskScorer(nn.Module):
    """The exported artifact: checks ids, runs a task's network, returns sigmoid(logits) float32 [B]."""

    def __init__(self, net: nn.Module, vocab_sizes: Sequence[int]):
        super().__init__()
        self.net = net
        self.num_fields = len(vocab_sizes)
        self.register_buffer("vocab_sizes", torch.tensor([int(v) for v in vocab_sizes], dtype=torch.int64).view(1, -1, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # TorchScript / eager: clear errors; ONNX: the graph's own checks
            if ids.dim() != 3 or ids.shape[1] != self.num_fields:
                raise ValueError("ids: expected int64 [B, F, L] with F = the run's number of fields "
                                 "(see signature.json)")
            if ids.dtype != torch.int64:
                raise ValueError("ids: expected dtype int64")
            if bool((ids < -1).any()) or bool((ids >= self.vocab_sizes).any()):
                raise ValueError("ids: out of range; each field's ids must lie in [-1, vocab_size - 1] "
                                 "(see fields.json)")
        return torch.sigmoid(self.net(ids)).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Per-kind exporters

Exporter = Callable[[nn.Module, str], nn.Module]
EXPORTERS: Dict[str, Exporter] = {}


def register_exporter(kind: str, fn: Exporter) -> None:
    """fn(model, task) -> a plain-torch nn.Module mapping ids [B, F, L] to that task's logits [B]."""
    EXPORTERS[kind] = fn


def _fold(layer, task: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W ⊙ M, b) of a masked layer under the task's mask; masked-out entries exactly 0.0."""
    w = layer.weight.detach().float()
    m = layer.get_mask(task, packed=False).to(w.device)
    folded = torch.where(m, w, torch.zeros((), dtype=w.dtype, device=w.device))
    b = layer.bias.detach().float() if layer.bias is not None else torch.zeros(w.shape[0], device=w.device)
    return folded.cpu(), b.cpu()


def cross_mlp(embeddings, tower, head: nn.Linear, task: str) -> CrossMLP:
    """The plain network of ncs.models' parts: FieldEmbeddings, Tower (masked under `task`), head."""
    layers = [_fold(layer, task) for layer in tower.layers]
    bag = embeddings.bag
    return CrossMLP(bag.weight.detach().float().cpu(), embeddings.vocab_sizes, bag.mode, embeddings.pad_included,
                    layers, (head.weight.detach().float().cpu(), head.bias.detach().float().cpu()))


def _no_private(model) -> None:
    if getattr(model, "private", None) is not None:
        raise ExportError("ncs export: models with task-private embeddings (model.task_embed_dim > 0) have no "
                          "plain-torch exporter yet; train with model.task_embed_dim: 0 to export")


def _export_connection(model, task):
    _no_private(model)
    return cross_mlp(model.embeddings, model.tower, model.heads[task], task)


def _export_layer(model, task):
    _no_private(model)
    return cross_mlp(model.embeddings, model.towers[task], model.heads[task], task)


def _export_single(model, task):
    net = model.nets[task]
    return cross_mlp(net["embeddings"], net["tower"], net["head"], task)


register_exporter("connection", _export_connection)
register_exporter("layer", _export_layer)
register_exporter("single", _export_single)


def task_network(model: nn.Module, task: str) -> nn.Module:
    """The plain-torch network (ids -> logits) of one task of a trained model."""
    tasks = tuple(getattr(model, "tasks", ()))
    if task not in tasks:
        raise ExportError(f"--tasks: unknown task {task!r}; the model has tasks {list(tasks)}")
    from ..train.protocol import PerTaskModel
    if isinstance(model, PerTaskModel):  # per-task selection: task t is served by its own snapshot
        return task_network(model.models[task], task)
    own = getattr(model, "export_task", None)
    kind = getattr(model, "kind", type(model).__name__)
    if callable(own):
        net = own(task)
    elif kind in EXPORTERS:
        net = EXPORTERS[kind](model, task)
    else:
        raise ExportError(f"model kind {kind!r} has no plain-torch exporter (known: {sorted(EXPORTERS)}); "
                          f"give the model an export_task(task) method or call "
                          f"ncs.serve.export.register_exporter({kind!r}, fn)")
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Compaction

def _params(net: CrossMLP) -> Dict[str, Any]:
    dense = [tuple(layer.weight.shape) for layer in net.layers] + [tuple(net.head.weight.shape)]
    weights = sum(a * b for a, b in dense)
    nonzero = sum(int(layer.weight.count_nonzero()) for layer in net.layers) + int(net.head.weight.count_nonzero())
    biases = sum(layer.bias.numel() for layer in net.layers) + net.head.bias.numel()
    return {"inputs": int(net.inputs.numel()), "widths": [int(layer.out_features) for layer in net.layers],
            "dense_weights": int(weights), "nonzero_weights": int(nonzero), "biases": int(biases),
            "embedding_rows": int(net.embedding.weight.shape[0]),
            "parameters": int(weights + biases + net.embedding.weight.numel())}


def compact(net: CrossMLP) -> Tuple[CrossMLP, Dict[str, Any]]:
    """A CrossMLP computing the same function with dead neurons and unread inputs removed, and
    {"before": sizes, "after": sizes}. Never empties a layer (one neuron is kept)."""
    if not isinstance(net, CrossMLP):
        raise ExportError(f"--compact: the network is a {type(net).__name__}, not a CrossMLP; "
                          f"this kind's exporter does not support compaction")
    before = _params(net)
    ws = [layer.weight.detach().clone().double() for layer in net.layers] + [net.head.weight.detach().clone().double()]
    bs = [layer.bias.detach().clone().double() for layer in net.layers] + [net.head.bias.detach().clone().double()]
    inputs = net.inputs.clone()
    n_hidden = len(net.layers)
    changed = True
    while changed:
        changed = False
        keep_in = ws[0].ne(0).any(dim=0)
        if not bool(keep_in.all()) and bool(keep_in.any()):
            ws[0], inputs = ws[0][:, keep_in], inputs[keep_in]
            changed = True
        for i in range(n_hidden):
            w, b, w_next = ws[i], bs[i], ws[i + 1]
            dead_out = w_next.eq(0).all(dim=0)
            dead_in = w.eq(0).all(dim=1) & ~dead_out
            drop = dead_out | dead_in
            if not bool(drop.any()):
                continue
            if bool(drop.all()):  # keep one neuron: prefer one that carries weight
                keep_one = int((~dead_out).nonzero()[0]) if bool((~dead_out).any()) else 0
                drop[keep_one] = False
                dead_in[keep_one] = False
                if not bool(drop.any()):
                    continue
            if bool(dead_in.any()):  # constant outputs relu(b_j) folded into the next bias
                const = torch.relu(b[dead_in])
                bs[i + 1] = bs[i + 1] + w_next[:, dead_in] @ const
            keep = ~drop
            ws[i], bs[i], ws[i + 1] = w[keep], b[keep], w_next[:, keep]
            changed = True
    layers = [(ws[i].float(), bs[i].float()) for i in range(n_hidden)]
    out = CrossMLP(net.embedding.weight.detach(), _vocab_of(net), "mean" if net.mean else "sum", net.pad_included,
                   layers, (ws[-1].float(), bs[-1].float()), inputs)
    return out.eval(), {"before": before, "after": _params(out)}


def _vocab_of(net: CrossMLP) -> List[int]:
    offs = net.offsets.view(-1).tolist() + [net.pad_row]
    return [b - a for a, b in zip(offs[:-1], offs[1:])]


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
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab if vocab is not None else {}, f, ensure_ascii=False)
        with open(os.path.join(tmp, "fields.json"), "w", encoding="utf-8") as f:
            json.dump(fields, f, indent=2)
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
        with open(os.path.join(tmp, "signature.json"), "w", encoding="utf-8") as f:
            json.dump(sig, f, indent=2)
            f.write("\n")
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
