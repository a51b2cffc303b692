"""JAX adapter of the ACE loss: an optax-style call and a counts-based call.

Both are differentiable through :func:`jax.custom_vjp` with the closed-form
backward of the core (:func:`ace_core.ace_forward` saves ``O(B (T + C))``
residuals, :func:`ace_core.ace_backward` turns them into the gradient), so no
``(B, T, C)`` autodiff tape is stored. ``jax.jit``, ``jax.vmap``, ``jax.grad``
and grad-of-grad work: the backward is itself written in ``jax.numpy`` ops, so
JAX differentiates it for second order. Forward-mode (``jax.jvp``,
``jax.jacfwd``) is not available, as for every ``custom_vjp`` function.

This module imports JAX; ``import ace_core`` does not import it.

Examples
--------
>>> import jax.numpy as jnp
>>> from ace_core.integrations.jax import ace_loss
>>> logits = jnp.zeros((1, 4, 3))                  # uniform over 3 classes
>>> logit_paddings = jnp.zeros((1, 4))             # every step valid
>>> labels = jnp.array([[1, 2, 0]])                # the last entry is padding
>>> label_paddings = jnp.array([[0.0, 0.0, 1.0]])
>>> loss = ace_loss(logits, logit_paddings, labels, label_paddings)
>>> loss.shape, round(float(loss[0]), 6)           # log 3
((1,), 1.098612)
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

import ace_core
from ace_core import ACEResiduals
from ace_core._inputs import check_class_index, prepare_scores

__all__ = ["ace_loss", "ace_loss_from_counts", "ctc_with_ace_loss", "init_blank_bias"]


def _forward(
    from_logits: bool,
    zero_infinity: bool,
    scores: jax.Array,
    counts: jax.Array,
    input_lengths: jax.Array | None,
    mask: jax.Array | None,
) -> tuple[jax.Array, ACEResiduals]:
    return ace_core.ace_forward(
        scores,
        counts,
        input_lengths=input_lengths,
        mask=mask,
        from_logits=from_logits,
        zero_infinity=zero_infinity,
        xp=jnp,
    )


# Positions 0 and 1 (from_logits, zero_infinity) are static Python bools:
# they choose the code path, so they are nondiff and hashed into the trace.
@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _per_sample(
    from_logits: bool,
    zero_infinity: bool,
    scores: jax.Array,
    counts: jax.Array,
    input_lengths: jax.Array | None,
    mask: jax.Array | None,
) -> jax.Array:
    return _forward(from_logits, zero_infinity, scores, counts, input_lengths, mask)[0]


_Saved = tuple[jax.Array, jax.Array, ACEResiduals]


def _per_sample_fwd(
    from_logits: bool,
    zero_infinity: bool,
    scores: jax.Array,
    counts: jax.Array,
    input_lengths: jax.Array | None,
    mask: jax.Array | None,
) -> tuple[jax.Array, _Saved]:
    loss, residuals = _forward(from_logits, zero_infinity, scores, counts, input_lengths, mask)
    # Besides the inputs, only O(B (T + C)) residuals are kept for the backward.
    return loss, (scores, counts, residuals)


def _per_sample_bwd(
    from_logits: bool, zero_infinity: bool, saved: _Saved, grad_loss: jax.Array
) -> tuple[jax.Array, None, None, None]:
    scores, counts, residuals = saved
    # A caller of jax.vjp may hand a NumPy cotangent; the core refuses mixed libraries.
    grad_loss = jnp.asarray(grad_loss)
    grad = ace_core.ace_backward(grad_loss, scores, counts, residuals, from_logits=from_logits, xp=jnp)
    # Counts, lengths and mask are targets: None is a zero cotangent. The public
    # functions stop float counts' gradient explicitly, so this zero is never a silent lie.
    return grad, None, None, None


_per_sample.defvjp(_per_sample_fwd, _per_sample_bwd)


def _as_jax(value: Any, name: str) -> jax.Array | None:
    """Array-likes (NumPy arrays, Python ints and lists too) as JAX arrays: custom_vjp takes arrays.

    The core then checks them as for any other call (dtype, shape, values; a
    0-d length is one value for every sample).
    """
    if value is None:
        return None
    try:
        return jnp.asarray(value)
    except OverflowError as error:
        raise ValueError(f"`{name}` holds a value too large for JAX: {error}") from None
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be an array-like of numbers: {error}") from None


def _empty_batch(scores: jax.Array) -> jax.Array:
    """The loss of a batch of no samples, shape (0,), as ``optax.ctc_loss`` returns it."""
    return jnp.zeros((0,), dtype=scores.dtype)


def ace_loss_from_counts(
    scores: ArrayLike,
    counts: ArrayLike,
    *,
    input_lengths: Any = None,
    mask: ArrayLike | None = None,
    from_logits: bool = True,
    zero_infinity: bool = False,
) -> jax.Array:
    r"""Per-sample ACE loss from class counts, for 1D, 2D and counting tasks.

    .. math:: L_b = -\sum_k \frac{N_{bk}}{T_b} \log\Big(\frac{1}{T_b}\sum_{t\ \mathrm{valid}} y_{btk}\Big),
              \quad y_{bt} = \operatorname{softmax}(a_{bt})

    Parameters
    ----------
    scores : array_like, shape (B, T, C) or (B, H, W, C)
        Logits (probabilities with ``from_logits=False``), class axis last; a 2D
        map is flattened row-major to ``T = H W``. Differentiated.
    counts : array_like, shape (B, C)
        Class counts with the blank (background) entry, each row summing to
        ``T_b`` (:func:`ace_core.counts_from_targets`,
        :func:`ace_core.counts_with_background`). Treated as a constant: no
        gradient flows into it.
    input_lengths : int, sequence or integer array of shape (B,), optional
        ``T_b`` for 1D scores (the first ``T_b`` steps are valid).
    mask : bool array_like, shape (B, T) or (B, H, W), optional
        Valid steps or cells; exclusive with ``input_lengths``.
    from_logits : bool
        Whether ``scores`` are logits (default) or probabilities.
    zero_infinity : bool
        Give infeasible samples (``T_b = 0`` or a negative count) loss 0 and
        gradient 0. Without it they raise ``ValueError`` on concrete arrays and
        give ``nan`` loss and gradient under ``jax.jit``/``vmap`` tracing.

    Returns
    -------
    jax.Array, shape (B,)
        ``L_b`` in the dtype of ``scores``; ``jnp.mean`` of it is
        ``ace_core.ace_loss(..., reduction="mean")``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from ace_core.integrations.jax import ace_loss_from_counts
    >>> maps = jnp.zeros((1, 2, 2, 3))                  # a 2x2 map over 3 classes
    >>> counts = jnp.array([[2, 1, 1]])                  # 2 background cells, one each of 1, 2
    >>> round(float(ace_loss_from_counts(maps, counts)[0]), 6)
    1.098612
    """
    # ArrayLike in (NumPy arrays too): the core refuses arrays of two libraries.
    scores, counts = _as_jax(scores, "scores"), _as_jax(counts, "counts")
    mask, lengths = _as_jax(mask, "mask"), _as_jax(input_lengths, "input_lengths")
    if scores.ndim in (3, 4) and scores.shape[0] == 0 and counts.shape[:1] == (0,):
        return _empty_batch(scores)
    return _per_sample(from_logits, zero_infinity, scores, jax.lax.stop_gradient(counts), lengths, mask)


def _check_optax_shapes(
    logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array
) -> None:
    """Shape errors name optax's arguments (the core would name its own ``mask``/``targets``)."""
    if logits.ndim != 3:
        raise ValueError(f"`logits` must have shape (B, T, K), got {logits.shape}")
    if logit_paddings.shape != logits.shape[:2]:
        raise ValueError(
            f"`logit_paddings` must have shape (B, T) = {logits.shape[:2]}, got {logit_paddings.shape}"
        )
    if labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"`labels` must have shape (B, N) with B = {logits.shape[0]}, got {labels.shape}")
    if label_paddings.shape != labels.shape:
        raise ValueError(
            f"`label_paddings` must have the shape of `labels` {labels.shape}, got {label_paddings.shape}"
        )


