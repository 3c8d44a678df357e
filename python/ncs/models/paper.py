"""The paper's three models: Connection_Share (NCSModel), Layer_Share and Single_Task."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from .base import MultiTaskModel
from .layers import Tower, _head


class NCSModel(MultiTaskModel):
    """Connection_Share: one shared tower, a mask per task on each of its weights."""

    kind = "connection"

    def __init__(self, fields, tasks, embed_dim, hidden, backend="auto", **kw):
        super().__init__(fields, tasks, embed_dim, hidden, backend, **kw)
        self._shared_embeddings()
        self.tower = Tower(self.num_fields, self.input_dim, self.hidden, self.tasks, backend)
        self.heads = nn.ModuleDict({t: _head(self.tower.out_features) for t in self.tasks})

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        if task is None:  # the warmup network: every weight
            if self.private is None:  # one tower pass for all heads
                # (one nn.Linear per head, not one stacked GEMM: a stacked weight would put every
                # head in every task's autograd graph, with zero rather than no gradient, which the
                # gradient diagnostics and PCGrad read as "shared"; and it gains < 1 ms per step)
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
        self._shared_embeddings()
        self._towers_and_heads(lambda t: Tower(self.num_fields, self.input_dim, self.hidden, (t,), backend))

    def _one(self, emb, ids, t):
        return self.heads[t](self.towers[t](self._task_input(emb, ids, t))).squeeze(-1)

    def forward(self, ids: torch.Tensor, task: Optional[str] = None):
        emb = self.embeddings(ids)
        return self._per_task(task, lambda t: self._one(emb, ids, t))


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
        return self._per_task(task, lambda t: self._one(ids, t))
