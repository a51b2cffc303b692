"""NumPy fast path: the softmax computed once, in probability space, block by block.

The generic kernel (:mod:`ace_core._kernel`) works in log space over whole
``(B, T, C)`` temporaries. Here the batch is cut into blocks of samples whose
working set stays in the CPU cache, and each block is processed with in-place
ufuncs (``out=``):

* forward: ``e = exp(a - shift)`` once; its row sums give the log-normalizer,
  ``y = e / rowsum``, and the mass ``Σ_t y`` comes from one more pass;
* backward: ``grad = y (g s) - g N̄ r``. Only classes with ``N > 0`` have
  ``N̄ r ≠ 0``: for large alphabets ``s`` and the pull term are computed on those
  few columns (in log space, exact), for small ones on all classes at once;
* ``ace_loss_and_grad`` (``forward_backward_logits``) keeps ``y`` in the gradient's
  own buffer between the halves, so the scores are read once and the gradient
  written once, with one ``exp`` per element.

Blocks run on a small thread pool (NumPy's ufuncs release the GIL); the cut
into blocks does not depend on the number of threads, so results are bitwise
the same for any thread count. ``ACE_CORE_NUM_THREADS`` sets the count
(default: the CPUs this process may use). The reductions over whole blocks
are ``einsum`` loops, not BLAS products: a multi-threaded BLAS called from
these threads (or next to another busy process) spin-waits for cores and ran
10-100x slower than the single-threaded loops, and its result could depend on
its own thread count.

Exactness: probability space loses nothing where no value underflows.
Each block checks that (a row whose sum fell under ``tiny**0.25`` with the
cheap per-sample shift is redone with the per-row max; a class whose mass is
so small that underflowed terms could matter is recomputed in log space), so
the results agree with the generic kernel to a few ulps for any finite logits.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
from array_api_compat import numpy as np_compat

from ace_core import _kernel
from ace_core._contract import ACEResiduals

from ._common import DENSE_MAX_CLASSES, mass_floor, on_valid_steps, per_mass_weights, pull_weights

__all__ = ["forward_logits", "backward_logits", "forward_backward_logits", "num_threads"]

#: Elements per block (8 MiB of float32; measured best of 2-32 MiB here): big enough that per-call overhead
#: is small, small enough to stay in a shared L3 cache.
BLOCK_ELEMENTS = 1 << 21
#: Scratch of the small-alphabet backward's rank-2 factor (256 KiB of float32).
FACTOR_ELEMENTS = 1 << 16
#: Below this many elements in all, threads cost more than they save.
THREADED_MIN_ELEMENTS = 1 << 21


def num_threads() -> int:
    """Threads used for large inputs: ``ACE_CORE_NUM_THREADS``, else the CPUs this process may use."""
    configured = os.environ.get("ACE_CORE_NUM_THREADS")
    if configured:
        return max(1, int(configured))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="ace_core")


def _run_blocks(batch: int, per_sample: int, work: Callable[[slice], None]) -> None:
    size = max(1, BLOCK_ELEMENTS // max(per_sample, 1))
    blocks = [slice(start, min(start + size, batch)) for start in range(0, batch, size)]
    threads = min(num_threads(), len(blocks))
    if threads <= 1 or batch * per_sample < THREADED_MIN_ELEMENTS:
        for block in blocks:
            work(block)
    else:
        # list() waits for every block and re-raises the first error.
        list(_pool(threads).map(work, blocks))


_scratch = threading.local()


def _scratch_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread work buffer, reused across calls: fresh large buffers cost page faults."""
    size = math.prod(shape)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        _scratch.buffer = buffer
    return buffer[:size].reshape(shape)


def _floors(dtype: np.dtype, steps: int) -> tuple[float, float]:
    """``(row, mass)``: below these a row sum or a class mass may have lost accuracy to underflow."""
    info = np.finfo(dtype)
    row = float(info.tiny) ** 0.25
    return row, mass_floor(info, steps, row)


class _Block:
    """The arrays of one block of samples, in the compute dtype."""

    def __init__(self, scores: np.ndarray, valid: np.ndarray | None, block: slice, dtype: np.dtype):
        self.a = scores[block].astype(dtype, copy=False)
        self.valid = None if valid is None else valid[block]
        self.invalid3 = None if valid is None else ~self.valid[:, :, None]


