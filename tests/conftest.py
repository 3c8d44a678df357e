"""Test set-up shared by every test.

Without CUDA, Triton kernels run through the Triton interpreter: TRITON_INTERPRET=1 must be in
the environment before triton is first imported, so it is set here, before any test module loads.
"""
import os
from typing import Optional

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ncs_kernels as nk  # noqa: E402
from ncs_kernels import _backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The backends that tests compare with the reference; "torch" is the reference itself.


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_cpu_skip_reason(cuda_available: bool, interpreting: bool) -> Optional[str]:
    """Why the triton-on-CPU-tensors cases cannot run, or None when they can.

    They run through the Triton interpreter, which conftest turns on only where there is no CUDA
    (TRITON_INTERPRET must be set before triton is imported, and with it set no kernel runs on
    the GPU). On a GPU machine with the interpreter off, real Triton would be launched on CPU
    tensors and fail: those cases skip there. Without CUDA they always run (conftest set the
    interpreter), so a failure there is a real one."""
    if cuda_available and not interpreting:
        return ("triton on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1), which is off "
                "because a CUDA device is present; the triton-cuda cases cover this backend here")
    return None


def backend_device_params(cuda_available: Optional[bool] = None, interpreting: Optional[bool] = None):
    """(backend, device) pairs compared with the reference. cpu on CPU tensors always runs;
    triton on CPU tensors (the interpreter) runs wherever the interpreter is on and skips with
    the reason on a GPU machine without it (see triton_cpu_skip_reason). The CUDA pairs run where
    a GPU is, and skip with the reason elsewhere. The arguments override what this machine has
    (tests of this function)."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if interpreting is None:
        interpreting = _interpreting()
    why = triton_cpu_skip_reason(cuda_available, interpreting)
    out = [pytest.param("cpu", "cpu", id="cpu-cpu"),
           pytest.param("triton", "cpu", marks=pytest.mark.skip(reason=why) if why else (), id="triton-cpu")]
    for be in ("triton", "cuda"):
        if not cuda_available:
            marks = pytest.mark.skip(reason="no CUDA device")
        elif be == "triton" and interpreting:
            marks = pytest.mark.skip(reason="TRITON_INTERPRET=1 is set: the Triton interpreter runs CPU tensors only")
        else:
            marks = ()
        out.append(pytest.param(be, "cuda", marks=marks, id=f"{be}-cuda"))
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
