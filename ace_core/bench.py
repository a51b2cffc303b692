"""The benchmark protocol of SPEC §5, importable by the ``ace`` command and by asv.

For each backend (an array library on a device) and each number of classes C,
on the seeded synthetic batch of :mod:`ace_core.reference.synthetic`
(B = 64, T = 144, target lengths uniform in 10..25, blank 0), it measures in
the same run and on the same device:

* ``ace``: :func:`ace_core.ace_loss_and_grad` (forward and closed-form
  backward, ``reduction="mean"``) on the scores and the counts of the targets;
  the counts are built once, outside the timed region. On JAX the call is
  wrapped in :func:`jax.jit` (it falls back to eager, with a note, if tracing
  fails).
* ``ctc``: torch's CTC, ``F.ctc_loss(F.log_softmax(scores), ...,
  reduction="mean")`` forward and backward (``torch.autograd.grad``) on the
  same values, on torch's CPU for CPU backends and on CUDA for GPU backends;
  for float16/bfloat16 the log-softmax is taken in float32, as CTC needs.
* ``copy``: a device copy of the scores in the backend's own namespace, both
  allocating (``xp.asarray(x, copy=True)``) and, where the library has an
  in-place copy (NumPy, torch, CuPy), into a touched buffer. The faster median
  of the two is the copy that sets the memory floor.

The memory floor: ACE must read the scores for the forward, read them again
for the backward and write the gradient, ``3·B·T·C·itemsize`` bytes; a copy
moves two passes, so ``floor = 3/2 · copy`` and the *fraction of the floor*
reached is ``floor / ace``.

Timing: wall clock (:func:`time.perf_counter`); GPU work is synchronised
inside the timed region (``torch.cuda.synchronize``, the CuPy stream,
``jax.block_until_ready``); every callable is called once untimed first (it
touches the buffers, compiles under ``jax.jit``, warms caches); then
every call is timed on its own, at least ``repeat`` calls and until the timed
calls add up to ``min_time_s``, and the median call is quoted. Nothing is
pinned unless asked (``threads``): thread counts, the transparent-huge-page
mode and the machine are recorded in :func:`environment_header`.

Frameworks are imported lazily, inside the functions that need them, and only
when installed, so ``import ace_core.bench`` imports NumPy alone.

Examples
--------
In an asv benchmark::

    from ace_core.bench import prepare_case

    class TimeACE:
        params = (["numpy", "torch"], [37, 7357])

        def setup(self, backend, classes):
            self.case = prepare_case(backend, classes)
            self.case.ace()  # warm-up

        def time_ace_loss_and_grad(self, backend, classes):
            self.case.ace()
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND_EXCLUDED",
    "GPU_BACKENDS",
    "DEFAULT_BATCH",
    "DEFAULT_STEPS",
    "DEFAULT_CLASSES",
    "DEFAULT_DTYPE",
    "DEFAULT_REPEAT",
    "DEFAULT_MIN_TIME_S",
    "DTYPES",
    "BenchError",
    "BackendStatus",
    "BenchCase",
    "BenchRecord",
    "Timing",
    "canonical_backend",
    "probe_backend",
    "probe_backends",
    "select_backends",
    "prepare_case",
    "measure",
    "run_case",
    "run_protocol",
    "environment_header",
    "target_length_range",
]

#: Every backend the protocol knows, in report order. ``torch`` and ``jax`` are their CPU devices.
BACKENDS = ("numpy", "array_api_strict", "torch", "torch:cuda", "jax", "jax:gpu", "cupy")
#: Backends left out of the default selection (array_api_strict is a correctness namespace, slow).
DEFAULT_BACKEND_EXCLUDED = frozenset({"array_api_strict"})
#: Backends whose arrays live on a GPU.
GPU_BACKENDS = frozenset({"torch:cuda", "jax:gpu", "cupy"})
#: Other spellings accepted by :func:`canonical_backend`.
_ALIASES = {
    "np": "numpy",
    "strict": "array_api_strict",
    "array-api-strict": "array_api_strict",
    "torch:cpu": "torch",
    "torch-cuda": "torch:cuda",
    "jax:cpu": "jax",
    "jax:cuda": "jax:gpu",
    "jax-gpu": "jax:gpu",
}
_LIBRARY = {
    "numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "torch": "torch",
    "torch:cuda": "torch",
    "jax": "jax",
    "jax:gpu": "jax",
    "cupy": "cupy",
}
#: Distribution names, for versions read without importing.
_DISTRIBUTION = {"array_api_strict": "array-api-strict"}

DEFAULT_BATCH = 64
DEFAULT_STEPS = 144
DEFAULT_CLASSES = (37, 7357)
DEFAULT_DTYPE = "float32"
#: Samples per measurement; sized so that the default run (numpy, torch, jax on this
#: project's 2-core reference machine) takes 1-2 minutes.
DEFAULT_REPEAT = 7
#: Fast calls are timed until the timed calls add up to this long.
DEFAULT_MIN_TIME_S = 0.2
#: Accepted ``dtype`` names; float16/bfloat16 only on GPU backends.
DTYPES = ("float32", "float64", "float16", "bfloat16")
_HALF_DTYPES = frozenset({"float16", "bfloat16"})
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


class BenchError(ValueError):
    """A benchmark request that cannot be run (unknown or unusable backend, bad dtype)."""


class _Skip(Exception):
    """A (backend, dtype) pair that the backend cannot represent."""


class _Unavailable(Exception):
    """A backend that is installed but has no device here; the message says why."""


# --------------------------------------------------------------------------- backends


@dataclass
class BackendStatus:
    """Whether a backend can run here, and what it runs on.

    Attributes
    ----------
    name : str
        Canonical backend name (an entry of :data:`BACKENDS`).
    library : str
        The Python package behind it.
    usable : bool
        Installed, importable and with a device.
    version : str or None
        The package version (read from its metadata when the import fails).
    devices : list of str
        Device descriptions (empty when not usable).
    reason : str or None
        Why it is not usable.
    details : dict
        Extra facts (thread counts, CUDA version, ...).
    """

    name: str
    library: str
    usable: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def canonical_backend(name: str) -> str:
    """The canonical spelling of a backend name (``torch:cpu`` -> ``torch``).

    Raises
    ------
    BenchError
        For an unknown name.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _LIBRARY:
        raise BenchError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return key


