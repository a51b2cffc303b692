"""Reading predictions out: greedy label sequences and aggregated counts."""

from __future__ import annotations

import math
from typing import Any, Literal

from ._dispatch import kernel_for
from ._inputs import (
    PreparedScores,
    check_class_index,
    check_flag,
    prepare_scores,
    raise_first_failure,
    sample_message,
)
from ._interop import to_numpy
from ._kernel import where_valid
from ._namespace import is_lazy
from ._typing import Array, ArrayNamespace

__all__ = ["decode_greedy", "decode_counts", "decode_ordered"]


def _prepare_scores(
    scores: Array, input_lengths: Any, mask: Array | None, xp: ArrayNamespace | None
) -> PreparedScores:
    """Scores and valid steps checked as for the loss; decoding needs no counts."""
    return prepare_scores(scores, input_lengths=input_lengths, mask=mask, xp=xp)


def decode_greedy(
    scores: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    blank: int = 0,
    collapse_repeats: bool = True,
    order: Literal["row", "column"] = "row",
    xp: ArrayNamespace | None = None,
) -> list[list[int]]:
    """Best class per step, repeats collapsed (as CTC decodes), blanks dropped.

    Parameters
    ----------
    scores : array, shape (B, T, C) or (B, H, W, C)
        Logits, log-probabilities or probabilities (the argmax is the same).
    input_lengths, mask : optional
        Valid steps, as for :func:`ace_loss`; masked steps are skipped.
    blank : int
        The class that is dropped, in ``[0, C)`` (else ``ValueError``).
    collapse_repeats : bool
        Merge runs of one class before dropping blanks. The original ACE code
        does not (``False``), which suits 2D maps where a character covers
        several cells of one row.
    order : {"row", "column"}
        Reading order of a 2D map: rows top to bottom, left to right within a
        row (``"row"``, the flattening of the loss), or columns left to right,
        top to bottom within a column (``"column"``, as for text lines).
    xp : namespace, optional

    Returns
    -------
    list of list of int
        One label sequence per sample (host-side Python ints).

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import decode_greedy
    >>> best = np.array([[0, 3, 3, 0, 3, 1, 0]])  # best class per step
    >>> decode_greedy(np.eye(4)[best])
    [[3, 3, 1]]
    """
    if order not in ("row", "column"):
        raise ValueError(f"`order` must be 'row' or 'column', got {order!r}")
    prep = _prepare_scores(scores, input_lengths, mask, xp)
    xp, batch = prep.xp, prep.scores.shape[0]
    blank = check_class_index(blank, "blank", prep.scores.shape[-1])
    collapse_repeats = check_flag(collapse_repeats, "collapse_repeats")
    best = xp.argmax(prep.scores, axis=-1)
    valid = prep.valid
    if valid is None:
        valid = xp.ones(best.shape, dtype=xp.bool, device=prep.device)
    if scores.ndim == 4 and order == "column":
        height, width = scores.shape[1], scores.shape[2]
        best = xp.reshape(xp.permute_dims(xp.reshape(best, (batch, height, width)), (0, 2, 1)), (batch, -1))
        valid = xp.reshape(xp.permute_dims(xp.reshape(valid, (batch, height, width)), (0, 2, 1)), (batch, -1))
    best_host, valid_host = to_numpy(best), to_numpy(valid)
    decoded = []
    for row, keep in zip(best_host, valid_host, strict=True):
        labels: list[int] = []
        previous = None
        for label in row[keep].tolist():
            if label != blank and not (collapse_repeats and label == previous):
                labels.append(label)
            previous = label
        decoded.append(labels)
    return decoded


def decode_counts(
    scores: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    from_logits: bool = True,
    xp: ArrayNamespace | None = None,
) -> Array:
    r"""Rounded aggregated probabilities: the counting readout of ACE.

    .. math:: \hat N_{bk} = \operatorname{round}\Big(\sum_{t \le T_b} y_{btk}\Big)

    Parameters
    ----------
    scores : array, shape (B, T, C) or (B, H, W, C)
        Logits (or probabilities with ``from_logits=False``).
    input_lengths, mask : optional
        Valid steps, as for :func:`ace_loss`.
    from_logits : bool
    xp : namespace, optional

    Returns
    -------
    int array, shape (B, C)
        On the device of ``scores``; the blank entry is the predicted background.

    Raises
    ------
    ValueError
        Where values can be checked: a sample whose scores hold NaN or
        infinities (its mass is not finite), named. Under tracing
        (``jax.jit``) such a sample's non-finite entries read as -1.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import decode_counts
    >>> probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]])
    >>> decode_counts(probs, from_logits=False)
    array([[1, 2]])
    """
    prep = _prepare_scores(scores, input_lengths, mask, xp)
    xp = prep.xp
    values = xp.astype(prep.scores, prep.dtype)
    if check_flag(from_logits, "from_logits"):
        peak = xp.max(values, axis=-1, keepdims=True)
        exps = xp.exp(values - peak)
        values = exps / xp.sum(exps, axis=-1, keepdims=True)
    mass = xp.sum(where_valid(xp, prep.valid, values, 0), axis=1)
    finite = xp.isfinite(mass)
    if not is_lazy(mass):
        raise_first_failure(xp, [(xp.any(~finite, axis=1), _non_finite_message)])
    integer = xp.__array_namespace_info__().default_dtypes(device=prep.device)["integral"]
    # Under tracing a non-finite mass cannot raise: it reads as -1, never as a cast of NaN.
    return xp.astype(xp.where(finite, xp.round(mass), -1), integer)


