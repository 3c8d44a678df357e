"""Adam and AdamW for weights shared by tasks under bit-packed masks.

mode="strict" (default; the paper: each task updates only its sub-network): for a batch of
task t, a masked weight and its moments change only where t's bit is 1.
mode="leaky" (the authors' code): the plain Adam step; the masked gradient is 0 outside the
mask, but momentum keeps moving those weights.

Tell the optimizer the current task's masks (and, for per-task moments, the task) before each
step:

    opt.set_masks(nk.model_task_masks(model, "cvr"), task="cvr")   # {weight tensor: packed int32 mask}
    opt.step()                                           # or opt.step(task="cvr")

moments="shared" (default): one Adam state per parameter, whatever task steps it. With a weight
shared by tasks, its second moment is then dominated by the task with the larger gradients
(CTR), and the other task's steps (CVR) shrink.
moments="per_task" (needs `tasks`): every masked weight (a parameter that set_masks gave a
mask) keeps one exp_avg / exp_avg_sq / step count per task, stacked as [T, *shape] in the state
("exp_avg_task", "exp_avg_sq_task", "task_step"); task t's step reads and writes only slice t
(fused: the backend kernel runs on the slice in place, nothing is copied), with t's own step
count in the bias correction. In strict mode the other tasks' moments and the weights outside
t's mask stay bit-identical. Each task's moments start at zero at its first step, as a fresh
Adam's (the warmup's shared moments are not inherited).
  - Parameters without a mask (biases, heads) keep the shared state: a head only ever gets its
    own task's gradients, and biases are small and unmasked.
  - A step with task=None (mixed batches: the trainer's warmup and the baselines, every weight)
    uses the shared moments of every parameter and never reads or writes the per-task ones.
  - leaky mode: a task's own moments are 0 outside its mask (its masked gradient always was),
    so with per-task moments nothing leaks there, except weight decay.
  - state_dict / load_state_dict carry the per-task state (tensors, and the step counts as a
    list of ints), so it round-trips through ncs.train.checkpoint bit for bit.

Sparse gradients are refused: put embedding tables under torch.optim.SparseAdam (see ncs.train).
"""
from __future__ import annotations

from typing import Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch

from .ops.masked_adam import masked_adam_step_, masked_adam_task_step_

MODES = ("strict", "leaky")
MOMENTS = ("shared", "per_task")
_KEEP = object()  # step(task=...) not given: use the task given to set_masks


