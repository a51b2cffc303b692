"""Test cases of the fused CUDA kernels, shared by the host harness tests and the GPU tests.

A :class:`Problem` holds float64 logits (before rounding to a storage dtype),
the valid steps, lengths, counts and upstream gradients of one case;
:func:`reference` is the generic array-API kernel in float64 on the very
values a storage dtype holds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import numpy as np_namespace

from ace_core import _kernel
from ace_core._contract import ACEResiduals

# Tolerances of the stored results against the float64 reference, relative and absolute; the
# absolute part covers log-space values near 0 (log Σ_t y ≈ 0 carries an absolute error of ~T ulps).
RTOL = {"float64": 1e-12, "float32": 2e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}
ATOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-4}


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    u = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(is_nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns → float64 values."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def accumulation(storage: str) -> np.dtype:
    """The accumulation dtype of a storage dtype: float64 for float64, else float32."""
    return np.dtype(np.float64 if storage == "float64" else np.float32)


def as_float64(x: Any, storage: str = "") -> np.ndarray:
    """A host result as float64 (bfloat16 bit patterns decoded)."""
    x = np.asarray(x)
    return bfloat16_values(x) if storage == "bfloat16" else x.astype(np.float64)


@dataclasses.dataclass
class Problem:
    """Host data of one case: float64 logits (before rounding to a storage dtype) and labels."""

    logits: np.ndarray  # (B, T, C) float64
    valid: np.ndarray | None  # (B, T) bool
    lengths: np.ndarray  # (B,) float64 T_b
    counts: np.ndarray  # (B, C) float64, rows sum to T_b
    grad_out: np.ndarray  # (B,) float64

    def stored(self, storage: str, pad: float | None = None) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        """``(scores in the storage dtype, keywords, float64 values they hold)``; ``pad`` at masked steps."""
        logits = self.logits
        if pad is not None:
            with np.errstate(invalid="ignore"):
                logits = np.where(self.valid3(), self.logits, pad)
        if storage == "bfloat16":
            bits = bfloat16_bits(logits)
            return bits, {"bfloat16_bits": True}, bfloat16_values(bits)
        with np.errstate(over="ignore"):
            stored = logits.astype(storage)
        return stored, {}, stored.astype(np.float64)

    def valid3(self) -> np.ndarray:
        shape = self.logits.shape[:2]
        return (np.ones(shape, bool) if self.valid is None else self.valid)[:, :, None]


def make_problem(
    batch: int, steps: int, classes: int, mask: str = "none", *, scale: float = 2.0, seed: int = 0
) -> Problem:
    """A random case. ``mask``: ``none`` (valid=None), ``lengths`` (prefixes, one T_b = 0 when B >= 3)
    or ``mask`` (random steps, one sample without any valid step when B >= 3)."""
    rng = np.random.default_rng([seed, batch, steps, classes])
    logits = rng.normal(scale=scale, size=(batch, steps, classes))
    if mask == "none":
        valid = None
    elif mask == "lengths":
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps
        if batch >= 3:
            lengths[1] = 0
        valid = np.arange(steps)[None, :] < lengths[:, None]
    elif mask == "mask":
        valid = rng.random((batch, steps)) < 0.6
        valid[0, 0] = True
        if batch >= 3:
            valid[1] = False
    else:
        raise ValueError(mask)
    per_sample = np.full(batch, steps) if valid is None else valid.sum(axis=1)
    counts = np.zeros((batch, classes))
    for b, length in enumerate(per_sample):
        if classes > 1 and length > 0:
            labels = rng.integers(1, classes, size=min(int(length), 25, int(rng.integers(0, length + 1))))
            np.add.at(counts[b], labels, 1)
        counts[b, 0] = length - counts[b].sum()
    grad_out = rng.uniform(0.5, 2.0, size=batch)
    return Problem(logits, valid, per_sample.astype(np.float64), counts, grad_out)


def large_logits_problem(kind: str) -> Problem:
    """A (3, 10, 6) problem (sample 1 has T_b = 0) whose logits are extreme, labelled with a class of no mass.

    ``"1e4"``: y underflows to 0 for every class but 0, even in float64; r stays
    finite in log space. ``"30"``: y of the others is ~1e-13; the two-part
    log-normalizer keeps y of class 0 near 1 exact.
    """
    problem = make_problem(3, 10, 6, "lengths", seed=2)
    if kind == "1e4":
        logits = np.full(problem.logits.shape, -1e4)
        logits[:, :, 0] = 1e4
        logits[0, ::2, 3] = 30.0
        logits[2, :, 1] = 0.0
    else:
        logits = np.zeros(problem.logits.shape)
        logits[:, :, 0] = 30.0
    problem.logits = logits
    problem.counts[:] = 0
    problem.counts[:, 5] = problem.lengths > 0
    problem.counts[:, 0] = problem.lengths - problem.counts[:, 5]
    problem.grad_out[:] = 1.0
    return problem


def residuals(statistics: tuple[Any, ...], valid: Any, lengths: Any) -> ACEResiduals:
    """:class:`ACEResiduals` of feasible samples from the four statistics of a forward (any namespace)."""
    xp = array_namespace(lengths)
    keep = xp.ones(lengths.shape, dtype=xp.bool)
    return ACEResiduals(*statistics, valid, lengths, keep, xp.asarray(math.nan, dtype=lengths.dtype))


def reference(problem: Problem, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """The generic kernel in float64 on ``values``.

    Returns ``(step_max, step_log_sum, mass_max, mass_log_sum, grad)`` as NumPy arrays.
    """
    xp = np_namespace
    statistics = _kernel.forward_logits(xp, values, problem.valid, np.float64)
    grad = _kernel.backward_logits(
        xp,
        problem.grad_out,
        values,
        problem.counts,
        residuals(statistics, problem.valid, problem.lengths),
        np.float64,
    )
    return (*(np.asarray(x) for x in statistics), np.asarray(grad))
