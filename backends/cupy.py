"""CuPy fast path: fused CUDA kernels for the ACE forward and backward.

Three kernels (source and design in :mod:`ace_core.backends._cupy_source`,
launch geometry and argument lists in :mod:`ace_core.backends._cupy_launch`):

* forward, one block per (sample, tile of steps): each valid row's max and
  ``log Σ_k exp(a - max)``, then per class an online ``(max, Σ exp(log y -
  max))`` over the tile's valid rows, written as two partials per (sample,
  tile, class);
* combine, one thread per (sample, class): the tile partials in tile order →
  ``mass_max`` and ``mass_log_sum`` (``log Σ_t y = mass_max + mass_log_sum``);
* backward, one block per row: ``pull_k = N̄_k r_tk`` with ``log r = (log y -
  mass_max) - mass_log_sum`` for the classes present in the label, ``s =
  Σ_k pull_k``, and ``g_b (y s - pull)`` written in the scores' dtype (zeros at
  masked rows).

Each score is read once by the forward and once by the backward, and the
gradient is written once: the three passes of the memory floor. Per-row
values are held in registers (``ITEMS`` classes per thread, at most
:data:`MAX_THREADS` threads), which bounds C at :data:`MAX_CLASSES` (16384);
larger C, empty shapes and dtypes without a kernel fall back to the generic
array-API kernel.

* **Exact at any logits**: the per-class mass is kept in two parts, so that
  ``r = y / Σ_t y`` stays in [0, 1] and ``|∂L/∂a| <= 1`` even where tied steps
  hold logits of 1e38.
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
  arrays), only the forward's two tile partials, at most
  ``2 · max(8 B, 512 + B) · C`` accumulation-dtype values: O(B·C), no
  ``(B, T, C)`` temporary. ``forward_backward_logits(..., out=grad)`` writes
  the gradient into a buffer the caller keeps.
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

The kernel text, the launch geometry and the argument lists run in every test
run without a GPU: ``tests/test_cuda_host.py`` compiles the same source for
the host (one host thread per CUDA thread) and launches it through
:mod:`ace_core.backends._cupy_launch`; ``tests/test_backend_cupy.py`` checks
this module against the generic kernel wherever a GPU is present.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import cupy

from ace_core import _kernel
from ace_core.backends import _cupy_launch as launch
from ace_core.backends._cupy_launch import (
    COMBINE_THREADS,
    ITEMS_CHOICES,
    MAX_CLASSES,
    MAX_THREADS,
    MIN_ROWS_PER_TILE,
    MIN_TILES_PER_SAMPLE,
    TARGET_BLOCKS,
    Variant,
    launch_shape,
    tiling,
)
from ace_core.backends._cupy_source import SOURCE

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
    "MAX_THREADS",
    "ITEMS_CHOICES",
    "MIN_ROWS_PER_TILE",
    "MIN_TILES_PER_SAMPLE",
    "TARGET_BLOCKS",
    "COMBINE_THREADS",
]


_COMPILED: dict[tuple[str, str, int], dict[str, Any]] = {}
_COMPILE_LOCK = threading.Lock()


def _plan(scores: Any, dtype: Any, bfloat16_bits: bool) -> Variant | None:
    """How the fused kernels run these scores, or None where the generic kernel must."""
    if not isinstance(scores, cupy.ndarray):
        if bfloat16_bits:
            raise TypeError(f"bfloat16_bits=True takes a CuPy array, got {type(scores).__name__}")
        return None
    return launch.plan(tuple(scores.shape), scores.dtype, dtype, bfloat16_bits)


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


def _functions(variant: Variant) -> dict[str, Any]:
    """The compiled kernels of one variant by name expression; NVRTC runs on the first request only."""
    key = (variant.storage, variant.acc, variant.items)
    found = _COMPILED.get(key)
    if found is not None:
        return found
    with _COMPILE_LOCK:
        found = _COMPILED.get(key)
        if found is None:
            names = launch.kernel_names(variant)
            module = cupy.RawModule(code=SOURCE, name_expressions=names)
            found = {name: module.get_function(name) for name in names}
            _COMPILED[key] = found
    return found


def compiled_variants() -> list[tuple[str, str, int]]:
    """The (storage type, accumulation type, items) variants compiled so far in this process."""
    return sorted(_COMPILED)


def _runner(variant: Variant) -> Any:
    """``run(launch)``: one :class:`~ace_core.backends._cupy_launch.Launch` on CuPy's current stream."""
    functions = _functions(variant)

    def run(step: launch.Launch) -> None:
        functions[step.kernel](step.grid, step.block, step.args)

    return run


def _checked_out(out: Any, scores: Any) -> Any:
    """``out`` after :func:`~ace_core.backends._cupy_launch.check_out` and a device check."""
    if out is None:
        return None
    launch.check_out(cupy, out, scores)
    if out.device != scores.device:
        raise ValueError(f"`out` is on {out.device}, the scores on {scores.device}")
    return out