def ace_loss(
    logits: ArrayLike,
    logit_paddings: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    *,
    blank_id: int = 0,
    zero_infinity: bool = False,
) -> jax.Array:
    r"""Per-sequence ACE loss with the call of ``optax.ctc_loss``.

    .. math:: L_b = -\sum_k \bar N_{bk} \log \bar y_{bk}, \quad
              \bar N_{bk} = \frac{N_{bk}}{T_b},\ \bar y_{bk} = \frac{1}{T_b} \sum_{t\ \mathrm{valid}}
              \operatorname{softmax}(a_{bt})_k

    ``N_bk`` counts class ``k`` in the valid labels of sample ``b`` and the blank
    entry is ``T_b - |S_b|``. Order within a label does not matter to ACE.

    Parameters
    ----------
    logits : array_like, shape (B, T, K)
        Unnormalized scores (softmax is applied inside). Differentiated.
    logit_paddings : array_like, shape (B, T)
        1.0 where a step is padding, 0.0 where it is valid (any pattern, as in
        optax); ``T_b`` is the number of valid steps.
    labels : integer array_like, shape (B, N)
        Class ids in ``[0, K)``, never ``blank_id`` at valid positions.
    label_paddings : array_like, shape (B, N)
        1.0 where a label entry is padding, 0.0 where it is valid (any
        pattern); padded entries may hold any value.
    blank_id : int
        The blank class.
    zero_infinity : bool
        Give infeasible samples (more labels than valid steps, ``T_b < |S_b|``,
        or ``T_b = 0``) loss 0 and gradient 0. Without it they raise
        ``ValueError`` on concrete arrays and give ``nan`` loss and gradient under
        tracing (``jax.jit``, ``vmap``), where optax's CTC gives a large finite value.

    Returns
    -------
    jax.Array, shape (B,)
        ``L_b`` in the dtype of ``logits``. ``jnp.mean`` of it is the mean over
        the batch; unlike CTC's ``"mean"``, do not divide by label lengths, since
        ACE is already normalized by ``T_b``.

    Raises
    ------
    ValueError
        Shapes that do not match (always). On concrete (untraced) arrays
        only: a valid label equal to ``blank_id`` or outside ``[0, K)``, or an
        infeasible sample without ``zero_infinity``; under tracing no value is checked.
    """
    # ArrayLike in (NumPy arrays too, as optax takes them): the core refuses mixed libraries.
    logits, logit_paddings, labels, label_paddings = (
        _as_jax(x, name)
        for x, name in (
            (logits, "logits"),
            (logit_paddings, "logit_paddings"),
            (labels, "labels"),
            (label_paddings, "label_paddings"),
        )
    )
    _check_optax_shapes(logits, logit_paddings, labels, label_paddings)
    classes = logits.shape[-1]
    blank_id = check_class_index(blank_id, "blank_id", classes)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must be integers, got dtype {labels.dtype}")
    if logits.shape[0] == 0:
        return _empty_batch(logits)
    # Paddings are 0.0/1.0 floats; a threshold rather than == 0 so that rounding does not matter.
    valid_steps = logit_paddings < 0.5
    valid_labels = label_paddings < 0.5
    # T_b as the core counts it (the valid steps of the mask), checked there.
    input_lengths = prepare_scores(logits, mask=valid_steps, xp=jnp).lengths.astype(jnp.int32)
    label_lengths = jnp.sum(valid_labels, axis=1, dtype=jnp.int32)
    # counts_from_targets reads the first |S_b| entries: move valid labels to the
    # front (a stable sort keeps their order), so that any padding pattern works.
    order = jnp.argsort(~valid_labels, axis=1, stable=True)
    labels = jnp.take_along_axis(labels, order, axis=1)
    counts = ace_core.counts_from_targets(
        labels, label_lengths, num_classes=classes, input_lengths=input_lengths, blank=blank_id, xp=jnp
    )
    return _per_sample(True, zero_infinity, logits, counts, None, valid_steps)


