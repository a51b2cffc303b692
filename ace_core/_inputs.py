"""Checking the inputs of the loss (SPEC section 2) and bringing them to one form.

Every loss function goes through :func:`prepare`: scores become ``(B, T, C)``
(a 2D map is flattened row-major, h outer and w inner), the valid steps become
a boolean ``(B, T)`` array and ``T_b`` a float ``(B,)`` array. Shape and dtype
errors are raised always; errors that depend on values are raised only where
the arrays are concrete, since a ``jax.jit`` tracer has no values to check.
Nothing here writes to an input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._namespace import arrays_namespace, common_device, compute_dtype, is_floating, is_integer, is_lazy
from ._typing import Array, ArrayNamespace, Device, DType

__all__ = ["Prepared", "prepare", "first_bad_sample", "as_index_array", "is_array"]


@dataclass(frozen=True)
class Prepared:
    """The inputs of one loss call, checked and in the kernel's layout."""

    xp: ArrayNamespace
    device: Device
    scores: Array  # (B, T, C), the caller's dtype (a reshape, never a copy)
    shape: tuple[int, ...]  # the caller's shape of ``scores``
    dtype: DType  # accumulation dtype (float32 for half precision)
    counts: Array  # (B, C) in ``dtype``
    valid: Array | None  # (B, T) bool; None when every step is valid (no lengths, no mask)
    lengths: Array  # (B,) T_b in ``dtype``
    feasible: Array  # (B,) bool: T_b > 0 and no negative count
    #: True when every sample is known, on the host, to be feasible (checked eagerly, no zero_infinity)
    all_feasible: bool = False


