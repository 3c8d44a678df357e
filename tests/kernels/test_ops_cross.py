"""cross_masked_linear and feature_cross on every backend against the reference, over each
backend's case list (tests/kernels/_cases.py), plus the public op's autograd path."""
import pytest
import torch

import ncs_kernels as nk

from _cases import (NEEDS, assert_close, assert_exact_zero_outside, check_against_reference, cross_cases, cross_inputs,
                    impl, make_mask, one_per_backend, randn, ref)


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


@pytest.mark.parametrize("target,dtype,shape,density", cross_cases())
def test_kernels_match_reference(target, dtype, shape, density):
    b, f, d, n = shape
    emb, w, bias, dy, m, packed = cross_inputs(b, f, d, n, density, dtype, target.device)
    be = impl(target.backend)
    with target.running():
        y = be.cross_masked_linear_forward(emb, w, packed, bias)
        y0 = be.cross_masked_linear_forward(emb, w, packed, None)
        grads = be.cross_masked_linear_backward(dy, emb, w, packed, True, True, True)
        partial = [] if target.interpreted else [(nd, be.cross_masked_linear_backward(dy, emb, w, packed, *nd))
                                                 for nd in NEEDS]
    check_against_reference("y", y, lambda e_, w_, b_: ref.cross_masked_linear_forward(e_, w_, packed, b_), (emb, w, bias))
    check_against_reference("y (no bias)", y0, lambda e_, w_: ref.cross_masked_linear_forward(e_, w_, packed, None),
                            (emb, w))
    for i, (got, name) in enumerate(zip(grads, ("d(emb)", "dW", "db"))):
        check_against_reference(name, got, lambda d_, e_, w_: ref.cross_masked_linear_backward(d_, e_, w_, packed)[i],
                                (dy, emb, w))
    assert_exact_zero_outside(grads[1], m)
    for needs, part in partial:
        for got, full, need, name in zip(part, grads, needs, ("d(emb)", "dW", "db")):
            if need:
                assert_close(got, full, f"{name} alone")
            else:
                assert got is None, f"{name} was not asked for but was computed"


@pytest.mark.parametrize("target", one_per_backend())
@pytest.mark.parametrize("needs", NEEDS)
def test_backward_respects_needs(target, needs):
    emb, w, bias, dy, m, packed = cross_inputs(4, 3, 5, 6, 0.5, torch.float32, target.device)
    got = impl(target.backend).cross_masked_linear_backward(dy, emb, w, packed, *needs)
    want = ref.cross_masked_linear_backward(dy, emb, w, packed)
    for g, r, need, name in zip(got, want, needs, ("d(emb)", "dW", "db")):
        if need:
            assert_close(g, r, name)
        else:
            assert g is None, f"{name} was not asked for but was computed"


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
        results = []
        for fused in (True, False):
            emb, w, bias = (v.clone().requires_grad_(True) for v in (emb0, w0, b0))
            if fused:
                y = nk.cross_masked_linear(emb, w, packed, bias, backend=backend)
            else:
                y = nk.masked_linear(nk.feature_cross(emb), w, packed, bias, backend="torch")
            (y * torch.linspace(-1, 1, n, device=device)).sum().backward()
            results.append((y.detach(), emb.grad, w.grad, bias.grad))
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
