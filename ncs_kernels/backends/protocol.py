"""The entry points every backend provides (checked for each registered backend by
tests/kernels/test_backend_registry.py).

Inputs arrive validated (shapes, dtypes, devices, contiguity) from the op layer, ncs_kernels/ops;
a backend only computes. The semantics are those of the `torch` backend, backends/pytorch.py,
which is also the oracle of every test. A backend may take extra keyword-only arguments with
defaults (the Triton backward's `splits=`), never extra positional ones.
"""
from __future__ import annotations

from typing import Optional, Protocol, Tuple, runtime_checkable

import torch

Tensor = torch.Tensor
Grads = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]

ENTRY_POINTS = (
    "masked_linear_forward",
    "masked_linear_backward",
    "cross_masked_linear_forward",
    "cross_masked_linear_backward",
    "masked_adam_step_",
)


@runtime_checkable
class Backend(Protocol):
    def masked_linear_forward(self, x: Tensor, weight: Tensor, packed: Tensor,
                              bias: Optional[Tensor] = None) -> Tensor:
        """y = x (W ⊙ M)^T + b;  x [B, K], weight [N, K], packed int32 [N, ceil(K/32)]."""
        ...

    def masked_linear_backward(self, dy: Tensor, x: Tensor, weight: Tensor, packed: Tensor,
                               need_x: bool = True, need_w: bool = True, need_b: bool = True) -> Grads:
        """(dx, dW, db); dW exactly 0 where the bit is 0; None for what is not needed."""
        ...

    def cross_masked_linear_forward(self, emb: Tensor, weight: Tensor, packed: Tensor,
                                    bias: Optional[Tensor] = None) -> Tensor:
        """masked_linear_forward(feature_cross(emb), weight, packed, bias); emb [B, F, d]."""
        ...

    def cross_masked_linear_backward(self, dy: Tensor, emb: Tensor, weight: Tensor, packed: Tensor,
                                     need_emb: bool = True, need_w: bool = True, need_b: bool = True) -> Grads:
        """(d emb, dW, db) of cross_masked_linear_forward."""
        ...

    def masked_adam_step_(self, param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                          packed: Optional[Tensor], step: int, lr: float, beta1: float, beta2: float, eps: float,
                          weight_decay: float = 0.0, decoupled: bool = False) -> None:
        """One strict masked Adam (AdamW if decoupled) step in place on a 2-D param; packed None:
        unmasked. Native and Triton backends take grad and moments in param's dtype only."""
        ...
