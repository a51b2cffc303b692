"""How the fused CUDA kernels are launched: variants, geometry, buffers and argument lists.

Everything here is plain Python and NumPy, so that it runs without CuPy: the
CuPy fast path (:mod:`ace_core.backends.cupy`) calls these functions with
``lib=cupy`` and CuPy's kernels, the tests with ``lib=numpy`` and the same
kernel source compiled for the host. ``lib`` is a module with NumPy's names
(``empty``, ``asarray``, ``ascontiguousarray``, ``broadcast_to``,
``may_share_memory``, ``bool_``); ``run(launch)`` starts one :class:`Launch`.

Each :class:`Launch` carries the name expression of the kernel, the grid and
block and the argument tuple with the exact scalar types of the kernel's
signature: ``numpy.int32`` for ``int``, ``numpy.int64`` for ``long long``,
arrays for pointers and :data:`NULL` for a null pointer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ace_core.backends._cupy_source import backward_name, combine_name, forward_name

__all__ = [
    "ITEMS_CHOICES",
    "MAX_THREADS",
    "MAX_CLASSES",
    "MIN_ROWS_PER_TILE",
    "MIN_TILES_PER_SAMPLE",
    "TARGET_BLOCKS",
    "COMBINE_THREADS",
    "NULL",
    "Variant",
    "Launch",
    "launch_shape",
    "tiling",
    "plan",
    "kernel_names",
    "all_variants",
    "all_kernel_names",
    "valid_argument",
    "small_operand",
    "check_out",
    "forward",
    "backward",
]

#: Classes held in registers per thread; one kernel variant each.
ITEMS_CHOICES = (1, 2, 4, 8, 16)
#: Threads per block at most. The kernels are compiled with ``__launch_bounds__(1024)``, which
#: caps them at 64 registers a thread: the variants up to 8 items (C <= 8192) need no more and
#: spill nothing on sm_80 and sm_90 (see ``tools/cuda_resources.py``); 16 items (C <= 16384) spill
#: a little and are there so that the fused path reaches MAX_CLASSES.
MAX_THREADS = 1024
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
#: A null pointer argument: "every step is valid".
NULL = np.uint64(0)

_STORAGE_TYPES = {
    np.dtype(np.float16): "ace_f16",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
_BFLOAT16_STORAGE = (np.dtype(np.uint16), np.dtype(np.int16))
_ACC_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INT32_MAX = 2**31 - 1


class Variant(NamedTuple):
    """One compiled form of the kernels and the block size for a C."""

    storage: str  #: CUDA type of the scores and the gradient
    acc: str  #: CUDA accumulation type
    acc_dtype: np.dtype
    items: int  #: classes per thread
    threads: int  #: threads per block of the forward and backward


class Launch(NamedTuple):
    """One kernel launch: what ``RawModule.get_function(kernel)(grid, block, args)`` takes."""

    kernel: str  #: name expression
    grid: tuple[int]
    block: tuple[int]
    args: tuple[Any, ...]


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
    ((1, 64), (8, 928), (1, 32), None)
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


def plan(shape: tuple[int, ...], stored: Any, dtype: Any, bfloat16_bits: bool) -> Variant | None:
    """The variant that runs scores of this shape and dtype, or None where the generic kernel must.

    Raises ``TypeError`` for ``bfloat16_bits=True`` on an array that is not
    uint16/int16, and ``ValueError`` where bfloat16 bits cannot take the fused
    path (there is no generic kernel for bit patterns).
    """
    stored = np.dtype(stored)
    if bfloat16_bits:
        if stored not in _BFLOAT16_STORAGE:
            raise TypeError(f"bfloat16_bits=True takes a uint16 or int16 array of bit patterns, got {stored}")
        storage = "ace_bf16"
    else:
        storage = _STORAGE_TYPES.get(stored)
    acc = _ACC_TYPES.get(np.dtype(dtype))
    fits = len(shape) == 3
    if fits:
        batch, steps, classes = shape
        found = launch_shape(classes)
        fits = 0 < batch * steps <= _INT32_MAX and found is not None
    if storage is None or acc is None or not fits:
        if bfloat16_bits:
            raise ValueError(
                f"bfloat16 bit patterns need the fused kernels, which take C <= {MAX_CLASSES}, "
                f"B·T >= 1 and a float32/float64 accumulation dtype; got shape {shape}, dtype {dtype}"
            )
        return None
    items, threads = found
    return Variant(storage, acc, np.dtype(dtype), items, threads)


def kernel_names(variant: Variant) -> tuple[str, str, str]:
    """The name expressions (forward, combine, backward) that one variant compiles."""
    return (
        forward_name(variant.storage, variant.acc, variant.items),
        combine_name(variant.acc),
        backward_name(variant.storage, variant.acc, variant.items),
    )


def all_variants() -> list[tuple[str, str, int]]:
    """Every (storage type, accumulation type, items) that :func:`plan` can choose."""
    storages = [*_STORAGE_TYPES.values(), "ace_bf16"]
    return [(s, a, i) for s in storages for a in _ACC_TYPES.values() for i in ITEMS_CHOICES]


def all_kernel_names() -> list[str]:
    """The name expression of every kernel that some variant launches, each once."""
    names: dict[str, None] = {}
    for storage, acc, items in all_variants():
        names[forward_name(storage, acc, items)] = None
        names[combine_name(acc)] = None
        names[backward_name(storage, acc, items)] = None
    return list(names)


# --------------------------------------------------------------------------- operands


def _i32(value: int) -> np.int32:
    if not -(2**31) <= value <= _INT32_MAX:
        raise OverflowError(f"{value} does not fit the kernel's int")
    return np.int32(value)


def valid_argument(lib: Any, valid: Any, batch: int, steps: int) -> Any:
    """``valid`` as a contiguous (B, T) bool array, or :data:`NULL` for "all valid"."""
    if valid is None:
        return NULL
    valid = lib.asarray(valid)
    if tuple(valid.shape) != (batch, steps):
        raise ValueError(f"`valid` must have shape ({batch}, {steps}), got {tuple(valid.shape)}")
    return lib.ascontiguousarray(valid.astype(lib.bool_, copy=False))


def small_operand(lib: Any, x: Any, shape: tuple[int, ...], name: str, variant: Variant) -> Any:
    """A (B,)-, (B, T)- or (B, C)-shaped operand, contiguous in the accumulation dtype."""
    x = lib.asarray(x)
    if x.ndim == 0 and len(shape) == 1:
        x = lib.broadcast_to(x, shape)
    if tuple(x.shape) != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(x.shape)}")
    return lib.ascontiguousarray(x.astype(variant.acc_dtype, copy=False))


def check_out(lib: Any, out: Any, scores: Any) -> None:
    """``out`` must be a C-contiguous array of the scores' shape and dtype that does not overlap them.

    ``TypeError`` for another array type or dtype, ``ValueError`` for another
    shape, a non-contiguous buffer or one that shares memory with ``scores``.
    """
    if not isinstance(out, type(scores)):
        raise TypeError(
            f"`out` must be an array of the scores' type {type(scores).__name__}, got {type(out)}"
        )
    if out.dtype != scores.dtype:
        raise TypeError(f"`out` must have the scores' dtype {scores.dtype}, got {out.dtype}")
    if tuple(out.shape) != tuple(scores.shape):
        raise ValueError(f"`out` must have the scores' shape {tuple(scores.shape)}, got {tuple(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError("`out` must be C-contiguous: the kernel writes the gradient row by row")
    if lib.may_share_memory(out, scores):
        raise ValueError("`out` overlaps `scores`: the backward reads the scores while it writes")


# --------------------------------------------------------------------------- the launches


def forward(lib: Any, run: Callable[[Launch], None], variant: Variant, scores: Any, valid: Any) -> tuple:
    """``(step_max, step_log_sum, mass_max, mass_log_sum)`` by the forward and the combine.

    ``scores`` is a C-contiguous ``(B, T, C)`` array of the variant's storage;
    ``valid`` what :func:`valid_argument` returns.
    """
    batch, steps, classes = scores.shape
    rows, tiles = tiling(batch, steps)
    acc = variant.acc_dtype
    step_max = lib.empty((batch, steps), dtype=acc)
    step_log_sum = lib.empty((batch, steps), dtype=acc)
    partial_max = lib.empty((batch, tiles, classes), dtype=acc)
    partial_sum = lib.empty((batch, tiles, classes), dtype=acc)
    mass_max = lib.empty((batch, classes), dtype=acc)
    mass_log_sum = lib.empty((batch, classes), dtype=acc)
    forward_kernel, combine_kernel, _ = kernel_names(variant)
    run(
        Launch(
            forward_kernel,
            (batch * tiles,),
            (variant.threads,),
            (
                scores,
                valid,
                _i32(steps),
                _i32(classes),
                _i32(rows),
                _i32(tiles),
                step_max,
                step_log_sum,
                partial_max,
                partial_sum,
            ),
        )
    )
    total = batch * classes
    run(
        Launch(
            combine_kernel,
            (_ceil_div(total, COMBINE_THREADS),),
            (COMBINE_THREADS,),
            (partial_max, partial_sum, _i32(tiles), _i32(classes), np.int64(total), mass_max, mass_log_sum),
        )
    )
    return step_max, step_log_sum, mass_max, mass_log_sum


def backward(
    lib: Any,
    run: Callable[[Launch], None],
    variant: Variant,
    grad_out: Any,
    scores: Any,
    counts: Any,
    valid: Any,
    lengths: Any,
    step_max: Any,
    step_log_sum: Any,
    mass_max: Any,
    mass_log_sum: Any,
    out: Any = None,
) -> Any:
    """The gradient ``(B, T, C)`` in the scores' dtype, written by the backward into ``out`` or a new array.

    ``scores`` and ``valid`` as for :func:`forward`; the other operands are
    brought to contiguous arrays of the accumulation dtype (shapes checked);
    ``out`` has passed :func:`check_out`.
    """
    batch, steps, classes = scores.shape
    operands = (
        small_operand(lib, counts, (batch, classes), "counts", variant),
        small_operand(lib, lengths, (batch,), "lengths", variant),
        small_operand(lib, step_max, (batch, steps), "step_max", variant),
        small_operand(lib, step_log_sum, (batch, steps), "step_log_sum", variant),
        small_operand(lib, mass_max, (batch, classes), "mass_max", variant),
        small_operand(lib, mass_log_sum, (batch, classes), "mass_log_sum", variant),
        small_operand(lib, grad_out, (batch,), "grad_out", variant),
    )
    grad = lib.empty(scores.shape, dtype=scores.dtype) if out is None else out
    run(
        Launch(
            kernel_names(variant)[2],
            (batch * steps,),
            (variant.threads,),
            (scores, valid, *operands, _i32(steps), _i32(classes), grad),
        )
    )
    return grad