def as_index_array(
    value: Any, name: str, batch: int | None, xp: ArrayNamespace, device: Device
) -> Array | None:
    """An integer scalar (one value for every sample) or a list becomes an array on ``device``.

    Arrays pass through unchanged; ``batch=None`` means a scalar is not accepted.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be integers, got a bool")
    if isinstance(value, numbers.Integral):
        if batch is None:
            raise TypeError(f"`{name}` must be a sequence or array of shape (B,), got {value!r}")
        return xp.full((batch,), int(value), device=device)
    if isinstance(value, (list, tuple)):
        return xp.asarray(list(value), device=device)
    return value


def is_array(value: Any) -> bool:
    """True for an array (not None, a Python/NumPy scalar or a list)."""
    return value is not None and not isinstance(value, (numbers.Number, list, tuple))


def first_bad_sample(xp: ArrayNamespace, bad: Array) -> tuple[int, int] | None:
    """``(index of the first True, how many are True)`` of a ``(B,)`` bool array, or None."""
    total = int(xp.sum(xp.astype(bad, xp.int32)))
    if total == 0:
        return None
    return int(xp.argmax(xp.astype(bad, xp.int8))), total


def _sample_message(found: tuple[int, int]) -> str:
    index, total = found
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"sample {index}{more}"


def _check_scores(xp: ArrayNamespace, scores: Array) -> None:
    if scores.ndim not in (3, 4):
        raise ValueError(
            "`scores` must have shape (B, T, C) for 1D or (B, H, W, C) for 2D prediction, "
            f"got shape {tuple(scores.shape)}"
        )
    if not is_floating(xp, scores.dtype):
        raise TypeError(f"`scores` must be a real floating array, got dtype {scores.dtype}")
    if any(n == 0 for n in (scores.shape[0], scores.shape[-1])):
        raise ValueError(f"`scores` needs B >= 1 and C >= 1, got shape {tuple(scores.shape)}")


def _check_counts(xp: ArrayNamespace, counts: Array, batch: int, classes: int) -> None:
    if counts.ndim != 2 or tuple(counts.shape) != (batch, classes):
        raise ValueError(
            f"`counts` must have shape (B, C) = ({batch}, {classes}) to match `scores`, "
            f"got shape {tuple(counts.shape)}"
        )
    if not (is_integer(xp, counts.dtype) or is_floating(xp, counts.dtype)):
        raise TypeError(f"`counts` must be an integer or floating array, got dtype {counts.dtype}")


def _valid_steps(
    xp: ArrayNamespace,
    scores: Array,
    input_lengths: Array | None,
    mask: Array | None,
    device: Device,
) -> Array | None:
    batch, steps = scores.shape[0], scores.shape[1]
    if scores.ndim == 4:
        steps = scores.shape[1] * scores.shape[2]
    if input_lengths is not None and mask is not None:
        raise ValueError("give either `input_lengths` or `mask`, not both")
    if input_lengths is not None:
        if scores.ndim == 4:
            raise ValueError("`input_lengths` is for 1D scores (B, T, C); give a `mask` for 2D scores")
        if not is_integer(xp, input_lengths.dtype):
            raise TypeError(f"`input_lengths` must be integers, got dtype {input_lengths.dtype}")
        if input_lengths.ndim != 1 or input_lengths.shape[0] != batch:
            raise ValueError(
                f"`input_lengths` must have shape (B,) = ({batch},), got {tuple(input_lengths.shape)}"
            )
        positions = xp.arange(steps, dtype=input_lengths.dtype, device=device)
        return positions[None, :] < input_lengths[:, None]
    if mask is not None:
        if mask.dtype != xp.bool:
            raise TypeError(f"`mask` must be a boolean array, got dtype {mask.dtype}")
        expected = tuple(scores.shape[:-1])
        if tuple(mask.shape) not in (expected, (batch, steps)):
            raise ValueError(
                f"`mask` must have shape {expected} (or flattened ({batch}, {steps})), "
                f"got {tuple(mask.shape)}"
            )
        return xp.reshape(mask, (batch, steps))
    # Known without looking at values, so the kernels can skip masking (also under jit).
    return None


def prepare(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    zero_infinity: bool = False,
    check_sums: bool = True,
    xp: ArrayNamespace | None = None,
) -> Prepared:
    """Check the inputs of a loss call and bring them to the kernel's layout.

    Raises
    ------
    TypeError
        Arrays from two libraries, non-floating scores, non-numeric counts,
        non-integer lengths, non-boolean mask.
    ValueError
        Wrong shapes, two devices, lengths outside ``[0, T]``, fractional
        counts, count rows that do not sum to ``T_b``, and (unless
        ``zero_infinity``) samples with ``T_b = 0`` or a negative count.
    """
    xp = arrays_namespace(scores, counts, input_lengths, mask, xp=xp)
    device = common_device(
        ("scores", "counts", "input_lengths", "mask"),
        (scores, counts, input_lengths if is_array(input_lengths) else None, mask),
    )
    _check_scores(xp, scores)
    batch, classes = scores.shape[0], scores.shape[-1]
    _check_counts(xp, counts, batch, classes)
    input_lengths = as_index_array(input_lengths, "input_lengths", batch, xp, device)
    valid = _valid_steps(xp, scores, input_lengths, mask, device)
    steps = math.prod(scores.shape[1:-1])
    scores3 = xp.reshape(scores, (batch, steps, classes)) if scores.ndim == 4 else scores

    dtype = compute_dtype(xp, scores.dtype)
    counts_f = xp.astype(counts, dtype)
    if valid is None:
        lengths = xp.full((batch,), steps, dtype=dtype, device=device)
    else:
        lengths = xp.sum(xp.astype(valid, dtype), axis=1)
    feasible = (lengths > 0) & xp.all(counts_f >= 0, axis=1)

    eager = not is_lazy(scores, counts, input_lengths, mask)
    if eager:
        checks = _value_checks(xp, counts, counts_f, lengths, feasible, zero_infinity, check_sums)
        if input_lengths is not None:
            checks.insert(0, _length_check(xp, input_lengths, steps))
        _raise_first_failure(xp, checks)
    return Prepared(
        xp=xp,
        device=device,
        scores=scores3,
        shape=tuple(scores.shape),
        dtype=dtype,
        counts=counts_f,
        valid=valid,
        lengths=lengths,
        feasible=feasible,
        # The checks above raised for any infeasible sample unless zero_infinity.
        all_feasible=eager and not zero_infinity,
    )


_Check = tuple[Array, Callable[[tuple[int, int]], str]]


def _raise_first_failure(xp: ArrayNamespace, checks: list[_Check]) -> None:
    """Raise ``ValueError`` for the first check with a bad sample.

    The flags of all checks are combined first so that valid inputs cost one
    device-to-host synchronisation, however many checks there are.
    """
    if not checks:
        return
    combined = checks[0][0]
    for bad, _ in checks[1:]:
        combined = combined | bad
    if not bool(xp.any(combined)):
        return
    for bad, message in checks:
        found = first_bad_sample(xp, bad)
        if found is not None:
            raise ValueError(message(found))


def _length_check(xp: ArrayNamespace, input_lengths: Array, steps: int) -> _Check:
    def message(found: tuple[int, int]) -> str:
        return (
            f"`input_lengths` must lie in [0, T={steps}]; {_sample_message(found)} "
            f"has length {int(input_lengths[found[0]])}"
        )

    return (input_lengths < 0) | (input_lengths > steps), message


def _value_checks(
    xp: ArrayNamespace,
    counts: Array,
    counts_f: Array,
    lengths: Array,
    feasible: Array,
    zero_infinity: bool,
    check_sums: bool,
) -> list[_Check]:
    checks: list[_Check] = []
    if is_floating(xp, counts.dtype):
        checks.append(
            (
                xp.any(xp.floor(counts) != counts, axis=1),
                lambda found: (
                    f"`counts` must hold whole numbers; {_sample_message(found)} has a "
                    "fractional (or non-finite) count"
                ),
            )
        )
    if not zero_infinity:
        checks.append(
            (
                lengths == 0,
                lambda found: (
                    f"{_sample_message(found)} has no valid step (T_b = 0); pass "
                    "zero_infinity=True to give such samples loss 0 and gradient 0"
                ),
            )
        )
        checks.append(
            (
                ~feasible,
                lambda found: (
                    f"{_sample_message(found)} has a negative count (a label longer "
                    "than its input, T_b < |S_b|, gives a negative blank count); pass "
                    "zero_infinity=True to give such samples loss 0 and gradient 0"
                ),
            )
        )
    if check_sums:

        def sum_message(found: tuple[int, int]) -> str:
            index = found[0]
            return (
                f"`counts` of {_sample_message(found)} sum to {float(xp.sum(counts_f[index, :]))} "
                f"but the sample has T_b = {float(lengths[index])} valid steps; the blank "
                "(background) entry must hold T_b minus the other counts "
                "(see `counts_from_targets` and `counts_with_background`)"
            )

        checks.append((feasible & (xp.sum(counts_f, axis=1) != lengths), sum_message))
    return checks
