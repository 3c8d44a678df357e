"""The Triton backend against ncs_kernels.reference: every function, output and every gradient.

Without CUDA the kernels run on CPU tensors through the Triton interpreter (fp32 only: bf16
tl.dot is wrong there); with CUDA they run on the GPU, in fp32 and, with tolerances bounded by
PyTorch's own low-precision error, in fp16/bf16.
"""
import os

import torch

if not torch.cuda.is_available():
    # must precede the first import of triton (ncs_kernels.backends.triton imports it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ncs_kernels as nk  # noqa: E402
from ncs_kernels import reference as ref  # noqa: E402

triton = pytest.importorskip("triton")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:  # pragma: no cover - the module sets TRITON_INTERPRET itself when there is no GPU
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from ncs_kernels.backends import triton as tb  # noqa: E402
from ncs_kernels.backends.triton import _common  # noqa: E402

DENSITIES = [0.0, 1.0, 0.5]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, g, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def _mask(n, k, density, g):
    if density in (0.0, 1.0):
        m = torch.full((n, k), bool(density))
    else:
        m = torch.rand(n, k, generator=g) < density
    return m.to(DEVICE), nk.pack_mask(m).to(DEVICE)


def _close(actual, expected, k):
    # fp32 sums of k products: error grows like sqrt(k)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(k, 1) ** 0.5)


# ------------------------------------------------------------------------------------------
# masked_linear

ML_SHAPES = [  # (B, N, K): B=1, odd N, K below/above/at multiples of 32, split-batch dW (B > 32)
    (1, 1, 1),
    (1, 5, 33),
    (2, 33, 31),
    (3, 1, 70),
    (5, 33, 70),
    (70, 5, 33),
]


def _check_masked_linear(b, n, k, density, seed, bias=True):
    g = _gen(seed)
    x, w, dy = _randn(b, k, g=g), _randn(n, k, g=g), _randn(b, n, g=g)
    bvec = _randn(n, g=g) if bias else None
    m, p = _mask(n, k, density, g)
    _close(tb.masked_linear_forward(x, w, p, bvec), ref.masked_linear_forward(x, w, p, bvec), k)
    dx, dw, db = tb.masked_linear_backward(dy, x, w, p, True, True, True)
    dx0, dw0, db0 = ref.masked_linear_backward(dy, x, w, p, True, True, True)
    _close(dx, dx0, n)
    _close(dw, dw0, b)
    _close(db, db0, b)
    assert bool((dw[~m] == 0).all()), "dW must be exactly 0 where the mask bit is 0"


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", ML_SHAPES, ids=lambda s: "B%d-N%d-K%d" % s)
def test_masked_linear_matches_reference(shape, density):
    _check_masked_linear(*shape, density, seed=hash(shape) % 1000)


def test_masked_linear_paper_width_small_batch():
    _check_masked_linear(3, 5, 1680, 0.5, seed=1)


def test_masked_linear_no_bias_and_partial_grads():
    g = _gen(2)
    x, w, dy = _randn(4, 40, g=g), _randn(7, 40, g=g), _randn(4, 7, g=g)
    _, p = _mask(7, 40, 0.3, g)
    _close(tb.masked_linear_forward(x, w, p, None), ref.masked_linear_forward(x, w, p, None), 40)
    dx, dw, db = tb.masked_linear_backward(dy, x, w, p, False, True, False)
    assert dx is None and db is None
    _close(dw, ref.masked_linear_backward(dy, x, w, p)[1], 4)
    dx, dw, db = tb.masked_linear_backward(dy, x, w, p, True, False, False)
    assert dw is None and db is None
    _close(dx, ref.masked_linear_backward(dy, x, w, p)[0], 7)


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_dw_split_batch_is_deterministic(splits):
    """dW summed over batch splits equals the reference and is bitwise reproducible."""
    g = _gen(3)
    x, w, dy = _randn(130, 45, g=g), _randn(6, 45, g=g), _randn(130, 6, g=g)
    m, p = _mask(6, 45, 0.5, g)
    cfg = _common.dw_config(130, 6, 45, torch.float32, 4, splits)
    assert cfg.splits == splits
    a = tb.masked_linear_backward(dy, x, w, p, False, True, False, splits=splits)[1]
    b = tb.masked_linear_backward(dy, x, w, p, False, True, False, splits=splits)[1]
    assert torch.equal(a, b)
    _close(a, ref.masked_linear_backward(dy, x, w, p)[1], 130)
    assert bool((a[~m] == 0).all())


def test_materialized_weight_mask_mode(monkeypatch):
    """NCS_TRITON_WEIGHT_MASK=materialize (W ⊙ M written once, unmasked GEMM) gives the same results."""
    monkeypatch.setenv("NCS_TRITON_WEIGHT_MASK", "materialize")
    _check_masked_linear(5, 33, 70, 0.5, seed=5)
    _check_cross(3, 3, 8, 5, 0.5, seed=6)
    g = _gen(5)
    w, (m, p) = _randn(7, 45, g=g), _mask(7, 45, 0.5, g)
    assert torch.equal(tb.masked_linear.apply_mask(w, p), ref.apply_mask(w, p))
    monkeypatch.setenv("NCS_TRITON_WEIGHT_MASK", "bogus")
    with pytest.raises(ValueError, match="NCS_TRITON_WEIGHT_MASK"):
        _check_masked_linear(1, 1, 1, 1.0, seed=0)


def test_public_op_autograd_matches_torch_backend():
    g = _gen(4)
    x, w, b = _randn(9, 37, g=g), _randn(11, 37, g=g), _randn(11, g=g)
    m, p = _mask(11, 37, 0.4, g)
    grads = {}
    for backend in ("torch", "triton"):
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = nk.masked_linear(xs, ws, p, bs, backend=backend)
        grads[backend] = (y.detach(),) + torch.autograd.grad((y * y).sum(), (xs, ws, bs))
    for a, e in zip(grads["triton"], grads["torch"]):
        _close(a, e, 37)
    assert bool((grads["triton"][2][~m] == 0).all())


