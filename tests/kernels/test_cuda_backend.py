"""The `cuda` backend (csrc/cuda_backend.cpp + csrc/cuda/*.cu, via ncs_kernels._C) against
ncs_kernels.reference, on a CUDA device only (the whole file skips cleanly without one).

Every function in fp32 / fp16 / bf16, odd shapes (B = 1, sizes off every tile and word
boundary, K = 1680), densities 0 / 1 / random, both GEMM strategies ("cublas" and "fused"),
exact zeros of dW where the bit is 0, split-K shapes (few output tiles, a long batch), and the
masked Adam step. fp32 is compared with the fp32 reference (TF32 off); fp16 / bf16 must be within
twice PyTorch's own low-precision error against the fp32 reference.
"""
from __future__ import annotations

import os

import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import _backends
from ncs_kernels import reference as ref

from _cases import assert_low_precision_close

_WHY = _backends.why_unavailable("cuda", "cuda")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cuda backend unavailable: {_WHY}")

if _WHY is None:
    from ncs_kernels.backends import cuda as be

    _C = _backends.native()

DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
STRATEGIES = ["cublas", "fused"]
# (B, K, N): B = 1; K, N off the 32-bit word and the 128 x 64 x 32 tiles; the paper's K = 1680;
# several M and N tiles
LINEAR_SHAPES = [(1, 1, 1), (1, 33, 5), (7, 31, 3), (5, 70, 33), (3, 1680, 9), (130, 100, 65), (257, 1680, 130)]
# (B, K, N) with few output tiles and a long batch: the fused dW splits the batch (split-K)
SPLIT_SHAPES = [(2048, 100, 40), (4096, 1680, 512)]
# (B, F, d, N)
CROSS_SHAPES = [(1, 1, 1, 1), (3, 2, 3, 5), (5, 3, 8, 7), (2, 20, 3, 9), (1, 20, 64, 3), (130, 20, 64, 70)]
DENSITIES = [0.0, 1.0, 0.5]


@pytest.fixture(autouse=True)
def _no_tf32():
    # the fp32 reference must be true fp32 (cuBLAS TF32 would make it the less accurate one)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.fixture(params=STRATEGIES)
def strategy(request):
    want = request.param
    setter = getattr(_C, "set_cuda_gemm_strategy", None)
    if setter is None:
        # without the binding only the process-wide choice (NCS_CUDA_GEMM, default cublas) runs
        current = os.environ.get("NCS_CUDA_GEMM") or "cublas"
        if want != current:
            pytest.skip(f"ncs_kernels._C does not bind set_cuda_gemm_strategy; run with NCS_CUDA_GEMM={want}")
        yield want
        return
    prev = _C.cuda_gemm_strategy()
    setter(want)
    try:
        yield want
    finally:
        setter(prev)


def _mask(n, k, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    if density in (0.0, 1.0):
        m = torch.full((n, k), bool(density))
    else:
        m = torch.rand(n, k, generator=g) < density
    return m.to(DEV), nk.pack_mask(m).to(DEV)


def _randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEV, dtype=dtype)


def _check(name, got, dtype, ref_fn, args32):
    """got (in dtype) against ref_fn on fp32 inputs and, for 16-bit, ref_fn on dtype inputs."""
    exp32 = ref_fn(*args32)
    if dtype == torch.float32:
        assert got.dtype == torch.float32, name
        scale = max(1.0, exp32.abs().max().item()) if exp32.numel() else 1.0
        torch.testing.assert_close(got, exp32, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")
    else:
        assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
        args_lp = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args32]
        exp_lp = ref_fn(*args_lp)
        if got.numel():
            assert_low_precision_close(got, exp_lp, exp32, name)


# ---- strategy switch ------------------------------------------------------------------------------

def test_strategy_switch_round_trips_and_rejects_bad_names():
    if not hasattr(_C, "set_cuda_gemm_strategy"):
        pytest.skip("ncs_kernels._C does not bind set_cuda_gemm_strategy / cuda_gemm_strategy")
    prev = _C.cuda_gemm_strategy()
    assert prev in STRATEGIES
    try:
        for s in STRATEGIES:
            _C.set_cuda_gemm_strategy(s)
            assert _C.cuda_gemm_strategy() == s
        with pytest.raises(RuntimeError, match="cublas"):
            _C.set_cuda_gemm_strategy("cutlass")
    finally:
        _C.set_cuda_gemm_strategy(prev)


# ---- masks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 31, 32, 33, 1680])
def test_apply_mask_and_mask_inplace_exact(dtype, k):
    w = _randn(7, k, dtype=dtype, seed=k)
    w[0, 0] = float("nan")  # masking is a select: NaN/Inf under a 0 bit become exactly +0.0
    w[-1, -1] = float("inf")
    m, _ = _mask(7, k, 0.5, seed=k)
    m[0, 0] = False
    m[-1, -1] = False
    packed = nk.pack_mask(m)
    expect = ref.apply_mask(w, packed)
    got = _C.apply_mask_cuda(w, packed)
    assert got.dtype == dtype and got.shape == w.shape
    assert torch.equal(got, expect)
    assert not torch.signbit(got[~m]).any()
    t = w.clone()
    _C.mask_inplace_cuda(t, packed)
    assert torch.equal(t, expect)


