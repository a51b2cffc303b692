"""Tests of the backend table (``ace_core.bench.backend_table``): names, usability, data on the device."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from ace_core.bench import backend_table
from ace_core.bench.backend_table import BACKENDS, backend, usable_backends

NAMES = ["numpy", "array_api_strict", "torch", "torch:cuda", "jax", "jax:gpu", "cupy"]
FRAMEWORKS = ("torch", "jax", "cupy", "array_api_strict")


def usable_or_skip(name: str) -> backend_table.Backend:
    entry = backend(name)
    if not entry.usable:
        pytest.skip(f"{name}: {entry.unusable_reason()}")
    return entry


@pytest.fixture
def fresh_usability():
    """Forget the cached usability checks before and after the test (they are monkeypatched)."""
    backend_table._unusable_reason.cache_clear()
    yield
    backend_table._unusable_reason.cache_clear()


# --------------------------------------------------------------------------- names


def test_names_and_kinds():
    assert [b.name for b in BACKENDS] == NAMES
    assert {b.name for b in BACKENDS if b.gpu} == {"torch:cuda", "jax:gpu", "cupy"}
    assert {b.library for b in BACKENDS} == {"numpy", "array_api_strict", "torch", "jax", "cupy"}


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("np", "numpy"),
        ("strict", "array_api_strict"),
        ("array-api-strict", "array_api_strict"),
        ("torch:cpu", "torch"),
        ("torch-cuda", "torch:cuda"),
        ("torch:cuda", "torch:cuda"),
        ("jax:cpu", "jax"),
        ("jax-gpu", "jax:gpu"),
        ("jax:cuda", "jax:gpu"),
        (" JAX_GPU ", "jax:gpu"),
        ("CuPy", "cupy"),
    ],
)
def test_aliases(alias, name):
    assert backend(alias).name == name


def test_every_name_and_alias_is_unique():
    spellings = [s for b in BACKENDS for s in (b.name, *b.aliases)]
    assert len(spellings) == len(set(spellings))
    for entry in BACKENDS:
        assert all(backend(s) is entry for s in (entry.name, *entry.aliases))


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'") as info:
        backend("tensorflow")
    for name in NAMES:
        assert name in str(info.value)


# --------------------------------------------------------------------------- usability


def test_numpy_is_always_usable():
    numpy = backend("numpy")
    assert numpy.usable and numpy.unusable_reason() is None
    assert numpy.version() == np.__version__
    assert numpy.devices() == ["cpu"] and numpy.device_name() == "cpu"
    assert numpy in usable_backends() and numpy in usable_backends(gpu=False)


def test_usable_backends_exclude_missing_gpu_ones_with_a_reason():
    usable = usable_backends()
    assert usable == [b for b in BACKENDS if b.usable]
    assert all(not b.gpu for b in usable_backends(gpu=False))
    assert all(b.gpu for b in usable_backends(gpu=True))
    for entry in BACKENDS:
        if entry not in usable:
            reason = entry.unusable_reason()
            assert isinstance(reason, str) and reason
            assert entry.devices() == [] and entry.details() == {}


def test_missing_library_is_reported(monkeypatch, fresh_usability):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real_find_spec(name, *a)
    )
    cupy = backend("cupy")
    assert cupy.unusable_reason() == "cupy is not installed"
    assert cupy not in usable_backends() and cupy not in usable_backends(gpu=True)


def test_torch_without_cuda_is_reported(monkeypatch, fresh_usability):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = backend("torch:cuda").unusable_reason()
    assert reason in ("this torch is built without CUDA", "torch sees no CUDA device")
    assert backend("torch:cuda") not in usable_backends()


def test_info_is_json_ready():
    reports = [b.info() for b in BACKENDS]
    json.dumps(reports)
    for report in reports:
        assert set(report) == {"name", "library", "usable", "version", "devices", "reason", "details"}
        assert report["usable"] == (report["reason"] is None)
        assert bool(report["devices"]) == report["usable"]


def test_listing_the_table_imports_no_framework():
    code = (
        "import sys, ace_core; from ace_core.bench import backend_table as t; "
        "assert [b.name for b in t.BACKENDS]; t.backend('torch-cuda'); "
        "[b.version() for b in t.BACKENDS]; "
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- data on the device


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch", "jax"])
def test_round_trip(name):
    entry = usable_or_skip(name)
    host = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    x = entry.asarray(host, "float32")
    assert entry.to_numpy(x).dtype == np.float32
    np.testing.assert_array_equal(entry.to_numpy(x), host)
    labels = entry.asarray(np.array([3, 1, 2]))
    np.testing.assert_array_equal(entry.to_numpy(labels), [3, 1, 2])
    entry.synchronize(x, (x, [labels]))
    assert "float32" in entry.dtypes()


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_bfloat16_comes_back_as_float32(name):
    entry = usable_or_skip(name)
    x = entry.asarray([1.0, 0.5, -2.0], "bfloat16")
    back = entry.to_numpy(x)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, [1.0, 0.5, -2.0])


def test_dtype_the_backend_lacks_is_a_value_error():
    numpy = backend("numpy")
    assert "bfloat16" not in numpy.dtypes()
    with pytest.raises(ValueError, match="numpy has no bfloat16"):
        numpy.asarray([1.0], "bfloat16")


def test_asarray_copy():
    numpy = backend("numpy")
    host = np.ones(3, dtype=np.float32)
    copied = numpy.asarray(host, copy=True)
    copied[0] = 5
    assert host[0] == 1


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch", "jax"])
def test_copy_into_and_jit(name):
    entry = usable_or_skip(name)
    x = entry.asarray(np.ones((4, 5), dtype=np.float32), "float32")
    run = entry.copy_into(x)
    if name == "array_api_strict":
        assert run is None  # no in-place copy in the standard
    else:
        run()
        run()

    def double(a):
        return a * 2

    compiled = entry.jit(double)
    assert entry.has_jit == (name == "jax")
    assert (compiled is double) == (not entry.has_jit)
    np.testing.assert_array_equal(entry.to_numpy(compiled(x)), 2 * np.ones((4, 5)))
    assert entry.torch_device() == "cpu"
