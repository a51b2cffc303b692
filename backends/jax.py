"""JAX fast path: one ``exp`` per element in probability space, fused by XLA; exact log space per class.

The plan is that of :mod:`ace_core.backends.numpy`. ``ace_loss_and_grad``
(:func:`forward_backward_logits`) forms ``e = exp(a - max)`` once and keeps it:
its row sums ``1/ρ``, the mass ``m = Σ_t ρ e`` (a batched matrix-vector
product) and ``s = ρ Σ_k e W`` with ``W = g N̄ / m`` (over the few classes
present in the counts, gathered per sample, where ``C > 2T``) are read from it,
and ``grad = y s - g N̄ r`` with ``y = ρ e``, ``r = min(y / m, 1)`` is one
elementwise pass that XLA writes over ``e``'s own buffer; infeasible samples
get their drop value in that pass (``MASKS_INFEASIBLE``). The forward alone
(:func:`forward_logits`) stores nothing of size ``(B, T, C)``: each of its two
reductions computes its own ``exp``.

Probability space loses accuracy only where a class's mass is so small that
underflowed terms of ``y`` could matter (``m`` below :func:`mass_floor`). Such
a class is decided per sample and class on the ``(B, C)`` masses: its two-part
log-mass and its ``r`` are taken in log space, from the halved ``log y`` of the
generic kernel (:func:`ace_core._kernel.half_log_y`), which is exact for tied
steps at any magnitude. ``lax.cond`` skips that work when no class needs it, so
the functions stay jittable with no host synchronisation; its results are
``(B, C)`` arrays, or the gradient recomputed in its place.

How the expressions are written decides XLA's memory plan:

* XLA merges equal subexpressions, and a ``(B, T, C)`` one read by two
  reductions is stored as an array of its own. Where two passes must each
  compute their ``exp``, one of them shifts by ``a + (-max)``, which is
  ``a - max`` bitwise but not the same expression.
* Every ``(B, T, C)`` operand of a ``lax.cond`` is stored. The branches take
  the scores as given and mask them themselves, and the passes outside them
  mask with a ``+inf`` shift at masked steps, so no masked copy of the scores
  exists.
* A ``lax.cond`` between ``e`` and the gradient makes XLA give the gradient a
  buffer of its own: the conds come after the gradient, which is their operand.

The functions are compiled once per shape and dtype (``jax.jit``): called
eagerly, ``lax.cond`` would otherwise trace and compile both branches at every
call. Under an outer ``jit`` they are inlined. Called eagerly on CPU arrays,
``forward_backward_logits`` (what ``ace_loss_and_grad`` runs) and
``forward_logits`` take the NumPy fast path instead, on zero-copy views; the
gradient is handed back without a copy.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ace_core import _kernel
from ace_core._contract import ACEResiduals
from ace_core._interop import numpy_view

from ._common import mass_floor, pull_weights

__all__ = ["forward_logits", "backward_logits", "forward_backward_logits", "MASKS_INFEASIBLE"]

#: The gradients set infeasible samples to the drop value in their own elementwise pass.
MASKS_INFEASIBLE = True


def _log_floor(dtype: Any, steps: int) -> float:
    return math.log(mass_floor(jnp.finfo(dtype), steps))


def _masked(a: jax.Array, valid: jax.Array | None) -> jax.Array:
    """The logits with 0 at masked steps: whatever padding they hold cannot leak."""
    return _kernel.where_valid(jnp, valid, a, 0)


def _masked_shift(shift: jax.Array, valid: jax.Array | None) -> jax.Array:
    """``shift`` ``(B, T)`` with ``+inf`` at masked steps: ``exp(a - shift)`` is 0 there with no select.

    ``a`` there is the masked 0, so the ``(B, T, C)`` pass holds one select
    (``where(valid, a, 0)``, as every pass does) and XLA stores no masked copy.
    """
    return shift if valid is None else jnp.where(valid, shift, jnp.inf)


def _stored_exp(a: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(step_max, e)``: ``e = exp(a - step_max)``, 0 at masked steps, the array the other passes read.

    The row max is taken over the scores as given: a masked step's max (of
    padding, maybe NaN) is replaced, so the max pass needs no select either.
    """
    row_max = jnp.max(a, axis=2)
    step_max = row_max if valid is None else jnp.where(valid, row_max, 0)
    return step_max, _softmax(a, valid, step_max, None)


