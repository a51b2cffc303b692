"""The GPU report of ace_core: versions, the GPU tests and the GPU benchmark table.

Run it through ``tools/gpu_report.sh``, which makes the source tree importable
without installing anything. It prints, in Markdown:

1. the date, Python, the array libraries, CUDA and the GPU;
2. the GPU tests: ``pytest tests/test_backend_cupy.py``, the host run of the
   same kernels and the ptxas resource check (``tests/test_cuda_host.py``,
   ``tests/test_cuda_resources.py``), and the GPU variants of the main suite
   (``-k "cupy or cuda or gpu"``); what is not installed skips;
3. the benchmark protocol (:func:`ace_core.bench.run_protocol`) on the
   usable GPU backends (CuPy, torch CUDA, JAX GPU) at C = 37 and 7357, float32
   and bfloat16: ACE forward+backward, torch's CTC on the same GPU, the
   copy-bandwidth floor, and the peak extra GPU memory of one call.

Without a GPU it says so and skips the GPU parts. The table is also written to
``$OUT/gpu_report.md`` (and the records to ``gpu_report.json``) when ``$OUT``
or ``--out`` names a folder. Exit status: 1 when a test run failed, 2 when
ace_core cannot be imported, else 0.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GPU_BACKENDS = ("cupy", "torch:cuda", "jax:gpu")
KERNEL_TESTS = ("tests/test_backend_cupy.py", "tests/test_cuda_host.py", "tests/test_cuda_resources.py")
CLASSES = (37, 7357)
DTYPES = ("float32", "bfloat16")
MIB = 1 << 20


def _say(line: str = "") -> None:
    print(line, flush=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- versions


def _version(module: str) -> str:
    from ace_core.bench.backend_table import library_version

    found = library_version(
        module, ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x") if module == "cupy" else ()
    )
    return found or "not installed"


def _cupy_facts() -> list[tuple[str, str]]:
    if importlib.util.find_spec("cupy") is None:
        return []
    try:
        import cupy

        runtime = cupy.cuda.runtime
        rows = [
            ("CUDA runtime (CuPy)", str(runtime.runtimeGetVersion())),
            ("CUDA driver", str(runtime.driverGetVersion())),
        ]
        for index in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(index)
            name = props.get("name", b"")
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = props.get("totalGlobalMem", 0) / (1 << 30)
            rows.append(
                (f"GPU {index}", f"{name}, sm_{props.get('major')}{props.get('minor')}, {memory:.1f} GiB")
            )
        return rows
    except Exception as error:  # noqa: BLE001 - a report, not a check
        return [("CuPy CUDA", f"unavailable ({_first_line(error)})")]


def _torch_facts() -> list[tuple[str, str]]:
    if importlib.util.find_spec("torch") is None:
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return [("torch CUDA", f"not available (built with CUDA {torch.version.cuda})")]
        return [("torch CUDA", f"{torch.version.cuda}, {torch.cuda.get_device_name(0)}")]
    except Exception as error:  # noqa: BLE001
        return [("torch CUDA", f"unavailable ({_first_line(error)})")]


def _jax_facts() -> list[tuple[str, str]]:
    if importlib.util.find_spec("jax") is None:
        return []
    try:
        import jax

        return [("jax devices", ", ".join(f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()))]
    except Exception as error:  # noqa: BLE001
        return [("jax devices", f"unavailable ({_first_line(error)})")]


def _nvidia_smi() -> list[tuple[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return [("nvidia-smi", "not found")]
    query = [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,clocks.max.memory",
        "--format=csv,noheader",
    ]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return [("nvidia-smi", _first_line(error))]
    return [("nvidia-smi", line.strip()) for line in out.splitlines()] or [("nvidia-smi", "no output")]


def versions() -> list[tuple[str, str]]:
    """(what, value) rows: date, Python, the libraries, CUDA and the GPUs."""
    rows = [
        ("date (UTC)", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")),
        ("host", platform.node()),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
    ]
    for module in ("ace_core", "numpy", "array_api_compat", "cupy", "torch", "jax", "jaxlib", "pytest"):
        rows.append((module, _version(module) if module != "ace_core" else _ace_core_version()))
    return rows + _cupy_facts() + _torch_facts() + _jax_facts() + _nvidia_smi()


def _ace_core_version() -> str:
    import ace_core

    return f"{getattr(ace_core, '__version__', '?')} from {Path(ace_core.__file__).parent}"


def gpu_backends() -> tuple[list[str], list[str]]:
    """(usable GPU backend names, 'name: why not' for the others)."""
    from ace_core.bench.backend_table import backend

    usable, missing = [], []
    for name in GPU_BACKENDS:
        reason = backend(name).unusable_reason()
        if reason is None:
            usable.append(name)
        else:
            missing.append(f"{name}: {reason}")
    return usable, missing


# --------------------------------------------------------------------------- tests


def run_tests(has_gpu: bool, timeout: float) -> bool:
    """The GPU tests in subprocesses; True when every run passed (or was skipped)."""
    if importlib.util.find_spec("pytest") is None:
        _say("pytest is not installed here: the tests were not run.")
        return True
    # -P (PYTHONSAFEPATH): the checkout's ace_core/ must not shadow the import root of gpu_report.sh.
    base = [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    # The kernels on a GPU, then the same kernel source run on the host (g++) and ptxas' resource
    # check (nvcc): these two skip where the compiler is missing.
    kernel_tests = list(KERNEL_TESTS)
    if importlib.util.find_spec("hypothesis") is None:
        # tests/conftest.py needs hypothesis; the CuPy kernel tests do not use its fixtures.
        _say(f"hypothesis is not installed: running {' '.join(kernel_tests)} without tests/conftest.py;")
        _say("the main suite's GPU variants need it and are not run.")
        runs = [base + ["--noconftest", *kernel_tests]]
    else:
        runs = [base + kernel_tests]
        if has_gpu:
            ignored = [f"--ignore={path}" for path in kernel_tests]
            runs.append(base + ["tests", "-k", "cupy or cuda or gpu", *ignored])
        else:
            _say("no GPU: the main suite's GPU variants are not run (they would all skip).")
    passed = True
    for command in runs:
        _say(f"\n$ {' '.join(command[1:])}")
        start = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO, timeout=timeout)
            code = result.returncode
        except subprocess.TimeoutExpired:
            _say(f"timed out after {timeout:.0f} s")
            code = 1
        _say(f"(exit {code}, {time.perf_counter() - start:.0f} s)")
        passed &= code in (0, 5)  # 5: nothing collected (e.g. CuPy missing)
    return passed


# --------------------------------------------------------------------------- memory


# Measured by ace_core.bench for every record (ace_core.bench.memory): peak_bytes, peak_how.


# --------------------------------------------------------------------------- benchmark


def run_benchmarks(names: list[str], quick: bool) -> list[dict[str, Any]]:
    """The protocol for every usable GPU backend, dtype and C; one dict per row."""
    from ace_core.bench import DEFAULT_MIN_TIME_S, DEFAULT_REPEAT, run_protocol
    from ace_core.bench.backend_table import backend

    repeat, min_time_s = (3, 0.0) if quick else (DEFAULT_REPEAT, DEFAULT_MIN_TIME_S)
    rows: list[dict[str, Any]] = []
    for dtype in DTYPES:
        chosen = []
        for name in names:
            problem = backend(name).dtype_problem(dtype)
            if problem is None:
                chosen.append(name)
            else:
                rows.append({"backend": name, "dtype": dtype, "classes": None, "error": problem})
        if not chosen:
            continue
        records = run_protocol(
            chosen,
            classes=CLASSES,
            dtype=dtype,
            repeat=repeat,
            min_time_s=min_time_s,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        for record in records:
            rows.append(record.as_dict())
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The benchmark rows as a Markdown table, then the notes and errors."""
    lines = [
        "| backend | dtype | C | ACE ms | CTC ms | ACE/CTC | copy ms | floor fraction "
        "| peak extra MiB | peak / grad |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        if row.get("classes") is None or row.get("error"):
            notes.append(f"- {row['backend']} {row['dtype']} C={row.get('classes')}: {row['error']}")
            continue
        peak = row.get("peak_bytes")
        grad_bytes = row["batch"] * row["steps"] * row["classes"] * row["itemsize"]
        lines.append(
            f"| {row['backend']} | {row['dtype']} | {row['classes']} | {_fmt(row['ace_ms'], '.3f')} "
            f"| {_fmt(row['ctc_ms'], '.3f')} | {_fmt(row['ace_over_ctc'], '.4f')} "
            f"| {_fmt(row['copy_ms'], '.3f')} "
            f"| {_fmt(row['floor_fraction'], '.2f')} | {_fmt(None if peak is None else peak / MIB, '.1f')} "
            f"| {_fmt(None if peak is None else peak / grad_bytes, '.2f')} |"
        )
        for note in row.get("notes") or []:
            notes.append(f"- {row['backend']} {row['dtype']} C={row['classes']}: {note}")
        if row.get("peak_how"):
            notes.append(
                f"- {row['backend']} {row['dtype']} C={row['classes']}: peak memory by {row['peak_how']}"
            )
    return lines + ([""] + notes if notes else [])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tests", action="store_true", help="skip the tests")
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark table")
    parser.add_argument("--quick", action="store_true", help="3 timed calls per measurement")
    parser.add_argument("--test-timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_report.md/.json")
    parser.add_argument("--import-root", help=argparse.SUPPRESS)  # set by gpu_report.sh
    args = parser.parse_args(argv)

    _say("# ace_core GPU report")
    _say()
    try:
        import ace_core  # noqa: F401
    except Exception as error:  # noqa: BLE001
        _say(f"ace_core cannot be imported: {_first_line(error)}")
        _say("It needs numpy, array-api-compat and array-api-extra; run through tools/gpu_report.sh.")
        return 2
    header = versions()
    if args.import_root:
        header.append(("import root", f"{args.import_root} (links into {REPO})"))
    usable, missing = gpu_backends()
    header.append(("GPU backends", ", ".join(usable) or "none"))
    for line in missing:
        header.append(("not usable", line))
    _say("| what | value |")
    _say("|---|---|")
    for what, value in header:
        _say(f"| {what} | {value} |")

    _say("\n## Tests\n")
    passed = True
    if args.no_tests:
        _say("skipped (--no-tests)")
    else:
        passed = run_tests(bool(usable), args.test_timeout)

    _say("\n## Benchmark (the benchmark protocol: B = 64, T = 144, target lengths 10..25; medians)\n")
    rows: list[dict[str, Any]] = []
    table: list[str] = []
    if args.no_bench:
        _say("skipped (--no-bench)")
    elif not usable:
        _say("no GPU: the GPU benchmark table was not measured.")
    else:
        rows = run_benchmarks(usable, args.quick)
        table = markdown_table(rows)
        for line in table:
            _say(line)
        _say(
            "\nfloor fraction = 1.5 × copy ms / ACE ms (3 passes over the scores at copy speed); "
            "peak / grad = peak extra memory over the gradient's size."
        )

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        text = ["# ace_core GPU report", "", "| what | value |", "|---|---|"]
        text += [f"| {what} | {value} |" for what, value in header]
        text += ["", f"tests passed: {passed}" if not args.no_tests else "tests: not run", ""]
        text += table or ["no GPU benchmark table (no GPU or --no-bench)"]
        (out / "gpu_report.md").write_text("\n".join(text) + "\n")
        (out / "gpu_report.json").write_text(
            json.dumps({"header": header, "rows": rows}, indent=1, default=str)
        )
        _say(f"\nwritten: {out / 'gpu_report.md'}, {out / 'gpu_report.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
