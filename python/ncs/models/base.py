"""MultiTaskModel: what every kind shares (tasks, embeddings, parameter groups, dispatch)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

import ncs_kernels as nk

from .layers import FieldEmbeddings, _head, _vocab_sizes


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

    # -- construction and dispatch shared by the kinds
    def _shared_embeddings(self) -> None:
        """self.embeddings (shared by the tasks), then self.private (None without task_embed_dim)."""
        self.embeddings = self._embeddings()
        self.private = self._private_embeddings()

    def _towers_and_heads(self, tower) -> None:
        """self.towers = {task: tower(task)}, then self.heads = {task: a head on that tower}."""
        self.towers = nn.ModuleDict({t: tower(t) for t in self.tasks})
        self.heads = nn.ModuleDict({t: _head(self.towers[t].out_features) for t in self.tasks})

    def _per_task(self, task: Optional[str], one) -> Any:
        """{t: one(t)} for every task (task None), else one(task) of a known task."""
        if task is None:
            return {t: one(t) for t in self.tasks}
        self._check_task(task)
        return one(task)
