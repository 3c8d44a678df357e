"""Bad input to the ops raises an error that names the argument and what was expected."""
import pytest
import torch

import ncs_kernels as nk


def _ok(b=4, k=40, n=3):
    return torch.randn(b, k), torch.randn(n, k), nk.pack_mask(torch.ones(n, k, dtype=torch.bool)), torch.randn(n)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_masked_linear_errors(backend):
    x, w, p, b = _ok()
    cases = [
        (dict(x=torch.randn(4, 41)), ValueError, "x: expected 40 features"),
        (dict(x=torch.randn(40)), ValueError, "x: expected a 2-D"),
        (dict(x=x.to(torch.int64)), TypeError, "x: expected dtype"),
        (dict(x=x.double()), TypeError, r"weight: expected dtype float64 \(the dtype of x\)"),
        (dict(x=torch.randn(40, 4).t()), ValueError, "x: expected a contiguous"),
        (dict(packed=torch.zeros(3, 1, dtype=torch.int32)), ValueError, r"packed: expected packed mask shape \(3, 2\)"),
        (dict(packed=p.to(torch.int64)), TypeError, "packed: expected an int32"),
        (dict(packed=p.t().contiguous().t()), ValueError, "packed"),
        (dict(bias=torch.randn(4)), ValueError, r"bias: expected shape \(3,\)"),
        (dict(weight=torch.randn(3, 40, 1)), ValueError, "weight: expected a 2-D"),
        (dict(x="x"), TypeError, "x: expected a torch.Tensor"),
    ]
    for override, exc, msg in cases:
        args = dict(x=x, weight=w, packed=p, bias=b)
        args.update(override)
        with pytest.raises(exc, match=msg):
            nk.masked_linear(args["x"], args["weight"], args["packed"], args["bias"], backend=backend)


def test_unknown_and_unavailable_backend():
    x, w, p, b = _ok()
    with pytest.raises(ValueError, match="backend: expected one of"):
        nk.masked_linear(x, w, p, b, backend="tpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run this call"):
        nk.masked_linear(x, w, p, b, backend="cuda")
    with pytest.raises(RuntimeError, match="supports dtypes"):
        nk.masked_linear(x.half(), w.half(), p, b.half(), backend="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a device mismatch")
def test_device_mismatch():
    x, w, p, b = _ok()
    with pytest.raises(ValueError, match="weight: expected device"):
        nk.masked_linear(x.cuda(), w, p, b)


def test_device_mismatch_meta():
    x, w, p, b = _ok()
    with pytest.raises(ValueError, match="weight: expected device"):
        nk.masked_linear(x, w.to("meta"), p, b)


def test_cross_errors():
    emb = torch.randn(2, 3, 4)
    k = 3 * 3 + 3 * 4
    w = torch.randn(5, k)
    p = nk.pack_mask(torch.ones(5, k, dtype=torch.bool))
    with pytest.raises(ValueError, match="emb: expected a 3-D"):
        nk.cross_masked_linear(emb.reshape(2, 12), w, p)
    with pytest.raises(ValueError, match=r"weight: expected 21 = F\*F \+ F\*d"):
        nk.cross_masked_linear(emb, torch.randn(5, 20), p)
    with pytest.raises(ValueError, match="packed: expected packed mask shape"):
        nk.cross_masked_linear(emb, w, torch.zeros(4, 1, dtype=torch.int32))
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        nk.cross_masked_linear(emb, w.double(), p)
