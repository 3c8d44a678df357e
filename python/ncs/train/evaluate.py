"""Validation and test metrics of a model: the one evaluation of the trainer and of `ncs eval`."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..metrics import task_metrics
from . import batches as B


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: B.SplitTensors, tasks: Sequence, eval_batch_size: int,
             device: torch.device, task: Optional[str] = None) -> Dict[str, float]:
    """task=None: every task of `tasks` through model.predict (connection: each under its own
    mask; a PerTaskModel: each its own weights), over each task's space. task given: that task
    only, model(ids, task) under its current mask, over its space."""
    model.eval()
    by_name = {t.name: t for t in tasks}
    if task is None:
        names = list(by_name)
        outs: Dict[str, List[torch.Tensor]] = {t: [] for t in names}
        for sl in B.eval_slices(len(split), eval_batch_size):
            pred = model.predict(split.ids[sl].to(device, non_blocking=True))
            for t in names:
                outs[t].append(pred[t].float())
        metrics: Dict[str, float] = {}
        for t in names:
            logits = torch.cat(outs[t]) if outs[t] else torch.zeros(0)
            space = split.spaces[t]
            metrics.update(task_metrics(by_name[t], logits.cpu(), split.targets[t].cpu(),
                                        None if space is None else space.cpu()))
        return metrics
    rows = split.space_index[task]
    parts = []
    for sl in B.eval_slices(int(rows.numel()), eval_batch_size):
        ids = split.ids.index_select(0, rows[sl]).to(device, non_blocking=True)
        parts.append(model(ids, task).float())
    logits = torch.cat(parts) if parts else torch.zeros(0)
    return task_metrics(by_name[task], logits.cpu(), split.targets[task].index_select(0, rows).cpu())