def _exp_into(blk: _Block, e: np.ndarray, per_row_shift: bool) -> tuple[np.ndarray, np.ndarray]:
    """``e = exp(a - shift)`` into ``e``, 0 at masked steps; returns ``(shift, rowsum)`` ``(nb, T)``.

    Without ``per_row_shift`` the shift is 0: no max pass and no subtraction
    pass. That is exact unless a row overflows or underflows, which the caller
    sees in the row sums.
    """
    a, valid = blk.a, blk.valid
    if per_row_shift:
        where3 = None if valid is None else valid[:, :, None]
        shift = np.max(a, axis=2) if valid is None else np.max(a, axis=2, where=where3, initial=-np.inf)
        if valid is not None:
            # Masked steps (and samples without a valid step) get shift 0, not -inf.
            shift = np.where(valid, shift, 0)
        np.subtract(a, shift[:, :, None], out=e)
        np.exp(e, out=e)
    else:
        shift = np.zeros(a.shape[:2], dtype=e.dtype)
        np.exp(a, out=e)
    if blk.invalid3 is not None:
        np.copyto(e, 0, where=blk.invalid3)
    # einsum, not np.sum (per-row loop overhead on short rows) nor a BLAS product (see _REDUCE).
    rowsum = np.einsum("btc->bt", e)
    if valid is not None:
        rowsum = np.where(valid, rowsum, 1)
    return shift, rowsum


def _rows_exact(rowsum: np.ndarray, row_floor: float) -> bool:
    """No row sum left ``[row_floor, 1 / row_floor]`` (or is inf, NaN).

    Too low, elements may have underflowed; too high, ``1 / rowsum`` (and its
    square in the small-C backward) would lose precision as a subnormal.
    """
    return bool(np.all((rowsum >= row_floor) & (rowsum <= 1 / row_floor)))


