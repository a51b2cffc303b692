"""torch fast path: no autograd graph, no ``(B, T, C)`` residuals.

CPU tensors of float16, float32 and float64 run the NumPy fast path
(:mod:`ace_core.backends.numpy`) on zero-copy views (``Tensor.numpy()`` in,
``torch.from_numpy`` out; ``out=`` is written in place): it was measured faster
than torch's own ops at every number of classes tried. The rest (bfloat16, CUDA
without CuPy) follows the same plan with torch's own vectorised ops on whole
tensors:

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
from ace_core._contract import ACEResiduals
from ace_core._interop import cupy_view, map_arrays, numpy_view, torch_from_cupy

from ._common import DENSE_MAX_CLASSES, mass_floor, on_valid_steps, per_mass_weights, pull_weights

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


def _call_cupy(function_name: str, args: tuple[Any, ...], dtype: torch.dtype, out: Any = None) -> Any:
    """Run a CuPy kernel on torch tensors (zero-copy, DLPack) on torch's current stream.

    ``args`` are the kernel function's arguments after ``xp`` (residuals as an
    :class:`ACEResiduals` of tensors); the scores are the tensor with three
    dimensions. CuPy has no bfloat16, so bfloat16 scores travel as their bit
    patterns and the gradient comes back the same way. ``out`` is passed on as
    a view of the same memory and returned as the gradient.
    """
    import cupy

    kernels, cupy_namespace = _cupy_backend()
    scores = next(a for a in args if isinstance(a, torch.Tensor) and a.ndim == 3)
    bits = scores.dtype == torch.bfloat16

    def to_cupy(value: Any) -> Any:
        def view(x: Any) -> Any:
            # The kernels read C-contiguous memory; a strided tensor is copied once here.
            x = x.contiguous() if isinstance(x, torch.Tensor) else x
            return cupy_view(x, bfloat16_bits=True)

        return map_arrays(view, value)

    def to_torch(value: Any) -> torch.Tensor:
        return torch_from_cupy(value, bfloat16_bits=bits and value.ndim == 3)

    compute = cupy.dtype(str(dtype).removeprefix("torch."))
    device = scores.device
    keywords = {"bfloat16_bits": bits}
    if out is not None:
        keywords["out"] = to_cupy(out)
    with (
        cupy.cuda.Device(device.index),
        kernels.on_torch_stream(torch.cuda.current_stream(device).cuda_stream),
    ):
        results = getattr(kernels, function_name)(cupy_namespace, *map(to_cupy, args), compute, **keywords)
    if not isinstance(results, tuple):
        return to_torch(results)
    results = tuple(map(to_torch, results))
    return results if out is None else (*results[:-1], out)


#: CPU tensors of these dtypes run the NumPy fast path on zero-copy views: measured with
#: ``ace bench`` on a 2-core machine it was faster than torch's own ops at every C tried
#: (37 to 7357), within 1.1x of NumPy itself at C = 7357.
_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def _use_numpy(scores: torch.Tensor) -> bool:
    return scores.device.type == "cpu" and scores.dtype in _NUMPY_DTYPES


def _call_numpy(function_name: str, args: tuple[Any, ...], dtype: torch.dtype, out: Any = None) -> Any:
    """Run the NumPy fast path on zero-copy NumPy views of CPU tensors; its arrays come back as tensors.

    ``Tensor.numpy()`` and ``torch.from_numpy`` share the memory, so nothing is
    copied either way: ``out`` is written in place, and a fresh gradient is the
    buffer NumPy allocated.
    """
    from array_api_compat import numpy as numpy_namespace

    from ace_core.backends import numpy as kernels

    def to_numpy(value: Any) -> Any:
        return map_arrays(numpy_view, value)

    compute = torch.empty((), dtype=dtype).numpy().dtype
    keywords = {} if out is None else {"out": to_numpy(out)}
    results = getattr(kernels, function_name)(numpy_namespace, *map(to_numpy, args), compute, **keywords)
    if not isinstance(results, tuple):
        return torch.from_numpy(results)
    results = tuple(map(torch.from_numpy, results))
    return results if out is None else (*results[:-1], out)


def _split_log(log_value: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(whole, rest)`` in ``dtype`` from a float64 log: a whole number and the small rest.

    Their float64 sum is ``log_value`` to the dtype's precision in absolute terms,
    where a one-part float32 log would carry a relative error (large at a large log).
    """
    finite = torch.isfinite(log_value)
    whole = torch.where(finite, torch.round(log_value), log_value).to(dtype)
    rest = torch.where(finite, log_value - whole.double(), 0).to(dtype)
    return whole, rest


