"""The native extension ncs_kernels._C is built and wired into backend dispatch."""
import pytest
import torch

import ncs_kernels as nk


def _ext():
    ext = nk.native()
    if ext is None:
        pytest.skip(f"ncs_kernels._C is not built: {nk.native_error()}")
    return ext


def test_extension_imports_and_reports_cuda():
    ext = _ext()
    assert isinstance(ext.has_cuda(), bool)
    for name in ("apply_mask", "mask_inplace", "masked_linear_forward", "masked_linear_backward",
                 "cross_masked_linear_forward", "cross_masked_linear_backward", "masked_adam_step"):
        assert hasattr(ext, name + "_cpu"), name
        assert hasattr(ext, name + "_cuda") == ext.has_cuda(), name


def test_cpu_backend_is_listed_and_chosen_by_auto():
    _ext()
    assert "cpu" in nk.backends()
    assert nk.backends()[:2] == ["torch", "cpu"]
    from ncs_kernels import _backends

    assert _backends.resolve("auto", torch.zeros(1)) == "cpu"
    assert _backends.resolve("auto", torch.zeros(1, dtype=torch.float16)) == "torch"


def test_undefined_gradients_come_back_as_none():
    ext = _ext()
    out = ext.masked_linear_backward_cpu(torch.randn(2, 3), torch.randn(2, 5), torch.randn(3, 5),
                                         nk.ones_mask(3, 5), False, False, True)
    assert out[0] is None and out[1] is None and out[2].shape == (3,)
