"""JAX fast path: one ``exp`` per element in probability space, fused by XLA; exact log space per class.

The plan is that of :mod:`ace_core.backends.numpy`: ``e = exp(a - max)``, its
row sums ``1/ρ`` and the mass ``m = Σ_t ρ e`` give the forward; the backward
is ``grad = y s - g N̄ r`` with ``y = ρ e``, ``r = min(y / m, 1)`` and
``s = Σ_k g N̄ r``, which XLA fuses into a reduction and one elementwise pass
that writes the gradient: besides the gradient, ``e`` is the one ``(B, T, C)``
array in XLA's memory plan.

Probability space loses accuracy only where a class's mass is so small that
underflowed terms of ``y`` could matter (``m`` below :func:`mass_floor`). Such
a class is decided per sample and class on the ``(B, C)`` masses: its two-part
log-mass and its ``r`` are taken in log space, from the halved ``log y`` of the
generic kernel (:func:`ace_core._kernel.half_log_y`), which is exact for tied
steps at any magnitude. ``lax.cond`` skips that work when no class needs it, so
the functions stay jittable with no host synchronisation.

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

__all__ = ["forward_logits", "backward_logits", "forward_backward_logits"]


def _log_floor(dtype: Any, steps: int) -> float:
    return math.log(mass_floor(jnp.finfo(dtype), steps))


def _masked(a: jax.Array, valid: jax.Array | None) -> jax.Array:
    """The logits with 0 at masked steps: whatever padding they hold cannot leak."""
    return _kernel.where_valid(jnp, valid, a, 0)


def _exp_shifted(a0: jax.Array, valid: jax.Array | None, step_max: jax.Array) -> jax.Array:
    """``e = exp(a - step_max)``, 0 at masked steps."""
    return _kernel.where_valid(jnp, valid, jnp.exp(a0 - step_max[:, :, None]), 0)


def _softmax(
    a0: jax.Array, valid: jax.Array | None, step_max: jax.Array, step_log_sum: jax.Array
) -> jax.Array:
    """``y = exp((a - step_max) - step_log_sum)``, 0 at masked steps.

    Each consumer forms ``y`` again from the scores: XLA then fuses the ``exp``
    into that consumer's pass instead of storing ``e`` as a ``(B, T, C)`` array.
    """
    shifted = (a0 - step_max[:, :, None]) - step_log_sum[:, :, None]
    return _kernel.where_valid(jnp, valid, jnp.exp(shifted), 0)


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


def _log_space_mass(a0, valid, step_max, step_log_sum) -> tuple[jax.Array, jax.Array]:
    """``(max_t log y / 2, log Σ_t exp(log y - max))`` ``(B, C)`` of the generic kernel."""
    return _kernel.mass_from_half_log_y(jnp, _kernel.half_log_y(jnp, a0, valid, step_max, step_log_sum))


def _pull_parts(a0, valid, step_max, step_log_sum, half_max, log_sum, tiny):
    """The log-space parts where ``tiny``, computed only when some class is (else zeros)."""

    def compute(_: None) -> tuple[jax.Array, jax.Array]:
        return half_max(), log_sum()

    zeros = jnp.zeros(tiny.shape, dtype=a0.dtype)
    return jax.lax.cond(jnp.any(tiny), compute, lambda _: (zeros, zeros), None)


def _gradient(a0, valid, step_max, step_log_sum, weights, inverse_mass, tiny, half_max, log_sum):
    """``y s - g N̄ r``; ``r = min(y / m, 1)``, or in log space where ``tiny``.

    ``weights`` is ``g N̄`` (0 for absent classes), ``inverse_mass`` ``1 / m``
    (0 where ``tiny``); ``half_max`` and ``log_sum`` the two log-space parts.
    """

    def finish(log_space: bool) -> jax.Array:
        # y, r and the pull are formed inside each branch: as operands of the cond they
        # would be stored, here XLA fuses them into one reduction and one elementwise pass.
        y = _softmax(a0, valid, step_max, step_log_sum)
        r = jnp.minimum(y * inverse_mass[:, None, :], 1)
        if log_space:
            half = _kernel.half_log_y(jnp, a0, valid, step_max, step_log_sum)
            gap = half - half_max[:, None, :]
            r_log = jnp.exp(jnp.minimum((gap + gap) - log_sum[:, None, :], 0))
            r = jnp.where(tiny[:, None, :], r_log, r)
        pull = weights[:, None, :] * r
        return y * jnp.sum(pull, axis=2, keepdims=True) - pull

    needed = jnp.any(tiny & (weights != 0))
    return jax.lax.cond(needed, lambda _: finish(True), lambda _: finish(False), None)


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
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``."""
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
):
    """Forward and backward with one ``exp`` per element (JAX arrays are immutable: no ``out``)."""
    if out is not None:
        raise TypeError("`out` is not supported for JAX arrays, which are immutable")
    dtype = jnp.dtype(dtype)
    if _eager_on_cpu(scores, grad_out, counts, valid, lengths) and dtype in _NUMPY_DTYPES:
        return _forward_backward_numpy(grad_out, scores, counts, valid, lengths, dtype)
    return _forward_backward_logits(grad_out, scores, counts, valid, lengths, dtype=dtype)


