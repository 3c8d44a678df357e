"""masked_linear: y = x (W ⊙ M)^T + b with a bit-packed mask M, and its masked backward.

Registered as the custom ops ncs::masked_linear and ncs::masked_linear_backward (fake impls
included, so torch.compile(fullgraph=True) traces through it); see _masked_family.py.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends
from .._validate import check_linear_args
from ._masked_family import define_masked_op

_apply = define_masked_op("masked_linear", "masked_linear_forward", "masked_linear_backward")


def masked_linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor,
                  bias: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """y = x (W ⊙ M)^T + b.

    x [B, K], weight [N, K] (nn.Linear layout), packed int32 [N, ceil(K/32)] (see pack_mask),
    bias [N] or None. Gradients: dx = dy (W ⊙ M), dW = (dy^T x) ⊙ M written with zeros where
    the bit is 0 (no float mask is materialised), db = sum dy.
    backend: "auto" | "torch" | "cpu" | "triton" | "cuda".
    """
    check_linear_args(x, weight, packed, bias)
    return _apply(x, weight, packed, bias, _backends.resolve(backend, x))
