"""masked_linear on every backend against the pure-PyTorch reference: output and every gradient."""
import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref

from conftest import backend_device_params
from _cases import DENSITIES, LINEAR_SHAPES, LOW_PRECISION, assert_close, assert_low_precision_close, make_mask, randn

BACKEND_DEVICE = backend_device_params()


def _inputs(b, k, n, density, dtype, device, seed=0):
    x = randn(b, k, dtype=dtype, device=device, seed=seed)
    w = randn(n, k, scale=k ** -0.5, dtype=dtype, device=device, seed=seed + 1)
    bias = randn(n, dtype=dtype, device=device, seed=seed + 2)
    dy = randn(b, n, dtype=dtype, device=device, seed=seed + 3)
    m, packed = make_mask(n, k, density, device, seed)
    return x, w, bias, dy, m, packed


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("b,k,n", LINEAR_SHAPES)
def test_kernels_match_reference(backend, device, b, k, n, density):
    x, w, bias, dy, m, packed = _inputs(b, k, n, density, torch.float32, device)
    impl = nk._backends.impl(backend)
    assert_close(impl.masked_linear_forward(x, w, packed, bias), ref.masked_linear_forward(x, w, packed, bias), "y")
    assert_close(impl.masked_linear_forward(x, w, packed, None), ref.masked_linear_forward(x, w, packed, None), "y (no bias)")
    dx, dw, db = impl.masked_linear_backward(dy, x, w, packed, True, True, True)
    rdx, rdw, rdb = ref.masked_linear_backward(dy, x, w, packed)
    assert_close(dx, rdx, "dx")
    assert_close(dw, rdw, "dW")
    assert_close(db, rdb, "db")
    # masked gradient scatter: exactly zero where the bit is 0
    assert bool((dw[~m] == 0).all()), "dW is not exactly 0 outside the mask"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)])
def test_backward_respects_needs(backend, device, needs):
    x, w, bias, dy, m, packed = _inputs(6, 45, 7, 0.5, torch.float32, device)
    dx, dw, db = nk._backends.impl(backend).masked_linear_backward(dy, x, w, packed, *needs)
    rdx, rdw, rdb = ref.masked_linear_backward(dy, x, w, packed)
    for got, want, need, name in ((dx, rdx, needs[0], "dx"), (dw, rdw, needs[1], "dW"), (db, rdb, needs[2], "db")):
        if need:
            assert_close(got, want, name)
        else:
            assert got is None, f"{name} was not asked for but was computed"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("ntasks", [1, 2, 3])
def test_public_op_autograd_per_task(backend, device, ntasks):
    """Through nk.masked_linear and autograd, with one mask per task; grads vs the reference."""
    b, k, n = 9, 77, 13
    x0 = randn(b, k, device=device)
    w0 = randn(n, k, scale=k ** -0.5, device=device, seed=1)
    b0 = randn(n, device=device, seed=2)
    for t in range(ntasks):
        _, packed = make_mask(n, k, [0.3, 0.7, 1.0][t], device, seed=10 + t)
        grads = []
        for be in (backend, "torch"):
            x, w, bias = (v.clone().requires_grad_(True) for v in (x0, w0, b0))
            y = nk.masked_linear(x, w, packed, bias, backend=be)
            (y * torch.arange(n, device=device)).sum().backward()
            grads.append((y.detach(), x.grad, w.grad, bias.grad))
        for got, want, name in zip(grads[0], grads[1], ("y", "dx", "dW", "db")):
            assert_close(got, want, f"task {t} {name}")


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 kernels run on CUDA only")
def test_low_precision_cuda(backend, dtype):
    x, w, bias, dy, m, packed = _inputs(67, 1680, 129, 0.5, dtype, "cuda")
    impl = nk._backends.impl(backend)
    f32 = [t.float() for t in (x, w, bias, dy)]
    assert_low_precision_close(impl.masked_linear_forward(x, w, packed, bias),
                               ref.masked_linear_forward(x, w, packed, bias),
                               ref.masked_linear_forward(f32[0], f32[1], packed, f32[2]), "y")
    got = impl.masked_linear_backward(dy, x, w, packed, True, True, True)
    lp = ref.masked_linear_backward(dy, x, w, packed)
    hi = ref.masked_linear_backward(f32[3], f32[0], f32[1], packed)
    for g, l, h, name in zip(got, lp, hi, ("dx", "dW", "db")):
        assert_low_precision_close(g, l, h, name)
    assert bool((got[1][~m] == 0).all())


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    x = randn(4, 37, dtype=torch.float64).requires_grad_(True)
    w = randn(5, 37, dtype=torch.float64, seed=1).requires_grad_(True)
    bias = randn(5, dtype=torch.float64, seed=2).requires_grad_(True)
    _, packed = make_mask(5, 37, 0.5)
    assert torch.autograd.gradcheck(lambda a, b_, c: nk.masked_linear(a, b_, packed, c, backend=backend), (x, w, bias))


def test_auto_backend_on_cpu_is_native_when_built():
    x = torch.randn(2, 3)
    assert nk._backends.resolve("auto", x) == ("cpu" if "cpu" in nk.backends() else "torch")
    with nk.use_backend("torch"):
        assert nk._backends.resolve("auto", x) == "torch"
    assert nk._backends.resolve("torch", x) == "torch"


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
