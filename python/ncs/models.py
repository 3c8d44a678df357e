"""The paper's three models and the usual MTL competitors, all on the fused ncs_kernels layers.

Every model embeds the F categorical fields (pooled multi-valued fields), crosses them (the
F x F inner products then the flat embeddings: width F*F + F*d, fused into the first layer by
nk.CrossMaskedLinear) and runs MLP towers with one sigmoid head per task (heads return logits).

    connection  NCSModel: ONE shared tower whose weights carry one bit-packed mask per task
                (neuron-connection level sharing, Algorithm 1); task=None runs every weight.
    layer       LayerShareModel: shared embeddings, a separate tower per task (Layer_Share).
    single      SingleTaskModel: a separate network, embeddings included, per task (Single_Task).
    shared_bottom  SharedBottomModel: shared embeddings and bottom (all hidden layers but the
                last), a tower (the last hidden layer + head) per task (Caruana 1997).
    mmoe        MMoEModel: E experts (each a bottom as above), a softmax gate per task over the
                experts, a tower per task (Ma et al., KDD 2018).
    ple         PLEModel: Progressive Layered Extraction (Tang et al., RecSys 2020): CGC levels of
                shared experts and task-specific experts; each task's gate mixes its own and
                the shared experts, a shared gate (between levels) mixes all of them.
    esmm        ESMMModel: shared embeddings, a tower per task (as layer); trained with the ESMM
                loss over all impressions (losses.esmm_loss): pCTCVR = pCTR * pCVR (Ma et al.,
                SIGIR 2018). The first task is the click task, every later one is post-click.

The first layer of every bottom / expert / tower that sees the embeddings is
nk.CrossMaskedLinear (the F x F inner products and the flat embeddings, width F*F + F*d).
Budgets: every model uses the same widths `model.hidden`: a Layer_Share tower, a Single_Task
tower, the shared-bottom bottom + tower, an MMoE / PLE expert + tower all have exactly these
layer widths; parameter_count() gives the totals (docs/TRAINER.md lists them for the shipped
configs).

Task-specific embeddings (model.task_embed_dim = d_p > 0; layer and connection models only, as
in STEM, Su et al., AAAI 2024): each task also owns a private table of width d_p per field; the
task's forward runs on [shared (d) | private_t (d_p)] per field, i.e. [B, F, d + d_p], so the
cross layer widens to F*F + F*(d + d_p). A private table is only in its task's forward, so it
gets only that task's gradient; the shared table gets every task's.

Common interface:
    model(ids, task)       -> logits [B] of that task (connection: under the task's mask)
    model(ids)             -> {task: logits [B]} (connection: every weight, the warmup network)
    model.predict(ids)     -> {task: logits [B]}, each task as it is served (its mask applied)
    model.embedding_parameters() / model.dense_parameters()   (SparseAdam / MaskedAdam groups)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import ncs_kernels as nk

# The one list of model kinds (config.py imports it). The paper's three come first.
MODEL_KINDS = ("single", "layer", "connection", "shared_bottom", "mmoe", "ple", "esmm")
PAPER_KINDS = ("single", "layer", "connection")
# the order in which a run trains them (and tables print them): the baselines first, the
# paper's model last, so that a demo prints the baselines as they finish
RUN_ORDER = ("single", "layer", "shared_bottom", "mmoe", "ple", "esmm", "connection")
PAPER_NAMES = {"single": "Single_Task", "layer": "Layer_Share", "connection": "Connection_Share",
               "shared_bottom": "Shared_Bottom", "mmoe": "MMoE", "ple": "PLE", "esmm": "ESMM"}
# kinds that accept model.task_embed_dim > 0 (the others ignore it)
PRIVATE_EMBED_KINDS = ("layer", "connection")


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


class Stack(nn.Module):
    """Linear -> ReLU layers over a flat input (the towers above a bottom / experts); xavier init.
    widths may be empty (identity)."""

    def __init__(self, in_features: int, widths: Sequence[int]):
        super().__init__()
        layers = []
        for w in widths:
            lin = nn.Linear(in_features, w)
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            in_features = w
        self.layers = nn.ModuleList(layers)
        self.out_features = in_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = F.relu(layer(h))
        return h


def _gate(in_features: int, n: int) -> nn.Linear:
    """A softmax gate's logits layer; zero init, so every gate starts uniform over its experts."""
    g = nn.Linear(in_features, n)
    nn.init.zeros_(g.weight)
    nn.init.zeros_(g.bias)
    return g


