"""The array backends that ace_core knows: one table for ``ace info``, ``ace bench``,
the asv benchmarks and the test fixtures.

Each :class:`Backend` names a library and a device kind, says whether it is
usable here (and why not), and knows how to put NumPy data on its device, how
to bring results back and how to wait for queued device work. Nothing is
imported until a backend is asked for, so listing the table imports no
framework.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ._namespace import to_numpy
from ._typing import Array, ArrayNamespace

__all__ = ["Backend", "BACKENDS", "backend", "usable_backends"]


@dataclass(frozen=True)
class Backend:
    """One array library on one kind of device."""

    name: str  #: ``numpy``, ``array_api_strict``, ``torch``, ``torch_cuda``, ``jax``, ``jax_gpu``, ``cupy``
    library: str  #: the module to import
    gpu: bool  #: whether arrays live on an NVIDIA GPU
    _namespace: Callable[[], ArrayNamespace]
    _device: Callable[[], Any]
    _gpu_check: Callable[[], bool] | None = None

    def unusable_reason(self) -> str | None:
        """``None`` when usable here, else why not (missing library or device)."""
        return _unusable_reason(self)

    @property
    def usable(self) -> bool:
        return self.unusable_reason() is None

    def namespace(self) -> ArrayNamespace:
        """The array-API namespace (array_api_compat's wrapper where there is one)."""
        return self._namespace()

    def device(self) -> Any:
        """The device that :meth:`asarray` puts data on."""
        return self._device()

    def asarray(self, data: Any, dtype: Any = None) -> Array:
        """``data`` (NumPy or nested lists) as an array of this backend on its device.

        ``dtype`` is a dtype of this namespace or a name such as ``"float32"``.
        """
        xp = self.namespace()
        if isinstance(dtype, str):
            dtype = getattr(xp, dtype)
        return xp.asarray(np.asarray(data), dtype=dtype, device=self.device())

    def to_numpy(self, x: Array) -> np.ndarray:
        """A host copy of ``x``; float16/bfloat16 come back as float32."""
        if self.library == "torch" and str(x.dtype) == "torch.bfloat16":
            x = x.float()
        out = to_numpy(x)
        if out.dtype.kind == "V" or str(out.dtype) == "bfloat16":
            out = out.astype(np.float32)
        return np.asarray(out)

    def synchronize(self, *arrays: Array) -> None:
        """Wait for the device work that produced ``arrays`` (a no-op on the CPU)."""
        if self.library == "torch" and self.gpu:
            importlib.import_module("torch").cuda.synchronize()
        elif self.library == "cupy":
            importlib.import_module("cupy").cuda.get_current_stream().synchronize()
        elif self.library == "jax":
            for array in arrays:
                if hasattr(array, "block_until_ready"):
                    array.block_until_ready()


def _compat(name: str) -> Callable[[], ArrayNamespace]:
    return lambda: importlib.import_module(f"array_api_compat.{name}")


def _jax_namespace() -> ArrayNamespace:
    return importlib.import_module("jax.numpy")


def _strict_namespace() -> ArrayNamespace:
    return importlib.import_module("array_api_strict")


def _torch_device(kind: str) -> Callable[[], Any]:
    return lambda: importlib.import_module("torch").device(kind)


def _jax_device(kind: str) -> Callable[[], Any]:
    return lambda: importlib.import_module("jax").devices(kind)[0]


def _strict_device() -> Any:
    return importlib.import_module("array_api_strict").Device("CPU_DEVICE")


def _cupy_device() -> Any:
    return importlib.import_module("cupy").cuda.Device()


def _torch_has_cuda() -> bool:
    return bool(importlib.import_module("torch").cuda.is_available())


def _jax_has_gpu() -> bool:
    try:
        return len(importlib.import_module("jax").devices("gpu")) > 0
    except RuntimeError:
        return False


def _cupy_has_gpu() -> bool:
    try:
        return importlib.import_module("cupy").cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CUDA runtime error means "no usable GPU"
        return False


BACKENDS: tuple[Backend, ...] = (
    Backend("numpy", "numpy", False, _compat("numpy"), lambda: "cpu"),
    Backend("array_api_strict", "array_api_strict", False, _strict_namespace, _strict_device),
    Backend("torch", "torch", False, _compat("torch"), _torch_device("cpu")),
    Backend("jax", "jax", False, _jax_namespace, _jax_device("cpu")),
    Backend("cupy", "cupy", True, _compat("cupy"), _cupy_device, _cupy_has_gpu),
    Backend("torch_cuda", "torch", True, _compat("torch"), _torch_device("cuda"), _torch_has_cuda),
    Backend("jax_gpu", "jax", True, _jax_namespace, _jax_device("gpu"), _jax_has_gpu),
)


@cache
def _unusable_reason(entry: Backend) -> str | None:
    if importlib.util.find_spec(entry.library) is None:
        return f"{entry.library} is not installed"
    try:
        importlib.import_module(entry.library)
    except Exception as error:  # noqa: BLE001 - a broken install is reported, not raised
        return f"{entry.library} fails to import: {error}"
    if entry._gpu_check is not None and not entry._gpu_check():
        return f"{entry.library} sees no GPU"
    return None


def backend(name: str) -> Backend:
    """The table entry called ``name``; ``ValueError`` listing the names otherwise."""
    for entry in BACKENDS:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(b.name for b in BACKENDS)}")


def usable_backends(*, gpu: bool | None = None) -> list[Backend]:
    """The usable entries, optionally only GPU (``gpu=True``) or only CPU ones."""
    return [b for b in BACKENDS if b.usable and (gpu is None or b.gpu == gpu)]
