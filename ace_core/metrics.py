"""Recognition and counting metrics (host-side, on decoded label sequences).

Sequences are any iterables of hashable labels (lists of ints from
:func:`decode_greedy`, or strings). Counting metrics take ``(N, C)`` arrays of
any library and return NumPy values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np

from ._interop import to_numpy
from ._typing import Array

__all__ = [
    "edit_distance",
    "character_error_rate",
    "sequence_accuracy",
    "bag_accuracy",
    "CountingErrors",
    "counting_errors",
]

Label = Sequence[Hashable]


def edit_distance(prediction: Label, reference: Label) -> int:
    """Levenshtein distance: fewest insertions, deletions and substitutions.

    Examples
    --------
    >>> from ace_core import edit_distance
    >>> edit_distance("kitten", "sitting")
    3
    """
    a, b = _as_list(prediction, "prediction"), _as_list(reference, "reference")
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _as_list(label: Label, name: str) -> list:
    try:
        return list(label)
    except TypeError:
        raise TypeError(f"`{name}` must be a sequence of labels, got {type(label).__name__}") from None


def _check_pairs(predictions: Sequence[Label], references: Sequence[Label]) -> None:
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(f"`{name}` must be a sequence of label sequences, got {type(value).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; give one of each per sample"
        )
    if len(references) == 0:
        raise ValueError("no samples given")


def character_error_rate(predictions: Sequence[Label], references: Sequence[Label]) -> float:
    """``Σ edit_distance / Σ len(reference)`` over the samples (the corpus-level CER).

    Examples
    --------
    >>> from ace_core import character_error_rate
    >>> character_error_rate([[1, 2], [3]], [[1, 2, 2], [3]])
    0.25
    """
    _check_pairs(predictions, references)
    total = sum(len(r) for r in references)
    errors = sum(edit_distance(p, r) for p, r in zip(predictions, references, strict=True))
    if total == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / total


def sequence_accuracy(predictions: Sequence[Label], references: Sequence[Label]) -> float:
    """Fraction of samples whose prediction equals the reference exactly.

    Examples
    --------
    >>> from ace_core import sequence_accuracy
    >>> sequence_accuracy([[1, 2], [3]], [[1, 2], [4]])
    0.5
    """
    _check_pairs(predictions, references)
    return sum(list(p) == list(r) for p, r in zip(predictions, references, strict=True)) / len(references)


def bag_accuracy(predictions: Sequence[Label], references: Sequence[Label]) -> float:
    """Fraction of samples whose prediction holds the reference's labels, in any order.

    The multiset match that suits 2D recognition, where ACE learns no order.

    Examples
    --------
    >>> from ace_core import bag_accuracy
    >>> bag_accuracy([[2, 1], [3, 3]], [[1, 2], [3]])
    0.5
    """
    _check_pairs(predictions, references)
    matches = sum(Counter(p) == Counter(r) for p, r in zip(predictions, references, strict=True))
    return matches / len(references)


class CountingErrors(NamedTuple):
    """Counting metrics per class and their means over classes."""

    rmse: np.ndarray  #: (C,) sqrt(mean_i (ĉ - c)²)
    rel_rmse: np.ndarray  #: (C,) sqrt(mean_i (ĉ - c)² / (c + 1))
    mean_rmse: float  #: mRMSE
    mean_rel_rmse: float  #: m-relRMSE


def counting_errors(predicted: Array, true: Array, *, classes: Sequence[int] | None = None) -> CountingErrors:
    r"""RMSE and relRMSE of predicted counts, per class and averaged over classes.

    .. math:: \mathrm{RMSE}_k = \sqrt{\tfrac1n \sum_i (\hat c_{ik} - c_{ik})^2}, \quad
              \mathrm{relRMSE}_k = \sqrt{\tfrac1n \sum_i \frac{(\hat c_{ik} - c_{ik})^2}{c_{ik} + 1}}

    Parameters
    ----------
    predicted, true : arrays of shape (n, C)
        Counts per image and class (e.g. from :func:`decode_counts`).
    classes : sequence of int, optional
        Columns to score (e.g. all but the background), in ``[0, C)``; all by default.

    Raises
    ------
    ValueError
        Shapes that differ or are not ``(n >= 1, C)``, ``classes`` outside ``[0, C)`` or empty.
    TypeError
        Non-numeric counts, ``classes`` that are not ints.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import counting_errors
    >>> errors = counting_errors(np.array([[1, 2], [3, 3]]), np.array([[1, 3], [3, 3]]))
    >>> errors.rmse.round(4).tolist(), round(errors.mean_rel_rmse, 4)
    ([0.0, 0.7071], 0.1768)
    """
    p, t = _counts_on_host(predicted, "predicted"), _counts_on_host(true, "true")
    if p.shape != t.shape or p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(
            f"`predicted` and `true` must share a shape (n >= 1, C), got {p.shape} and {t.shape}"
        )
    if classes is not None:
        columns = _class_columns(classes, p.shape[1])
        p, t = p[:, columns], t[:, columns]
    squared = (p - t) ** 2
    rmse = np.sqrt(squared.mean(axis=0))
    rel_rmse = np.sqrt((squared / (t + 1.0)).mean(axis=0))
    return CountingErrors(rmse, rel_rmse, float(rmse.mean()), float(rel_rmse.mean()))


def _counts_on_host(counts: Array, name: str) -> np.ndarray:
    try:
        host = np.asarray(to_numpy(counts))
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be an array of counts: {error}") from None
    if not (np.issubdtype(host.dtype, np.integer) or np.issubdtype(host.dtype, np.floating)):
        raise TypeError(f"`{name}` must hold integer or floating counts, got dtype {host.dtype}")
    return host.astype(np.float64)


def _class_columns(classes: Sequence[int], width: int) -> list[int]:
    """``classes`` as column indices in ``[0, C)``; ``TypeError``/``ValueError`` naming ``classes``."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"`classes` must be a sequence of ints, got {type(classes).__name__}")
    columns = list(classes)
    for index in columns:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"`classes` must hold ints, got {index!r} ({type(index).__name__})")
        if not 0 <= index < width:
            raise ValueError(f"`classes` must lie in [0, C={width}), got {int(index)}")
    if not columns:
        raise ValueError("`classes` is empty; give at least one column to score")
    return [int(index) for index in columns]
