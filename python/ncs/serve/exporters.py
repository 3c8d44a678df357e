"""Per-kind exporters: a trained model's task -> a plain-torch network (ncs.serve.network).

A model kind provides its per-task network in one of two ways (looked up in this order):
  * a method ``model.export_task(task) -> nn.Module`` (ids -> logits [B], plain torch only), or
  * a function registered with ``register_exporter(kind, fn)``, fn(model, task) -> nn.Module.
The three kinds of ncs.models (single, layer, connection) are registered here.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

from .network import CrossMLP
from .runs import ExportError


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
