"""Problem: one benchmark case (op, variant, shape, dtype; see bench/_cases.py) with its tensors
allocated once; `Problem.eager_step()` runs one forward+backward (or one optimizer step) without
syncing. make_problem builds it; timing (bench/_timing.py) and memory (bench/_memory.py) take it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

import ncs_kernels as nk
from bench import _cases as K
from bench import _env


@dataclass
class Problem:
    """One op at one shape/dtype/variant, tensors allocated once.

    forward()  builds the autograd graph and returns the output (None for optimizer steps)
    dy         the upstream gradient fed to backward
    update()   the whole step, for optimizer problems
    leaves     tensors whose .grad is cleared before each eager step (so grads are written, not
               accumulated, exactly as a training step with zero_grad(set_to_none=True))
    owned      tensors that exist before the step (inputs, parameters, masks): not counted as
               activation memory when they are saved for backward
    """

    forward: Optional[Callable[[], torch.Tensor]] = None
    dy: Optional[torch.Tensor] = None
    update: Optional[Callable[[], None]] = None
    leaves: List[torch.Tensor] = field(default_factory=list)
    owned: List[torch.Tensor] = field(default_factory=list)
    flop: float = 0.0  # GEMM flops of one step, for TFLOP/s columns
    keepalive: list = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)  # set around every step (see _cases.variant_env)
    cuda_gemm: Optional[str] = None  # set_cuda_gemm_strategy around every step (_cases.variant_cuda_gemm)

    def step(self) -> None:
        with _env.scoped_env(self.env), _env.scoped_cuda_gemm(self.cuda_gemm):
            if self.update is not None:
                self.update()
                return
            self.forward().backward(self.dy)

    def clear_grads(self) -> None:
        for t in self.leaves:
            t.grad = None

    def eager_step(self) -> None:
        self.clear_grads()
        self.step()


def _randn(shape, gen, device, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


def _mask(n: int, k: int, gen, device) -> torch.Tensor:
    return (torch.rand(n, k, generator=gen) < K.DENSITY).to(device)


def make_problem(op: str, variant: str, shape: Dict[str, int], dtype_name: str, device: str,
                 mode: str = "eager", seed: int = 0) -> Problem:
    """Allocate the tensors of one case. Raises if the variant cannot run (call why_skip first)."""
    dtype = K.DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(seed)
    be = K.variant_backend(variant)
    base = variant.split("~", 1)[0]  # the tensors and call are those of the plain variant
    if op == "masked_linear":
        prob = _linear_problem(base, be, shape, dtype, device, gen)
    elif op == "cross_masked_linear":
        prob = _cross_problem(base, be, shape, dtype, device, gen)
    elif op == "masked_adam":
        prob = _adam_problem(base, be, shape, dtype, device, gen, capturable=(mode == "graph"))
    else:
        raise ValueError(f"op: expected masked_linear, cross_masked_linear or masked_adam, got {op!r}")
    prob.env = K.variant_env(variant)
    prob.cuda_gemm = K.variant_cuda_gemm(variant)
    return prob


def _linear_problem(variant, be, shape, dtype, device, gen) -> Problem:
    b, k, n = shape["B"], shape["K"], shape["N"]
    x = _randn((b, k), gen, device, dtype).requires_grad_()
    w = _randn((n, k), gen, device, dtype, scale=k ** -0.5).requires_grad_()
    bias = _randn((n,), gen, device, dtype, scale=0.1).requires_grad_()
    mask = _mask(n, k, gen, device)
    dy = _randn((b, n), gen, device, dtype)
    flop = 6.0 * b * k * n  # y, dx and dW GEMMs
    if variant == "dense":
        return Problem(lambda: F.linear(x, w, bias), dy, leaves=[x, w, bias], owned=[x, w, bias], flop=flop)
    if variant == "floatmask":
        mf = mask.to(dtype)
        return Problem(lambda: F.linear(x, w * mf, bias), dy, leaves=[x, w, bias], owned=[x, w, bias, mf], flop=flop)
    if variant == "prune":
        import torch.nn.utils.prune as prune

        lin = torch.nn.Linear(k, n, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
        prune.custom_from_mask(lin, "weight", mask)
        return Problem(lambda: lin(x), dy, leaves=[x, lin.weight_orig, lin.bias],
                       owned=[x, lin.weight_orig, lin.bias, lin.weight_mask], flop=flop, keepalive=[lin])
    if be is not None and variant == f"nk:{be}":
        packed = nk.pack_mask(mask)
        return Problem(lambda: nk.masked_linear(x, w, packed, bias, backend=be), dy,
                       leaves=[x, w, bias], owned=[x, w, bias, packed], flop=flop)
    raise ValueError(f"variant: unknown masked_linear variant {variant!r}")


def _cross_problem(variant, be, shape, dtype, device, gen) -> Problem:
    b, f, d, n = shape["B"], shape["F"], shape["d"], shape["N"]
    k = f * f + f * d
    emb = _randn((b, f, d), gen, device, dtype, scale=0.3).requires_grad_()
    w = _randn((n, k), gen, device, dtype, scale=k ** -0.5).requires_grad_()
    bias = _randn((n,), gen, device, dtype, scale=0.1).requires_grad_()
    mask = _mask(n, k, gen, device)
    dy = _randn((b, n), gen, device, dtype)
    # the linear GEMMs plus the Gram bmm (forward) and its two backward bmm's
    flop = 6.0 * b * k * n + 6.0 * b * f * f * d
    common = dict(leaves=[emb, w, bias], flop=flop)
    if variant == "dense_unfused":
        return Problem(lambda: F.linear(nk.feature_cross(emb), w, bias), dy, owned=[emb, w, bias], **common)
    if variant == "unfused":
        mf = mask.to(dtype)
        return Problem(lambda: F.linear(nk.feature_cross(emb), w * mf, bias), dy, owned=[emb, w, bias, mf], **common)
    packed = nk.pack_mask(mask)
    if be is not None and variant == f"cross+nk:{be}":
        return Problem(lambda: nk.masked_linear(nk.feature_cross(emb), w, packed, bias, backend=be), dy,
                       owned=[emb, w, bias, packed], **common)
    if be is not None and variant == f"nk:{be}":
        return Problem(lambda: nk.cross_masked_linear(emb, w, packed, bias, backend=be), dy,
                       owned=[emb, w, bias, packed], **common)
    raise ValueError(f"variant: unknown cross_masked_linear variant {variant!r}")


def _adam_problem(variant, be, shape, dtype, device, gen, capturable: bool) -> Problem:
    k, n = shape["K"], shape["N"]
    p = _randn((n, k), gen, device, dtype, scale=k ** -0.5)
    g = _randn((n, k), gen, device, dtype, scale=1e-2)
    mask = _mask(n, k, gen, device)
    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if variant in ("adam", "adam_fused"):
        param = p.requires_grad_()
        param.grad = g
        kw = {"fused": True} if variant == "adam_fused" else {"foreach": True}
        opt = torch.optim.Adam([param], capturable=capturable, **kw, **hp)
        return Problem(update=opt.step, owned=[param, g], keepalive=[opt])
    if be is not None and variant == f"nk:{be}":
        packed = nk.pack_mask(mask)
        m = torch.zeros_like(p)
        v = torch.zeros_like(p)

        def update():
            # a fixed step count: bias correction costs the same at every step
            nk.masked_adam_step_(p, g, m, v, packed, 10, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, backend=be)

        return Problem(update=update, owned=[p, g, m, v, packed])
    raise ValueError(f"variant: unknown masked_adam variant {variant!r}")
