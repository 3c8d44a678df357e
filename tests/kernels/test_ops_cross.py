"""cross_masked_linear and feature_cross on every backend against the reference."""
import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref

from conftest import backend_device_params
from _cases import CROSS_SHAPES, DENSITIES, LOW_PRECISION, assert_close, assert_low_precision_close, make_mask, randn

BACKEND_DEVICE = backend_device_params()


def _inputs(b, f, d, n, density, dtype, device, seed=0):
    k = f * f + f * d
    emb = randn(b, f, d, scale=0.5, dtype=dtype, device=device, seed=seed)
    w = randn(n, k, scale=k ** -0.5, dtype=dtype, device=device, seed=seed + 1)
    bias = randn(n, dtype=dtype, device=device, seed=seed + 2)
    dy = randn(b, n, dtype=dtype, device=device, seed=seed + 3)
    m, packed = make_mask(n, k, density, device, seed)
    return emb, w, bias, dy, m, packed


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


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("b,f,d,n", CROSS_SHAPES)
def test_kernels_match_reference(backend, device, b, f, d, n, density):
    emb, w, bias, dy, m, packed = _inputs(b, f, d, n, density, torch.float32, device)
    impl = nk._backends.impl(backend)
    assert_close(impl.cross_masked_linear_forward(emb, w, packed, bias),
                 ref.cross_masked_linear_forward(emb, w, packed, bias), "y")
    assert_close(impl.cross_masked_linear_forward(emb, w, packed, None),
                 ref.cross_masked_linear_forward(emb, w, packed, None), "y (no bias)")
    de, dw, db = impl.cross_masked_linear_backward(dy, emb, w, packed, True, True, True)
    rde, rdw, rdb = ref.cross_masked_linear_backward(dy, emb, w, packed)
    assert_close(de, rde, "d(emb)")
    assert_close(dw, rdw, "dW")
    assert_close(db, rdb, "db")
    assert bool((dw[~m] == 0).all()), "dW is not exactly 0 outside the mask"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_backward_respects_needs(backend, device, needs):
    emb, w, bias, dy, m, packed = _inputs(4, 3, 5, 6, 0.5, torch.float32, device)
    got = nk._backends.impl(backend).cross_masked_linear_backward(dy, emb, w, packed, *needs)
    want = ref.cross_masked_linear_backward(dy, emb, w, packed)
    for g, r, need, name in zip(got, want, needs, ("d(emb)", "dW", "db")):
        if need:
            assert_close(g, r, name)
        else:
            assert g is None, f"{name} was not asked for but was computed"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("ntasks", [1, 2, 3])
def test_public_op_equals_unfused_masked_linear(backend, device, ntasks):
    """cross_masked_linear(emb) == masked_linear(feature_cross(emb)), outputs and gradients."""
    b, f, d, n = 5, 4, 3, 11
    k = f * f + f * d
    emb0 = randn(b, f, d, scale=0.5, device=device)
    w0 = randn(n, k, scale=k ** -0.5, device=device, seed=1)
    b0 = randn(n, device=device, seed=2)
    for t in range(ntasks):
        _, packed = make_mask(n, k, [0.5, 0.2, 1.0][t], device, seed=20 + t)
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


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 kernels run on CUDA only")
def test_low_precision_cuda(backend, dtype):
    emb, w, bias, dy, m, packed = _inputs(65, 20, 64, 129, 0.5, dtype, "cuda")
    impl = nk._backends.impl(backend)
    f32 = [t.float() for t in (emb, w, bias, dy)]
    assert_low_precision_close(impl.cross_masked_linear_forward(emb, w, packed, bias),
                               ref.cross_masked_linear_forward(emb, w, packed, bias),
                               ref.cross_masked_linear_forward(f32[0], f32[1], packed, f32[2]), "y")
    got = impl.cross_masked_linear_backward(dy, emb, w, packed, True, True, True)
    lp = ref.cross_masked_linear_backward(dy, emb, w, packed)
    hi = ref.cross_masked_linear_backward(f32[3], f32[0], f32[1], packed)
    for g, l, h, name in zip(got, lp, hi, ("d(emb)", "dW", "db")):
        assert_low_precision_close(g, l, h, name)


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
