"""Drop-in nn.Modules: one shared weight, one bit-packed mask per task.

    layer = MaskedLinear(1680, 512, tasks=("ctr", "cvr"))
    y = layer(x, task="cvr")          # x [..., 1680] -> [..., 512], only cvr's weights
    y = layer(x)                      # task=None: every weight (the dense layer, for warmup)

Masks are buffers named mask_<task> (int32 [out, ceil(in/32)]), so they travel with
state_dict; a MaskedLinear of width F*F + F*d and a CrossMaskedLinear share names and layout,
so either loads the other's state.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masks import density, ones_mask, pack_mask, unpack_mask
from .ops.cross_masked_linear import cross_masked_linear
from .ops.feature_cross import cross_width
from .ops.masked_linear import masked_linear


def _check_tasks(tasks: Sequence[str]) -> tuple:
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if len(tasks) == 0:
        raise ValueError("tasks: expected at least one task name")
    for t in tasks:
        if not isinstance(t, str) or not t.isidentifier():
            raise ValueError(f"tasks: each task name must be a Python identifier, got {t!r}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks: duplicate names in {tasks}")
    return tasks


class _TaskMasked(nn.Module):
    """Shared weight [out, in] + bias, and one packed mask buffer per task."""

    def _init_masks(self, tasks, out_features: int, in_features: int, bias: bool, backend: str, device, dtype):
        self.tasks = _check_tasks(tasks)
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        for t in self.tasks:
            self.register_buffer(f"mask_{t}", ones_mask(out_features, in_features, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation, so that the layer is a drop-in replacement
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _task(self, task: str) -> str:
        if task not in self.tasks:
            raise KeyError(f"task: unknown task {task!r}; this layer has tasks {self.tasks}")
        return task

    def get_mask(self, task: str, packed: bool = True) -> torch.Tensor:
        """The task's mask: packed int32 [out, ceil(in/32)], or bool [out, in] with packed=False."""
        p = getattr(self, f"mask_{self._task(task)}")
        return p if packed else unpack_mask(p, self.in_features)

    def set_mask(self, task: str, mask: torch.Tensor) -> None:
        """Set a task's mask from bool/0-1 [out, in] or packed int32 [out, ceil(in/32)]."""
        task = self._task(task)
        words = (self.in_features + 31) // 32
        if mask.dtype == torch.int32 and tuple(mask.shape) == (self.out_features, words):
            packed = mask.contiguous()
        elif tuple(mask.shape) == (self.out_features, self.in_features):
            packed = pack_mask(mask)
        else:
            raise ValueError(
                f"mask: expected bool [{self.out_features}, {self.in_features}] or packed int32 "
                f"[{self.out_features}, {(self.in_features + 31) // 32}], got {mask.dtype} {tuple(mask.shape)}"
            )
        if packed.shape[0] != self.out_features:
            raise ValueError(f"mask: expected {self.out_features} rows, got {packed.shape[0]}")
        rem = self.in_features % 32
        if rem and bool((packed[:, -1] >> rem).ne(0).any()):
            raise ValueError(f"mask: bits set past in_features={self.in_features} in the packed mask")
        buf = getattr(self, f"mask_{task}")
        buf.copy_(packed.to(buf.device))

    def mask_density(self, task: str) -> float:
        return density(self.get_mask(task), self.in_features)

    def task_masks(self, task: Optional[str]) -> Dict[torch.Tensor, torch.Tensor]:
        """{weight: packed mask} for MaskedAdam.set_masks; {} for task=None."""
        return {} if task is None else {self.weight: self.get_mask(task)}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, tasks={self.tasks}"


class MaskedLinear(_TaskMasked):
    def __init__(self, in_features: int, out_features: int, tasks: Sequence[str] = ("ctr", "cvr"),
                 bias: bool = True, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self._init_masks(tasks, out_features, in_features, bias, backend, device, dtype)

    def forward(self, x: torch.Tensor, task: Optional[str] = None) -> torch.Tensor:
        if task is None:
            return F.linear(x, self.weight, self.bias)
        packed = self.get_mask(task)
        lead = x.shape[:-1]
        y = masked_linear(x.reshape(-1, x.shape[-1]).contiguous(), self.weight, packed, self.bias, self.backend)
        return y.reshape(*lead, self.out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, tasks: Sequence[str] = ("ctr", "cvr"), backend: str = "auto"):
        """A MaskedLinear sharing nothing with `linear` but a copy of its weight and bias; all masks ones."""
        layer = cls(linear.in_features, linear.out_features, tasks, bias=linear.bias is not None,
                    backend=backend, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer


class CrossMaskedLinear(_TaskMasked):
    """The first layer of the NCS model: feature cross of emb [B, F, d] into a masked linear,
    fused so that the [B, F*F + F*d] crossed input is never materialised."""

    def __init__(self, num_fields: int, embed_dim: int, out_features: int, tasks: Sequence[str] = ("ctr", "cvr"),
                 bias: bool = True, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.num_fields = num_fields
        self.embed_dim = embed_dim
        self._init_masks(tasks, out_features, cross_width(num_fields, embed_dim), bias, backend, device, dtype)
        # task=None (warmup) runs the same fused kernel under an all-ones mask
        self.register_buffer("_all_ones", ones_mask(out_features, self.in_features, device=device), persistent=False)

    def forward(self, emb: torch.Tensor, task: Optional[str] = None) -> torch.Tensor:
        if emb.dim() != 3 or emb.shape[1:] != (self.num_fields, self.embed_dim):
            raise ValueError(
                f"emb: expected shape [B, {self.num_fields}, {self.embed_dim}], got {tuple(emb.shape)}"
            )
        emb = emb.contiguous()
        packed = self.get_mask(task) if task is not None else self._all_ones
        return cross_masked_linear(emb, self.weight, packed, self.bias, self.backend)

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}, embed_dim={self.embed_dim}, " + super().extra_repr()


def masked_modules(model: nn.Module) -> Dict[str, _TaskMasked]:
    """Every MaskedLinear / CrossMaskedLinear in `model`, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _TaskMasked)}


def model_task_masks(model: nn.Module, task: Optional[str]) -> Dict[torch.Tensor, torch.Tensor]:
    """{weight: packed} over every masked layer of `model`, for MaskedAdam.set_masks."""
    out: Dict[torch.Tensor, torch.Tensor] = {}
    if task is None:
        return out
    for m in masked_modules(model).values():
        if task in m.tasks:
            out.update(m.task_masks(task))
    return out