def _non_finite_message(found: tuple[int, int]) -> str:
    return (
        f"`scores` of {sample_message(found)} give a non-finite class mass (NaN or infinite scores); "
        "no count can be read"
    )


def _log_mass_and_normalizer(prep: PreparedScores) -> tuple[Array, Array, Array]:
    """``(log Σ_t y (B, C), step_max (B, T), step_log_sum (B, T))`` from the loss's forward kernel.

    The kernel (a library's fast path where there is one) gives the mass of
    every class in one pass over ``(B, T, C)`` without keeping ``y``; the
    decoder then needs ``y`` only for the few classes that occur.
    """
    step_max, step_log_sum, *mass_parts = kernel_for(prep.xp).forward_logits(
        prep.xp, prep.scores, prep.valid, prep.dtype
    )
    # A kernel may return the log-mass whole or split as a shift plus a log-sum.
    log_mass = mass_parts[0] if len(mass_parts) == 1 else mass_parts[0] + mass_parts[1]
    return log_mass, step_max, step_log_sum


def _reading_order(xp: ArrayNamespace, values: Array, shape: tuple[int, ...], order: str) -> Array:
    """``(B, T, K)`` values of a 2D map ``shape = (B, H, W, C)`` put in column order if asked."""
    if len(shape) == 3 or order == "row":
        return values
    batch, height, width = shape[:3]
    grid = xp.reshape(values, (batch, height, width, values.shape[-1]))
    return xp.reshape(xp.permute_dims(grid, (0, 2, 1, 3)), (batch, height * width, values.shape[-1]))


