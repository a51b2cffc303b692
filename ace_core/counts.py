"""Class counts ``N`` ``(B, C)`` from labels: the ACE target.

ACE needs only how often each class occurs in each label; the blank
(background) entry holds the rest of the valid steps, ``T_b - |S_b|``, so that
each row sums to ``T_b``.
"""

from __future__ import annotations

from typing import Any

import array_api_extra as xpx

from ._inputs import (
    check_class_index,
    check_non_negative,
    check_num_classes,
    first_bad_sample,
    index_array,
    is_array,
    require_array,
    sample_message,
)
from ._namespace import arrays_namespace, common_device, is_floating, is_integer, is_lazy
from ._typing import Array, ArrayNamespace

__all__ = ["counts_from_targets", "counts_with_background"]


def _signed_integers(xp: ArrayNamespace, values: Array, name: str, device: Any) -> Array:
    """Integer ``values`` (unsigned ones converted without wrap-around); ``TypeError`` otherwise."""
    require_array(values, name)
    if not is_integer(xp, values.dtype):
        raise TypeError(f"`{name}` must be integers, got dtype {values.dtype}")
    if xp.isdtype(values.dtype, "unsigned integer"):
        flat = xp.reshape(values, (-1,))
        return xp.reshape(index_array(flat, name, xp, device), values.shape)
    return values


def _padded_layout(
    xp: ArrayNamespace, targets: Array, target_lengths: Any, device: Any
) -> tuple[Array, Array, int]:
    """``(targets (B, S), valid positions (B, S), B)`` for padded or concatenated targets."""
    if targets.ndim == 2:
        batch, width = targets.shape
        if target_lengths is None:
            return targets, xp.ones((batch, width), dtype=xp.bool, device=device), batch
        lengths = index_array(target_lengths, "target_lengths", xp, device, batch=batch)
        if not is_lazy(lengths):
            found = first_bad_sample(xp, (lengths < 0) | (lengths > width))
            if found is not None:
                raise ValueError(
                    f"`target_lengths` must lie in [0, S={width}]; {sample_message(found)} has "
                    f"{int(lengths[found[0]])}"
                )
        positions = xp.arange(width, dtype=lengths.dtype, device=device)
        return targets, positions[None, :] < lengths[:, None], batch
    if targets.ndim == 1:
        if target_lengths is None:
            raise ValueError("concatenated 1D `targets` need `target_lengths`")
        lengths = index_array(target_lengths, "target_lengths", xp, device)
        batch = lengths.shape[0]
        if not is_lazy(lengths, targets):
            found = first_bad_sample(xp, lengths < 0)
            if found is not None:
                raise ValueError(
                    f"`target_lengths` must be >= 0; {sample_message(found)} has {int(lengths[found[0]])}"
                )
            if int(xp.sum(lengths)) != targets.shape[0]:
                raise ValueError(
                    f"concatenated `targets` have {targets.shape[0]} entries but `target_lengths` "
                    f"sum to {int(xp.sum(lengths))}"
                )
        ends = xp.cumulative_sum(lengths)
        position = xp.arange(targets.shape[0], dtype=ends.dtype, device=device)
        owner = xp.searchsorted(ends, position, side="right")  # sample of each position
        samples = xp.arange(batch, dtype=owner.dtype, device=device)
        belongs = owner[None, :] == samples[:, None]  # (B, sum L)
        return xp.broadcast_to(targets[None, :], (batch, targets.shape[0])), belongs, batch
    raise ValueError(
        f"`targets` must be padded (B, S) or concatenated (sum of target_lengths,), "
        f"got shape {tuple(targets.shape)}"
    )


def counts_from_targets(
    targets: Array,
    target_lengths: Any = None,
    *,
    num_classes: int,
    input_lengths: Any,
    blank: int = 0,
    xp: ArrayNamespace | None = None,
) -> Array:
    r"""Class counts from CTC-style targets, with the blank entry ``T_b - |S_b|``.

    .. math:: N_{bk} = \#\{s \le |S_b| : S_{bs} = k\}\ (k \ne \text{blank}), \quad
              N_{b,\text{blank}} = T_b - |S_b|

    Parameters
    ----------
    targets : int array, shape (B, S) or (sum of target_lengths,)
        Padded targets (as for ``torch.nn.functional.ctc_loss``) or all labels
        concatenated. Padding beyond ``target_lengths`` is ignored. Unsigned
        integers are converted to signed ones, never wrapped around.
    target_lengths : int, sequence or array of shape (B,), optional
        ``|S_b|``; required for concatenated targets. Padded targets without
        it count every entry.
    num_classes : int
        C, the blank included.
    input_lengths : int, sequence or array of shape (B,)
        ``T_b``, the valid steps of each sample (H·W for a full 2D map).
    blank : int
        The blank (background) class.
    xp : namespace, optional

    Returns
    -------
    int array, shape (B, C)
        A blank entry is negative where ``|S_b| > T_b``: :func:`ace_loss`
        rejects such samples, or zeroes them with ``zero_infinity=True``.
        Under tracing (``jax.jit``), where bad labels cannot raise, a sample
        whose label holds the blank or a class outside ``[0, C)`` gets blank
        count -1 and so is infeasible too.

    Raises
    ------
    ValueError
        A target equal to ``blank`` or outside ``[0, C)`` (naming the sample),
        bad shapes or lengths, ``blank`` outside ``[0, C)``.
    TypeError
        Non-integer targets or lengths (Python floats included), a missing
        ``input_lengths``, a ``blank`` or ``num_classes`` that is not an int.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import counts_from_targets
    >>> counts_from_targets(np.array([[3, 1, 3, 0]]), [3], num_classes=4, input_lengths=[6])
    array([[3, 1, 0, 2]])
    """
    names = ("targets", "target_lengths", "input_lengths")
    values = (targets, target_lengths, input_lengths)
    xp = arrays_namespace(*values, xp=xp, names=names)
    device = common_device(names, [v if is_array(v) else None for v in values])
    num_classes = check_num_classes(num_classes)
    blank = check_class_index(blank, "blank", num_classes)
    targets = _signed_integers(xp, targets, "targets", device)
    padded, inside, batch = _padded_layout(xp, targets, target_lengths, device)
    steps = index_array(input_lengths, "input_lengths", xp, device, batch=batch, required=True)
    check_non_negative(xp, steps, "input_lengths")
    if not is_lazy(padded, inside):
        _check_target_values(xp, padded, inside, num_classes, blank)
    # Entries outside a label are sent to the blank column and then overwritten.
    labels = xp.where(inside, padded, blank)
    hits = xpx.one_hot(labels, num_classes, dtype=steps.dtype, xp=xp)  # (B, S, C)
    counts = xp.sum(hits, axis=1, dtype=steps.dtype)
    label_sizes = xp.sum(xp.astype(inside, steps.dtype), axis=1)
    blank_counts = steps - label_sizes
    # Under tracing the check above cannot raise: a label with the blank or an
    # out-of-range class makes its sample infeasible (blank count -1), so that
    # the loss is NaN (0 with zero_infinity) rather than silently wrong.
    bad_label = xp.any(inside & ((padded < 0) | (padded >= num_classes) | (padded == blank)), axis=1)
    blank_counts = xp.where(bad_label, -1, blank_counts)
    is_blank = xp.arange(num_classes, device=device) == blank
    return xp.where(is_blank[None, :], blank_counts[:, None], counts)


