"""CuPy fast path: fused CUDA kernels for the ACE forward and backward.

Three kernels (source and design in :mod:`ace_core.backends._cupy_source`):

* forward, one block per (sample, tile of steps): each valid row's max and
  ``log Σ_k exp(a - max)``, then per class an online log-sum-exp of ``log y``
  over the tile's valid rows, written as one partial per (sample, tile, class);
* combine, one thread per (sample, class): the tile partials in tile order →
  ``log_mass``;
* backward, one block per row: ``pull_k = N̄_k r_tk`` for the classes present in
  the label, ``s = Σ_k pull_k``, and ``g_b (y s - pull)`` written in the scores'
  dtype (zeros at masked rows).

Each score is read once by the forward and once by the backward, and the
gradient is written once: the three passes of the memory floor. Per-row
values are held in registers (``ITEMS`` classes per thread, at most
:data:`MAX_THREADS` threads), which bounds C at :data:`MAX_CLASSES` (16384);
larger C, empty shapes and dtypes without a kernel fall back to the generic
array-API kernel.

* **Deterministic**: fixed-order tree reductions within a block and a
  fixed-order combination of the tiles; no atomics. The tiling depends only on
  the shape, so results are bitwise reproducible on one device.
* **Streams**: everything is queued on CuPy's current stream
  (``cupy.cuda.get_current_stream()``), with no host synchronisation and no
  value-dependent Python branch, so a call can be captured in a CUDA graph
  (after a first call has compiled the kernels). Wrap a call in
  :func:`on_torch_stream` (or ``with external_stream(ptr):``) to run on a
  stream owned by another library.
* **Memory**: besides the outputs (the gradient, ``(B, T)`` and ``(B, C)``
  arrays), only the forward's tile partials, at most
  ``max(8 B, 512 + B) · C`` accumulation-dtype values: O(B·C), no ``(B, T, C)``
  temporary.
* **Compilation**: none at import. The kernels for one (storage dtype,
  accumulation dtype, ``ITEMS``) are compiled by NVRTC on first use and cached
  (in memory here, and on disk by CuPy); :func:`compiled_variants` lists them.
* **dtypes**: scores float16, float32 or float64, or bfloat16 passed as its
  16-bit patterns (a uint16/int16 array with ``bfloat16_bits=True``, since
  CuPy has no bfloat16 dtype); accumulation in ``dtype`` (float32 for the half
  types, see :func:`ace_core._namespace.compute_dtype`). The gradient comes back
  in the scores' own dtype (bit patterns for bfloat16), so the caller's cast to
  the scores dtype costs nothing.

From torch (the route :mod:`ace_core.backends.torch` takes for CUDA tensors)::

    from ace_core.backends import cupy as kernels
    from array_api_compat import cupy as xp

    with cupy.cuda.Device(t.device.index), kernels.on_torch_stream(torch.cuda.current_stream().cuda_stream):
        if t.dtype == torch.bfloat16:  # CuPy has no bfloat16: pass the bits
            grad = kernels.backward_logits(xp, ..., cupy.from_dlpack(t.view(torch.int16)), ...,
                                           cupy.float32, bfloat16_bits=True)
            grad = torch.from_dlpack(grad).view(torch.bfloat16)
        ...

Unverified on a GPU: this module was written and its CUDA source compiled with
NVRTC (sm_70, sm_80, sm_90) on a machine without a GPU; ``tests/test_backend_cupy.py``
checks it against the generic kernel wherever a GPU is present.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import cupy
import numpy as np

from ace_core import _kernel
from ace_core.backends._cupy_source import SOURCE, backward_name, combine_name, forward_name

__all__ = [
    "forward_logits",
    "backward_logits",
    "forward_backward_logits",
    "is_supported",
    "tiling",
    "launch_shape",
    "compiled_variants",
    "external_stream",
    "on_torch_stream",
    "MAX_CLASSES",
]

#: Classes held in registers per thread; one kernel variant each.
ITEMS_CHOICES = (1, 2, 4, 8, 16, 32)
#: Threads per block at most. The kernels are compiled with ``__launch_bounds__(1024)`` (at most 64
#: registers a thread), so blocks of up to 512 threads can run two to a multiprocessor. To be tuned on
#: a GPU: 16 items use 62-64 registers (float accumulation, a few spilled bytes in the forward); 32
#: items spill heavily and are there for correctness up to MAX_CLASSES.
MAX_THREADS = 512
#: The largest C the fused kernels take; larger C runs the generic kernel.
MAX_CLASSES = ITEMS_CHOICES[-1] * MAX_THREADS
#: Forward tiles: at least this many steps each...
MIN_ROWS_PER_TILE = 8
#: ... and per sample at most ``max(MIN_TILES_PER_SAMPLE, ceil(TARGET_BLOCKS / B))`` tiles, so that the
#: partials stay O(B·C) while a small batch still gets enough blocks to fill the GPU.
MIN_TILES_PER_SAMPLE = 8
TARGET_BLOCKS = 512
#: Threads per block of the combine kernel (one thread per (b, k)).
COMBINE_THREADS = 256

_STORAGE_TYPES = {
    np.dtype(np.float16): "ace_f16",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
_BFLOAT16_STORAGE = (np.dtype(np.uint16), np.dtype(np.int16))
_ACC_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_NULL = np.uint64(0)  # a null pointer argument: "every step is valid"
_INT32_MAX = 2**31 - 1


class _Kernels(NamedTuple):
    forward: Any
    combine: Any
    backward: Any


class _Plan(NamedTuple):
    storage: str  # CUDA type of the scores and gradient
    acc: str  # CUDA accumulation type
    acc_dtype: np.dtype
    items: int
    threads: int


_COMPILED: dict[tuple[str, str, int], _Kernels] = {}
_COMPILE_LOCK = threading.Lock()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def launch_shape(classes: int) -> tuple[int, int] | None:
    """``(items, threads)`` per block for C classes, ``items · threads >= C``; None above MAX_CLASSES.

    ``items`` is the smallest of :data:`ITEMS_CHOICES` that :data:`MAX_THREADS`
    threads can cover C with; ``threads`` the next multiple of 32 (a whole warp)
    at or above ``C / items``.

    Examples
    --------
    >>> launch_shape(37), launch_shape(7357), launch_shape(1), launch_shape(16385)
    ((1, 64), (16, 480), (1, 32), None)
    """
    if classes < 1:
        return None
    for items in ITEMS_CHOICES:
        if items * MAX_THREADS >= classes:
            return items, 32 * _ceil_div(_ceil_div(classes, items), 32)
    return None


def tiling(batch: int, steps: int) -> tuple[int, int]:
    """``(rows_per_tile, n_tiles)`` of the forward for B samples of T steps (T >= 1).

    A function of the shape only, so that results do not depend on the device.

    Examples
    --------
    >>> tiling(64, 144)  # the benchmark protocol: 64 x 8 = 512 blocks of 18 rows
    (18, 8)
    >>> tiling(1, 1000)  # one long sample (a 2D map): more, smaller tiles
    (8, 125)
    >>> tiling(3, 5)
    (5, 1)
    """
    max_tiles = max(MIN_TILES_PER_SAMPLE, _ceil_div(TARGET_BLOCKS, max(batch, 1)))
    tiles = max(1, min(max_tiles, _ceil_div(steps, MIN_ROWS_PER_TILE)))
    rows = _ceil_div(steps, tiles)
    return rows, _ceil_div(steps, rows)


def _plan(scores: Any, dtype: Any, bfloat16_bits: bool) -> _Plan | None:
    """How the fused kernels run these scores, or None where the generic kernel must."""
    if not isinstance(scores, cupy.ndarray) or scores.ndim != 3:
        return None
    stored = np.dtype(scores.dtype)
    if bfloat16_bits:
        if stored not in _BFLOAT16_STORAGE:
            raise TypeError(f"bfloat16_bits=True takes a uint16 or int16 array of bit patterns, got {stored}")
        storage = "ace_bf16"
    else:
        storage = _STORAGE_TYPES.get(stored)
    acc = _ACC_TYPES.get(np.dtype(dtype))
    batch, steps, classes = scores.shape
    shape = launch_shape(classes)
    fits = batch * steps > 0 and batch * steps <= _INT32_MAX and shape is not None
    if storage is None or acc is None or not fits:
        if bfloat16_bits:
            raise ValueError(
                f"bfloat16 bit patterns need the fused kernels, which take C <= {MAX_CLASSES}, "
                f"B·T >= 1 and a float32/float64 accumulation dtype; got shape {scores.shape}, dtype {dtype}"
            )
        return None
    items, threads = shape
    return _Plan(storage, acc, np.dtype(dtype), items, threads)


def is_supported(scores: Any, dtype: Any, *, bfloat16_bits: bool = False) -> bool:
    """Whether the fused kernels (rather than the generic fallback) take these scores.

    True for a ``(B, T, C)`` CuPy array of float16/float32/float64 (or bfloat16
    bits) with ``1 <= C <= MAX_CLASSES``, ``B·T >= 1`` and a float32/float64
    accumulation ``dtype``. Checks shapes and dtypes only; compiles nothing.
    """
    try:
        return _plan(scores, dtype, bfloat16_bits) is not None
    except (TypeError, ValueError):
        return False


def _kernels(plan: _Plan) -> _Kernels:
    """The compiled kernels of one variant; NVRTC runs on the first request only."""
    key = (plan.storage, plan.acc, plan.items)
    found = _COMPILED.get(key)
    if found is not None:
        return found
    with _COMPILE_LOCK:
        found = _COMPILED.get(key)
        if found is None:
            names = (
                forward_name(plan.storage, plan.acc, plan.items),
                combine_name(plan.acc),
                backward_name(plan.storage, plan.acc, plan.items),
            )
            module = cupy.RawModule(code=SOURCE, name_expressions=names)
            found = _Kernels(*(module.get_function(name) for name in names))
            _COMPILED[key] = found
    return found


def compiled_variants() -> list[tuple[str, str, int]]:
    """The (storage type, accumulation type, items) variants compiled so far in this process."""
    return sorted(_COMPILED)


def _i32(value: int) -> np.int32:
    return np.int32(value)


def _valid_argument(valid: Any, batch: int, steps: int) -> Any:
    """``valid`` as a contiguous (B, T) bool array, or a null pointer for "all valid"."""
    if valid is None:
        return _NULL
    if tuple(valid.shape) != (batch, steps):
        raise ValueError(f"`valid` must have shape ({batch}, {steps}), got {tuple(valid.shape)}")
    return cupy.ascontiguousarray(valid.astype(cupy.bool_, copy=False))


def _small(x: Any, shape: tuple[int, ...], name: str, plan: _Plan) -> Any:
    """A (B,)-, (B, T)- or (B, C)-shaped operand, contiguous in the accumulation dtype."""
    x = cupy.asarray(x)
    if x.ndim == 0 and len(shape) == 1:
        x = cupy.broadcast_to(x, shape)
    if tuple(x.shape) != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(x.shape)}")
    return cupy.ascontiguousarray(x.astype(plan.acc_dtype, copy=False))


def _forward(plan: _Plan, scores: Any, valid: Any) -> tuple[Any, Any, Any]:
    batch, steps, classes = scores.shape
    rows, tiles = tiling(batch, steps)
    step_max = cupy.empty((batch, steps), dtype=plan.acc_dtype)
    step_log_sum = cupy.empty((batch, steps), dtype=plan.acc_dtype)
    partial = cupy.empty((batch, tiles, classes), dtype=plan.acc_dtype)
    log_mass = cupy.empty((batch, classes), dtype=plan.acc_dtype)
    kernels = _kernels(plan)
    kernels.forward(
        (batch * tiles,),
        (plan.threads,),
        (scores, valid, _i32(steps), _i32(classes), _i32(rows), _i32(tiles), step_max, step_log_sum, partial),
    )
    total = batch * classes
    kernels.combine(
        (_ceil_div(total, COMBINE_THREADS),),
        (COMBINE_THREADS,),
        (partial, _i32(tiles), _i32(classes), np.int64(total), log_mass),
    )
    return step_max, step_log_sum, log_mass


def _backward(
    plan: _Plan,
    grad_out: Any,
    scores: Any,
    counts: Any,
    valid: Any,
    lengths: Any,
    step_max: Any,
    step_log_sum: Any,
    log_mass: Any,
) -> Any:
    batch, steps, classes = scores.shape
    operands = (
        _small(counts, (batch, classes), "counts", plan),
        _small(lengths, (batch,), "lengths", plan),
        _small(step_max, (batch, steps), "step_max", plan),
        _small(step_log_sum, (batch, steps), "step_log_sum", plan),
        _small(log_mass, (batch, classes), "log_mass", plan),
        _small(grad_out, (batch,), "grad_out", plan),
    )
    grad = cupy.empty(scores.shape, dtype=scores.dtype)
    _kernels(plan).backward(
        (batch * steps,),
        (plan.threads,),
        (scores, valid, *operands, _i32(steps), _i32(classes), grad),
    )
    return grad


def forward_logits(
    xp: Any, scores: Any, valid: Any, dtype: Any, *, bfloat16_bits: bool = False
) -> tuple[Any, Any, Any]:
    """``(step_max (B, T), step_log_sum (B, T), log_mass (B, C))`` in ``dtype``, by the fused kernels.

    As :func:`ace_core._kernel.forward_logits`:
    ``log_mass[b, k] = logsumexp_{t valid} (a[b, t, k] - step_max[b, t] - step_log_sum[b, t])``,
    ``-inf`` for a sample with no valid step; masked steps (any value, NaN
    included) are never read, and get ``step_max = 0``, ``step_log_sum = log C``.

    Parameters
    ----------
    xp : namespace
        The array namespace (used only by the generic fallback).
    scores : cupy.ndarray, shape (B, T, C)
        Logits: float16, float32 or float64; bfloat16 as a uint16/int16 array
        of its bit patterns with ``bfloat16_bits=True``. Non-contiguous input
        is copied first.
    valid : cupy.ndarray of bool, shape (B, T), or None
        The valid steps; None means all.
    dtype : dtype
        Accumulation and output dtype, float32 or float64.
    bfloat16_bits : bool
        Read ``scores`` as bfloat16 bit patterns.
    """
    plan = _plan(scores, dtype, bfloat16_bits)
    if plan is None:
        return _kernel.forward_logits(xp, scores, valid, dtype)
    batch, steps, _ = scores.shape
    with scores.device:
        return _forward(plan, cupy.ascontiguousarray(scores), _valid_argument(valid, batch, steps))


def backward_logits(
    xp: Any,
    grad_out: Any,
    scores: Any,
    counts: Any,
    valid: Any,
    lengths: Any,
    step_max: Any,
    step_log_sum: Any,
    log_mass: Any,
    dtype: Any,
    *,
    bfloat16_bits: bool = False,
) -> Any:
    """``g_b (y s - N̄ r)`` ``(B, T, C)`` in the **scores' dtype**, 0 at masked steps, by one fused kernel.

    As :func:`ace_core._kernel.backward_logits`, with
    ``N̄ r = exp(log y + log(N / T_b) - log_mass)`` for the classes with
    ``N > 0`` and 0 for the others, and ``s = Σ_k N̄ r``; accumulated in
    ``dtype``, rounded once when written. The result has the dtype of
    ``scores`` (bfloat16 bit patterns with ``bfloat16_bits=True``), not
    ``dtype``: the caller's cast to the scores dtype is then free.

    Parameters
    ----------
    xp : namespace
        Used only by the generic fallback.
    grad_out : cupy.ndarray, shape (B,)
        Upstream gradient per sample.
    scores, valid, dtype, bfloat16_bits
        As in :func:`forward_logits`.
    counts : cupy.ndarray, shape (B, C)
    lengths : cupy.ndarray, shape (B,)
        ``T_b``; 0 is read as 1 (such a sample has no valid row anyway).
    step_max, step_log_sum, log_mass
        The outputs of :func:`forward_logits`.
    """
    plan = _plan(scores, dtype, bfloat16_bits)
    if plan is None:
        return _kernel.backward_logits(
            xp, grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass, dtype
        )
    batch, steps, _ = scores.shape
    with scores.device:
        return _backward(
            plan,
            grad_out,
            cupy.ascontiguousarray(scores),
            counts,
            _valid_argument(valid, batch, steps),
            lengths,
            step_max,
            step_log_sum,
            log_mass,
        )


def forward_backward_logits(
    xp: Any,
    grad_out: Any,
    scores: Any,
    counts: Any,
    valid: Any,
    lengths: Any,
    dtype: Any,
    *,
    bfloat16_bits: bool = False,
) -> tuple[Any, Any, Any, Any]:
    """``(step_max, step_log_sum, log_mass, grad)``: :func:`forward_logits` then :func:`backward_logits`.

    The three kernels queued back to back (scores made contiguous and the
    validity mask prepared once); the gradient is in the scores' dtype.
    """
    plan = _plan(scores, dtype, bfloat16_bits)
    if plan is None:
        step_max, step_log_sum, log_mass = _kernel.forward_logits(xp, scores, valid, dtype)
        grad = _kernel.backward_logits(
            xp, grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass, dtype
        )
        return step_max, step_log_sum, log_mass, grad
    batch, steps, _ = scores.shape
    with scores.device:
        scores = cupy.ascontiguousarray(scores)
        valid = _valid_argument(valid, batch, steps)
        step_max, step_log_sum, log_mass = _forward(plan, scores, valid)
        grad = _backward(plan, grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass)
    return step_max, step_log_sum, log_mass, grad


# --------------------------------------------------------------------------- streams


class _StreamHandle:
    """A raw ``cudaStream_t`` seen through the CUDA stream protocol (``__cuda_stream__``)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = int(ptr)

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