def _row_sums(e: jax.Array, valid: jax.Array | None) -> jax.Array:
    """``Σ_k e`` ``(B, T)``, 1 at masked steps (whose ``e`` is 0)."""
    rowsum = jnp.sum(e, axis=2)
    return rowsum if valid is None else jnp.where(valid, rowsum, 1)


def _softmax(
    a: jax.Array, valid: jax.Array | None, step_max: jax.Array, step_log_sum: jax.Array | None
) -> jax.Array:
    """``y = exp((a - step_max) - step_log_sum)``, 0 at masked steps (``e`` without a log-sum).

    A ``+inf`` shift at masked steps makes them 0 (:func:`_masked_shift`).
    """
    shifted = _masked(a, valid) - _masked_shift(step_max, valid)[:, :, None]
    if step_log_sum is None:
        return jnp.exp(shifted)
    log_sum = step_log_sum if valid is None else jnp.where(valid, step_log_sum, 0)  # no inf - inf
    return jnp.exp(shifted - log_sum[:, :, None])


def _split_log(mass: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log m, log(m e^{-log m}))``: two parts whose sum is ``log m`` to an absolute rounding error.

    The second part is the few ulps by which the rounded ``log m`` misses;
    ``exp(-M) exp(-S)`` then gives ``1 / m`` to a few ulps, where the exp of a
    one-part log would carry its relative error times ``|log m|``.
    """
    whole = jnp.log(mass)
    finite = jnp.isfinite(whole)
    safe = jnp.where(finite, whole, 0)
    return whole, jnp.where(finite, jnp.log(mass * jnp.exp(-safe)), 0)


def _half_log_y(a, valid, step_max, step_log_sum) -> jax.Array:
    """``log y / 2`` ``(B, T, C)`` of the generic kernel, ``-inf`` at masked steps."""
    return _kernel.half_log_y(jnp, _masked(a, valid), valid, step_max, step_log_sum)


def _log_space_mass(a, valid, step_max, step_log_sum) -> tuple[jax.Array, jax.Array]:
    """``(max_t log y / 2, log Σ_t exp(log y - max))`` ``(B, C)`` of the generic kernel."""
    return _kernel.mass_from_half_log_y(jnp, _half_log_y(a, valid, step_max, step_log_sum))


def _when_tiny(tiny: jax.Array, parts, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``parts()``, the log-space ``(half_max, log_sum)`` ``(B, C)``, computed only when some class is tiny.

    Zeros otherwise.
    """
    zeros = jnp.zeros(tiny.shape, dtype=dtype)
    return jax.lax.cond(jnp.any(tiny), lambda _: parts(), lambda _: (zeros, zeros), None)


def _dropped(grad: jax.Array, keep: jax.Array | None, drop_value: jax.Array | None) -> jax.Array:
    """``grad`` with ``drop_value`` for the samples that ``keep`` is False at (fused into its pass)."""
    return grad if keep is None else jnp.where(keep[:, None, None], grad, drop_value)


def _pull_sum(e, rho, per_mass, present, softmax) -> jax.Array:
    """``s = Σ_k y W`` ``(B, T)``: ``y = ρ e`` (``e`` where ``rho`` is None), ``W = g N̄ / m``.

    Only the classes present in the counts (``N > 0``) have ``W ≠ 0``, and a
    sample has at most ``T_b <= T`` of them, so for ``C > 2 T`` the product is
    taken over ``T`` columns of ``e`` gathered per sample instead of all ``C``.
    A sample with more (counts that do not sum to ``T_b``, unchecked under
    tracing) sends the batch to the dense product, with ``y = softmax()``
    recomputed from the scores: ``e`` as an operand of the ``lax.cond`` would
    cost the gradient its place in ``e``'s buffer.
    """
    steps, classes = e.shape[1], e.shape[2]

    def scaled(total: jax.Array) -> jax.Array:
        return total if rho is None else total * rho

    if classes <= 2 * steps:
        return scaled(jnp.einsum("btc,bc->bt", e, per_mass))
    _, slots = jax.lax.top_k(present.astype(e.dtype), steps)
    columns = jnp.take_along_axis(e, jnp.broadcast_to(slots[:, None, :], (*e.shape[:2], steps)), axis=2)
    sparse = scaled(jnp.einsum("btk,bk->bt", columns, jnp.take_along_axis(per_mass, slots, axis=1)))
    overflow = jnp.any(jnp.sum(present, axis=1) > steps)
    return jax.lax.cond(overflow, lambda: jnp.einsum("btc,bc->bt", softmax(), per_mass), lambda: sparse)


