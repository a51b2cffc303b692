"""The array backends of the test suite: which exist, how to load them, how to move data.

The fixtures in conftest.py (``xp``, ``backend``, ...) are parametrized over::

    numpy, array_api_strict, torch, jax            (CPU)
    cupy, torch_cuda, jax_gpu                      (GPU, marked ``gpu``)

A backend whose library is not installed, or that needs a GPU where there is
none, is skipped with the reason; it never passes silently.
``ACE_TEST_BACKENDS=numpy,torch`` restricts the list (unknown names are an
error, so that a typo does not silently run nothing).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

CPU_BACKENDS = ("numpy", "array_api_strict", "torch", "jax")
GPU_BACKENDS = ("cupy", "torch_cuda", "jax_gpu")
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS


def selected_backends(candidates: tuple[str, ...] = ALL_BACKENDS) -> list[str]:
    """``candidates`` restricted by ``ACE_TEST_BACKENDS`` (comma separated), order kept."""
    raw = os.environ.get("ACE_TEST_BACKENDS", "").strip()
    if not raw:
        return list(candidates)
    wanted = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(ALL_BACKENDS))
    if unknown:
        raise pytest.UsageError(f"ACE_TEST_BACKENDS names unknown backends {unknown}; known: {ALL_BACKENDS}")
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

    name: str  # the test id: numpy, torch, torch_cuda, ...
    library: str  # numpy, array_api_strict, torch, jax, cupy
    xp: ModuleType  # the array API namespace ace_core will find for these arrays
    device: Any
    _from_numpy: Callable[[np.ndarray, str | None], Any]
    _to_numpy: Callable[[Any], np.ndarray]
    half_dtypes: tuple[str, ...]  # of "float16", "bfloat16": what the library has

    def asarray(self, data: Any, dtype: str | None = None) -> Any:
        """A fresh array on this backend's device holding ``data`` (always a copy).

        ``dtype`` is a name ("float32", "bfloat16", ...) so that the half
        types NumPy lacks can be asked for; the NumPy data is rounded to it.
        """
        host = np.array(data, copy=True)
        if dtype is not None and dtype not in ("float16", "bfloat16", "float32", "float64"):
            host = host.astype(dtype)
            dtype = None
        if dtype in ("float16", "bfloat16") and dtype not in self.half_dtypes:
            pytest.skip(f"{self.name} has no {dtype}")
        return self._from_numpy(host, dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Host copy of ``x`` (half types widened to float32, since NumPy may lack them)."""
        return np.array(self._to_numpy(x), copy=True)

    def dtype(self, name: str) -> Any:
        """The backend's dtype object for a name like "float64" or "bfloat16"."""
        if name in ("float16", "bfloat16") and name not in self.half_dtypes:
            pytest.skip(f"{self.name} has no {name}")
        if self.library == "torch":
            import torch

            return getattr(torch, name)
        if self.library == "jax":
            import jax.numpy as jnp

            return getattr(jnp, name)
        return getattr(self.xp, name)


def _import_or_skip(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:  # ModuleNotFoundError, or a broken install (e.g. no CUDA libs)
        pytest.skip(f"{module} is not importable: {error}")


def _numpy_backend() -> Backend:
    import array_api_compat.numpy as xp

    def from_numpy(host: np.ndarray, dtype: str | None) -> np.ndarray:
        return host if dtype is None else host.astype(dtype)

    return Backend("numpy", "numpy", xp, "cpu", from_numpy, np.asarray, ("float16",))


def _array_api_strict_backend() -> Backend:
    xp = _import_or_skip("array_api_strict")

    def from_numpy(host: np.ndarray, dtype: str | None) -> Any:
        return xp.asarray(host if dtype is None else host.astype(dtype))

    device = xp.asarray(0.0).device
    return Backend("array_api_strict", "array_api_strict", xp, device, from_numpy, np.from_dlpack, ())


def _torch_backend(name: str, device_name: str) -> Backend:
    torch = _import_or_skip("torch")
    if device_name == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    import array_api_compat.torch as xp

    device = torch.device(device_name)

    def from_numpy(host: np.ndarray, dtype: str | None) -> Any:
        # torch.from_numpy of our private copy: no warning about read-only memory.
        tensor = torch.from_numpy(np.ascontiguousarray(host))
        if dtype is not None:
            tensor = tensor.to(getattr(torch, dtype))
        return tensor.to(device)

    def to_numpy(x: Any) -> np.ndarray:
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.numpy()

    return Backend(name, "torch", xp, device, from_numpy, to_numpy, ("float16", "bfloat16"))


def _jax_backend(name: str, platform: str) -> Backend:
    jax = _import_or_skip("jax")
    # float64 tests need x64; set once, before any jax array of the session exists.
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    try:
        device = jax.devices(platform)[0]
    except RuntimeError as error:
        pytest.skip(f"jax has no {platform} device here: {error}")

    def from_numpy(host: np.ndarray, dtype: str | None) -> Any:
        if dtype is not None:
            host = host.astype(getattr(jnp, dtype))  # ml_dtypes gives NumPy a bfloat16
        return jax.device_put(host, device)

    def to_numpy(x: Any) -> np.ndarray:
        host = np.asarray(x)
        if host.dtype == jnp.bfloat16:
            host = host.astype(np.float32)
        return host

    return Backend(name, "jax", jnp, device, from_numpy, to_numpy, ("float16", "bfloat16"))


def _cupy_backend() -> Backend:
    cupy = _import_or_skip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError without a driver
        pytest.skip(f"cupy finds no CUDA device: {error}")
    if count == 0:
        pytest.skip("cupy finds no CUDA device")
    import array_api_compat.cupy as xp

    def from_numpy(host: np.ndarray, dtype: str | None) -> Any:
        return cupy.asarray(host if dtype is None else host.astype(dtype))

    return Backend("cupy", "cupy", xp, cupy.cuda.Device(0), from_numpy, lambda x: x.get(), ("float16",))


_LOADERS: dict[str, Callable[[], Backend]] = {
    "numpy": _numpy_backend,
    "array_api_strict": _array_api_strict_backend,
    "torch": lambda: _torch_backend("torch", "cpu"),
    "jax": lambda: _jax_backend("jax", "cpu"),
    "cupy": _cupy_backend,
    "torch_cuda": lambda: _torch_backend("torch_cuda", "cuda"),
    "jax_gpu": lambda: _jax_backend("jax_gpu", "gpu"),
}
_LOADED: dict[str, Backend | str] = {}  # a Backend, or the reason it is skipped


def load_backend(name: str) -> Backend:
    """The backend called ``name``; ``pytest.skip`` (with the reason) where it is unavailable."""
    if name not in _LOADED:
        try:
            _LOADED[name] = _LOADERS[name]()
        except pytest.skip.Exception as skip:
            _LOADED[name] = str(skip.msg)
    found = _LOADED[name]
    if isinstance(found, str):
        pytest.skip(found)
    return found