def external_stream(ptr: int, device_id: int = -1) -> Any:
    """A CuPy stream for a ``cudaStream_t`` owned by another library (e.g. torch's current stream).

    ``cupy.cuda.Stream.from_external`` where CuPy has it (v14; ``ExternalStream``
    is deprecated there), else ``cupy.cuda.ExternalStream(ptr, device_id)``.
    The caller keeps the stream alive and makes its device current.

    Parameters
    ----------
    ptr : int
        The stream handle, e.g. ``torch.cuda.current_stream().cuda_stream``.
    device_id : int
        The stream's device, for CuPy versions without ``from_external``.
    """
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamHandle(ptr))
    return cupy.cuda.ExternalStream(int(ptr), device_id)


@contextlib.contextmanager
def on_torch_stream(stream_ptr: int, device_id: int = -1) -> Iterator[Any]:
    """Run the CuPy work of the ``with`` block on torch's stream ``stream_ptr``.

    ``with on_torch_stream(torch.cuda.current_stream().cuda_stream):`` makes the
    kernels of this module (and any CuPy call) queue behind torch's pending
    work and before torch's next, with no synchronisation. Make the tensors'
    device current as well (``with cupy.cuda.Device(index):``).
    """
    stream = external_stream(stream_ptr, device_id)
    with stream:
        yield stream