_NUMPY_DTYPES = tuple(jnp.dtype(name) for name in ("float32", "float64"))


def _eager_on_cpu(scores: jax.Array, *others: Any) -> bool:
    """Concrete arrays (no tracer) of one CPU device: then NumPy can read them in place."""
    if any(isinstance(x, jax.core.Tracer) for x in (scores, *others)):
        return False
    devices = scores.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _forward_backward_numpy(grad_out, scores, counts, valid, lengths, dtype):
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
    return (*map(jnp.asarray, statistics), jnp.from_dlpack(grad))


def _aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> Any:
    """An uninitialised C-contiguous NumPy array whose data start at a multiple of ``alignment`` bytes."""
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def _forward(a0: jax.Array, valid: jax.Array | None):
    """``(step_max, step_log_sum, mass, tiny, half_max, log_sum)``: the forward's arrays.

    ``tiny`` marks the classes whose mass comes from log space (``half_max``,
    ``log_sum``, zeros where no class is tiny).
    """
    step_max = jnp.max(a0, axis=2)
    rowsum = jnp.sum(_exp_shifted(a0, valid, step_max), axis=2)
    if valid is not None:
        rowsum = jnp.where(valid, rowsum, 1)
    step_log_sum = jnp.log(rowsum)
    mass = jnp.sum(_softmax(a0, valid, step_max, step_log_sum), axis=1)
    tiny = mass < math.exp(_log_floor(a0.dtype, a0.shape[1]))
    parts = _pull_parts(
        a0,
        valid,
        step_max,
        step_log_sum,
        lambda: _log_space_mass(a0, valid, step_max, step_log_sum)[0],
        lambda: _log_space_mass(a0, valid, step_max, step_log_sum)[1],
        tiny,
    )
    return step_max, step_log_sum, mass, tiny, *parts


def _mass_statistics(mass, tiny, half_max, log_sum) -> tuple[jax.Array, jax.Array]:
    """``(mass_max, mass_log_sum)``: probability space split by :func:`_split_log`, log space where tiny."""
    whole, rest = _split_log(mass)
    return jnp.where(tiny, half_max + half_max, whole), jnp.where(tiny, log_sum, rest)


@partial(jax.jit, static_argnames="dtype")
def _forward_logits(scores: jax.Array, valid: jax.Array | None, dtype: Any):
    a0 = _masked(scores.astype(dtype), valid)
    step_max, step_log_sum, mass, tiny, half_max, log_sum = _forward(a0, valid)
    return step_max, step_log_sum, *_mass_statistics(mass, tiny, half_max, log_sum)


@partial(jax.jit, static_argnames="dtype")
def _forward_backward_logits(grad_out, scores, counts, valid, lengths, dtype: Any):
    a0 = _masked(scores.astype(dtype), valid)
    step_max, step_log_sum, mass, tiny, half_max, log_sum = _forward(a0, valid)
    weights = _weights(counts, lengths, grad_out, dtype)
    # 1 / m straight from the mass: no log/exp round trip to lose digits in.
    inverse_mass = jnp.where(tiny | (weights == 0), 0, 1 / jnp.where(tiny, 1, mass))
    grad = _gradient(a0, valid, step_max, step_log_sum, weights, inverse_mass, tiny, half_max, log_sum)
    return step_max, step_log_sum, *_mass_statistics(mass, tiny, half_max, log_sum), grad


@partial(jax.jit, static_argnames="dtype")
def _backward_logits(grad_out, scores, counts, residuals: ACEResiduals, dtype: Any) -> jax.Array:
    res = residuals
    valid = res.valid
    a0 = _masked(scores.astype(dtype), valid)
    step_max, step_log_sum = res.step_max.astype(dtype), res.step_log_sum.astype(dtype)
    mass_max, mass_log_sum = res.mass_max.astype(dtype), res.mass_log_sum.astype(dtype)
    weights = _weights(counts, res.lengths, grad_out, dtype)
    tiny = (mass_max + mass_log_sum) < _log_floor(dtype, scores.shape[1])
    # exp(-M) exp(-S): 1 / m to a few ulps for any split of a moderate log-mass.
    safe_max, safe_sum = jnp.where(tiny, 0, mass_max), jnp.where(tiny, 0, mass_log_sum)
    inverse_mass = jnp.where(tiny | (weights == 0), 0, jnp.exp(-safe_max) * jnp.exp(-safe_sum))
    # A mass below the dtype's range (mass_max = -inf) lost how its steps compare: recomputed.
    lost = tiny & (mass_max == -jnp.inf)

    def fresh_max() -> jax.Array:
        return jnp.where(lost, _log_space_mass(a0, valid, step_max, step_log_sum)[0], mass_max * 0.5)

    def fresh_log_sum() -> jax.Array:
        fresh = jnp.where(lost, _log_space_mass(a0, valid, step_max, step_log_sum)[1], mass_log_sum)
        return jnp.where(fresh == -jnp.inf, 0, fresh)  # no mass at all: r = 0, no NaN

    half_max, log_sum = _pull_parts(a0, valid, step_max, step_log_sum, fresh_max, fresh_log_sum, tiny)
    return _gradient(a0, valid, step_max, step_log_sum, weights, inverse_mass, tiny, half_max, log_sum)