def _fused_forward(variant: Variant, scores: Any, valid: Any) -> tuple[Any, Any, Any, Any]:
    return launch.forward(cupy, _runner(variant), variant, scores, valid)


def forward_logits(
    xp: Any, scores: Any, valid: Any, dtype: Any, *, bfloat16_bits: bool = False
) -> tuple[Any, Any, Any, Any]:
    """``(step_max, step_log_sum (B, T), mass_max, mass_log_sum (B, C))`` in ``dtype``, fused.

    As :func:`ace_core._kernel.forward_logits`:
    ``log y = (a - step_max) - step_log_sum``, ``mass_max[b, k] = max_{t valid}
    log y[b, t, k]`` and ``mass_log_sum = log Σ_{t valid} exp(log y -
    mass_max)`` (so ``log Σ_t y = mass_max + mass_log_sum``); ``(-inf, 0)`` for
    a class without mass and for a sample with no valid step. Masked steps
    (any value, NaN included) are never read, and get ``step_max = 0``,
    ``step_log_sum = log C``.

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
    variant = _plan(scores, dtype, bfloat16_bits)
    if variant is None:
        return _kernel.forward_logits(xp, scores, valid, dtype)
    batch, steps, _ = scores.shape
    with scores.device:
        valid = launch.valid_argument(cupy, valid, batch, steps)
        return _fused_forward(variant, cupy.ascontiguousarray(scores), valid)


def backward_logits(
    xp: Any,
    grad_out: Any,
    scores: Any,
    counts: Any,
    residuals: Any,
    dtype: Any,
    *,
    bfloat16_bits: bool = False,
) -> Any:
    """``g_b (y s - N̄ r)`` ``(B, T, C)`` in the **scores' dtype**, +0 at masked steps, by one fused kernel.

    As :func:`ace_core._kernel.backward_logits`, with ``N̄ r = N̄ exp((log y -
    mass_max) - mass_log_sum)`` for the classes with ``N > 0`` and 0 for the
    others, and ``s = Σ_k N̄ r``; accumulated in ``dtype``, rounded once when
    written. The result has the dtype of ``scores`` (bfloat16 bit patterns with
    ``bfloat16_bits=True``), not ``dtype``: the caller's cast to the scores
    dtype is then free.

    Parameters
    ----------
    xp : namespace
        Used only by the generic fallback.
    grad_out : cupy.ndarray, shape (B,)
        Upstream gradient per sample.
    scores, dtype, bfloat16_bits
        As in :func:`forward_logits`.
    counts : cupy.ndarray, shape (B, C)
    residuals : ACEResiduals
        Its ``valid``, ``lengths`` (``T_b``; 0 is read as 1, such a sample has
        no valid row anyway), ``step_max``, ``step_log_sum``, ``mass_max`` and
        ``mass_log_sum``: the outputs of :func:`forward_logits` or of the
        generic forward.
    """
    variant = _plan(scores, dtype, bfloat16_bits)
    if variant is None:
        return _kernel.backward_logits(xp, grad_out, scores, counts, residuals, dtype)
    batch, steps, _ = scores.shape
    with scores.device:
        return launch.backward(
            cupy,
            _runner(variant),
            variant,
            grad_out,
            cupy.ascontiguousarray(scores),
            counts,
            launch.valid_argument(cupy, residuals.valid, batch, steps),
            residuals.lengths,
            residuals.step_max,
            residuals.step_log_sum,
            residuals.mass_max,
            residuals.mass_log_sum,
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
    out: Any = None,
    bfloat16_bits: bool = False,
) -> tuple[Any, Any, Any, Any, Any]:
    """``(step_max, step_log_sum, mass_max, mass_log_sum, grad)``: both halves, three kernels.

    The kernels are queued back to back (scores made contiguous and the
    validity mask prepared once); the gradient is in the scores' dtype.

    Parameters
    ----------
    out : cupy.ndarray, optional
        A C-contiguous buffer of the scores' shape and dtype, on their device
        and not overlapping them, that the backward writes the gradient into
        (and that is returned as ``grad``); ``TypeError``/``ValueError`` for
        any other.
    """
    variant = _plan(scores, dtype, bfloat16_bits)
    if variant is None:
        if isinstance(scores, cupy.ndarray):
            _checked_out(out, scores)
        return _kernel.forward_backward_logits(xp, grad_out, scores, counts, valid, lengths, dtype, out=out)
    batch, steps, _ = scores.shape
    with scores.device:
        out = _checked_out(out, scores)
        contiguous = cupy.ascontiguousarray(scores)
        valid = launch.valid_argument(cupy, valid, batch, steps)
        statistics = _fused_forward(variant, contiguous, valid)
        grad = launch.backward(
            cupy,
            _runner(variant),
            variant,
            grad_out,
            contiguous,
            counts,
            valid,
            lengths,
            *statistics,
            out=out,
        )
    return (*statistics, grad)


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
