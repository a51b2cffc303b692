"""Checking the inputs of every public function and bringing them to one form.

One preparation path: the losses go through :func:`prepare`, the decoders
through :func:`prepare_scores` (the same checks without counts), the count
helpers through :func:`index_array` and :func:`check_class_index`, and the
framework adapters call these same functions instead of re-deriving lengths,
masks or reductions. Scores become ``(B, T, C)`` (a 2D map is flattened
row-major, h outer and w inner), the valid steps a boolean ``(B, T)`` array and
``T_b`` a float ``(B,)`` array.

Shape and dtype errors are raised always and name the argument; errors that
depend on values name the sample and are raised only where the arrays are
concrete, since a ``jax.jit`` tracer has no values to check. Python ints,
lists and 0-d arrays are accepted where lengths are; unsigned integers are
converted to the default signed integer (never wrapped). Nothing here writes
to an input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._namespace import arrays_namespace, common_device, compute_dtype, is_floating, is_integer, is_lazy
from ._typing import Array, ArrayNamespace, Device, DType

__all__ = [
    "REDUCTIONS",
    "PreparedScores",
    "Prepared",
    "prepare",
    "prepare_scores",
    "valid_steps",
    "check_scores",
    "check_counts",
    "check_reduction",
    "check_class_index",
    "check_flag",
    "check_non_negative",
    "check_num_classes",
    "check_grad_output",
    "check_residuals",
    "check_floor_counts",
    "index_array",
    "require_array",
    "first_bad_sample",
    "raise_first_failure",
    "sample_message",
    "is_array",
]

REDUCTIONS = ("none", "sum", "mean")
#: A value check: a (B,) bool array of bad samples and the message for the first one.
_Check = tuple[Array, Callable[[tuple[int, int]], str]]
_ZERO_INFINITY_HINT = "; pass zero_infinity=True to give such samples loss 0 and gradient 0"


@dataclass(frozen=True)
class PreparedScores:
    """Scores and valid steps, checked and in the kernel's layout (what a decoder needs)."""

    xp: ArrayNamespace
    device: Device
    scores: Array  # (B, T, C), the caller's dtype (a reshape, never a copy)
    shape: tuple[int, ...]  # the caller's shape of ``scores``
    dtype: DType  # accumulation dtype (float32 for half precision)
    valid: Array | None  # (B, T) bool; None when every step is valid (no lengths, no mask)
    lengths: Array  # (B,) T_b in ``dtype``


@dataclass(frozen=True)
class Prepared(PreparedScores):
    """The inputs of one loss call, checked and in the kernel's layout."""

    counts: Array  # (B, C) in ``dtype``
    feasible: Array  # (B,) bool: T_b > 0 and no negative count
    #: True when every sample is known, on the host, to be feasible (checked eagerly, no zero_infinity)
    all_feasible: bool = False


# --------------------------------------------------------------------------- small checks


def is_array(value: Any) -> bool:
    """True for an array (not None, a Python/NumPy scalar or a list)."""
    return value is not None and not isinstance(value, (numbers.Number, list, tuple))


def require_array(value: Any, name: str) -> None:
    """``TypeError`` naming ``name`` unless ``value`` is an array (lists and scalars are not)."""
    if not is_array(value) or not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"`{name}` must be an array, got {type(value).__name__}")


def check_reduction(reduction: Any) -> None:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")


