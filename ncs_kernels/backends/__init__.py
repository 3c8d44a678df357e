"""Every backend of ncs_kernels, and the registry that describes them (registry.py).

  pytorch.py   the `torch` backend: pure PyTorch, the definitions (also `ncs_kernels.reference`)
  native.py    the `cpu` and `cuda` backends: one NativeBackend over ncs_kernels._C, two suffixes
  triton/      the `triton` backend: Triton kernels
  protocol.py  Backend: the entry points each of them provides
  registry.py  one BackendSpec per backend (module, dtypes per device type, why unavailable)

Import from it with `from ncs_kernels.backends import triton` (or `from ncs_kernels.backends.triton
import masked_linear`), not `import ncs_kernels.backends.triton as tb`: the attribute
`ncs_kernels.backends` is the function nk.backends(), which that form would walk through.
`from ncs_kernels.backends import cpu` (or cuda) gives that NativeBackend object.
"""
from .protocol import ENTRY_POINTS, Backend
from .registry import AUTO_ORDER, BACKENDS, SPECS, BackendSpec, load

__all__ = ["ENTRY_POINTS", "Backend", "AUTO_ORDER", "BACKENDS", "SPECS", "BackendSpec", "load"]


def __getattr__(name: str):
    # the native backends are objects, not modules: resolve `ncs_kernels.backends.cpu` / `.cuda` to them
    if name in ("cpu", "cuda"):
        return load(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
