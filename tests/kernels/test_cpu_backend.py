"""The `cpu` backend (C++ kernels, ncs_kernels._C) against ncs_kernels.reference.

CPU-specific: odd shapes around the 32-bit word boundary, fp32 and fp64, densities 0 / 1 /
random, every gradient, exact zeros of dW where the bit is 0, gradcheck in fp64 through the
public ops, and several masked Adam steps alternating two tasks' masks.
"""
import pytest
import torch

import ncs_kernels as nk
from ncs_kernels import reference as ref

pytestmark = pytest.mark.skipif(
    "cpu" not in nk.backends(), reason=f"ncs_kernels._C is not built: {nk.native_error()}"
)

if "cpu" in nk.backends():
    from ncs_kernels.backends import cpu as be
    from ncs_kernels import _C


TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _mask(n, k, density, gen):
    if density == 0:
        m = torch.zeros(n, k, dtype=torch.bool)
    elif density == 1:
        m = torch.ones(n, k, dtype=torch.bool)
    else:
        m = torch.rand(n, k, generator=gen) < density
    return m, nk.pack_mask(m)


def _close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


# ---- masks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 70, 1680])
def test_apply_mask_and_mask_inplace_exact(dtype, k):
    gen = torch.Generator().manual_seed(k)
    w = torch.randn(7, k, generator=gen, dtype=dtype)
    w[0, 0] = float("nan")  # masking is a select: NaN/Inf under a 0 bit become exactly +0.0
    w[-1, -1] = float("inf")
    m, packed = _mask(7, k, 0.5, gen)
    m[0, 0] = False
    m[-1, -1] = False
    packed = nk.pack_mask(m)
    expect = ref.apply_mask(w, packed)
    got = _C.apply_mask_cpu(w, packed)
    assert got.dtype == dtype and got.shape == w.shape
    assert torch.equal(got, expect)
    assert not torch.signbit(got[~m]).any()  # +0.0, not -0.0
    t = w.clone()
    _C.mask_inplace_cpu(t, packed)
    assert torch.equal(t, expect)


def test_rejects_unsupported_input():
    w = torch.randn(4, 40, dtype=torch.float16)
    packed = nk.ones_mask(4, 40)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        _C.apply_mask_cpu(w, packed)
    with pytest.raises(RuntimeError, match="packed"):
        _C.apply_mask_cpu(w.float(), nk.ones_mask(4, 70))


# ---- masked_linear -------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (1, 31, 5), (3, 33, 4), (5, 70, 9), (16, 1680, 12), (8, 32, 1), (4, 64, 33)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.4])
@pytest.mark.parametrize("b,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_linear_matches_reference(dtype, density, b, k, n, with_bias):
    gen = torch.Generator().manual_seed(b * 1000 + k + n)
    x = torch.randn(b, k, generator=gen, dtype=dtype)
    w = torch.randn(n, k, generator=gen, dtype=dtype)
    bias = torch.randn(n, generator=gen, dtype=dtype) if with_bias else None
    m, packed = _mask(n, k, density, gen)
    dy = torch.randn(b, n, generator=gen, dtype=dtype)
    scale = max(1.0, k / 64)
    _close(be.masked_linear_forward(x, w, packed, bias), ref.masked_linear_forward(x, w, packed, bias), dtype, scale)
    got = be.masked_linear_backward(dy, x, w, packed, True, True, with_bias)
    exp = ref.masked_linear_backward(dy, x, w, packed, True, True, with_bias)
    for g, e in zip(got, exp):
        if e is None:
            assert g is None
        else:
            assert g.dtype == dtype and g.shape == e.shape
            _close(g, e, dtype, scale)
    dw = got[1]
    assert torch.equal(dw[~m], torch.zeros_like(dw[~m]))  # exactly 0 where the bit is 0


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True), (False, False, False)])
def test_masked_linear_backward_skips_what_is_not_needed(need):
    x, w, dy = torch.randn(3, 40), torch.randn(5, 40), torch.randn(3, 5)
    packed = nk.ones_mask(5, 40)
    out = be.masked_linear_backward(dy, x, w, packed, *need)
    assert isinstance(out, tuple) and len(out) == 3
    assert [o is not None for o in out] == list(need)


def test_masked_linear_gradcheck_fp64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    _, packed = _mask(4, 37, 0.5, gen)
    assert torch.autograd.gradcheck(lambda x, w, b: nk.masked_linear(x, w, packed, b, backend="cpu"), (x, w, b))


