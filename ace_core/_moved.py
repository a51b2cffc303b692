"""Deprecated aliases of moved modules: the old name keeps working for one release, with a warning on use."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["moved_to"]


def moved_to(old: str, new: str, names: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for module ``old`` that serves ``names`` from ``new`` with a warning.

    The warning comes on use, not on import, so collecting the old module
    (doctests, tools) stays quiet.
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old} is deprecated; import {name} from {new} instead", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(new), name)

    return __getattr__
