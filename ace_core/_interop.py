"""Moving arrays between libraries: zero-copy views and host copies, in one place.

Every crossing of a library boundary goes through here: the fast paths that run
another library's kernel on the caller's memory (torch and eager JAX CPU arrays
on the NumPy kernel, torch CUDA tensors on the CuPy kernels), the CuPy adapter
(DLPack GPU arrays from torch or JAX), and results that must leave the device
anyway (decoded labels, metrics). Views share the caller's memory; only
:func:`to_numpy` copies. A library is imported only when one of its arrays
arrives, so importing this module imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from ._contract import ACEResiduals
from ._typing import Array

__all__ = ["cupy_view", "map_arrays", "numpy_view", "to_numpy", "torch_from_cupy"]

#: DLPack device types of memory a CUDA kernel can read: kDLCUDA, kDLCUDAHost.
_DLPACK_CUDA = (2, 3)


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


def numpy_view(x: Any) -> Any:
    """A NumPy view of the memory of a CPU array (NumPy, torch, JAX), no copy; other values as they are.

    A JAX array's view is read-only (its buffer is immutable); a torch tensor's
    is detached from autograd, so the caller decides when this is allowed.
    """
    if array_api_compat.is_torch_array(x):
        return x.detach().numpy()
    if array_api_compat.is_jax_array(x):
        return np.asarray(x)
    return x


def cupy_view(x: Any, *, bfloat16_bits: bool = False) -> Any:
    """``x`` as a CuPy array: CuPy arrays as they are, DLPack GPU arrays (torch, JAX) as zero-copy views.

    ``None``, Python ints and sequences (lengths) pass through unchanged. CuPy has
    no bfloat16: with ``bfloat16_bits=True`` a torch bfloat16 tensor is viewed as
    its int16 bit patterns. Host arrays raise ``TypeError``: a silent
    host-to-device copy is what ACE never does.
    """
    if x is None or isinstance(x, (int, list, tuple)):
        return x
    import cupy

    if isinstance(x, cupy.ndarray):
        return x
    if not hasattr(x, "__dlpack_device__"):
        raise TypeError(f"expected a CuPy array or a DLPack GPU array, got {type(x).__name__}")
    device_type, _ = x.__dlpack_device__()
    if device_type not in _DLPACK_CUDA:
        raise TypeError(
            f"{type(x).__name__} lives on the host (DLPack device {device_type}); move it to the GPU first"
        )
    if bfloat16_bits and array_api_compat.is_torch_array(x) and str(x.dtype) == "torch.bfloat16":
        import torch

        x = x.view(torch.int16)
    return cupy.from_dlpack(x)


def torch_from_cupy(x: Any, *, bfloat16_bits: bool = False) -> Any:
    """A torch view of a CuPy array (DLPack, no copy); int16 bit patterns back as bfloat16 if asked."""
    import torch

    tensor = torch.from_dlpack(x)
    return tensor.view(torch.bfloat16) if bfloat16_bits else tensor


def map_arrays(convert: Callable[[Any], Any], value: Any) -> Any:
    """``convert`` applied to ``value``, or to each field of an :class:`ACEResiduals`."""
    if isinstance(value, ACEResiduals):
        return value._make(map(convert, value))
    return convert(value)
