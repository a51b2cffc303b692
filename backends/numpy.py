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

from ace_core import _kernel

__all__ = ["forward_logits", "backward_logits", "forward_backward_logits", "num_threads"]

#: At or below this many classes the backward works on all classes at once;
#: above it, on the few present classes of each sample.
DENSE_MAX_CLASSES = 256
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
    """``(row, mass)``: below these a row sum or a class mass may have lost accuracy to underflow.

    With row sums ≥ ``row``, an element that underflows (``e < tiny``) has
    ``y < tiny / row``; a mass of at least ``mass`` loses under ``eps`` relative
    to ``steps`` such elements.
    """
    info = np.finfo(dtype)
    row = float(info.tiny) ** 0.25
    return row, steps * float(info.tiny) / (row * float(info.eps))


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


def _log_norm(shift: np.ndarray, rowsum: np.ndarray) -> np.ndarray:
    """``log Σ_k exp(a)`` ``(nb, T)`` in float64: it is subtracted from logits in log space."""
    return shift + np.log(rowsum.astype(np.float64))


def _split_log_norm(log_norm: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(step_max, step_log_sum)`` with an integer ``step_max`` near ``log_norm``.

    ``a - step_max`` is then exact for the dominant class and ``step_log_sum``
    is small, as with the max shift of the generic kernel, so a backward that
    recomputes ``y`` from these residuals is as accurate as the generic one.
    """
    whole = np.where(np.isfinite(log_norm), np.rint(log_norm), log_norm)
    rest = np.where(np.isfinite(log_norm), log_norm - whole, 0.0)
    return whole.astype(dtype), rest.astype(dtype)


def _log_mass(blk: _Block, e: np.ndarray, rowsum: np.ndarray, log_norm: np.ndarray, mass_floor: float):
    """``log Σ_t y`` ``(nb, C)`` in float64 with ``y = e / rowsum``; tiny masses are recomputed in log space.

    float64, like ``log_norm``: the log-space backward subtracts both from the
    logits, and a float32 rounding of a large ``|log_mass|`` would show in ``r``.
    """
    mass = np.einsum("bt,btc->bc", 1 / rowsum, e)
    log_mass = np.log(mass.astype(np.float64))
    tiny = mass < mass_floor
    if tiny.any():
        for sample, column in zip(*np.nonzero(tiny), strict=True):
            log_y = blk.a[sample, :, column] - log_norm[sample]
            if blk.valid is not None:
                log_y = np.where(blk.valid[sample], log_y, -np.inf)
            peak = np.max(log_y)
            if np.isfinite(peak):
                log_mass[sample, column] = peak + np.log(np.sum(np.exp(log_y - peak)))
    return log_mass


def _forward_block(blk: _Block, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``exp`` into ``e``; returns ``(rowsum, log_norm (float64), log_mass)`` with ``y = e / rowsum``."""
    row_floor, mass_floor = _floors(e.dtype, e.shape[1])
    shift, rowsum = _exp_into(blk, e, per_row_shift=False)
    if not _rows_exact(rowsum, row_floor):
        shift, rowsum = _exp_into(blk, e, per_row_shift=True)
    log_norm = _log_norm(shift, rowsum)
    return rowsum, log_norm, _log_mass(blk, e, rowsum, log_norm, mass_floor)


def _pull_weights(counts: np.ndarray, lengths: np.ndarray, grad_out: np.ndarray) -> np.ndarray:
    """``g_b N̄_bk`` ``(nb, C)``."""
    safe = np.where(lengths > 0, lengths, 1)
    return counts * (grad_out / safe)[:, None]


def _backward_dense(e: np.ndarray, scale: np.ndarray, weights: np.ndarray, log_mass: np.ndarray) -> None:
    """``grad = y (S - W)`` into ``e``, with ``y = e · ρ``, ``W = g N̄ / Σ_t y`` and ``S = Σ_k y W``.

    ``grad = e ⊙ (u 1ᵀ - ρ Wᵀ)`` with ``u = ρ² (e W)``: the rank-2 factor is one
    batched matrix product, where broadcasting (T, 1) against (1, C) would pay
    NumPy's loop overhead on every short row.
    """
    present = weights != 0
    per_mass = np.where(present, weights * np.exp(-np.where(present, log_mass, 0)), 0).astype(e.dtype)
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
    blk: _Block, e: np.ndarray, scale: np.ndarray, weights: np.ndarray, log_norm: np.ndarray, log_mass
) -> None:
    """``grad = y (g s) - g N̄ r`` into ``e`` (``y = e · scale``), ``r`` only on the present classes."""
    for sample in range(e.shape[0]):
        present = np.flatnonzero(weights[sample])
        if present.size == 0:
            e[sample] = 0
            continue
        log_r = blk.a[sample][:, present] - log_norm[sample][:, None] - log_mass[sample, present]
        # r = y / Σ_t y lies in [0, 1]; the clip removes a rounding excess that would
        # push |grad| past its bound of 1.
        r = np.minimum(np.exp(log_r), 1)
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
    weights: np.ndarray,
    log_norm: np.ndarray,
    log_mass: np.ndarray,
) -> None:
    """The gradient into ``e``, where ``y = e · scale`` (``scale`` ``(nb, T)``)."""
    _, mass_floor = _floors(e.dtype, e.shape[1])
    if blk.valid is not None:
        # ρ = 0 at masked steps: their gradient is then +0 (0 · a negative factor would be -0).
        scale = np.where(blk.valid, scale, 0)
    tiny_present = np.any((weights != 0) & (log_mass < math.log(mass_floor)))
    if e.shape[2] > DENSE_MAX_CLASSES or tiny_present:
        # Log space on the present classes: exact also where y / mass would not be.
        _backward_sparse(blk, e, scale, weights, log_norm, log_mass)
    else:
        _backward_dense(e, scale, weights, log_mass)


