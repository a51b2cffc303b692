"""One case of the benchmark protocol (:mod:`ace_core.bench`): a backend, C and a dtype.

:func:`prepare_case` puts the seeded synthetic batch of
:mod:`ace_core.bench.data` on a backend's device (through
:mod:`ace_core.bench.backend_table`) and returns the timed callables: ACE, torch's
CTC on the same values and the device copies that set the memory floor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..counts import counts_from_targets
from . import backend_table
from .backend_table import Backend, first_line
from .data import BATCH, MAX_TARGET_LENGTH, MIN_TARGET_LENGTH, STEPS, synthetic_batch
from .memory import peak_bytes

__all__ = ["BenchError", "BenchCase", "DTYPES", "device_inputs", "prepare_case", "target_length_range"]

DEFAULT_DTYPE = "float32"
#: Accepted ``dtype`` names; float16/bfloat16 only on GPU backends (the benchmark protocol).
DTYPES = ("float32", "float64", "float16", "bfloat16")
HALF_DTYPES = frozenset({"float16", "bfloat16"})
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


class BenchError(ValueError):
    """A benchmark request that cannot be run (unknown or unusable backend, bad dtype)."""


def table_entry(name: str) -> Backend:
    """The backend table's entry for ``name``; :class:`BenchError` for an unknown name."""
    try:
        return backend_table.backend(name)
    except ValueError as error:
        raise BenchError(str(error)) from None


def check_dtype(dtype: str, entry: Backend | None = None) -> None:
    """:class:`BenchError` unless ``dtype`` is benchmarked (on ``entry``, when given)."""
    if dtype not in DTYPES:
        raise BenchError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if entry is None:
        return
    if dtype in HALF_DTYPES and not entry.gpu:
        raise BenchError(f"dtype {dtype} is benchmarked on GPU backends only, not on {entry.name}")
    problem = entry.dtype_problem(dtype)
    if problem is not None:
        raise BenchError(problem)


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
    ace_out : callable or None
        The same call writing the gradient into one buffer reused by every call
        (``out=``); ``None`` where the library's arrays are immutable (JAX).
    ctc : callable or None
        torch's CTC forward+backward on the same values; ``None`` without torch.
    copy_alloc : callable
        ``xp.asarray(scores, copy=True)``.
    copy_into : callable or None
        Copy into a touched buffer of the same shape (NumPy, torch, CuPy, and
        JAX by buffer donation).
    ace_value, ctc_value : callable
        The scalar losses as Python floats (untimed; also serve as warm-up).
    memory : callable or None
        Peak memory of one ACE call above its inputs, ``(bytes or None, how)``.
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
    #: ``() -> (peak bytes above the inputs, how measured)`` of one ACE call
    #: (see :mod:`ace_core.bench.memory`).
    memory: Callable[[], tuple[int | None, str]] | None = None
    ace_out: Callable[[], None] | None = None
    #: Peak memory of one ``out=`` call above its inputs and the buffer, like ``memory``.
    memory_out: Callable[[], tuple[int | None, str]] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the scores array, ``B·T·C·itemsize``."""
        return self.batch * self.steps * self.classes * self.itemsize


def device_inputs(entry: Backend, data: Any, dtype: str) -> tuple[Any, Any]:
    """``(scores, counts)`` of a synthetic batch on the backend's device, synchronised.

    The counts are built from the targets once, outside any timed region.
    """
    scores = entry.asarray(data.logits, dtype)
    counts = counts_from_targets(
        entry.asarray(data.targets),
        entry.asarray(data.target_lengths),
        num_classes=data.logits.shape[-1],
        input_lengths=data.logits.shape[1],
        blank=data.blank,
    )
    entry.synchronize(scores, counts)
    return scores, counts


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
    high = max(1, min(MAX_TARGET_LENGTH, (steps + 1) // 2))
    return min(MIN_TARGET_LENGTH, high), high


def synthetic(batch: int, steps: int, classes: int, seed: int) -> Any:
    """The protocol's seeded batch at this size (target lengths by :func:`target_length_range`)."""
    low, high = target_length_range(steps)
    return synthetic_batch(batch, steps, classes, min_length=low, max_length=high, seed=seed)