def _distribution_version(library: str) -> str | None:
    try:
        return importlib.metadata.version(_DISTRIBUTION.get(library, library))
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _import(library: str) -> Any:
    """Import ``library`` if it is installed; ``None`` if it is not (never a partial import)."""
    if importlib.util.find_spec(library) is None:
        return None
    return importlib.import_module(library)


def probe_backend(name: str) -> BackendStatus:
    """Check one backend: installed, importable, with a device. Imports only that library.

    Parameters
    ----------
    name : str
        A backend name or alias (see :data:`BACKENDS`).

    Returns
    -------
    BackendStatus
    """
    name = canonical_backend(name)
    library = _LIBRARY[name]
    status = BackendStatus(name=name, library=library, usable=False)
    try:
        module = _import(library)
    except Exception as error:  # a broken install must not break `ace info`
        status.version = _distribution_version(library)
        status.reason = f"import failed: {_first_line(error)}"
        return status
    if module is None:
        status.reason = "not installed"
        return status
    status.version = str(getattr(module, "__version__", None) or _distribution_version(library))
    try:
        status.devices, status.details = _PROBES[name](module)
    except _Unavailable as error:
        status.reason = str(error)
        return status
    except Exception as error:  # no device, no driver, ...
        status.reason = _first_line(error)
        return status
    status.usable = bool(status.devices)
    if not status.usable and status.reason is None:
        status.reason = "no device"
    return status


def _probe_numpy(np_: Any) -> tuple[list[str], dict[str, Any]]:
    return ["cpu"], {}


def _probe_strict(strict: Any) -> tuple[list[str], dict[str, Any]]:
    devices = strict.__array_namespace_info__().devices()
    return [_strict_device_name(d) for d in devices], {}


def _strict_device_name(device: Any) -> str:
    """``array_api_strict.Device('CPU_DEVICE')`` -> ``CPU_DEVICE``."""
    return str(device).rsplit("(", 1)[-1].strip("')\"")


def _probe_torch(torch: Any) -> tuple[list[str], dict[str, Any]]:
    details = {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "cuda_build": torch.version.cuda,
    }
    return ["cpu"], details


