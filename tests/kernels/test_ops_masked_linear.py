"""masked_linear on every backend against the pure-PyTorch reference: output and every gradient,
over each backend's case list (tests/kernels/_cases.py), plus the public op's autograd path."""
import pytest
import torch

import ncs_kernels as nk

from _cases import (NEEDS, assert_close, assert_exact_zero_outside, check_against_reference, impl, linear_cases,
                    linear_inputs, make_mask, one_per_backend, randn, ref, resolve)


@pytest.mark.parametrize("target,dtype,shape,density", linear_cases())
def test_kernels_match_reference(target, dtype, shape, density):
    b, k, n = shape
    x, w, bias, dy, m, packed = linear_inputs(b, k, n, density, dtype, target.device)
    be = impl(target.backend)
    with target.running():
        y = be.masked_linear_forward(x, w, packed, bias)
        y0 = be.masked_linear_forward(x, w, packed, None)
        grads = be.masked_linear_backward(dy, x, w, packed, True, True, True)
        partial = [] if target.interpreted else [(nd, be.masked_linear_backward(dy, x, w, packed, *nd)) for nd in NEEDS]
    check_against_reference("y", y, lambda x_, w_, b_: ref.masked_linear_forward(x_, w_, packed, b_), (x, w, bias))
    check_against_reference("y (no bias)", y0, lambda x_, w_: ref.masked_linear_forward(x_, w_, packed, None), (x, w))
    for i, (got, name) in enumerate(zip(grads, ("dx", "dW", "db"))):
        check_against_reference(name, got, lambda d_, x_, w_: ref.masked_linear_backward(d_, x_, w_, packed)[i],
                                (dy, x, w))
    assert_exact_zero_outside(grads[1], m)
    # a gradient asked for alone is the one computed with all three; one not asked for is None
    for needs, part in partial:
        for got, full, need, name in zip(part, grads, needs, ("dx", "dW", "db")):
            if need:
                assert_close(got, full, f"{name} alone")
            else:
                assert got is None, f"{name} was not asked for but was computed"


@pytest.mark.parametrize("target", one_per_backend())
@pytest.mark.parametrize("needs", NEEDS)
def test_backward_respects_needs(target, needs):
    x, w, bias, dy, m, packed = linear_inputs(6, 45, 7, 0.5, torch.float32, target.device)
    dx, dw, db = impl(target.backend).masked_linear_backward(dy, x, w, packed, *needs)
    rdx, rdw, rdb = ref.masked_linear_backward(dy, x, w, packed)
    for got, want, need, name in ((dx, rdx, needs[0], "dx"), (dw, rdw, needs[1], "dW"), (db, rdb, needs[2], "db")):
        if need:
            assert_close(got, want, name)
        else:
            assert got is None, f"{name} was not asked for but was computed"


@pytest.mark.parametrize("target", one_per_backend())
@pytest.mark.parametrize("ntasks", [1, 2, 3])
def test_public_op_autograd_per_task(target, ntasks):
    """Through nk.masked_linear and autograd, with one mask per task; grads vs the reference."""
    device = target.device
    b, k, n = 9, 77, 13
    x0 = randn(b, k, device=device)
    w0 = randn(n, k, scale=k ** -0.5, device=device, seed=1)
    b0 = randn(n, device=device, seed=2)
    for t in range(ntasks):
        m, packed = make_mask(n, k, [0.3, 0.7, 1.0][t], device, seed=10 + t)
        grads = []
        for be in (target.backend, "torch"):
            x, w, bias = (v.clone().requires_grad_(True) for v in (x0, w0, b0))
            y = nk.masked_linear(x, w, packed, bias, backend=be)
            (y * torch.arange(n, device=device)).sum().backward()
            grads.append((y.detach(), x.grad, w.grad, bias.grad))
        for got, want, name in zip(grads[0], grads[1], ("y", "dx", "dW", "db")):
            assert_close(got, want, f"task {t} {name}")
        assert_exact_zero_outside(grads[0][2], m)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    x = randn(4, 37, dtype=torch.float64).requires_grad_(True)
    w = randn(5, 37, dtype=torch.float64, seed=1).requires_grad_(True)
    bias = randn(5, dtype=torch.float64, seed=2).requires_grad_(True)
    _, packed = make_mask(5, 37, 0.5)
    assert torch.autograd.gradcheck(lambda a, b_, c: nk.masked_linear(a, b_, packed, c, backend=backend), (x, w, bias))


def test_auto_backend_on_cpu_is_native_when_built():
    x = torch.randn(2, 3)
    assert resolve("auto", x) == ("cpu" if "cpu" in nk.backends() else "torch")
    with nk.use_backend("torch"):
        assert resolve("auto", x) == "torch"
    assert resolve("torch", x) == "torch"


def test_compile_fullgraph_cpu():
    """A model using the op compiles with torch.compile(fullgraph=True) on CPU (fake impls registered)."""
    layer = nk.MaskedLinear(40, 6, tasks=("ctr", "cvr"))
    layer.set_mask("cvr", torch.rand(6, 40) < 0.5)
    x = torch.randn(5, 40, requires_grad=True)

    def f(x):
        return torch.relu(layer(x, task="cvr")).sum()

    compiled = torch.compile(f, fullgraph=True)  # inductor
    got = compiled(x)
    got.backward()
    gx, gw = x.grad.clone(), layer.weight.grad.clone()
    x.grad = None
    layer.weight.grad = None
    want = f(x)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, layer.weight.grad)
