"""Deprecated alias of :mod:`ace_core.bench.backend_table`, kept for one release."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = [  # noqa: F822 - the names are served by __getattr__
    "Backend",
    "BACKENDS",
    "backend",
    "usable_backends",
    "library_version",
]


def __getattr__(name: str) -> Any:
    # A warning on use, not on import: collecting this module (doctests, tools) stays quiet.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__} is deprecated; import {name} from ace_core.bench.backend_table instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("ace_core.bench.backend_table"), name)
