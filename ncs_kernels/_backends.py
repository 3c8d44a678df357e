"""Which backends exist here, and which one runs a given call.

A backend is a module with the kernel entry points (see ncs_kernels/reference.py for the
signatures every backend implements):

    masked_linear_forward, masked_linear_backward,
    cross_masked_linear_forward, cross_masked_linear_backward,
    masked_adam_step_

  torch   ncs_kernels.reference (pure PyTorch; any device, any float dtype)
  cpu     C++ kernels in csrc/cpu, via ncs_kernels._C (CPU tensors; fp32, fp64)
  cuda    CUDA C++ kernels in csrc/cuda, via ncs_kernels._C (CUDA tensors; fp32, fp16, bf16)
  triton  Triton kernels in ncs_kernels/triton (CUDA tensors; on CPU tensors only under the
          Triton interpreter, TRITON_INTERPRET=1; fp32, and fp16/bf16 on CUDA)

"auto" picks, for the device and dtype of the call, the first that can run it from
AUTO_ORDER; the environment variable NCS_BACKEND (or `use_backend`) overrides "auto".
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from types import ModuleType
from typing import Dict, List, Optional

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")
# fastest first, per device type; "torch" is always last, always possible
AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}

_state = threading.local()
_C_ERROR: Optional[str] = None
_C_MODULE: Optional[ModuleType] = None
_C_LOADED = False


def native() -> Optional[ModuleType]:
    """The compiled extension ncs_kernels._C, or None (then native_error() says why)."""
    global _C_MODULE, _C_ERROR, _C_LOADED
    if not _C_LOADED:
        _C_LOADED = True
        try:
            _C_MODULE = importlib.import_module("ncs_kernels._C")
        except Exception as e:  # not built, or built against another torch
            _C_MODULE = None
            _C_ERROR = f"{type(e).__name__}: {e}"
    return _C_MODULE


def native_error() -> Optional[str]:
    native()
    return _C_ERROR


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


def why_unavailable(backend: str, device_type: Optional[str] = None) -> Optional[str]:
    """None if `backend` can run on `device_type` (or on some device, if None) here, else why not."""
    if backend == "torch":
        return None
    if backend == "cpu":
        if device_type not in (None, "cpu"):
            return f"backend 'cpu' runs on CPU tensors only, got a {device_type} tensor"
        if native() is None:
            return f"the native extension ncs_kernels._C is not built ({native_error()}); run `pip install --no-build-isolation -e .`"
        return None
    if backend == "cuda":
        if device_type not in (None, "cuda"):
            return f"backend 'cuda' runs on CUDA tensors only, got a {device_type} tensor"
        ext = native()
        if ext is None:
            return f"the native extension ncs_kernels._C is not built ({native_error()})"
        if not ext.has_cuda():
            return "ncs_kernels._C was built without CUDA kernels (torch without CUDA, no nvcc, or NCS_BUILD_CUDA=0)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if backend == "triton":
        err = _triton_error()
        if err:
            return err
        if device_type == "cpu" or (device_type is None and not torch.cuda.is_available()):
            if not triton_interpreting():
                return "backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 (set before importing triton) for CPU tensors"
            return None
        if device_type == "cuda" and triton_interpreting():
            return "TRITON_INTERPRET=1 is set: the Triton interpreter runs CPU tensors only"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    raise ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")


def backends() -> List[str]:
    """Backends that can run on some device of this machine, e.g. ['torch', 'cpu']."""
    return [b for b in BACKENDS if why_unavailable(b) is None]


def _module(backend: str) -> ModuleType:
    if backend == "torch":
        from . import reference as mod
    elif backend == "cpu":
        from .backends import cpu as mod
    elif backend == "cuda":
        from .backends import cuda as mod
    elif backend == "triton":
        from . import triton as mod
    else:  # pragma: no cover - resolve() checks names first
        raise ValueError(backend)
    return mod


@contextlib.contextmanager
def use_backend(backend: str):
    """Within the block, "auto" means `backend` (an explicit backend= still wins)."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")
    prev = getattr(_state, "override", None)
    _state.override = backend
    try:
        yield
    finally:
        _state.override = prev


def _dtype_ok(backend: str, device_type: str, dtype: torch.dtype) -> Optional[str]:
    if backend == "torch":
        return None
    if backend == "cpu":
        ok = (torch.float32, torch.float64)
    elif backend == "cuda":
        ok = (torch.float32, torch.float16, torch.bfloat16)
    else:  # triton
        ok = (torch.float32,) if device_type == "cpu" else (torch.float32, torch.float16, torch.bfloat16)
    if dtype not in ok:
        names = ", ".join(str(d).replace("torch.", "") for d in ok)
        return f"backend {backend!r} supports dtypes ({names}) on {device_type}, got {str(dtype).replace('torch.', '')}"
    return None


def resolve(backend: str, tensor: torch.Tensor) -> str:
    """The concrete backend name that runs a call whose main input is `tensor`."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
    return _resolve(backend, tensor.device.type, tensor.dtype)


@torch._dynamo.assume_constant_result  # decided once at trace time; torch.compile sees a constant
def _resolve(backend: str, device_type: str, dtype: torch.dtype) -> str:
    if device_type == "meta":
        return "torch" if backend == "auto" else backend
    if backend == "auto":
        backend = getattr(_state, "override", None) or os.environ.get("NCS_BACKEND", "auto") or "auto"
    if backend == "auto":
        for cand in AUTO_ORDER.get(device_type, ("torch",)):
            if why_unavailable(cand, device_type) is None and _dtype_ok(cand, device_type, dtype) is None:
                return cand
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")
    why = why_unavailable(backend, device_type) or _dtype_ok(backend, device_type, dtype)
    if why:
        raise RuntimeError(f"backend {backend!r} cannot run this call: {why}")
    return backend


_MODULES: Dict[str, ModuleType] = {}


def impl(backend: str) -> ModuleType:
    mod = _MODULES.get(backend)
    if mod is None:
        mod = _MODULES[backend] = _module(backend)
    return mod
