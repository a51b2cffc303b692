"""The generic ACE kernel, written with array API standard functions only.

This is the readable reference that every fast path in ``backends/`` must
agree with. Notation (per sample b, SPEC section 1): ``a`` logits, ``y`` the
softmax over classes, ``N`` counts, ``T_b`` valid steps, ``N̄ = N / T_b``.

Forward, in log space and without an epsilon::

    log_norm[b, t] = logsumexp_k a[b, t, k]        (kept as step_max + step_log_sum)
    log_mass[b, k] = logsumexp_{t valid} (a[b, t, k] - log_norm[b, t])   # log Σ_t y
    L[b]           = -Σ_{k: N>0} N̄[b, k] (log_mass[b, k] - log T_b)

Backward, closed form (``r = y / Σ_t y`` and ``s = Σ_k N̄ r`` lie in [0, 1])::

    ∂L/∂a[b, t, k] = y[b, t, k] s[b, t] - N̄[b, k] r[b, t, k]   (0 at masked t)

Only the log-normalizer ``(B, T)`` (in two parts) and ``log_mass`` ``(B, C)``
are kept between the two halves. Samples are assumed feasible here; the caller masks the others.
"""

from __future__ import annotations

import math

from array_api_compat import device as _device

from ._typing import Array, ArrayNamespace, DType

__all__ = [
    "forward_logits",
    "forward_probs",
    "loss_from_log_mass",
    "backward_logits",
    "backward_probs",
    "forward_backward_logits",
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


def _masked_logsumexp_over_steps(xp: ArrayNamespace, values: Array, valid: Array | None) -> Array:
    """``logsumexp`` over axis 1 of ``(B, T, C)`` at valid steps; ``-inf`` where none is valid."""
    masked = where_valid(xp, valid, values, -math.inf)
    peak = xp.max(masked, axis=1, keepdims=True)
    # A sample with no valid step has peak -inf; shift by 0 there so that no
    # -inf - -inf = nan appears.
    peak = xp.where(xp.isinf(peak) & (peak < 0), 0, peak)
    total = xp.sum(xp.exp(masked - peak), axis=1)
    return peak[:, 0, :] + safe_log(xp, total)


def _log_softmax(xp: ArrayNamespace, a: Array) -> tuple[Array, Array, Array]:
    """``(log y, step_max, step_log_sum)`` over the class axis.

    The log-normalizer is kept in two parts, ``step_max + step_log_sum``:
    ``log y = (a - step_max) - step_log_sum`` keeps a dominant class's log y
    near 0 exact, where ``a - (step_max + step_log_sum)`` would round the small
    ``step_log_sum`` away against a large ``step_max`` (float32 logits of 30
    would lose 1e-6 in y and push the gradient past its bound of 1).
    """
    step_max = xp.max(a, axis=-1, keepdims=True)
    shifted = a - step_max
    step_log_sum = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    return shifted - step_log_sum, step_max[..., 0], step_log_sum[..., 0]


def forward_logits(
    xp: ArrayNamespace, scores: Array, valid: Array | None, dtype: DType
) -> tuple[Array, Array, Array]:
    """``(step_max (B, T), step_log_sum (B, T), log_mass (B, C))`` from logits ``(B, T, C)``."""
    # Masked steps may hold any padding (-inf from masked_fill, NaN); zero
    # them so that they neither warn nor leak into the valid steps.
    a = where_valid(xp, valid, xp.astype(scores, dtype, copy=False), 0)
    log_y, step_max, step_log_sum = _log_softmax(xp, a)
    return step_max, step_log_sum, _masked_logsumexp_over_steps(xp, log_y, valid)


def forward_probs(xp: ArrayNamespace, scores: Array, valid: Array | None, dtype: DType) -> Array:
    """``log_mass (B, C) = log Σ_{t valid} y`` from probabilities ``(B, T, C)``."""
    y = xp.astype(scores, dtype, copy=False)
    mass = xp.sum(where_valid(xp, valid, y, 0), axis=1)
    return safe_log(xp, mass)


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
    valid: Array | None,
    lengths: Array,
    step_max: Array,
    step_log_sum: Array,
    log_mass: Array,
    dtype: DType,
) -> Array:
    """``g_b (y s - N̄ r)`` ``(B, T, C)`` in ``dtype``, 0 at masked steps."""
    shifted = xp.astype(scores, dtype, copy=False) - step_max[:, :, None]
    # -inf at masked steps makes y and N̄ r exactly 0 there, whatever the padding.
    log_y = where_valid(xp, valid, shifted - step_log_sum[:, :, None], -math.inf)
    weight = _log_target_over_mass(xp, counts, lengths, log_mass)
    pull = xp.exp(log_y + weight[:, None, :])  # N̄ r, in [0, N̄]
    push = xp.sum(pull, axis=-1, keepdims=True)  # s, in [0, 1]
    grad = xp.exp(log_y) * push - pull
    return grad * grad_out[:, None, None]


def forward_backward_logits(
    xp: ArrayNamespace,
    grad_out: Array,
    scores: Array,
    counts: Array,
    valid: Array | None,
    lengths: Array,
    dtype: DType,
) -> tuple[Array, Array, Array, Array]:
    """``(step_max, step_log_sum, log_mass, grad)``: :func:`forward_logits`, then :func:`backward_logits`.

    One entry point for ``ace_loss_and_grad``, so that a fast path may share
    work between the halves (the softmax, computed once into the gradient's buffer).
    """
    step_max, step_log_sum, log_mass = forward_logits(xp, scores, valid, dtype)
    grad = backward_logits(
        xp, grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass, dtype
    )
    return step_max, step_log_sum, log_mass, grad


def backward_probs(
    xp: ArrayNamespace,
    grad_out: Array,
    scores: Array,
    counts: Array,
    valid: Array | None,
    lengths: Array,
    log_mass: Array,
    dtype: DType,
) -> Array:
    """``∂L/∂y = -g_b N_bk / (T_b Σ_t y_btk)`` at valid steps (0 where N = 0 or t masked)."""
    per_class = -xp.exp(_log_target_over_mass(xp, counts, lengths, log_mass))
    per_class = per_class * grad_out[:, None]
    zeros = xp.zeros(scores.shape, dtype=dtype, device=_device(scores))
    return where_valid(xp, valid, per_class[:, None, :] + zeros, 0)


def _probabilities(xp: ArrayNamespace, scores: Array, from_logits: bool, dtype: DType) -> Array:
    a = xp.astype(scores, dtype, copy=False)
    if not from_logits:
        return a
    log_y, _, _ = _log_softmax(xp, a)
    return xp.exp(log_y)


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