def _split_bottom(hidden: Sequence[int]) -> Tuple[List[int], List[int]]:
    """(bottom widths, tower widths): the bottom is every hidden layer but the last, the task
    tower the last one; with a single hidden layer the bottom is that layer and towers are heads."""
    hidden = list(hidden)
    nb = max(1, len(hidden) - 1)
    return hidden[:nb], hidden[nb:]


def _chunks(widths: Sequence[int], n: int) -> List[List[int]]:
    """widths split into n contiguous, nearly equal, non-empty chunks."""
    widths = list(widths)
    if not 1 <= n <= len(widths):
        raise ValueError(f"ple_levels: expected 1..{len(widths)} (the bottom has {len(widths)} layers: "
                         f"model.hidden minus the last), got {n}")
    q, r = divmod(len(widths), n)
    out, i = [], 0
    for k in range(n):
        size = q + (1 if k < r else 0)
        out.append(widths[i:i + size])
        i += size
    return out


class MultiTaskModel(nn.Module):
    kind = "?"

    def __init__(self, fields, tasks: Sequence[str], embed_dim: int, hidden: Sequence[int], backend: str = "auto",
                 pooling: str = "mean", pad_included: bool = False, embedding_init_std: float = 0.05,
                 task_embed_dim: int = 0):
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
        if isinstance(task_embed_dim, bool) or not isinstance(task_embed_dim, int) or task_embed_dim < 0:
            raise ValueError(f"task_embed_dim: expected an integer >= 0, got {task_embed_dim!r}")
        self.task_embed_dim = int(task_embed_dim)

    def _embeddings(self, dim: Optional[int] = None) -> FieldEmbeddings:
        return FieldEmbeddings(self.vocab_sizes, self.embed_dim if dim is None else dim, **self._emb_kw)

    def _private_embeddings(self) -> Optional[nn.ModuleDict]:
        """One private table of width task_embed_dim per task (None when task_embed_dim = 0)."""
        if self.task_embed_dim == 0:
            return None
        return nn.ModuleDict({t: self._embeddings(self.task_embed_dim) for t in self.tasks})

    @property
    def input_dim(self) -> int:
        """Per-field width of a task's input: d, or d + d_p with private embeddings."""
        return self.embed_dim + self.task_embed_dim

    def _task_input(self, shared: torch.Tensor, ids: torch.Tensor, task: str) -> torch.Tensor:
        """[B, F, d] shared, or [B, F, d + d_p] = shared | the task's private embedding."""
        private = getattr(self, "private", None)
        if private is None:
            return shared
        return torch.cat([shared, private[task](ids)], dim=-1)

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
        self.private = self._private_embeddings()
        self.tower = Tower(self.num_fields, self.input_dim, self.hidden, self.tasks, backend)
        self.heads = nn.ModuleDict({t: _head(self.tower.out_features) for t in self.tasks})

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        if task is None:  # the warmup network: every weight
            if self.private is None:  # one tower pass for all heads
                h = self.tower(emb, None)
                return {t: self.heads[t](h).squeeze(-1) for t in self.tasks}
            # private embeddings: each task's head on the tower over its own input
            return {t: self.heads[t](self.tower(self._task_input(emb, ids, t), None)).squeeze(-1)
                    for t in self.tasks}
        self._check_task(task)
        return self.heads[task](self.tower(self._task_input(emb, ids, task), task)).squeeze(-1)

    def predict(self, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        emb = self.embeddings(ids)
        return {t: self.heads[t](self.tower(self._task_input(emb, ids, t), t)).squeeze(-1) for t in self.tasks}

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
        self.private = self._private_embeddings()
        self.towers = nn.ModuleDict({t: Tower(self.num_fields, self.input_dim, self.hidden, (t,), backend)
                                     for t in self.tasks})
        self.heads = nn.ModuleDict({t: _head(self.towers[t].out_features) for t in self.tasks})

    def _one(self, emb, ids, t):
        return self.heads[t](self.towers[t](self._task_input(emb, ids, t))).squeeze(-1)

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        if task is None:
            return {t: self._one(emb, ids, t) for t in self.tasks}
        self._check_task(task)
        return self._one(emb, ids, task)


class SingleTaskModel(MultiTaskModel):
    """Single_Task: one independent network per task (own embeddings, tower and head)."""

    kind = "single"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        kw["task_embed_dim"] = 0  # every table is private already
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


class _TowersModel(MultiTaskModel):
    """Shared embeddings, something shared in the middle (_task_features), a tower + head per task."""

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        kw["task_embed_dim"] = 0
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self.embeddings = self._embeddings()
        self.bottom_widths, self.tower_widths = _split_bottom(self.hidden)

    def _make_towers(self, in_features: int) -> None:
        self.towers = nn.ModuleDict({t: Stack(in_features, self.tower_widths) for t in self.tasks})
        self.heads = nn.ModuleDict({t: _head(self.towers[t].out_features) for t in self.tasks})

    def _task_features(self, emb: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        if task is not None:
            self._check_task(task)
        feats = self._task_features(self.embeddings(ids))
        out = {t: self.heads[t](self.towers[t](feats[t])).squeeze(-1) for t in self.tasks if task in (None, t)}
        return out if task is None else out[task]


class SharedBottomModel(_TowersModel):
    """Shared_Bottom: one bottom (cross layer + every hidden layer but the last) for all tasks,
    then per task a tower (the last hidden layer) and a head."""

    kind = "shared_bottom"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self.bottom = Tower(self.num_fields, self.embed_dim, self.bottom_widths, self.tasks, backend)
        self._make_towers(self.bottom.out_features)

    def _task_features(self, emb):
        h = self.bottom(emb)
        return {t: h for t in self.tasks}


class MMoEModel(_TowersModel):
    """MMoE: `experts` experts (each a bottom: cross layer + every hidden layer but the last), per
    task a softmax gate over the experts (input: the flat embeddings, F*d) and a tower + head."""

    kind = "mmoe"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", experts: Optional[int] = None, **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        n = len(self.tasks) + 1 if experts is None else int(experts)
        if n < 1:
            raise ValueError(f"experts: expected >= 1, got {experts!r}")
        self.num_experts = n
        self.experts = nn.ModuleList([Tower(self.num_fields, self.embed_dim, self.bottom_widths, self.tasks, backend)
                                      for _ in range(n)])
        self.gates = nn.ModuleDict({t: _gate(self.num_fields * self.embed_dim, n) for t in self.tasks})
        self._make_towers(self.experts[0].out_features)

    def _gate_weights(self, emb: torch.Tensor) -> Dict[str, torch.Tensor]:
        flat = emb.reshape(emb.shape[0], -1)
        return {t: torch.softmax(self.gates[t](flat), dim=-1) for t in self.tasks}

    def gate_weights(self, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{task: [B, experts]}: each task's mixture weights (rows sum to 1)."""
        return self._gate_weights(self.embeddings(ids))

    def _task_features(self, emb):
        ex = torch.stack([e(emb) for e in self.experts], dim=1)  # [B, E, H]
        return {t: (g.unsqueeze(-1) * ex).sum(1) for t, g in self._gate_weights(emb).items()}


class PLEModel(_TowersModel):
    """PLE: `levels` CGC levels over the bottom layers (model.hidden minus the last, split into
    contiguous chunks; level 0's experts start with the cross layer). Each level has
    `shared_experts` shared experts and `task_experts` experts per task. Task t's gate mixes t's
    experts and the shared ones (on t's branch); between levels a shared gate mixes every expert
    (on the shared branch). Gates are softmax over a linear map of the branch input (level 0: the
    flat embeddings). Then a tower + head per task.

    Gradient flow: in a single level (the default), task t's experts get gradient from task t
    only; with more levels, the shared gate lets every task reach the earlier levels' task
    experts (as in the paper); the last level's task experts still get only their task's."""

    kind = "ple"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", shared_experts: int = 1,
                 task_experts: int = 1, levels: int = 1, **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        if int(shared_experts) < 0 or int(task_experts) < 0 or int(shared_experts) + int(task_experts) < 1:
            raise ValueError(f"shared_experts, task_experts: expected >= 0 with at least one expert per gate, "
                             f"got {shared_experts}, {task_experts}")
        self.num_shared, self.num_task = int(shared_experts), int(task_experts)
        chunks = _chunks(self.bottom_widths, int(levels))
        self.num_levels = len(chunks)
        F_, d = self.num_fields, self.embed_dim

        def expert(level: int, in_width: int, widths):
            if level == 0:
                return Tower(F_, d, widths, self.tasks, backend)
            return Stack(in_width, widths)

        self.levels = nn.ModuleList()
        in_width = F_ * d  # gate input width at level 0 (the flat embeddings)
        for lv, widths in enumerate(chunks):
            last = lv == self.num_levels - 1
            level = nn.Module()
            level.shared = nn.ModuleList([expert(lv, in_width, widths) for _ in range(self.num_shared)])
            level.task = nn.ModuleDict({t: nn.ModuleList([expert(lv, in_width, widths) for _ in range(self.num_task)])
                                        for t in self.tasks})
            level.task_gates = nn.ModuleDict({t: _gate(in_width, self.num_task + self.num_shared) for t in self.tasks})
            level.shared_gate = None if last else _gate(in_width, len(self.tasks) * self.num_task + self.num_shared)
            self.levels.append(level)
            in_width = widths[-1]
        self._make_towers(in_width)

    def _task_features(self, emb):
        shared_key = None  # the shared branch's key in `inputs`
        inputs: Dict[Optional[str], torch.Tensor] = {t: emb for t in self.tasks}
        inputs[shared_key] = emb
        for lv, level in enumerate(self.levels):
            last = lv == self.num_levels - 1

            def gate_in(x):
                return x.reshape(x.shape[0], -1)

            shared_out = [e(inputs[shared_key]) for e in level.shared]
            task_out = {t: [e(inputs[t]) for e in level.task[t]] for t in self.tasks}
            nxt: Dict[Optional[str], torch.Tensor] = {}
            for t in self.tasks:
                ex = torch.stack(task_out[t] + shared_out, dim=1)
                g = torch.softmax(level.task_gates[t](gate_in(inputs[t])), dim=-1)
                nxt[t] = (g.unsqueeze(-1) * ex).sum(1)
            if not last:
                ex = torch.stack([o for t in self.tasks for o in task_out[t]] + shared_out, dim=1)
                g = torch.softmax(level.shared_gate(gate_in(inputs[shared_key])), dim=-1)
                nxt[shared_key] = (g.unsqueeze(-1) * ex).sum(1)
            inputs = nxt
        return {t: inputs[t] for t in self.tasks}


class ESMMModel(MultiTaskModel):
    """ESMM: shared embeddings, a tower (model.hidden, cross first) + head per task; the logits
    are pCTR (the first task) and each later task's post-click probability (pCVR), which is what
    predict() serves. Training uses losses.esmm_loss: pCTR on all impressions, and
    pCTCVR_k = pCTR * pCVR_k fitted to click * y_k on all impressions."""

    kind = "esmm"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        kw["task_embed_dim"] = 0
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        if len(self.tasks) < 2:
            raise ValueError(f"tasks: ESMM needs a click task and at least one post-click task, got {self.tasks}")
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


_KINDS = {"connection": NCSModel, "layer": LayerShareModel, "single": SingleTaskModel,
          "shared_bottom": SharedBottomModel, "mmoe": MMoEModel, "ple": PLEModel, "esmm": ESMMModel}
assert set(_KINDS) == set(MODEL_KINDS) == set(RUN_ORDER) == set(PAPER_NAMES)


def build_model(kind: str, fields, tasks: Sequence[str], model_cfg: dict, backend: str = "auto") -> MultiTaskModel:
    """A model from the `model` section of a resolved config (missing keys take their defaults)."""
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {MODEL_KINDS}, got {kind!r}")
    kw: Dict[str, Any] = dict(
        pooling=model_cfg.get("pooling", "mean"), pad_included=model_cfg.get("pad_included", False),
        embedding_init_std=model_cfg.get("embedding_init_std", 0.05),
    )
    if kind in PRIVATE_EMBED_KINDS:
        kw["task_embed_dim"] = int(model_cfg.get("task_embed_dim", 0) or 0)
    if kind == "mmoe":
        kw["experts"] = model_cfg.get("experts")
    if kind == "ple":
        kw.update(shared_experts=model_cfg.get("shared_experts", 1), task_experts=model_cfg.get("task_experts", 1),
                  levels=model_cfg.get("ple_levels", 1))
    return _KINDS[kind](fields, tasks, model_cfg["embed_dim"], model_cfg["hidden"], backend=backend, **kw)


def parameter_count(model: nn.Module) -> Dict[str, int]:
    """{"embedding": rows x width of every table, "dense": every other parameter, "total"}."""
    emb = sum(p.numel() for p in model.embedding_parameters())
    dense = sum(p.numel() for p in model.dense_parameters())
    return {"embedding": int(emb), "dense": int(dense), "total": int(emb + dense)}
