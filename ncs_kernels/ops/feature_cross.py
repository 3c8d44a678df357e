"""feature_cross: emb [B, F, d] -> [B, F*F + F*d] (Gram matrix row-major, then flat emb).

Differentiable through plain PyTorch ops (bmm + cat), which autograd already handles well;
the fused path that avoids materialising this tensor is cross_masked_linear.
"""
from __future__ import annotations

import torch

from .._validate import FLOAT_DTYPES, check_tensor
from ..backends.pytorch import feature_cross as _reference_feature_cross


def feature_cross(emb: torch.Tensor) -> torch.Tensor:
    """The full F x F inner-product matrix of each sample's field embeddings, row-major,
    concatenated with the flattened embeddings: width F*F + F*d (1680 for F=20, d=64)."""
    check_tensor("emb", emb, ndim=3, dtypes=FLOAT_DTYPES, contiguous=False)
    return _reference_feature_cross(emb)


def cross_width(num_fields: int, embed_dim: int) -> int:
    return num_fields * num_fields + num_fields * embed_dim
