"""The compiled extension ncs_kernels._C, and the `cpu` and `cuda` backends built over it.

Both native backends have the same entry points; they differ only in the suffix of the _C
functions they call (`masked_linear_forward_cpu` / `masked_linear_forward_cuda`, ...) and in
what they need of the build. `NativeBackend(device)` is that one definition; `CPU` and `CUDA`
are its two instances, which the registry (registry.py) hands out as the `cpu` and `cuda`
backends. Inputs arrive validated from the ops; semantics are those of backends/pytorch.py.

This module imports nothing else from ncs_kernels, so the registry and the dispatch layer can
both import it (no cycle).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Tuple

import torch

_C_MODULE: Optional[ModuleType] = None
_C_ERROR: Optional[str] = None
_C_LOADED = False

BUILD_HINT = "run `pip install --no-build-isolation -e .`"


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
    """Why ncs_kernels._C could not be imported, or None when it was."""
    native()
    return _C_ERROR


class NativeBackend:
    """The entry points of the Backend protocol over ncs_kernels._C.<function>_<device>."""

    def __init__(self, device: str):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        self.name = device
        self._suffix = "_" + device

    def __repr__(self) -> str:
        return f"NativeBackend({self.name!r})"

    def _fn(self, name: str):
        ext = native()
        if ext is None:
            raise RuntimeError(f"backend {self.name!r} needs the native extension ncs_kernels._C "
                               f"({native_error()}); {BUILD_HINT}")
        if self.name == "cuda" and not ext.has_cuda():
            raise RuntimeError(
                "backend 'cuda': ncs_kernels._C was built without CUDA kernels (torch without CUDA, no nvcc, "
                "or NCS_BUILD_CUDA=0); rebuild with NCS_BUILD_CUDA=1"
            )
        return getattr(ext, name + self._suffix)

    def apply_mask(self, weight: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return self._fn("apply_mask")(weight, packed)

    def masked_linear_forward(self, x, weight, packed, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._fn("masked_linear_forward")(x, weight, packed, bias)

    def masked_linear_backward(
        self, dy, x, weight, packed, need_x: bool = True, need_w: bool = True, need_b: bool = True
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        return tuple(self._fn("masked_linear_backward")(dy, x, weight, packed, bool(need_x), bool(need_w),
                                                        bool(need_b)))

    def cross_masked_linear_forward(self, emb, weight, packed, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._fn("cross_masked_linear_forward")(emb, weight, packed, bias)

    def cross_masked_linear_backward(
        self, dy, emb, weight, packed, need_emb: bool = True, need_w: bool = True, need_b: bool = True
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        return tuple(self._fn("cross_masked_linear_backward")(dy, emb, weight, packed, bool(need_emb),
                                                              bool(need_w), bool(need_b)))

    @torch.no_grad()
    def masked_adam_step_(
        self, param, grad, exp_avg, exp_avg_sq, packed, step, lr, beta1, beta2, eps, weight_decay=0.0,
        decoupled=False,
    ) -> None:
        self._fn("masked_adam_step")(
            param, grad, exp_avg, exp_avg_sq, packed, int(step), float(lr), float(beta1), float(beta2),
            float(eps), float(weight_decay), bool(decoupled),
        )


CPU = NativeBackend("cpu")    # C++ kernels of csrc/cpu: CPU tensors, fp32/fp64
CUDA = NativeBackend("cuda")  # CUDA C++ kernels of csrc/cuda: CUDA tensors, fp32/fp16/bf16