# ---- cross_masked_linear -------------------------------------------------------------------

CROSS = [(1, 1, 1, 3), (2, 2, 3, 5), (3, 3, 8, 4), (4, 20, 64, 6), (5, 3, 1, 7), (2, 20, 3, 2), (3, 2, 64, 33)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.0, 1.0, 0.4])
@pytest.mark.parametrize("b,f,d,n", CROSS)
def test_cross_masked_linear_matches_reference(dtype, density, b, f, d, n):
    gen = torch.Generator().manual_seed(b * 100 + f * 10 + d + n)
    k = f * f + f * d
    emb = torch.randn(b, f, d, generator=gen, dtype=dtype)
    w = torch.randn(n, k, generator=gen, dtype=dtype)
    bias = torch.randn(n, generator=gen, dtype=dtype)
    m, packed = _mask(n, k, density, gen)
    dy = torch.randn(b, n, generator=gen, dtype=dtype)
    scale = max(1.0, k / 16)
    y = be.cross_masked_linear_forward(emb, w, packed, bias)
    _close(y, ref.cross_masked_linear_forward(emb, w, packed, bias), dtype, scale)
    _close(be.cross_masked_linear_forward(emb, w, packed, None), ref.cross_masked_linear_forward(emb, w, packed), dtype, scale)
    got = be.cross_masked_linear_backward(dy, emb, w, packed, True, True, True)
    exp = ref.cross_masked_linear_backward(dy, emb, w, packed, True, True, True)
    for g, e in zip(got, exp):
        assert g.dtype == dtype and g.shape == e.shape
        _close(g, e, dtype, scale * 4)
    dw = got[1]
    assert torch.equal(dw[~m], torch.zeros_like(dw[~m]))
    for need in [(True, False, False), (False, True, False), (False, False, True)]:
        part = be.cross_masked_linear_backward(dy, emb, w, packed, *need)
        for p, full, want in zip(part, got, need):
            assert (p is not None) == want
            if want:
                _close(p, full, dtype)


def test_cross_masked_linear_gradcheck_fp64():
    gen = torch.Generator().manual_seed(1)
    f, d, n = 3, 4, 5
    emb = torch.randn(2, f, d, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, f * f + f * d, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    _, packed = _mask(n, f * f + f * d, 0.6, gen)
    assert torch.autograd.gradcheck(lambda e, w, b: nk.cross_masked_linear(e, w, packed, b, backend="cpu"), (emb, w, b))


# ---- masked Adam ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 33, 70])
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.01, False), (0.1, True)])
def test_masked_adam_alternating_masks(dtype, k, weight_decay, decoupled):
    gen = torch.Generator().manual_seed(k)
    n = 6
    p0 = torch.randn(n, k, generator=gen, dtype=dtype)
    _, ctr = _mask(n, k, 0.5, gen)
    _, cvr = _mask(n, k, 0.7, gen)
    mine = [p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)]
    theirs = [p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)]
    masks = [ctr, cvr, None, ctr, cvr, cvr]
    for step, packed in enumerate(masks, start=1):
        g = torch.randn(n, k, generator=gen, dtype=dtype)
        before = [t.clone() for t in mine]
        hp = dict(step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)
        be.masked_adam_step_(mine[0], g, mine[1], mine[2], packed, **hp)
        ref.masked_adam_step_(theirs[0], g, theirs[1], theirs[2], packed, **hp)
        atol = 1e-6 if dtype == torch.float32 else 1e-12
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=atol)
        if packed is not None:
            off = ~nk.unpack_mask(packed, k)
            for a, b in zip(mine, before):
                assert torch.equal(a[off], b[off])  # strict: untouched where the bit is 0


def test_masked_adam_through_public_op():
    p = torch.randn(4, 40)
    p2, g = p.clone(), torch.randn(4, 40)
    m1, v1, m2, v2 = (torch.zeros(4, 40) for _ in range(4))
    packed = nk.pack_mask(torch.rand(4, 40) < 0.5)
    nk.masked_adam_step_(p, g, m1, v1, packed, 1, 1e-3, backend="cpu")
    ref.masked_adam_step_(p2, g, m2, v2, packed, 1, 1e-3, 0.9, 0.999, 1e-8)
    torch.testing.assert_close(p, p2, rtol=1e-6, atol=1e-7)
