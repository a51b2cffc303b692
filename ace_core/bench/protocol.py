"""The benchmark protocol (see :doc:`/contract`), importable by the ``ace`` command and by asv.

For each backend (an array library on a device, from
:mod:`ace_core.bench.backend_table`) and each number of classes C, on the seeded
synthetic batch of :mod:`ace_core.bench.data` (B = 64, T = 144,
target lengths uniform in 10..25, blank 0), it measures in the same run and on
the same device:

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
  in-place copy (NumPy, torch, CuPy; JAX through a donated buffer), into a
  touched buffer. The faster median of the two is the copy that sets the
  memory floor.

The memory floor: ACE must read the scores for the forward, read them again
for the backward and write the gradient, ``3·B·T·C·itemsize`` bytes; a copy
moves two passes, so ``floor = 3/2 · copy`` and the *fraction of the floor*
reached is ``floor / ace``.

Timing: wall clock (:func:`time.perf_counter`). GPU work is synchronised
inside the timed region (``torch.cuda.synchronize``, the CuPy stream,
``jax.block_until_ready``). glibc's allocator is brought to its steady state
before the first case (:func:`ace_core.bench.machine.warm_allocator`), and every
callable is called once untimed first (it touches the buffers, compiles under
``jax.jit``, warms caches). Then every call is timed on its own, at least
``repeat`` calls and until the timed calls add up to ``min_time_s``, and the
median call is quoted (:func:`measure`). Nothing is pinned unless asked
(``threads``): thread counts, the transparent-huge-page mode and the machine
are recorded by :func:`ace_core.bench.machine.environment_header`.

The pieces: this module runs the protocol and keeps the records; one case (data
on the device, the timed callables) is built in :mod:`ace_core.bench.case`,
calls are timed in :mod:`ace_core.bench.timing`, and the backends themselves
(usable or not, devices, copies, synchronisation) live in
:mod:`ace_core.bench.backend_table`. Frameworks are imported lazily, inside the
functions that need them, so ``import ace_core.bench`` imports none.

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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .backend_table import BACKENDS, first_line
from .case import (
    DEFAULT_DTYPE,
    DTYPES,
    HALF_DTYPES,
    ITEMSIZE,
    BenchCase,
    BenchError,
    check_dtype,
    device_inputs,
    prepare_case,
    synthetic,
    table_entry,
    target_length_range,
)
from .data import BATCH as DEFAULT_BATCH
from .data import CLASSES as DEFAULT_CLASSES
from .data import STEPS as DEFAULT_STEPS
from .machine import set_torch_threads, torch_threads, warm_allocator
from .timing import DEFAULT_MIN_TIME_S, DEFAULT_REPEAT, Timing, measure

__all__ = [
    "DEFAULT_BACKEND_EXCLUDED",
    "DEFAULT_BATCH",
    "DEFAULT_STEPS",
    "DEFAULT_CLASSES",
    "DEFAULT_DTYPE",
    "DEFAULT_REPEAT",
    "DEFAULT_MIN_TIME_S",
    "DTYPES",
    "BenchError",
    "BenchCase",
    "BenchRecord",
    "Timing",
    "select_backends",
    "prepare_case",
    "device_inputs",
    "measure",
    "run_case",
    "run_protocol",
    "target_length_range",
]

#: Backends left out of the default selection (array_api_strict is a correctness namespace, slow).
DEFAULT_BACKEND_EXCLUDED = frozenset({"array_api_strict"})


def select_backends(names: str | Sequence[str] | None = None, *, dtype: str = DEFAULT_DTYPE) -> list[str]:
    """The backends to benchmark.

    Parameters
    ----------
    names : str, sequence of str or None
        Comma-separated string or list of backend names or aliases (see
        :func:`ace_core.backend_table.backend`); ``None`` selects every usable
        backend but those in :data:`DEFAULT_BACKEND_EXCLUDED` (and, for
        float16/bfloat16, only GPU backends).
    dtype : str
        One of :data:`DTYPES`.

    Returns
    -------
    list of str
        Table names, without duplicates, in the order given (the table's for ``None``).

    Raises
    ------
    BenchError
        An unknown name, a named backend that is not usable, a half dtype on
        a CPU backend, or nothing to run.
    """
    check_dtype(dtype)
    if names is None:
        half = dtype in HALF_DTYPES
        chosen = [
            b.name
            for b in BACKENDS
            if b.name not in DEFAULT_BACKEND_EXCLUDED and (b.gpu or not half) and b.usable
        ]
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
        entry = table_entry(raw)
        if entry.name in chosen:
            continue
        check_dtype(dtype, entry)
        reason = entry.unusable_reason()
        if reason is not None:
            raise BenchError(f"backend {entry.name} is not usable here: {reason}")
        chosen.append(entry.name)
    if not chosen:
        raise BenchError("no backend given")
    return chosen


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
    ace_out_ms, ace_out_min_ms : float or None
        The same with ``out=``: the gradient written into one buffer reused by
        every call (``None`` where arrays are immutable, as on JAX).
    out_speedup : float or None
        ``ace_ms / ace_out_ms``.
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
    peak_bytes : int or None
        Peak memory of one ACE call above its inputs (the gradient included);
        the target is the gradient's size plus O(B·(T + C)).
    peak_how : str or None
        How ``peak_bytes`` was measured, or why it was not.
    peak_out_bytes : int or None
        Peak memory of one ``out=`` call above its inputs and the buffer: the
        target is O(B·(T + C)).
    grad_bytes : int
        The gradient's size, ``B·T·C·itemsize``.
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
    ace_out_ms: float | None = None
    ace_out_min_ms: float | None = None
    out_speedup: float | None = None
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
    peak_bytes: int | None = None
    peak_how: str | None = None
    peak_out_bytes: int | None = None
    grad_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``nan`` becomes ``None``)."""
        out = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


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
    if case.ace_out is not None:
        ace_out = measure(case.ace_out, repeat=repeat, min_time_s=min_time_s, warmup=False)
        record.ace_out_ms, record.ace_out_min_ms = ace_out.median * ms, ace_out.min * ms
        record.out_speedup = record.ace_ms / record.ace_out_ms
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
    record.torch_threads = torch_threads()
    record.grad_bytes = case.nbytes
    if case.memory is not None:
        record.peak_bytes, record.peak_how = case.memory()
    if case.memory_out is not None:
        record.peak_out_bytes, _ = case.memory_out()
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
    warm_allocator()
    try:
        restore = set_torch_threads(threads)
    except ValueError as error:
        raise BenchError(str(error)) from None
    try:
        return _run_cases(names, classes, batch, steps, dtype, repeat, seed, jit, min_time_s, say)
    finally:
        restore()


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
        data = synthetic(batch, steps, c, seed)
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
                    itemsize=ITEMSIZE[dtype],
                    repeat=repeat,
                    error=first_line(error),
                )
                say(f"[{index}/{total}] {name} C={c} failed: {record.error}")
            else:
                ratio = "" if record.ace_over_ctc is None else f", ACE/CTC {record.ace_over_ctc:.3f}"
                if record.ace_out_ms is not None:
                    ratio += f", with out= {record.ace_out_ms:.3f} ms"
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
