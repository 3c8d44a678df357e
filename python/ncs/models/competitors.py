"""The usual MTL competitors: Shared_Bottom, MMoE, PLE and ESMM (the budgets: ncs.models)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .base import MultiTaskModel
from .layers import Stack, Tower, _gate


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


class _TowersModel(MultiTaskModel):
    """Shared embeddings, something shared in the middle (_task_features), a tower + head per task."""

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        kw["task_embed_dim"] = 0
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self.embeddings = self._embeddings()
        self.bottom_widths, self.tower_widths = _split_bottom(self.hidden)

    def _make_towers(self, in_features: int) -> None:
        self._towers_and_heads(lambda t: Stack(in_features, self.tower_widths))

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
        self._towers_and_heads(lambda t: Tower(self.num_fields, self.embed_dim, self.hidden, (t,), backend))

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        return self._per_task(task, lambda t: self.heads[t](self.towers[t](emb)).squeeze(-1))
