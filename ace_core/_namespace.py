"""Finding the array namespace, the device and the compute dtype of the inputs.

One call per public function: ``array_api_compat.array_namespace`` costs a few
hundred nanoseconds and raises ``TypeError`` on arrays from two libraries.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from ._typing import Array, ArrayNamespace, Device, DType

__all__ = [
    "arrays_namespace",
    "common_device",
    "compute_dtype",
    "is_lazy",
    "is_floating",
    "is_integer",
    "to_numpy",
]


def arrays_namespace(*arrays: Any, xp: ArrayNamespace | None = None) -> ArrayNamespace:
    """The namespace of ``arrays`` (``None`` entries and Python scalars ignored).

    Raises ``TypeError`` when the arrays come from two libraries, also when
    ``xp`` is given: ACE never copies an array to another library or to the
    host behind the caller's back.
    """
    present = [a for a in arrays if a is not None and not isinstance(a, (numbers.Number, list, tuple))]
    found = array_api_compat.array_namespace(*present) if present else None
    if xp is not None:
        return xp
    if found is None:
        raise TypeError("no array given")
    return found


def common_device(names: Sequence[str], arrays: Sequence[Array]) -> Device:
    """The device shared by ``arrays``; ``ValueError`` naming the odd one out otherwise."""
    device = None
    first = None
    for name, array in zip(names, arrays, strict=True):
        if array is None:
            continue
        dev = array_api_compat.device(array)
        if first is None:
            device, first = dev, name
        elif dev is not None and device is not None and dev != device:
            raise ValueError(
                f"`{name}` is on device {dev!r} but `{first}` is on {device!r}; "
                "move them to one device (ACE never copies between devices)"
            )
    return device


def is_lazy(*arrays: Array) -> bool:
    """True when a value-dependent check cannot run (e.g. ``jax.jit`` tracers).

    ``array_api_compat.is_lazy_array`` calls every JAX array lazy; a concrete
    (eager) JAX array can be checked like any other, so only tracers count here.
    """
    return any(a is not None and _is_lazy_array(a) for a in arrays)


def _is_lazy_array(x: Array) -> bool:
    if array_api_compat.is_jax_array(x):
        # jax is imported already: x is one of its arrays.
        import jax

        return isinstance(x, jax.core.Tracer)
    return bool(array_api_compat.is_lazy_array(x))


def is_floating(xp: ArrayNamespace, dtype: DType) -> bool:
    return bool(xp.isdtype(dtype, "real floating"))


def is_integer(xp: ArrayNamespace, dtype: DType) -> bool:
    return bool(xp.isdtype(dtype, "integral"))


def compute_dtype(xp: ArrayNamespace, dtype: DType) -> DType:
    """float16/bfloat16 are accumulated in float32; float32/float64 as they are."""
    if dtype == xp.float32 or dtype == xp.float64:
        return dtype
    return xp.float32


def to_numpy(x: Array) -> np.ndarray:
    """Host copy of a (small) array, for results that must leave the device anyway."""
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_numpy_array(x):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(x)
