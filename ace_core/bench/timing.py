"""How the benchmark protocol (:mod:`ace_core.bench`) times one callable: per call, median quoted."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_REPEAT", "DEFAULT_MIN_TIME_S", "Timing", "measure"]

#: Timed calls per measurement (at least); sized so that the default run (numpy, torch,
#: jax on this project's 2-core reference machine) takes 1-2 minutes.
DEFAULT_REPEAT = 9
#: Fast calls are timed until the timed calls add up to this long.
DEFAULT_MIN_TIME_S = 0.2


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
    The garbage collector is off while timing.

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
