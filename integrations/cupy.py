"""CuPy adapter: ACE in CuPy GPU pipelines, and for torch/JAX GPU arrays through DLPack.

:func:`ace_loss_and_grad` takes CuPy arrays, or any GPU array that speaks
DLPack (a CUDA ``torch.Tensor``, a JAX GPU array), which it views as CuPy
arrays without a copy. The work is queued on the given stream (or CuPy's
current one). The input checks of :mod:`ace_core` read their flags back to
the host once per call (one synchronisation); the arithmetic itself does not
wait. Results are CuPy arrays; hand them back without a copy with
``torch.from_dlpack(result)`` or ``jax.dlpack.from_dlpack``.

Importing this module imports CuPy; ``import ace_core`` never does.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import cupy

import ace_core

__all__ = ["as_cupy", "ace_loss_and_grad"]


def as_cupy(x: Any) -> cupy.ndarray | None:
    """``x`` as a CuPy array: CuPy arrays as they are, DLPack GPU arrays as zero-copy views.

    ``None`` stays ``None``; Python ints and sequences (lengths) pass through
    unchanged. Host arrays (NumPy, CPU tensors) raise ``TypeError``: a silent
    host-to-device copy is what ACE never does.
    """
    if x is None or isinstance(x, (int, list, tuple)):
        return x
    if isinstance(x, cupy.ndarray):
        return x
    if hasattr(x, "__dlpack_device__"):
        device_type, _ = x.__dlpack_device__()
        if device_type not in (2, 3):  # kDLCUDA, kDLCUDAHost
            raise TypeError(
                f"{type(x).__name__} lives on the host (DLPack device {device_type}); "
                "move it to the GPU first"
            )
        return cupy.from_dlpack(x)
    raise TypeError(f"expected a CuPy array or a DLPack GPU array, got {type(x).__name__}")


def ace_loss_and_grad(
    scores: Any,
    counts: Any,
    *,
    input_lengths: Any = None,
    mask: Any = None,
    from_logits: bool = True,
    reduction: Literal["none", "sum", "mean"] = "mean",
    zero_infinity: bool = False,
    out: cupy.ndarray | None = None,
    stream: cupy.cuda.Stream | None = None,
) -> tuple[cupy.ndarray, cupy.ndarray]:
    """:func:`ace_core.ace_loss_and_grad` on the GPU, for CuPy or DLPack GPU arrays.

    Parameters
    ----------
    scores, counts, input_lengths, mask, from_logits, reduction, zero_infinity
        As for :func:`ace_core.ace_loss_and_grad`; arrays may be CuPy arrays
        or DLPack GPU arrays (viewed without a copy).
    out : cupy.ndarray, optional
        Buffer of the shape and dtype of ``scores`` that receives the gradient
        (and is returned), so that a training loop reuses one allocation.
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
    if out is not None and (out.shape != scores.shape or out.dtype != scores.dtype):
        raise ValueError(
            f"`out` must have the shape {scores.shape} and dtype {scores.dtype} of `scores`, "
            f"got {out.shape} and {out.dtype}"
        )
    with stream if stream is not None else contextlib.nullcontext():
        loss, grad = ace_core.ace_loss_and_grad(
            scores,
            counts,
            input_lengths=input_lengths,
            mask=mask,
            from_logits=from_logits,
            reduction=reduction,
            zero_infinity=zero_infinity,
        )
        if out is not None:
            cupy.copyto(out, grad)
            grad = out
    return loss, grad
