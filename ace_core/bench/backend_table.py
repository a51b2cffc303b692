"""The array backends that ace_core knows: one table for ``ace info``, ``ace bench``,
the asv benchmarks and the test fixtures.

Each :class:`Backend` is an array library on one kind of device. It says
whether it is usable here (and why not), its version and devices, which float
dtypes it holds, and it knows how to put NumPy data on its device, bring
results back, wait for queued device work, copy an array in place and
compile a function (``jax.jit`` on JAX, nothing elsewhere). Nothing is
imported until a backend is asked for, so listing the table imports no
framework.

Examples
--------
>>> from ace_core.bench.backend_table import BACKENDS, backend
>>> [b.name for b in BACKENDS]
['numpy', 'array_api_strict', 'torch', 'torch:cuda', 'jax', 'jax:gpu', 'cupy']
>>> backend("torch-cuda").name, backend("torch-cuda").gpu
('torch:cuda', True)
>>> numpy = backend("numpy")
>>> numpy.to_numpy(numpy.asarray([1.0, 2.0], "float32")).tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from .._interop import to_numpy
from .._typing import Array, ArrayNamespace

__all__ = ["Backend", "BACKENDS", "backend", "usable_backends", "library_version"]

_FLOATS = ("float32", "float64", "float16", "bfloat16")


def library_version(module: str, distributions: Sequence[str] = ()) -> str | None:
    """The version of ``module`` without importing it; ``None`` when it is not installed.

    Its ``__version__`` when it is imported already, else the version of its
    distribution: one of ``distributions``, or ``module`` spelled with ``-``.
    """
    version = getattr(sys.modules.get(module), "__version__", None)
    if version is not None:
        return str(version)
    for name in (*distributions, module.replace("_", "-")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message``."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- libraries


class _Library:
    """How one array library does each job; ``gpu`` picks the device kind."""

    module = ""
    distributions: tuple[str, ...] = ()
    namespace_module = ""  # the array-API namespace
    float_dtypes = _FLOATS

    def load(self) -> Any:
        return importlib.import_module(self.module)

    def gpu_problem(self) -> str | None:
        return f"{self.module} has no GPU support"

    def device(self, gpu: bool) -> Any:
        return "cpu"

    def label(self, device: Any) -> str:
        return str(device)

    def devices(self, gpu: bool) -> list[str]:
        return [self.label(self.device(gpu))]

    def details(self, gpu: bool) -> dict[str, Any]:
        return {}

    def dtypes(self, gpu: bool) -> tuple[str, ...]:
        return self.float_dtypes

    def synchronize(self, arrays: tuple[Any, ...], gpu: bool) -> None:
        return None

    def copy_into(self, x: Any, gpu: bool) -> Callable[[], None] | None:
        return None

    def torch_device(self, device: Any, gpu: bool) -> str:
        return self.label(device) if gpu else "cpu"


class _Numpy(_Library):
    module, namespace_module = "numpy", "array_api_compat.numpy"
    float_dtypes = ("float32", "float64", "float16")

    def copy_into(self, x: Any, gpu: bool) -> Callable[[], None]:
        dst = np.array(x, copy=True)
        return lambda: np.copyto(dst, x)


class _Strict(_Library):
    module = namespace_module = "array_api_strict"
    float_dtypes = ("float32", "float64")

    def device(self, gpu: bool) -> Any:
        return self.load().Device("CPU_DEVICE")

    def label(self, device: Any) -> str:
        # array_api_strict.Device('CPU_DEVICE') -> CPU_DEVICE
        return str(device).rsplit("(", 1)[-1].strip("')\"")

    def devices(self, gpu: bool) -> list[str]:
        return [self.label(d) for d in self.load().__array_namespace_info__().devices()]


class _Torch(_Library):
    module, namespace_module = "torch", "array_api_compat.torch"

    def gpu_problem(self) -> str | None:
        torch = self.load()
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return "this torch is built without CUDA"
        return None if torch.cuda.is_available() else "torch sees no CUDA device"

    def device(self, gpu: bool) -> Any:
        torch = self.load()
        return torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")

    def devices(self, gpu: bool) -> list[str]:
        cuda = self.load().cuda
        return [f"cuda:{i} {cuda.get_device_name(i)}" for i in range(cuda.device_count())] if gpu else ["cpu"]

    def details(self, gpu: bool) -> dict[str, Any]:
        torch = self.load()
        if gpu:
            return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
        return {
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "cuda_build": torch.version.cuda,
        }

    def synchronize(self, arrays: tuple[Any, ...], gpu: bool) -> None:
        if gpu:
            self.load().cuda.synchronize()

    def copy_into(self, x: Any, gpu: bool) -> Callable[[], None]:
        dst = x.clone()

        def run() -> None:
            dst.copy_(x)
            self.synchronize((dst,), gpu)

        return run


class _Jax(_Library):
    module, namespace_module = "jax", "jax.numpy"

    def gpu_problem(self) -> str | None:
        jax = self.load()
        try:
            jax.devices("gpu")
        except RuntimeError:
            present = ", ".join(sorted({d.platform for d in jax.devices()}))
            return f"no GPU platform in this jaxlib (platforms: {present})"
        return None

    def device(self, gpu: bool) -> Any:
        return self.load().devices("gpu" if gpu else "cpu")[0]

    def label(self, device: Any) -> str:
        return f"{device.platform}:{device.id}"

    def devices(self, gpu: bool) -> list[str]:
        found = self.load().devices("gpu" if gpu else "cpu")
        return [f"{self.label(d)} {d.device_kind}" if gpu else self.label(d) for d in found]

    def details(self, gpu: bool) -> dict[str, Any]:
        return {} if gpu else {"default_backend": self.load().default_backend()}

    def dtypes(self, gpu: bool) -> tuple[str, ...]:
        # float64 exists only with jax_enable_x64 (else JAX silently makes float32).
        return tuple(d for d in _FLOATS if d != "float64" or self.load().config.jax_enable_x64)

    def synchronize(self, arrays: tuple[Any, ...], gpu: bool) -> None:
        self.load().block_until_ready(arrays)

    def copy_into(self, x: Any, gpu: bool) -> Callable[[], None]:
        # JAX arrays are immutable: a jitted full-size update of a donated buffer
        # writes the copy in place, like np.copyto.
        jax = self.load()
        lax = importlib.import_module("jax.lax")
        put = jax.jit(lambda dst, src: lax.dynamic_update_slice(dst, src, (0,) * src.ndim), donate_argnums=0)
        state = {"dst": jax.block_until_ready(jax.numpy.array(x, copy=True))}
        with warnings.catch_warnings():
            # "Some donated buffers were not usable": no in-place copy on this platform.
            warnings.simplefilter("error")
            state["dst"] = jax.block_until_ready(put(state["dst"], x))

        def run() -> None:
            state["dst"] = jax.block_until_ready(put(state["dst"], x))

        return run

    def torch_device(self, device: Any, gpu: bool) -> str:
        return f"cuda:{device.id}" if gpu else "cpu"


class _Cupy(_Library):
    module, namespace_module = "cupy", "array_api_compat.cupy"
    distributions = ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy")
    float_dtypes = ("float32", "float64", "float16")

    def gpu_problem(self) -> str | None:
        try:
            count = self.load().cuda.runtime.getDeviceCount()
        except Exception as error:  # noqa: BLE001 - any CUDA runtime error means "no usable GPU"
            return f"cupy sees no GPU ({first_line(error)})"
        return None if count > 0 else "cupy sees no GPU"

    def device(self, gpu: bool) -> Any:
        return self.load().cuda.Device()

    def label(self, device: Any) -> str:
        return f"cuda:{device.id}"

    def devices(self, gpu: bool) -> list[str]:
        runtime = self.load().cuda.runtime
        names = [runtime.getDeviceProperties(i).get("name", b"") for i in range(runtime.getDeviceCount())]
        return [f"cuda:{i} {n.decode() if isinstance(n, bytes) else n}".strip() for i, n in enumerate(names)]

    def details(self, gpu: bool) -> dict[str, Any]:
        return {"cuda_runtime": self.load().cuda.runtime.runtimeGetVersion()}

    def synchronize(self, arrays: tuple[Any, ...], gpu: bool) -> None:
        self.load().cuda.get_current_stream().synchronize()

    def copy_into(self, x: Any, gpu: bool) -> Callable[[], None]:
        cupy, dst = self.load(), x.copy()

        def run() -> None:
            cupy.copyto(dst, x)
            self.synchronize((dst,), gpu)

        return run


_LIBRARIES: dict[str, _Library] = {
    "numpy": _Numpy(),
    "array_api_strict": _Strict(),
    "torch": _Torch(),
    "jax": _Jax(),
    "cupy": _Cupy(),
}


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Backend:
    """One array library on one kind of device (its first device of that kind)."""

    name: str  #: ``numpy``, ``array_api_strict``, ``torch``, ``torch:cuda``, ``jax``, ``jax:gpu``, ``cupy``
    library: str  #: the module to import
    gpu: bool  #: whether arrays live on an NVIDIA GPU
    aliases: tuple[str, ...] = ()  #: other names :func:`backend` accepts

    @property
    def _lib(self) -> _Library:
        return _LIBRARIES[self.library]

    def unusable_reason(self) -> str | None:
        """``None`` when usable here, else why not (missing library or device)."""
        return _unusable_reason(self)

    @property
    def usable(self) -> bool:
        return self.unusable_reason() is None

    def version(self) -> str | None:
        """The library's version (``None`` when not installed); imports nothing."""
        return library_version(self.library, self._lib.distributions)

    def namespace(self) -> ArrayNamespace:
        """The array-API namespace (array_api_compat's wrapper where there is one)."""
        return importlib.import_module(self._lib.namespace_module)

    def device(self) -> Any:
        """The device that :meth:`asarray` puts data on."""
        return self._lib.device(self.gpu)

    def device_name(self) -> str:
        """:meth:`device` as a short string: ``cpu``, ``cuda:0``, ``gpu:0``, ``CPU_DEVICE``."""
        return self._lib.label(self.device())

    def devices(self) -> list[str]:
        """Every device of this kind, described (``cuda:0 NVIDIA H100``); empty when not usable."""
        return self._lib.devices(self.gpu) if self.usable else []

    def details(self) -> dict[str, Any]:
        """Extra facts (torch's threads, CUDA versions); empty when not usable."""
        return self._lib.details(self.gpu) if self.usable else {}

    def dtypes(self) -> tuple[str, ...]:
        """The float dtypes (of float32, float64, float16, bfloat16) it holds here."""
        return self._lib.dtypes(self.gpu)

    def dtype_problem(self, dtype: str) -> str | None:
        """Why this backend cannot hold the float dtype ``dtype`` here; ``None`` when it can."""
        if dtype in self.dtypes():
            return None
        hint = " (set jax_enable_x64)" if self.library == "jax" and dtype == "float64" else ""
        return f"{self.name} has no {dtype} here{hint}; it has {', '.join(self.dtypes())}"

    def asarray(self, data: Any, dtype: Any = None, *, copy: bool | None = None) -> Array:
        """``data`` (NumPy or nested lists) as an array of this backend on its device.

        ``dtype`` is a dtype of this namespace or a name such as ``"float32"``
        (``ValueError`` with :meth:`dtype_problem` for a float dtype it lacks);
        ``copy`` is the array API's.
        """
        xp = self.namespace()
        if isinstance(dtype, str):
            problem = self.dtype_problem(dtype) if dtype in _FLOATS else None
            if problem is not None:
                raise ValueError(problem)
            dtype = getattr(xp, dtype)
        return xp.asarray(np.asarray(data), dtype=dtype, device=self.device(), copy=copy)

    def to_numpy(self, x: Array) -> np.ndarray:
        """A host copy of ``x``; bfloat16 comes back as float32."""
        if self.library == "torch" and str(x.dtype) == "torch.bfloat16":
            x = x.float()
        out = to_numpy(x)
        if out.dtype.kind == "V" or str(out.dtype) == "bfloat16":
            return out.astype(np.float32)
        return np.array(out, copy=True)

    def synchronize(self, *arrays: Any) -> None:
        """Wait for the device work that produces ``arrays`` (any nesting; a no-op on the CPU)."""
        self._lib.synchronize(arrays, self.gpu)

    def copy_into(self, x: Array) -> Callable[[], None] | None:
        """A function that copies ``x`` into a buffer made here, in place, and synchronises.

        The buffer is allocated and touched once, now; ``None`` where the
        library has no in-place copy (array_api_strict). JAX copies into a
        donated buffer; where the platform cannot donate, this raises.
        """
        return self._lib.copy_into(x, self.gpu)

    @property
    def has_jit(self) -> bool:
        """Whether :meth:`jit` compiles (JAX)."""
        return self.library == "jax"

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``jax.jit(fn)`` on JAX; ``fn`` itself elsewhere."""
        return self._lib.load().jit(fn) if self.has_jit else fn

    def torch_device(self) -> str:
        """The torch device on the same hardware (``cpu``, ``cuda:0``), e.g. for a CTC reference."""
        return self._lib.torch_device(self.device(), self.gpu)

    def info(self) -> dict[str, Any]:
        """A JSON-ready report: name, library, usable, version, devices, reason, details."""
        return {
            "name": self.name,
            "library": self.library,
            "usable": self.usable,
            "version": self.version(),
            "devices": self.devices(),
            "reason": self.unusable_reason(),
            "details": self.details(),
        }


BACKENDS: tuple[Backend, ...] = (
    Backend("numpy", "numpy", False, ("np",)),
    Backend("array_api_strict", "array_api_strict", False, ("strict", "array-api-strict")),
    Backend("torch", "torch", False, ("torch:cpu",)),
    Backend("torch:cuda", "torch", True, ("torch-cuda", "torch_cuda")),
    Backend("jax", "jax", False, ("jax:cpu",)),
    Backend("jax:gpu", "jax", True, ("jax-gpu", "jax_gpu", "jax:cuda")),
    Backend("cupy", "cupy", True),
)


@cache
def _unusable_reason(entry: Backend) -> str | None:
    if importlib.util.find_spec(entry.library) is None:
        return f"{entry.library} is not installed"
    try:
        importlib.import_module(entry.library)
    except Exception as error:  # noqa: BLE001 - a broken install is reported, not raised
        return f"{entry.library} fails to import: {first_line(error)}"
    return entry._lib.gpu_problem() if entry.gpu else None


def backend(name: str) -> Backend:
    """The table entry called ``name`` or one of its aliases (any case, spaces ignored).

    Raises ``ValueError`` listing the names for an unknown name.
    """
    key = name.strip().lower()
    for entry in BACKENDS:
        if key == entry.name or key in entry.aliases:
            return entry
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(b.name for b in BACKENDS)}")


def usable_backends(*, gpu: bool | None = None) -> list[Backend]:
    """The usable entries, optionally only GPU (``gpu=True``) or only CPU ones."""
    return [b for b in BACKENDS if (gpu is None or b.gpu == gpu) and b.usable]