def _task_names(tasks, moments: str) -> Optional[Tuple[Hashable, ...]]:
    if tasks is None:
        if moments == "per_task":
            raise ValueError("tasks: moments='per_task' needs the task names (e.g. tasks=('ctr', 'cvr')) "
                             "or their number, got None")
        return None
    if isinstance(tasks, bool):
        raise ValueError(f"tasks: expected a sequence of task names or a number of tasks >= 1, got {tasks!r}")
    if isinstance(tasks, int):
        if tasks < 1:
            raise ValueError(f"tasks: expected a number of tasks >= 1, got {tasks}")
        return tuple(range(tasks))
    names = tuple(tasks)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"tasks: expected a non-empty sequence of distinct task names, got {list(names)!r}")
    return names


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
        moments: str = "shared",
        tasks: Union[None, int, Sequence[Hashable]] = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if moments not in MOMENTS:
            raise ValueError(f"moments: expected one of {MOMENTS}, got {moments!r}")
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
        self.moments = moments
        self.tasks = _task_names(tasks, moments)
        self._masks: Dict[int, torch.Tensor] = {}
        self._task: Optional[int] = None

    def task_index(self, task) -> Optional[int]:
        """The index into the per-task state of `task` (a name from `tasks`, or an int index);
        None for None, and always None with moments='shared' (the task does not matter there)."""
        if task is None or self.moments == "shared":
            return None
        if task in self.tasks:
            return self.tasks.index(task)
        if isinstance(task, int) and not isinstance(task, bool) and 0 <= task < len(self.tasks):
            return task
        raise ValueError(f"task: expected one of {list(self.tasks)} (or an index < {len(self.tasks)}) or None, "
                         f"got {task!r}")

    def set_masks(self, masks: Optional[Mapping[torch.Tensor, Optional[torch.Tensor]]], task=None) -> None:
        """The packed masks of the task whose batch the next step() applies ({param: packed}), and
        that task (used by moments='per_task'; None: a mixed batch, shared moments). None or {}
        means no masks (every parameter takes a plain step)."""
        self._task = self.task_index(task)
        self._masks = {}
        if not masks:
            return
        for p, packed in masks.items():
            if packed is not None:
                self._masks[id(p)] = packed

    @torch.no_grad()
    def step(self, closure=None, task=_KEEP):
        """One step. task: the task of the batch (overrides the one given to set_masks);
        None: a mixed batch. Only moments='per_task' reads it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ti = self._task if task is _KEEP else self.task_index(task)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not take sparse gradients; use torch.optim.SparseAdam for embeddings")
                state = self.state[p]
                has_mask = id(p) in self._masks
                packed = self._masks.get(id(p)) if self.mode == "strict" else None
                hyper = (group["lr"], beta1, beta2, group["eps"], group["weight_decay"], group["decoupled"])
                if ti is not None and has_mask:
                    self._task_step(p, state, packed, ti, hyper)
                    continue
                if "exp_avg" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                param, grad = p, p.grad
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if p.dim() != 2:  # biases, scalars: the kernel works on 2-D views
                    param, grad = p.view(1, -1), grad.reshape(1, -1)
                    exp_avg, exp_avg_sq = exp_avg.view(1, -1), exp_avg_sq.view(1, -1)
                    packed = None
                masked_adam_step_(param, grad.contiguous(), exp_avg, exp_avg_sq, packed, step, *hyper,
                                  backend=self.backend)
        return loss

    def _task_step(self, p: torch.Tensor, state: dict, packed: Optional[torch.Tensor], ti: int, hyper) -> None:
        """Task ti's step on a masked weight with its own moments (slice ti of the stacks)."""
        n_tasks = len(self.tasks)
        if "exp_avg_task" not in state:
            state["task_step"] = [0] * n_tasks
            state["exp_avg_task"] = torch.zeros((n_tasks,) + tuple(p.shape), dtype=p.dtype, device=p.device)
            state["exp_avg_sq_task"] = torch.zeros_like(state["exp_avg_task"])
        steps = state["task_step"]
        steps[ti] += 1
        param, grad = p, p.grad
        m, v = state["exp_avg_task"], state["exp_avg_sq_task"]
        if p.dim() != 2:
            param, grad = p.view(1, -1), grad.reshape(1, -1)
            m, v = m.view(n_tasks, 1, -1), v.view(n_tasks, 1, -1)
            packed = None
        masked_adam_task_step_(param, grad.contiguous(), m, v, packed, ti, steps[ti], *hyper, backend=self.backend)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for st in self.state.values():
            if "exp_avg_task" not in st:
                continue
            if self.moments != "per_task":
                raise ValueError("state_dict: holds per-task Adam moments, but this optimizer has moments="
                                 f"{self.moments!r}; build it with moments='per_task' and the same tasks")
            t_count = st["exp_avg_task"].shape[0]
            if t_count != len(self.tasks) or len(st.get("task_step", ())) != t_count:
                raise ValueError(f"state_dict: per-task moments for {t_count} tasks, but this optimizer has "
                                 f"tasks={list(self.tasks)}")
            st["task_step"] = [int(s) for s in st["task_step"]]


class MaskedAdamW(MaskedAdam):
    """AdamW (decoupled weight decay, applied only where the task's bit is 1 in strict mode)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, mode: str = "strict", backend: str = "auto",
                 moments: str = "shared", tasks=None):
        super().__init__(params, lr, betas, eps, weight_decay, mode, backend, decoupled=True,
                         moments=moments, tasks=tasks)
