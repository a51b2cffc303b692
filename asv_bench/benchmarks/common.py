"""The backend-parametrized base of the asv suite, on the benchmark protocol (docs: The contract).

Every benchmark takes the backend (a name from :mod:`ace_core.bench.backend_table`),
the number of classes C and, for the losses, the dtype. The data are the
protocol's seeded batch from :mod:`ace_core.bench.data` (B = 64,
T = 144, target lengths 10..25, blank 0); the timed callables come from
:func:`ace_core.bench.prepare_case` where it has them.

A backend that is not installed, or a device that is missing, raises
``SkipNotImplemented`` in ``setup`` (the reason is
:meth:`ace_core.bench.backend_table.Backend.unusable_reason`); so does bfloat16 on
a CPU backend. Any other exception fails the benchmark, which fails the CI
smoke test: a ``NotImplementedError`` raised by ace_core itself is turned
into a ``RuntimeError`` so that asv does not take it for a skip.

Each timed callable synchronises the device inside the call
(:meth:`~ace_core.bench.backend_table.Backend.synchronize`), JAX callables are
compiled with :meth:`~ace_core.bench.backend_table.Backend.jit` and called once in
``setup``, and every callable is called once in ``setup`` so that its buffers
are touched before timing. Thread pools are pinned by the package's
``__init__`` (``ACE_ASV_THREADS``, default 1) and torch's intra-op threads
again in ``setup``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ace_core.bench import backend_table
from ace_core.bench.data import CLASSES, SyntheticBatch, synthetic_batch
from ace_core.bench.machine import set_torch_threads, warm_allocator

from . import THREADS

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # asv < 0.6: a NotImplementedError in setup skips

    class SkipNotImplemented(NotImplementedError):
        """Skip this parameter combination."""


__all__ = [
    "BACKENDS",
    "CLASSES",
    "DTYPES",
    "SEED",
    "SkipNotImplemented",
    "BackendBenchmark",
    "require",
    "protocol_data",
]

#: Every backend of the table: numpy, array_api_strict, torch, torch:cuda, jax, jax:gpu, cupy.
BACKENDS = [b.name for b in backend_table.BACKENDS]
#: float32 everywhere; bfloat16 on GPU backends only (skipped on the CPU).
DTYPES = ["float32", "bfloat16"]
#: Seed of the synthetic batch (the protocol's default).
SEED = 0

_HALF = {"float16", "bfloat16"}


def require(name: str, dtype: str = "float32") -> backend_table.Backend:
    """The table entry ``name``, or ``SkipNotImplemented`` when it cannot run ``dtype`` here."""
    entry = backend_table.backend(name)
    reason = entry.unusable_reason()
    if reason is not None:
        raise SkipNotImplemented(f"{entry.name}: {reason}")
    if dtype in _HALF and not entry.gpu:
        raise SkipNotImplemented(f"{dtype} is benchmarked on GPU backends only, not {entry.name}")
    problem = entry.dtype_problem(dtype)
    if problem is not None:
        raise SkipNotImplemented(problem)
    if entry.library == "torch":
        set_torch_threads(int(THREADS))
    return entry


def protocol_data(classes: int) -> SyntheticBatch:
    """The protocol's seeded batch (B = 64, T = 144, lengths 10..25, blank 0) with C = ``classes``."""
    return synthetic_batch(classes=classes, seed=SEED)


def synchronised(entry: backend_table.Backend, fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    """``fn(*args)`` as a callable that waits for the device; called once now (compiles, touches)."""

    def run() -> None:
        entry.synchronize(fn(*args))

    run()
    return run


class BackendBenchmark:
    """Base: params ``(backend, classes, dtype)``; subclasses implement :meth:`prepare`.

    Timing (for ``time_`` methods): calls are batched to at least
    ``sample_time`` (one call per sample at C = 7357), 3 to 10 samples per
    round, 2 rounds in separate processes, median quoted.
    """

    params: list[list[Any]] = [BACKENDS, list(CLASSES), DTYPES]
    param_names = ["backend", "classes", "dtype"]
    timeout = 300
    rounds = 2
    repeat = (3, 10, 20.0)
    sample_time = 0.02
    warmup_time = 0.1

    def setup(self, backend: str, classes: int, dtype: str = "float32") -> None:
        self.entry = require(backend, dtype)
        warm_allocator()
        try:
            self.prepare(self.entry, classes, dtype)
        except SkipNotImplemented:
            raise
        except NotImplementedError as error:  # a real failure, not a skip
            raise RuntimeError(f"{type(error).__name__}: {error}") from error

    def prepare(self, entry: backend_table.Backend, classes: int, dtype: str) -> None:
        raise NotImplementedError  # pragma: no cover - abstract