def _python_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_flag(value: Any, name: str) -> bool:
    """A Python (or NumPy) bool; ``TypeError`` naming ``name`` for anything else (a string, an array)."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_non_negative(xp: ArrayNamespace, lengths: Array, name: str) -> None:
    """``ValueError`` naming the first sample with a negative length (eager arrays only)."""
    if is_lazy(lengths):
        return
    found = first_bad_sample(xp, lengths < 0)
    if found is not None:
        raise ValueError(f"`{name}` must be >= 0; {sample_message(found)} has {int(lengths[found[0]])}")


def check_class_index(value: Any, name: str, classes: int) -> int:
    """A class id (``blank``, ``background``) as a Python int in ``[0, classes)``."""
    index = _python_int(value, name)
    if not 0 <= index < classes:
        raise ValueError(f"`{name}` must lie in [0, C={classes}), got {index}")
    return index


def check_num_classes(value: Any) -> int:
    classes = _python_int(value, "num_classes")
    if classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {classes}")
    return classes


def check_scores(xp: ArrayNamespace, scores: Array, name: str = "scores") -> None:
    require_array(scores, name)
    if scores.ndim not in (3, 4):
        raise ValueError(
            f"`{name}` must have shape (B, T, C) for 1D or (B, H, W, C) for 2D prediction, "
            f"got shape {tuple(scores.shape)}"
        )
    if not is_floating(xp, scores.dtype):
        raise TypeError(f"`{name}` must be a real floating array, got dtype {scores.dtype}")
    if any(n == 0 for n in (scores.shape[0], scores.shape[-1])):
        raise ValueError(f"`{name}` needs B >= 1 and C >= 1, got shape {tuple(scores.shape)}")


def check_counts(xp: ArrayNamespace, counts: Array, batch: int, classes: int) -> None:
    require_array(counts, "counts")
    if counts.ndim != 2 or tuple(counts.shape) != (batch, classes):
        raise ValueError(
            f"`counts` must have shape (B, C) = ({batch}, {classes}) to match `scores`, "
            f"got shape {tuple(counts.shape)}"
        )
    if not (is_integer(xp, counts.dtype) or is_floating(xp, counts.dtype)):
        raise TypeError(f"`counts` must be an integer or floating array, got dtype {counts.dtype}")


def check_grad_output(
    xp: ArrayNamespace, grad_output: Any, batch: int, dtype: DType, device: Device
) -> Array:
    """The upstream gradient of the per-sample loss as a ``(B,)`` array in ``dtype``."""
    if isinstance(grad_output, (bool, complex)):
        raise TypeError(f"`grad_output` must be real numbers, got {grad_output!r}")
    grad = xp.asarray(grad_output, device=device) if not is_array(grad_output) else grad_output
    if not (is_floating(xp, grad.dtype) or is_integer(xp, grad.dtype)):
        raise TypeError(f"`grad_output` must be a real array, got dtype {grad.dtype}")
    if grad.ndim > 1 or (grad.ndim == 1 and grad.shape[0] != batch):
        raise ValueError(f"`grad_output` must have shape () or (B,) = ({batch},), got {tuple(grad.shape)}")
    return xp.broadcast_to(xp.astype(grad, dtype), (batch,))


def check_residuals(residuals: Any, batch: int, steps: int) -> None:
    """``TypeError``/``ValueError`` unless ``residuals`` are ``ace_forward``'s for ``batch`` samples."""
    fields = getattr(residuals, "_fields", ())
    if not isinstance(residuals, tuple) or "lengths" not in fields or "keep" not in fields:
        raise TypeError(
            f"`residuals` must be the ACEResiduals that ace_forward returned, got {type(residuals).__name__}"
        )
    for name in ("lengths", "keep"):
        shape = tuple(getattr(residuals, name).shape)
        if shape != (batch,):
            raise ValueError(
                f"`residuals` are for another batch: `{name}` has shape {shape}, expected ({batch},)"
            )
    step_max = getattr(residuals, "step_max", None)
    if step_max is not None and tuple(step_max.shape) != (batch, steps):
        raise ValueError(
            f"`residuals` are for other scores: `step_max` has shape {tuple(step_max.shape)}, "
            f"expected ({batch}, {steps})"
        )


def check_floor_counts(xp: ArrayNamespace, counts: Array) -> None:
    """Counts for :func:`ace_core.entropy_floor`: ``(B, C)``, numeric, and (eagerly) finite and >= 0."""
    require_array(counts, "counts")
    if counts.ndim != 2:
        raise ValueError(f"`counts` must have shape (B, C), got {tuple(counts.shape)}")
    if not (is_integer(xp, counts.dtype) or is_floating(xp, counts.dtype)):
        raise TypeError(f"`counts` must be an integer or floating array, got dtype {counts.dtype}")
    if is_lazy(counts) or counts.shape[0] == 0:
        return
    bad = xp.any(counts < 0, axis=1)
    if is_floating(xp, counts.dtype):
        bad = bad | xp.any(~xp.isfinite(counts), axis=1)
    found = first_bad_sample(xp, bad)
    if found is not None:
        raise ValueError(f"`counts` of {sample_message(found)} hold a negative or non-finite count")


