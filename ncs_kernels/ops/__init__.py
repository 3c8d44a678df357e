"""One module per op family: argument checks, backend dispatch, autograd, torch.library."""
from .cross_masked_linear import cross_masked_linear
from .feature_cross import cross_width, feature_cross
from .masked_adam import masked_adam_step_, masked_adam_task_step_
from .masked_linear import masked_linear

__all__ = ["masked_linear", "cross_masked_linear", "feature_cross", "cross_width", "masked_adam_step_",
           "masked_adam_task_step_"]
