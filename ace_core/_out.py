"""Checking a caller's output buffer for the gradient (``out=``, NumPy's convention).

A buffer reused across calls saves the page faults of a fresh ``(B, T, C)``
gradient at every call. The kernel writes into it block by block while it
still reads the scores, so it must not share memory with them; it must also
be writable and, for the libraries whose kernels write through a reshaped
view, contiguous.
"""

from __future__ import annotations

import array_api_compat

from ._dispatch import library_name
from ._namespace import arrays_namespace
from ._typing import Array, ArrayNamespace

__all__ = ["check_out"]


def check_out(xp: ArrayNamespace, out: Array, scores: Array) -> None:
    """``TypeError``/``ValueError`` naming ``out`` unless it can receive the gradient of ``scores``."""
    try:
        out_xp = arrays_namespace(out, names=["out"])
    except TypeError as error:
        raise TypeError(f"`out` must be an array, got {type(out).__name__}") from error
    library = library_name(xp)
    if library_name(out_xp) != library:
        raise TypeError(f"`out` must be a {library} array like `scores`, got a {library_name(out_xp)} array")
    if library == "jax":
        raise TypeError("`out` is not supported for JAX arrays, which are immutable; leave it out")
    if out.dtype != scores.dtype:
        raise TypeError(f"`out` must have the dtype of `scores` ({scores.dtype}), got {out.dtype}")
    if tuple(out.shape) != tuple(scores.shape):
        raise ValueError(
            f"`out` must have the shape of `scores` {tuple(scores.shape)}, got {tuple(out.shape)}"
        )
    out_device, scores_device = array_api_compat.device(out), array_api_compat.device(scores)
    if out_device != scores_device:
        raise ValueError(f"`out` must be on the device of `scores` ({scores_device!r}), got {out_device!r}")
    _check_memory(library, out, scores)


def _check_memory(library: str, out: Array, scores: Array) -> None:
    """Writable, apart from ``scores`` and contiguous, where the library can tell."""
    if library in ("numpy", "cupy"):
        if not out.flags.writeable:
            raise ValueError("`out` is read-only")
        module = __import__(library)  # imported already: out is one of its arrays
        _check_apart(module.may_share_memory(out, scores))
        if not out.flags.c_contiguous:
            raise ValueError("`out` must be C-contiguous")
    elif library == "torch":
        if out.requires_grad:
            raise ValueError("`out` must not require grad")
        _check_apart(_torch_overlap(out, scores))
        if not out.is_contiguous():
            raise ValueError("`out` must be contiguous")


def _check_apart(overlaps: bool) -> None:
    if overlaps:
        raise ValueError("`out` must not share memory with `scores` (the gradient would overwrite them)")


def _torch_overlap(out: Array, scores: Array) -> bool:
    """Whether the storage bytes of two tensors overlap (conservative: whole storages)."""
    first, second = out.untyped_storage(), scores.untyped_storage()
    if first.device != second.device:
        return False
    start_a, start_b = first.data_ptr(), second.data_ptr()
    return start_a < start_b + second.nbytes() and start_b < start_a + first.nbytes()
