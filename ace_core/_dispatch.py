"""Choosing the implementation of the kernel for a namespace.

``kernel_for(xp)`` returns an object with the functions of
:mod:`ace_core._kernel`; where ``ace_core.backends.<library>`` exists and
defines a function, that fast path replaces the generic one. The choice is
cached per namespace, and a library's module is imported only once arrays of
that library have been seen, so ``import ace_core`` imports no framework.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import SimpleNamespace

import array_api_compat

from . import _kernel
from ._typing import ArrayNamespace

__all__ = ["kernel_for", "library_name", "KERNEL_FUNCTIONS"]

KERNEL_FUNCTIONS = (
    "forward_logits",
    "forward_probs",
    "backward_logits",
    "backward_probs",
    "forward_backward_logits",
)


def library_name(xp: ArrayNamespace) -> str:
    """``numpy``, ``cupy``, ``torch``, ``jax``, ``array_api_strict``, ... for a namespace."""
    checks = (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("jax", array_api_compat.is_jax_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    )
    for name, check in checks:
        if check(xp):
            return name
    return xp.__name__.split(".")[0]


def _fast_path_module(library: str):
    try:
        return importlib.import_module(f"ace_core.backends.{library}")
    except ModuleNotFoundError as error:
        if error.name != f"ace_core.backends.{library}":
            raise
        return None


@cache
def _kernel_for_library(library: str) -> SimpleNamespace:
    fast = _fast_path_module(library)
    chosen = {}
    for name in KERNEL_FUNCTIONS:
        chosen[name] = getattr(fast, name, None) or getattr(_kernel, name)
    halves_are_fast = (chosen["forward_logits"], chosen["backward_logits"]) != (
        _kernel.forward_logits,
        _kernel.backward_logits,
    )
    if getattr(fast, "forward_backward_logits", None) is None and halves_are_fast:
        # A library with fast halves but no fused path composes its own halves.
        chosen["forward_backward_logits"] = _composed(chosen["forward_logits"], chosen["backward_logits"])
    return SimpleNamespace(library=library, **chosen)


def _composed(forward_logits, backward_logits):
    def forward_backward_logits(xp, grad_out, scores, counts, valid, lengths, dtype):
        step_max, step_log_sum, log_mass = forward_logits(xp, scores, valid, dtype)
        grad = backward_logits(
            xp, grad_out, scores, counts, valid, lengths, step_max, step_log_sum, log_mass, dtype
        )
        return step_max, step_log_sum, log_mass, grad

    return forward_backward_logits


def kernel_for(xp: ArrayNamespace) -> SimpleNamespace:
    """The kernel functions for ``xp``: a library's fast path where it has one, else the generic.

    Tests of a fast path compare its functions with those of
    :mod:`ace_core._kernel` directly.
    """
    return _kernel_for_library(library_name(xp))
