"""CuPy adapter: ACE in CuPy GPU pipelines, and for torch/JAX GPU arrays through DLPack.

:func:`ace_loss_and_grad` takes CuPy arrays, or any GPU array that speaks
DLPack (a CUDA ``torch.Tensor``, a JAX GPU array), which it views as CuPy
arrays without a copy. The work is queued on the given stream (or CuPy's
current one). The input checks of :mod:`ace_core` read their flags back to
the host once per call (one synchronisation); the arithmetic itself does not
wait. Results are CuPy arrays; hand them back without a copy with
``torch.from_dlpack(result)`` or ``jax.dlpack.from_dlpack``.

With ``out=``, the fused CUDA kernels write the gradient straight into the
caller's buffer: no gradient is allocated and none is copied.

Importing this module imports CuPy; ``import ace_core`` never does.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import cupy

import ace_core
from ace_core._interop import cupy_view

__all__ = ["as_cupy", "ace_loss_and_grad"]


def as_cupy(x: Any) -> cupy.ndarray | None:
    """``x`` as a CuPy array: CuPy arrays as they are, DLPack GPU arrays as zero-copy views.

    ``None`` stays ``None``; Python ints and sequences (lengths) pass through
    unchanged. Host arrays (NumPy, CPU tensors) raise ``TypeError``: a silent
    host-to-device copy is what ACE never does.
    """
    return cupy_view(x)


def ace_loss_and_grad(
    scores: Any,
    counts: Any,
    *,
    input_lengths: Any = None,
    mask: Any = None,
    from_logits: bool = True,
    reduction: Literal["none", "sum", "mean"] = "mean",
    zero_infinity: bool = False,
    out: Any = None,
    stream: cupy.cuda.Stream | None = None,
) -> tuple[cupy.ndarray, cupy.ndarray]:
    """:func:`ace_core.ace_loss_and_grad` on the GPU, for CuPy or DLPack GPU arrays.

    Parameters
    ----------
    scores, counts, input_lengths, mask, from_logits, reduction, zero_infinity
        As for :func:`ace_core.ace_loss_and_grad`; arrays may be CuPy arrays
        or DLPack GPU arrays (viewed without a copy).
    out : cupy.ndarray, optional
        A C-contiguous buffer of the shape, dtype and device of ``scores``,
        not overlapping them, that receives the gradient (and is returned), so
        that a training loop reuses one allocation. From logits the fused
        kernels write into it directly; from probabilities the gradient is
        copied in.
    stream : cupy.cuda.Stream, optional
        Stream to queue the work on (e.g. ``cupy.cuda.ExternalStream`` of
        ``torch.cuda.current_stream().cuda_stream``); CuPy's current stream by
        default.

    Returns
    -------
    loss : cupy.ndarray
        0-d, or ``(B,)`` for ``reduction="none"``.
    grad : cupy.ndarray
        ``∂ loss / ∂ scores``, ``out`` when given.
    """
    scores, counts, mask = as_cupy(scores), as_cupy(counts), as_cupy(mask)
    input_lengths = as_cupy(input_lengths)
    if out is not None:
        out = as_cupy(out)
        if not isinstance(out, cupy.ndarray):
            raise TypeError(f"`out` must be a CuPy (or DLPack GPU) array, got {type(out).__name__}")
    with stream if stream is not None else contextlib.nullcontext():
        # The core checks `out` and hands it to the fused kernels, which write the gradient into it.
        return ace_core.ace_loss_and_grad(
            scores,
            counts,
            input_lengths=input_lengths,
            mask=mask,
            from_logits=from_logits,
            reduction=reduction,
            zero_infinity=zero_infinity,
            out=out,
        )