def _gradient_in_probability_space(e, rho, weights, inverse_mass, softmax, keep, drop_value):
    """``(y s - g N̄ min(y / m, 1), s)`` with ``y = ρ e`` (``y = e`` where ``rho`` is None).

    ``weights`` is ``g N̄`` (0 for absent classes), ``inverse_mass`` ``1 / m``.
    ``s = Σ_k g N̄ y / m`` ``(B, T)`` comes from :func:`_pull_sum`, and the rest
    is one elementwise pass that reads ``e`` once: XLA writes it over ``e``. A
    class whose ``inverse_mass`` is 0 (a tiny one) has no pull here.
    """
    s = _pull_sum(e, rho, weights * inverse_mass, weights != 0, softmax)
    y = e if rho is None else e * rho[:, :, None]
    grad = y * s[:, :, None] - weights[:, None, :] * jnp.minimum(y * inverse_mass[:, None, :], 1)
    return _dropped(grad, keep, drop_value), s


def _with_log_space_pull(
    grad, s, a, valid, step_max, step_log_sum, weights, inverse_mass, tiny, parts, keep, drop_value
):
    """``grad`` where no present class is tiny; else recomputed with those classes' pull in log space.

    ``s`` is the probability-space part of ``Σ_k g N̄ r``; ``parts()`` gives the
    two log-space parts ``(half_max, log_sum)``. ``grad`` is the operand of
    ``lax.cond``, so that XLA keeps it in place when the cheap branch runs.
    """
    log_space = tiny & (weights != 0)

    def recompute(_: jax.Array) -> jax.Array:
        half_max, log_sum = parts()
        gap = _half_log_y(a, valid, step_max, step_log_sum) - half_max[:, None, :]
        # r of every class in log space: the branch's one (B, T, C) array; its sum is a product.
        r_log = jnp.exp(jnp.minimum((gap + gap) - log_sum[:, None, :], 0))
        s_all = s + jnp.einsum("btc,bc->bt", r_log, jnp.where(log_space, weights, 0))
        y = _softmax(a, valid, step_max, step_log_sum)
        r = jnp.where(log_space[:, None, :], r_log, jnp.minimum(y * inverse_mass[:, None, :], 1))
        return _dropped(y * s_all[:, :, None] - weights[:, None, :] * r, keep, drop_value)

    return jax.lax.cond(jnp.any(log_space), recompute, lambda g: g, grad)


def _weights(counts, lengths, grad_out, dtype) -> jax.Array:
    return pull_weights(jnp, counts.astype(dtype), lengths.astype(dtype), grad_out.astype(dtype))


def forward_logits(xp: Any, scores: jax.Array, valid: jax.Array | None, dtype: Any):
    """The forward of :func:`ace_core._kernel.forward_logits`."""
    dtype = jnp.dtype(dtype)
    if _eager_on_cpu(scores, valid) and dtype in _NUMPY_DTYPES:
        # As ace_loss_and_grad does: the same statistics, so the same losses, from both.
        from array_api_compat import numpy as numpy_namespace

        from ace_core.backends import numpy as kernels

        host = [None if x is None else numpy_view(x) for x in (scores, valid)]
        return tuple(map(jnp.asarray, kernels.forward_logits(numpy_namespace, *host, np.dtype(dtype))))
    return _forward_logits(scores, valid, dtype=dtype)


