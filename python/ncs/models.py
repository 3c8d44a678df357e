"""The three competitors of the paper, all on the fused ncs_kernels layers.

Every model embeds the F categorical fields (pooled multi-valued fields), crosses them (the
F x F inner products then the flat embeddings: width F*F + F*d, fused into the first layer by
nk.CrossMaskedLinear) and runs MLP towers with one sigmoid head per task (heads return logits).

    connection  NCSModel: ONE shared tower whose weights carry one bit-packed mask per task
                (neuron-connection level sharing, Algorithm 1); task=None runs every weight.
    layer       LayerShareModel: shared embeddings, a separate tower per task (Layer_Share).
    single      SingleTaskModel: a separate network, embeddings included, per task (Single_Task).

Common interface:
    model(ids, task)       -> logits [B] of that task (connection: under the task's mask)
    model(ids)             -> {task: logits [B]} (connection: every weight, the warmup network)
    model.predict(ids)     -> {task: logits [B]}, each task as it is served (its mask applied)
    model.embedding_parameters() / model.dense_parameters()   (SparseAdam / MaskedAdam groups)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import ncs_kernels as nk

MODEL_KINDS = ("single", "layer", "connection")
PAPER_NAMES = {"single": "Single_Task", "layer": "Layer_Share", "connection": "Connection_Share"}


def _vocab_sizes(fields) -> List[int]:
    out = []
    for i, f in enumerate(fields):
        v = getattr(f, "vocab_size", f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fields[{i}]: expected a vocab_size >= 1 (row 0 = missing), got {v!r}")
        out.append(int(v))
    if not out:
        raise ValueError("fields: expected at least one field")
    return out


class FieldEmbeddings(nn.Module):
    """One concatenated table for all fields (row offsets per field) behind nn.EmbeddingBag.

    ids int64 [B, F, L]: per field the row ids of its values, 0 = missing (a learned row),
    -1 = padding. Returns [B, F, d], each field pooled over its L slots.

    pad_included=False: padding slots are excluded from the pooling (mean over real values), via
    an extra all-zero row used as EmbeddingBag's padding_idx that never gets a gradient.
    pad_included=True: padding slots count as the field's row 0, as the authors' code does.

    sparse=True: the table's gradient holds only the rows of the batch, so torch.optim.SparseAdam
    (the trainer's embedding optimizer) works on those rows alone, never on the whole table.
    """

    def __init__(self, fields, embed_dim: int, pooling: str = "mean", pad_included: bool = False,
                 init_std: float = 0.05, sparse: bool = True):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling: expected 'mean' or 'sum', got {pooling!r}")
        vocab = _vocab_sizes(fields)
        self.vocab_sizes = vocab
        self.num_fields = len(vocab)
        self.embed_dim = int(embed_dim)
        self.pad_included = bool(pad_included)
        self.init_std = float(init_std)
        total = sum(vocab)
        self.pad_row = total
        self.bag = nn.EmbeddingBag(total + 1, self.embed_dim, mode=pooling, sparse=sparse, padding_idx=total)
        offsets = torch.tensor([0] + vocab[:-1], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets.view(1, -1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.bag.weight, 0.0, self.init_std)
        with torch.no_grad():
            self.bag.weight[self.pad_row].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 3 or ids.shape[1] != self.num_fields:
            raise ValueError(f"ids: expected int64 [B, {self.num_fields}, L], got {tuple(ids.shape)}")
        b, f, l = ids.shape
        if self.pad_included:
            rows = ids.clamp_min(0) + self.offsets
        else:
            rows = torch.where(ids >= 0, ids + self.offsets, torch.full_like(ids, self.pad_row))
        return self.bag(rows.reshape(b * f, l)).view(b, f, self.embed_dim)


def check_ids(ids: torch.Tensor, vocab_sizes: Sequence[int], what: str = "ids") -> None:
    """Raise ValueError naming the field if any id is outside [-1, vocab_size)."""
    if ids.dim() != 3 or ids.shape[1] != len(vocab_sizes):
        raise ValueError(f"{what}: expected [rows, {len(vocab_sizes)}, L], got {tuple(ids.shape)}")
    if ids.numel() == 0:
        return
    hi = ids.amax(dim=(0, 2)).tolist()
    lo = ids.amin(dim=(0, 2)).tolist()
    for i, (a, b, v) in enumerate(zip(lo, hi, vocab_sizes)):
        if a < -1 or b >= v:
            raise ValueError(f"{what}: field {i} has ids in [{a}, {b}], expected [-1, {v - 1}] (vocab_size {v})")


class Tower(nn.Module):
    """CrossMaskedLinear(F, d, h0) -> ReLU -> MaskedLinear(h0, h1) -> ReLU -> ... (all masked per task)."""

    def __init__(self, num_fields: int, embed_dim: int, hidden: Sequence[int], tasks: Sequence[str],
                 backend: str = "auto"):
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            raise ValueError("hidden: expected at least one layer width")
        layers: List[nn.Module] = [nk.CrossMaskedLinear(num_fields, embed_dim, hidden[0], tasks, backend=backend)]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers.append(nk.MaskedLinear(a, b, tasks, backend=backend))
        self.layers = nn.ModuleList(layers)
        self.out_features = hidden[-1]
        for m in self.layers:
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, emb: torch.Tensor, task: Optional[str] = None) -> torch.Tensor:
        h = emb
        for layer in self.layers:
            h = F.relu(layer(h, task))
        return h


def _head(width: int) -> nn.Linear:
    head = nn.Linear(width, 1)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class MultiTaskModel(nn.Module):
    kind = "?"

    def __init__(self, fields, tasks: Sequence[str], embed_dim: int, hidden: Sequence[int], backend: str = "auto",
                 pooling: str = "mean", pad_included: bool = False, embedding_init_std: float = 0.05):
        super().__init__()
        tasks = tuple(tasks)
        if len(tasks) < 1 or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks: expected distinct task names, got {tasks}")
        self.tasks = tasks
        self.vocab_sizes = _vocab_sizes(fields)
        self.num_fields = len(self.vocab_sizes)
        self.embed_dim = int(embed_dim)
        self.hidden = list(hidden)
        self.backend = backend
        self._emb_kw = dict(pooling=pooling, pad_included=pad_included, init_std=embedding_init_std)

    def _embeddings(self) -> FieldEmbeddings:
        return FieldEmbeddings(self.vocab_sizes, self.embed_dim, **self._emb_kw)

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"task: unknown task {task!r}; the model has tasks {self.tasks}")

    def embedding_parameters(self) -> List[nn.Parameter]:
        return [m.bag.weight for m in self.modules() if isinstance(m, FieldEmbeddings)]

    def dense_parameters(self) -> List[nn.Parameter]:
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in emb]

    def masked_layers(self) -> Dict[str, nn.Module]:
        return nk.masked_modules(self)

    def predict(self, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.forward(ids)


class NCSModel(MultiTaskModel):
    """Connection_Share: one shared tower, a mask per task on each of its weights."""

    kind = "connection"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self.embeddings = self._embeddings()
        self.tower = Tower(self.num_fields, self.embed_dim, self.hidden, self.tasks, backend)
        self.heads = nn.ModuleDict({t: _head(self.tower.out_features) for t in self.tasks})

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        if task is None:  # the warmup network: every weight, one tower pass for all heads
            h = self.tower(emb, None)
            return {t: self.heads[t](h).squeeze(-1) for t in self.tasks}
        self._check_task(task)
        return self.heads[task](self.tower(emb, task)).squeeze(-1)

    def predict(self, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        emb = self.embeddings(ids)
        return {t: self.heads[t](self.tower(emb, t)).squeeze(-1) for t in self.tasks}

    def set_task_masks(self, task: str, masks: Dict[str, torch.Tensor]) -> None:
        """masks: {layer name (as in masked_layers()): packed or bool mask}."""
        layers = self.masked_layers()
        for name, m in masks.items():
            if name not in layers:
                raise KeyError(f"masks: unknown layer {name!r}; expected one of {sorted(layers)}")
            layers[name].set_mask(task, m)

    def get_task_masks(self, task: str) -> Dict[str, torch.Tensor]:
        return {name: m.get_mask(task).clone() for name, m in self.masked_layers().items()}


class LayerShareModel(MultiTaskModel):
    """Layer_Share: embeddings shared, one tower per task (masks all ones; dense path)."""

    kind = "layer"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self.embeddings = self._embeddings()
        self.towers = nn.ModuleDict({t: Tower(self.num_fields, self.embed_dim, self.hidden, (t,), backend)
                                     for t in self.tasks})
        self.heads = nn.ModuleDict({t: _head(self.towers[t].out_features) for t in self.tasks})

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        if task is None:
            return {t: self.heads[t](self.towers[t](emb)).squeeze(-1) for t in self.tasks}
        self._check_task(task)
        return self.heads[task](self.towers[task](emb)).squeeze(-1)


class SingleTaskModel(MultiTaskModel):
    """Single_Task: one independent network per task (own embeddings, tower and head)."""

    kind = "single"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self.nets = nn.ModuleDict()
        for t in self.tasks:
            tower = Tower(self.num_fields, self.embed_dim, self.hidden, (t,), backend)
            self.nets[t] = nn.ModuleDict({"embeddings": self._embeddings(), "tower": tower,
                                          "head": _head(tower.out_features)})

    def _one(self, ids, t):
        net = self.nets[t]
        return net["head"](net["tower"](net["embeddings"](ids))).squeeze(-1)

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        if task is None:
            return {t: self._one(ids, t) for t in self.tasks}
        self._check_task(task)
        return self._one(ids, task)


_KINDS = {"connection": NCSModel, "layer": LayerShareModel, "single": SingleTaskModel}


def build_model(kind: str, fields, tasks: Sequence[str], model_cfg: dict, backend: str = "auto") -> MultiTaskModel:
    """A model from the `model` section of a resolved config."""
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {MODEL_KINDS}, got {kind!r}")
    return _KINDS[kind](
        fields, tasks, model_cfg["embed_dim"], model_cfg["hidden"], backend=backend,
        pooling=model_cfg.get("pooling", "mean"), pad_included=model_cfg.get("pad_included", False),
        embedding_init_std=model_cfg.get("embedding_init_std", 0.05),
    )
