"""The one case matrix of the kernel tests, and the helpers every kernel test shares.

Targets. A target is one backend on one device type (and, for `cuda`, one GEMM strategy):

  cpu-cpu              C++ kernels (ncs_kernels._C)                 fp32, fp64
  triton-cpu           Triton kernels in the Triton interpreter      fp32, small shapes only
  triton-cuda          Triton kernels on the GPU                     fp32 (+ fp16/bf16 on LOW_PRECISION cases)
  cuda[cublas|fused]   CUDA C++ kernels, both GEMM strategies         fp32, fp16, bf16

Tolerances: fp32 within 1e-5 of the largest expected magnitude (cuda: 1e-4), fp64 within 1e-9;
fp16/bf16 within twice PyTorch's own low-precision error against the fp32 reference.

Each target has its own case list per op and dtype: (shape, density) pairs, the shapes COMMON to
every target (B = 1, sizes off every 32-bit word and block size, K = 1680 the paper's width) plus
the target's own (the cpu's word-boundary shapes, Triton's split-batch dW, CUDA's multi-tile
shapes). `linear_cases()`, `cross_cases()` and `adam_cases()` turn them into pytest params;
targets that cannot run here are kept and skipped with the reason (no GPU, interpreter off).

Internals. The tests import ncs_kernels through its public names where they can (`nk.*`,
backend="..." strings). What they must reach below that (a backend module's entry points, the
Triton launch helpers, the compiled extension) is imported HERE only, so a move of those modules
is fixed in this one place.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref
from ncs_kernels import _backends

from conftest import backend_device_params

# ---- internals: the one place tests reach below the public API --------------------------------


def impl(backend: str):
    """The entry points (masked_linear_forward, ...) of a backend, by its public name."""
    return _backends.impl(backend)


def why_unavailable(backend: str, device_type: Optional[str] = None) -> Optional[str]:
    return _backends.why_unavailable(backend, device_type)


def triton_module(name: Optional[str] = None):
    """ncs_kernels' Triton backend package, or one of its modules (masked_linear, _common, ...)."""
    return importlib.import_module("ncs_kernels.backends.triton" + ("." + name if name else ""))


def resolve(backend: str, tensor: torch.Tensor) -> str:
    """The concrete backend that runs a call on `tensor` ("auto" resolved)."""
    return _backends.resolve(backend, tensor)


def popcount_words(words: torch.Tensor) -> torch.Tensor:
    """Set bits per int32 word (ncs_kernels.masks' helper behind nk.popcount)."""
    from ncs_kernels.masks import _popcount_words

    return _popcount_words(words)


def embedding_adam():
    """ncs_kernels' fused embedding-bag backward + row-wise sparse Adam module."""
    return importlib.import_module("ncs_kernels.embedding_adam")


def native():
    """The compiled extension ncs_kernels._C (None when not built; nk.native_error() says why)."""
    return nk.native()


# ---- the targets and their case lists ----------------------------------------------------------

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
LOW_PRECISION = (F16, BF16)
DENSITIES = [0.0, 1.0, 0.5]
# the gradient subsets a backend is asked for (autograd asks only for what is needed)
NEEDS = [(True, False, False), (False, True, False), (False, False, True), (True, True, False), (False, True, True)]


def _grid(shapes, densities=DENSITIES):
    return [(s, d) for s in shapes for d in densities]


# masked_linear (B, K, N)
LINEAR_COMMON = [(1, 1, 1), (1, 33, 5), (7, 31, 3), (5, 70, 33), (3, 1680, 9), (16, 64, 32), (13, 100, 17)]
LINEAR_CPU = [(1, 31, 5), (3, 33, 4), (5, 70, 9), (16, 1680, 12), (8, 32, 1), (4, 64, 33)]
LINEAR_TRITON = [(2, 31, 33), (3, 70, 1), (70, 33, 5)]  # 70 > 32 rows: the split-batch dW
LINEAR_CUDA = [(130, 100, 65), (257, 1680, 130)]  # several M and N tiles
LINEAR_LOW_PRECISION = [((67, 1680, 129), 0.5)]  # (shape, density) pairs
# cross_masked_linear (B, F, d, N); the width is F*F + F*d
CROSS_COMMON = [(1, 1, 1, 1), (3, 2, 3, 5), (5, 3, 8, 7), (2, 20, 3, 9), (4, 27, 1, 3), (1, 20, 64, 3), (3, 2, 64, 4)]
CROSS_CPU = [(1, 1, 1, 3), (2, 2, 3, 5), (3, 3, 8, 4), (4, 20, 64, 6), (5, 3, 1, 7), (2, 20, 3, 2), (3, 2, 64, 33)]
# (shape, density) pairs: F x d around the interpreter's block sizes, a wide and a one-output layer
CROSS_TRITON = ([((3, f, d, 5), 0.5) for f in (1, 2, 3, 20) for d in (1, 3, 8) if (f, d) != (2, 3)]
                + [((4, 3, 8, 33), 0.0), ((4, 3, 8, 33), 1.0), ((1, 2, 3, 1), 0.5)])
