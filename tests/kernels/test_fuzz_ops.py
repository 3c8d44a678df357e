"""Property-based tests (hypothesis) of every op on every CPU-runnable backend against the
pure-PyTorch reference (computed in float64): masked_linear and cross_masked_linear (output
and every gradient, through the public autograd path), the masked Adam step, pack/unpack.

Shapes 1..300 (Triton runs in its interpreter: tiny shapes), densities 0, 1 and anything in
between, dtypes, several tasks per layer, contiguous and non-contiguous inputs.
Examples per test: NCS_FUZZ_EXAMPLES (default 40; the Triton interpreter gets a quarter of
it, at least 4). CI is derandomized (the same examples every run); a long run, e.g.
NCS_FUZZ_EXAMPLES=2000, draws new ones. The counts tried are printed at the end of the module
(pytest -s) and by `--hypothesis-show-statistics`.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncs_kernels as nk

from _cases import FUZZ_DTYPES, FUZZ_MAX, cpu_tensor_backends, make_mask, randn, ref

N_EXAMPLES = int(os.environ.get("NCS_FUZZ_EXAMPLES", "40"))
LONG = "NCS_FUZZ_EXAMPLES" in os.environ
COUNTS = {}


def _settings(backend):
    n = N_EXAMPLES if backend != "triton" else max(4, N_EXAMPLES // 4)
    return settings(max_examples=n, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def _count(name):
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nhypothesis examples tried: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


BACKENDS = cpu_tensor_backends(*FUZZ_MAX)  # every backend that runs on CPU tensors here
MAX = FUZZ_MAX
DTYPES = FUZZ_DTYPES
TOL = {torch.float32: (2e-4, 2e-4), torch.float64: (1e-9, 1e-9)}


@st.composite
def masks(draw, n, k):
    """A bool mask [n, k]: density 0, 1 or random, by a seeded generator (fast for 300 x 300)."""
    kind = draw(st.sampled_from(["zeros", "ones", "random"]))
    if kind != "random":
        return make_mask(n, k, float(kind == "ones"))[0]
    p = draw(st.floats(0.0, 1.0))
    return make_mask(n, k, p, seed=draw(st.integers(0, 2**31 - 1)))[0]


def _randn(shape, dtype, seed, scale=1.0):
    return randn(*shape, scale=scale, dtype=dtype, seed=seed)


def _maybe_noncontiguous(t, flag):
    """The same values in a transposed-storage (non-contiguous) view when flag."""
    if not flag or t.dim() < 2:
        return t
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def _close(got, want, dtype, name):
    rtol, atol = TOL[dtype]
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


def _call_public(op, args, backend):
    """The public op on possibly non-contiguous inputs: it runs, or refuses with a ValueError
    that says 'contiguous' (then it must run on .contiguous() copies)."""
    try:
        return op(*args, backend=backend)
    except ValueError as e:
        assert "contiguous" in str(e), e
        assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in args)
        return op(*[a.contiguous() if isinstance(a, torch.Tensor) else a for a in args], backend=backend)


def _check_public_op(op, ref_forward, ref_backward, inp0, w0, b0, m, dy, dtype, noncontig, backend, names):
    """op(inp, w, packed, bias) through autograd on (possibly non-contiguous) copies of the inputs:
    output and every gradient against the reference in float64; dW exactly 0 outside the mask."""
    packed = nk.pack_mask(m)
    inp = _maybe_noncontiguous(inp0.clone(), noncontig).requires_grad_(True)
    w = _maybe_noncontiguous(w0.clone(), noncontig).requires_grad_(True)
    bias = b0.clone().requires_grad_(True) if b0 is not None else None
    y = _call_public(op, (inp, w, packed, bias), backend)
    y.backward(dy)
    ind, wd = inp0.double(), w0.double()
    _close(y.detach(), ref_forward(ind, wd, packed, None if b0 is None else b0.double()), dtype, "y")
    rdi, rdw, rdb = ref_backward(dy.double(), ind, wd, packed)
    _close(inp.grad, rdi, dtype, names[0])
    _close(w.grad, rdw, dtype, "dW")
    assert bool((w.grad[~m] == 0).all()), "dW not exactly 0 outside the mask"
    if bias is not None:
        _close(bias.grad, rdb, dtype, "db")


def _draw_weight(data, backend, n, k):
    """The draws both layer ops share: dtype, layout, bias, seed; and the weight [n, k] and bias."""
    dtype = data.draw(st.sampled_from(DTYPES[backend]), "dtype")
    noncontig = data.draw(st.booleans(), "non-contiguous")
    with_bias = data.draw(st.booleans(), "bias")
    seed = data.draw(st.integers(0, 10**6), "seed")
    w0 = _randn((n, k), dtype, seed + 1, k ** -0.5)
    b0 = _randn((n,), dtype, seed + 2) if with_bias else None
    return dtype, noncontig, seed, w0, b0


def _fuzz_test(name, case):
    """A test of `case(data, backend)` on every backend, hypothesis drawing the examples."""
    @pytest.mark.parametrize("backend", BACKENDS)
    def test(backend):
        @_settings(backend)
        @given(data=st.data())
        def check(data):
            case(data, backend)
            _count(f"{name}[{backend}]")

        check()

    return test


def _masked_linear_case(data, backend):
    hi = MAX[backend]
    b = data.draw(st.integers(1, min(hi, 64)), "B")
    k = data.draw(st.integers(1, hi), "K")
    n = data.draw(st.integers(1, hi), "N")
    dtype, noncontig, seed, w0, b0 = _draw_weight(data, backend, n, k)
    ntasks = data.draw(st.integers(1, 3), "tasks")
    x0 = _randn((b, k), dtype, seed)
    for t in range(ntasks):  # one mask per task on the same weight, as in a shared layer
        m = data.draw(masks(n, k), f"mask{t}")
        _check_public_op(nk.masked_linear, ref.masked_linear_forward, ref.masked_linear_backward, x0, w0, b0, m,
                         _randn((b, n), dtype, seed + 3 + t), dtype, noncontig, backend, ("dx",))


test_fuzz_masked_linear = _fuzz_test("masked_linear", _masked_linear_case)


def _cross_masked_linear_case(data, backend):
    small = backend == "triton"
    b = data.draw(st.integers(1, 8 if small else 32), "B")
    f = data.draw(st.integers(1, 4 if small else 16), "F")
    d = data.draw(st.integers(1, 4 if small else 16), "d")
    n = data.draw(st.integers(1, 16 if small else 300), "N")
    k = f * f + f * d
    dtype, noncontig, seed, w0, b0 = _draw_weight(data, backend, n, k)
    m = data.draw(masks(n, k), "mask")
    e0 = _randn((b, f, d), dtype, seed, 0.5)
    _check_public_op(nk.cross_masked_linear, ref.cross_masked_linear_forward, ref.cross_masked_linear_backward,
                     e0, w0, b0, m, _randn((b, n), dtype, seed + 3), dtype, noncontig, backend, ("d emb",))


test_fuzz_cross_masked_linear = _fuzz_test("cross_masked_linear", _cross_masked_linear_case)


def _masked_adam_step_case(data, backend):
    hi = MAX[backend]
    n = data.draw(st.integers(1, hi), "N")
    k = data.draw(st.integers(1, hi), "K")
    dtype = data.draw(st.sampled_from(DTYPES[backend]), "dtype")
    masked = data.draw(st.booleans(), "masked")
    m = data.draw(masks(n, k), "mask")
    packed = nk.pack_mask(m) if masked else None
    step = data.draw(st.integers(1, 1000), "step")
    lr = data.draw(st.floats(1e-5, 1e-1), "lr")
    b1 = data.draw(st.floats(0.0, 0.99), "beta1")
    b2 = data.draw(st.floats(0.9, 0.9999), "beta2")
    wd = data.draw(st.sampled_from([0.0, 1e-2]), "weight_decay")
    decoupled = data.draw(st.booleans(), "decoupled")
    seed = data.draw(st.integers(0, 10**6), "seed")
    p, g, ea = (_randn((n, k), dtype, seed + i) for i in range(3))
    eas = _randn((n, k), dtype, seed + 3).abs()
    mine = [t.clone() for t in (p, ea, eas)]
    want = [t.double().clone() for t in (p, ea, eas)]
    nk.masked_adam_step_(mine[0], g, mine[1], mine[2], packed, step, lr, b1, b2, 1e-8, wd, decoupled,
                         backend=backend)
    ref.masked_adam_step_(want[0], g.double(), want[1], want[2], packed, step, lr, b1, b2, 1e-8, wd, decoupled)
    for got, exp, name in zip(mine, want, ("param", "exp_avg", "exp_avg_sq")):
        rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-10, 1e-12)
        torch.testing.assert_close(got.double(), exp, rtol=rtol, atol=atol, msg=lambda s: f"{name}: {s}")
    if masked:  # strict: bit-identical outside the mask
        for got, old in zip(mine, (p, ea, eas)):
            assert torch.equal(got[~m], old[~m])


test_fuzz_masked_adam_step = _fuzz_test("masked_adam_step", _masked_adam_step_case)


@_settings("torch")
@given(data=st.data())
def test_fuzz_pack_unpack(data):
    n = data.draw(st.integers(1, 300), "N")
    k = data.draw(st.integers(1, 300), "K")
    m = data.draw(masks(n, k), "mask")
    form = data.draw(st.sampled_from(["bool", "float", "int", "noncontiguous"]), "input form")
    inp = {"bool": m, "float": m.float(), "int": m.to(torch.int64), "noncontiguous": m.t().contiguous().t()}[form]
    packed = nk.pack_mask(inp)
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (n, (k + 31) // 32) and packed.is_contiguous()
    assert torch.equal(nk.unpack_mask(packed, k), m)
    assert nk.popcount(packed) == int(m.sum())
    rem = k % 32
    if rem:
        assert not bool((packed[:, -1] >> rem).ne(0).any()), "bits set past K"
    # bit (k % 32) of word k // 32, straight from the definition
    j = data.draw(st.integers(0, k - 1), "column")
    i = data.draw(st.integers(0, n - 1), "row")
    assert bool((int(packed[i, j // 32]) >> (j % 32)) & 1) == bool(m[i, j])
    _count("pack_unpack")
