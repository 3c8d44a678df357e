"""The Triton backend: the five entry points of backends/protocol.Backend as Triton kernels.

Runs on CUDA tensors (fp32, fp16, bf16; fp32 accumulation), and on CPU tensors under the Triton
interpreter (TRITON_INTERPRET=1 set before triton is imported; fp32 only, as bf16 tl.dot is
wrong there).
"""
from .masked_linear import masked_linear_backward, masked_linear_forward
from .cross_masked_linear import cross_masked_linear_backward, cross_masked_linear_forward
from .masked_adam import masked_adam_step_

__all__ = [
    "masked_linear_forward", "masked_linear_backward",
    "cross_masked_linear_forward", "cross_masked_linear_backward",
    "masked_adam_step_",
]
