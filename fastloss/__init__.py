"""fastloss: loss functions and their gradients, compiled with Numba for the CPU and NVIDIA GPUs.

Every loss is an object::

    value        = fl.mse(pred, target, reduction="mean", sample_weight=None)
    grad         = fl.mse.grad(pred, target, ...)
    value, grad  = fl.mse.value_and_grad(pred, target, ..., out=None)   # one pass over memory

Importing fastloss compiles nothing: each kernel is generated and compiled on first use, once
per dtype, and cached on disk (see ``fastloss._config.cache_dir``).
"""
from ._gradcheck import GradCheck, check_grad
from ._loss import (ElementwiseLoss, Loss, binary_target_variant, elementwise_loss, float32_variant,
                    fused_multiply_add, log1p_sum_form)
from .losses.binary import bce, bce_with_logits, hinge, sigmoid_focal, squared_hinge
from .losses.multiclass import cross_entropy, kl_div, multi_margin
from .losses.regression import huber, log_cosh, mae, mse, poisson_nll, quantile, smooth_l1

__version__ = "0.1.0"

#: Every built-in loss by name.
LOSSES = {
    loss.name: loss
    for loss in (mse, mae, huber, smooth_l1, log_cosh, quantile, poisson_nll,
                 bce, bce_with_logits, hinge, squared_hinge, sigmoid_focal,
                 cross_entropy, multi_margin, kl_div)
}

__all__ = ["LOSSES", "GradCheck", "ElementwiseLoss", "Loss", "binary_target_variant", "check_grad", "elementwise_loss", "float32_variant",
           "fused_multiply_add", "log1p_sum_form", *LOSSES]