def _widened_sum(whole: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    return whole.double() + rest.double()


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
    """``exp`` into ``e``; returns ``(step_max, step_log_sum, mass_max, mass_log_sum, rowsum)``.

    The mass ``Σ_t y`` is taken in probability space and split like a log
    (:func:`_split_log`); a class whose mass is so small that underflowed terms
    of ``y`` could matter is redone in log space as the generic kernel does: the
    max over steps of ``log y`` (rounded as in the dtype) and the log-sum
    relative to it, so that tied steps share ``r`` exactly (a backward with such
    a class present takes the generic kernel).
    """
    dtype = e.dtype
    step_max, rowsum = _exp_shifted(a, valid, e)
    step_log_sum = torch.log(rowsum)
    mass = torch.bmm((1 / rowsum)[:, None, :], e)[:, 0, :]
    mass_max, mass_log_sum = _split_log(torch.log(mass.double()), dtype)
    tiny = mass < mass_floor(torch.finfo(dtype), e.shape[1])
    if bool(torch.any(tiny)):
        sample, column = torch.nonzero(tiny, as_tuple=True)
        # log y rounded as the generic kernel rounds it, (a - step_max) - step_log_sum in
        # the dtype: its max is then a number of the dtype, and tied steps share r exactly.
        log_y = (a[sample, :, column] - step_max[sample]) - step_log_sum[sample]
        if valid is not None:
            log_y = log_y.masked_fill(~valid[sample], -math.inf)
        rounded = torch.amax(log_y, dim=1)
        finite = torch.isfinite(rounded)
        gap = log_y.double() - torch.where(finite, rounded.double(), 0)[:, None]
        log_sum = torch.where(finite, torch.log(torch.exp(gap).sum(dim=1)), 0).to(dtype)
        rounded = torch.where(finite, rounded, -math.inf)
        mass_max = mass_max.index_put((sample, column), rounded)
        mass_log_sum = mass_log_sum.index_put((sample, column), log_sum)
    return step_max, step_log_sum, mass_max, mass_log_sum, rowsum


def _backward_into(
    e: torch.Tensor,
    rho: torch.Tensor,
    grad_out: torch.Tensor,
    counts: torch.Tensor,
    lengths: torch.Tensor,
    mass_max: torch.Tensor,
    mass_log_sum: torch.Tensor,
) -> None:
    """``grad = y ⊙ (S 1ᵀ - W)`` into ``e`` with ``y = e ρ``: ``e ⊙ (u 1ᵀ - ρ Wᵀ)``, ``u = ρ² (e W)``.

    ``W = g N̄ / Σ_t y`` is formed in float64 from the two-part log-mass.
    """
    weights = pull_weights(torch, counts.double(), lengths.double(), grad_out.double())
    per_mass = per_mass_weights(torch, weights, _widened_sum(mass_max, mass_log_sum)).to(e.dtype)
    if e.shape[2] > DENSE_MAX_CLASSES:
        _backward_sparse(e, rho, counts != 0, per_mass, weights.to(e.dtype))
        return
    total = torch.bmm(e, per_mass[:, :, None])[:, :, 0]
    left = torch.stack([rho * (rho * total), -rho], dim=2)
    right = torch.stack([torch.ones_like(per_mass), per_mass], dim=1)
    e.mul_(torch.bmm(left, right))


def _backward_sparse(
    e: torch.Tensor, rho: torch.Tensor, present: torch.Tensor, per_mass: torch.Tensor, weights: torch.Tensor
) -> None:
    """The same on the present classes only: ``e ← e u``, then ``e[:, :, P] -= g N̄_P r_P``.

    ``P`` is each sample's present classes, padded to the largest count with
    entries of weight 0 (so the padding adds nothing); ``r = y / Σ_t y`` is
    clipped at 1, which only rounding could pass.
    """
    width = max(1, int(present.sum(dim=1).max()))  # a host sync on (B,) values
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :width]
    keep = torch.gather(present, 1, order)
    weight = torch.gather(weights, 1, order) * keep
    inverse_mass = torch.gather(torch.where(weights != 0, per_mass / weights, 0), 1, order) * keep
    index = order[:, None, :].expand(e.shape[0], e.shape[1], width)
    r = torch.gather(e, 2, index) * (rho[:, :, None] * inverse_mass[:, None, :])
    pull = r.clamp_(max=1) * weight[:, None, :]
    e.mul_((rho * (pull.sum(dim=2)))[:, :, None])
    e.scatter_add_(2, index, -pull)


