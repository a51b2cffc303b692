"""Deprecated alias of :mod:`ace_core.bench.backend_table`, kept for one release."""

from __future__ import annotations

from ._moved import moved_to

__all__ = ["Backend", "BACKENDS", "backend", "usable_backends", "library_version"]  # noqa: F822

__getattr__ = moved_to(__name__, "ace_core.bench.backend_table", __all__)
