"""Registers, spills and shared memory of every fused CUDA kernel variant, from ptxas, without a GPU.

Compiles ``ace_core.backends._cupy_source.SOURCE`` with ``nvcc -cubin
-Xptxas -v`` for each architecture (sm_80 and sm_90 by default), every kernel
that :mod:`ace_core.backends._cupy_launch` can launch instantiated explicitly,
and prints one row per kernel and architecture: registers per thread, spill
stores and loads (bytes), stack frame, static shared memory, and the
occupancy on an H100/H200 multiprocessor (65536 registers, 2048 threads, 32
blocks, 228 KB of shared memory) at the largest block the variant runs with::

    python tools/cuda_resources.py               # Markdown table
    python tools/cuda_resources.py --rst         # the table of docs/performance.rst
    python tools/cuda_resources.py --json out.json

Results are cached by the hash of the source, the kernel list, the
architectures and nvcc's version (``$ACE_CUDA_RESOURCES_CACHE`` or
``~/.cache/ace_core/cuda_resources``). ``tests/test_cuda_resources.py`` uses
:func:`resources`. Exit status 1 when a variant that serves C <= 8192 spills
on sm_90.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ace_core.backends import _cupy_launch, _cupy_source

ARCHS = ("sm_80", "sm_90")
#: An H100/H200 multiprocessor (the same for sm_80's A100, except 164 KB of shared memory).
SM_REGISTERS = 65536
SM_THREADS = 2048
SM_BLOCKS = 32
SM_SHARED_BYTES = 228 * 1024
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
#: The variants that serve C <= this must not spill on sm_90.
NO_SPILL_CLASSES = 8192

__all__ = ["nvcc", "resources", "occupancy", "serves", "spilling", "main"]


def nvcc() -> str | None:
    """The nvcc to use: ``$NVCC``, then PATH, then /usr/local/cuda/bin; None if there is none."""
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _program(names: list[str]) -> str:
    """The source with one explicit instantiation per name expression (by taking its address)."""
    lines = [f"auto* const ace_instance_{i} = &{name};" for i, name in enumerate(names)]
    return _cupy_source.SOURCE + "\n" + "\n".join(lines) + "\n"


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def _demangle(symbols: list[str]) -> dict[str, str]:
    """Mangled name → ``kernel<args>`` (by c++filt, or cu++filt next to nvcc)."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if tool is None:
        raise RuntimeError("neither c++filt nor cu++filt is on PATH")
    out = subprocess.run([tool], input="\n".join(symbols), capture_output=True, text=True, check=True).stdout
    result = {}
    for symbol, text in zip(symbols, out.splitlines(), strict=True):
        name = text.split("(")[0].removeprefix("void ").strip()
        result[symbol] = re.sub(r"\s+", " ", name).replace("< ", "<").replace(" >", ">")
    return result


def _ptxas(compiler: str, program: str, arch: str, work: Path) -> list[dict[str, Any]]:
    source = work / f"ace_{arch}.cu"
    source.write_text(program)
    command = [
        compiler,
        "-cubin",
        f"-arch={arch}",
        "-std=c++17",
        "-Xptxas",
        "-v",
        "-o",
        str(work / f"{arch}.cubin"),
    ]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed for {arch}:\n{result.stderr[-4000:]}")
    rows: dict[str, dict[str, Any]] = {}
    current = None
    for line in (result.stdout + result.stderr).splitlines():
        if match := _ENTRY.search(line):
            current = match.group(1)
            rows[current] = {"symbol": current, "arch": match.group(2)}
        elif current and (match := _FRAME.search(line)):
            rows[current].update(
                stack=int(match.group(1)), spill_stores=int(match.group(2)), spill_loads=int(match.group(3))
            )
        elif current and (match := _USAGE.search(line)):
            rows[current].update(registers=int(match.group(1)), shared=int(match.group(2) or 0))
    names = _demangle(list(rows))
    return [dict(row, kernel=names[symbol]) for symbol, row in rows.items()]


def _cache_file(key: str) -> Path:
    root = os.environ.get("ACE_CUDA_RESOURCES_CACHE")
    base = (
        Path(root)
        if root
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ace_core" / "cuda_resources"
    )
    return base / f"{key}.json"


def resources(archs: tuple[str, ...] = ARCHS, *, compiler: str | None = None) -> list[dict[str, Any]]:
    """One dict per (kernel, arch): ``kernel``, ``arch``, ``registers``, ``spill_stores``,
    ``spill_loads``, ``stack``, ``shared``, plus ``storage``/``acc``/``items`` for the row kernels."""
    compiler = compiler or nvcc()
    if compiler is None:
        raise RuntimeError("nvcc is not available")
    names = _cupy_launch.all_kernel_names()
    program = _program(names)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([program, " ".join(archs), version]).encode()).hexdigest()[:24]
    cached = _cache_file(key)
    if cached.exists():
        return json.loads(cached.read_text())
    with (
        tempfile.TemporaryDirectory(prefix="ace_cuda_resources_") as work,
        concurrent.futures.ThreadPoolExecutor(len(archs)) as pool,
    ):
        per_arch = list(pool.map(lambda arch: _ptxas(compiler, program, arch, Path(work)), archs))
    rows = [row for found in per_arch for row in found]
    for row in rows:
        match = re.fullmatch(r"(\w+)<(.*)>", row["kernel"])
        if match is None:
            raise RuntimeError(f"unexpected kernel name {row['kernel']!r}")
        arguments = [a.strip() for a in match.group(2).split(",")]
        row["name"] = match.group(1)
        if len(arguments) == 3:
            row.update(storage=arguments[0], acc=arguments[1], items=int(arguments[2]))
        else:
            row.update(storage=None, acc=arguments[0], items=None)
    launched = {(name.replace(" ", "")) for name in names}
    found = {(row["kernel"].replace(" ", "")) for row in rows if row["arch"] == archs[0]}
    if found != launched:
        raise RuntimeError(f"ptxas reported {sorted(found ^ launched)} differently from the kernel list")
    rows.sort(key=lambda r: (r["arch"], r["name"], r["acc"], r["storage"] or "", r["items"] or 0))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(rows, indent=1))
        os.replace(temporary, cached)
    except OSError:
        pass  # no cache: the next call compiles again
    return rows