def _default_integer(xp: ArrayNamespace, device: Device) -> DType:
    return xp.__array_namespace_info__().default_dtypes(device=device)["integral"]


def index_array(
    value: Any,
    name: str,
    xp: ArrayNamespace,
    device: Device,
    *,
    batch: int | None = None,
    required: bool = False,
) -> Array | None:
    """Lengths (or targets' lengths) as a signed integer ``(B,)`` array on ``device``.

    A Python int or a 0-d array is one value for every sample (only when
    ``batch`` is known); lists and tuples become arrays; unsigned integers are
    converted to the default signed integer (an eager check refuses values
    that do not fit, so nothing wraps around). ``batch=None`` accepts any
    ``(n,)``. Raises ``TypeError``/``ValueError`` naming ``name``.
    """
    if value is None:
        if required:
            raise TypeError(f"`{name}` is required")
        return None
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be integers, got a bool")
    integer = _default_integer(xp, device)
    if isinstance(value, numbers.Number):
        if not isinstance(value, numbers.Integral):
            raise TypeError(f"`{name}` must be integers, got {type(value).__name__} {value!r}")
        if batch is None:
            raise TypeError(f"`{name}` must be a sequence or array of shape (B,), got {value!r}")
        return _from_python(xp, [int(value)] * batch, name, integer, device)
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                raise TypeError(
                    f"`{name}` must be a sequence of ints, got an element {item!r} ({type(item).__name__})"
                )
        value = _from_python(xp, [int(item) for item in value], name, integer, device)
    require_array(value, name)
    if not is_integer(xp, value.dtype):
        raise TypeError(f"`{name}` must be integers, got dtype {value.dtype}")
    if value.ndim == 0:
        if batch is None:
            raise ValueError(f"`{name}` must have shape (B,), got a 0-d array")
        value = xp.broadcast_to(value, (batch,))
    if value.ndim != 1 or (batch is not None and value.shape[0] != batch):
        wanted = f"(B,) = ({batch},)" if batch is not None else "(B,)"
        raise ValueError(f"`{name}` must have shape {wanted}, got {tuple(value.shape)}")
    if xp.isdtype(value.dtype, "unsigned integer"):
        value = _signed(xp, value, name, integer)
    return value


def _from_python(xp: ArrayNamespace, values: list[int], name: str, integer: DType, device: Device) -> Array:
    largest = xp.iinfo(integer).max
    for index, item in enumerate(values):
        if not -largest - 1 <= item <= largest:
            raise ValueError(f"`{name}` of sample {index} is {item}, too large for {integer}")
    return xp.asarray(values, dtype=integer, device=device)


def _signed(xp: ArrayNamespace, value: Array, name: str, integer: DType) -> Array:
    """Unsigned to signed without wrap-around: values above the signed maximum are refused eagerly."""
    largest = xp.iinfo(integer).max
    if xp.iinfo(value.dtype).max > largest and not is_lazy(value):
        found = first_bad_sample(xp, value > largest)
        if found is not None:
            raise ValueError(
                f"`{name}` of {sample_message(found)} is {int(value[found[0]])}, too large for {integer}"
            )
    return xp.astype(value, integer)


def first_bad_sample(xp: ArrayNamespace, bad: Array) -> tuple[int, int] | None:
    """``(index of the first True, how many are True)`` of a ``(B,)`` bool array, or None."""
    total = int(xp.sum(xp.astype(bad, xp.int32)))
    if total == 0:
        return None
    return int(xp.argmax(xp.astype(bad, xp.int8))), total


def sample_message(found: tuple[int, int]) -> str:
    index, total = found
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"sample {index}{more}"