def decode_ordered(
    scores: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    blank: int = 0,
    from_logits: bool = True,
    order: Literal["row", "column"] = "row",
    xp: ArrayNamespace | None = None,
) -> list[list[int]]:
    r"""Count-ordered reading: each class as often as its rounded mass, placed where its mass accrues.

    For every class :math:`k \ne` ``blank``, with the cumulative mass
    :math:`M_{bk}(t) = \sum_{t' \le t,\ t' \text{ valid}} y_{bt'k}`, the
    :math:`j`-th occurrence sits where :math:`M_{bk}` crosses
    :math:`j - \tfrac12`, interpolated linearly inside the step:

    .. math:: \tau_{bkj} = t + \frac{j - \tfrac12 - M_{bk}(t - 1)}{y_{btk}}
       \quad\text{for the step } t \text{ with } M_{bk}(t-1) < j - \tfrac12 \le M_{bk}(t).

    So class :math:`k` occurs :math:`n_{bk} = \operatorname{round}(\sum_t y_{btk})`
    times (its rounded mass, exactly as :func:`decode_counts` reads it, half to
    even), and the
    label sequence is every occurrence sorted by :math:`\tau` (ties: the
    smaller class id first). Unlike :func:`decode_greedy`, a character whose
    unit of mass is spread over several steps, none of them above the blank,
    is still read, and two equal neighbours are read twice.

    Parameters
    ----------
    scores : array, shape (B, T, C) or (B, H, W, C)
        Logits or log-probabilities, or probabilities with ``from_logits=False``.
    input_lengths, mask : optional
        Valid steps, as for :func:`ace_loss`; masked steps carry no mass.
    blank : int
        The class that is not read.
    from_logits : bool
        ``False``: ``scores`` are probabilities (each step summing to 1).
    order : {"row", "column"}
        Reading order of a 2D map, as for :func:`decode_greedy`: the mass
        accrues over the cells in rows top to bottom, left to right within a
        row (``"row"``), or in columns left to right, top to bottom within a
        column (``"column"``).
    xp : namespace, optional

    Returns
    -------
    list of list of int
        One label sequence per sample (host-side Python ints).

    Raises
    ------
    ValueError
        For a bad ``order`` or ``blank``, bad lengths or masks (as for
        :func:`ace_loss`), and a sample whose scores hold NaN or infinities
        (its mass is not finite), named.

    Notes
    -----
    The class masses come from the loss's forward kernel (one pass over
    ``(B, T, C)``); the cumulative sums, crossings and the sort then run on the
    device over the classes that occur at least once, gathered per sample,
    and only the sorted labels come back to the host.

    Examples
    --------
    Two ``a`` (class 1) spread over four steps, never above the blank, then
    a ``b`` (class 2):

    >>> import numpy as np
    >>> from ace_core import decode_greedy, decode_ordered
    >>> y = np.array([[[0.6, 0.4, 0.0]] * 4 + [[0.4, 0.0, 0.6]]])
    >>> decode_greedy(y)
    [[2]]
    >>> decode_ordered(y, from_logits=False)
    [[1, 1, 2]]
    """
    if order not in ("row", "column"):
        raise ValueError(f"`order` must be 'row' or 'column', got {order!r}")
    prep = _prepare_scores(scores, input_lengths, mask, xp)
    xp, device, dtype = prep.xp, prep.device, prep.dtype
    batch, steps, classes = prep.scores.shape
    blank = check_class_index(blank, "blank", classes)
    if from_logits:
        log_mass, step_max, step_log_sum = _log_mass_and_normalizer(prep)
        mass = xp.exp(log_mass)
    else:
        mass = xp.sum(where_valid(xp, prep.valid, xp.astype(prep.scores, dtype), 0), axis=1)
    # The decoder syncs with the host anyway (its output is host lists), so it always checks.
    raise_first_failure(xp, [(xp.any(~xp.isfinite(mass), axis=1), _non_finite_message)])
    class_ids = xp.arange(classes, device=device)
    # The multiset is decode_counts' (round half to even); the crossings below only place it.
    rounded = xp.round(mass)
    occurs = (rounded >= 1) & (class_ids != blank)[None, :]
    width = int(xp.max(xp.sum(xp.astype(occurs, xp.int32), axis=1)))
    if width == 0:
        return [[] for _ in range(batch)]

    # The classes that occur, first and in increasing id (a stable sort), then padding.
    slots = xp.argsort(xp.astype(~occurs, xp.int8), axis=1, stable=True)[:, :width]  # (B, K)
    slot_occurs = xp.take_along_axis(occurs, slots, axis=1)
    slot_count = xp.take_along_axis(rounded, slots, axis=1)  # (B, K): n of each gathered class
    gathered = xp.take_along_axis(
        prep.scores, xp.broadcast_to(slots[:, None, :], (batch, steps, width)), axis=2
    )
    gathered = xp.astype(gathered, dtype)
    if from_logits:
        y = xp.exp((gathered - step_max[:, :, None]) - step_log_sum[:, :, None])
    else:
        y = gathered
    y = where_valid(xp, prep.valid, y, 0)
    y = _reading_order(xp, y, scores.shape, order)

    cumulative = xp.cumulative_sum(y, axis=1)  # M(t)
    before = cumulative - y  # M(t - 1)
    # floor(M + 1/2) occurrences are complete after a step; y <= 1 adds at most one per step. The
    # count is capped at n, so that a cumulative sum rounded across k + 1/2 adds no extra occurrence.
    level = xp.floor(cumulative + 0.5)
    crossed = (level > xp.floor(before + 0.5)) & (level <= slot_count[:, None, :]) & slot_occurs[:, None, :]
    step_index = xp.astype(xp.arange(steps, device=device), dtype)[None, :, None]
    inside = xp.clip((level - 0.5 - before) / xp.where(crossed, y, 1), 0.0, 1.0)
    position = xp.where(crossed, step_index + inside, math.inf)

    # Stable sort over (step, slot) order: equal positions keep the smaller class id first.
    position = xp.reshape(position, (batch, steps * width))
    found = xp.sum(xp.astype(xp.reshape(crossed, (batch, steps * width)), xp.int32), axis=1)
    longest = int(xp.max(found))
    if longest == 0:
        return [[] for _ in range(batch)]
    first = xp.argsort(position, axis=1, stable=True)[:, :longest]
    labels = xp.broadcast_to(slots[:, None, :], (batch, steps, width))
    labels = xp.take_along_axis(xp.reshape(labels, (batch, steps * width)), first, axis=1)
    labels_host, found_host = to_numpy(labels), to_numpy(found)
    return [row[:n].tolist() for row, n in zip(labels_host, found_host.tolist(), strict=True)]
