"""Tests of the benchmark protocol (``ace_core.bench``) and of the synthetic data generator.

The backends themselves (names, usability, devices, copies) are tested in test_backend_table.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest

import ace_core
from ace_core import bench
from ace_core.bench import backend_table
from ace_core.bench.backend_table import BACKENDS
from ace_core.bench.data import (
    MAX_TARGET_LENGTH,
    MIN_TARGET_LENGTH,
    synthetic_batch,
    synthetic_logits,
    synthetic_targets,
)
from ace_core.bench.machine import environment_header

TINY = {"batch": 4, "steps": 16}


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_protocol_defaults():
    data = synthetic_batch(classes=37, seed=0)
    assert data.logits.shape == (64, 144, 37)
    assert data.logits.dtype == np.float32 and data.logits.flags.c_contiguous
    assert data.targets.shape == (64, MAX_TARGET_LENGTH) and data.targets.dtype == np.int64
    assert data.target_lengths.shape == (64,) and data.target_lengths.dtype == np.int64
    assert np.all((data.target_lengths >= 10) & (data.target_lengths <= 25))
    assert np.array_equal(data.input_lengths, np.full(64, 144))
    assert data.blank == 0


@pytest.mark.parametrize("classes", [2, 37, 7357])
@pytest.mark.parametrize("blank", [0, 1])
def test_synthetic_targets_respect_ranges(classes, blank):
    targets, lengths = synthetic_targets(256, classes=classes, blank=blank, seed=3)
    assert np.all((lengths >= MIN_TARGET_LENGTH) & (lengths <= MAX_TARGET_LENGTH))
    inside = np.arange(targets.shape[1])[None, :] < lengths[:, None]
    labels = targets[inside]
    assert np.all((labels >= 0) & (labels < classes))
    assert not np.any(labels == blank)
    assert np.all(targets[~inside] == blank)  # padding is blank
    if classes > 2:
        assert len(np.unique(labels)) > 1


def test_synthetic_lengths_cover_the_range():
    _, lengths = synthetic_targets(2000, classes=37, seed=0)
    assert set(np.unique(lengths)) == set(range(MIN_TARGET_LENGTH, MAX_TARGET_LENGTH + 1))


def test_synthetic_is_seeded_and_deterministic():
    a = synthetic_batch(8, 30, 11, seed=5)
    b = synthetic_batch(8, 30, 11, seed=5)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    c = synthetic_batch(8, 30, 11, seed=6)
    assert not np.array_equal(a.logits, c.logits)
    assert not np.array_equal(a.targets, c.targets)


def test_synthetic_streams_are_independent():
    # Targets of a seed do not depend on T; logits do not depend on the targets' settings.
    a = synthetic_batch(8, 30, 11, seed=1)
    b = synthetic_batch(8, 60, 11, seed=1)
    assert np.array_equal(a.targets, b.targets)
    assert np.array_equal(a.logits, synthetic_logits(8, 30, 11, seed=1))


def test_synthetic_scale():
    base = synthetic_logits(2, 3, 4, seed=0)
    assert np.allclose(synthetic_logits(2, 3, 4, seed=0, scale=3.0), 3 * base)


def test_synthetic_counts_are_valid_ace_targets():
    data = synthetic_batch(6, 40, 9, seed=2)
    counts = ace_core.counts_from_targets(
        data.targets, data.target_lengths, num_classes=9, input_lengths=data.input_lengths
    )
    assert np.array_equal(counts.sum(axis=1), data.input_lengths)
    assert np.array_equal(counts[:, 1:].sum(axis=1), data.target_lengths)
    assert np.isfinite(float(ace_core.ace_loss(data.logits, counts)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch": 0},
        {"steps": 20},  # max_length 25 > steps
        {"classes": 1},
        {"seed": -1},
        {"blank": 5, "classes": 5},
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs):
    args = {"batch": 2, "steps": 30, "classes": 5, **kwargs}
    with pytest.raises(ValueError):
        synthetic_batch(**args)


# --------------------------------------------------------------------------- protocol pieces


def test_target_length_range():
    assert bench.target_length_range(144) == (10, 25)
    assert bench.target_length_range(50) == (10, 25)
    assert bench.target_length_range(16) == (8, 8)
    assert bench.target_length_range(1) == (1, 1)


def test_measure_counts_calls():
    calls = []
    timing = bench.measure(lambda: calls.append(1), repeat=5, min_time_s=0.0)
    assert timing.calls == 5 and len(calls) == 6  # one untimed warm-up
    assert all(t >= 0 for t in timing.samples)
    assert timing.min <= timing.median
    timing = bench.measure(lambda: None, repeat=1, min_time_s=0.01, warmup=False)
    assert sum(timing.samples) >= 0.01 or timing.calls == 100_000
    with pytest.raises(ValueError):
        bench.measure(lambda: None, repeat=0)


def test_select_backends():
    default = bench.select_backends()
    assert default[0] == "numpy"
    assert "array_api_strict" not in default
    assert all(backend_table.backend(name).usable for name in default)
    assert bench.select_backends("numpy,np, NumPy") == ["numpy"]
    with pytest.raises(bench.BenchError, match="unknown backend"):
        bench.select_backends("tensorflow")
    with pytest.raises(bench.BenchError, match="GPU"):
        bench.select_backends("numpy", dtype="float16")
    with pytest.raises(bench.BenchError, match="unknown dtype"):
        bench.select_backends("numpy", dtype="int8")


def test_select_backends_accepts_table_aliases():
    if not backend_table.backend("torch").usable:
        pytest.skip("torch is not usable here")
    assert bench.select_backends("torch:cpu,torch") == ["torch"]


@pytest.mark.parametrize("name", [b.name for b in BACKENDS if b.gpu])
def test_unusable_gpu_backend_is_a_bench_error(name):
    reason = backend_table.backend(name).unusable_reason()
    if reason is None:
        pytest.skip(f"{name} is usable here")
    with pytest.raises(bench.BenchError, match="not usable"):
        bench.select_backends(name)
    with pytest.raises(bench.BenchError, match="not usable"):
        bench.prepare_case(name, 5, **TINY)


def test_prepare_case_rejects_half_dtype_on_cpu():
    with pytest.raises(bench.BenchError, match="GPU"):
        bench.prepare_case("numpy", 5, dtype="bfloat16", **TINY)


def _usable(name: str) -> bool:
    return backend_table.backend(name).usable


CPU_BACKENDS = ["numpy", "array_api_strict", "torch", "jax"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_case_and_record(backend):
    if not _usable(backend):
        pytest.skip(f"{backend} is not usable here")
    case = bench.prepare_case(backend, 37, **TINY)
    assert case.nbytes == 4 * 16 * 37 * 4
    record = bench.run_case(case, repeat=2, min_time_s=0.0)
    assert record.error is None
    assert record.ace_ms > 0 and record.copy_ms > 0 and record.ace_calls >= 2
    assert record.copy_ms == min(t for t in (record.copy_alloc_ms, record.copy_into_ms) if t is not None)
    assert record.floor_ms == pytest.approx(1.5 * record.copy_ms)
    assert record.floor_fraction == pytest.approx(record.floor_ms / record.ace_ms)
    assert record.ace_gbps == pytest.approx(record.bytes_moved / record.ace_ms / 1e6)

    # The loss is the one of the same synthetic batch computed directly.
    low, high = bench.target_length_range(16)
    data = synthetic_batch(4, 16, 37, min_length=low, max_length=high, seed=0)
    counts = ace_core.counts_from_targets(data.targets, data.target_lengths, num_classes=37, input_lengths=16)
    assert record.ace_loss == pytest.approx(float(ace_core.ace_loss(data.logits, counts)), rel=1e-5)
    if backend == "jax":
        assert record.jit is True
        assert record.copy_into_ms is not None  # donated in-place copy
    else:
        assert record.jit is None
    # out=: the same call into one reused buffer, where arrays are mutable.
    if backend in ("numpy", "torch"):
        assert record.ace_out_ms > 0 and record.out_speedup == pytest.approx(
            record.ace_ms / record.ace_out_ms
        )
    else:
        assert record.ace_out_ms is None and record.out_speedup is None
    if backend == "numpy":
        assert record.peak_out_bytes is not None and record.peak_bytes is not None
    if importlib.util.find_spec("torch") is not None:
        import torch
        import torch.nn.functional as F

        expected = F.ctc_loss(
            F.log_softmax(torch.from_numpy(data.logits), -1).transpose(0, 1),
            torch.from_numpy(data.targets),
            torch.from_numpy(data.input_lengths),
            torch.from_numpy(data.target_lengths),
            reduction="mean",
        )
        assert record.ctc_loss == pytest.approx(float(expected), rel=1e-5)
        assert record.ace_over_ctc == pytest.approx(record.ace_ms / record.ctc_ms)
    json.dumps(record.as_dict())


def test_jax_eager_when_jit_disabled():
    if not _usable("jax"):
        pytest.skip("jax is not usable here")
    case = bench.prepare_case("jax", 5, jit=False, with_ctc=False, **TINY)
    assert case.jit is False and case.ctc is None
    assert math.isfinite(case.ace_value())


def test_run_protocol_records_failures(monkeypatch):
    from ace_core.bench import protocol

    real = protocol.prepare_case

    def flaky(backend, classes, **kwargs):
        if classes == 7:
            raise RuntimeError("boom")
        return real(backend, classes, **kwargs)

    monkeypatch.setattr(protocol, "prepare_case", flaky)  # where run_protocol looks it up
    lines = []
    records = bench.run_protocol(
        "numpy", classes=[5, 7], repeat=1, min_time_s=0.0, progress=lines.append, **TINY
    )
    assert [r.classes for r in records] == [5, 7]
    assert records[0].error is None and records[1].error == "RuntimeError: boom"
    assert records[1].as_dict()["ace_ms"] is None
    assert lines[0] == "[1/2] numpy C=5 float32 ..."
    assert any("failed" in line for line in lines)


def test_run_protocol_threads_are_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    (record,) = bench.run_protocol("numpy", classes=[5], repeat=1, min_time_s=0.0, threads=1, **TINY)
    assert record.torch_threads == 1
    assert torch.get_num_threads() == before


def test_run_protocol_rejects_bad_settings():
    with pytest.raises(bench.BenchError):
        bench.run_protocol("numpy", classes=[1], **TINY)
    with pytest.raises(bench.BenchError):
        bench.run_protocol("numpy", classes=[5], repeat=0, **TINY)
    with pytest.raises(bench.BenchError, match="threads"):
        bench.run_protocol("numpy", classes=[5], threads=0, **TINY)


def test_environment_header_is_json_ready():
    header = environment_header(batch=4)
    json.dumps(header)
    assert header["ace_core"] == ace_core.__version__
    assert header["config"] == {"batch": 4}
    assert header["libraries"]["numpy"] == np.__version__


@pytest.mark.parametrize(
    ("tunables", "expected"),
    [
        (None, False),
        ("", False),
        ("glibc.malloc.hugetlb=1", True),
        ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2", True),
        ("glibc.malloc.hugetlb=0", False),
    ],
)
def test_glibc_huge_pages_reads_the_tunable(tunables, expected):
    from ace_core.bench.machine import glibc_huge_pages

    environment = {} if tunables is None else {"GLIBC_TUNABLES": tunables}
    assert glibc_huge_pages(environment) is expected


@pytest.mark.parametrize("tunables", [None, "glibc.malloc.hugetlb=1"])
def test_the_table_notes_xla_buffers_without_huge_pages(tunables):
    # Under THP "madvise", XLA's buffers page-fault 4 KiB at a time unless glibc asks for huge pages.
    import io

    from ace_core.bench.report import print_bench_table

    record = bench.run_protocol("numpy", classes=[5], **TINY)[0]
    record = dataclasses.replace(record, backend="jax", device="cpu:0")
    header = environment_header(**TINY, seed=0, repeat=9)
    header["transparent_hugepages"] = "madvise"
    header["environment"] = {} if tunables is None else {"GLIBC_TUNABLES": tunables}
    out = io.StringIO()
    print_bench_table([record], header, out)
    assert ("XLA's CPU buffers are not huge-page backed" in out.getvalue()) is (tunables is None)
    assert (f"GLIBC_TUNABLES={tunables}" in out.getvalue()) is (tunables is not None)
