"""The generic ACE kernel, written with array API standard functions only.

This is the readable reference that every fast path in ``backends/`` must
agree with (the contract: :mod:`ace_core._contract`). Notation (per sample b):
``a`` logits, ``y`` the softmax over classes, ``N`` counts, ``T_b`` valid
steps, ``N̄ = N / T_b``.

Forward, in log space and without an epsilon, each log-sum kept as a shift
plus the log of a sum whose largest term is 1::

    log_norm[b, t] = logsumexp_k a[b, t, k]        = step_max + step_log_sum
    log y[b, t, k] = (a[b, t, k] - step_max[b, t]) - step_log_sum[b, t]
    log_mass[b, k] = logsumexp_{t valid} log y     = mass_max + mass_log_sum   # log Σ_t y
    L[b]           = -Σ_{k: N>0} N̄[b, k] (log_mass[b, k] - log T_b)

Backward, closed form (``r = y / Σ_t y`` and ``s = Σ_k N̄ r`` lie in [0, 1])::

    log r[b, t, k] = (log y[b, t, k] - mass_max[b, k]) - mass_log_sum[b, k]    # <= 0 exactly
    ∂L/∂a[b, t, k] = y[b, t, k] s[b, t] - N̄[b, k] r[b, t, k]   (0 at masked t)

Only these four statistics, ``(B, T)`` and ``(B, C)``, are kept between the two
halves. Samples are assumed feasible here; the caller masks the others.
"""

from __future__ import annotations

import math

from array_api_compat import device as _device

from ._contract import ACEResiduals
from ._typing import Array, ArrayNamespace, DType

__all__ = [
    "forward_logits",
    "forward_probs",
    "loss_from_log_mass",
    "backward_logits",
    "backward_probs",
    "forward_backward_logits",
    "kernel_residuals",
    "half_log_y",
    "mass_from_half_log_y",
    "regression_forward",
    "regression_backward",
    "softmax_backward",
    "safe_log",
]


def safe_log(xp: ArrayNamespace, x: Array) -> Array:
    """``log(x)`` with ``log(0) = -inf`` and no divide-by-zero warning; NaN stays NaN."""
    is_zero = x == 0
    return xp.where(is_zero, -math.inf, xp.log(xp.where(is_zero, 1, x)))


def where_valid(xp: ArrayNamespace, valid: Array | None, values: Array, fill: float) -> Array:
    """``values`` at valid steps and ``fill`` at masked ones; ``valid=None`` means all are valid."""
    if valid is None:
        return values
    return xp.where(valid[:, :, None], values, fill)


def _log_softmax_halves(xp: ArrayNamespace, a: Array) -> tuple[Array, Array, Array]:
    """``(log y / 2, step_max, step_log_sum)`` over the class axis.

    The log-normalizer is kept in two parts, ``step_max + step_log_sum``:
    ``log y = (a - step_max) - step_log_sum`` keeps a dominant class's log y
    near 0 exact, where ``a - (step_max + step_log_sum)`` would round the small
    ``step_log_sum`` away against a large ``step_max`` (float32 logits of 30
    would lose 1e-6 in y and push the gradient past its bound of 1).

    ``log y`` is returned halved, ``(a/2 - step_max/2) - step_log_sum/2``: the
    same value (halving is exact) that stays finite for any finite logits, where
    ``a - step_max`` overflows once ``|a|`` exceeds half the largest float.
    """
    step_max = xp.max(a, axis=-1, keepdims=True)
    half_shifted = a * 0.5 - step_max * 0.5
    step_log_sum = xp.log(xp.sum(xp.exp(half_shifted + half_shifted), axis=-1, keepdims=True))
    return half_shifted - step_log_sum * 0.5, step_max[..., 0], step_log_sum[..., 0]


def half_log_y(xp: ArrayNamespace, a: Array, valid: Array | None, step_max: Array, step_log_sum: Array):
    """``log y / 2`` ``(B, T, C)`` from the step statistics, ``-inf`` at masked steps (y = 0 there)."""
    half = (a * 0.5 - step_max[:, :, None] * 0.5) - step_log_sum[:, :, None] * 0.5
    return where_valid(xp, valid, half, -math.inf)


def mass_from_half_log_y(xp: ArrayNamespace, half_log_y: Array) -> tuple[Array, Array]:
    """``(max_t log y / 2, log Σ_t exp(log y - max_t log y))`` ``(B, C)``; masked steps hold ``-inf``.

    The log-sum is at least 0 (its largest term is ``exp(0) = 1``), at most
    ``log T``. A class with no finite term gets ``(0, -inf)``: shifting by 0
    there keeps ``-inf - -inf = nan`` out.
    """
    peak = xp.max(half_log_y, axis=1)
    peak = xp.where(peak == -math.inf, 0, peak)
    gap = half_log_y - peak[:, None, :]
    return peak, safe_log(xp, xp.sum(xp.exp(gap + gap), axis=1))


