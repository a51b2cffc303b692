"""The public ACE losses: :func:`ace_loss`, :func:`ace_loss_and_grad`,
:func:`ace_forward`/:func:`ace_backward`, :func:`regression_ace_loss` and
:func:`entropy_floor`.

Each checks its inputs (:mod:`ace_core._inputs`), runs the kernel chosen for
the namespace (:mod:`ace_core._dispatch`), masks infeasible samples and
reduces. Samples that are infeasible (``T_b = 0`` or a negative count) raise
where values can be checked; with ``zero_infinity=True`` they get loss 0 and
gradient 0, and under tracing without it their loss is NaN.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from ._contract import ACEResiduals
from ._dispatch import kernel_for
from ._inputs import (
    Prepared,
    check_counts,
    check_flag,
    check_floor_counts,
    check_grad_output,
    check_reduction,
    check_residuals,
    check_scores,
    prepare,
)
from ._kernel import loss_from_log_mass, regression_backward, regression_forward
from ._namespace import arrays_namespace, compute_dtype
from ._out import check_out
from ._typing import Array, ArrayNamespace, Reduction

__all__ = [
    "ACEResiduals",
    "ace_loss",
    "ace_loss_and_grad",
    "ace_forward",
    "ace_backward",
    "regression_ace_loss",
    "regression_ace_loss_and_grad",
    "entropy_floor",
]


def reduce_per_sample(xp: ArrayNamespace, per_sample: Array, reduction: Reduction) -> Array:
    """The reduction of every loss: ``"none"`` keeps ``(B,)``, ``"sum"``, ``"mean"`` over the batch."""
    if reduction == "none":
        return per_sample
    total = xp.sum(per_sample)
    if reduction == "sum":
        return total
    return total / per_sample.shape[0]


def _reduction_weights(prep: Prepared, reduction: Reduction) -> Array:
    """∂(reduced loss)/∂L_b for every sample."""
    xp, batch = prep.xp, prep.scores.shape[0]
    scale = 1.0 / batch if reduction == "mean" else 1.0
    return xp.full((batch,), scale, dtype=prep.dtype, device=prep.device)


def _drop_value(prep: Prepared, zero_infinity: bool) -> Array:
    value = 0.0 if zero_infinity else math.nan
    return prep.xp.asarray(value, dtype=prep.dtype, device=prep.device)


def _mask_infeasible(xp: ArrayNamespace, values: Array, keep: Array, drop_value: Array) -> Array:
    shape = (keep.shape[0],) + (1,) * (values.ndim - 1)
    return xp.where(xp.reshape(keep, shape), values, drop_value)


def _forward(prep: Prepared, from_logits: bool, zero_infinity: bool):
    xp = prep.xp
    kernel = kernel_for(xp)
    if from_logits:
        step_max, step_log_sum, mass_max, mass_log_sum = kernel.forward_logits(
            xp, prep.scores, prep.valid, prep.dtype
        )
    else:
        step_max = step_log_sum = None
        mass_max, mass_log_sum = kernel.forward_probs(xp, prep.scores, prep.valid, prep.dtype)
    drop_value = _drop_value(prep, zero_infinity)
    residuals = ACEResiduals(
        step_max, step_log_sum, mass_max, mass_log_sum, prep.valid, prep.lengths, prep.feasible, drop_value
    )
    per_sample = loss_from_log_mass(xp, prep.counts, prep.lengths, residuals.log_mass)
    per_sample = _mask_infeasible(xp, per_sample, prep.feasible, drop_value)
    return per_sample, residuals


def _backward(
    xp: ArrayNamespace,
    grad_out: Array,
    scores3: Array,
    counts: Array,
    res: ACEResiduals,
    dtype: Any,
    from_logits: bool,
) -> Array:
    kernel = kernel_for(xp)
    if from_logits:
        if res.step_max is None:
            raise ValueError("these residuals come from probability input; pass from_logits=False")
        grad = kernel.backward_logits(xp, grad_out, scores3, counts, res, dtype)
        if kernel.masks_infeasible:
            return grad
    else:
        grad = kernel.backward_probs(xp, grad_out, scores3, counts, res, dtype)
    return _mask_infeasible(xp, grad, res.keep, res.drop_value)


def _forward_backward_logits(
    prep: Prepared, grad_out: Array, zero_infinity: bool, out: Array | None = None
) -> tuple[Array, Array]:
    """Per-sample loss and gradient from logits in one kernel call (``ace_loss_and_grad``)."""
    xp = prep.xp
    kernel = kernel_for(xp)
    drop_value = _drop_value(prep, zero_infinity)
    drop = {}
    if kernel.masks_infeasible:
        drop = {"keep": None if prep.all_feasible else prep.feasible, "drop_value": drop_value}
    *statistics, grad = kernel.forward_backward_logits(
        xp, grad_out, prep.scores, prep.counts, prep.valid, prep.lengths, prep.dtype, out=out, **drop
    )
    _, _, mass_max, mass_log_sum = statistics
    per_sample = loss_from_log_mass(xp, prep.counts, prep.lengths, mass_max + mass_log_sum)
    per_sample = _mask_infeasible(xp, per_sample, prep.feasible, drop_value)
    if not prep.all_feasible and not kernel.masks_infeasible:
        # Only then: the mask is a full pass over the gradient.
        masked = _mask_infeasible(xp, grad, prep.feasible, drop_value)
        if out is None:
            grad = masked
        else:
            out[...] = masked
    return per_sample, grad


def ace_forward(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    from_logits: bool = True,
    zero_infinity: bool = False,
    xp: ArrayNamespace | None = None,
) -> tuple[Array, ACEResiduals]:
    r"""Per-sample ACE loss and the residuals that :func:`ace_backward` needs.

    .. math:: L_b = -\sum_k \bar N_{bk} \log \bar y_{bk}, \quad
              \log \bar y_{bk} = \operatorname{logsumexp}_{t \le T_b} \log y_{btk} - \log T_b

    Parameters
    ----------
    scores : array, shape (B, T, C) or (B, H, W, C)
        Logits (or log-probabilities) with the class axis last; probabilities
        with ``from_logits=False``. A 2D map is flattened row-major to T = H·W.
    counts : array, shape (B, C)
        Class counts of each label, the blank (background) entry included, so
        that each row sums to ``T_b``; see :func:`counts_from_targets`.
    input_lengths : int, sequence or array of shape (B,), optional
        Valid steps ``T_b`` of 1D scores (the first ``T_b`` steps count).
    mask : bool array, shape (B, T) or (B, H, W), optional
        Valid steps or cells; exclusive with ``input_lengths``.
    from_logits : bool
        Whether ``scores`` are logits (default) or probabilities.
    zero_infinity : bool
        Give samples with ``T_b = 0`` or a negative count loss 0 and gradient 0
        instead of raising.
    xp : namespace, optional
        The array namespace; found from the arrays when omitted.

    Returns
    -------
    loss : array, shape (B,)
        Per-sample loss in the dtype of ``scores``.
    residuals : ACEResiduals
        O(B·(T + C)) arrays for :func:`ace_backward`.
    """
    from_logits = check_flag(from_logits, "from_logits")
    prep = prepare(scores, counts, input_lengths=input_lengths, mask=mask, zero_infinity=zero_infinity, xp=xp)
    per_sample, residuals = _forward(prep, from_logits, zero_infinity)
    return prep.xp.astype(per_sample, scores.dtype), residuals


def ace_backward(
    grad_output: Array,
    scores: Array,
    counts: Array,
    residuals: ACEResiduals,
    *,
    from_logits: bool = True,
    xp: ArrayNamespace | None = None,
) -> Array:
    r"""Closed-form gradient of ``Σ_b grad_output_b · L_b`` with respect to ``scores``.

    .. math:: \frac{\partial L_b}{\partial a_{btk}} = y_{btk} s_{bt} - \bar N_{bk} r_{btk},
              \quad r_{btk} = \frac{y_{btk}}{\sum_{t'} y_{bt'k}},\ s_{bt} = \sum_k \bar N_{bk} r_{btk}

    With ``from_logits=False`` it is ``-N_bk / (T_b Σ_t y_btk)`` with respect to
    the probabilities. Masked steps get exactly 0.

    Parameters
    ----------
    grad_output : array, shape (B,) or ()
        Upstream gradient of each per-sample loss (a scalar is broadcast).
    scores, counts
        The arrays given to :func:`ace_forward`.
    residuals : ACEResiduals
        The second output of :func:`ace_forward`.
    from_logits : bool
        As given to :func:`ace_forward`.
    xp : namespace, optional

    Returns
    -------
    array
        Same shape and dtype as ``scores``.
    """
    xp = arrays_namespace(grad_output, scores, counts, xp=xp, names=("grad_output", "scores", "counts"))
    check_scores(xp, scores)
    batch, classes = scores.shape[0], scores.shape[-1]
    check_counts(xp, counts, batch, classes)
    check_residuals(residuals, batch, math.prod(scores.shape[1:-1]))
    from_logits = check_flag(from_logits, "from_logits")
    scores3 = xp.reshape(scores, (batch, -1, classes))
    dtype = compute_dtype(xp, scores.dtype)
    grad_out = check_grad_output(xp, grad_output, batch, dtype, device(scores))
    grad = _backward(xp, grad_out, scores3, xp.astype(counts, dtype), residuals, dtype, from_logits)
    return xp.astype(xp.reshape(grad, scores.shape), scores.dtype, copy=False)


def ace_loss(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    from_logits: bool = True,
    reduction: Reduction = "mean",
    zero_infinity: bool = False,
    xp: ArrayNamespace | None = None,
) -> Array:
    r"""Aggregation cross-entropy loss (Xie et al., CVPR 2019, Eq. 8), exact and epsilon-free.

    .. math:: L_b = -\sum_k \frac{N_{bk}}{T_b}
              \log\Big(\frac{1}{T_b}\sum_{t \le T_b} \operatorname{softmax}(a_{bt})_k\Big)

    Parameters
    ----------
    scores, counts, input_lengths, mask, from_logits, zero_infinity, xp
        As in :func:`ace_forward`.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` averages over the batch (it does not divide by target
        length as CTC's ``"mean"`` does); ``"none"`` returns shape (B,).

    Returns
    -------
    array
        The loss, in the dtype of ``scores``.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import ace_loss, counts_from_targets
    >>> logits = np.zeros((1, 4, 3))  # uniform predictions over 3 classes
    >>> counts = counts_from_targets(np.array([[1, 2]]), num_classes=3, input_lengths=4)
    >>> counts
    array([[2, 1, 1]])
    >>> float(ace_loss(logits, counts))  # -(0.5 log 1/3 + 2 * 0.25 log 1/3) = log 3
    1.0986122886681098
    """
    check_reduction(reduction)
    per_sample, _ = ace_forward(
        scores,
        counts,
        input_lengths=input_lengths,
        mask=mask,
        from_logits=from_logits,
        zero_infinity=zero_infinity,
        xp=xp,
    )
    xp = arrays_namespace(per_sample, xp=xp)
    return reduce_per_sample(xp, per_sample, reduction)


def ace_loss_and_grad(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    from_logits: bool = True,
    reduction: Reduction = "mean",
    zero_infinity: bool = False,
    xp: ArrayNamespace | None = None,
    out: Array | None = None,
) -> tuple[Array, Array]:
    """The loss of :func:`ace_loss` and its closed-form gradient with respect to ``scores``.

    Takes the keywords of :func:`ace_loss`. The gradient has the shape and
    dtype of ``scores`` and is bounded, ``|∂L/∂a| <= 1`` per sample (times the
    ``1/B`` of ``"mean"``).

    Parameters
    ----------
    out : array, optional
        A buffer for the gradient, as NumPy's ``out=``: the shape, dtype and
        device of ``scores``, writable, contiguous and not sharing memory with
        ``scores`` (NumPy, CuPy and torch arrays; JAX arrays are immutable).
        Reusing one buffer across calls saves allocating (and faulting in) a
        fresh gradient every time. It is returned as ``grad``.

    Returns
    -------
    loss : array
        As :func:`ace_loss` returns it.
    grad : array
        ``∂ loss / ∂ scores``; for ``reduction="none"`` the gradient of the sum.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import ace_loss_and_grad
    >>> logits, counts = np.zeros((2, 4, 3), np.float32), np.array([[2, 1, 1], [4, 0, 0]])
    >>> grad = np.empty_like(logits)  # allocated once, reused at every step
    >>> loss, g = ace_loss_and_grad(logits, counts, out=grad)
    >>> g is grad
    True
    """
    check_reduction(reduction)
    from_logits = check_flag(from_logits, "from_logits")
    prep = prepare(scores, counts, input_lengths=input_lengths, mask=mask, zero_infinity=zero_infinity, xp=xp)
    xp = prep.xp
    if out is not None:
        check_out(xp, out, scores)
    weights = _reduction_weights(prep, reduction)
    if from_logits:
        # The kernel writes straight into `out` where it computes in the dtype of the scores.
        direct = out is not None and prep.dtype == scores.dtype
        kernel_out = xp.reshape(out, prep.scores.shape) if direct else None
        per_sample, grad = _forward_backward_logits(prep, weights, zero_infinity, out=kernel_out)
    else:
        direct = False
        per_sample, residuals = _forward(prep, from_logits, zero_infinity)
        grad = _backward(xp, weights, prep.scores, prep.counts, residuals, prep.dtype, from_logits)
    loss = xp.astype(reduce_per_sample(xp, per_sample, reduction), scores.dtype)
    if out is None:
        return loss, xp.astype(xp.reshape(grad, prep.shape), scores.dtype, copy=False)
    if not direct:
        out[...] = xp.astype(xp.reshape(grad, prep.shape), scores.dtype, copy=False)
    return loss, out


def regression_ace_loss(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    from_logits: bool = True,
    reduction: Reduction = "mean",
    xp: ArrayNamespace | None = None,
) -> Array:
    r"""Regression ACE (the paper's Eq. 4), for comparison with the cross-entropy form.

    .. math:: L_b = \tfrac12 \sum_k \Big(N_{bk} - \sum_{t \le T_b} y_{btk}\Big)^2

    Takes the arguments of :func:`ace_loss`. The paper's Table 1 shows that it
    learns far worse than :func:`ace_loss`; it is here to reproduce that.
    """
    return _regression(scores, counts, input_lengths, mask, from_logits, reduction, xp, with_grad=False)[0]


def regression_ace_loss_and_grad(
    scores: Array,
    counts: Array,
    *,
    input_lengths: Any = None,
    mask: Array | None = None,
    from_logits: bool = True,
    reduction: Reduction = "mean",
    xp: ArrayNamespace | None = None,
) -> tuple[Array, Array]:
    r"""Regression ACE and its gradient ``∂L/∂y_btk = Σ_t y_btk - N_bk`` (chained through softmax).

    Takes the arguments of :func:`regression_ace_loss`; returns ``(loss, grad)``.
    """
    return _regression(scores, counts, input_lengths, mask, from_logits, reduction, xp, with_grad=True)


def _regression(
    scores: Array,
    counts: Array,
    input_lengths: Any,
    mask: Array | None,
    from_logits: bool,
    reduction: Reduction,
    xp: ArrayNamespace | None,
    *,
    with_grad: bool,
) -> tuple[Array, Array | None]:
    check_reduction(reduction)
    from_logits = check_flag(from_logits, "from_logits")
    # Negative counts and rows that do not sum to T_b raise; T_b = 0 is fine (the loss is ½ Σ N² = 0).
    prep = prepare(scores, counts, input_lengths=input_lengths, mask=mask, allow_empty=True, xp=xp)
    xp = prep.xp
    per_sample, excess = regression_forward(xp, prep.scores, prep.counts, prep.valid, from_logits, prep.dtype)
    loss = xp.astype(reduce_per_sample(xp, per_sample, reduction), scores.dtype)
    if not with_grad:
        return loss, None
    weights = _reduction_weights(prep, reduction)
    grad = regression_backward(xp, weights, prep.scores, excess, prep.valid, from_logits, prep.dtype)
    return loss, xp.astype(xp.reshape(grad, prep.shape), scores.dtype, copy=False)


def entropy_floor(counts: Array, *, reduction: Reduction = "none", xp: ArrayNamespace | None = None) -> Array:
    r"""The smallest value that :func:`ace_loss` can take for ``counts``.

    .. math:: H(\bar N_b) = -\sum_{k: N_{bk} > 0} \bar N_{bk} \log \bar N_{bk},
              \quad \bar N_{bk} = N_{bk} / \sum_{k'} N_{bk'}

    reached at ``ȳ = N̄``. Training logs can show ``loss - floor``, which goes
    to 0 on a perfectly fit batch (use the same ``reduction`` for both).

    Parameters
    ----------
    counts : array, shape (B, C)
        Class counts, the blank entry included (rows sum to ``T_b``).
    reduction : {"none", "sum", "mean"}
    xp : namespace, optional

    Returns
    -------
    array
        Shape (B,) for ``"none"``, else a scalar; floating.

    Examples
    --------
    >>> import numpy as np
    >>> from ace_core import entropy_floor
    >>> entropy_floor(np.array([[2, 1, 1]]))  # -(0.5 log 0.5 + 2 * 0.25 log 0.25)
    array([1.03972077])
    """
    check_reduction(reduction)
    xp = arrays_namespace(counts, xp=xp, names=("counts",))
    check_floor_counts(xp, counts)
    dtype = counts.dtype if xp.isdtype(counts.dtype, "real floating") else _default_float(xp, counts)
    c = xp.astype(counts, dtype)
    total = xp.sum(c, axis=1, keepdims=True)
    n_bar = c / xp.where(total > 0, total, 1)
    # log of a placeholder 1 where N = 0, so that no 0 * -inf is ever formed.
    terms = xp.where(c > 0, n_bar * xp.log(xp.where(c > 0, n_bar, 1)), 0)
    return reduce_per_sample(xp, -xp.sum(terms, axis=1), reduction)


def _default_float(xp: ArrayNamespace, x: Array) -> Any:
    info = xp.__array_namespace_info__()
    return info.default_dtypes(device=device(x))["real floating"]