def ctc_with_ace_loss(
    logits: ArrayLike,
    logit_paddings: ArrayLike,
    labels: ArrayLike,
    label_paddings: ArrayLike,
    *,
    blank_id: int = 0,
    ace_weight: float = 0.1,
    zero_infinity: bool = False,
) -> jax.Array:
    r"""CTC with ACE as an auxiliary loss, per sequence: ``optax.ctc_loss + ace_weight · ace_loss``.

    .. math:: L_b = L^{\mathrm{CTC}}_b + \lambda L^{\mathrm{ACE}}_b, \quad \lambda = 0.1 \text{ by default}

    PaddleOCR trains with this combination. Takes the arguments of
    :func:`ace_loss` (``zero_infinity`` applies to the ACE term; optax's CTC
    gives infeasible samples a large finite value) and needs optax (the
    ``jax`` extra installs it).

    Returns
    -------
    jax.Array, shape (B,)
    """
    import optax

    ctc = optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=blank_id)
    ace = ace_loss(
        logits, logit_paddings, labels, label_paddings, blank_id=blank_id, zero_infinity=zero_infinity
    )
    return ctc + ace_weight * ace


# --------------------------------------------------------------------------- the blank-prior start


def init_blank_bias(bias: jax.Array, value: float, *, blank: int = 0) -> jax.Array:
    """An output layer's bias started at the labels' class mix: ``value`` for the blank, 0 elsewhere.

    ``value`` comes from :func:`ace_core.blank_prior_bias`. JAX arrays are
    immutable, so this returns a new bias to put back into the parameters, e.g.
    for a flax ``nn.Dense`` head::

        params["head"]["bias"] = init_blank_bias(params["head"]["bias"], ace_core.blank_prior_bias(...))

    Parameters
    ----------
    bias : jax.Array, shape (C,)
        The current bias (its shape, dtype and device are kept).
    value : float
    blank : int

    Returns
    -------
    jax.Array, shape (C,)
    """
    if not hasattr(bias, "ndim") or bias.ndim != 1:
        raise ValueError(f"`bias` must have shape (C,), got {getattr(bias, 'shape', type(bias).__name__)}")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < bias.shape[0]:
        raise ValueError(f"`blank` must be a class index in [0, {bias.shape[0]}), got {blank!r}")
    if not abs(float(value)) < float("inf"):  # NaN fails too
        raise ValueError(f"`value` must be finite, got {value!r}")
    return jnp.zeros_like(bias).at[blank].set(value)