CROSS_CUDA = [(130, 20, 64, 70)]
CROSS_LOW_PRECISION = [((65, 20, 64, 129), 0.5)]
# masked Adam (N, K, density)
ADAM_COMMON = [(1, 1, 1.0), (5, 33, 0.5), (7, 70, 0.0), (3, 100, 0.3), (1, 1680, 0.5)]
ADAM_CPU_F64 = [(6, 1, 0.5), (6, 33, 0.5), (6, 70, 0.7)]
ADAM_TRITON = [(19, 70, 0.5), (3, 33, 0.0), (3, 33, 1.0)]
ADAM_CUDA = [(1, 1, 0.5), (7, 33, 0.5), (64, 1680, 0.5), (1, 1000, 0.5)]
# the per-task Adam step on every backend (n, k, density, tasks): one-element weights, K off the
# 32-bit word, densities 0 / 1 / 0.5, one to three tasks
ADAM_TASK_CASES = [(1, 1, 1.0, 1), (5, 33, 0.5, 2), (7, 70, 0.0, 3), (3, 100, 0.5, 2), (2, 257, 1.0, 3),
                   (1, 1680, 0.5, 2)]

# the property-based tests (test_fuzz_ops.py): every backend that runs on CPU tensors here, the
# largest size drawn (the Triton interpreter: small) and the dtypes
FUZZ_MAX = {"torch": 300, "cpu": 300, "triton": 40}
FUZZ_DTYPES = {"torch": [F32, F64], "cpu": [F32, F64], "triton": [F32]}


@dataclass(frozen=True)
class Target:
    """One backend on one device type; the case lists map a dtype to its (shape, density) pairs."""

    backend: str
    device: str
    linear: Dict[torch.dtype, list]
    cross: Dict[torch.dtype, list]
    adam: Dict[torch.dtype, list]
    strategy: Optional[str] = None  # cuda: the GEMM strategy ("cublas" | "fused")
    # fp32 rtol and atol (relative to the largest expected magnitude) of the case-list tests
    fp32_tol: float = 1e-5
    marks: tuple = field(default=(), compare=False)

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}" + (f"-{self.strategy}" if self.strategy else "")

    @property
    def interpreted(self) -> bool:
        """Runs in the Triton interpreter: every launch is slow, so cases stay few and small."""
        return self.backend == "triton" and self.device == "cpu"

    @contextlib.contextmanager
    def running(self):
        """The target's run-time settings, for the duration of one test."""
        if self.strategy is None:
            yield
            return
        ext = native()
        prev = ext.cuda_gemm_strategy()
        ext.set_cuda_gemm_strategy(self.strategy)
        try:
            yield
        finally:
            ext.set_cuda_gemm_strategy(prev)


