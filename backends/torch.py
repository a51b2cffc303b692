"""torch fast path: native ops on whole tensors, no autograd graph, no ``(B, T, C)`` residuals.

The plan is the NumPy fast path's (:mod:`ace_core.backends.numpy`), with
torch's own vectorised, multi-threaded ops in place of blocks on a thread pool:

* forward: ``e = exp(a - max)`` once, its row sums give the log-normalizer
  and ``y = e / rowsum``; ``Σ_t y`` is one batched matrix-vector product;
* backward: ``grad = y ⊙ (S 1ᵀ - W)`` with ``W = g N̄ / Σ_t y`` and ``S = y W``;
  the factor ``S 1ᵀ - W`` is a rank-2 batched matrix product;
* ``forward_backward_logits`` keeps ``e`` in the gradient's buffer between the halves.

Probability space is exact unless a class's mass is so small that
underflowed terms of ``y`` could matter; that is checked (a host sync on a
``(B, C)`` array): such masses are recomputed in log space, and a backward with
such a class present falls back to the generic log-space kernel.

Scores that require grad (with grad mode on) take the generic kernel, whose
torch ops autograd can differentiate; the integration's custom ops call the
core without that, and get this path. CUDA tensors go to the fused CuPy
kernels (:mod:`ace_core.backends.cupy`) through DLPack, zero-copy, on torch's
current stream when CuPy is installed
(bfloat16 as its bit patterns); otherwise they take the path above.
"""

from __future__ import annotations

import importlib.util
import math
from functools import cache
from typing import Any

import torch

from ace_core import _kernel

__all__ = ["forward_logits", "backward_logits", "forward_backward_logits"]

_CUPY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@cache
def _cupy_backend() -> Any:
    """``(ace_core.backends.cupy, CuPy's array namespace)``, or None when CuPy is missing."""
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        from array_api_compat import cupy as cupy_namespace

        from ace_core.backends import cupy as kernels
    except ImportError:
        return None
    return kernels, cupy_namespace


def _use_cupy(scores: torch.Tensor) -> bool:
    return scores.is_cuda and scores.dtype in _CUPY_DTYPES and _cupy_backend() is not None