def _check_target_values(
    xp: ArrayNamespace, padded: Array, inside: Array, num_classes: int, blank: int
) -> None:
    out_of_range = inside & ((padded < 0) | (padded >= num_classes))
    found = first_bad_sample(xp, xp.any(out_of_range, axis=1))
    if found is not None:
        raise ValueError(f"`targets` of sample {found[0]} hold a class outside [0, {num_classes})")
    found = first_bad_sample(xp, xp.any(inside & (padded == blank), axis=1))
    if found is not None:
        raise ValueError(
            f"`targets` of sample {found[0]} hold the blank class {blank}; labels must not contain blank"
        )


def counts_with_background(
    object_counts: Array,
    *,
    input_lengths: Any,
    background: int = 0,
    xp: ArrayNamespace | None = None,
) -> Array:
    r"""Complete per-class object counts with the background entry, for counting tasks.

    .. math:: N_{b,\text{bg}} = T_b - \sum_{k \ne \text{bg}} N_{bk}

    Parameters
    ----------
    object_counts : int array, shape (B, C)
        How many objects of each class each image holds (whole numbers >= 0;
        unsigned integers are converted to signed); the ``background`` column
        is ignored and replaced.
    input_lengths : int, sequence or array of shape (B,)
        ``T_b``, the cells of each sample's map (H·W for a full map).
    background : int
        The background (blank) class.
    xp : namespace, optional

    Returns
    -------
    int array, shape (B, C)
        Rows sum to ``T_b``; a negative background entry means more objects
        than cells, which :func:`ace_loss` rejects.

    Raises
    ------
    ValueError
        A negative or fractional object count (naming the sample, where
        values can be checked), bad shapes, ``background`` outside ``[0, C)``.
    TypeError
        Non-numeric counts, lengths that are not integers.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import counts_with_background
    >>> counts_with_background(np.array([[0, 2, 5]]), input_lengths=16)
    array([[9, 2, 5]])
    """
    names = ("object_counts", "input_lengths")
    xp = arrays_namespace(object_counts, input_lengths, xp=xp, names=names)
    device = common_device(names, [v if is_array(v) else None for v in (object_counts, input_lengths)])
    require_array(object_counts, "object_counts")
    if object_counts.ndim != 2:
        raise ValueError(f"`object_counts` must have shape (B, C), got {tuple(object_counts.shape)}")
    batch, classes = object_counts.shape
    background = check_class_index(background, "background", classes)
    if is_floating(xp, object_counts.dtype):
        objects_in = object_counts
    else:
        objects_in = _signed_integers(xp, object_counts, "object_counts", device)
    steps = index_array(input_lengths, "input_lengths", xp, device, batch=batch, required=True)
    check_non_negative(xp, steps, "input_lengths")
    is_background = xp.arange(classes, device=device) == background
    objects = xp.where(is_background[None, :], xp.zeros_like(objects_in), objects_in)
    if not is_lazy(objects, steps):
        _check_object_counts(xp, objects)
    rest = xp.astype(steps, objects.dtype) - xp.sum(objects, axis=1)
    return xp.where(is_background[None, :], rest[:, None], objects)


def _check_object_counts(xp: ArrayNamespace, objects: Array) -> None:
    found = first_bad_sample(xp, xp.any(objects < 0, axis=1))
    if found is not None:
        raise ValueError(f"`object_counts` of {sample_message(found)} hold a negative count")
    if is_floating(xp, objects.dtype):
        found = first_bad_sample(xp, xp.any((xp.floor(objects) != objects) | xp.isinf(objects), axis=1))
        if found is not None:
            raise ValueError(
                f"`object_counts` must hold whole numbers; {sample_message(found)} has a fractional "
                "(or non-finite) count"
            )
