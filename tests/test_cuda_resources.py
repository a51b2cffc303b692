"""Static resources of the fused CUDA kernels (ptxas, no GPU): no register spills where C <= 8192.

``tools/cuda_resources.py`` compiles every kernel variant with nvcc for sm_80
and sm_90 and reads ptxas' report; its table is on the Performance page of the
docs. Skipped where nvcc is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ace_core.backends import _cupy_launch

_TOOL = Path(__file__).resolve().parent.parent / "tools" / "cuda_resources.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("cuda_resources", _TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cuda_resources", module)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()
pytestmark = pytest.mark.skipif(tool.nvcc() is None, reason="nvcc is not installed")


@pytest.fixture(scope="module")
def rows():
    return tool.resources()


def test_every_launched_kernel_is_reported_for_each_arch(rows):
    names = {name.replace(" ", "") for name in _cupy_launch.all_kernel_names()}
    for arch in tool.ARCHS:
        assert {r["kernel"].replace(" ", "") for r in rows if r["arch"] == arch} == names
    for r in rows:
        assert r["registers"] > 0 and r["shared"] >= 0 and r["stack"] >= 0


@pytest.mark.parametrize("arch", tool.ARCHS)
def test_no_spills_in_the_variants_for_up_to_8192_classes(rows, arch):
    spilled = [(r["kernel"], r["spill_stores"], r["spill_loads"]) for r in tool.spilling(rows, arch)]
    assert spilled == []
    # the check itself sees spills: the 16-item variants (C > 8192) do spill
    assert any(r["spill_stores"] for r in rows if r["arch"] == arch and r["items"] == 16)


def test_launch_bounds_hold_and_shared_memory_is_small(rows):
    for r in rows:
        assert r["registers"] <= tool.SM_REGISTERS // _cupy_launch.MAX_THREADS  # 64: a 1024-thread block fits
        assert r["shared"] <= 2 * 33 * 8  # the 33-value reduction scratch of the accumulation type


def test_occupancy_arithmetic():
    assert tool.occupancy(32, 132, 1024) == (2, 1.0)
    assert tool.occupancy(33, 132, 1024) == (1, 0.5)  # 33 registers round up to 40 a thread
    assert tool.occupancy(64, 132, 1024) == (1, 0.5)
    assert tool.occupancy(32, 0, 64) == (32, 1.0)  # at most 32 blocks
    assert tool.occupancy(56, 132, 928) == (1, 928 / 2048)  # C = 7357
    assert tool.occupancy(26, 100 * 1024, 256) == (2, 0.25)  # shared memory bound


def test_variant_ranges_partition_the_classes(rows):
    ranges = sorted({tool.serves(r) for r in rows if r["items"] is not None})
    assert ranges[0][0] == 1 and ranges[-1][1] == _cupy_launch.MAX_CLASSES
    for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False):
        assert low == high + 1
    for low, high in ranges:
        items, _ = _cupy_launch.launch_shape(high)
        assert _cupy_launch.launch_shape(low)[0] == items