def _step_statistics(
    shift: np.ndarray, rowsum: np.ndarray, per_row_shift: bool, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """``(step_max, step_log_sum)`` in ``dtype``: the log-normalizer in two parts, as in the generic kernel.

    With the per-row max as the shift they are that max and ``log rowsum`` (in
    ``[0, log C]``), which keeps ``a - step_max`` exact for any size of logits.
    With the shift 0 (rows within ``[tiny**0.25, tiny**-0.25]``, so a moderate
    ``log rowsum``) ``log rowsum`` is split into a whole number and a small rest,
    so that a backward recomputing ``y`` from the dtype's residuals is as
    accurate as with the max shift.
    """
    log_sum = np.log(rowsum.astype(np.float64))
    if per_row_shift:
        return shift.astype(dtype), log_sum.astype(dtype)
    return _split_log(log_sum, dtype)


def _split_log(log_value: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(whole, rest)`` in ``dtype``: a whole number near a moderate float64 log and the small rest."""
    whole = np.where(np.isfinite(log_value), np.rint(log_value), log_value).astype(dtype)
    # The rest is taken from the rounded whole: their float64 sum is log_value to the dtype's precision.
    rest = np.where(np.isfinite(log_value), log_value - whole, 0.0)
    return whole, rest.astype(dtype)


def _log_y(
    blk: _Block, sample: int, columns: Any, norm: tuple[np.ndarray, np.ndarray], in_dtype: bool = False
) -> np.ndarray:
    """``log y = (a - step_max) - step_log_sum`` ``(T, len(columns))`` of one sample, as float64.

    ``norm`` holds the two step residuals in the compute dtype. With
    ``in_dtype`` the two subtractions round to that dtype, exactly as the
    generic kernel forms ``log y``: a log-mass taken as the max of these values
    is then a number of the dtype, and every backward that rounds the same way
    gets ``log r <= 0`` for it (see :func:`_mass`).
    """
    shift, log_sum = norm
    a = blk.a[sample][:, columns]
    if in_dtype:
        return ((a - shift[sample][:, None]) - log_sum[sample][:, None]).astype(np.float64)
    a = a.astype(np.float64)
    return (a - shift[sample][:, None].astype(np.float64)) - log_sum[sample][:, None].astype(np.float64)


def _mass(blk: _Block, e: np.ndarray, rowsum: np.ndarray, norm: tuple[np.ndarray, np.ndarray], floor: float):
    """``(mass_max, mass_log_sum)`` ``(nb, C)`` in the compute dtype, with ``y = e / rowsum``.

    In probability space the log-mass is split into a whole number and a small
    rest (:func:`_split_log`), so that the dtype keeps it to an absolute, not a
    relative, rounding error. A class whose mass is under ``floor`` (where
    underflowed terms could matter) is recomputed in log space as the generic
    kernel does: ``mass_max`` the max over steps of ``log y`` rounded as in the
    dtype (:func:`_log_y`), ``mass_log_sum`` the log-sum relative to it, so that
    tied steps share ``r`` exactly at any magnitude. A backward tells the two
    kinds apart by the same floor.
    """
    mass = np.einsum("bt,btc->bc", 1 / rowsum, e)
    mass_max, mass_log_sum = _split_log(np.log(mass.astype(np.float64)), e.dtype)
    tiny = mass < floor
    if tiny.any():
        for sample, column in zip(*np.nonzero(tiny), strict=True):
            log_y = _log_y(blk, sample, [column], norm, in_dtype=True)[:, 0]
            if blk.valid is not None:
                log_y = np.where(blk.valid[sample], log_y, -np.inf)
            peak = np.max(log_y)
            if np.isfinite(peak):
                mass_max[sample, column] = peak
                mass_log_sum[sample, column] = np.log(np.sum(np.exp(log_y - peak)))
            else:  # below the dtype's range: a backward recomputes it (see _kernel.backward_logits)
                mass_max[sample, column], mass_log_sum[sample, column] = -np.inf, 0
    return mass_max, mass_log_sum


def _forward_block(blk: _Block, e: np.ndarray, dtype: np.dtype):
    """``exp`` into ``e``; returns ``(rowsum, step_max, step_log_sum, mass_max, mass_log_sum)``.

    ``y = e / rowsum``; the four statistics are in ``dtype``.
    """
    row_floor, mass_floor = _floors(e.dtype, e.shape[1])
    per_row_shift = False
    shift, rowsum = _exp_into(blk, e, per_row_shift)
    if not _rows_exact(rowsum, row_floor):
        per_row_shift = True
        shift, rowsum = _exp_into(blk, e, per_row_shift)
    step_max, step_log_sum = _step_statistics(shift, rowsum, per_row_shift, dtype)
    mass_max, mass_log_sum = _mass(blk, e, rowsum, (step_max, step_log_sum), mass_floor)
    return rowsum, step_max, step_log_sum, mass_max, mass_log_sum


class _Pull:
    """The per-sample factors of the pull term of one block: ``g``, ``N``, ``T_b`` and ``g N̄``."""

    def __init__(self, grad_out: np.ndarray, counts: np.ndarray, lengths: np.ndarray, block: slice):
        self.grad_out = np.asarray(grad_out[block], dtype=np.float64)
        self.counts = np.asarray(counts[block], dtype=np.float64)
        self.lengths = np.asarray(lengths[block], dtype=np.float64)
        self.weights = pull_weights(np, self.counts, self.lengths, self.grad_out)


def _backward_dense(e: np.ndarray, scale: np.ndarray, weights: np.ndarray, log_mass: np.ndarray) -> None:
    """``grad = y (S - W)`` into ``e``, with ``y = e · ρ``, ``W = g N̄ / Σ_t y`` and ``S = Σ_k y W``.

    ``grad = e ⊙ (u 1ᵀ - ρ Wᵀ)`` with ``u = ρ² (e W)``: the rank-2 factor is one
    batched matrix product, where broadcasting (T, 1) against (1, C) would pay
    NumPy's loop overhead on every short row.
    """
    per_mass = per_mass_weights(np, weights, log_mass).astype(e.dtype)
    rho = scale.astype(e.dtype)
    total = np.einsum("btc,bc->bt", e, per_mass)
    left = np.stack([rho * (rho * total), -rho], axis=2)  # (nb, T, 2); ρ·total = Σ_k y W is O(1)
    right = np.stack([np.ones_like(per_mass), per_mass], axis=1)  # (nb, 2, C)
    # The factor is built for a few samples at a time: its scratch stays small (and in cache).
    per_sample = e.shape[1] * e.shape[2]
    step = max(1, FACTOR_ELEMENTS // per_sample)
    for start in range(0, e.shape[0], step):
        chunk = slice(start, min(start + step, e.shape[0]))
        factor = _scratch_buffer(e[chunk].shape, e.dtype)
        np.matmul(left[chunk], right[chunk], out=factor)
        np.multiply(e[chunk], factor, out=e[chunk])


def _backward_sparse(
    blk: _Block,
    e: np.ndarray,
    scale: np.ndarray,
    weights: np.ndarray,
    norm: tuple[np.ndarray, np.ndarray],
    mass_max: np.ndarray,
    mass_log_sum: np.ndarray,
    log_floor: float,
) -> None:
    """``grad = y (g s) - g N̄ r`` into ``e`` (``y = e · scale``), ``r`` only on the present classes.

    ``log r = (log y - mass_max) - mass_log_sum`` in float64, clipped at 0
    (``log y`` rounded as in the dtype for the classes of a log-space mass, see :func:`_mass`):
    exact for tied steps at any magnitude, and never above 1.
    """
    log_mass = mass_max + mass_log_sum
    for sample in range(e.shape[0]):
        present = np.flatnonzero(weights[sample])
        if present.size == 0:
            e[sample] = 0
            continue
        log_y = _log_y(blk, sample, present, norm)
        tiny = log_mass[sample, present] < log_floor
        if tiny.any():  # log-space masses: log y rounded as the forward rounded it
            log_y[:, tiny] = _log_y(blk, sample, present[tiny], norm, in_dtype=True)
        log_r = (log_y - mass_max[sample, present]) - mass_log_sum[sample, present]
        r = np.exp(np.minimum(log_r, 0))
        if blk.valid is not None:
            r = np.where(blk.valid[sample][:, None], r, 0)
        pull = r * weights[sample, present]
        push = np.sum(pull, axis=1)
        np.multiply(e[sample], (push * scale[sample]).astype(e.dtype)[:, None], out=e[sample])
        e[sample][:, present] -= pull.astype(e.dtype)


def _backward_block(
    blk: _Block,
    e: np.ndarray,
    scale: np.ndarray,
    pull: _Pull,
    norm: tuple[np.ndarray, np.ndarray],
    mass_max: np.ndarray,
    mass_log_sum: np.ndarray,
) -> None:
    """The gradient into ``e``, where ``y = e · scale`` (``scale`` ``(nb, T)``); statistics in float64."""
    _, floor = _floors(e.dtype, e.shape[1])
    log_mass = mass_max + mass_log_sum
    weights = pull.weights
    present = weights != 0
    if np.any(present & (mass_max == -np.inf)):
        # A present class whose log y all lie below float64's range: only the generic
        # kernel's halved log y keeps how they compare (rare: |logits| near the largest float).
        _backward_generic(blk, e, pull, norm, mass_max, mass_log_sum)
        return
    scale = on_valid_steps(np, scale, blk.valid)
    if e.shape[2] > DENSE_MAX_CLASSES or np.any(present & (log_mass < math.log(floor))):
        # Log space on the present classes: exact also where y / mass would not be.
        _backward_sparse(blk, e, scale, weights, norm, mass_max, mass_log_sum, math.log(floor))
    else:
        _backward_dense(e, scale, weights, log_mass)


def _backward_generic(blk: _Block, e: np.ndarray, pull: _Pull, norm, mass_max, mass_log_sum) -> None:
    """The generic kernel's gradient of the block into ``e``, in the compute dtype (its ``log y``)."""
    dtype = e.dtype
    statistics = (*norm, mass_max.astype(dtype), mass_log_sum.astype(dtype))
    lengths, counts, grad_out = (x.astype(dtype) for x in (pull.lengths, pull.counts, pull.grad_out))
    residuals = _kernel.kernel_residuals(np_compat, statistics, blk.valid, lengths)
    np.copyto(e, _kernel.backward_logits(np_compat, grad_out, blk.a, counts, residuals, dtype))


def forward_logits(xp: Any, scores: np.ndarray, valid: np.ndarray | None, dtype: np.dtype):
    """The forward of :func:`ace_core._kernel.forward_logits`; the shifts may differ from the maxima."""
    batch, steps, classes = scores.shape
    dtype = np.dtype(dtype)
    step_max = np.empty((batch, steps), dtype=dtype)
    step_log_sum = np.empty((batch, steps), dtype=dtype)
    mass_max = np.empty((batch, classes), dtype=dtype)
    mass_log_sum = np.empty((batch, classes), dtype=dtype)

    def work(block: slice) -> None:
        blk = _Block(scores, valid, block, dtype)
        e = _scratch_buffer(blk.a.shape, dtype)
        with np.errstate(all="ignore"):
            _, step_max[block], step_log_sum[block], mass_max[block], mass_log_sum[block] = _forward_block(
                blk, e, dtype
            )

    _run_blocks(batch, steps * classes, work)
    return step_max, step_log_sum, mass_max, mass_log_sum


def backward_logits(
    xp: Any,
    grad_out: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
    residuals: ACEResiduals,
    dtype: np.dtype,
) -> np.ndarray:
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``."""
    batch, steps, classes = scores.shape
    dtype = np.dtype(dtype)
    res = residuals
    grad = np.empty((batch, steps, classes), dtype=dtype)

    def work(block: slice) -> None:
        blk = _Block(scores, res.valid, block, dtype)
        e = grad[block]
        shift = res.step_max[block]
        with np.errstate(all="ignore"):
            np.subtract(blk.a, shift[:, :, None], out=e)
            np.exp(e, out=e)
            if blk.invalid3 is not None:
                np.copyto(e, 0, where=blk.invalid3)
            log_sum = res.step_log_sum[block].astype(np.float64)
            _backward_block(
                blk,
                e,
                np.exp(-log_sum),
                _Pull(grad_out, counts, res.lengths, block),
                (shift.astype(dtype, copy=False), res.step_log_sum[block].astype(dtype, copy=False)),
                res.mass_max[block].astype(np.float64),
                res.mass_log_sum[block].astype(np.float64),
            )

    _run_blocks(batch, steps * classes, work)
    return grad


def forward_backward_logits(
    xp: Any,
    grad_out: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
    valid: np.ndarray | None,
    lengths: np.ndarray,
    dtype: np.dtype,
    *,
    out: np.ndarray | None = None,
):
    """Forward and backward in one sweep: ``exp(a)`` lives in the gradient's buffer between the halves.

    ``out`` (C-contiguous, ``(B, T, C)`` of ``dtype``, not overlapping ``scores``)
    receives the gradient: a buffer reused across calls saves the page faults of a fresh one.
    """
    batch, steps, classes = scores.shape
    dtype = np.dtype(dtype)
    grad = np.empty((batch, steps, classes), dtype=dtype) if out is None else out
    step_max = np.empty((batch, steps), dtype=dtype)
    step_log_sum = np.empty((batch, steps), dtype=dtype)
    mass_max = np.empty((batch, classes), dtype=dtype)
    mass_log_sum = np.empty((batch, classes), dtype=dtype)

    def work(block: slice) -> None:
        blk = _Block(scores, valid, block, dtype)
        e = grad[block]
        with np.errstate(all="ignore"):
            rowsum, *statistics = _forward_block(blk, e, dtype)
            step_max[block], step_log_sum[block], mass_max[block], mass_log_sum[block] = statistics
            _backward_block(
                blk,
                e,
                1 / rowsum.astype(np.float64),
                _Pull(grad_out, counts, lengths, block),
                (statistics[0], statistics[1]),
                statistics[2].astype(np.float64),
                statistics[3].astype(np.float64),
            )

    _run_blocks(batch, steps * classes, work)
    return step_max, step_log_sum, mass_max, mass_log_sum, grad


# The probability-input halves are already one pass each in the generic kernel.
forward_probs = _kernel.forward_probs
backward_probs = _kernel.backward_probs
