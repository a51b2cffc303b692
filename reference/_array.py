"""Small portable helpers of the training reference: namespaces, host transfer, padding, init.

Everything here uses only the array API standard (through ``array_api_compat``),
so that the layers built on it run unchanged on NumPy, CuPy, array-api-strict,
JAX and torch. Random numbers are drawn on the host with a NumPy
``Generator`` and moved to the device once, because the standard has no RNG.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ace_core._interop import to_numpy as _to_numpy
from ace_core._typing import Array, ArrayNamespace

__all__ = [
    "default_namespace",
    "device_of",
    "dtype_name",
    "from_host",
    "normal_init",
    "pad2d",
    "resolve",
    "to_host",
    "uniform_init",
]


def default_namespace() -> ArrayNamespace:
    """NumPy seen through ``array_api_compat`` (the CPU default of the reference)."""
    import array_api_compat.numpy

    return array_api_compat.numpy


def resolve(xp: Any = None, device: Any = None) -> tuple[ArrayNamespace, Any]:
    """The array-API namespace for ``xp`` (a module such as ``numpy`` or ``cupy``) and the device.

    A bare library module is replaced by its compatible namespace
    (``numpy`` → ``array_api_compat.numpy``), so that standard names such as
    ``concat`` and ``permute_dims`` exist on every library; ``device=None``
    means the library's default device.
    """
    if xp is None:
        xp = default_namespace()
    else:
        xp = array_api_compat.array_namespace(xp.empty((0,)))
    if device is None:
        device = array_api_compat.device(xp.empty((0,)))
    return xp, device


def device_of(x: Array) -> Any:
    """The device that ``x`` lives on."""
    return array_api_compat.device(x)


def dtype_name(xp: ArrayNamespace, dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` for a floating dtype of ``xp`` (JSON-friendly)."""
    for name in ("float32", "float64", "float16"):
        if hasattr(xp, name) and dtype == getattr(xp, name):
            return name
    raise ValueError(f"unsupported dtype {dtype!r}")


def to_host(x: Array) -> np.ndarray:
    """A NumPy copy of ``x`` on the host (``x.get()`` for CuPy, DLPack or ``__array__`` elsewhere)."""
    return np.array(_to_numpy(x), copy=True)


def from_host(a: Any, xp: ArrayNamespace, device: Any, dtype: Any = None) -> Array:
    """``a`` (NumPy or nested sequences) as a fresh array of ``xp`` on ``device``."""
    return xp.asarray(np.asarray(a), dtype=dtype, device=device, copy=True)


def normal_init(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    fan_in: int,
    xp: ArrayNamespace,
    device: Any,
    dtype: Any,
    gain: float = 2.0,
) -> Array:
    """He/Kaiming normal weights: ``N(0, gain / fan_in)`` drawn on the host, moved once.

    ``gain=2`` suits ReLU layers, ``gain=1`` linear and recurrent ones.
    """
    w = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
    return from_host(w, xp, device, dtype)


def uniform_init(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    bound: float,
    xp: ArrayNamespace,
    device: Any,
    dtype: Any,
) -> Array:
    """Weights uniform in ``[-bound, bound]``, drawn on the host and moved once."""
    return from_host(rng.uniform(-bound, bound, size=shape), xp, device, dtype)


def pad2d(x: Array, top: int, bottom: int, left: int, right: int, xp: ArrayNamespace) -> Array:
    """Zero-pad the last two axes of ``x`` (the standard has no ``pad``: concatenate zeros).

    Negative amounts crop instead, so that a backward pass can undo a forward pad.
    """
    h, w = x.shape[-2], x.shape[-1]
    x = x[..., max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]
    top, bottom, left, right = max(top, 0), max(bottom, 0), max(left, 0), max(right, 0)
    lead = tuple(x.shape[:-2])
    dev = device_of(x)
    if top or bottom:
        parts = [x]
        if top:
            parts.insert(0, xp.zeros((*lead, top, x.shape[-1]), dtype=x.dtype, device=dev))
        if bottom:
            parts.append(xp.zeros((*lead, bottom, x.shape[-1]), dtype=x.dtype, device=dev))
        x = xp.concat(parts, axis=-2)
    if left or right:
        parts = [x]
        if left:
            parts.insert(0, xp.zeros((*lead, x.shape[-2], left), dtype=x.dtype, device=dev))
        if right:
            parts.append(xp.zeros((*lead, x.shape[-2], right), dtype=x.dtype, device=dev))
        x = xp.concat(parts, axis=-1)
    return x
