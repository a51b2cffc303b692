"""The kernel contract: what the forward hands to the backward, and the five functions of a kernel.

The generic kernel (:mod:`ace_core._kernel`) and every fast path in
``ace_core.backends.<library>`` implement :class:`KernelFunctions`; the
dispatcher (:mod:`ace_core._dispatch`) picks one per array namespace. Shapes:
``scores`` ``(B, T, C)``, ``valid`` ``(B, T)`` bool or None (every step valid),
``counts`` ``(B, C)`` and ``lengths`` ``(B,)`` in the accumulation ``dtype``,
``grad_out`` ``(B,)``.

Both the per-step log-normalizer and the per-class log-mass are kept in two
parts, a shift and a log-sum::

    log y[b, t, k] = (a[b, t, k] - step_max[b, t]) - step_log_sum[b, t]
    log r[b, t, k] = (log y[b, t, k] - mass_max[b, k]) - mass_log_sum[b, k]

so that ``log r <= 0`` holds exactly in floating point (``r = y / Σ_t y`` in
[0, 1]) whenever ``mass_max`` is the maximum of the same ``log y`` and
``mass_log_sum >= 0``. A one-part ``log Σ_t y`` rounds to its largest term at
large ``|log y|`` and would give ``r`` up to the number of tied steps.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from ._typing import Array, ArrayNamespace, DType

__all__ = ["ACEResiduals", "KernelFunctions", "LogitStatistics"]


class ACEResiduals(NamedTuple):
    """What :func:`~ace_core.ace_backward` needs besides the scores and counts: O(B·(T + C)).

    A ``NamedTuple``, so it is a JAX pytree and can be saved by ``custom_vjp``.
    ``log_mass`` (a property) is ``mass_max + mass_log_sum``.
    """

    #: (B, T) the shift of each step's log-normalizer: the max over classes of the logits in the
    #: generic kernel (a fast path may shift by another bound); None for probability input.
    step_max: Array | None
    #: (B, T) log Σ_k exp(a - step_max): the log-normalizer is ``step_max + step_log_sum``,
    #: kept in two parts for accuracy; None for probability input.
    step_log_sum: Array | None
    #: (B, C) the shift of each class's log-mass: the max over valid steps of log y in the
    #: generic kernel (a fast path may shift by another bound).
    mass_max: Array
    #: (B, C) log Σ_{t valid} exp(log y - mass_max), in [0, log T_b] for the generic kernel.
    mass_log_sum: Array
    valid: Array | None  #: (B, T) bool, the valid steps; None when every step is valid
    lengths: Array  #: (B,) T_b in the accumulation dtype
    keep: Array  #: (B,) bool, False for infeasible samples (T_b = 0 or a negative count)
    #: () the loss and gradient of infeasible samples: 0 with ``zero_infinity``, else NaN.
    #: An array rather than a bool so that the residuals can cross a ``jax.jit`` boundary.
    drop_value: Array

    @property
    def log_mass(self) -> Array:
        """(B, C) ``log Σ_{t valid} y_btk``; ``-inf`` for a class of zero mass, never NaN."""
        return self.mass_max + self.mass_log_sum


#: ``(step_max, step_log_sum, mass_max, mass_log_sum)``, the statistics of a forward from logits.
LogitStatistics = tuple[Array, Array, Array, Array]


class KernelFunctions(Protocol):
    """The five functions of a kernel: :mod:`ace_core._kernel` and each ``ace_core.backends`` module.

    A fast path's backward must accept residuals made by the generic forward
    (any split of the two statistics into shift and log-sum) and keep
    ``r = y / Σ_t y`` in [0, 1]. Samples are assumed feasible: the caller
    masks infeasible ones with ``residuals.keep`` and ``residuals.drop_value``,
    unless the module sets ``MASKS_INFEASIBLE = True``. Then its
    ``backward_logits`` applies ``residuals.keep`` and ``residuals.drop_value``
    itself, and its ``forward_backward_logits`` takes them as the keywords
    ``keep`` and ``drop_value`` (``keep=None``: every sample is feasible), so
    that the mask costs no pass of its own over the gradient.
    """

    def forward_logits(
        self, xp: ArrayNamespace, scores: Array, valid: Array | None, dtype: DType
    ) -> LogitStatistics:
        """``(step_max, step_log_sum, mass_max, mass_log_sum)`` from logits ``scores``."""
        ...

    def forward_probs(
        self, xp: ArrayNamespace, scores: Array, valid: Array | None, dtype: DType
    ) -> tuple[Array, Array]:
        """``(mass_max, mass_log_sum)`` from probabilities ``scores`` (``mass_log_sum`` may be 0)."""
        ...

    def backward_logits(
        self,
        xp: ArrayNamespace,
        grad_out: Array,
        scores: Array,
        counts: Array,
        residuals: ACEResiduals,
        dtype: DType,
    ) -> Array:
        """``grad_out_b (y s - N̄ r)`` ``(B, T, C)`` in ``dtype``, +0 at masked steps.

        Uses ``residuals.valid``, ``residuals.lengths`` and the four statistics.
        """
        ...

    def backward_probs(
        self,
        xp: ArrayNamespace,
        grad_out: Array,
        scores: Array,
        counts: Array,
        residuals: ACEResiduals,
        dtype: DType,
    ) -> Array:
        """``-grad_out_b N̄_bk / Σ_t y_btk`` at valid steps, 0 at masked ones."""
        ...

    def forward_backward_logits(
        self,
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
        """``(step_max, step_log_sum, mass_max, mass_log_sum, grad)``: both halves in one call.

        ``out``, where given, is a ``(B, T, C)`` array of ``dtype`` that
        receives the gradient (and is returned as ``grad``); it has been
        checked by the caller and does not overlap ``scores``.
        """
        ...
