"""The backends, as data: one BackendSpec per backend, and the questions asked of them.

  name    module (attr)                              devices: dtypes
  torch   ncs_kernels.backends.pytorch               any device, any float dtype
  cpu     ncs_kernels.backends.native (CPU)          cpu: fp32, fp64
  triton  ncs_kernels.backends.triton                cuda: fp32, fp16, bf16; cpu: fp32 (interpreter)
  cuda    ncs_kernels.backends.native (CUDA)         cuda: fp32, fp16, bf16

A spec says where the backend's entry points live (a module, or an object in it that satisfies
protocol.Backend), which dtypes it runs per device type, and why it cannot run here (a missing
build, device or package), without importing the backend itself. ncs_kernels/_backends.py
dispatches calls over these specs; to add a backend, add its spec to SPECS (and its name to
AUTO_ORDER where "auto" should pick it).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

from .native import BUILD_HINT, native, native_error

_FP32_HALF = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    attr: Optional[str]  # the Backend object inside `module`; None: the module itself
    dtypes: Optional[Mapping[str, Tuple[torch.dtype, ...]]]  # device type -> dtypes; None: any device, any dtype
    why_unavailable: Callable[[Optional[str]], Optional[str]]  # (device type or None) -> None, or why not here
    summary: str


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _torch_why(device_type: Optional[str]) -> Optional[str]:
    return None


def _cpu_why(device_type: Optional[str]) -> Optional[str]:
    if native() is None:
        return f"the native extension ncs_kernels._C is not built ({native_error()}); {BUILD_HINT}"
    return None


def _cuda_why(device_type: Optional[str]) -> Optional[str]:
    ext = native()
    if ext is None:
        return f"the native extension ncs_kernels._C is not built ({native_error()})"
    if not ext.has_cuda():
        return "ncs_kernels._C was built without CUDA kernels (torch without CUDA, no nvcc, or NCS_BUILD_CUDA=0)"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def _triton_why(device_type: Optional[str]) -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"triton is not importable ({type(e).__name__}: {e})"
    if device_type == "cpu" or (device_type is None and not torch.cuda.is_available()):
        if not triton_interpreting():
            return "backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 (set before importing triton) for CPU tensors"
        return None
    if device_type == "cuda" and triton_interpreting():
        return "TRITON_INTERPRET=1 is set: the Triton interpreter runs CPU tensors only"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


SPECS: Tuple[BackendSpec, ...] = (
    BackendSpec("torch", "ncs_kernels.backends.pytorch", None, None, _torch_why,
                "pure PyTorch: the definitions, and the oracle of every test"),
    BackendSpec("cpu", "ncs_kernels.backends.native", "CPU", {"cpu": (torch.float32, torch.float64)}, _cpu_why,
                "C++ kernels of csrc/cpu via ncs_kernels._C"),
    BackendSpec("triton", "ncs_kernels.backends.triton", None, {"cpu": (torch.float32,), "cuda": _FP32_HALF},
                _triton_why, "Triton kernels (CPU tensors only under TRITON_INTERPRET=1)"),
    BackendSpec("cuda", "ncs_kernels.backends.native", "CUDA", {"cuda": _FP32_HALF}, _cuda_why,
                "CUDA C++ kernels of csrc/cuda via ncs_kernels._C"),
)
BY_NAME: Dict[str, BackendSpec] = {s.name: s for s in SPECS}
BACKENDS: Tuple[str, ...] = tuple(BY_NAME)
# what "auto" tries per device type, fastest first; "torch" is always last, always possible
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


def unknown_backend(backend) -> ValueError:
    return ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")


def spec(backend: str) -> BackendSpec:
    try:
        return BY_NAME[backend]
    except (KeyError, TypeError):
        raise unknown_backend(backend) from None


def _dev(device_type: str) -> str:
    return device_type.upper() if device_type in ("cpu", "cuda") else device_type


def why_unavailable(backend: str, device_type: Optional[str] = None) -> Optional[str]:
    """None if `backend` can run on `device_type` (or on some device, if None) here, else why not."""
    s = spec(backend)
    if s.dtypes is not None and device_type is not None and device_type not in s.dtypes:
        where = " or ".join(_dev(d) for d in s.dtypes)
        return f"backend {backend!r} runs on {where} tensors only, got a {device_type} tensor"
    return s.why_unavailable(device_type)


def dtype_error(backend: str, device_type: str, dtype: torch.dtype) -> Optional[str]:
    """None if `backend` runs `dtype` on `device_type`, else what it supports there."""
    s = spec(backend)
    if s.dtypes is None:
        return None
    ok = s.dtypes.get(device_type, ())
    if dtype not in ok:
        names = ", ".join(str(d).replace("torch.", "") for d in ok)
        return f"backend {backend!r} supports dtypes ({names}) on {device_type}, got {str(dtype).replace('torch.', '')}"
    return None


_LOADED: Dict[str, object] = {}


def load(backend: str):
    """The object with the backend's entry points (a module, or the object `attr` names in it)."""
    obj = _LOADED.get(backend)
    if obj is None:
        s = spec(backend)
        obj = importlib.import_module(s.module)
        if s.attr is not None:
            obj = getattr(obj, s.attr)
        _LOADED[backend] = obj
    return obj