def serves(row: dict[str, Any]) -> tuple[int, int]:
    """``(smallest C, largest C)`` that the row's variant runs (the combine serves every C)."""
    if row["items"] is None:
        return 1, _cupy_launch.MAX_CLASSES
    items = row["items"]
    smaller = [i for i in _cupy_launch.ITEMS_CHOICES if i < items]
    low = (max(smaller) * _cupy_launch.MAX_THREADS + 1) if smaller else 1
    return low, items * _cupy_launch.MAX_THREADS


def block_threads(row: dict[str, Any]) -> int:
    """The largest block the row's kernel is launched with."""
    if row["items"] is None:
        return _cupy_launch.COMBINE_THREADS
    return _cupy_launch.launch_shape(serves(row)[1])[1]


def occupancy(registers: int, shared: int, threads: int) -> tuple[int, float]:
    """``(blocks per multiprocessor, fraction of its 2048 threads)`` on an H100/H200."""
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = (SM_REGISTERS // per_warp) // warps
    by_shared = SM_SHARED_BYTES // shared if shared else SM_BLOCKS
    blocks = min(SM_THREADS // (warps * 32), SM_BLOCKS, by_registers, by_shared)
    return blocks, blocks * warps * 32 / SM_THREADS


def spilling(rows: list[dict[str, Any]], arch: str = "sm_90") -> list[dict[str, Any]]:
    """The rows of ``arch`` whose variant serves some C <= 8192 and that spill."""
    return [
        r
        for r in rows
        if r["arch"] == arch and serves(r)[0] <= NO_SPILL_CLASSES and (r["spill_stores"] or r["spill_loads"])
    ]


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "kernel",
        "storage",
        "acc",
        "items",
        "C",
        "arch",
        "regs",
        "spill st/ld B",
        "stack B",
        "smem B",
        "block",
        "blocks/SM",
        "occupancy",
    ]
    body = []
    for r in rows:
        low, high = serves(r)
        threads = block_threads(r)
        blocks, fraction = occupancy(r["registers"], r["shared"], threads)
        body.append(
            [
                r["name"].removeprefix("ace_"),
                r["storage"] or "–",
                r["acc"],
                str(r["items"] or "–"),
                f"{low}–{high}",
                r["arch"],
                str(r["registers"]),
                f"{r['spill_stores']}/{r['spill_loads']}",
                str(r["stack"]),
                str(r["shared"]),
                str(threads),
                str(blocks),
                f"{fraction:.0%}",
            ]
        )
    return header, body


def _summary(rows: list[dict[str, Any]], archs: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """One row per (kernel, accumulation, items), the worst storage type, a column pair per arch."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        key = (r["name"], r["acc"], r["items"] or 0)
        groups.setdefault(key, {}).setdefault(r["arch"], []).append(r)
    header = ["kernel", "acc", "items", "C"]
    for arch in archs:
        header += [f"regs {arch}", f"spill B {arch}"]
    header += ["block", "blocks/SM (sm_90)", "occupancy"]
    body = []
    order = {"ace_forward_tiles": 0, "ace_combine_tiles": 1, "ace_backward_rows": 2}
    for key in sorted(groups, key=lambda k: (order.get(k[0], 9), k[1], k[2])):
        by_arch = groups[key]
        first = by_arch[archs[0]][0]
        low, high = serves(first)
        line = [key[0].removeprefix("ace_"), key[1], str(key[2] or "–"), f"{low}–{high}"]
        for arch in archs:
            found = by_arch.get(arch, [])
            line.append(str(max(r["registers"] for r in found)) if found else "–")
            line.append(str(max(r["spill_stores"] + r["spill_loads"] for r in found)) if found else "–")
        worst = max(by_arch.get("sm_90", by_arch[archs[-1]]), key=lambda r: r["registers"])
        threads = block_threads(worst)
        blocks, fraction = occupancy(worst["registers"], worst["shared"], threads)
        body.append([*line, str(threads), str(blocks), f"{fraction:.0%}"])
    return header, body


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _rst(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(x) for x in column) for column in zip(header, *body, strict=True)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in body]
    return "\n".join([*lines, rule])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="architectures (default sm_80 and sm_90)")
    parser.add_argument("--rst", action="store_true", help="a reStructuredText table")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--storage", help="only rows of this storage type (and the combine)")
    parser.add_argument(
        "--summary", action="store_true", help="one row per kernel, accumulation and items (worst storage)"
    )
    args = parser.parse_args(argv)
    if nvcc() is None:
        print("nvcc is not available: no resource table", file=sys.stderr)
        return 2
    archs = tuple(args.arch) if args.arch else ARCHS
    rows = resources(archs)
    shown = [r for r in rows if args.storage is None or r["storage"] in (args.storage, None)]
    header, body = _summary(shown, archs) if args.summary else _table(shown)
    print(_rst(header, body) if args.rst else _markdown(header, body))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    bad = spilling(rows)
    for r in bad:
        print(f"spills on sm_90 in a variant for C <= {NO_SPILL_CLASSES}: {r['kernel']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
