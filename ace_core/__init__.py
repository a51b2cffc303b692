"""ace_core: the Aggregation Cross-Entropy loss (Xie et al., CVPR 2019).

One exact, epsilon-free forward and closed-form backward, written against the
Python array API standard: it runs unchanged on NumPy, CuPy, PyTorch and JAX
arrays. ``import ace_core`` imports none of those frameworks but NumPy.
"""

from __future__ import annotations

from .counts import counts_from_targets, counts_with_background
from .decode import decode_counts, decode_greedy, decode_ordered
from .loss import (
    ACEResiduals,
    ace_backward,
    ace_forward,
    ace_loss,
    ace_loss_and_grad,
    entropy_floor,
    regression_ace_loss,
    regression_ace_loss_and_grad,
)
from .metrics import (
    CountingErrors,
    bag_accuracy,
    character_error_rate,
    counting_errors,
    edit_distance,
    sequence_accuracy,
)
from .prior import blank_prior_bias

__version__ = "0.1.0.dev0"

__all__ = [
    "ACEResiduals",
    "CountingErrors",
    "ace_backward",
    "ace_forward",
    "ace_loss",
    "ace_loss_and_grad",
    "bag_accuracy",
    "blank_prior_bias",
    "character_error_rate",
    "counting_errors",
    "counts_from_targets",
    "counts_with_background",
    "decode_counts",
    "decode_greedy",
    "decode_ordered",
    "edit_distance",
    "entropy_floor",
    "regression_ace_loss",
    "regression_ace_loss_and_grad",
    "sequence_accuracy",
]