def backward_logits(
    xp: Any,
    grad_out: jax.Array,
    scores: jax.Array,
    counts: jax.Array,
    residuals: ACEResiduals,
    dtype: Any,
) -> jax.Array:
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``.

    Samples where ``residuals.keep`` is False get ``residuals.drop_value``.
    """
    return _backward_logits(grad_out, scores, counts, residuals, dtype=jnp.dtype(dtype))


def forward_backward_logits(
    xp: Any,
    grad_out: jax.Array,
    scores: jax.Array,
    counts: jax.Array,
    valid: jax.Array | None,
    lengths: jax.Array,
    dtype: Any,
    *,
    out: None = None,
    keep: jax.Array | None = None,
    drop_value: jax.Array | None = None,
):
    """Forward and backward with one ``exp`` per element (JAX arrays are immutable: no ``out``).

    Samples where ``keep`` is False get ``drop_value`` as their gradient.
    """
    if out is not None:
        raise TypeError("`out` is not supported for JAX arrays, which are immutable")
    dtype = jnp.dtype(dtype)
    arrays = (grad_out, scores, counts, valid, lengths, keep, drop_value)
    if _eager_on_cpu(scores, grad_out, counts, valid, lengths, keep, drop_value) and dtype in _NUMPY_DTYPES:
        return _forward_backward_numpy(*arrays, dtype)
    return _forward_backward_logits(*arrays, dtype=dtype)


_NUMPY_DTYPES = tuple(jnp.dtype(name) for name in ("float32", "float64"))


def _eager_on_cpu(scores: jax.Array, *others: Any) -> bool:
    """Concrete arrays (no tracer) of one CPU device: then NumPy can read them in place."""
    if any(isinstance(x, jax.core.Tracer) for x in (scores, *others)):
        return False
    devices = scores.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _forward_backward_numpy(grad_out, scores, counts, valid, lengths, keep, drop_value, dtype):
    """The NumPy fast path on zero-copy views of eager CPU arrays; the gradient handed back zero-copy.

    ``np.asarray`` of a CPU array is a read-only view of its buffer. The
    gradient is written into a 64-byte-aligned NumPy buffer, which
    ``jnp.from_dlpack`` adopts without a copy (XLA copies less aligned memory).
    Under ``jit`` the arrays are tracers and the ``jnp`` path runs instead.
    """
    from array_api_compat import numpy as numpy_namespace

    from ace_core.backends import numpy as kernels

    host = [None if x is None else numpy_view(x) for x in (grad_out, scores, counts, valid, lengths)]
    out = _aligned_empty(tuple(scores.shape), np.dtype(dtype))
    *statistics, grad = kernels.forward_backward_logits(numpy_namespace, *host, np.dtype(dtype), out=out)
    if keep is not None:
        grad[~numpy_view(keep)] = numpy_view(drop_value)  # only the dropped samples' rows are written
    return (*map(jnp.asarray, statistics), jnp.from_dlpack(grad))


def _aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> Any:
    """An uninitialised C-contiguous NumPy array whose data start at a multiple of ``alignment`` bytes."""
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def _forward(a: jax.Array, valid: jax.Array | None):
    """``(step_max, step_log_sum, mass)`` of the forward alone: each reduction computes its own ``exp``."""
    a0 = _masked(a, valid)
    step_max = jnp.max(a0, axis=2)
    # a + (-max) is a - max bitwise; as the same expression as the mass pass's, XLA would store it.
    rowsum = _row_sums(jnp.exp(a0 + (-_masked_shift(step_max, valid))[:, :, None]), valid)
    step_log_sum = jnp.log(rowsum)
    mass = jnp.sum(_softmax(a, valid, step_max, step_log_sum), axis=1)
    return step_max, step_log_sum, mass


def _is_tiny(mass: jax.Array, steps: int) -> jax.Array:
    """The classes whose mass is below :func:`mass_floor`: probability space may have lost them."""
    return mass < math.exp(_log_floor(mass.dtype, steps))


def _log_space_parts(a, valid, step_max, step_log_sum, tiny):
    """``(half_max, log_sum)`` of the tiny classes' log-space mass; zeros where no class is tiny."""
    return _when_tiny(tiny, partial(_log_space_mass, a, valid, step_max, step_log_sum), a.dtype)


def _mass_statistics(mass, tiny, half_max, log_sum) -> tuple[jax.Array, jax.Array]:
    """``(mass_max, mass_log_sum)``: probability space split by :func:`_split_log`, log space where tiny."""
    whole, rest = _split_log(mass)
    return jnp.where(tiny, half_max + half_max, whole), jnp.where(tiny, log_sum, rest)


