"""What the fast paths share: thresholds and the small ``(B, T)``/``(B, C)`` steps of the plan.

Every function takes the library's own namespace (``numpy``, ``torch``,
``jax.numpy``) as ``xp``, so this module imports no framework.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DENSE_MAX_CLASSES",
    "mass_floor",
    "on_valid_steps",
    "per_mass_weights",
    "pull_weights",
]

#: At or below this many classes a backward works on all classes at once (a rank-2
#: factor); above it, on the few present classes of each sample (no second (B, T, C) array).
DENSE_MAX_CLASSES = 256


def mass_floor(info: Any, steps: int, row_floor: float = 1.0) -> float:
    """Below this ``Σ_t y``, terms of ``y`` that underflowed could change the mass by more than ``eps``.

    ``info`` is the dtype's ``finfo``. With row sums at least ``row_floor``, an
    element that underflows (``e < tiny``) has ``y < tiny / row_floor``; a mass of
    at least the floor loses under ``eps`` relative to ``steps`` such elements.
    """
    return steps * float(info.tiny) / (row_floor * float(info.eps))


def on_valid_steps(xp: Any, values: Any, valid: Any | None) -> Any:
    """``values`` ``(B, T)`` with 0 at masked steps, so that their gradient is +0.

    A per-step factor of 0 there, rather than the product with a negative
    factor afterwards, which would give -0.
    """
    return values if valid is None else xp.where(valid, values, 0)


def pull_weights(xp: Any, counts: Any, lengths: Any, grad_out: Any) -> Any:
    """``g_b N̄_bk = g_b N_bk / T_b`` ``(B, C)`` (``T_b = 0`` read as 1: such samples are masked)."""
    safe = xp.where(lengths > 0, lengths, 1)
    return counts * (grad_out / safe)[:, None]


def per_mass_weights(xp: Any, weights: Any, log_mass: Any) -> Any:
    """``W = g N̄ / Σ_t y`` ``(B, C)`` from :func:`pull_weights` and ``log Σ_t y``; 0 where N = 0."""
    present = weights != 0
    return xp.where(present, weights * xp.exp(-xp.where(present, log_mass, 0)), 0)