def _tracks_grad(scores: torch.Tensor) -> bool:
    """Autograd through the core's own ops was asked for: the generic kernel keeps that graph."""
    return scores.requires_grad and torch.is_grad_enabled()


def _generic(name: str, *args: Any, **kwargs: Any) -> Any:
    from array_api_compat import torch as torch_namespace

    return getattr(_kernel, name)(torch_namespace, *args, **kwargs)


def _inexact_pull(counts: torch.Tensor, mass_max: torch.Tensor, mass_log_sum: torch.Tensor, steps: int):
    """Whether a present class's mass is too small for ``y / mass`` in probability space (a host sync)."""
    floor = math.log(mass_floor(torch.finfo(mass_max.dtype), steps))
    return bool(torch.any((counts != 0) & ((mass_max + mass_log_sum) < floor)))


def forward_logits(xp: Any, scores: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype):
    """The forward of :func:`ace_core._kernel.forward_logits` in native torch ops."""
    if _tracks_grad(scores):
        return _generic("forward_logits", scores, valid, dtype)
    if _use_cupy(scores):
        return _call_cupy("forward_logits", (scores, valid), dtype)
    if _use_numpy(scores):
        return _call_numpy("forward_logits", (scores, valid), dtype)
    with torch.no_grad():
        a = scores.to(dtype)
        e = torch.empty(a.shape, dtype=dtype, device=a.device)
        return _forward(a, valid, e)[:4]


def backward_logits(
    xp: Any,
    grad_out: torch.Tensor,
    scores: torch.Tensor,
    counts: torch.Tensor,
    residuals: ACEResiduals,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The backward of :func:`ace_core._kernel.backward_logits`: the softmax recomputed, one ``exp``."""
    res = residuals
    if _tracks_grad(scores) or grad_out.requires_grad:
        return _generic("backward_logits", grad_out, scores, counts, res, dtype)
    if _use_cupy(scores):
        return _call_cupy("backward_logits", (grad_out, scores, counts, res), dtype)
    if _use_numpy(scores):
        return _call_numpy("backward_logits", (grad_out, scores, counts, res), dtype)
    with torch.no_grad():
        if _inexact_pull(counts, res.mass_max, res.mass_log_sum, scores.shape[1]):
            return _generic("backward_logits", grad_out, scores, counts, res, dtype)
        e = torch.sub(scores.to(dtype), res.step_max[:, :, None])
        e.exp_()
        if res.valid is not None:
            e.masked_fill_(~res.valid[:, :, None], 0)
        rho = on_valid_steps(torch, torch.exp(-res.step_log_sum), res.valid)
        _backward_into(e, rho, grad_out, counts, res.lengths, res.mass_max, res.mass_log_sum)
    return e


def forward_backward_logits(
    xp: Any,
    grad_out: torch.Tensor,
    scores: torch.Tensor,
    counts: torch.Tensor,
    valid: torch.Tensor | None,
    lengths: torch.Tensor,
    dtype: torch.dtype,
    *,
    out: torch.Tensor | None = None,
):
    """Forward and backward in one sweep: ``e`` lives in the gradient's buffer between the halves.

    ``out`` (contiguous, ``(B, T, C)`` of ``dtype``, not overlapping ``scores``) receives the gradient.
    """
    args = (grad_out, scores, counts, valid, lengths)
    if _tracks_grad(scores):
        return _generic("forward_backward_logits", *args, dtype, out=out)
    if _use_cupy(scores):
        return _call_cupy("forward_backward_logits", args, dtype, out=out)
    if _use_numpy(scores):
        return _call_numpy("forward_backward_logits", args, dtype, out=out)
    with torch.no_grad():
        a = scores.to(dtype)
        e = torch.empty(a.shape, dtype=dtype, device=a.device) if out is None else out
        step_max, step_log_sum, mass_max, mass_log_sum, rowsum = _forward(a, valid, e)
        if _inexact_pull(counts, mass_max, mass_log_sum, a.shape[1]):
            # y / mass is inexact for such a class: the generic kernel's log space is not.
            return _generic("forward_backward_logits", *args, dtype, out=out)
        rho = on_valid_steps(torch, 1 / rowsum, valid)
        _backward_into(e, rho, grad_out, counts, lengths, mass_max, mass_log_sum)
    return step_max, step_log_sum, mass_max, mass_log_sum, e
