"""The cpu backend's eager training path of cross_masked_linear, which keeps the forward's Gram
triangle and folded weight for backward (ncs_kernels/ops/cross_masked_linear.py): used whenever
a gradient is needed, bit-identical to the backward that rebuilds them, equal to the reference."""
import pytest
import torch

import ncs_kernels as nk

from _cases import CROSS_COMMON, CROSS_CPU, DENSITIES, NEEDS, assert_close, cross_inputs, native, ref

pytestmark = pytest.mark.skipif(native() is None, reason=f"ncs_kernels._C is not built: {nk.native_error()}")

CASES = [(s, d, dt) for s in CROSS_COMMON + CROSS_CPU + [(9, 20, 64, 17)] for d in DENSITIES
         for dt in (torch.float32, torch.float64)]


def _run(emb, w, bias, dy, packed, needs=(True, True, True)):
    """(y, grad_fn name, d emb, dW, db) of the public op with backend cpu, asking for `needs`."""
    leaves = [t.clone().requires_grad_(n) for t, n in zip((emb, w, bias), needs)]
    y = nk.cross_masked_linear(leaves[0], leaves[1], packed, leaves[2], backend="cpu")
    name = type(y.grad_fn).__name__
    (y * dy).sum().backward()
    return (y.detach(), name) + tuple(t.grad for t in leaves)


@pytest.mark.parametrize("shape,density,dtype", CASES)
def test_saved_path_is_bit_identical_to_rebuilding_backward(shape, density, dtype):
    emb, w, bias, dy, m, packed = cross_inputs(*shape, density, dtype)
    y, fn, g_emb, g_w, g_b = _run(emb, w, bias, dy, packed)
    assert fn.startswith("_CrossSavedCPU"), fn
    ext = native()
    assert torch.equal(y, ext.cross_masked_linear_forward_cpu(emb, w, packed, bias))
    want = ext.cross_masked_linear_backward_cpu(dy, emb, w, packed, True, True, True)
    for got, exp, name in zip((g_emb, g_w, g_b), want, ("d(emb)", "dW", "db")):
        assert torch.equal(got, exp), name
    # and the reference, within the dtype's tolerance; masked-out dW exactly 0
    r = ref.cross_masked_linear_backward(dy, emb, w, packed)
    assert_close(y, ref.cross_masked_linear_forward(emb, w, packed, bias), "y")
    for got, exp, name in zip((g_emb, g_w, g_b), r, ("d(emb)", "dW", "db")):
        assert_close(got, exp, name)
    assert torch.all(g_w[~m] == 0)


@pytest.mark.parametrize("needs", NEEDS)
def test_saved_path_computes_only_what_is_needed(needs):
    emb, w, bias, dy, _, packed = cross_inputs(4, 3, 5, 6, 0.5)
    y, fn, *grads = _run(emb, w, bias, dy, packed, needs)
    assert fn.startswith("_CrossSavedCPU")
    want = ref.cross_masked_linear_backward(dy, emb, w, packed)
    for got, exp, need, name in zip(grads, want, needs, ("d(emb)", "dW", "db")):
        if need:
            assert_close(got, exp, name)
        else:
            assert got is None, name


def test_no_bias_and_no_grad_take_the_plain_path():
    emb, w, _, dy, _, packed = cross_inputs(3, 4, 5, 7, 0.5)
    leaf = emb.clone().requires_grad_(True)
    y = nk.cross_masked_linear(leaf, w, packed, None, backend="cpu")
    assert type(y.grad_fn).__name__.startswith("_CrossSavedCPU")
    (y * dy).sum().backward()
    assert_close(leaf.grad, ref.cross_masked_linear_backward(dy, emb, w, packed)[0], "d(emb)")
    with torch.no_grad():
        y0 = nk.cross_masked_linear(leaf, w, packed, None, backend="cpu")
    assert torch.equal(y0, y.detach())
    # nothing needs a gradient: the plain op (no Gu / Wf kept)
    assert nk.cross_masked_linear(emb, w, packed, None, backend="cpu").grad_fn is None


def test_saved_backward_rejects_mismatched_tensors():
    emb, w, bias, dy, _, packed = cross_inputs(3, 4, 5, 7, 0.5)
    y, gu, wf = native().cross_masked_linear_forward_saved_cpu(emb, w, packed, bias)
    assert gu.shape == (3, 4 * 5 // 2) and wf.shape == (7, 10 + 20)
    with pytest.raises(RuntimeError, match="gu: expected shape"):
        native().cross_masked_linear_backward_saved_cpu(dy, emb, gu[:, :-1].contiguous(), wf, packed, True, True, True)
    with pytest.raises(RuntimeError, match="wf: expected shape"):
        native().cross_masked_linear_backward_saved_cpu(dy, emb, gu, wf[:, :-1].contiguous(), packed, True, True, True)
    with pytest.raises(RuntimeError, match="dy: expected shape"):
        native().cross_masked_linear_backward_saved_cpu(dy[:, :-1].contiguous(), emb, gu, wf, packed, True, True, True)
    with pytest.raises(RuntimeError, match="packed"):
        native().cross_masked_linear_backward_saved_cpu(dy, emb, gu, wf, packed[:-1].contiguous(), True, True, True)
