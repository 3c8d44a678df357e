"""Fused embedding-bag backward + row-wise sparse Adam (the design of fbgemm_gpu's TBE).

The trainer's embedding step today: nn.EmbeddingBag(sparse=True) builds a COO gradient with
one row per looked-up id (B*F*L rows of width d), torch.optim.SparseAdam coalesces it (a
sort), gathers the moments of those rows (sparse_mask, twice), adds three sparse tensors
into the dense table and its moments. The fused step never materialises that gradient:

    pooled = embedding_bag(weight, rows)                         forward, as nn.EmbeddingBag
    backward: keep dL/d pooled [bags, d] and rows [bags, L]      (no [B*F*L, d] tensor)
    step:     ids = rows[rows != padding_idx], sorted by row (stable: bag order within a row)
              per unique row r:  g_r = sum over its (bag, slot) of dL/dpooled[bag] (/ count(bag): mean)
              Adam on row r in place, with SparseAdam's arithmetic:
                  m += (g - m) (1 - b1);  v += (g^2 - v) (1 - b2)
                  p += -lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

t is the parameter's step count (one per step in which the table took part, as SparseAdam),
not a per-row count. The result equals nn.EmbeddingBag + torch.optim.SparseAdam up to the
order of the per-row sums (checked in tests/kernels/test_embedding_adam.py).

Functions
    embedding_rowwise_adam_(weight, exp_avg, exp_avg_sq, rows, grad, step, lr, beta1, beta2, eps,
                            mode="mean", padding_idx=None, backend="auto")
        one step in place; backends: torch (the reference below), cpu (csrc/cpu/embedding_adam.cpp),
        triton (ncs_kernels/backends/triton/embedding_adam.py: the sort in torch, one program per unique
        row); auto: cpu for CPU tensors, triton for CUDA tensors, else torch.
    embedding_bag(weight, rows, mode, padding_idx, sink)
        the forward; its backward hands (rows, dL/dpooled) to `sink` and returns no weight gradient.
    RowwiseSparseAdam(params, lr, betas, eps, mode, padding_idx)
        a torch.optim.Optimizer with SparseAdam's state layout (step, exp_avg, exp_avg_sq), so its
        state_dict round-trips and checkpoints are interchangeable with SparseAdam's.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Tuple

import torch

EMBEDDING_BACKENDS = ("torch", "cpu", "triton")


# ----------------------------------------------------------------------------- reference
def segment_rows(rows: torch.Tensor, mode: str, padding_idx: Optional[int]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique row ids U, segment offsets [U+1], bag of each sorted entry, per-bag divisor).

    rows int64 [bags, L]. The valid entries (!= padding_idx) sorted by row id, stable (so within
    a row in bag order); divisor = the bag's count of valid entries (mean) or 1 (sum)."""
    bags, L = rows.shape
    flat = rows.reshape(-1)
    valid = flat != padding_idx if padding_idx is not None else torch.ones_like(flat, dtype=torch.bool)
    bag_of = torch.arange(bags, device=rows.device).repeat_interleave(L)
    ids = flat[valid]
    bag_of = bag_of[valid]
    ids_sorted, order = torch.sort(ids, stable=True)
    bag_sorted = bag_of[order]
    uniq, counts = torch.unique_consecutive(ids_sorted, return_counts=True)
    offsets = torch.zeros(uniq.numel() + 1, dtype=torch.int64, device=rows.device)
    offsets[1:] = counts.cumsum(0)
    if mode == "mean":
        div = valid.view(bags, L).sum(1)
    else:
        div = torch.ones(bags, dtype=torch.int64, device=rows.device)
    return uniq, offsets, bag_sorted, div