def forward_logits(
    xp: ArrayNamespace, scores: Array, valid: Array | None, dtype: DType
) -> tuple[Array, Array, Array, Array]:
    """``(step_max, step_log_sum, mass_max, mass_log_sum)`` from logits ``(B, T, C)``.

    ``mass_max`` is the max over valid steps of ``log y`` and ``mass_log_sum``
    the log of ``Σ_t exp(log y - mass_max)``; ``log Σ_t y`` is their sum (``-inf``
    where it is below the dtype's range: then ``mass_max`` is ``-inf``).
    """
    # Masked steps may hold any padding (-inf from masked_fill, NaN); zero
    # them so that they neither warn nor leak into the valid steps.
    a = where_valid(xp, valid, xp.astype(scores, dtype, copy=False), 0)
    half, step_max, step_log_sum = _log_softmax_halves(xp, a)
    half_max, mass_log_sum = mass_from_half_log_y(xp, where_valid(xp, valid, half, -math.inf))
    return step_max, step_log_sum, half_max + half_max, mass_log_sum


def forward_probs(
    xp: ArrayNamespace, scores: Array, valid: Array | None, dtype: DType
) -> tuple[Array, Array]:
    """``(mass_max, mass_log_sum) = (log Σ_{t valid} y, 0)`` from probabilities ``(B, T, C)``."""
    y = xp.astype(scores, dtype, copy=False)
    log_mass = safe_log(xp, xp.sum(where_valid(xp, valid, y, 0), axis=1))
    return log_mass, xp.zeros_like(log_mass)


def _safe_lengths(xp: ArrayNamespace, lengths: Array) -> Array:
    return xp.where(lengths > 0, lengths, 1)


def loss_from_log_mass(xp: ArrayNamespace, counts: Array, lengths: Array, log_mass: Array) -> Array:
    """``L_b = -Σ_{k: N>0} N̄_bk (log_mass_bk - log T_b)``; a class with N = 0 adds exactly 0."""
    safe = _safe_lengths(xp, lengths)
    n_bar = counts / safe[:, None]
    log_ybar = log_mass - xp.log(safe)[:, None]
    terms = xp.where(counts != 0, n_bar * xp.where(counts != 0, log_ybar, 0), 0)
    return -xp.sum(terms, axis=1)


def _log_target_over_mass(xp: ArrayNamespace, counts: Array, lengths: Array, log_mass: Array) -> Array:
    """``log(N̄ / Σ_t y)`` ``(B, C)``, ``-inf`` where N = 0 (such classes get no pull)."""
    present = counts > 0
    n_bar = counts / _safe_lengths(xp, lengths)[:, None]
    log_n_bar = xp.log(xp.where(present, n_bar, 1))
    return xp.where(present, log_n_bar - xp.where(present, log_mass, 0), -math.inf)


def backward_logits(
    xp: ArrayNamespace,
    grad_out: Array,
    scores: Array,
    counts: Array,
    residuals: ACEResiduals,
    dtype: DType,
) -> Array:
    """``g_b (y s - N̄ r)`` ``(B, T, C)`` in ``dtype``, +0 at masked steps.

    ``log r = (log y - mass_max) - mass_log_sum`` is at most 0 for the
    generic forward's residuals; the clip at 0 keeps ``r <= 1`` also for a
    fast path's split. Where ``mass_max`` is ``-inf`` (every ``log y`` of the
    class below the dtype's range) the two parts are recomputed here from the
    halved ``log y``, which stays finite, so that tied steps still share ``r``.
    """
    res = residuals
    a = xp.astype(scores, dtype, copy=False)
    half = half_log_y(xp, a, res.valid, res.step_max, res.step_log_sum)
    fresh_half_max, fresh_log_sum = mass_from_half_log_y(xp, half)
    lost = res.mass_max == -math.inf
    half_max = xp.where(lost, fresh_half_max, res.mass_max * 0.5)
    log_sum = xp.where(lost, fresh_log_sum, res.mass_log_sum)
    # A class without any mass (no valid step) has r = 0/0: taken as 0, with no NaN on the way.
    log_sum = xp.where(log_sum == -math.inf, 0, log_sum)
    gap = half - half_max[:, None, :]
    log_r = (gap + gap) - log_sum[:, None, :]
    r = xp.exp(xp.where(log_r > 0, 0, log_r))
    present = counts > 0
    n_bar = xp.where(present, counts / _safe_lengths(xp, res.lengths)[:, None], 0)
    # A class with N = 0 gets no pull, even where its r is undefined (no mass at all).
    pull = xp.where(present[:, None, :], n_bar[:, None, :] * r, 0)  # N̄ r, in [0, N̄]
    push = xp.sum(pull, axis=-1, keepdims=True)  # s, in [0, 1]
    grad = xp.exp(half + half) * push - pull
    return grad * grad_out[:, None, None]


