"""masked_linear on every backend against the pure-PyTorch reference: output and every gradient,
over each backend's case list (tests/kernels/_cases.py), plus the public op's autograd path."""
import pytest
import torch

import ncs_kernels as nk

from _cases import (assert_close, assert_exact_zero_outside, autograd_results, layer_op_tests, make_mask,
                    one_per_backend, randn, resolve)


# every backend over its case list (_cases.py), and each gradient subset
test_kernels_match_reference, test_backward_respects_needs = layer_op_tests("masked_linear")


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
        grads = [autograd_results(lambda x, w, bias: nk.masked_linear(x, w, packed, bias, backend=be), (x0, w0, b0),
                                  torch.arange(n, device=device)) for be in (target.backend, "torch")]
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
