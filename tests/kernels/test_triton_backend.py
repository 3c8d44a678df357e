"""What is specific to the Triton backend: the split-batch weight gradient (its launch
configuration and bitwise reproducibility), the materialized-weight-mask mode
(NCS_TRITON_WEIGHT_MASK), and, on a GPU, fp16/bf16 within twice PyTorch's own error.

Without CUDA the kernels run on CPU tensors through the Triton interpreter (conftest sets
TRITON_INTERPRET=1); with CUDA they run on the GPU. The numerics of every op over the case
matrix (odd shapes, densities, every gradient, the masked Adam step) are in the per-op suites
(test_ops_*.py, test_optim*.py), targets triton-cpu and triton-cuda of _cases.py.
"""
import functools

import pytest
import torch

from _cases import (assert_close, assert_exact_zero_outside, cross_inputs, linear_inputs, make_mask, randn, ref,
                    triton_module, why_unavailable)

tb = triton_module()
_common = triton_module("_common")
DEVICE = "cpu" if why_unavailable("triton", "cpu") is None else "cuda"
_close = functools.partial(assert_close, rtol=1e-5, atol_scale=1e-5)  # fp32: the triton targets' tolerance


def _check_masked_linear(b, k, n, density, seed=0, splits=None):
    x, w, bias, dy, m, p = linear_inputs(b, k, n, density, device=DEVICE, seed=seed)
    _close(tb.masked_linear_forward(x, w, p, bias), ref.masked_linear_forward(x, w, p, bias), "y")
    got = tb.masked_linear_backward(dy, x, w, p, True, True, True, splits=splits)
    for g, e, name in zip(got, ref.masked_linear_backward(dy, x, w, p), ("dx", "dW", "db")):
        _close(g, e, name)
    assert_exact_zero_outside(got[1], m)
    return got


def _check_cross(b, f, d, n, density, seed=0, splits=None):
    emb, w, bias, dy, m, p = cross_inputs(b, f, d, n, density, device=DEVICE, seed=seed)
    _close(tb.cross_masked_linear_forward(emb, w, p, bias), ref.cross_masked_linear_forward(emb, w, p, bias), "y")
    got = tb.cross_masked_linear_backward(dy, emb, w, p, True, True, True, splits=splits)
    for g, e, name in zip(got, ref.cross_masked_linear_backward(dy, emb, w, p), ("d(emb)", "dW", "db")):
        _close(g, e, name)
    assert_exact_zero_outside(got[1], m)


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_dw_split_batch_is_deterministic(splits):
    """dW summed over batch splits equals the reference and is bitwise reproducible."""
    x, w, dy = (randn(*shape, device=DEVICE, seed=seed) for shape, seed in (((130, 45), 3), ((6, 45), 4), ((130, 6), 5)))
    m, p = make_mask(6, 45, 0.5, DEVICE, seed=3)
    cfg = _common.dw_config(130, 6, 45, torch.float32, 4, splits)
    assert cfg.splits == splits
    a = tb.masked_linear_backward(dy, x, w, p, False, True, False, splits=splits)[1]
    b = tb.masked_linear_backward(dy, x, w, p, False, True, False, splits=splits)[1]
    assert torch.equal(a, b)
    _close(a, ref.masked_linear_backward(dy, x, w, p)[1], "dW")
    assert_exact_zero_outside(a, m)


def test_cross_split_batch_dw():
    _check_cross(70, 3, 3, 5, 0.5, seed=9, splits=3)


def test_materialized_weight_mask_mode(monkeypatch):
    """NCS_TRITON_WEIGHT_MASK=materialize (W ⊙ M written once, unmasked GEMM) gives the same results."""
    monkeypatch.setenv("NCS_TRITON_WEIGHT_MASK", "materialize")
    _check_masked_linear(5, 70, 33, 0.5, seed=5)
    _check_cross(3, 3, 8, 5, 0.5, seed=6)
    w, (m, p) = randn(7, 45, device=DEVICE, seed=5), make_mask(7, 45, 0.5, DEVICE, seed=5)
    assert torch.equal(tb.masked_linear.apply_mask(w, p), ref.apply_mask(w, p))
    monkeypatch.setenv("NCS_TRITON_WEIGHT_MASK", "bogus")
    with pytest.raises(ValueError, match="NCS_TRITON_WEIGHT_MASK"):
        _check_masked_linear(1, 1, 1, 1.0)


# GPU only: half precision, bounded by twice PyTorch's own error against an fp64 reference

@pytest.mark.skipif(DEVICE != "cuda", reason="fp16/bf16 Triton kernels need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_twice_torch_error(dtype):
    g = torch.Generator().manual_seed(30)
    b, f, d, n = 256, 20, 8, 96
    width = f * f + f * d

    def _randn(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    emb, w, dy, bias = _randn(b, f, d), _randn(n, width) * 0.05, _randn(b, n), _randn(n)
    _, p = make_mask(n, width, 0.5, DEVICE, seed=30)

    def run(mod, dt):
        cast = [t.to(dt) for t in (emb, w, dy, bias)]
        y = mod.cross_masked_linear_forward(cast[0], cast[1], p, cast[3])
        de, dw, _ = mod.cross_masked_linear_backward(cast[2], cast[0], cast[1], p, True, True, False)
        return [t.double() for t in (y, de, dw)]

    exact = run(ref, torch.float64)
    torch_err = [(a - e).abs().max().item() for a, e in zip(run(ref, dtype), exact)]
    ours_err = [(a - e).abs().max().item() for a, e in zip(run(tb, dtype), exact)]
    for name, o, t in zip(("y", "demb", "dW"), ours_err, torch_err):
        assert o <= 2 * t + 1e-6, f"{name}: triton error {o} vs torch error {t}"
