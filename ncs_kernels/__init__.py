"""ncs_kernels: bit-packed task masks, masked and feature-cross-fused linear ops, masked Adam.

    import ncs_kernels as nk
    nk.backends()                      # e.g. ['torch', 'cpu'] here, [..., 'triton', 'cuda'] on a GPU
    packed = nk.pack_mask(mask)        # bool [N, K] -> int32 [N, ceil(K/32)]
    y = nk.masked_linear(x, w, packed, bias, backend="auto")
    y = nk.cross_masked_linear(emb, w, packed, bias)   # == masked_linear(feature_cross(emb), ...)
"""
# The subpackage ncs_kernels.backends (the backends and their registry) must be imported before the
# function backends() is bound: importing a subpackage for the first time sets the attribute of
# the same name on its parent, which would otherwise replace nk.backends with a module.
from . import backends as _backend_modules  # noqa: F401  (keep above the next line)
from ._backends import BACKENDS, backends, native, native_error, use_backend
from .layers import CrossMaskedLinear, MaskedLinear, masked_modules, model_task_masks
from .masks import (
    density,
    load_masks,
    ones_mask,
    overlap,
    pack_mask,
    popcount,
    save_masks,
    unpack_mask,
    zeros_mask,
)
from .ops import (cross_masked_linear, cross_width, feature_cross, masked_adam_step_, masked_adam_task_step_,
                  masked_linear)
from .optim import MOMENTS, MaskedAdam, MaskedAdamW
from . import reference

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "backends", "native", "native_error", "use_backend",
    "pack_mask", "unpack_mask", "ones_mask", "zeros_mask", "popcount", "density", "overlap",
    "save_masks", "load_masks",
    "masked_linear", "cross_masked_linear", "feature_cross", "cross_width", "masked_adam_step_",
    "masked_adam_task_step_",
    "MaskedLinear", "CrossMaskedLinear", "masked_modules", "model_task_masks",
    "MaskedAdam", "MaskedAdamW", "reference",
]
