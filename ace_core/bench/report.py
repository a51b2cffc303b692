"""The text tables of ``ace info`` and ``ace bench`` (the ``--json`` output is the records themselves)."""

from __future__ import annotations

import math
import platform
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .machine import glibc_huge_pages

__all__ = ["format_ms", "info_report", "print_bench_table", "print_info", "print_table"]


def info_report() -> dict[str, Any]:
    """Versions, the platform and every backend of the table (usable or not, devices, why not)."""
    from .. import __version__
    from .backend_table import BACKENDS, library_version

    return {
        "ace_core": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "executable": sys.executable,
        "platform": platform.platform(),
        "libraries": {
            name.replace("_", "-"): library_version(name)
            for name in ("numpy", "array_api_compat", "array_api_extra")
        },
        "backends": [b.info() for b in BACKENDS],
    }


def print_info(report: dict[str, Any], out: TextIO) -> None:
    """:func:`info_report` as text: versions, then one row per backend."""
    print(f"ace_core   {report['ace_core']}", file=out)
    print(f"Python     {report['python']} at {report['executable']}", file=out)
    print(f"platform   {report['platform']}", file=out)
    for name, version in report["libraries"].items():
        print(f"{name:<17}  {version or 'not installed'}", file=out)
    print("", file=out)
    rows = [("backend", "usable", "version", "devices / reason")]
    for b in report["backends"]:
        where = ", ".join(b["devices"]) if b["usable"] else (b["reason"] or "")
        if "num_threads" in b["details"]:
            where += f" ({b['details']['num_threads']} threads)"
        rows.append((b["name"], "yes" if b["usable"] else "no", b["version"] or "-", where))
    print_table(rows, out, align="llll")


def format_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value <= 0:
        return f"{value:.3f}"
    # three significant digits below 1 ms: 0.512, 0.0421, 0.00317
    return f"{value:.{max(3, 2 - math.floor(math.log10(value)))}f}"


def _format(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _format_percent(fraction: float | None) -> str:
    if fraction is None or math.isnan(fraction):
        return "-"
    return f"{100 * fraction:.1f} %"


def print_table(rows: list[tuple[str, ...]], out: TextIO, align: str) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ]
        print("  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_bench_table(records: Sequence[Any], header: dict[str, Any], out: TextIO) -> None:
    cfg = header["config"]
    libs = header["libraries"]
    used_libs = _used_libraries(records)
    used = ", ".join(f"{k} {v}" for k, v in libs.items() if v is not None and k in used_libs)
    run_threads = [r.torch_threads for r in records if r.torch_threads is not None]
    threads = run_threads[0] if run_threads else header["threads"].get("torch_num_threads")
    thp_settings = [
        f"{name}={header['environment'][name]}"
        for name in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")
        if name in header["environment"]
    ]
    thp_env = f" ({', '.join(thp_settings)})" if thp_settings else ""
    print(f"ace_core {header['ace_core']}, Python {header['python']}; {used}", file=out)
    print(
        f"{header['cpu']}, {header['cpu_count']} CPUs ({header['cpu_affinity']} usable), "
        f"THP {header['transparent_hugepages']}{thp_env}, "
        f"torch threads {threads if threads is not None else '-'}",
        file=out,
    )
    print(
        f"B={cfg['batch']} T={cfg['steps']} seed={cfg['seed']}; per-call wall clock, median of "
        f">= {cfg['repeat']} calls; CTC = torch log_softmax + ctc_loss + backward (mean); "
        "floor = 1.5 x copy ms (3 passes of B*T*C*itemsize); peak/grad = peak memory of one call "
        "above its inputs over the gradient's size (target: 1 + O(B(T+C))/BTC)",
        file=out,
    )
    print("", file=out)
    rows = [
        (
            "backend",
            "device",
            "C",
            "dtype",
            "ACE ms",
            "out= ms",
            "CTC ms",
            "ACE/CTC",
            "copy ms",
            "floor",
            "ACE GB/s",
            "peak/grad",
        )
    ]
    errors = []
    for r in records:
        if r.error is not None:
            errors.append(r)
            rows.append((r.backend, r.device, str(r.classes), r.dtype, "error", *[""] * 7))
            continue
        backend = r.backend + (" (jit)" if r.jit else " (eager)" if r.jit is False else "")
        rows.append(
            (
                backend,
                r.device,
                str(r.classes),
                r.dtype,
                format_ms(r.ace_ms),
                format_ms(r.ace_out_ms),
                format_ms(r.ctc_ms),
                _format(r.ace_over_ctc, ".3f"),
                format_ms(r.copy_ms),
                _format_percent(r.floor_fraction),
                _format(r.ace_gbps, ".2f"),
                _format(None if r.peak_bytes is None else r.peak_bytes / r.grad_bytes, ".2f"),
            )
        )
    print_table(rows, out, align="llrlrrrrrrrr")
    for r in records:
        for note in r.notes:
            print(f"note: {r.backend} C={r.classes}: {note}", file=out)
    if (
        "torch" in used_libs
        and header["transparent_hugepages"] == "madvise"
        and "THP_MEM_ALLOC_ENABLE" not in header["environment"]
    ):
        print(
            "note: THP is 'madvise' and THP_MEM_ALLOC_ENABLE is unset, so torch's large CPU "
            "allocations are not huge-page backed (page faults are part of its times; see --thp)",
            file=out,
        )
    if (
        "jax" in used_libs
        and header["transparent_hugepages"] == "madvise"
        and not glibc_huge_pages(header["environment"])
    ):
        print(
            "note: THP is 'madvise' and GLIBC_TUNABLES lacks glibc.malloc.hugetlb=1, so XLA's CPU "
            "buffers are not huge-page backed (page faults of each fresh gradient are part of jax's "
            "times; set it before Python starts)",
            file=out,
        )
    for r in errors:
        print(f"error: {r.backend} C={r.classes}: {r.error}", file=out)


def _used_libraries(records: Sequence[Any]) -> set[str]:
    from .backend_table import backend

    used = {"numpy"}
    for r in records:
        used.add(backend(r.backend).library)
        if r.ctc_device is not None:
            used.add("torch")
    return used
