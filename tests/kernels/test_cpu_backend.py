"""What is specific to the `cpu` backend (C++ kernels, ncs_kernels._C): the extension is built and
wired into dispatch, what its functions refuse, and the all-False backward. Its numerics (every
op, fp32 and fp64, the cpu's word-boundary shapes, gradients, gradcheck) are in the per-op suites
(test_ops_*.py, test_optim*.py), which run every backend over the case matrix in _cases.py."""
import pytest
import torch

import ncs_kernels as nk

from _cases import NEEDS, impl, native, resolve

pytestmark = pytest.mark.skipif(native() is None, reason=f"ncs_kernels._C is not built: {nk.native_error()}")

ENTRY_POINTS = ("apply_mask", "mask_inplace", "masked_linear_forward", "masked_linear_backward",
                "cross_masked_linear_forward", "cross_masked_linear_backward", "masked_adam_step")


def test_extension_imports_and_reports_cuda():
    ext = native()
    assert isinstance(ext.has_cuda(), bool)
    for name in ENTRY_POINTS:
        assert hasattr(ext, name + "_cpu"), name
        assert hasattr(ext, name + "_cuda") == ext.has_cuda(), name


def test_cpu_backend_is_listed_and_chosen_by_auto():
    assert "cpu" in nk.backends()
    assert nk.backends()[:2] == ["torch", "cpu"]
    assert resolve("auto", torch.zeros(1)) == "cpu"
    assert resolve("auto", torch.zeros(1, dtype=torch.float16)) == "torch"


def test_undefined_gradients_come_back_as_none():
    out = native().masked_linear_backward_cpu(torch.randn(2, 3), torch.randn(2, 5), torch.randn(3, 5),
                                              nk.ones_mask(3, 5), False, False, True)
    assert out[0] is None and out[1] is None and out[2].shape == (3,)


def test_rejects_unsupported_input():
    w = torch.randn(4, 40, dtype=torch.float16)
    packed = nk.ones_mask(4, 40)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        native().apply_mask_cpu(w, packed)
    with pytest.raises(RuntimeError, match="packed"):
        native().apply_mask_cpu(w.float(), nk.ones_mask(4, 70))


@pytest.mark.parametrize("need", NEEDS[:3] + [(False, False, False)])
def test_masked_linear_backward_skips_what_is_not_needed(need):
    x, w, dy = torch.randn(3, 40), torch.randn(5, 40), torch.randn(3, 5)
    packed = nk.ones_mask(5, 40)
    out = impl("cpu").masked_linear_backward(dy, x, w, packed, *need)
    assert isinstance(out, tuple) and len(out) == 3
    assert [o is not None for o in out] == list(need)
