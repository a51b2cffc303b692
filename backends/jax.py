"""JAX fast path: one ``exp`` per element in probability space, fused by XLA; exact fallbacks by ``lax.cond``.

The plan is that of :mod:`ace_core.backends.numpy`: ``e = exp(a - max)``, its
row sums and ``Σ_t e / rowsum`` give the forward; the backward is
``grad = e ⊙ (u 1ᵀ - ρ Wᵀ)`` with ``ρ = 1 / rowsum``, ``W = g N̄ / Σ_t y`` and
``u = ρ² (e W)``, which XLA fuses into one elementwise pass after two
matrix-vector products.

Probability space loses accuracy only where a class's mass is so small that
underflowed terms of ``y`` could matter. That is detected on the device and
``lax.cond`` switches to the generic log-space kernel for the call (or, in the
forward, recomputes the masses in log space), so the functions stay jittable
with no host synchronisation, and only the branch taken runs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ace_core import _kernel

__all__ = ["forward_logits", "backward_logits", "forward_backward_logits"]


def _mass_floor(dtype: Any, steps: int) -> float:
    """Below this ``Σ_t y``, terms of ``y`` that underflowed could change the mass by more than ``eps``."""
    info = jnp.finfo(dtype)
    return steps * float(info.tiny) / float(info.eps)


def _exp_shifted(a: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(e = exp(a - max), step_max, rowsum)``, with ``e = 0`` at masked steps."""
    if valid is None:
        step_max = jnp.max(a, axis=2)
    else:
        step_max = jnp.max(jnp.where(valid[:, :, None], a, -jnp.inf), axis=2)
        step_max = jnp.where(valid, step_max, 0)
    e = jnp.exp(a - step_max[:, :, None])
    if valid is not None:
        e = jnp.where(valid[:, :, None], e, 0)
    rowsum = jnp.sum(e, axis=2)
    if valid is not None:
        rowsum = jnp.where(valid, rowsum, 1)
    return e, step_max, rowsum


def _forward(a: jax.Array, valid: jax.Array | None):
    """``(e, step_max, step_log_sum, rowsum, mass)`` in probability space."""
    e, step_max, rowsum = _exp_shifted(a, valid)
    mass = jnp.einsum("bt,btc->bc", 1 / rowsum, e)
    return e, step_max, jnp.log(rowsum), rowsum, mass


def _log_mass(a, valid, step_max, step_log_sum, mass, floor):
    """``log mass``; where a mass is under ``floor`` it is recomputed in log space (only then)."""
    log_mass = jnp.log(mass)

    def in_log_space(_: None) -> jax.Array:
        log_y = _kernel.where_valid(jnp, valid, a - (step_max + step_log_sum)[:, :, None], -jnp.inf)
        exact = jax.nn.logsumexp(log_y, axis=1)
        return jnp.where(mass < floor, exact, log_mass)

    return jax.lax.cond(jnp.any(mass < floor), in_log_space, lambda _: log_mass, None)


def _on_valid(rho: jax.Array, valid: jax.Array | None) -> jax.Array:
    """ρ = 0 at masked steps, so that their gradient is +0 (0 · a negative factor would be -0)."""
    return rho if valid is None else jnp.where(valid, rho, 0)


def _gradient(e, rho, grad_out, counts, lengths, log_mass):
    safe = jnp.where(lengths > 0, lengths, 1)
    present = counts != 0
    weights = counts * (grad_out / safe)[:, None]
    per_mass = jnp.where(present, weights * jnp.exp(-jnp.where(present, log_mass, 0)), 0)
    total = jnp.einsum("btc,bc->bt", e, per_mass)
    return e * ((rho * (rho * total))[:, :, None] - rho[:, :, None] * per_mass[:, None, :])


def _inexact_pull(counts, log_mass, floor) -> jax.Array:
    """Whether a present class's mass is too small for ``y / mass`` in probability space."""
    return jnp.any((counts != 0) & (log_mass < math.log(floor)))


def forward_logits(xp: Any, scores: jax.Array, valid: jax.Array | None, dtype: Any):
    """The forward of :func:`ace_core._kernel.forward_logits`."""
    a = scores.astype(dtype)
    floor = _mass_floor(dtype, a.shape[1])
    _, step_max, step_log_sum, _, mass = _forward(a, valid)
    return step_max, step_log_sum, _log_mass(a, valid, step_max, step_log_sum, mass, floor)


def backward_logits(
    xp: Any,
    grad_out: jax.Array,
    scores: jax.Array,
    counts: jax.Array,
    valid: jax.Array | None,
    lengths: jax.Array,
    step_max: jax.Array,
    step_log_sum: jax.Array,
    log_mass: jax.Array,
    dtype: Any,
) -> jax.Array:
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``."""
    args = (grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass)
    floor = _mass_floor(dtype, scores.shape[1])

    def fast(_: None) -> jax.Array:
        e = jnp.exp(scores.astype(dtype) - step_max[:, :, None])
        e = _kernel.where_valid(jnp, valid, e, 0)
        return _gradient(e, _on_valid(jnp.exp(-step_log_sum), valid), grad_out, counts, lengths, log_mass)

    def exact(_: None) -> jax.Array:
        return _kernel.backward_logits(xp, *args, dtype)

    return jax.lax.cond(_inexact_pull(counts, log_mass, floor), exact, fast, None)


def forward_backward_logits(
    xp: Any,
    grad_out: jax.Array,
    scores: jax.Array,
    counts: jax.Array,
    valid: jax.Array | None,
    lengths: jax.Array,
    dtype: Any,
):
    """Forward and backward with one ``exp`` per element."""
    a = scores.astype(dtype)
    floor = _mass_floor(dtype, a.shape[1])
    e, step_max, step_log_sum, rowsum, mass = _forward(a, valid)
    log_mass = _log_mass(a, valid, step_max, step_log_sum, mass, floor)

    def fast(_: None):
        grad = _gradient(e, _on_valid(1 / rowsum, valid), grad_out, counts, lengths, log_mass)
        return step_max, step_log_sum, log_mass, grad

    def exact(_: None):
        return _kernel.forward_backward_logits(xp, grad_out, scores, counts, valid, lengths, dtype)

    return jax.lax.cond(_inexact_pull(counts, log_mass, floor), exact, fast, None)