def _call_cupy(function_name: str, args: tuple[Any, ...], dtype: torch.dtype) -> Any:
    """Run a CuPy kernel on torch tensors (zero-copy, DLPack) on torch's current stream.

    ``args`` are the kernel function's arguments after ``xp``; the scores are
    the tensor with three dimensions. CuPy has no bfloat16, so bfloat16 scores
    travel as their bit patterns and the gradient comes back the same way.
    """
    import cupy

    kernels, cupy_namespace = _cupy_backend()
    scores = next(a for a in args if isinstance(a, torch.Tensor) and a.ndim == 3)
    bits = scores.dtype == torch.bfloat16

    def to_cupy(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        value = value.contiguous()
        return cupy.from_dlpack(value.view(torch.int16) if value.dtype == torch.bfloat16 else value)

    def to_torch(value: Any) -> torch.Tensor:
        tensor = torch.from_dlpack(value)
        return tensor.view(torch.bfloat16) if bits and tensor.ndim == 3 else tensor

    compute = cupy.dtype(str(dtype).removeprefix("torch."))
    device = scores.device
    with (
        cupy.cuda.Device(device.index),
        kernels.on_torch_stream(torch.cuda.current_stream(device).cuda_stream),
    ):
        results = getattr(kernels, function_name)(
            cupy_namespace, *map(to_cupy, args), compute, bfloat16_bits=bits
        )
    return tuple(map(to_torch, results)) if isinstance(results, tuple) else to_torch(results)


def _mass_floor(dtype: torch.dtype, steps: int) -> float:
    """Below this ``Σ_t y``, terms of ``y`` that underflowed could change the mass by more than ``eps``."""
    info = torch.finfo(dtype)
    return steps * info.tiny / info.eps


def _exp_shifted(
    a: torch.Tensor, valid: torch.Tensor | None, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``e = exp(a - max)`` (0 at masked steps); returns ``(step_max, rowsum)`` ``(B, T)``."""
    if valid is None:
        step_max = torch.amax(a, dim=2)
    else:
        step_max = torch.amax(a.masked_fill(~valid[:, :, None], -math.inf), dim=2)
        step_max = torch.where(valid, step_max, 0)
    torch.sub(a, step_max[:, :, None], out=e)
    e.exp_()
    if valid is not None:
        e.masked_fill_(~valid[:, :, None], 0)
    rowsum = e.sum(dim=2)
    if valid is not None:
        rowsum = torch.where(valid, rowsum, 1)
    return step_max, rowsum


def _forward(a: torch.Tensor, valid: torch.Tensor | None, e: torch.Tensor):
    """``exp`` into ``e``; returns ``(step_max, step_log_sum, rowsum, log_mass)``."""
    step_max, rowsum = _exp_shifted(a, valid, e)
    step_log_sum = torch.log(rowsum)
    mass = torch.bmm((1 / rowsum)[:, None, :], e)[:, 0, :]
    log_mass = torch.log(mass)
    tiny = mass < _mass_floor(e.dtype, e.shape[1])
    if bool(torch.any(tiny)):
        # Terms of y that underflowed could matter here: redo these classes in log space.
        sample, column = torch.nonzero(tiny, as_tuple=True)
        log_y = a[sample, :, column] - (step_max + step_log_sum)[sample]
        if valid is not None:
            log_y = log_y.masked_fill(~valid[sample], -math.inf)
        log_mass = log_mass.index_put((sample, column), torch.logsumexp(log_y, dim=1))
    return step_max, step_log_sum, rowsum, log_mass


#: Above this many classes the backward gathers the few present classes instead of
#: building the rank-2 factor over all of them (a second (B, T, C) tensor).
DENSE_MAX_CLASSES = 256


def _backward_into(
    e: torch.Tensor,
    rho: torch.Tensor,
    grad_out: torch.Tensor,
    counts: torch.Tensor,
    lengths: torch.Tensor,
    log_mass,
) -> None:
    """``grad = y ⊙ (S 1ᵀ - W)`` into ``e`` with ``y = e ρ``: ``e ⊙ (u 1ᵀ - ρ Wᵀ)``, ``u = ρ² (e W)``."""
    safe = torch.where(lengths > 0, lengths, 1)
    present = counts != 0
    weights = counts * (grad_out / safe)[:, None]
    per_mass = torch.where(present, weights * torch.exp(-torch.where(present, log_mass, 0)), 0)
    if e.shape[2] > DENSE_MAX_CLASSES:
        _backward_sparse(e, rho, present, per_mass)
        return
    total = torch.bmm(e, per_mass[:, :, None])[:, :, 0]
    left = torch.stack([rho * (rho * total), -rho], dim=2)
    right = torch.stack([torch.ones_like(per_mass), per_mass], dim=1)
    e.mul_(torch.bmm(left, right))


def _backward_sparse(
    e: torch.Tensor, rho: torch.Tensor, present: torch.Tensor, per_mass: torch.Tensor
) -> None:
    """The same on the present classes only: ``e ← e u``, then ``e[:, :, P] -= e_P ρ W_P``.

    ``P`` is each sample's present classes, padded to the largest count with
    entries of weight 0 (so the padding adds nothing).
    """
    width = max(1, int(present.sum(dim=1).max()))  # a host sync on (B,) values
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :width]
    weight = torch.gather(per_mass, 1, order) * torch.gather(present, 1, order)
    index = order[:, None, :].expand(e.shape[0], e.shape[1], width)
    e_present = torch.gather(e, 2, index)
    pull = e_present * (rho[:, :, None] * weight[:, None, :])
    e.mul_((rho * (pull.sum(dim=2)))[:, :, None])
    e.scatter_add_(2, index, -pull)


def _on_valid(rho: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """ρ = 0 at masked steps, so that their gradient is +0 (0 · a negative factor would be -0)."""
    return rho if valid is None else torch.where(valid, rho, 0)


def _tracks_grad(scores: torch.Tensor) -> bool:
    """Autograd through the core's own ops was asked for: the generic kernel keeps that graph."""
    return scores.requires_grad and torch.is_grad_enabled()


def _generic_tail(name: str, *args: Any) -> Any:
    from array_api_compat import torch as torch_namespace

    return getattr(_kernel, name)(torch_namespace, *args)


def forward_logits(xp: Any, scores: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype):
    """The forward of :func:`ace_core._kernel.forward_logits` in native torch ops."""
    if _tracks_grad(scores):
        return _generic_tail("forward_logits", scores, valid, dtype)
    if _use_cupy(scores):
        return _call_cupy("forward_logits", (scores, valid), dtype)
    with torch.no_grad():
        a = scores.to(dtype)
        e = torch.empty(a.shape, dtype=dtype, device=a.device)
        step_max, step_log_sum, _, log_mass = _forward(a, valid, e)
    return step_max, step_log_sum, log_mass


def backward_logits(
    xp: Any,
    grad_out: torch.Tensor,
    scores: torch.Tensor,
    counts: torch.Tensor,
    valid: torch.Tensor | None,
    lengths: torch.Tensor,
    step_max: torch.Tensor,
    step_log_sum: torch.Tensor,
    log_mass: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``."""
    args = (grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass)
    if _tracks_grad(scores) or grad_out.requires_grad:
        return _generic_tail("backward_logits", *args, dtype)
    if _use_cupy(scores):
        return _call_cupy("backward_logits", args, dtype)
    floor = math.log(_mass_floor(dtype, scores.shape[1]))
    with torch.no_grad():
        if bool(torch.any((counts != 0) & (log_mass < floor))):
            return _generic_tail("backward_logits", *args, dtype)
        e = torch.sub(scores.to(dtype), step_max[:, :, None])
        e.exp_()
        if valid is not None:
            e.masked_fill_(~valid[:, :, None], 0)
        _backward_into(e, _on_valid(torch.exp(-step_log_sum), valid), grad_out, counts, lengths, log_mass)
    return e


def forward_backward_logits(
    xp: Any,
    grad_out: torch.Tensor,
    scores: torch.Tensor,
    counts: torch.Tensor,
    valid: torch.Tensor | None,
    lengths: torch.Tensor,
    dtype: torch.dtype,
):
    """Forward and backward in one sweep: ``e`` lives in the gradient's buffer between the halves."""
    if _tracks_grad(scores):
        return _generic_tail("forward_backward_logits", grad_out, scores, counts, valid, lengths, dtype)
    if _use_cupy(scores):
        return _call_cupy("forward_backward_logits", (grad_out, scores, counts, valid, lengths), dtype)
    with torch.no_grad():
        a = scores.to(dtype)
        e = torch.empty(a.shape, dtype=dtype, device=a.device)
        step_max, step_log_sum, rowsum, log_mass = _forward(a, valid, e)
        if bool(torch.any((counts != 0) & (log_mass < math.log(_mass_floor(dtype, a.shape[1]))))):
            # y / mass is inexact for such a class: the generic kernel's log space is not.
            return _generic_tail("forward_backward_logits", grad_out, scores, counts, valid, lengths, dtype)
        _backward_into(e, _on_valid(1 / rowsum, valid), grad_out, counts, lengths, log_mass)
    return step_max, step_log_sum, log_mass, e
