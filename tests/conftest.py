"""Test set-up shared by every test.

Without CUDA, Triton kernels run through the Triton interpreter: TRITON_INTERPRET=1 must be in
the environment before triton is first imported, so it is set here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ncs_kernels as nk  # noqa: E402
from ncs_kernels import _backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The backends that tests compare with the reference; "torch" is the reference itself.


def backend_device_params():
    """(backend, device) pairs compared with the reference. cpu and triton (interpreter) on CPU
    tensors always run: if they cannot, the test fails with the reason. The CUDA pairs run
    where a GPU is, and skip with the reason elsewhere."""
    out = [pytest.param("cpu", "cpu", id="cpu-cpu"), pytest.param("triton", "cpu", id="triton-cpu")]
    for be in ("triton", "cuda"):
        marks = () if torch.cuda.is_available() else pytest.mark.skip(reason="no CUDA device")
        out.append(pytest.param(be, "cuda", marks=marks, id=f"{be}-cuda"))
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