def _targets() -> List[Target]:
    marks = {p.id: p.marks for p in backend_device_params()}
    cpu = Target("cpu", "cpu",
                 linear={F32: _grid(LINEAR_COMMON + LINEAR_CPU), F64: _grid(LINEAR_COMMON + LINEAR_CPU)},
                 cross={F32: _grid(CROSS_COMMON + CROSS_CPU), F64: _grid(CROSS_COMMON + CROSS_CPU)},
                 adam={F32: ADAM_COMMON, F64: ADAM_CPU_F64}, marks=marks["cpu-cpu"])
    triton_cases = dict(linear={F32: _grid(LINEAR_COMMON + LINEAR_TRITON)},
                        cross={F32: _grid(CROSS_COMMON) + CROSS_TRITON},
                        adam={F32: ADAM_COMMON + ADAM_TRITON})
    triton_cpu = Target("triton", "cpu", **triton_cases, marks=marks["triton-cpu"])
    triton_cuda = Target("triton", "cuda",
                         linear={**triton_cases["linear"], F16: LINEAR_LOW_PRECISION, BF16: LINEAR_LOW_PRECISION},
                         cross={**triton_cases["cross"], F16: CROSS_LOW_PRECISION, BF16: CROSS_LOW_PRECISION},
                         adam=triton_cases["adam"], marks=marks["triton-cuda"])
    out = [cpu, triton_cpu, triton_cuda]
    for strategy in ("cublas", "fused"):
        lin = _grid(LINEAR_COMMON + LINEAR_CUDA)
        cro = _grid(CROSS_COMMON + CROSS_CUDA)
        out.append(Target("cuda", "cuda", strategy=strategy, fp32_tol=1e-4,
                          linear={F32: lin, F16: lin + LINEAR_LOW_PRECISION, BF16: lin + LINEAR_LOW_PRECISION},
                          cross={F32: cro, F16: cro + CROSS_LOW_PRECISION, BF16: cro + CROSS_LOW_PRECISION},
                          adam={F32: ADAM_COMMON + ADAM_CUDA}, marks=marks["cuda-cuda"]))
    return out


TARGETS = _targets()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _cases(op: str, targets=None) -> list:
    out = []
    for t in targets or TARGETS:
        for dtype, cases in getattr(t, op).items():
            for shape, density in cases:
                sid = "x".join(map(str, shape))
                out.append(pytest.param(t, dtype, shape, density, marks=t.marks,
                                        id=f"{t.id}-{_dtype_name(dtype)}-{sid}-d{density:g}"))
    return out


def linear_cases():
    """(target, dtype, (B, K, N), density) for every target."""
    return _cases("linear")


def cross_cases():
    """(target, dtype, (B, F, d, N), density) for every target."""
    return _cases("cross")


def adam_cases():
    """(target, dtype, (N, K), density) for every target (density is part of the Adam case lists)."""
    out = []
    for t in TARGETS:
        if t.strategy == "fused":
            continue  # the GEMM strategy does not touch the Adam kernel: one cuda target is enough
        for dtype, cases in t.adam.items():
            for n, k, density in cases:
                out.append(pytest.param(t, dtype, (n, k), density, marks=t.marks,
                                        id=f"{t.id}-{_dtype_name(dtype)}-{n}x{k}-d{density:g}"))
    return out


def cpu_tensor_backends(*backends: str) -> list:
    """pytest params of backends run on CPU tensors (default torch, cpu, triton), each with the
    skip of its CPU target (triton: only in the interpreter, i.e. not on a GPU machine)."""
    marks = {t.backend: t.marks for t in TARGETS if t.device == "cpu"}
    return [pytest.param(b, marks=marks.get(b, ()), id=b) for b in backends or ("torch", "cpu", "triton")]


def target_params(targets=None) -> list:
    """One param per target (each CUDA GEMM strategy its own), for tests that are not a matrix."""
    return [pytest.param(t, marks=t.marks, id=t.id) for t in targets or TARGETS]


def one_per_backend() -> list:
    """One param per (backend, device): the CUDA strategies collapsed into the default one."""
    return target_params([t for t in TARGETS if t.strategy in (None, "cublas")])


# ---- inputs -------------------------------------------------------------------------------------

def make_mask(n, k, density, device="cpu", seed=0):
    """(bool mask [n, k], its packed int32 form) on `device`; density 0 and 1 exactly, else random."""
    g = torch.Generator().manual_seed(seed)
    if density in (0.0, 1.0):
        m = torch.full((n, k), bool(density))
    else:
        m = torch.rand(n, k, generator=g) < density
    return m.to(device), nk.pack_mask(m).to(device)


