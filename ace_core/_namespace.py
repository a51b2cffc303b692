"""Finding the array namespace, the device and the compute dtype of the inputs.

One call per public function: ``array_api_compat.array_namespace`` costs a few
hundred nanoseconds and raises ``TypeError`` on arrays from two libraries.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import array_api_compat

from ._typing import Array, ArrayNamespace, Device, DType

__all__ = [
    "arrays_namespace",
    "common_device",
    "compute_dtype",
    "is_lazy",
    "is_floating",
    "is_integer",
    "library_of",
]


def arrays_namespace(
    *arrays: Any, xp: ArrayNamespace | None = None, names: Sequence[str] | None = None
) -> ArrayNamespace:
    """The namespace of ``arrays`` (``None`` entries and Python scalars ignored).

    Raises ``TypeError`` naming the argument (``names``, in the order of
    ``arrays``) that is not an array of a supported library, or that comes
    from another library than the others or than ``xp``: ACE never copies an
    array to another library or to the host behind the caller's back.
    """
    if names is None:
        names = [f"argument {i}" for i in range(len(arrays))]
    present = [
        (name, a)
        for name, a in zip(names, arrays, strict=True)
        if a is not None and not isinstance(a, (numbers.Number, list, tuple))
    ]
    try:
        found = array_api_compat.array_namespace(*(a for _, a in present)) if present else None
    except TypeError:
        _raise_mixed(present)
        raise
    if xp is not None:
        if found is not None and library_of(found) != library_of(xp):
            name = present[0][0]
            raise TypeError(
                f"`{name}` is a {library_of(found)} array but `xp` is the {library_of(xp)} namespace; "
                "ACE never converts arrays between libraries"
            )
        return xp
    if found is None:
        if arrays and names:
            raise TypeError(f"`{names[0]}` must be an array, got {type(arrays[0]).__name__}")
        raise TypeError("no array given")
    return found


def library_of(xp: Any) -> str:
    """The library of a namespace: ``array_api_compat.torch`` and ``torch`` are both "torch"."""
    name = getattr(xp, "__name__", type(xp).__name__)
    return name.removeprefix("array_api_compat.").split(".")[0]


def _raise_mixed(present: Sequence[tuple[str, Any]]) -> None:
    """Name the argument that is no array, or the first one from a second library."""
    first: tuple[str, str] | None = None
    for name, array in present:
        try:
            library = library_of(array_api_compat.array_namespace(array))
        except TypeError:
            raise TypeError(f"`{name}` must be an array, got {type(array).__name__}") from None
        if first is None:
            first = (name, library)
        elif library != first[1]:
            raise TypeError(
                f"`{name}` is a {library} array but `{first[0]}` is a {first[1]} array; "
                "ACE never converts arrays between libraries"
            )


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
