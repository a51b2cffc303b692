"""The array backends of the test suite: ``ace_core.bench.backend_table`` seen from pytest.

The table says which backends exist, whether they are usable here (and why
not), and how to move data; this module adds what tests need on top: pytest
parameters (GPU ones marked ``gpu``), skips with the table's reason instead of
errors, JAX in x64 mode, and a skip for a half dtype a library lacks.
``ACE_TEST_BACKENDS=numpy,torch`` restricts the list (unknown names are an
error, so that a typo does not silently run nothing).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ace_core.bench import backend_table

ALL_BACKENDS = tuple(entry.name for entry in backend_table.BACKENDS)
GPU_BACKENDS = tuple(entry.name for entry in backend_table.BACKENDS if entry.gpu)
CPU_BACKENDS = tuple(name for name in ALL_BACKENDS if name not in GPU_BACKENDS)
_FLOATS = ("float16", "bfloat16", "float32", "float64")


def selected_backends(candidates: tuple[str, ...] = ALL_BACKENDS) -> list[str]:
    """``candidates`` restricted by ``ACE_TEST_BACKENDS`` (comma separated), order kept."""
    raw = os.environ.get("ACE_TEST_BACKENDS", "").strip()
    if not raw:
        return list(candidates)
    try:
        wanted = {backend_table.backend(name).name for name in raw.split(",") if name.strip()}
    except ValueError as error:
        raise pytest.UsageError(f"ACE_TEST_BACKENDS: {error}") from error
    return [name for name in candidates if name in wanted]


def backend_params(candidates: tuple[str, ...] = ALL_BACKENDS) -> list[Any]:
    """``pytest.param`` per selected backend, id = backend name, GPU ones marked ``gpu``."""
    return [
        pytest.param(name, id=name, marks=[pytest.mark.gpu] if name in GPU_BACKENDS else [])
        for name in selected_backends(candidates)
    ]


@dataclasses.dataclass(frozen=True)
class Backend:
    """One array library on one device, seen from the tests."""

    entry: backend_table.Backend

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def library(self) -> str:
        return self.entry.library

    @property
    def xp(self) -> ModuleType:
        return self.entry.namespace()

    @property
    def device(self) -> Any:
        return self.entry.device()

    def _skip_missing(self, dtype: str | None) -> None:
        if dtype in _FLOATS:
            problem = self.entry.dtype_problem(dtype)
            if problem is not None:
                pytest.skip(problem)

    def asarray(self, data: Any, dtype: str | None = None) -> Any:
        """A fresh array on this backend's device holding ``data`` (always a copy).

        ``dtype`` is a name ("float32", "bfloat16", "int64", ...), so that the
        half types NumPy lacks can be asked for; the data is rounded to it.
        """
        self._skip_missing(dtype)
        return self.entry.asarray(np.array(data, copy=True), dtype, copy=True)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Host copy of ``x`` (bfloat16 widened to float32, since NumPy lacks it)."""
        return self.entry.to_numpy(x)

    def dtype(self, name: str) -> Any:
        """The backend's dtype object for a name like "float64" or "bfloat16"."""
        self._skip_missing(name)
        return getattr(self.xp, name)


def load_backend(name: str) -> Backend:
    """The backend called ``name``; ``pytest.skip`` (with the reason) where it is unusable."""
    entry = backend_table.backend(name)
    reason = entry.unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    if entry.library == "jax":
        # float64 tests need x64; set before any jax array of the session exists.
        importlib.import_module("jax").config.update("jax_enable_x64", True)
    return Backend(entry)
