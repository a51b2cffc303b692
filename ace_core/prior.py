"""The blank-prior start: the output bias that makes an untrained model predict the labels' class mix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._inputs import is_array
from ._interop import to_numpy

__all__ = ["blank_prior_bias"]


def _host_values(value: Any, name: str) -> np.ndarray:
    """``value`` (an array of any library, a list or a scalar) as float64 NumPy, checked finite and >= 0."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be numbers, got a bool")
    host = np.asarray(to_numpy(value) if is_array(value) else value)
    if host.dtype == np.bool_ or not (np.issubdtype(host.dtype, np.number)):
        raise TypeError(f"`{name}` must be numbers, got dtype {host.dtype}")
    host = host.astype(np.float64)
    if not np.all(np.isfinite(host)):
        raise ValueError(f"`{name}` must be finite")
    if np.any(host < 0):
        raise ValueError(f"`{name}` must not be negative")
    return host


def _blank_shares_from_counts(counts: Any, blank: int) -> tuple[np.ndarray, int]:
    host = _host_values(counts, "counts")
    if host.ndim != 2 or host.shape[0] == 0:
        raise ValueError(f"`counts` must have shape (B, C) with B >= 1, got {tuple(host.shape)}")
    classes = host.shape[1]
    if not 0 <= blank < classes:
        raise ValueError(f"`blank` must be a class index in [0, {classes}), got {blank}")
    totals = host.sum(axis=1)
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        raise ValueError(f"`counts` of sample {int(empty[0])} sum to 0: the sample has no step")
    return host[:, blank] / totals, classes


def _blank_shares_from_lengths(target_lengths: Any, input_lengths: Any) -> np.ndarray:
    labels = np.atleast_1d(_host_values(target_lengths, "target_lengths"))
    steps = _host_values(input_lengths, "input_lengths")
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"`target_lengths` must have shape (B,) with B >= 1, got {tuple(labels.shape)}")
    if steps.ndim not in (0, 1) or (steps.ndim == 1 and steps.shape != labels.shape):
        raise ValueError(
            f"`input_lengths` must be a number or have the shape of `target_lengths` {tuple(labels.shape)}, "
            f"got {tuple(steps.shape)}"
        )
    steps = np.broadcast_to(steps, labels.shape)
    bad = np.flatnonzero((steps == 0) | (labels > steps))
    if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"sample {b}: {labels[b]:g} labels do not fit in {steps[b]:g} steps "
            "(need 1 <= steps and labels <= steps)"
        )
    return 1.0 - labels / steps


def blank_prior_bias(
    counts: Any = None,
    *,
    target_lengths: Any = None,
    input_lengths: Any = None,
    num_classes: int | None = None,
    blank: int = 0,
) -> float:
    r"""The blank's output bias that starts the softmax at the labels' average blank share.

    With every other logit equal (and their biases 0), a blank logit of

    .. math:: b = \log \frac{p\,(C - 1)}{1 - p}

    gives :math:`y_\text{blank} = p` and :math:`y_k = (1 - p)/(C - 1)` at every
    step, where :math:`p = \operatorname{mean}_b N_{b,\text{blank}} / T_b` is
    the average blank share of the labels. That is the best start for ACE's
    loss before the model sees an image: it skips the first phase of
    training (learning how much is blank), whose large gradients otherwise
    leave Adam's step sizes small for a long plateau.

    Give either the ACE ``counts`` (blank entry included, as for
    :func:`ace_loss`), or ``target_lengths`` with ``input_lengths`` (the
    steps T, one number or one per sample) and ``num_classes``.

    Parameters
    ----------
    counts : array, shape (B, C), optional
        Per-class counts of a representative set of labels.
    target_lengths : array or sequence, shape (B,), optional
        Label lengths (characters or objects per sample).
    input_lengths : int or array, shape (B,), optional
        Steps per sample (cells for a 2D map); with ``target_lengths``.
    num_classes : int, optional
        C, the blank included; with ``target_lengths`` (``counts`` give it).
    blank : int

    Returns
    -------
    float
        The bias to give the blank's output unit (the other classes' at 0).

    Raises
    ------
    ValueError
        If the labels make every step blank (:math:`p = 1`, no character
        anywhere) or none blank (:math:`p = 0`): the bias would be infinite.

    Examples
    --------
    Text lines of 4-8 characters (6 on average) over 32 steps, 37 classes:

    >>> from ace_core import blank_prior_bias
    >>> import math
    >>> bias = blank_prior_bias(target_lengths=[4, 6, 8], input_lengths=32, num_classes=37)
    >>> round(bias, 3)
    5.05
    >>> round(math.exp(bias) / (math.exp(bias) + 36), 4), 1 - 6 / 32  # the blank's start probability
    (0.8125, 0.8125)
    """
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)):
        raise TypeError(f"`blank` must be an int, got {type(blank).__name__}")
    if (counts is None) == (target_lengths is None):
        raise ValueError("give either `counts`, or `target_lengths` with `input_lengths` and `num_classes`")
    if counts is not None:
        if input_lengths is not None or num_classes is not None:
            raise ValueError(
                "`counts` already hold the steps and the classes: drop `input_lengths`/`num_classes`"
            )
        shares, classes = _blank_shares_from_counts(counts, int(blank))
    else:
        if input_lengths is None or num_classes is None:
            raise ValueError("`target_lengths` need `input_lengths` (the steps T) and `num_classes`")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"`num_classes` must be an int, got {type(num_classes).__name__}")
        classes = int(num_classes)
        if not 0 <= blank < classes:
            raise ValueError(f"`blank` must be a class index in [0, {classes}), got {blank}")
        shares = _blank_shares_from_lengths(target_lengths, input_lengths)
    if classes < 2:
        raise ValueError(f"need the blank and at least one other class, got {classes} class(es)")
    share = float(np.mean(shares))
    if share >= 1.0:
        raise ValueError("the labels are all blank (average blank share 1): the blank prior bias is +inf")
    if share <= 0.0:
        raise ValueError(
            "the labels leave no step blank (average blank share 0): the blank prior bias is -inf"
        )
    return math.log(share * (classes - 1) / (1.0 - share))
