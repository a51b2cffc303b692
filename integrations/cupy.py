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
from ace_core import loss as _loss
from ace_core._inputs import prepare

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


def _check_out(out: Any, scores: cupy.ndarray) -> cupy.ndarray:
    """``out`` as the kernels take it: a C-contiguous CuPy array of the scores' shape, dtype and device,
    not overlapping them; ``TypeError``/``ValueError`` naming ``out`` otherwise."""
    out = as_cupy(out)
    if not isinstance(out, cupy.ndarray):
        raise TypeError(f"`out` must be a CuPy (or DLPack GPU) array, got {type(out).__name__}")
    if out.shape != scores.shape or out.dtype != scores.dtype:
        raise ValueError(
            f"`out` must have the shape {scores.shape} and dtype {scores.dtype} of `scores`, "
            f"got {out.shape} and {out.dtype}"
        )
    if not out.flags.c_contiguous:
        raise ValueError("`out` must be C-contiguous")
    if out.device != scores.device:
        raise ValueError(f"`out` is on {out.device}, `scores` on {scores.device}")
    if cupy.may_share_memory(out, scores):
        raise ValueError("`out` overlaps `scores`")
    return out


def _loss_and_grad_into(
    out: cupy.ndarray,
    scores: cupy.ndarray,
    counts: Any,
    input_lengths: Any,
    mask: Any,
    reduction: str,
    zero_infinity: bool,
) -> cupy.ndarray:
    """:func:`ace_core.ace_loss_and_grad` from logits with the gradient written into ``out``.

    The core's input preparation, reduction weights and reduction, and its
    one-call forward and backward with ``out`` handed to the kernel.
    """
    _loss._check_reduction(reduction)
    prep = prepare(scores, counts, input_lengths=input_lengths, mask=mask, zero_infinity=zero_infinity)
    weights = _loss._reduction_weights(prep, reduction)
    per_sample, _ = _loss._forward_backward_logits(
        prep, weights, zero_infinity, out=out.reshape(prep.scores.shape)
    )
    return prep.xp.astype(_loss._reduce(prep.xp, per_sample, reduction), scores.dtype)


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
        if not isinstance(scores, cupy.ndarray):
            raise TypeError(f"`scores` must be a CuPy (or DLPack GPU) array, got {type(scores).__name__}")
        out = _check_out(out, scores)
    with stream if stream is not None else contextlib.nullcontext():
        if out is not None and from_logits:
            loss = _loss_and_grad_into(out, scores, counts, input_lengths, mask, reduction, zero_infinity)
            return loss, out
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