# --------------------------------------------------------------------------- scores and valid steps


def valid_steps(
    xp: ArrayNamespace,
    scores: Array,
    input_lengths: Any,
    mask: Any,
    device: Device,
) -> Array | None:
    """The ``(B, T)`` valid steps from ``input_lengths`` or ``mask`` (shape and dtype checked).

    None when neither is given: known without looking at values, so the
    kernels can skip masking (also under ``jit``). Lengths outside ``[0, T]``
    are not checked here (see :func:`prepare_scores`).
    """
    batch = scores.shape[0]
    steps = math.prod(scores.shape[1:-1])
    if input_lengths is not None and mask is not None:
        raise ValueError("give either `input_lengths` or `mask`, not both")
    if input_lengths is not None:
        if scores.ndim == 4:
            raise ValueError("`input_lengths` is for 1D scores (B, T, C); give a `mask` for 2D scores")
        lengths = index_array(input_lengths, "input_lengths", xp, device, batch=batch)
        positions = xp.arange(steps, dtype=lengths.dtype, device=device)
        return positions[None, :] < lengths[:, None]
    if mask is not None:
        require_array(mask, "mask")
        if mask.dtype != xp.bool:
            raise TypeError(f"`mask` must be a boolean array, got dtype {mask.dtype}")
        expected = tuple(scores.shape[:-1])
        if tuple(mask.shape) not in (expected, (batch, steps)):
            raise ValueError(
                f"`mask` must have shape {expected} (or flattened ({batch}, {steps})), "
                f"got {tuple(mask.shape)}"
            )
        return xp.reshape(mask, (batch, steps))
    return None


def prepare_scores(
    scores: Array,
    *,
    input_lengths: Any = None,
    mask: Any = None,
    xp: ArrayNamespace | None = None,
) -> PreparedScores:
    """Check scores and valid steps (as every loss does); for decoders, which need no counts.

    Lengths outside ``[0, T]`` raise ``ValueError`` naming the sample where
    values can be checked.
    """
    prepared, checks = _scores_and_checks(scores, input_lengths, mask, xp, ())
    raise_first_failure(prepared.xp, checks)
    return prepared


def _scores_and_checks(
    scores: Array,
    input_lengths: Any,
    mask: Any,
    xp: ArrayNamespace | None,
    extra: tuple[tuple[str, Any], ...],
) -> tuple[PreparedScores, list[_Check]]:
    """:func:`prepare_scores` with its value checks returned, to be run with the caller's in one sync.

    ``extra`` names further arrays of the call, for the one-library and
    one-device checks.
    """
    named = (("scores", scores), *extra, ("input_lengths", input_lengths), ("mask", mask))
    names = tuple(name for name, _ in named)
    values = tuple(value for _, value in named)
    xp = arrays_namespace(*values, xp=xp, names=names)
    check_scores(xp, scores)
    device = common_device(names, tuple(v if is_array(v) else None for v in values))
    batch, classes = scores.shape[0], scores.shape[-1]
    steps = math.prod(scores.shape[1:-1])
    if input_lengths is not None and mask is None and scores.ndim == 3:
        input_lengths = index_array(input_lengths, "input_lengths", xp, device, batch=batch)
    valid = valid_steps(xp, scores, input_lengths, mask, device)
    scores3 = xp.reshape(scores, (batch, steps, classes)) if scores.ndim == 4 else scores
    dtype = compute_dtype(xp, scores.dtype)
    if valid is None:
        lengths = xp.full((batch,), steps, dtype=dtype, device=device)
    else:
        lengths = xp.sum(xp.astype(valid, dtype), axis=1)
    checks = []
    if input_lengths is not None and not is_lazy(scores, input_lengths):
        checks.append(_length_check(input_lengths, steps))
    return PreparedScores(xp, device, scores3, tuple(scores.shape), dtype, valid, lengths), checks