def forward_backward_logits(
    xp: ArrayNamespace,
    grad_out: Array,
    scores: Array,
    counts: Array,
    valid: Array | None,
    lengths: Array,
    dtype: DType,
    *,
    out: Array | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """``(step_max, step_log_sum, mass_max, mass_log_sum, grad)``: :func:`forward_logits`, then
    :func:`backward_logits`; the gradient is written into ``out`` where given.

    One entry point for ``ace_loss_and_grad``, so that a fast path may share
    work between the halves (the softmax, computed once into the gradient's buffer).
    """
    statistics = forward_logits(xp, scores, valid, dtype)
    residuals = kernel_residuals(xp, statistics, valid, lengths)
    grad = backward_logits(xp, grad_out, scores, counts, residuals, dtype)
    if out is not None:
        out[...] = grad
        grad = out
    return (*statistics, grad)


def kernel_residuals(
    xp: ArrayNamespace, statistics: tuple, valid: Array | None, lengths: Array
) -> ACEResiduals:
    """:class:`ACEResiduals` of feasible samples from the four statistics of a forward from logits.

    For a kernel's own use (its backward reads ``valid``, ``lengths`` and the
    statistics, never ``keep`` or ``drop_value``, which the caller applies).
    """
    keep = xp.ones(lengths.shape, dtype=xp.bool, device=_device(lengths))
    drop_value = xp.asarray(math.nan, dtype=lengths.dtype, device=_device(lengths))
    return ACEResiduals(*statistics, valid, lengths, keep, drop_value)


def backward_probs(
    xp: ArrayNamespace,
    grad_out: Array,
    scores: Array,
    counts: Array,
    residuals: ACEResiduals,
    dtype: DType,
) -> Array:
    """``∂L/∂y = -g_b N_bk / (T_b Σ_t y_btk)`` at valid steps (0 where N = 0 or t masked)."""
    per_class = -xp.exp(_log_target_over_mass(xp, counts, residuals.lengths, residuals.log_mass))
    per_class = per_class * grad_out[:, None]
    zeros = xp.zeros(scores.shape, dtype=dtype, device=_device(scores))
    return where_valid(xp, residuals.valid, per_class[:, None, :] + zeros, 0)


def _probabilities(xp: ArrayNamespace, scores: Array, from_logits: bool, dtype: DType) -> Array:
    a = xp.astype(scores, dtype, copy=False)
    if not from_logits:
        return a
    half_log_y, _, _ = _log_softmax_halves(xp, a)
    return xp.exp(half_log_y + half_log_y)


def regression_forward(
    xp: ArrayNamespace,
    scores: Array,
    counts: Array,
    valid: Array | None,
    from_logits: bool,
    dtype: DType,
) -> tuple[Array, Array]:
    """``(L_b = ½ Σ_k (N_bk - Σ_t y_btk)², residual = Σ_t y - N)``."""
    y = _probabilities(xp, scores, from_logits, dtype)
    excess = xp.sum(where_valid(xp, valid, y, 0), axis=1) - counts
    return 0.5 * xp.sum(excess * excess, axis=1), excess


def regression_backward(
    xp: ArrayNamespace,
    grad_out: Array,
    scores: Array,
    excess: Array,
    valid: Array | None,
    from_logits: bool,
    dtype: DType,
) -> Array:
    """``∂L/∂y_btk = Σ_t y_btk - N_bk`` at valid steps, chained through the softmax for logits."""
    per_class = excess * grad_out[:, None]
    zeros = xp.zeros(scores.shape, dtype=dtype, device=_device(scores))
    grad_y = where_valid(xp, valid, per_class[:, None, :] + zeros, 0)
    if not from_logits:
        return grad_y
    return softmax_backward(xp, _probabilities(xp, scores, True, dtype), grad_y)


def softmax_backward(xp: ArrayNamespace, y: Array, grad_y: Array) -> Array:
    """``∂L/∂a = y ⊙ (g - Σ_k y g)`` for ``y = softmax(a)`` over the last axis."""
    return y * (grad_y - xp.sum(y * grad_y, axis=-1, keepdims=True))
