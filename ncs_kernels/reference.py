"""The pure-PyTorch definition of every op: the oracle of all tests (`nk.reference`).

It is the `torch` backend, whose code lives in ncs_kernels/backends/pytorch.py; this module is
its public name.
"""
from .backends.pytorch import (  # noqa: F401
    apply_mask,
    cross_masked_linear_backward,
    cross_masked_linear_forward,
    feature_cross,
    feature_cross_backward,
    masked_adam_step_,
    masked_adam_task_step_,
    masked_linear_backward,
    masked_linear_forward,
)

__all__ = ["apply_mask", "masked_linear_forward", "masked_linear_backward", "feature_cross",
           "feature_cross_backward", "cross_masked_linear_forward", "cross_masked_linear_backward",
           "masked_adam_step_", "masked_adam_task_step_"]