def forward_logits(
    xp: Any, scores: np.ndarray, valid: np.ndarray | None, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The forward of :func:`ace_core._kernel.forward_logits`; ``step_max`` may be another shift."""
    batch, steps, classes = scores.shape
    dtype = np.dtype(dtype)
    step_max = np.empty((batch, steps), dtype=dtype)
    step_log_sum = np.empty((batch, steps), dtype=dtype)
    log_mass = np.empty((batch, classes), dtype=dtype)

    def work(block: slice) -> None:
        blk = _Block(scores, valid, block, dtype)
        e = _scratch_buffer(blk.a.shape, dtype)
        with np.errstate(all="ignore"):
            _, log_norm, log_mass[block] = _forward_block(blk, e)
            step_max[block], step_log_sum[block] = _split_log_norm(log_norm, dtype)

    _run_blocks(batch, steps * classes, work)
    return step_max, step_log_sum, log_mass


def backward_logits(
    xp: Any,
    grad_out: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
    valid: np.ndarray | None,
    lengths: np.ndarray,
    step_max: np.ndarray,
    step_log_sum: np.ndarray,
    log_mass: np.ndarray,
    dtype: np.dtype,
) -> np.ndarray:
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``."""
    batch, steps, classes = scores.shape
    dtype = np.dtype(dtype)
    grad = np.empty((batch, steps, classes), dtype=dtype)
    weights = _pull_weights(counts, lengths, grad_out)

    def work(block: slice) -> None:
        blk = _Block(scores, valid, block, dtype)
        e = grad[block]
        shift = step_max[block]
        with np.errstate(all="ignore"):
            np.subtract(blk.a, shift[:, :, None], out=e)
            np.exp(e, out=e)
            if blk.invalid3 is not None:
                np.copyto(e, 0, where=blk.invalid3)
            log_sum = step_log_sum[block].astype(np.float64)
            log_norm = shift + log_sum
            _backward_block(blk, e, np.exp(-log_sum), weights[block], log_norm, log_mass[block])

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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward and backward in one sweep: ``exp(a)`` lives in the gradient's buffer between the halves."""
    batch, steps, classes = scores.shape
    dtype = np.dtype(dtype)
    grad = np.empty((batch, steps, classes), dtype=dtype)
    step_max = np.empty((batch, steps), dtype=dtype)
    step_log_sum = np.empty((batch, steps), dtype=dtype)
    log_mass = np.empty((batch, classes), dtype=dtype)
    weights = _pull_weights(counts, lengths, grad_out)

    def work(block: slice) -> None:
        blk = _Block(scores, valid, block, dtype)
        e = grad[block]
        with np.errstate(all="ignore"):
            rowsum, log_norm, block_log_mass = _forward_block(blk, e)
            step_max[block], step_log_sum[block] = _split_log_norm(log_norm, dtype)
            log_mass[block] = block_log_mass
            _backward_block(blk, e, 1 / rowsum.astype(np.float64), weights[block], log_norm, block_log_mass)

    _run_blocks(batch, steps * classes, work)
    return step_max, step_log_sum, log_mass, grad


# The probability-input halves are already one pass each in the generic kernel.
forward_probs = _kernel.forward_probs
backward_probs = _kernel.backward_probs
