"""What is specific to the `cuda` backend (csrc/cuda_backend.cpp + csrc/cuda/*.cu, via
ncs_kernels._C), on a CUDA device only (the whole file skips cleanly without one): the run-time
GEMM strategy switch, the split-K weight gradients (few output tiles, a long batch) under both
strategies, and their bitwise reproducibility under torch.use_deterministic_algorithms.

Its numerics over the case matrix (fp32 / fp16 / bf16, odd shapes, K = 1680, densities 0 / 1 /
random, both strategies, every gradient, the masked Adam step) are in the per-op suites
(test_ops_*.py, test_optim*.py): the targets cuda-cuda-cublas and cuda-cuda-fused of _cases.py.
"""
from __future__ import annotations

import pytest
import torch

from _cases import TARGETS, check_against_reference, impl, make_mask, native, randn, ref, why_unavailable

_WHY = why_unavailable("cuda", "cuda")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cuda backend unavailable: {_WHY}")

DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
STRATEGIES = [t.strategy for t in TARGETS if t.backend == "cuda"]
# (B, K, N) with few output tiles and a long batch: the fused dW splits the batch (split-K)
SPLIT_SHAPES = [(2048, 100, 40), (4096, 1680, 512)]


def _be():
    return impl("cuda")


@pytest.fixture(params=STRATEGIES)
def strategy(request):
    target = next(t for t in TARGETS if t.backend == "cuda" and t.strategy == request.param)
    with target.running():
        yield request.param


def _lp(*tensors, dtype):
    return [t.to(dtype) for t in tensors]


def test_strategy_switch_round_trips_and_rejects_bad_names():
    ext = native()
    prev = ext.cuda_gemm_strategy()
    assert prev in STRATEGIES
    try:
        for s in STRATEGIES:
            ext.set_cuda_gemm_strategy(s)
            assert ext.cuda_gemm_strategy() == s
        with pytest.raises(RuntimeError, match="cublas"):
            ext.set_cuda_gemm_strategy("cutlass")
    finally:
        ext.set_cuda_gemm_strategy(prev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_masked_linear_weight_grad_split_k(shape, dtype, strategy):
    b, k, n = shape
    x, w, dy = randn(b, k, seed=11, device=DEV), randn(n, k, seed=12, device=DEV), randn(b, n, seed=13, device=DEV)
    m, packed = make_mask(n, k, 0.3, DEV, seed=14)
    _, dw, _ = _be().masked_linear_backward(*_lp(dy, x, w, dtype=dtype), packed, False, True, False)
    check_against_reference("dW", dw, lambda d_, x_: ref.apply_mask(d_.t() @ x_, packed), _lp(dy, x, dtype=dtype))
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
    be = _be()
    b, k, n = SPLIT_SHAPES[-1]
    x, w, dy = randn(b, k, seed=41, device=DEV), randn(n, k, seed=42, device=DEV), randn(b, n, seed=43, device=DEV)
    m, packed = make_mask(n, k, 0.5, DEV, seed=44)
    runs = [be.masked_linear_backward(*_lp(dy, x, w, dtype=dtype), packed, False, True, False)[1] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:]), "dW differs between identical calls"
    check_against_reference("dW", runs[0], lambda d_, x_: ref.apply_mask(d_.t() @ x_, packed), _lp(dy, x, dtype=dtype))
    f, d, nc = 20, 64, 512
    emb, dyc = randn(b, f, d, seed=45, scale=0.3, device=DEV), randn(b, nc, seed=46, device=DEV)
    wc = randn(nc, f * f + f * d, seed=47, device=DEV)
    _, packed_c = make_mask(nc, f * f + f * d, 0.5, DEV, seed=48)
    cross = [be.cross_masked_linear_backward(*_lp(dyc, emb, wc, dtype=dtype), packed_c, False, True, False)[1]
             for _ in range(3)]
    assert all(torch.equal(cross[0], r) for r in cross[1:]), "cross dW differs between identical calls"


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_weight_grad_split_k_paper_shape(dtype, strategy):
    b, f, d, n = 2048, 20, 64, 512  # 1680 -> 512, few output tiles: split over the batch
    k = f * f + f * d
    emb, dy = randn(b, f, d, seed=31, scale=0.3, device=DEV), randn(b, n, seed=32, device=DEV)
    w = randn(n, k, seed=33, scale=k ** -0.5, device=DEV)
    m, packed = make_mask(n, k, 0.4, DEV, seed=34)
    demb, dw, _ = _be().cross_masked_linear_backward(*_lp(dy, emb, w, dtype=dtype), packed, True, True, False)
    bwd = lambda i: (lambda d_, e_, w_: ref.cross_masked_linear_backward(d_, e_, w_, packed)[i])  # noqa: E731
    check_against_reference("dW", dw, bwd(1), _lp(dy, emb, w, dtype=dtype))
    check_against_reference("demb", demb, bwd(0), _lp(dy, emb, w, dtype=dtype))
    assert (dw[~m] == 0).all()