# ------------------------------------------------------------------------------------------
# cross_masked_linear

def _check_cross(b, f, d, n, density, seed, bias=True, splits=None):
    g = _gen(seed)
    width = f * f + f * d
    emb, w, dy = _randn(b, f, d, g=g), _randn(n, width, g=g), _randn(b, n, g=g)
    bvec = _randn(n, g=g) if bias else None
    m, p = _mask(n, width, density, g)
    _close(tb.cross_masked_linear_forward(emb, w, p, bvec), ref.cross_masked_linear_forward(emb, w, p, bvec), width * d)
    de, dw, db = tb.cross_masked_linear_backward(dy, emb, w, p, True, True, True, splits=splits)
    de0, dw0, db0 = ref.cross_masked_linear_backward(dy, emb, w, p, True, True, True)
    _close(de, de0, n * f * d)
    _close(dw, dw0, b * d)
    _close(db, db0, b)
    assert bool((dw[~m] == 0).all()), "dW must be exactly 0 where the mask bit is 0"


@pytest.mark.parametrize("d", [1, 3, 8])
@pytest.mark.parametrize("f", [1, 2, 3, 20])
def test_cross_matches_reference(f, d):
    _check_cross(3, f, d, 5, 0.5, seed=10 * f + d)


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_cross_full_and_empty_masks(density):
    _check_cross(4, 3, 8, 33, density, seed=7)


def test_cross_batch_one_no_bias():
    _check_cross(1, 2, 3, 1, 0.5, seed=8, bias=False)


def test_cross_split_batch_dw():
    _check_cross(70, 3, 3, 5, 0.5, seed=9, splits=3)


def test_cross_partial_grads():
    g = _gen(11)
    emb, w, dy = _randn(5, 3, 4, g=g), _randn(6, 21, g=g), _randn(5, 6, g=g)
    _, p = _mask(6, 21, 0.5, g)
    de, dw, db = tb.cross_masked_linear_backward(dy, emb, w, p, True, False, False)
    assert dw is None and db is None
    _close(de, ref.cross_masked_linear_backward(dy, emb, w, p)[0], 6 * 12)
    de, dw, db = tb.cross_masked_linear_backward(dy, emb, w, p, False, True, True)
    assert de is None
    _close(dw, ref.cross_masked_linear_backward(dy, emb, w, p)[1], 5)


def test_cross_public_op_autograd_matches_torch_backend():
    g = _gen(12)
    emb, w, b = _randn(6, 4, 5, g=g), _randn(9, 36, g=g), _randn(9, g=g)
    m, p = _mask(9, 36, 0.5, g)
    grads = {}
    for backend in ("torch", "triton"):
        es, ws, bs = (t.clone().requires_grad_(True) for t in (emb, w, b))
        y = nk.cross_masked_linear(es, ws, p, bs, backend=backend)
        grads[backend] = (y.detach(),) + torch.autograd.grad((y * y).sum(), (es, ws, bs))
    for a, e in zip(grads["triton"], grads["torch"]):
        _close(a, e, 36 * 5)
    assert bool((grads["triton"][2][~m] == 0).all())


# ------------------------------------------------------------------------------------------
# masked Adam / AdamW

@pytest.mark.parametrize("masked", [True, False], ids=["masked", "plain"])
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.1), (True, 0.1)], ids=["adam", "adam-l2", "adamw"])
def test_masked_adam_matches_reference(decoupled, wd, masked):
    g = _gen(20)
    n, k = 19, 70
    state = [_randn(n, k, g=g), _randn(n, k, g=g), _randn(n, k, g=g), _randn(n, k, g=g).abs()]
    m, p = _mask(n, k, 0.5, g) if masked else (None, None)
    ours = [t.clone() for t in state]
    theirs = [t.clone() for t in state]
    for step in (1, 2, 3):
        args = (p, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        tb.masked_adam_step_(*ours, *args)
        ref.masked_adam_step_(*theirs, *args)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    if masked:
        for a, orig in zip(ours, state):
            assert torch.equal(a[~m], orig[~m]), "masked-out entries must stay bit-for-bit unchanged"
        assert not torch.equal(ours[0][m], state[0][m])


def test_masked_adam_public_op_and_empty_mask():
    g = _gen(21)
    state = [_randn(3, 33, g=g), _randn(3, 33, g=g), _randn(3, 33, g=g), _randn(3, 33, g=g).abs()]
    _, p0 = _mask(3, 33, 0.0, g)
    ours = [t.clone() for t in state]
    nk.masked_adam_step_(*ours, p0, 1, 1e-3, backend="triton")
    for a, e in zip(ours, state):
        assert torch.equal(a, e)
    _, p1 = _mask(3, 33, 1.0, g)
    theirs = [t.clone() for t in state]
    nk.masked_adam_step_(*ours, p1, 1, 1e-3, weight_decay=0.01, decoupled=True, backend="triton")
    ref.masked_adam_step_(*theirs, p1, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# GPU only: half precision, bounded by twice PyTorch's own error against an fp64 reference

@pytest.mark.skipif(DEVICE != "cuda", reason="fp16/bf16 Triton kernels need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_twice_torch_error(dtype):
    g = _gen(30)
    b, f, d, n = 256, 20, 8, 96
    width = f * f + f * d
    emb, w, dy, bias = _randn(b, f, d, g=g), _randn(n, width, g=g) * 0.05, _randn(b, n, g=g), _randn(n, g=g)
    _, p = _mask(n, width, 0.5, g)

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
