"""Smoke tests of the ``ace`` command (``ace_core.cli``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from ace_core import __version__
from ace_core.bench.backend_table import BACKENDS, backend
from ace_core.cli import main

# Keys every successful ``ace bench --json`` record has (documented in ace_core.bench.BenchRecord).
RECORD_KEYS = {
    "backend",
    "device",
    "classes",
    "dtype",
    "batch",
    "steps",
    "itemsize",
    "repeat",
    "ace_ms",
    "ace_min_ms",
    "ace_calls",
    "jit",
    "ctc_ms",
    "ctc_min_ms",
    "ctc_device",
    "ace_over_ctc",
    "copy_ms",
    "copy_alloc_ms",
    "copy_into_ms",
    "bytes_moved",
    "floor_ms",
    "floor_fraction",
    "ace_gbps",
    "copy_gbps",
    "ace_loss",
    "ctc_loss",
    "torch_threads",
    "notes",
    "error",
}
HEADER_KEYS = {"ace_core", "python", "platform", "cpu", "cpu_count", "libraries", "threads", "config"}
SMALL = ["--classes", "37", "--batch", "4", "--steps", "16"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ace_core.cli", *args], capture_output=True, text=True, timeout=300
    )


def has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: ace" in out
    assert "info" in out and "bench" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_usage_error_returns_2(capsys):
    assert main(["bench", "--repeat", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_info_runs_as_module_and_lists_numpy():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()]
    numpy_row = next(row for row in lines if row and row[0] == "numpy" and len(row) >= 3)
    assert numpy_row[1] == "yes"
    for name in ("array_api_strict", "torch", "torch:cuda", "jax", "jax:gpu", "cupy"):
        assert any(row and row[0] == name for row in lines), name


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ace_core"] == __version__
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["numpy"]["usable"] is True
    assert backends["numpy"]["devices"] == ["cpu"]
    assert list(backends) == [b.name for b in BACKENDS]  # the backend table, in its order
    for status in backends.values():
        assert status["usable"] or status["reason"]
        assert status == backend(status["name"]).info()


def test_bench_json_numpy(capsys):
    code = main(["bench", "--backend", "numpy", *SMALL, "--repeat", "3", "--min-time-ms", "0", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert HEADER_KEYS <= set(report["header"])
    assert report["header"]["config"]["batch"] == 4
    (record,) = report["records"]
    assert RECORD_KEYS <= set(record)
    assert record["error"] is None
    assert (record["backend"], record["classes"], record["batch"], record["steps"]) == ("numpy", 37, 4, 16)
    for key in ("ace_ms", "ace_min_ms", "copy_ms", "copy_alloc_ms", "floor_ms", "ace_gbps", "copy_gbps"):
        assert record[key] > 0, key
    assert record["ace_calls"] >= 3
    assert record["bytes_moved"] == 3 * 4 * 16 * 37 * 4
    assert record["floor_fraction"] == pytest.approx(1.5 * record["copy_ms"] / record["ace_ms"])
    assert math.isfinite(record["ace_loss"]) and record["ace_loss"] > 0
    if has_torch():
        assert record["ctc_ms"] > 0
        assert record["ace_over_ctc"] == pytest.approx(record["ace_ms"] / record["ctc_ms"])
        assert record["ctc_device"] == "cpu"
    else:
        assert record["ctc_ms"] is None
    assert "[1/1] numpy C=37" in captured.err  # progress on stderr


def test_bench_table(capsys):
    code = main(["bench", "--backend", "numpy", *SMALL, "--repeat", "1", "--min-time-ms", "0", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err == ""
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.startswith("backend"))
    for column in ("device", "C", "dtype", "ACE ms", "CTC ms", "ACE/CTC", "copy ms", "floor"):
        assert column in header
    assert any(line.split()[:3] == ["numpy", "cpu", "37"] for line in lines if line.strip())


def test_bench_thp_is_recorded():
    result = run_cli("bench", "--thp", "--backend", "numpy", *SMALL, "--repeat", "1", "--json", "-q")
    assert result.returncode == 0, result.stderr
    header = json.loads(result.stdout)["header"]
    assert header["environment"]["THP_MEM_ALLOC_ENABLE"] == "1"


def test_bench_accepts_backend_aliases(capsys):
    code = main(["bench", "--backend", "NP", *SMALL, "--repeat", "1", "--min-time-ms", "0", "--json", "-q"])
    assert code == 0
    assert [r["backend"] for r in json.loads(capsys.readouterr().out)["records"]] == ["numpy"]


def test_bench_unusable_backend(capsys):
    unusable = [b for b in BACKENDS if not b.usable]
    if not unusable:
        pytest.skip("every backend is usable here")
    assert main(["bench", "--backend", unusable[0].name, *SMALL]) == 2
    assert unusable[0].unusable_reason() in capsys.readouterr().err


def test_bench_bad_backend(capsys):
    assert main(["bench", "--backend", "numpyy", *SMALL]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_bench_half_dtype_needs_gpu_backend(capsys):
    assert main(["bench", "--backend", "numpy", "--dtype", "bfloat16", *SMALL]) == 2
    assert "GPU" in capsys.readouterr().err


def test_cli_imports_no_framework():
    code = (
        "import sys, ace_core.cli, ace_core.bench, ace_core.bench.machine; "
        "ace_core.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'jax', 'cupy', 'array_api_strict') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
