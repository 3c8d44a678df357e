"""cross_masked_linear and feature_cross on every backend against the reference, over each
backend's case list (tests/kernels/_cases.py), plus the public op's autograd path."""
import pytest
import torch

import ncs_kernels as nk

from _cases import (assert_close, assert_exact_zero_outside, autograd_results, layer_op_tests, make_mask,
                    one_per_backend, randn, ref)


def test_feature_cross_layout():
    emb = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    z = nk.feature_cross(emb)
    assert z.shape == (2, 3 * 3 + 3 * 2)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert z[b, i * 3 + j] == emb[b, i] @ emb[b, j]
        assert torch.equal(z[b, 9:], emb[b].reshape(-1))
    assert nk.cross_width(20, 64) == 1680


def test_feature_cross_backward_matches_autograd():
    emb = randn(3, 5, 4, dtype=torch.float64).requires_grad_(True)
    dz = randn(3, 25 + 20, dtype=torch.float64, seed=3)
    (nk.feature_cross(emb) * dz).sum().backward()
    torch.testing.assert_close(ref.feature_cross_backward(dz, emb.detach()), emb.grad)


# every backend over its case list (_cases.py), and each gradient subset
test_kernels_match_reference, test_backward_respects_needs = layer_op_tests("cross_masked_linear")


@pytest.mark.parametrize("target", one_per_backend())
@pytest.mark.parametrize("ntasks", [1, 2, 3])
def test_public_op_equals_unfused_masked_linear(target, ntasks):
    """cross_masked_linear(emb) == masked_linear(feature_cross(emb)), outputs and gradients."""
    backend, device = target.backend, target.device
    b, f, d, n = 5, 4, 3, 11
    k = f * f + f * d
    emb0 = randn(b, f, d, scale=0.5, device=device)
    w0 = randn(n, k, scale=k ** -0.5, device=device, seed=1)
    b0 = randn(n, device=device, seed=2)
    for t in range(ntasks):
        m, packed = make_mask(n, k, [0.5, 0.2, 1.0][t], device, seed=20 + t)
        weight = torch.linspace(-1, 1, n, device=device)
        results = [autograd_results(lambda e, w, bias: nk.cross_masked_linear(e, w, packed, bias, backend=backend),
                                    (emb0, w0, b0), weight),
                   autograd_results(lambda e, w, bias: nk.masked_linear(nk.feature_cross(e), w, packed, bias,
                                                                        backend="torch"), (emb0, w0, b0), weight)]
        for got, want, name in zip(results[0], results[1], ("y", "d(emb)", "dW", "db")):
            assert_close(got, want, f"task {t} {name}")
        assert_exact_zero_outside(results[0][2], m)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    emb = randn(3, 3, 2, dtype=torch.float64).requires_grad_(True)
    k = 3 * 3 + 3 * 2
    w = randn(4, k, dtype=torch.float64, seed=1).requires_grad_(True)
    bias = randn(4, dtype=torch.float64, seed=2).requires_grad_(True)
    _, packed = make_mask(4, k, 0.5)
    assert torch.autograd.gradcheck(lambda e, a, c: nk.cross_masked_linear(e, a, packed, c, backend=backend), (emb, w, bias))


def test_cross_layer_matches_masked_linear_state():
    """A MaskedLinear of width F*F + F*d and a CrossMaskedLinear load each other's state and give
    identical outputs and gradients."""
    f, d, n = 4, 3, 7
    cross = nk.CrossMaskedLinear(f, d, n, tasks=("ctr", "cvr"))
    cross.set_mask("cvr", torch.rand(n, f * f + f * d) < 0.4)
    lin = nk.MaskedLinear(f * f + f * d, n, tasks=("ctr", "cvr"))
    lin.load_state_dict(cross.state_dict())
    back = nk.CrossMaskedLinear(f, d, n, tasks=("ctr", "cvr"))
    back.load_state_dict(lin.state_dict())
    emb = torch.randn(5, f, d)
    for task in ("ctr", "cvr"):
        outs = []
        for layer, fused in ((cross, True), (lin, False), (back, True)):
            layer.zero_grad()
            e = emb.clone().requires_grad_(True)
            y = layer(e, task=task) if fused else layer(nk.feature_cross(e), task=task)
            y.square().sum().backward()
            outs.append((y.detach(), e.grad, layer.weight.grad, layer.bias.grad))
        for other in outs[1:]:
            for a, b_, name in zip(outs[0], other, ("y", "d(emb)", "dW", "db")):
                torch.testing.assert_close(a, b_, msg=lambda m: f"{task} {name}: {m}")


def test_compile_fullgraph_cross_layer_cpu():
    layer = nk.CrossMaskedLinear(3, 4, 5)
    emb = torch.randn(6, 3, 4)

    def f(e):
        return layer(e, task="ctr").relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    got, want = compiled(e1), f(e2)
    torch.testing.assert_close(got, want)
    got.backward()  # through the registered backward custom op
    want.backward()
    torch.testing.assert_close(e1.grad, e2.grad)