def _probe_torch_cuda(torch: Any) -> tuple[list[str], dict[str, Any]]:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise _Unavailable("this torch is built without CUDA")
    if not torch.cuda.is_available():
        raise _Unavailable("no CUDA device available")
    devices = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return devices, {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def _jax_devices(jax: Any, platform_name: str) -> list[Any]:
    return list(jax.devices(platform_name))


def _probe_jax(jax: Any) -> tuple[list[str], dict[str, Any]]:
    devices = _jax_devices(jax, "cpu")
    return [f"{d.platform}:{d.id}" for d in devices], {"default_backend": jax.default_backend()}


def _probe_jax_gpu(jax: Any) -> tuple[list[str], dict[str, Any]]:
    try:
        devices = _jax_devices(jax, "gpu")
    except RuntimeError as error:
        present = ", ".join(sorted({d.platform for d in jax.devices()}))
        raise _Unavailable(f"no GPU platform in this jaxlib (platforms: {present})") from error
    return [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in devices], {}


def _probe_cupy(cupy: Any) -> tuple[list[str], dict[str, Any]]:
    count = cupy.cuda.runtime.getDeviceCount()
    devices = []
    for i in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        label = props.get("name", b"")
        devices.append(f"cuda:{i} {label.decode() if isinstance(label, bytes) else label}".strip())
    return devices, {"cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}


_PROBES: dict[str, Callable[[Any], tuple[list[str], dict[str, Any]]]] = {
    "numpy": _probe_numpy,
    "array_api_strict": _probe_strict,
    "torch": _probe_torch,
    "torch:cuda": _probe_torch_cuda,
    "jax": _probe_jax,
    "jax:gpu": _probe_jax_gpu,
    "cupy": _probe_cupy,
}


def probe_backends(names: Sequence[str] = BACKENDS) -> list[BackendStatus]:
    """:func:`probe_backend` for each name, in order."""
    return [probe_backend(n) for n in names]


def select_backends(names: str | Sequence[str] | None = None, *, dtype: str = DEFAULT_DTYPE) -> list[str]:
    """The backends to benchmark.

    Parameters
    ----------
    names : str, sequence of str or None
        Comma-separated string or list of backend names; ``None`` selects
        every usable backend but those in :data:`DEFAULT_BACKEND_EXCLUDED`
        (and, for float16/bfloat16, only GPU backends).
    dtype : str
        One of :data:`DTYPES`.

    Returns
    -------
    list of str
        Canonical names, without duplicates.

    Raises
    ------
    BenchError
        An unknown name, a named backend that is not usable, a half dtype on
        a CPU backend, or nothing to run.
    """
    _check_dtype(dtype)
    half = dtype in _HALF_DTYPES
    if names is None:
        statuses = probe_backends([n for n in BACKENDS if n not in DEFAULT_BACKEND_EXCLUDED])
        chosen = [s.name for s in statuses if s.usable and (not half or s.name in GPU_BACKENDS)]
        if not chosen:
            raise BenchError(
                f"no usable backend for dtype {dtype}"
                + (" (float16/bfloat16 need a GPU backend)" if half else "")
            )
        return chosen
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    chosen = []
    for raw in names:
        name = canonical_backend(raw)
        if name in chosen:
            continue
        if half and name not in GPU_BACKENDS:
            raise BenchError(f"dtype {dtype} is benchmarked on GPU backends only, not on {name}")
        status = probe_backend(name)
        if not status.usable:
            raise BenchError(f"backend {name} is not usable here: {status.reason}")
        chosen.append(name)
    if not chosen:
        raise BenchError("no backend given")
    return chosen


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise BenchError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")


# --------------------------------------------------------------------------- runtimes


@dataclass
class _Runtime:
    """How to put arrays on a backend's device, copy them and wait for them."""

    name: str
    library: str
    device: str
    module: Any
    to_device: Callable[[np.ndarray, str | None], Any]  # (host array, dtype name or None)
    sync: Callable[[Any], None]
    copy_into: Callable[[Any], Callable[[], None]] | None  # scores -> timed in-place copy
    ctc_device: str  # torch device of the CTC reference
    jit: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None


def _no_sync(result: Any) -> None:
    return None


def _numpy_runtime(name: str) -> _Runtime:
    def to_device(host: np.ndarray, dtype: str | None) -> Any:
        if dtype is None:
            return host
        if dtype in _HALF_DTYPES:
            raise _Skip(f"{dtype} is for GPU backends")
        return np.ascontiguousarray(host, dtype=np.dtype(dtype))

    def copy_into(x: Any) -> Callable[[], None]:
        dst = np.array(x, copy=True)

        def run() -> None:
            np.copyto(dst, x)

        return run

    return _Runtime(name, "numpy", "cpu", np, to_device, _no_sync, copy_into, "cpu")


def _strict_runtime(name: str) -> _Runtime:
    strict = importlib.import_module("array_api_strict")

    def to_device(host: np.ndarray, dtype: str | None) -> Any:
        if dtype in _HALF_DTYPES:
            raise _Skip(f"array_api_strict has no {dtype}")
        return strict.asarray(host if dtype is None else host.astype(dtype))

    device = _strict_device_name(strict.__array_namespace_info__().default_device())
    return _Runtime(name, "array_api_strict", device, strict, to_device, _no_sync, None, "cpu")


def _torch_runtime(name: str) -> _Runtime:
    torch = importlib.import_module("torch")
    gpu = name == "torch:cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")

    def to_device(host: np.ndarray, dtype: str | None) -> Any:
        tensor = torch.from_numpy(np.ascontiguousarray(host))
        tensor = tensor.to(device=device, dtype=None if dtype is None else getattr(torch, dtype))
        if gpu:
            torch.cuda.synchronize(device)
        return tensor

    def sync(result: Any) -> None:
        if gpu:
            torch.cuda.synchronize(device)

    def copy_into(x: Any) -> Callable[[], None]:
        dst = x.clone()

        def run() -> None:
            dst.copy_(x)
            sync(dst)

        return run

    return _Runtime(name, "torch", str(device), torch, to_device, sync, copy_into, str(device))


def _jax_runtime(name: str) -> _Runtime:
    jax = importlib.import_module("jax")
    gpu = name == "jax:gpu"
    dev = _jax_devices(jax, "gpu" if gpu else "cpu")[0]
    jnp = importlib.import_module("jax.numpy")

    def to_device(host: np.ndarray, dtype: str | None) -> Any:
        if dtype is None:
            if host.dtype.kind in "iu" and not jax.config.jax_enable_x64:
                host = host.astype(np.int32)  # what jax would do, without its warning
            return jax.block_until_ready(jax.device_put(host, dev))
        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise _Skip("float64 needs jax_enable_x64")
        array = jax.device_put(host, dev).astype(getattr(jnp, dtype))
        return jax.block_until_ready(array)

    def sync(result: Any) -> None:
        jax.block_until_ready(result)

    return _Runtime(
        name, "jax", f"{dev.platform}:{dev.id}", jax, to_device, sync, None, "cuda" if gpu else "cpu", jax.jit
    )


def _cupy_runtime(name: str) -> _Runtime:
    cupy = importlib.import_module("cupy")
    device_id = cupy.cuda.runtime.getDevice()

    def to_device(host: np.ndarray, dtype: str | None) -> Any:
        array = cupy.asarray(host)
        if dtype is not None:
            try:
                array = array.astype(np.dtype(dtype) if dtype != "bfloat16" else "bfloat16")
            except (TypeError, ValueError) as error:
                raise _Skip(f"cupy cannot hold {dtype}: {_first_line(error)}") from error
        cupy.cuda.get_current_stream().synchronize()
        return array

    def sync(result: Any) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def copy_into(x: Any) -> Callable[[], None]:
        dst = x.copy()

        def run() -> None:
            cupy.copyto(dst, x)
            sync(dst)

        return run

    return _Runtime(name, "cupy", f"cuda:{device_id}", cupy, to_device, sync, copy_into, f"cuda:{device_id}")


_RUNTIMES: dict[str, Callable[[str], _Runtime]] = {
    "numpy": _numpy_runtime,
    "array_api_strict": _strict_runtime,
    "torch": _torch_runtime,
    "torch:cuda": _torch_runtime,
    "jax": _jax_runtime,
    "jax:gpu": _jax_runtime,
    "cupy": _cupy_runtime,
}


# --------------------------------------------------------------------------- cases


@dataclass
class BenchCase:
    """The timed callables of one (backend, C, dtype) case, with inputs on the device.

    Each callable does one complete, synchronised operation and returns
    ``None``; call each once untimed before timing it.

    Attributes
    ----------
    backend, device, dtype : str
    batch, steps, classes, itemsize : int
    ace : callable
        ``ace_core.ace_loss_and_grad(scores, counts)`` (jitted on JAX).
    ctc : callable or None
        torch's CTC forward+backward on the same values; ``None`` without torch.
    copy_alloc : callable
        ``xp.asarray(scores, copy=True)``.
    copy_into : callable or None
        Copy into a touched buffer of the same shape (NumPy, torch, CuPy).
    ace_value, ctc_value : callable
        The scalar losses as Python floats (untimed; also serve as warm-up).
    jit : bool or None
        Whether ``ace`` runs under ``jax.jit`` (``None`` off JAX).
    ctc_device : str or None
    notes : list of str
    """

    backend: str
    device: str
    dtype: str
    batch: int
    steps: int
    classes: int
    itemsize: int
    ace: Callable[[], None]
    ctc: Callable[[], None] | None
    copy_alloc: Callable[[], None]
    copy_into: Callable[[], None] | None
    ace_value: Callable[[], float]
    ctc_value: Callable[[], float] | None
    jit: bool | None
    ctc_device: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of the scores array, ``B·T·C·itemsize``."""
        return self.batch * self.steps * self.classes * self.itemsize


def target_length_range(steps: int) -> tuple[int, int]:
    """The protocol's target lengths, 10..25, shrunk for short inputs.

    CTC needs up to ``2·L - 1`` steps for a label of length L (a blank between
    repeats), so lengths are capped at ``(T + 1) // 2``; the protocol's
    T = 144 keeps the full 10..25.

    Parameters
    ----------
    steps : int
        T.

    Returns
    -------
    (int, int)
        Inclusive ``(min_length, max_length)``.
    """
    from ace_core.reference.synthetic import MAX_TARGET_LENGTH, MIN_TARGET_LENGTH

    high = max(1, min(MAX_TARGET_LENGTH, (steps + 1) // 2))
    return min(MIN_TARGET_LENGTH, high), high


def _synthetic(batch: int, steps: int, classes: int, seed: int) -> Any:
    from ace_core.reference.synthetic import synthetic_batch

    low, high = target_length_range(steps)
    return synthetic_batch(batch, steps, classes, min_length=low, max_length=high, seed=seed)


def _torch_ctc(data: Any, device_name: str, dtype: str) -> tuple[Callable[[], None], Callable[[], float]]:
    """torch's CTC (log_softmax + ctc_loss, mean, forward and backward) on ``device_name``."""
    torch = importlib.import_module("torch")
    functional = importlib.import_module("torch.nn.functional")
    device = torch.device(device_name)
    gpu = device.type == "cuda"
    scores = torch.from_numpy(data.logits).to(device=device, dtype=getattr(torch, dtype))
    scores.requires_grad_(True)
    targets = torch.from_numpy(data.targets).to(device)
    target_lengths = torch.from_numpy(data.target_lengths).to(device)
    input_lengths = torch.from_numpy(data.input_lengths).to(device)
    # CTC runs in float32 (its CUDA kernels take float32/float64 only).
    lsm_dtype = torch.float32 if dtype in _HALF_DTYPES else None

    def loss() -> Any:
        log_probs = functional.log_softmax(scores, dim=-1, dtype=lsm_dtype).transpose(0, 1)  # (T, B, C)
        return functional.ctc_loss(
            log_probs, targets, input_lengths, target_lengths, blank=data.blank, reduction="mean"
        )

    def run() -> None:
        (grad,) = torch.autograd.grad(loss(), scores)
        if gpu:
            torch.cuda.synchronize(device)

    def value() -> float:
        with torch.no_grad():
            return float(loss())

    if gpu:
        torch.cuda.synchronize(device)
    return run, value


def prepare_case(
    backend: str,
    classes: int,
    *,
    batch: int = DEFAULT_BATCH,
    steps: int = DEFAULT_STEPS,
    dtype: str = DEFAULT_DTYPE,
    seed: int = 0,
    jit: bool = True,
    with_ctc: bool = True,
    data: Any = None,
) -> BenchCase:
    """Put the synthetic batch on ``backend`` and build the timed callables.

    Parameters
    ----------
    backend : str
        A backend name (see :data:`BACKENDS`); it must be usable.
    classes, batch, steps : int
        C, B and T.
    dtype : str
        Scores dtype, one of :data:`DTYPES`.
    seed : int
        Seed of :func:`ace_core.reference.synthetic.synthetic_batch`.
    jit : bool
        Wrap the ACE call in ``jax.jit`` on JAX backends.
    with_ctc : bool
        Build the torch CTC reference when torch is installed.
    data : SyntheticBatch, optional
        Reuse a batch already generated (must match ``batch``, ``steps``,
        ``classes``).

    Returns
    -------
    BenchCase

    Raises
    ------
    BenchError
        Unknown dtype or backend, or a dtype the backend cannot hold.
    """
    import ace_core

    _check_dtype(dtype)
    name = canonical_backend(backend)
    if data is None:
        data = _synthetic(batch, steps, classes, seed)
    if data.logits.shape != (batch, steps, classes):
        raise BenchError(f"`data` has shape {data.logits.shape}, expected {(batch, steps, classes)}")
    runtime = _RUNTIMES[name](name)
    try:
        scores = runtime.to_device(data.logits, dtype)
    except _Skip as skip:
        raise BenchError(f"{name} cannot run dtype {dtype}: {skip}") from None
    targets = runtime.to_device(data.targets, None)
    target_lengths = runtime.to_device(data.target_lengths, None)
    counts = ace_core.counts_from_targets(
        targets, target_lengths, num_classes=classes, input_lengths=steps, blank=data.blank
    )
    runtime.sync(counts)
    del targets, target_lengths

    notes: list[str] = []
    call = ace_core.ace_loss_and_grad
    used_jit: bool | None = None
    if runtime.jit is not None:
        used_jit = False
        if jit:
            jitted = runtime.jit(ace_core.ace_loss_and_grad)
            try:
                runtime.sync(jitted(scores, counts))  # compiles; doubles as a warm-up
            except Exception as error:  # a tracer error: the call is not jittable
                notes.append(f"jax.jit failed ({_first_line(error)}); timed eagerly")
            else:
                call, used_jit = jitted, True

    sync = runtime.sync

    def ace() -> None:
        sync(call(scores, counts))

    def ace_value() -> float:
        loss, _ = call(scores, counts)
        return float(np.asarray(_host(loss)))

    xp = _namespace(scores)

    def copy_alloc() -> None:
        sync(xp.asarray(scores, copy=True))

    copy_into = runtime.copy_into(scores) if runtime.copy_into is not None else None

    ctc = ctc_value = None
    ctc_device = None
    if with_ctc and importlib.util.find_spec("torch") is not None:
        ctc, ctc_value = _torch_ctc(data, runtime.ctc_device, dtype)
        ctc_device = runtime.ctc_device
    elif with_ctc:
        notes.append("torch is not installed: no CTC reference")

    return BenchCase(
        backend=name,
        device=runtime.device,
        dtype=dtype,
        batch=batch,
        steps=steps,
        classes=classes,
        itemsize=_ITEMSIZE[dtype],
        ace=ace,
        ctc=ctc,
        copy_alloc=copy_alloc,
        copy_into=copy_into,
        ace_value=ace_value,
        ctc_value=ctc_value,
        jit=used_jit,
        ctc_device=ctc_device,
        notes=notes,
    )


def _namespace(x: Any) -> Any:
    import array_api_compat

    return array_api_compat.array_namespace(x)


def _host(x: Any) -> Any:
    from ace_core._namespace import to_numpy

    return to_numpy(x)


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """The timed calls of one measurement.

    Attributes
    ----------
    samples : list of float
        Seconds of each timed call, in order.
    """

    samples: list[float]

    @property
    def calls(self) -> int:
        """Number of timed calls."""
        return len(self.samples)

    @property
    def median(self) -> float:
        """Median seconds per call (the quoted figure)."""
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        """Fastest call, seconds."""
        return min(self.samples)


def measure(
    fn: Callable[[], None],
    *,
    repeat: int = DEFAULT_REPEAT,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    warmup: bool = True,
    max_calls: int = 100_000,
) -> Timing:
    """Time ``fn`` (which must synchronise its own device work) call by call.

    Each call is timed on its own and the median is quoted: on a small shared
    machine a few calls can stall for a scheduler quantum (several ms), and a
    per-call median ignores them where a mean over a batch of calls would not.

    Parameters
    ----------
    fn : callable
        One complete operation; its result is dropped.
    repeat : int
        At least this many timed calls (at least 1).
    min_time_s : float
        Keep timing calls until they add up to this long (so that fast calls
        get many samples).
    warmup : bool
        Make one untimed call first (skip it if ``fn`` was already called).
    max_calls : int
        Upper bound on the timed calls.

    Returns
    -------
    Timing
    """
    if repeat < 1:
        raise ValueError(f"`repeat` must be at least 1, got {repeat}")
    timer = time.perf_counter
    samples: list[float] = []
    total = 0.0
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if warmup:
            fn()
        while len(samples) < max_calls and (len(samples) < repeat or total < min_time_s):
            start = timer()
            fn()
            elapsed = timer() - start
            samples.append(elapsed)
            total += elapsed
    finally:
        if was_enabled:
            gc.enable()
    return Timing(samples=samples)


# --------------------------------------------------------------------------- records


@dataclass
class BenchRecord:
    """One row of the protocol: a backend at one C and dtype. Times in milliseconds.

    Attributes
    ----------
    backend, device, dtype : str
    classes, batch, steps, itemsize, repeat : int
    ace_ms, ace_min_ms : float
        Median and fastest ``ace_loss_and_grad`` (forward + backward).
    ace_calls : int
        Timed ACE calls.
    jit : bool or None
        ACE under ``jax.jit`` (``None`` off JAX).
    ctc_ms, ctc_min_ms : float or None
        torch CTC (log_softmax + ctc_loss + backward) on ``ctc_device``.
    ace_over_ctc : float or None
        ``ace_ms / ctc_ms``.
    copy_ms : float
        The copy that sets the floor: the faster of ``copy_alloc_ms`` and ``copy_into_ms``.
    copy_alloc_ms, copy_into_ms : float or None
        Allocating copy ``xp.asarray(x, copy=True)``; copy into a touched buffer.
    bytes_moved : int
        The ACE floor traffic, ``3·B·T·C·itemsize``.
    floor_ms : float
        ``1.5 · copy_ms``, the time of 3 passes at copy speed.
    floor_fraction : float
        ``floor_ms / ace_ms``; 1 means ACE runs at copy bandwidth.
    ace_gbps, copy_gbps : float
        ``bytes_moved / ace`` and ``2·B·T·C·itemsize / copy``, in GB/s (1e9).
    ace_loss, ctc_loss : float or None
        The losses (a sanity check that both ran on the same data).
    torch_threads : int or None
    notes : list of str
    error : str or None
        Set when the case failed; the times are then ``nan``.
    """

    backend: str
    device: str
    classes: int
    dtype: str
    batch: int
    steps: int
    itemsize: int
    repeat: int
    ace_ms: float = math.nan
    ace_min_ms: float = math.nan
    ace_calls: int = 0
    jit: bool | None = None
    ctc_ms: float | None = None
    ctc_min_ms: float | None = None
    ctc_device: str | None = None
    ace_over_ctc: float | None = None
    copy_ms: float = math.nan
    copy_alloc_ms: float = math.nan
    copy_into_ms: float | None = None
    bytes_moved: int = 0
    floor_ms: float = math.nan
    floor_fraction: float = math.nan
    ace_gbps: float = math.nan
    copy_gbps: float = math.nan
    ace_loss: float | None = None
    ctc_loss: float | None = None
    torch_threads: int | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``nan`` becomes ``None``)."""
        out = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def run_case(
    case: BenchCase,
    *,
    repeat: int = DEFAULT_REPEAT,
    min_time_s: float = DEFAULT_MIN_TIME_S,
) -> BenchRecord:
    """Measure a prepared case by the protocol and derive the floor figures.

    Parameters
    ----------
    case : BenchCase
        From :func:`prepare_case`.
    repeat, min_time_s
        As in :func:`measure`.

    Returns
    -------
    BenchRecord
    """
    record = BenchRecord(
        backend=case.backend,
        device=case.device,
        classes=case.classes,
        dtype=case.dtype,
        batch=case.batch,
        steps=case.steps,
        itemsize=case.itemsize,
        repeat=repeat,
        jit=case.jit,
        ctc_device=case.ctc_device,
        notes=list(case.notes),
    )
    ms = 1e3
    # The value calls are the untimed warm-up calls.
    record.ace_loss = case.ace_value()
    ace = measure(case.ace, repeat=repeat, min_time_s=min_time_s, warmup=False)
    record.ace_ms, record.ace_min_ms, record.ace_calls = ace.median * ms, ace.min * ms, ace.calls
    if case.ctc is not None and case.ctc_value is not None:
        record.ctc_loss = case.ctc_value()
        ctc = measure(case.ctc, repeat=repeat, min_time_s=min_time_s)
        record.ctc_ms, record.ctc_min_ms = ctc.median * ms, ctc.min * ms
        record.ace_over_ctc = record.ace_ms / record.ctc_ms
    record.copy_alloc_ms = measure(case.copy_alloc, repeat=repeat, min_time_s=min_time_s).median * ms
    copies = [record.copy_alloc_ms]
    if case.copy_into is not None:
        record.copy_into_ms = measure(case.copy_into, repeat=repeat, min_time_s=min_time_s).median * ms
        copies.append(record.copy_into_ms)
    record.copy_ms = min(copies)
    record.bytes_moved = 3 * case.nbytes
    record.floor_ms = 1.5 * record.copy_ms
    record.floor_fraction = record.floor_ms / record.ace_ms
    record.ace_gbps = record.bytes_moved / (record.ace_ms / ms) / 1e9
    record.copy_gbps = 2 * case.nbytes / (record.copy_ms / ms) / 1e9
    record.torch_threads = _torch_threads()
    return record


def run_protocol(
    backends: str | Sequence[str] | None = None,
    *,
    classes: Sequence[int] = DEFAULT_CLASSES,
    batch: int = DEFAULT_BATCH,
    steps: int = DEFAULT_STEPS,
    dtype: str = DEFAULT_DTYPE,
    repeat: int = DEFAULT_REPEAT,
    seed: int = 0,
    jit: bool = True,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchRecord]:
    """Run the protocol for every (C, backend) pair; a failing case is recorded, not raised.

    Parameters
    ----------
    backends : str, sequence of str or None
        As in :func:`select_backends` (``None``: every usable default backend).
    classes : sequence of int
        The values of C; each batch is generated once and shared by the backends.
    batch, steps, dtype, repeat, seed, jit, min_time_s
        As in :func:`prepare_case` and :func:`measure`.
    threads : int, optional
        Set torch's intra-op threads (``torch.set_num_threads``) for the run
        and restore them after; ``None`` leaves torch's default.
    progress : callable, optional
        Called with a line such as ``"[3/6] torch C=7357 float32 ..."`` before
        each case and a summary after it.

    Returns
    -------
    list of BenchRecord
        In order C, then backend; a failed case has ``error`` set.

    Raises
    ------
    BenchError
        When the selection itself is invalid (see :func:`select_backends`).
    """
    classes = [int(c) for c in classes]
    if not classes or any(c < 2 for c in classes):
        raise BenchError(f"`classes` must be integers >= 2, got {classes}")
    for label, value in (("batch", batch), ("steps", steps), ("repeat", repeat)):
        if value < 1:
            raise BenchError(f"`{label}` must be at least 1, got {value}")
    if seed < 0:
        raise BenchError(f"`seed` must be non-negative, got {seed}")
    names = select_backends(backends, dtype=dtype)
    say = progress or (lambda line: None)
    restore = _set_torch_threads(threads)
    try:
        return _run_cases(names, classes, batch, steps, dtype, repeat, seed, jit, min_time_s, say)
    finally:
        restore()


def _set_torch_threads(threads: int | None) -> Callable[[], None]:
    """Set torch's intra-op threads; returns the function that restores them."""
    if threads is None:
        return lambda: None
    if threads < 1:
        raise BenchError(f"`threads` must be at least 1, got {threads}")
    if importlib.util.find_spec("torch") is None:
        raise BenchError("`threads` sets torch's threads, but torch is not installed")
    torch = importlib.import_module("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)


def _run_cases(
    names: list[str],
    classes: list[int],
    batch: int,
    steps: int,
    dtype: str,
    repeat: int,
    seed: int,
    jit: bool,
    min_time_s: float,
    say: Callable[[str], None],
) -> list[BenchRecord]:
    total = len(classes) * len(names)
    records: list[BenchRecord] = []
    index = 0
    for c in classes:
        data = _synthetic(batch, steps, c, seed)
        for name in names:
            index += 1
            say(f"[{index}/{total}] {name} C={c} {dtype} ...")
            start = time.perf_counter()
            case = None
            try:
                case = prepare_case(
                    name, c, batch=batch, steps=steps, dtype=dtype, seed=seed, jit=jit, data=data
                )
                record = run_case(case, repeat=repeat, min_time_s=min_time_s)
            except Exception as error:
                record = BenchRecord(
                    backend=name,
                    device="?",
                    classes=c,
                    dtype=dtype,
                    batch=batch,
                    steps=steps,
                    itemsize=_ITEMSIZE[dtype],
                    repeat=repeat,
                    error=_first_line(error),
                )
                say(f"[{index}/{total}] {name} C={c} failed: {record.error}")
            else:
                ratio = "" if record.ace_over_ctc is None else f", ACE/CTC {record.ace_over_ctc:.3f}"
                say(
                    f"[{index}/{total}] {name} C={c} done in {time.perf_counter() - start:.1f} s: "
                    f"ACE {record.ace_ms:.3f} ms{ratio}"
                )
            del case
            gc.collect()
            records.append(record)
        del data
        gc.collect()
    return records


# --------------------------------------------------------------------------- environment


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo")
    if info:
        for line in info.splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _thp() -> str | None:
    """The selected transparent-huge-page mode (``always``, ``madvise``, ``never``)."""
    text = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if not text:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return text


def environment_header(**config: Any) -> dict[str, Any]:
    """Versions, machine and thread facts for a benchmark report (imports nothing new).

    Parameters
    ----------
    **config
        The run's settings, stored under ``"config"``.

    Returns
    -------
    dict
        JSON-ready.
    """
    import ace_core

    libraries = {}
    for library in (
        "numpy",
        "array_api_compat",
        "array_api_extra",
        "array_api_strict",
        "torch",
        "jax",
        "jaxlib",
        "cupy",
    ):
        module = sys.modules.get(library)
        version = getattr(module, "__version__", None) if module is not None else None
        libraries[library] = (
            str(version) if version is not None else _distribution_version(library.replace("_", "-"))
        )
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    threads: dict[str, Any] = {"torch_num_threads": _torch_threads()}
    torch = sys.modules.get("torch")
    if torch is not None:
        threads["torch_num_interop_threads"] = torch.get_num_interop_threads()
    env = {
        key: os.environ.get(key)
        for key in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "THP_MEM_ALLOC_ENABLE",
            "XLA_FLAGS",
            "CUDA_VISIBLE_DEVICES",
        )
        if os.environ.get(key) is not None
    }
    return {
        "ace_core": ace_core.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "transparent_hugepages": _thp(),
        "libraries": libraries,
        "threads": threads,
        "environment": env,
        "timer": "time.perf_counter wall clock per call; median of at least `repeat` calls "
        "and at least `min_time_s` of timed calls",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
    }