# ---- masked_linear ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_masked_linear(shape, density, dtype, strategy):
    b, k, n = shape
    x, w = _randn(b, k, seed=1), _randn(n, k, seed=2, scale=k ** -0.5)
    bias, dy = _randn(n, seed=3), _randn(b, n, seed=4)
    m, packed = _mask(n, k, density, seed=5)
    lp = lambda t: t.to(dtype)  # noqa: E731

    y = be.masked_linear_forward(lp(x), lp(w), packed, lp(bias))
    _check("y", y, dtype, lambda x_, w_, b_: ref.masked_linear_forward(x_, w_, packed, b_), [x, w, bias])
    y0 = be.masked_linear_forward(lp(x), lp(w), packed, None)
    _check("y (no bias)", y0, dtype, lambda x_, w_: ref.masked_linear_forward(x_, w_, packed), [x, w])

    dx, dw, db = be.masked_linear_backward(lp(dy), lp(x), lp(w), packed, True, True, True)
    _check("dx", dx, dtype, lambda d_, x_, w_: ref.masked_linear_backward(d_, x_, w_, packed)[0], [dy, x, w])
    _check("dW", dw, dtype, lambda d_, x_, w_: ref.masked_linear_backward(d_, x_, w_, packed)[1], [dy, x, w])
    _check("db", db, dtype, lambda d_: d_.sum(0), [dy])
    assert (dw[~m] == 0).all() and not torch.signbit(dw[~m]).any(), "dW must be exactly +0 where the bit is 0"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_masked_linear_weight_grad_split_k(shape, dtype, strategy):
    b, k, n = shape
    x, w, dy = _randn(b, k, seed=11), _randn(n, k, seed=12), _randn(b, n, seed=13)
    m, packed = _mask(n, k, 0.3, seed=14)
    _, dw, _ = be.masked_linear_backward(dy.to(dtype), x.to(dtype), w.to(dtype), packed, False, True, False)
    _check("dW", dw, dtype, lambda d_, x_: ref.apply_mask(d_.t() @ x_, packed), [dy, x])
    assert (dw[~m] == 0).all()


@pytest.fixture
def deterministic():
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: cuBLAS (the reference, and the "cublas" strategy) would otherwise insist on
    # CUBLAS_WORKSPACE_CONFIG; the flag the backend reads is set either way
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_split_k_dw_is_bitwise_reproducible_under_deterministic_algorithms(dtype, strategy, deterministic):
    # the fused dW splits the batch and adds the partials with atomicAdd (run-to-run order);
    # under torch.use_deterministic_algorithms(True) it must not split: identical bits each call
    b, k, n = SPLIT_SHAPES[-1]
    x, w, dy = _randn(b, k, seed=41), _randn(n, k, seed=42), _randn(b, n, seed=43)
    m, packed = _mask(n, k, 0.5, seed=44)
    runs = [be.masked_linear_backward(dy.to(dtype), x.to(dtype), w.to(dtype), packed, False, True, False)[1]
            for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:]), "dW differs between identical calls"
    _check("dW", runs[0], dtype, lambda d_, x_: ref.apply_mask(d_.t() @ x_, packed), [dy, x])
    f, d, nc = 20, 64, 512
    emb, dyc = _randn(b, f, d, seed=45, scale=0.3), _randn(b, nc, seed=46)
    wc = _randn(nc, f * f + f * d, seed=47)
    _, packed_c = _mask(nc, f * f + f * d, 0.5, seed=48)
    cross = [be.cross_masked_linear_backward(dyc.to(dtype), emb.to(dtype), wc.to(dtype), packed_c, False, True, False)[1]
             for _ in range(3)]
    assert all(torch.equal(cross[0], r) for r in cross[1:]), "cross dW differs between identical calls"


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True)])
def test_masked_linear_backward_returns_only_what_was_asked(need, strategy):
    x, w, dy = _randn(5, 40), _randn(6, 40), _randn(5, 6)
    _, packed = _mask(6, 40, 0.5)
    out = be.masked_linear_backward(dy, x, w, packed, *need)
    assert [t is not None for t in out] == list(need)


