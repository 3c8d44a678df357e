"""cross_masked_linear: masked_linear(feature_cross(emb), W, M, b) without materialising the
[B, F*F + F*d] crossed input in forward or its gradient in backward.

Only `emb` (and the weight and mask) are saved for backward; backends rebuild what they need.
Registered as ncs::cross_masked_linear and ncs::cross_masked_linear_backward (_masked_family.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import check_cross_args
from ._masked_family import define_masked_op

_apply = define_masked_op("cross_masked_linear", "cross_masked_linear_forward", "cross_masked_linear_backward")


def cross_masked_linear(emb: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                        bias: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """== masked_linear(feature_cross(emb), weight, packed, bias), fused.

    emb [B, F, d]; weight [N, F*F + F*d] whose first F*F columns read the Gram matrix
    emb·embᵀ (row-major) and the rest the flattened emb; packed int32 [N, ceil((F*F+F*d)/32)].
    """
    check_cross_args(emb, weight, packed, bias)
    return _apply(emb, weight, packed, bias, _backends.resolve(backend, emb))
