"""The training-protocol mechanisms of issue 10, used by the trainer (stages.py).

Balancer            loss.balance: how the task losses meet on shared parameters
                      fixed        Eq. 2: sum_k omega_k L_k
                      uncertainty  Kendall, Gal & Cipolla 2018: one learned log-variance s_k per
                                   task; an MSE (regression) task's term is
                                   omega_k (0.5 exp(-s_k) L_k + 0.5 s_k), a BCE / focal
                                   (classification) task's omega_k (exp(-s_k) L_k + 0.5 s_k).
                                   The s_k are trained by their own Adam (loss.balance_lr).
                      pcgrad       Yu et al. 2020 ("gradient surgery"): per task the gradient of
                                   omega_k L_k; on the parameters two tasks share, a task's
                                   gradient that conflicts with another's (negative dot product)
                                   is projected onto the normal plane of the other's, then the
                                   projected gradients are summed. Mixed batches (warmup,
                                   baselines): the tasks' gradients of the same batch. The
                                   joint stage of the connection model takes one task per step,
                                   so there a step's gradient is projected against the most
                                   recent gradient of every other task (the previous steps of
                                   the alternation), kept from the step that computed it.
                                   The surgery itself, on dense, sparse and fused-table
                                   gradients: pcgrad.py. Under torchrun each task's gradient
                                   is summed over the ranks before it is projected.
grad_diagnostics    per task, the gradient norm on each shared parameter group and the cosine
                    between the tasks' gradients, on fixed training batches (train.diagnostics_batches)
PerTaskModel        the served model of per-task selection: task t predicts with the snapshot of
                    its own best validation epoch
subset_split        the first / a random fraction of a split's rows (stages.*.data_fraction)
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..losses import mixed_loss, task_loss
from . import batches as B
from .batches import cycled_alternating_batches  # noqa: F401  (its old home)
from . import pcgrad as P
from .pcgrad import _add, _coalesced, _dot, _sqnorm, project_conflicting  # noqa: F401  (project_conflicting: its old home)


# ------------------------------------------------------------------------------------------

class Balancer:
    """loss.balance for one trainer: the weighted task terms, the uncertainty log-variances and
    their Adam, and PCGrad's gradient surgery (see the module docstring)."""

    def __init__(self, cfg: dict, device: torch.device):
        self.method = cfg.loss.balance
        self.tasks: List[dict] = cfg.tasks
        self.names = [t["name"] for t in self.tasks]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.log_var: Optional[nn.ParameterList] = None
        self.opt: Optional[torch.optim.Optimizer] = None
        if self.method == "uncertainty":
            # one Parameter per task: a task-homogeneous step leaves the others' (grad None) alone
            self.log_var = nn.ParameterList([nn.Parameter(torch.zeros((), device=device)) for _ in self.names])
            self.opt = torch.optim.Adam(self.log_var.parameters(), lr=cfg.loss.balance_lr)
        self.last: Dict[str, Dict[int, torch.Tensor]] = {}   # pcgrad, alternating steps

    @property
    def pcgrad(self) -> bool:
        return self.method == "pcgrad"

    def term(self, task: str, lk: torch.Tensor, ranks: int = 1) -> torch.Tensor:
        """The task's term. Under torchrun lk is the rank's share of L_k (the shares sum to the
        global L_k) and ranks the world size: the regulariser 0.5 s_k is shared out likewise,
        so the terms summed over the ranks (and their gradients, all-reduced) are one process's."""
        t = self.tasks[self.index[task]]
        if self.method != "uncertainty":
            return t["weight"] * lk
        s = self.log_var[self.index[task]]
        c = 0.5 if t["loss"] == "mse" else 1.0
        return t["weight"] * (c * torch.exp(-s) * lk + (0.5 * s if ranks == 1 else 0.5 * s / ranks))

    def combine(self, parts: Mapping[str, torch.Tensor], ranks: int = 1) -> torch.Tensor:
        total = None
        for n in self.names:
            x = self.term(n, parts[n], ranks)
            total = x if total is None else total + x
        return total

    def parameters(self) -> List[nn.Parameter]:
        """The log-variances (uncertainty), whose gradients a torchrun run all-reduces; else []."""
        return [] if self.log_var is None else list(self.log_var)

    def effective_weights(self) -> Dict[str, float]:
        """The factor on each L_k's gradient: omega_k, or omega_k c_k exp(-s_k)."""
        out = {}
        for n, t in zip(self.names, self.tasks):
            w = t["weight"]
            if self.method == "uncertainty":
                c = 0.5 if t["loss"] == "mse" else 1.0
                w = w * c * math.exp(-float(self.log_var[self.index[n]].detach()))
            out[n] = w
        return out

    def zero_grad(self) -> None:
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.opt is not None:
            self.opt.step()

    # PCGrad (pcgrad.py) -----------------------------------------------------------------
    def pcgrad_mixed_backward(self, parts: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor],
                              tables: Optional[Dict[int, "P.Table"]] = None, dist=None) -> None:
        """Set the step's gradient of `params` (fused `tables`: their sinks) to the sum of the
        PCGrad-projected task gradients of one mixed batch. Under torchrun (`dist`) `parts` are
        the rank's shares of L_k and each task's gradient is summed over the ranks before the
        projection, so every rank projects the global batch's gradients: the one-process step."""
        tables = tables or {}
        grads: List[Dict[int, Any]] = []
        n_tasks = len(self.names)
        for k, n in enumerate(self.names):
            gs = torch.autograd.grad(self.term(n, parts[n]), params, retain_graph=k < n_tasks - 1,
                                     allow_unused=True)
            g: Dict[int, Any] = {i: x for i, x in enumerate(gs) if x is not None}
            g.update(P.take_sinks(tables))
            grads.append(g)
        if dist is not None:
            grads = dist.reduce_task_gradients(grads, params, tables)
        P.apply(grads, params, tables, mixed=True)

    def pcgrad_task_step(self, task: str, params: Sequence[torch.Tensor],
                         tables: Optional[Dict[int, "P.Table"]] = None) -> None:
        """After the backward of a task-homogeneous step (under torchrun: after the gradients'
        reduction, so the global ones): project the task's gradient against the most recent
        gradient of every other task (where they conflict), and remember the task's own,
        unprojected gradient (a fused table's as its dense-equivalent, sparse) for the other
        tasks' next steps."""
        tables = tables or {}
        mine: Dict[int, Any] = {i: p.grad for i, p in enumerate(params) if p.grad is not None}
        mine.update(P.take_sinks(tables))
        eq = P.equivalents([mine], tables)[0]
        others = [self.last[n] for n in self.names if n != task and n in self.last]
        self.last[task] = {i: (g if isinstance(mine[i], tuple) else g.detach().clone()) for i, g in eq.items()}
        P.apply([mine] + others, params, tables, mixed=False, eq=[eq] + others)

    # checkpoint ------------------------------------------------------------------------
    def state_tensors(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        from .checkpoint import flatten_optimizer
        tensors: Dict[str, torch.Tensor] = {}
        doc: Dict[str, Any] = {"method": self.method}
        if self.log_var is not None:
            for i, p in enumerate(self.log_var):
                tensors[f"balance/log_var/{i}"] = p.detach().clone()
            t, d = flatten_optimizer("balance", self.opt.state_dict())
            tensors.update(t)
            doc["optim"] = d
        for task, g in self.last.items():
            for i, v in g.items():
                if v.is_sparse:
                    tensors[f"balance/last/{task}/{i}/indices"] = v.indices()
                    tensors[f"balance/last/{task}/{i}/values"] = v.values()
                    doc.setdefault("sparse_shapes", {})[f"{task}/{i}"] = list(v.shape)
                else:
                    tensors[f"balance/last/{task}/{i}/dense"] = v
        return tensors, doc

    def load(self, tensors: Mapping[str, torch.Tensor], doc: Optional[Dict[str, Any]], device: torch.device) -> None:
        from .checkpoint import unflatten_optimizer
        if not doc:
            return
        if self.log_var is not None:
            with torch.no_grad():
                for i, p in enumerate(self.log_var):
                    p.copy_(tensors[f"balance/log_var/{i}"])
            self.opt.load_state_dict(unflatten_optimizer("balance", tensors, doc["optim"]))
        last: Dict[str, Dict[int, Dict[str, torch.Tensor]]] = {}
        for key, v in tensors.items():
            if key.startswith("balance/last/"):
                task, i, part = key[len("balance/last/"):].split("/")
                last.setdefault(task, {}).setdefault(int(i), {})[part] = v.to(device)
        self.last = {}
        for task, per in last.items():
            self.last[task] = {}
            for i, parts in per.items():
                if "dense" in parts:
                    self.last[task][i] = parts["dense"].clone()
                else:
                    shape = doc["sparse_shapes"][f"{task}/{i}"]
                    self.last[task][i] = torch.sparse_coo_tensor(parts["indices"], parts["values"], shape,
                                                                check_invariants=False).coalesce()


# ------------------------------------------------------------------------------------------

def param_groups(model: nn.Module) -> Dict[str, str]:
    """{parameter name: group}: an embedding table's group is its FieldEmbeddings module's name
    (e.g. "embeddings", "nets.ctr.embeddings"), any other parameter's the module owning it
    (e.g. "tower.layers.0": weight and bias together)."""
    from ..models import FieldEmbeddings
    emb = {}
    for mname, m in model.named_modules():
        if isinstance(m, FieldEmbeddings):
            for pname, _ in m.named_parameters():
                emb[f"{mname}.{pname}" if mname else pname] = mname or "embeddings"
    out = {}
    for name, _ in model.named_parameters():
        out[name] = emb.get(name, name.rsplit(".", 1)[0] if "." in name else name)
    return out


def diagnostic_rows(n: int, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The fixed training rows of the diagnostics: the first batches * batch_size of one seeded
    permutation (tag "diagnostics"), the same every epoch."""
    perm = B.permutation(n, seed, "diagnostics", 0, torch.device("cpu"))
    return perm[:batches * batch_size]


def grad_diagnostics(model: nn.Module, split: B.SplitTensors, tasks: Sequence[dict], rows: torch.Tensor,
                     batch_size: int, weights: Mapping[str, float], task_forward: bool,
                     gamma: float, alpha: Optional[float], kind: str = "layer") -> Dict[str, Any]:
    """Per task k, the gradient of weights[k] * L_k summed over the fixed `rows` (in batches):
    its norm on every parameter group at least two tasks' gradients reach (the shared groups),
    and the cosine between each pair of tasks there, per group and over all shared groups.

    task_forward: the task's served network (model(ids, task): the connection model under its
    mask) instead of the mixed network model(ids) with L_k as losses.mixed_loss gives it for
    model `kind` (Eq. 1 per task; ESMM: its all-impression terms). Uses torch.autograd.grad: no .grad is
    written, no optimizer is touched, no random numbers are drawn (fused tables: their sinks are
    emptied, the step's zero_grad does that anyway)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = param_groups(model)
    names = [t["name"] for t in tasks]
    grads: Dict[str, Dict[int, torch.Tensor]] = {n: {} for n in names}
    tables = P.fused_tables(model, [p for _, p in params])
    for t in tables.values():
        t.sink.clear()
    for start in range(0, int(rows.numel()), batch_size):
        idx = rows[start:start + batch_size].to(split.ids.device)
        ids, tg, sp = split.batch(idx)
        parts = None
        if not task_forward:  # the mixed network: each task's L_k as training computes it (ESMM: its loss)
            _, parts = mixed_loss(kind, model(ids), tg, sp, tasks, gamma, alpha)
        for t in tasks:
            n = t["name"]
            if task_forward:
                lk = weights[n] * task_loss(t["loss"], model(ids, n), tg[n], sp[n], gamma, alpha)
            else:
                lk = weights[n] * parts[n]
            gs = torch.autograd.grad(lk, [p for _, p in params], retain_graph=not task_forward and n != names[-1],
                                     allow_unused=True)
            got = {i: g.detach() for i, g in enumerate(gs) if g is not None}
            got.update(P.take_sinks(tables))  # optim.embedding_step fused: the tables' pooled gradients
            for i, g in P.equivalents([got], tables)[0].items():
                grads[n][i] = _add(grads[n].get(i), g)
    by_group: Dict[str, List[int]] = {}
    for i, (pn, _) in enumerate(params):
        by_group.setdefault(groups[pn], []).append(i)
    out: Dict[str, Any] = {}
    shared_all: List[int] = []
    for gname, idxs in by_group.items():
        reach = [n for n in names if any(i in grads[n] for i in idxs)]
        if len(reach) < 2:
            continue
        shared_all += idxs
        out[gname] = _group_stats(grads, reach, idxs)
    if shared_all:
        reach = [n for n in names if any(i in grads[n] for i in shared_all)]
        out["all_shared"] = _group_stats(grads, reach, shared_all)
    return {"rows": int(rows.numel()), "weights": dict(weights), "groups": out}


def _group_stats(grads, reach, idxs) -> Dict[str, Any]:
    norm = {}
    for n in reach:
        norm[n] = math.sqrt(sum(float(_sqnorm(grads[n][i])) for i in idxs if i in grads[n]))
    cos = {}
    for a, b in itertools.combinations(reach, 2):
        dot = sum(float(_dot(grads[a][i], grads[b][i])) for i in idxs if i in grads[a] and i in grads[b])
        den = norm[a] * norm[b]
        cos[f"{a}&{b}"] = dot / den if den > 0 else None
    return {"norm": norm, "cos": cos}


# ------------------------------------------------------------------------------------------

def subset_split(split: B.SplitTensors, fraction: float, how: str, seed: int) -> B.SplitTensors:
    """The split restricted to round(fraction * n) of its rows (at least 1): the first rows in
    data order (how="first"), or a seeded random subset kept in data order (how="random")."""
    n = len(split)
    if fraction >= 1.0:
        return split
    k = max(1, int(round(fraction * n)))
    if how == "first":
        rows = torch.arange(k)
    else:
        rows = B.permutation(n, seed, "subset", 0, torch.device("cpu"))[:k].sort().values
    rows = rows.to(split.ids.device)
    if getattr(split, "streamed", False):
        # the streamed split gathers only the subset's rows (its full-length label columns, 4
        # bytes a row each, are never built: 0.75 GB at 100M rows); the same values and dtypes
        ids, targets, spaces = split.batch(rows)
    else:
        ids = split.ids.index_select(0, rows)
        targets = {t: v.index_select(0, rows) for t, v in split.targets.items()}
        spaces = {t: (None if v is None else v.index_select(0, rows)) for t, v in split.spaces.items()}
    space_index = {t: (torch.arange(k, device=rows.device) if v is None else v.nonzero().squeeze(1))
                   for t, v in spaces.items()}
    return B.SplitTensors(ids, targets, spaces, space_index, split.device)


class PerTaskModel(nn.Module):
    """The served predictor of per-task model selection: `models[t]` is the snapshot of task t's
    best validation epoch (tasks with the same best epoch share one module); predict(ids)[t]
    comes from models[t]. Same interface as a MultiTaskModel for prediction."""

    def __init__(self, models: Mapping[str, nn.Module], tasks: Sequence[str]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.models = nn.ModuleDict({t: models[t] for t in self.tasks})
        self.kind = getattr(models[self.tasks[0]], "kind", None)  # the snapshots' model kind (export names it)

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        if task is None:
            return self.predict(ids)
        return self.models[task](ids, task)

    def predict(self, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        done: Dict[int, Dict[str, torch.Tensor]] = {}
        for t in self.tasks:
            m = self.models[t]
            if id(m) not in done:
                done[id(m)] = m.predict(ids)
            out[t] = done[id(m)][t]
        return out