# ---- cross_masked_linear -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", CROSS_SHAPES)
def test_cross_masked_linear(shape, density, dtype, strategy):
    b, f, d, n = shape
    k = f * f + f * d
    emb = _randn(b, f, d, seed=21, scale=0.5)
    w, bias, dy = _randn(n, k, seed=22, scale=k ** -0.5), _randn(n, seed=23), _randn(b, n, seed=24)
    m, packed = _mask(n, k, density, seed=25)
    lp = lambda t: t.to(dtype)  # noqa: E731

    y = be.cross_masked_linear_forward(lp(emb), lp(w), packed, lp(bias))
    _check("y", y, dtype, lambda e_, w_, b_: ref.cross_masked_linear_forward(e_, w_, packed, b_), [emb, w, bias])
    demb, dw, db = be.cross_masked_linear_backward(lp(dy), lp(emb), lp(w), packed, True, True, True)
    bwd = lambda i: (lambda d_, e_, w_: ref.cross_masked_linear_backward(d_, e_, w_, packed)[i])  # noqa: E731
    _check("demb", demb, dtype, bwd(0), [dy, emb, w])
    _check("dW", dw, dtype, bwd(1), [dy, emb, w])
    _check("db", db, dtype, lambda d_: d_.sum(0), [dy])
    assert demb.shape == emb.shape
    assert (dw[~m] == 0).all() and not torch.signbit(dw[~m]).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_weight_grad_split_k_paper_shape(dtype, strategy):
    b, f, d, n = 2048, 20, 64, 512  # 1680 -> 512, few output tiles: split over the batch
    k = f * f + f * d
    emb, dy = _randn(b, f, d, seed=31, scale=0.3), _randn(b, n, seed=32)
    w = _randn(n, k, seed=33, scale=k ** -0.5)
    m, packed = _mask(n, k, 0.4, seed=34)
    demb, dw, _ = be.cross_masked_linear_backward(dy.to(dtype), emb.to(dtype), w.to(dtype), packed, True, True, False)
    bwd = lambda i: (lambda d_, e_, w_: ref.cross_masked_linear_backward(d_, e_, w_, packed)[i])  # noqa: E731
    _check("dW", dw, dtype, bwd(1), [dy, emb, w])
    _check("demb", demb, dtype, bwd(0), [dy, emb, w])
    assert (dw[~m] == 0).all()


# ---- masked Adam ----------------------------------------------------------------------------------

@pytest.mark.parametrize("decoupled,weight_decay", [(False, 0.0), (False, 0.01), (True, 0.01)])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (64, 1680), (1, 1000)])
def test_masked_adam_fp32(shape, masked, decoupled, weight_decay):
    n, k = shape
    p, g = _randn(n, k, seed=41), _randn(n, k, seed=42)
    m_state, v_state = _randn(n, k, seed=43, scale=0.1), _randn(n, k, seed=44).abs() * 0.01
    mask, packed = _mask(n, k, 0.5, seed=45)
    packed = packed if masked else None
    tensors = [p.clone(), g, m_state.clone(), v_state.clone()]
    expect = [p.clone(), g, m_state.clone(), v_state.clone()]
    for step in (1, 2, 7):
        args = (packed, step, 1e-3, 0.9, 0.999, 1e-8, weight_decay, decoupled)
        be.masked_adam_step_(*tensors, *args)
        ref.masked_adam_step_(*expect, *args)
    for name, got, exp in zip(("param", "exp_avg", "exp_avg_sq"), (tensors[0], tensors[2], tensors[3]),
                              (expect[0], expect[2], expect[3])):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7, msg=lambda s: f"{name}: {s}")
    if masked:  # strict: untouched where the bit is 0, bit for bit
        assert torch.equal(tensors[0][~mask], p[~mask])
        assert torch.equal(tensors[2][~mask], m_state[~mask])
        assert torch.equal(tensors[3][~mask], v_state[~mask])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_adam_low_precision(dtype):
    n, k = 9, 70
    p, g = _randn(n, k, seed=51, dtype=dtype), _randn(n, k, seed=52, dtype=dtype)
    m_state = _randn(n, k, seed=53, scale=0.1, dtype=dtype)
    v_state = (_randn(n, k, seed=54).abs() * 0.01).to(dtype)
    mask, packed = _mask(n, k, 0.5, seed=55)
    got = [p.clone(), g, m_state.clone(), v_state.clone()]
    exp32 = [t.float().clone() for t in (p, g, m_state, v_state)]
    args = (packed, 3, 1e-2, 0.9, 0.999, 1e-8, 0.01, True)
    be.masked_adam_step_(*got, *args)
    ref.masked_adam_step_(*exp32, *args)
    for name, a, e in (("param", got[0], exp32[0]), ("exp_avg", got[2], exp32[2]), ("exp_avg_sq", got[3], exp32[3])):
        assert a.dtype == dtype
        # computed in fp32, rounded once to the state dtype
        torch.testing.assert_close(a.float(), e.to(dtype).float(), rtol=1e-2, atol=1e-3, msg=lambda s: f"{name}: {s}")
    assert torch.equal(got[0][~mask], p[~mask])
    assert torch.equal(got[2][~mask], m_state[~mask])
    assert torch.equal(got[3][~mask], v_state[~mask])
