"""Which backend runs a given call: the dispatch over the registry in ncs_kernels/backends.

The backends themselves (torch, cpu, triton, cuda), their facts (module, dtypes per device type,
why one cannot run here) and the entry points they provide (backends/protocol.py) are data in
ncs_kernels/backends/registry.py; this module only answers questions with them:

  backends()         the backends that can run on some device of this machine
  resolve(b, t)      the concrete backend that runs a call whose main input is tensor t
  impl(b)            the object with backend b's entry points
  use_backend(b)     within a block, what "auto" means

"auto" picks, for the device and dtype of the call, the first that can run it from
AUTO_ORDER; the environment variable NCS_BACKEND (or `use_backend`) overrides "auto".
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import List

import torch

from .backends.native import native, native_error
from .backends.registry import (AUTO_ORDER, BACKENDS, dtype_error, load, triton_interpreting, unknown_backend,
                                why_unavailable)

__all__ = ["AUTO_ORDER", "BACKENDS", "native", "native_error", "triton_interpreting", "why_unavailable",
           "backends", "use_backend", "resolve", "impl"]

_state = threading.local()


def backends() -> List[str]:
    """Backends that can run on some device of this machine, e.g. ['torch', 'cpu']."""
    return [b for b in BACKENDS if why_unavailable(b) is None]


@contextlib.contextmanager
def use_backend(backend: str):
    """Within the block, "auto" means `backend` (an explicit backend= still wins)."""
    if backend != "auto" and backend not in BACKENDS:
        raise unknown_backend(backend)
    prev = getattr(_state, "override", None)
    _state.override = backend
    try:
        yield
    finally:
        _state.override = prev


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
            if why_unavailable(cand, device_type) is None and dtype_error(cand, device_type, dtype) is None:
                return cand
        return "torch"
    if backend not in BACKENDS:
        raise unknown_backend(backend)
    why = why_unavailable(backend, device_type) or dtype_error(backend, device_type, dtype)
    if why:
        raise RuntimeError(f"backend {backend!r} cannot run this call: {why}")
    return backend


def impl(backend: str):
    """The object (a module, or a NativeBackend) with the entry points of `backend` (a concrete name)."""
    return load(backend)