def prepare(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    zero_infinity: bool = False,
    check_sums: bool = True,
    allow_empty: bool = False,
    xp: ArrayNamespace | None = None,
) -> Prepared:
    """Check the inputs of a loss call and bring them to the kernel's layout.

    ``allow_empty`` accepts samples with ``T_b = 0`` (regression ACE, whose
    loss is defined there) while still refusing negative counts.

    Raises
    ------
    TypeError
        Arrays from two libraries, non-arrays, non-floating scores,
        non-numeric counts, non-integer lengths, non-boolean mask.
    ValueError
        Wrong shapes, two devices, lengths outside ``[0, T]``, fractional
        counts, count rows that do not sum to ``T_b``, and (unless
        ``zero_infinity``) samples with ``T_b = 0`` or a negative count.
    """
    base, checks = _scores_and_checks(scores, input_lengths, mask, xp, (("counts", counts),))
    xp = base.xp
    zero_infinity = check_flag(zero_infinity, "zero_infinity")
    batch, classes = scores.shape[0], scores.shape[-1]
    check_counts(xp, counts, batch, classes)
    counts_f = xp.astype(counts, base.dtype)
    lengths = base.lengths
    feasible = (lengths > 0) & xp.all(counts_f >= 0, axis=1)
    eager = not is_lazy(scores, counts, input_lengths, mask)
    if eager:
        hint = "" if allow_empty else _ZERO_INFINITY_HINT
        checks += _value_checks(xp, counts, counts_f, lengths, zero_infinity, allow_empty, check_sums, hint)
    raise_first_failure(xp, checks)
    return Prepared(
        xp=base.xp,
        device=base.device,
        scores=base.scores,
        shape=base.shape,
        dtype=base.dtype,
        valid=base.valid,
        lengths=lengths,
        counts=counts_f,
        feasible=feasible,
        # The checks above raised for any infeasible sample unless zero_infinity.
        all_feasible=eager and not zero_infinity and not allow_empty,
    )


def raise_first_failure(xp: ArrayNamespace, checks: list[_Check]) -> None:
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


def _length_check(input_lengths: Array, steps: int) -> _Check:
    def message(found: tuple[int, int]) -> str:
        return (
            f"`input_lengths` must lie in [0, T={steps}]; {sample_message(found)} "
            f"has length {int(input_lengths[found[0]])}"
        )

    return (input_lengths < 0) | (input_lengths > steps), message


def _value_checks(
    xp: ArrayNamespace,
    counts: Array,
    counts_f: Array,
    lengths: Array,
    zero_infinity: bool,
    allow_empty: bool,
    check_sums: bool,
    hint: str,
) -> list[_Check]:
    checks: list[_Check] = []
    if is_floating(xp, counts.dtype):
        checks.append(
            (
                xp.any(xp.floor(counts) != counts, axis=1) | xp.any(xp.isinf(counts), axis=1),
                lambda found: (
                    f"`counts` must hold whole numbers; {sample_message(found)} has a "
                    "fractional (or non-finite) count"
                ),
            )
        )
    if not zero_infinity:
        if not allow_empty:
            checks.append(
                (
                    lengths == 0,
                    lambda found: f"{sample_message(found)} has no valid step (T_b = 0){hint}",
                )
            )
        checks.append(
            (
                xp.any(counts_f < 0, axis=1),
                lambda found: (
                    f"{sample_message(found)} has a negative count (a label longer "
                    f"than its input, T_b < |S_b|, gives a negative blank count){hint}"
                ),
            )
        )
    if check_sums:

        def sum_message(found: tuple[int, int]) -> str:
            index = found[0]
            return (
                f"`counts` of {sample_message(found)} sum to {float(xp.sum(counts_f[index, :]))} "
                f"but the sample has T_b = {float(lengths[index])} valid steps; the blank "
                "(background) entry must hold T_b minus the other counts "
                "(see `counts_from_targets` and `counts_with_background`)"
            )

        feasible = (lengths > 0) & xp.all(counts_f >= 0, axis=1)
        checked = feasible if zero_infinity else xp.ones_like(feasible)
        checks.append((checked & (xp.sum(counts_f, axis=1) != lengths), sum_message))
    return checks