def randn(*shape, scale=1.0, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def linear_inputs(b, k, n, density, dtype=torch.float32, device="cpu", seed=0):
    """x, w, bias, dy, bool mask, packed mask of one masked_linear case."""
    x = randn(b, k, dtype=dtype, device=device, seed=seed)
    w = randn(n, k, scale=k ** -0.5, dtype=dtype, device=device, seed=seed + 1)
    bias = randn(n, dtype=dtype, device=device, seed=seed + 2)
    dy = randn(b, n, dtype=dtype, device=device, seed=seed + 3)
    m, packed = make_mask(n, k, density, device, seed)
    return x, w, bias, dy, m, packed


def cross_inputs(b, f, d, n, density, dtype=torch.float32, device="cpu", seed=0):
    """emb, w, bias, dy, bool mask, packed mask of one cross_masked_linear case."""
    k = f * f + f * d
    emb = randn(b, f, d, scale=0.5, dtype=dtype, device=device, seed=seed)
    w = randn(n, k, scale=k ** -0.5, dtype=dtype, device=device, seed=seed + 1)
    bias = randn(n, dtype=dtype, device=device, seed=seed + 2)
    dy = randn(b, n, dtype=dtype, device=device, seed=seed + 3)
    m, packed = make_mask(n, k, density, device, seed)
    return emb, w, bias, dy, m, packed


# ---- comparisons ----------------------------------------------------------------------------------

TOL = {torch.float32: (2e-4, 2e-4), torch.float64: (1e-9, 1e-9), torch.float16: (1e-3, 1e-3),
       torch.bfloat16: (1e-2, 1e-2)}


def assert_close(actual, expected, name, rtol=None, atol_scale=None):
    """Compare with a tolerance relative to the magnitude of the expected tensor (per dtype)."""
    assert actual is not None, f"{name}: backend returned None"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    d_rtol, d_atol = TOL.get(expected.dtype, TOL[torch.float32])
    rtol = d_rtol if rtol is None else rtol
    atol_scale = d_atol if atol_scale is None else atol_scale
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol_scale * scale, msg=lambda m: f"{name}: {m}")


def assert_low_precision_close(actual, expected_lp, expected_fp32, name):
    """A low-precision kernel's error against the fp32 reference is at most twice PyTorch's own
    low-precision error (plus a small floor)."""
    own = (expected_lp.float() - expected_fp32).abs().max().item()
    err = (actual.float() - expected_fp32).abs().max().item()
    floor = 1e-2 * max(1.0, expected_fp32.abs().max().item())
    assert err <= 2 * own + floor, f"{name}: error {err:.3g} > 2 x torch's own {own:.3g} + {floor:.3g}"


def check_against_reference(name: str, got, ref_fn: Callable, args: Sequence, fp32_tol: Optional[float] = None):
    """`got` against ref_fn(*args) in got's dtype (fp32: within fp32_tol when given, else TOL);
    fp16/bf16: within twice the reference's own low-precision error against ref_fn on fp32
    copies of the inputs."""
    want = ref_fn(*args)
    if want.dtype == torch.float32 and fp32_tol is not None:
        assert_close(got, want, name, rtol=fp32_tol, atol_scale=fp32_tol)
        return
    if want.dtype in LOW_PRECISION:
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        if got.numel():
            assert_low_precision_close(got, want, ref_fn(*up), name)
    else:
        assert_close(got, want, name)


def assert_exact_zero_outside(dw, m, name="dW"):
    """The masked gradient scatter: exactly +0.0 where the bit is 0 (not -0.0, not tiny)."""
    off = dw[~m]
    assert bool((off == 0).all()) and not bool(torch.signbit(off).any()), f"{name} is not exactly +0 outside the mask"


# ---- the two layer ops: op(inp, weight, packed, bias), backward(dy, inp, weight, packed, needs) ----

GRAD_NAMES = {"masked_linear": ("dx", "dW", "db"), "cross_masked_linear": ("d(emb)", "dW", "db")}