@torch.no_grad()
def segment_sum(rows: torch.Tensor, grad: torch.Tensor, mode: str, padding_idx: Optional[int]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The table gradient of the pooled gradient grad [bags, d] of bags rows [bags, L]: (unique
    row ids U (sorted), per-row sums [U, d]); each row's sum over its (bag, slot) entries in bag
    order of grad[bag] (/ the bag's count: mean). The dense-equivalent of what the fused step applies."""
    uniq, offsets, bag_sorted, div = segment_rows(rows, mode, padding_idx)
    contrib = grad.index_select(0, bag_sorted)
    if mode == "mean":
        contrib = contrib / div.index_select(0, bag_sorted).to(grad.dtype).unsqueeze(1)
    seg = torch.repeat_interleave(torch.arange(uniq.numel(), device=rows.device), offsets.diff())
    g = torch.zeros(uniq.numel(), grad.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, seg, contrib)
    return uniq, g


@torch.no_grad()
def reference_rowwise_adam_(weight, exp_avg, exp_avg_sq, rows, grad, step: int, lr: float, beta1: float,
                            beta2: float, eps: float, mode: str = "mean", padding_idx: Optional[int] = None) -> None:
    """Pure PyTorch: the per-row gradient by a sorted segment sum, then SparseAdam's arithmetic."""
    uniq, g = segment_sum(rows, grad, mode, padding_idx)
    if uniq.numel() == 0:
        return
    m_old = exp_avg.index_select(0, uniq)
    v_old = exp_avg_sq.index_select(0, uniq)
    m_new = m_old + (g - m_old).mul_(1 - beta1)
    v_new = v_old + (g.pow(2) - v_old).mul_(1 - beta2)
    denom = v_new.sqrt().add_(eps)
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    p_new = weight.index_select(0, uniq) + (-step_size) * (m_new / denom)
    exp_avg.index_copy_(0, uniq, m_new)
    exp_avg_sq.index_copy_(0, uniq, v_new)
    weight.index_copy_(0, uniq, p_new)


# ----------------------------------------------------------------------------- dispatch
def _native():
    from . import _backends
    ext = _backends.native()
    if ext is None:
        return None, f"the native extension is not built ({_backends.native_error()})"
    if not hasattr(ext, "embedding_rowwise_adam_cpu"):
        return None, "the native extension predates embedding_rowwise_adam_cpu; rebuild it (setup.py build_ext)"
    return ext, None


def _triton_ok(t: torch.Tensor) -> Optional[str]:
    import os
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if t.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "triton needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"


def resolve_backend(backend: str, weight: torch.Tensor) -> str:
    if backend not in ("auto",) + EMBEDDING_BACKENDS:
        raise ValueError(f"backend: expected one of auto, {', '.join(EMBEDDING_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64) and _native()[0] is not None:
            return "cpu"
        if weight.device.type == "cuda" and _triton_ok(weight) is None:
            return "triton"
        return "torch"
    if backend == "cpu":
        ext, why = _native()
        if why is not None:
            raise RuntimeError(f"backend 'cpu': {why}")
        if weight.device.type != "cpu":
            raise RuntimeError("backend 'cpu': needs CPU tensors")
    if backend == "triton":
        why = _triton_ok(weight)
        if why is not None:
            raise RuntimeError(f"backend 'triton': {why}")
    return backend


def embedding_rowwise_adam_(weight: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                            rows: torch.Tensor, grad: torch.Tensor, step: int, lr: float, beta1: float = 0.9,
                            beta2: float = 0.999, eps: float = 1e-8, mode: str = "mean",
                            padding_idx: Optional[int] = None, backend: str = "auto") -> None:
    """One fused row-wise Adam step of the table `weight` [V, d] from the pooled gradient
    grad [bags, d] of the bags rows [bags, L] (int64 row ids; padding_idx entries ignored)."""
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D table [V, d], got shape {tuple(weight.shape)}")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.shape != weight.shape or t.dtype != weight.dtype or t.device != weight.device:
            raise ValueError(f"{name}: expected {tuple(weight.shape)} {weight.dtype} on {weight.device} "
                             f"(as weight), got {tuple(t.shape)} {t.dtype} on {t.device}")
    if rows.dim() != 2 or rows.dtype != torch.int64:
        raise ValueError(f"rows: expected int64 [bags, L], got {rows.dtype} {tuple(rows.shape)}")
    if grad.dim() != 2 or grad.shape != (rows.shape[0], weight.shape[1]) or grad.dtype != weight.dtype:
        raise ValueError(f"grad: expected {weight.dtype} [{rows.shape[0]}, {weight.shape[1]}] (bags, d), "
                         f"got {grad.dtype} {tuple(grad.shape)}")
    if rows.device != weight.device or grad.device != weight.device:
        raise ValueError("rows, grad: expected on the device of weight")
    if mode not in ("mean", "sum"):
        raise ValueError(f"mode: expected 'mean' or 'sum', got {mode!r}")
    if int(step) < 1:
        raise ValueError(f"step: expected a 1-based step count >= 1, got {step}")
    if not weight.is_contiguous() or not exp_avg.is_contiguous() or not exp_avg_sq.is_contiguous():
        raise ValueError("weight, exp_avg, exp_avg_sq: expected contiguous tensors (updated in place)")
    be = resolve_backend(backend, weight)
    args = (int(step), float(lr), float(beta1), float(beta2), float(eps))
    if be == "torch":
        reference_rowwise_adam_(weight, exp_avg, exp_avg_sq, rows, grad, *args, mode, padding_idx)
    elif be == "cpu":
        _native()[0].embedding_rowwise_adam_cpu(weight, exp_avg, exp_avg_sq, rows.contiguous(), grad.contiguous(),
                                               *args, mode == "mean", -1 if padding_idx is None else int(padding_idx))
    else:
        from .backends.triton.embedding_adam import rowwise_adam_triton_
        rowwise_adam_triton_(weight, exp_avg, exp_avg_sq, rows, grad, *args, mode, padding_idx)


# ----------------------------------------------------------------------------- forward + sink
class GradSink:
    """Where the backward of embedding_bag leaves (rows, dL/dpooled); the optimizer takes them.
    Several forwards of one table before a step (task-specific calls) accumulate as a list."""

    def __init__(self):
        self.pending: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        self.pending.append((rows, grad))

    def take(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if not self.pending:
            return None
        if len(self.pending) == 1:
            out = self.pending[0]
        else:  # equal L by construction (one table, one id layout)
            out = (torch.cat([r for r, _ in self.pending]), torch.cat([g for _, g in self.pending]))
        self.pending = []
        return out

    def clear(self) -> None:
        self.pending = []


def pooled_lookup(weight: torch.Tensor, rows: torch.Tensor, mode: str, padding_idx: Optional[int],
                  padding_row_is_zero: bool = False) -> torch.Tensor:
    """F.embedding_bag(rows, weight, mode=mode, padding_idx=padding_idx) as one index_select
    (+ a sum over the L slots and the mean's division): on the CPU, ATen's embedding_bag
    forward also builds offset2bag / bag_size / max_indices and zero-fills its output, which
    at B*F = 82k single-id bags costs several times the gather itself. Padding slots are zeroed
    (masked_fill, exact; skipped when the caller guarantees weight[padding_idx] == 0, as
    ncs.models.FieldEmbeddings does: its padding row is zeroed and never updated); an empty bag
    pools to 0, as EmbeddingBag's."""
    bags, L = rows.shape
    flat = rows.reshape(-1)
    emb = weight.index_select(0, flat)
    if padding_idx is not None and not (padding_row_is_zero and L == 1):
        valid = flat != padding_idx
        if not padding_row_is_zero:
            emb.masked_fill_(~valid.unsqueeze(1), 0)
    if L == 1:
        return emb  # mean of one value (or of none: 0) is the value itself
    out = emb.view(bags, L, weight.shape[1]).sum(1)
    if mode == "mean":
        cnt = valid.view(bags, L).sum(1) if padding_idx is not None else torch.full((bags,), L, device=rows.device)
        out = out / cnt.clamp_min(1).to(out.dtype).unsqueeze(1)
    return out


class _EmbeddingBagSink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, rows, mode, padding_idx, sink, padding_row_is_zero):
        ctx.sink = sink
        ctx.save_for_backward(rows)
        return pooled_lookup(weight, rows, mode, padding_idx, padding_row_is_zero)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        ctx.sink.add(rows, grad.contiguous())
        return None, None, None, None, None, None


def embedding_bag(weight: torch.Tensor, rows: torch.Tensor, mode: str, padding_idx: Optional[int],
                  sink: GradSink, padding_row_is_zero: bool = False) -> torch.Tensor:
    """F.embedding_bag(rows, weight, mode, padding_idx) [bags, d]; backward feeds `sink`."""
    return _EmbeddingBagSink.apply(weight, rows, mode, padding_idx, sink, padding_row_is_zero)


# ----------------------------------------------------------------------------- optimizer
class RowwiseSparseAdam(torch.optim.Optimizer):
    """SparseAdam for tables fed through embedding_bag(..., sink): step() applies the fused
    row-wise update from each table's sink. State per table: step (int), exp_avg, exp_avg_sq,
    exactly SparseAdam's, so state_dict() / load_state_dict() interchange with it.

    A parameter whose p.grad is a sparse tensor (a table still used the plain way) gets
    SparseAdam's own update, so mixed use stays correct."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 mode: str = "mean", padding_idx: Optional[Dict[int, Optional[int]]] = None, backend: str = "auto"):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self.mode = mode
        self.backend = backend
        self.padding_idx = dict(padding_idx or {})
        self.sinks: Dict[int, GradSink] = {id(p): GradSink() for g in self.param_groups for p in g["params"]}

    def sink(self, p: torch.nn.Parameter) -> GradSink:
        return self.sinks[id(p)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for s in self.sinks.values():
            s.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                got = self.sinks[id(p)].take()
                if got is None and p.grad is None:
                    continue
                st = self.state[p]
                if len(st) == 0:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                if got is not None:
                    rows, grad = got
                    embedding_rowwise_adam_(p, st["exp_avg"], st["exp_avg_sq"], rows, grad, st["step"], group["lr"],
                                            b1, b2, group["eps"], self.mode, self.padding_idx.get(id(p)),
                                            self.backend)
                if p.grad is not None:  # a sparse gradient from a plain forward: SparseAdam's update
                    if not p.grad.is_sparse:
                        raise RuntimeError("RowwiseSparseAdam: a table got a dense gradient; use sparse=True "
                                           "or the fused embedding_bag")
                    torch.optim._functional.sparse_adam([p], [p.grad], [st["exp_avg"]], [st["exp_avg_sq"]],
                                                        [st["step"]], eps=group["eps"], beta1=b1, beta2=b2,
                                                        lr=group["lr"], maximize=False)
        return loss


def attach_fused_step(model: torch.nn.Module, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                      backend: str = "auto") -> RowwiseSparseAdam:
    """A RowwiseSparseAdam over every embedding table of `model` (modules with a `bag`
    nn.EmbeddingBag and a `fused_sink` attribute, e.g. ncs.models.FieldEmbeddings), each wired to
    its sink so that its forward keeps the pooled gradient instead of a sparse one."""
    mods = [m for m in model.modules() if hasattr(m, "fused_sink") and isinstance(getattr(m, "bag", None),
                                                                                   torch.nn.EmbeddingBag)]
    modes = {m.bag.mode for m in mods}
    if len(modes) > 1:
        raise ValueError(f"model: tables with different pooling modes {sorted(modes)}; one optimizer takes one")
    params = [m.bag.weight for m in mods]
    opt = RowwiseSparseAdam(params, lr=lr, betas=betas, eps=eps, mode=modes.pop() if modes else "mean",
                            padding_idx={id(m.bag.weight): m.bag.padding_idx for m in mods}, backend=backend)
    for m in mods:
        m.fused_sink = opt.sink(m.bag.weight)
    return opt
