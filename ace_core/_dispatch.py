"""Choosing the implementation of the kernel for a namespace.

``kernel_for(xp)`` returns a :class:`Kernel` holding the five functions of
:class:`ace_core._contract.KernelFunctions`; where ``ace_core.backends.<library>``
exists and defines a function, that fast path replaces the generic one of
:mod:`ace_core._kernel`. A module that replaces a half from logits
(``forward_logits`` or ``backward_logits``) must also define
``forward_backward_logits``, so that ``ace_loss_and_grad`` never mixes a fast
half with a generic one by accident. The choice is cached per namespace, and
a library's module is imported only once arrays of that library have been
seen, so ``import ace_core`` imports no framework.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from functools import cache

import array_api_compat

from . import _kernel
from ._typing import ArrayNamespace

__all__ = ["Kernel", "kernel_for", "library_name", "KERNEL_FUNCTIONS"]

KERNEL_FUNCTIONS = (
    "forward_logits",
    "forward_probs",
    "backward_logits",
    "backward_probs",
    "forward_backward_logits",
)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The kernel functions chosen for one library (see :class:`ace_core._contract.KernelFunctions`)."""

    library: str
    forward_logits: Callable
    forward_probs: Callable
    backward_logits: Callable
    backward_probs: Callable
    forward_backward_logits: Callable
    #: The gradients from logits set infeasible samples to ``drop_value`` themselves
    #: (a module's ``MASKS_INFEASIBLE``): the caller then skips its own pass over them.
    masks_infeasible: bool = False


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
def _kernel_for_library(library: str) -> Kernel:
    fast = _fast_path_module(library)
    chosen = {name: getattr(fast, name, None) or getattr(_kernel, name) for name in KERNEL_FUNCTIONS}
    has = {name: getattr(fast, name, None) is not None for name in KERNEL_FUNCTIONS}
    if (has["forward_logits"] or has["backward_logits"]) and not has["forward_backward_logits"]:
        raise TypeError(
            f"{fast.__name__} replaces a half of the kernel from logits but not forward_backward_logits"
        )
    return Kernel(library=library, masks_infeasible=bool(getattr(fast, "MASKS_INFEASIBLE", False)), **chosen)


def kernel_for(xp: ArrayNamespace) -> Kernel:
    """The kernel functions for ``xp``: a library's fast path where it has one, else the generic.

    Tests of a fast path compare its functions with those of
    :mod:`ace_core._kernel` directly.
    """
    return _kernel_for_library(library_name(xp))
