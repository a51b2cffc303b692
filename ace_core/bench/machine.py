"""The machine a benchmark runs on: its description, and the knobs that change its timings.

:func:`environment_header` records versions, CPU, thread counts and the
transparent-huge-page mode for a report (``ace bench``). The knobs: glibc's
allocator warm-up (:func:`warm_allocator`), torch's huge pages
(:func:`request_torch_thp`) and torch's intra-op threads
(:func:`set_torch_threads`). Nothing here imports a framework; torch facts are
read only when torch is imported already.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .backend_table import BACKENDS, library_version

__all__ = [
    "environment_header",
    "warm_allocator",
    "glibc_huge_pages",
    "request_torch_thp",
    "set_torch_threads",
    "torch_threads",
]

_LIBRARIES = (
    "numpy",
    "array_api_compat",
    "array_api_extra",
    "array_api_strict",
    "torch",
    "jax",
    "jaxlib",
    "cupy",
)
_ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "THP_MEM_ALLOC_ENABLE",
    "GLIBC_TUNABLES",
    "XLA_FLAGS",
    "CUDA_VISIBLE_DEVICES",
)


def warm_allocator() -> None:
    """Bring glibc's malloc to its steady state before timing anything.

    glibc serves blocks above a dynamic threshold (128 KiB at start) with
    fresh ``mmap`` pages, and raises the threshold, up to 32 MiB, the first
    time such a block is freed. Until then every temporary above 128 KiB
    page-faults on each call: at C = 37 that made the first case measured in
    a process about twice as slow as the same case measured after it. Freeing
    one 30 MiB block sets the threshold as a long-running training process
    has it; larger arrays (C = 7357) are mapped fresh either way.
    """
    block = np.empty(30 * 2**20, dtype=np.uint8)
    del block


def glibc_huge_pages(environment: Mapping[str, str] | None = None) -> bool:
    """Whether glibc's malloc asks for transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``).

    ``environment`` is the process's own (``os.environ``) unless given, e.g.
    the recorded environment of a report.

    XLA's CPU buffers come from malloc, which otherwise maps large blocks in
    4 KiB pages: with the kernel's THP mode at ``madvise`` (common), every
    fresh output of a jitted JAX call then page-faults page by page. glibc
    reads the setting when the process starts, so it cannot be turned on from
    inside Python.
    """
    tunables = (os.environ if environment is None else environment).get("GLIBC_TUNABLES", "")
    return any(
        item.strip() in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=2") for item in tunables.split(":")
    )


def request_torch_thp() -> bool:
    """Ask torch to back its large CPU allocations with transparent huge pages.

    Sets ``THP_MEM_ALLOC_ENABLE=1``, which torch reads when it starts, so it
    works only before torch is imported (the ``ace bench --thp`` option). With
    the kernel's THP mode at ``madvise`` (common), torch otherwise page-faults
    every fresh 4 KiB page of its large temporaries, which on the reference
    machine made both ACE and CTC several times slower at C = 7357.

    Returns
    -------
    bool
        False when torch was already imported (the setting then has no effect).
    """
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    return "torch" not in sys.modules


def set_torch_threads(threads: int | None) -> Callable[[], None]:
    """Set torch's intra-op threads (``None``: leave them); returns the function that restores them.

    Raises ``ValueError`` for ``threads < 1`` or when torch is not installed.
    """
    if threads is None:
        return lambda: None
    if threads < 1:
        raise ValueError(f"`threads` must be at least 1, got {threads}")
    if importlib.util.find_spec("torch") is None:
        raise ValueError("`threads` sets torch's threads, but torch is not installed")
    torch = importlib.import_module("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(before)


def torch_threads() -> int | None:
    """torch's intra-op threads, or ``None`` when torch is not imported."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
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

    backend_versions = {b.library: b.version() for b in BACKENDS}
    libraries = {
        name: backend_versions[name] if name in backend_versions else library_version(name)
        for name in _LIBRARIES
    }
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    threads: dict[str, Any] = {"torch_num_threads": torch_threads()}
    torch = sys.modules.get("torch")
    if torch is not None:
        threads["torch_num_interop_threads"] = torch.get_num_interop_threads()
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
        "environment": {key: os.environ[key] for key in _ENVIRONMENT if key in os.environ},
        "timer": "time.perf_counter wall clock per call; median of at least `repeat` calls "
        "and at least `min_time_s` of timed calls",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
    }
