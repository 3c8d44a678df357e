"""The two optimizers of a model: MaskedAdam over the dense parameters, a row-wise Adam over the
embedding tables."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

import ncs_kernels as nk

from ..models import MultiTaskModel
from .checkpoint import flatten_optimizer, unflatten_optimizer


class Optimizers:
    """MaskedAdam over the dense parameters (MLP weights under the task's masks, biases and heads)
    and SparseAdam over the embedding tables (only the rows of the batch do work).

    optim.moments per_task: the masked weights keep one Adam state per task (nk.MaskedAdam
    moments="per_task"); step() passes the batch's task, so mask generation and joint steps use
    the task's own moments, while mixed batches (task None: warmup, the baselines) use the shared
    ones. The per-task state is not in the warmup snapshot, so every rewind starts it afresh."""

    def __init__(self, model: MultiTaskModel, cfg, backend: str = "auto"):
        o = cfg.optim
        betas = tuple(o.betas)
        # optim.moments per_task: per-task Adam moments for the masked weights, indexed by task
        # name (steps with task None, i.e. mixed batches, use the shared moments)
        self.dense = nk.MaskedAdam(model.dense_parameters(), lr=o.lr, betas=betas, eps=o.eps,
                                   weight_decay=o.weight_decay, mode=o.mode, backend=backend,
                                   moments=o.moments, tasks=[t.name for t in cfg.tasks])
        if o.embedding_step == "fused":
            from ncs_kernels.embedding_adam import attach_fused_step
            self.sparse = attach_fused_step(model, lr=o.embedding_lr or o.lr, betas=betas, eps=o.eps)
        else:
            self.sparse = torch.optim.SparseAdam(model.embedding_parameters(), lr=o.embedding_lr or o.lr,
                                                 betas=betas, eps=o.eps)

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        self.sparse.zero_grad(set_to_none=True)

    def step(self, masks: Dict[torch.Tensor, torch.Tensor], task: Optional[str] = None) -> None:
        """One update: `task` is the batch's task (None: a mixed batch), `masks` its masks."""
        self.dense.set_masks(masks, task=task)
        self.dense.step()
        self.sparse.step()

    def flatten(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        t1, d1 = flatten_optimizer("dense", self.dense.state_dict())
        t2, d2 = flatten_optimizer("sparse", self.sparse.state_dict())
        return {**t1, **t2}, {"dense": d1, "sparse": d2}

    def load(self, tensors: Dict[str, torch.Tensor], doc: Dict[str, Any]) -> None:
        # unflatten clones every tensor: the optimizers must never alias a stored snapshot
        self.dense.load_state_dict(unflatten_optimizer("dense", tensors, doc["dense"]))
        self.sparse.load_state_dict(unflatten_optimizer("sparse", tensors, doc["sparse"]))

    def load_dense(self, tensors: Dict[str, torch.Tensor], doc: Dict[str, Any]) -> None:
        self.dense.load_state_dict(unflatten_optimizer("dense", tensors, doc["dense"]))
