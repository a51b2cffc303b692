"""Seeded synthetic data for benchmarks, tests and examples.

The project rule is that synthetic data generators live here, in
``ace_core.reference``, and that benchmarks, tests and examples import them,
so that every performance claim is measured on the same data.

Everything is generated on the host as NumPy arrays (``float32`` logits,
``int64`` labels); callers move them to their array library and device. The
defaults are the benchmark protocol of the benchmark protocol: ``B = 64``, ``T = 144``,
target lengths uniform in ``10..25`` and blank ``0``.

Two independent random streams are derived from ``seed``, one for the logits
and one for the targets, so the targets of a seed do not change when only
the logits' size changes (and vice versa for a fixed number of classes).

Examples
--------
>>> from ace_core.bench.data import synthetic_batch
>>> data = synthetic_batch(batch=2, steps=30, classes=5, seed=0)
>>> data.logits.shape, data.logits.dtype.name
((2, 30, 5), 'float32')
>>> data.targets.shape  # padded to max_length with the blank class
(2, 25)
>>> bool(((data.target_lengths >= 10) & (data.target_lengths <= 25)).all())
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "BATCH",
    "STEPS",
    "CLASSES",
    "MIN_TARGET_LENGTH",
    "MAX_TARGET_LENGTH",
    "BLANK",
    "SyntheticBatch",
    "synthetic_logits",
    "synthetic_targets",
    "synthetic_batch",
]

#: Batch size B of the benchmark protocol (the benchmark protocol).
BATCH = 64
#: Prediction steps T of the benchmark protocol.
STEPS = 144
#: Class counts C of the benchmark protocol (the paper's Table 5), blank included.
CLASSES = (37, 7357)
#: Shortest target of the benchmark protocol.
MIN_TARGET_LENGTH = 10
#: Longest target of the benchmark protocol; also the padded width S.
MAX_TARGET_LENGTH = 25
#: The blank class of the benchmark protocol.
BLANK = 0

_LOGITS_STREAM = 0
_TARGETS_STREAM = 1


class SyntheticBatch(NamedTuple):
    """One synthetic batch: logits and CTC-style padded targets (all NumPy)."""

    logits: np.ndarray  #: (B, T, C) float32
    targets: np.ndarray  #: (B, S) int64, padded with ``blank`` beyond ``target_lengths``
    target_lengths: np.ndarray  #: (B,) int64, uniform in ``[min_length, max_length]``
    input_lengths: np.ndarray  #: (B,) int64, all equal to T
    blank: int  #: the blank class


def _stream(seed: int, which: int) -> np.random.Generator:
    """An independent generator for ``which`` (logits or targets) of ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(2)[which])


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def synthetic_logits(
    batch: int = BATCH,
    steps: int = STEPS,
    classes: int = CLASSES[0],
    *,
    seed: int = 0,
    scale: float = 1.0,
) -> np.ndarray:
    """Seeded random logits, standard normal times ``scale``.

    Parameters
    ----------
    batch, steps, classes : int
        The shape ``(B, T, C)``.
    seed : int
        Non-negative seed; the same seed gives bitwise the same array.
    scale : float
        Standard deviation of the logits (larger values give peakier softmaxes).

    Returns
    -------
    numpy.ndarray
        Shape ``(batch, steps, classes)``, C-contiguous ``float32``, every
        page written (no lazily mapped zero pages).
    """
    shape = tuple(
        _check_positive(n, v) for n, v in (("batch", batch), ("steps", steps), ("classes", classes))
    )
    logits = _stream(seed, _LOGITS_STREAM).standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        logits *= np.float32(scale)
    return logits


def synthetic_targets(
    batch: int = BATCH,
    *,
    classes: int,
    min_length: int = MIN_TARGET_LENGTH,
    max_length: int = MAX_TARGET_LENGTH,
    blank: int = BLANK,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded CTC-style padded targets with lengths uniform in ``[min_length, max_length]``.

    Labels are uniform over the ``classes - 1`` non-blank classes.

    Parameters
    ----------
    batch : int
        B.
    classes : int
        C, the blank included (at least 2).
    min_length, max_length : int
        Inclusive range of the target lengths; ``max_length`` is also the
        padded width S.
    blank : int
        The blank class, in ``[0, classes)``; it never occurs inside a label
        and pads each row beyond its length.
    seed : int
        Non-negative seed.

    Returns
    -------
    targets : numpy.ndarray
        Shape ``(batch, max_length)``, ``int64``.
    target_lengths : numpy.ndarray
        Shape ``(batch,)``, ``int64``.
    """
    batch = _check_positive("batch", batch)
    classes = _check_positive("classes", classes)
    if classes < 2:
        raise ValueError(f"`classes` must be at least 2 (blank and one label class), got {classes}")
    if not 0 <= blank < classes:
        raise ValueError(f"`blank` must lie in [0, classes={classes}), got {blank}")
    if not 0 <= min_length <= max_length:
        raise ValueError(
            f"need 0 <= min_length <= max_length, got min_length={min_length}, max_length={max_length}"
        )
    rng = _stream(seed, _TARGETS_STREAM)
    lengths = rng.integers(min_length, max_length, size=batch, endpoint=True, dtype=np.int64)
    # Draw from the C - 1 non-blank classes, then step over the blank.
    labels = rng.integers(0, classes - 1, size=(batch, max_length), dtype=np.int64)
    labels += labels >= blank
    inside = np.arange(max_length)[None, :] < lengths[:, None]
    targets = np.where(inside, labels, np.int64(blank))
    return targets, lengths


def synthetic_batch(
    batch: int = BATCH,
    steps: int = STEPS,
    classes: int = CLASSES[0],
    *,
    min_length: int = MIN_TARGET_LENGTH,
    max_length: int = MAX_TARGET_LENGTH,
    blank: int = BLANK,
    seed: int = 0,
    scale: float = 1.0,
) -> SyntheticBatch:
    """Logits and targets of the benchmark protocol (the benchmark protocol) for one seed.

    Parameters
    ----------
    batch, steps, classes : int
        ``(B, T, C)``; the defaults are the protocol's B = 64, T = 144, C = 37.
    min_length, max_length, blank, seed
        As in :func:`synthetic_targets`; ``max_length`` must not exceed
        ``steps`` (each label must fit its input).
    scale : float
        As in :func:`synthetic_logits`.

    Returns
    -------
    SyntheticBatch
        NumPy arrays; every sample uses all ``steps`` steps.
    """
    steps = _check_positive("steps", steps)
    if max_length > steps:
        raise ValueError(f"`max_length`={max_length} exceeds `steps`={steps}: labels would not fit")
    logits = synthetic_logits(batch, steps, classes, seed=seed, scale=scale)
    targets, lengths = synthetic_targets(
        batch, classes=classes, min_length=min_length, max_length=max_length, blank=blank, seed=seed
    )
    input_lengths = np.full((logits.shape[0],), steps, dtype=np.int64)
    return SyntheticBatch(logits, targets, lengths, input_lengths, blank)
