"""Reading predictions out: greedy label sequences and aggregated counts."""

from __future__ import annotations

from typing import Any, Literal

from array_api_compat import device as _device

from ._inputs import Prepared, prepare
from ._kernel import where_valid
from ._namespace import arrays_namespace, to_numpy
from ._typing import Array, ArrayNamespace

__all__ = ["decode_greedy", "decode_counts"]


def _prepare_scores(
    scores: Array, input_lengths: Any, mask: Array | None, xp: ArrayNamespace | None
) -> Prepared:
    """Scores and valid steps checked as for the loss; decoding needs no counts."""
    xp = arrays_namespace(scores, input_lengths, mask, xp=xp)
    if scores.ndim not in (3, 4):
        raise ValueError(f"`scores` must have shape (B, T, C) or (B, H, W, C), got {tuple(scores.shape)}")
    no_counts = xp.zeros((scores.shape[0], scores.shape[-1]), dtype=xp.int32, device=_device(scores))
    return prepare(
        scores, no_counts, input_lengths=input_lengths, mask=mask, zero_infinity=True, check_sums=False, xp=xp
    )


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
        The class that is dropped.
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
    if from_logits:
        peak = xp.max(values, axis=-1, keepdims=True)
        exps = xp.exp(values - peak)
        values = exps / xp.sum(exps, axis=-1, keepdims=True)
    mass = xp.sum(where_valid(xp, prep.valid, values, 0), axis=1)
    integer = xp.__array_namespace_info__().default_dtypes(device=prep.device)["integral"]
    return xp.astype(xp.round(mass), integer)