def check_layer_op(target: Target, op: str, inputs, partial: bool = True):
    """A backend's <op>_forward (with and without bias) and <op>_backward (every gradient; and,
    when `partial`, each subset in NEEDS alone) against the reference; dW exactly +0 off the mask."""
    inp, w, bias, dy, m, packed = inputs
    be = impl(target.backend)
    fwd, bwd = getattr(be, f"{op}_forward"), getattr(be, f"{op}_backward")
    rfwd, rbwd = getattr(ref, f"{op}_forward"), getattr(ref, f"{op}_backward")
    names = GRAD_NAMES[op]
    with target.running():
        y, y0 = fwd(inp, w, packed, bias), fwd(inp, w, packed, None)
        grads = bwd(dy, inp, w, packed, True, True, True)
        parts = [(nd, bwd(dy, inp, w, packed, *nd)) for nd in NEEDS] if partial else []
    tol = target.fp32_tol
    check_against_reference("y", y, lambda i_, w_, b_: rfwd(i_, w_, packed, b_), (inp, w, bias), tol)
    check_against_reference("y (no bias)", y0, lambda i_, w_: rfwd(i_, w_, packed, None), (inp, w), tol)
    for i, (got, name) in enumerate(zip(grads, names)):
        check_against_reference(name, got, lambda d_, i_, w_: rbwd(d_, i_, w_, packed)[i], (dy, inp, w), tol)
    assert_exact_zero_outside(grads[1], m)
    # a gradient asked for alone is the one computed with all three; one not asked for is None
    for needs, part in parts:
        for got, full, need, name in zip(part, grads, needs, names):
            if need:
                assert_close(got, full, f"{name} alone")
            else:
                assert got is None, f"{name} was not asked for but was computed"


def check_needs(target: Target, op: str, inputs, needs):
    """<op>_backward asked for the subset `needs` computes exactly those, each as the reference."""
    inp, w, _, dy, _, packed = inputs
    got = getattr(impl(target.backend), f"{op}_backward")(dy, inp, w, packed, *needs)
    want = getattr(ref, f"{op}_backward")(dy, inp, w, packed)
    for g, r, need, name in zip(got, want, needs, GRAD_NAMES[op]):
        if need:
            assert_close(g, r, name)
        else:
            assert g is None, f"{name} was not asked for but was computed"


def layer_op_tests(op: str):
    """The two matrix tests of a layer op, for the op's test module to bind by name:

        test_kernels_match_reference, test_backward_respects_needs = layer_op_tests("masked_linear")

    test_kernels_match_reference: every target over its case list (check_layer_op; each gradient
    subset alone too, except in the slow Triton interpreter, where the second test covers them).
    test_backward_respects_needs: each subset in NEEDS on one shape, on every backend."""
    cases, inputs, needs_shape = {"masked_linear": (linear_cases, linear_inputs, (6, 45, 7)),
                                  "cross_masked_linear": (cross_cases, cross_inputs, (4, 3, 5, 6))}[op]

    @pytest.mark.parametrize("target,dtype,shape,density", cases())
    def test_kernels_match_reference(target, dtype, shape, density):
        check_layer_op(target, op, inputs(*shape, density, dtype, target.device), partial=not target.interpreted)

    @pytest.mark.parametrize("target", one_per_backend())
    @pytest.mark.parametrize("needs", NEEDS)
    def test_backward_respects_needs(target, needs):
        check_needs(target, op, inputs(*needs_shape, 0.5, torch.float32, target.device), needs)

    return test_kernels_match_reference, test_backward_respects_needs


def autograd_results(fn, inputs, weight):
    """(y, the gradient of every input) of (fn(*inputs) * weight).sum(), on fresh leaf copies."""
    leaves = [v.clone().requires_grad_(True) for v in inputs]
    y = fn(*leaves)
    (y * weight).sum().backward()
    return (y.detach(),) + tuple(leaf.grad for leaf in leaves)


# ---- the textbook Adam step (hand-written, independent of ncs_kernels.reference) -----------------

def textbook_adam(p, g, m_, v_, step, keep, lr, betas, eps, wd, decoupled):
    """One Adam (L2 decay) / AdamW (decoupled) step on one tensor, masked element-wise by `keep`
    (None: every element); returns the new (p, m, v)."""
    g = g.clone()
    if wd and not decoupled:
        g = g + wd * p
    m_new = betas[0] * m_ + (1 - betas[0]) * g
    v_new = betas[1] * v_ + (1 - betas[1]) * g * g
    upd = (m_new / (1 - betas[0] ** step)) / ((v_new / (1 - betas[1] ** step)).sqrt() + eps)
    p_new = p * (1 - lr * wd) if (wd and decoupled) else p.clone()
    p_new = p_new - lr * upd
    keep = torch.ones_like(p, dtype=torch.bool) if keep is None else keep
    return torch.where(keep, p_new, p), torch.where(keep, m_new, m_), torch.where(keep, v_new, v_)
