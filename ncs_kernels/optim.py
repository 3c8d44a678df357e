"""Adam and AdamW for weights shared by tasks under bit-packed masks.

mode="strict" (default; the paper: each task updates only its sub-network): for a batch of
task t, a masked weight and its moments change only where t's bit is 1.
mode="leaky" (the authors' code): the plain Adam step; the masked gradient is 0 outside the
mask, but momentum keeps moving those weights.

Tell the optimizer the current task's masks before each step:

    opt.set_masks(model.task_masks("cvr"))   # {weight tensor: packed int32 mask}
    opt.step()

Parameters with no mask (biases, heads) take a plain step. Sparse gradients are refused: put
embedding tables under torch.optim.SparseAdam (see ncs.train).
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

import torch

from .ops.masked_adam import masked_adam_step_

MODES = ("strict", "leaky")


class MaskedAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        mode: str = "strict",
        backend: str = "auto",
        decoupled: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if lr < 0:
            raise ValueError(f"lr: expected >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected both in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"eps: expected >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        super().__init__(params, defaults)
        self.mode = mode
        self.backend = backend
        self._masks: Dict[int, torch.Tensor] = {}

    def set_masks(self, masks: Optional[Mapping[torch.Tensor, Optional[torch.Tensor]]]) -> None:
        """The packed masks of the task whose batch the next step() applies ({param: packed});
        None or {} means no masks (every parameter takes a plain step)."""
        self._masks = {}
        if not masks:
            return
        for p, packed in masks.items():
            if packed is not None:
                self._masks[id(p)] = packed

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not take sparse gradients; use torch.optim.SparseAdam for embeddings")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                packed = self._masks.get(id(p)) if self.mode == "strict" else None
                param, grad = p, p.grad
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if p.dim() != 2:  # biases, scalars: the kernel works on 2-D views
                    param, grad = p.view(1, -1), grad.reshape(1, -1)
                    exp_avg, exp_avg_sq = exp_avg.view(1, -1), exp_avg_sq.view(1, -1)
                    packed = None
                masked_adam_step_(
                    param, grad.contiguous(), exp_avg, exp_avg_sq, packed, step, group["lr"], beta1, beta2,
                    group["eps"], group["weight_decay"], group["decoupled"], backend=self.backend,
                )
        return loss


class MaskedAdamW(MaskedAdam):
    """AdamW (decoupled weight decay, applied only where the task's bit is 1 in strict mode)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, mode: str = "strict", backend: str = "auto"):
        super().__init__(params, lr, betas, eps, weight_decay, mode, backend, decoupled=True)