def _torch_ctc(data: Any, device_name: str, dtype: str) -> tuple[Callable[[], None], Callable[[], float]]:
    """torch's CTC (log_softmax + ctc_loss, mean, forward and backward) on ``device_name``."""
    torch = importlib.import_module("torch")
    functional = importlib.import_module("torch.nn.functional")
    device = torch.device(device_name)
    sync = table_entry("torch:cuda" if device.type == "cuda" else "torch").synchronize
    scores = torch.from_numpy(data.logits).to(device=device, dtype=getattr(torch, dtype))
    scores.requires_grad_(True)
    targets = torch.from_numpy(data.targets).to(device)
    target_lengths = torch.from_numpy(data.target_lengths).to(device)
    input_lengths = torch.from_numpy(data.input_lengths).to(device)
    # CTC runs in float32 (its CUDA kernels take float32/float64 only).
    lsm_dtype = torch.float32 if dtype in HALF_DTYPES else None

    def loss() -> Any:
        log_probs = functional.log_softmax(scores, dim=-1, dtype=lsm_dtype).transpose(0, 1)  # (T, B, C)
        return functional.ctc_loss(
            log_probs, targets, input_lengths, target_lengths, blank=data.blank, reduction="mean"
        )

    def run() -> None:
        sync(torch.autograd.grad(loss(), scores))

    def value() -> float:
        with torch.no_grad():
            return float(loss())

    sync()
    return run, value


def prepare_case(
    backend: str,
    classes: int,
    *,
    batch: int = BATCH,
    steps: int = STEPS,
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
        A backend name or alias of :mod:`ace_core.bench.backend_table`; it must be usable.
    classes, batch, steps : int
        C, B and T.
    dtype : str
        Scores dtype, one of :data:`DTYPES` (float16/bfloat16 on GPU backends).
    seed : int
        Seed of :func:`ace_core.bench.data.synthetic_batch`.
    jit : bool
        Compile the ACE call where the backend can (``jax.jit``).
    with_ctc : bool
        Build the torch CTC reference when torch can run on the same hardware.
    data : SyntheticBatch, optional
        Reuse a batch already generated (must match ``batch``, ``steps``,
        ``classes``).

    Returns
    -------
    BenchCase

    Raises
    ------
    BenchError
        Unknown dtype or backend, an unusable backend, or a dtype it cannot hold.
    """
    import ace_core

    entry = table_entry(backend)
    check_dtype(dtype, entry)
    reason = entry.unusable_reason()
    if reason is not None:
        raise BenchError(f"backend {entry.name} is not usable here: {reason}")
    if data is None:
        data = synthetic(batch, steps, classes, seed)
    if data.logits.shape != (batch, steps, classes):
        raise BenchError(f"`data` has shape {data.logits.shape}, expected {(batch, steps, classes)}")
    scores, counts = device_inputs(entry, data, dtype)
    sync = entry.synchronize

    notes: list[str] = []
    call = ace_core.ace_loss_and_grad
    used_jit: bool | None = None
    if entry.has_jit:
        used_jit = False
        if jit:
            jitted = entry.jit(ace_core.ace_loss_and_grad)
            try:
                sync(jitted(scores, counts))  # compiles; doubles as a warm-up
            except Exception as error:  # a tracer error: the call is not jittable
                notes.append(f"{entry.library}.jit failed ({first_line(error)}); timed eagerly")
            else:
                call, used_jit = jitted, True

    def ace() -> None:
        sync(call(scores, counts))

    def ace_value() -> float:
        loss, _ = call(scores, counts)
        return float(loss)  # a 0-d array of any of the libraries (bfloat16 included)

    xp = entry.namespace()
    ace_out = None
    if entry.library in ("numpy", "torch", "cupy"):
        gradient = xp.empty_like(scores)

        def ace_out() -> None:
            sync(ace_core.ace_loss_and_grad(scores, counts, out=gradient))

        ace_out()  # touches the buffer: its pages are faulted in once, as in a training loop

    def copy_alloc() -> None:
        sync(xp.asarray(scores, copy=True))

    try:
        copy_into = entry.copy_into(scores)
    except Exception as error:
        copy_into = None
        notes.append(f"no in-place copy ({first_line(error)})")

    ctc = ctc_value = ctc_device = None
    if with_ctc:
        missing = table_entry("torch:cuda" if entry.gpu else "torch").unusable_reason()
        if missing is None:
            ctc_device = entry.torch_device()
            ctc, ctc_value = _torch_ctc(data, ctc_device, dtype)
        else:
            notes.append(f"no CTC reference: {missing}")

    return BenchCase(
        backend=entry.name,
        device=entry.device_name(),
        dtype=dtype,
        batch=batch,
        steps=steps,
        classes=classes,
        itemsize=ITEMSIZE[dtype],
        ace=ace,
        ctc=ctc,
        copy_alloc=copy_alloc,
        copy_into=copy_into,
        ace_value=ace_value,
        ctc_value=ctc_value,
        jit=used_jit,
        ctc_device=ctc_device,
        notes=notes,
        memory=lambda: peak_bytes(entry, ace, call if used_jit else None, (scores, counts)),
        ace_out=ace_out,
        memory_out=None
        if ace_out is None
        else lambda: peak_bytes(entry, ace_out, None, (scores, counts, gradient)),
    )