@partial(jax.jit, static_argnames="dtype")
def _forward_logits(scores: jax.Array, valid: jax.Array | None, dtype: Any):
    # The scores as given (padding included) go into each pass and each lax.cond, which
    # mask them there: a masked copy read by a cond would be stored as a (B, T, C) array.
    a = scores.astype(dtype)
    step_max, step_log_sum, mass = _forward(a, valid)
    tiny = _is_tiny(mass, a.shape[1])
    half_max, log_sum = _log_space_parts(a, valid, step_max, step_log_sum, tiny)
    return step_max, step_log_sum, *_mass_statistics(mass, tiny, half_max, log_sum)


@partial(jax.jit, static_argnames="dtype")
def _forward_backward_logits(grad_out, scores, counts, valid, lengths, keep, drop_value, dtype: Any):
    a = scores.astype(dtype)
    step_max, e = _stored_exp(a, valid)  # the one (B, T, C) array: every later pass reads it
    rowsum = _row_sums(e, valid)
    step_log_sum = jnp.log(rowsum)
    rho = 1 / rowsum
    mass = jnp.einsum("btc,bt->bc", e, rho)
    tiny = _is_tiny(mass, a.shape[1])
    weights = _weights(counts, lengths, grad_out, dtype)
    # 1 / m straight from the mass: no log/exp round trip to lose digits in.
    inverse_mass = jnp.where(tiny | (weights == 0), 0, 1 / jnp.where(tiny, 1, mass))
    softmax = partial(_softmax, a, valid, step_max, step_log_sum)
    grad, s = _gradient_in_probability_space(e, rho, weights, inverse_mass, softmax, keep, drop_value)
    # The lax.conds come after the gradient: one between e and the gradient makes XLA
    # give the gradient a buffer of its own.
    half_max, log_sum = _log_space_parts(a, valid, step_max, step_log_sum, tiny)
    parts = (weights, inverse_mass, tiny, lambda: (half_max, log_sum), keep, drop_value)
    grad = _with_log_space_pull(grad, s, a, valid, step_max, step_log_sum, *parts)
    return step_max, step_log_sum, *_mass_statistics(mass, tiny, half_max, log_sum), grad


@partial(jax.jit, static_argnames="dtype")
def _backward_logits(grad_out, scores, counts, residuals: ACEResiduals, dtype: Any) -> jax.Array:
    res = residuals
    valid = res.valid
    a = scores.astype(dtype)
    step_max, step_log_sum = res.step_max.astype(dtype), res.step_log_sum.astype(dtype)
    mass_max, mass_log_sum = res.mass_max.astype(dtype), res.mass_log_sum.astype(dtype)
    weights = _weights(counts, res.lengths, grad_out, dtype)
    tiny = (mass_max + mass_log_sum) < _log_floor(dtype, scores.shape[1])
    # exp(-M) exp(-S): 1 / m to a few ulps for any split of a moderate log-mass.
    safe_max, safe_sum = jnp.where(tiny, 0, mass_max), jnp.where(tiny, 0, mass_log_sum)
    inverse_mass = jnp.where(tiny | (weights == 0), 0, jnp.exp(-safe_max) * jnp.exp(-safe_sum))
    # A mass below the dtype's range (mass_max = -inf) lost how its steps compare: recomputed.
    lost = tiny & (mass_max == -jnp.inf)

    def parts() -> tuple[jax.Array, jax.Array]:
        fresh_max, fresh_log_sum = _log_space_mass(a, valid, step_max, step_log_sum)
        log_sum = jnp.where(lost, fresh_log_sum, mass_log_sum)
        # No mass at all: r = 0, no NaN.
        return jnp.where(lost, fresh_max, mass_max * 0.5), jnp.where(log_sum == -jnp.inf, 0, log_sum)

    half_max, log_sum = _when_tiny(tiny, parts, a.dtype)
    softmax = partial(_softmax, a, valid, step_max, step_log_sum)
    y = softmax()  # the one (B, T, C) array: both passes read it
    grad, s = _gradient_in_probability_space(
        y, None, weights, inverse_mass, softmax, res.keep, res.drop_value
    )
    parts = (weights, inverse_mass, tiny, lambda: (half_max, log_sum), res.keep, res.drop_value)
    return _with_log_space_pull(grad, s, a, valid, step_max, step_log_sum, *parts)
