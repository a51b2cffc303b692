"""The fused CUDA kernels run on the host, against the generic array-API kernel, without a GPU.

``tests/cuda_host/harness.py`` compiles the kernel source of
``ace_core.backends._cupy_source`` as C++ (one host thread per CUDA thread)
and ``ace_core.backends.cupy`` itself is imported against a host stand-in of
``cupy`` whose ``RawModule`` launches through the harness: so the kernel text,
the launch geometry (grid, block, template arguments), the argument lists with
their scalar types, and the Python functions of the CuPy path all run here.
The reference is :mod:`ace_core._kernel` in float64 on the very values each
storage dtype holds. What only a GPU can check (NVRTC, the device's own exp
and log, timing, streams, CUDA graphs) is in ``tests/test_backend_cupy.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from _helpers import assert_close
from array_api_compat import numpy as np_namespace
from cuda_host import harness
from cuda_host.problems import (
    ATOL,
    RTOL,
    Problem,
    accumulation,
    as_float64,
    bfloat16_bits,
    large_logits_problem,
    make_problem,
    reference,
    residuals,
)

from ace_core.backends import _cupy_launch as launch
from ace_core.backends import _cupy_source

pytestmark = pytest.mark.skipif(harness.available() is not None, reason=str(harness.available()))

XP = np_namespace


@pytest.fixture(scope="module")
def fused() -> Any:
    """``ace_core.backends.cupy`` on the host stand-in of CuPy (its kernels built once)."""
    harness.library()
    with harness.host_cupy() as module:
        yield module


def run_fused(fused: Any, problem: Problem, storage: str, pad: float | None = None):
    """forward_logits, then backward_logits on residuals: ``((4 statistics, grad), stored values)``."""
    stored, kw, values = problem.stored(storage, pad)
    scores = harness.as_host_array(stored)
    acc = accumulation(storage)
    assert fused.is_supported(scores, acc, **kw)
    statistics = fused.forward_logits(XP, scores, problem.valid, acc, **kw)
    lengths = problem.lengths.astype(acc)
    res = residuals(statistics, problem.valid, lengths)
    grad = fused.backward_logits(
        XP, problem.grad_out.astype(acc), scores, problem.counts.astype(acc), res, acc, **kw
    )
    assert all(x.dtype == acc for x in statistics)
    assert grad.dtype == stored.dtype and grad.shape == stored.shape
    return (*statistics, grad), values


def compare(problem: Problem, results: tuple, expected: tuple, storage: str, grad_storage: str = "") -> None:
    """The fused results against the float64 reference, statistic by statistic."""
    precision = "float64" if storage == "float64" else "float32"
    rtol, atol = RTOL[precision], ATOL[precision]
    step_max, step_log_sum, mass_max, mass_log_sum = (as_float64(x) for x in results[:4])
    grad = as_float64(results[4], grad_storage)
    want = expected
    rows = problem.valid3()[:, :, 0]
    assert np.array_equal(step_max[rows], want[0][rows])  # the max is exact in any precision
    assert_close(step_log_sum, want[1], rtol=rtol, atol=atol, kind=f"host fused step_log_sum {storage}")
    # log Σ_t y everywhere (-inf where a class or a sample has no mass) ...
    assert_close(
        mass_max + mass_log_sum,
        want[2] + want[3],
        rtol=rtol,
        atol=atol,
        kind=f"host fused log_mass {storage}",
    )
    # ... and each part where the class has mass: the same split as the generic kernel's
    has_mass = np.isfinite(want[2] + want[3])
    assert_close(mass_max[has_mass], want[2][has_mass], rtol=rtol, atol=atol)
    assert_close(mass_log_sum[has_mass], want[3][has_mass], rtol=rtol, atol=atol)
    log_lengths = np.log(np.maximum(problem.lengths, 1))[:, None] + 1e-6
    assert np.all((mass_log_sum >= 0) & (mass_log_sum <= log_lengths))
    grad_precision = grad_storage or precision
    assert_close(
        grad,
        want[4],
        rtol=RTOL[grad_precision],
        atol=ATOL[grad_precision],
        kind=f"host fused grad {grad_precision}",
    )
    if problem.valid is not None:
        masked = ~problem.valid
        assert np.all(grad[masked] == 0) and not np.any(np.signbit(grad[masked]))  # +0


# --------------------------------------------------------------------------- launch geometry


def test_launch_shapes_cover_the_classes():
    for classes in (
        1,
        2,
        3,
        31,
        32,
        33,
        37,
        512,
        513,
        1000,
        1024,
        1025,
        7357,
        8192,
        8193,
        launch.MAX_CLASSES,
    ):
        items, threads = launch.launch_shape(classes)
        assert items in launch.ITEMS_CHOICES and threads % 32 == 0 and 32 <= threads <= launch.MAX_THREADS
        assert items * threads >= classes
        assert items * (threads - 32) < classes or items == 1  # no whole idle warp
        smaller = [i for i in launch.ITEMS_CHOICES if i < items]
        assert all(i * launch.MAX_THREADS < classes for i in smaller)  # the fewest items that fit
    assert launch.launch_shape(launch.MAX_CLASSES + 1) is None
    assert launch.launch_shape(0) is None


@pytest.mark.parametrize("batch", [1, 2, 3, 64, 1000])
@pytest.mark.parametrize("steps", [1, 2, 7, 8, 9, 144, 1000, 4099])
def test_tiles_cover_every_step_once(batch, steps):
    rows, tiles = launch.tiling(batch, steps)
    assert rows >= 1 and tiles >= 1
    assert (tiles - 1) * rows < steps <= tiles * rows  # no empty tile, none missing
    assert tiles <= max(launch.MIN_TILES_PER_SAMPLE, -(-launch.TARGET_BLOCKS // batch))  # partials O(B·C)


def test_plan_takes_what_the_kernels_cover():
    assert launch.plan((2, 3, 7357), np.float32, np.float32, False).items == 8
    assert launch.plan((2, 3, 5), np.float16, np.float32, False).storage == "ace_f16"
    assert launch.plan((2, 3, 5), np.uint16, np.float32, True).storage == "ace_bf16"
    assert launch.plan((2, 3, launch.MAX_CLASSES + 1), np.float32, np.float32, False) is None
    assert launch.plan((0, 3, 5), np.float32, np.float32, False) is None
    assert launch.plan((2, 3, 5), np.int32, np.float32, False) is None
    assert launch.plan((2, 3, 5), np.float32, np.float16, False) is None
    with pytest.raises(TypeError, match="bfloat16_bits"):
        launch.plan((2, 3, 5), np.float32, np.float32, True)
    with pytest.raises(ValueError, match="bfloat16"):
        launch.plan((2, 3, launch.MAX_CLASSES + 1), np.uint16, np.float32, True)


def test_every_variant_is_built_and_matches_the_source_signatures():
    signatures = harness.kernel_signatures()
    assert set(signatures) == {"ace_forward_tiles", "ace_combine_tiles", "ace_backward_rows"}
    names = harness.launches()
    assert set(harness.library().names) == set(names)
    assert len(names) == 2 * len(launch.all_variants()) + 2  # forward and backward per variant, 2 combines


def test_launches_use_the_planned_geometry(fused):
    problem = make_problem(3, 9, 1100, "lengths", seed=21)
    recorded: list[launch.Launch] = []
    variant = launch.plan(problem.logits.shape, np.float32, np.float32, False)
    scores, _, _ = problem.stored("float32")

    def record(step: launch.Launch) -> None:
        recorded.append(step)
        harness.run(step)

    valid = launch.valid_argument(np, problem.valid, 3, 9)
    statistics = launch.forward(np, record, variant, scores, valid)
    launch.backward(
        np, record, variant, problem.grad_out, scores, problem.counts, valid, problem.lengths, *statistics
    )
    rows, tiles = launch.tiling(3, 9)
    assert (variant.items, variant.threads, tiles) == (2, 576, 2)
    assert [(s.kernel, s.grid, s.block) for s in recorded] == [
        (_cupy_source.forward_name("float", "float", 2), (3 * tiles,), (576,)),
        (
            _cupy_source.combine_name("float"),
            (-(-3 * 1100 // launch.COMBINE_THREADS),),
            (launch.COMBINE_THREADS,),
        ),
        (_cupy_source.backward_name("float", "float", 2), (3 * 9,), (576,)),
    ]
    assert recorded[0].args[2:6] == (9, 1100, rows, tiles)
    # the CuPy path compiles each variant's three kernels in one RawModule, once
    harness.made.clear()
    run_fused(fused, problem, "float32")
    run_fused(fused, problem, "float32")
    assert harness.made == [launch.kernel_names(variant)]
    assert ("float", "float", 2) in fused.compiled_variants()


# --------------------------------------------------------------------------- argument types

_TOY = r"""
template <typename Acc>
__global__ void __launch_bounds__(256) toy(const Acc* __restrict__ x, const float scale, const int n,
                                           const long long total, Acc* __restrict__ y)
{ }
"""


def test_scalar_arguments_must_have_the_kernels_types():
    signatures = harness.kernel_signatures(_TOY)
    x, y = np.zeros(4, np.float32), np.zeros(4, np.float32)
    good = (x, np.float32(2.0), np.int32(4), np.int64(4), y)
    harness.check_arguments("toy<float>", good, signatures)
    wrong = {
        1: [2.0, np.float64(2.0)],  # a Python float or float64 where the kernel takes float
        2: [4, np.int64(4), np.uint32(4)],  # a Python int or another width where it takes int
        3: [4, np.int32(4)],  # where it takes long long
    }
    for position, values in wrong.items():
        for value in values:
            args = good[:position] + (value,) + good[position + 1 :]
            with pytest.raises(
                TypeError, match=harness.kernel_signatures(_TOY)["toy"].parameters[position].name
            ):
                harness.check_arguments("toy<float>", args, signatures)
    for bad_x in (np.zeros(4, np.float64), np.zeros(8, np.float32)[::2], [0.0] * 4, 0):
        with pytest.raises(TypeError, match="`x`"):
            harness.check_arguments("toy<float>", (bad_x, *good[1:]), signatures)
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(TypeError, match="writes"):
        harness.check_arguments("toy<float>", (*good[:4], read_only), signatures)
    harness.check_arguments("toy<float>", (launch.NULL, *good[1:]), signatures)  # a null pointer
    with pytest.raises(TypeError, match="takes 5 arguments"):
        harness.check_arguments("toy<float>", good[:4], signatures)


def test_the_real_launches_pass_the_type_check_and_bad_ones_fail():
    problem = make_problem(2, 5, 40, "mask", seed=22)
    variant = launch.plan(problem.logits.shape, np.float64, np.float64, False)
    seen: list[launch.Launch] = []
    scores, _, _ = problem.stored("float64")
    valid = launch.valid_argument(np, problem.valid, 2, 5)
    launch.forward(np, seen.append, variant, scores, valid)  # not run: forged below
    forward = seen[0]
    harness.check_arguments(forward.kernel, forward.args)
    for position, value in ((2, 5), (3, np.int64(40)), (0, scores.astype(np.float32))):
        args = forward.args[:position] + (value,) + forward.args[position + 1 :]
        with pytest.raises(TypeError):
            harness.run(forward._replace(args=args))
    combine = seen[1]
    with pytest.raises(TypeError, match="total"):
        harness.run(combine._replace(args=combine.args[:4] + (np.int32(80),) + combine.args[5:]))
    with pytest.raises(RuntimeError, match="multiple of 32"):
        harness.run(forward._replace(block=(48,)))


def test_guard_zones_see_stray_reads_and_writes():
    values = np.arange(6, dtype=np.float32)
    read = harness._Guarded(values, written=False, poison=True)
    past = np.frombuffer(read.raw, dtype=np.float32)[harness.GUARD_BYTES // 4 + 6]
    assert np.isnan(past)  # a read past an input gives NaN
    written = harness._Guarded(values, written=True, poison=True)
    assert np.all(np.isnan(np.frombuffer(written.raw, dtype=np.float32)[harness.GUARD_BYTES // 4 :][:6]))
    assert written.guards_intact()
    poison_nan = np.array([0xFFFFFFFF], np.uint32).view(np.float32)[0]
    for stray in (poison_nan, np.float32(np.nan), np.float32(1.0)):
        written.raw[harness.GUARD_BYTES + 24 : harness.GUARD_BYTES + 28] = np.frombuffer(
            stray.tobytes(), np.uint8
        )
        assert not written.guards_intact()
        written.raw[harness.GUARD_BYTES + 24 : harness.GUARD_BYTES + 28] = 0xA5


# --------------------------------------------------------------------------- half conversions


def test_half_conversions_round_as_cvt_rn():
    every_half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    widened = harness.widen_half(every_half)
    exact = every_half.view(np.float16).astype(np.float32)
    nan = np.isnan(exact)
    assert np.array_equal(np.isnan(widened), nan)
    assert np.array_equal(widened[~nan].view(np.uint32), exact[~nan].view(np.uint32))  # signed zeros too

    finite = exact[np.isfinite(exact)].astype(np.float64)
    ordered = np.unique(finite)
    midpoints = (ordered[1:] + ordered[:-1]) / 2  # exact in float32: one bit more than a half
    tests = [finite, midpoints, -midpoints, [65504.0, 65519.99, 65520.0, 65536.0, 1e30, 2.0**-25, 2.0**-26]]
    near = np.concatenate([np.asarray(t, np.float64) for t in tests]).astype(np.float32)
    up = np.nextafter(near, np.float32(np.inf))
    down = np.nextafter(near, np.float32(-np.inf))
    rng = np.random.default_rng(23)
    anything = rng.integers(0, 1 << 32, size=1 << 18, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45], np.float32)
    values = np.concatenate([near, up, down, anything, special, -special])
    half, bf16 = harness.half_conversions(values)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)  # NumPy rounds to nearest even, subnormals and overflow included
    is_nan = np.isnan(values)
    assert np.all(np.isnan(half.view(np.float16)[is_nan]))
    assert np.array_equal(half[~is_nan], expected.view(np.uint16)[~is_nan])

    # bfloat16 against the nearest of the two neighbours, ties to the even one, in float64
    finite = np.isfinite(values)
    bits = values[finite].view(np.uint32)
    low_bits = bits & 0xFFFF0000
    high_bits = low_bits + 0x10000
    low = low_bits.view(np.float32).astype(np.float64)
    overflows = (high_bits & 0x7FFFFFFF) == 0x7F800000  # above the largest bfloat16: 2^128 plays inf
    with np.errstate(invalid="ignore"):
        high = np.where(overflows, np.copysign(2.0**128, low), high_bits.view(np.float32).astype(np.float64))
    exact_value = values[finite].astype(np.float64)
    above, below = np.abs(high - exact_value), np.abs(exact_value - low)
    take_high = (above < below) | ((above == below) & (((bits >> 16) & 1) == 1))
    nearest = np.where(take_high, high_bits >> 16, bits >> 16).astype(np.uint16)
    assert np.array_equal(bf16[finite], nearest)
    assert np.all(np.isnan(as_float64(bf16[is_nan], "bfloat16")))
    assert np.array_equal(bf16[~is_nan], bfloat16_bits(values)[~is_nan])


# --------------------------------------------------------------------------- against the generic kernel

SMALL = [
    (2, 5, 1),  # C = 1
    (3, 4, 2),
    (4, 19, 37),  # the paper's small alphabet, 3 tiles a sample
    (3, 1, 37),  # T = 1
    (1, 97, 129),  # many tiles for one sample
    (70, 3, 5),  # B larger than the tile target
]


@pytest.mark.parametrize("shape", SMALL, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", ["none", "lengths", "mask"])
@pytest.mark.parametrize("storage", ["float64", "float32"])
def test_matches_generic_kernel(fused, shape, mask, storage):
    problem = make_problem(*shape, mask)
    results, values = run_fused(fused, problem, storage)
    compare(problem, results, reference(problem, values), storage)


# Each ITEMS variant at the edges of the C it serves (1024 threads a block at most), and MAX_CLASSES.
EDGES = [
    (3, 3, 1024, "lengths"),  # 1 item, 1024 threads
    (2, 3, 1025, "mask"),  # 2 items
    (2, 2, 2048, "none"),
    (2, 3, 2049, "lengths"),  # 4 items
    (1, 2, 4096, "none"),
    (2, 3, 4097, "mask"),  # 8 items
    (2, 2, 7357, "none"),  # the paper's large alphabet
    (1, 2, 8192, "none"),
    (2, 2, 8193, "lengths"),  # 16 items
    (2, 2, launch.MAX_CLASSES, "mask"),
]


@pytest.mark.parametrize("case", EDGES, ids=lambda c: f"{c[2]}-{c[3]}")
def test_every_items_variant_at_its_limits(fused, case):
    batch, steps, classes, mask = case
    problem = make_problem(batch, steps, classes, mask, seed=classes)
    storage = "float64" if classes in (1025, 8193) else "float32"
    results, values = run_fused(fused, problem, storage)
    compare(problem, results, reference(problem, values), storage)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 19, 37), (2, 5, 3000)], ids=lambda s: "x".join(map(str, s)))
def test_half_inputs_accumulate_in_float32(fused, storage, shape):
    problem = make_problem(*shape, "lengths")
    results, values = run_fused(fused, problem, storage)
    # accumulated in float32 on exact inputs: float32 accuracy; the gradient rounded once to storage
    compare(problem, results, reference(problem, values), "float32", grad_storage=storage)


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "float16"])
def test_masked_steps_are_never_read(fused, storage):
    problem = make_problem(4, 13, 37, "mask", seed=3)
    clean, _ = run_fused(fused, problem, storage, pad=0.0)
    for pad in (np.nan, -np.inf, np.inf, 1e30):
        padded, _ = run_fused(fused, problem, storage, pad=pad)
        for got, want in zip(padded, clean, strict=True):
            assert np.array_equal(got, want)  # bitwise
    grad = as_float64(clean[4], storage)
    assert np.all(grad[~problem.valid] == 0) and np.all(np.isfinite(grad))


def test_samples_without_valid_steps_stay_apart(fused):
    problem = make_problem(5, 11, 37, "lengths", seed=1)  # sample 1 has T_b = 0
    (step_max, step_log_sum, mass_max, mass_log_sum, grad), _ = run_fused(fused, problem, "float32")
    assert np.all(mass_max[1] == -np.inf) and np.all(mass_log_sum[1] == 0) and np.all(grad[1] == 0)
    assert np.all(step_max[1] == 0) and np.allclose(step_log_sum[1], math.log(37))
    others = [0, 2, 3, 4]
    assert np.all(np.isfinite(mass_max[others])) and np.all(np.isfinite(grad[others]))


@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["1e4", "30"])
def test_large_logits_match_generic_kernel(fused, storage, kind):
    problem = large_logits_problem(kind)
    results, values = run_fused(fused, problem, storage)
    compare(problem, results, reference(problem, values), storage)
    grad = results[4]
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() <= 1  # the bound |∂L/∂a| <= 1


@pytest.mark.parametrize(
    ("storage", "big"), [("float32", 3e38), ("float64", 1e300), ("bfloat16", 3e38), ("float16", 6e4)]
)
def test_tied_steps_at_extreme_logits_share_the_pull_exactly(fused, storage, big):
    # Two identical steps: r = 1/2 exactly for every class, so the pulls are N̄/2. A one-part
    # log Σ_t y rounds log 2 away against |log y| ~ big and would give r = 1 (|grad| up to 2).
    # The spread of a row stays within the dtype's range (a - max is finite).
    rows = np.array([[0.0, big / 2, big], [-big, 0.0, -big / 3], [big, big, 0.0]])
    logits = np.concatenate([np.repeat(rows[None, i : i + 1], 2, axis=1) for i in range(3)])  # (3, 2, 3)
    counts = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    problem = Problem(logits, None, np.full(3, 2.0), counts, np.ones(3))
    (*statistics, grad), values = run_fused(fused, problem, storage)
    grad = as_float64(grad, storage)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() <= 1
    ulps = {"float64": 4e-16}.get(storage, 2.4e-7)  # two float32 ulps (the half types accumulate in float32)
    # sample 0: y = (0, 0, 1) at both steps, pulls N̄/2 = 1/4 on classes 0 and 1, s = 1/2
    assert_close(grad[0], [[-0.25, -0.25, 0.5]] * 2, rtol=ulps)
    # sample 1: y = (0, 1, 0): class 1 pulled by 1/4 and pushed by y s = 1/2, class 2 pulled by 1/4
    assert_close(grad[1], [[0.0, 0.25, -0.25]] * 2, rtol=ulps)
    # sample 2: classes 0 and 1 tie at y = 1/2 (class 1 carries no label)
    assert_close(grad[2], [[0.0, 0.25, -0.25]] * 2, rtol=ulps, atol=ulps)
    expected = reference(problem, values)
    assert_close(grad, expected[4], rtol=RTOL["float32"], atol=ATOL["float32"])
    # every class of every sample has two tied steps: log Σ_t exp(log y - max) = log 2
    log_two = np.log(np.asarray(2.0, dtype=accumulation(storage)))
    assert_close(statistics[3], np.full((3, 3), log_two), rtol=ulps)


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_bitwise_repeatable(fused, storage):
    problem = make_problem(3, 10, 1500, "lengths", seed=4)
    first, _ = run_fused(fused, problem, storage)
    second, _ = run_fused(fused, problem, storage)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b, equal_nan=True) and a.dtype == b.dtype


def test_backward_takes_the_generic_forwards_residuals(fused):
    problem = make_problem(3, 21, 37, "mask", seed=5)
    stored, _, values = problem.stored("float64")
    expected = reference(problem, values)
    generic = residuals(expected[:4], problem.valid, problem.lengths)
    grad = fused.backward_logits(
        XP, problem.grad_out, harness.as_host_array(stored), problem.counts, generic, np.float64
    )
    assert_close(grad, expected[4], rtol=RTOL["float64"], atol=ATOL["float64"])


# --------------------------------------------------------------------------- the Python entry points


def test_forward_backward_logits_is_the_two_halves_and_writes_out(fused):
    problem = make_problem(3, 21, 37, "mask", seed=5)
    stored, _, _ = problem.stored("float32")
    scores = harness.as_host_array(stored)
    before = stored.copy()
    halves, _ = run_fused(fused, problem, "float32")
    args = (problem.grad_out.astype(np.float32), scores, problem.counts.astype(np.float32), problem.valid)
    lengths = problem.lengths.astype(np.float32)
    together = fused.forward_backward_logits(XP, *args, lengths, np.float32)
    assert len(together) == 5
    for a, b in zip(together, halves, strict=True):
        assert np.array_equal(a, b)
    out = harness.as_host_array(np.full(stored.shape, 7.0, np.float32))
    given = fused.forward_backward_logits(XP, *args, lengths, np.float32, out=out)
    assert given[4] is out and np.array_equal(out, halves[4])
    assert np.array_equal(stored, before)


def test_bad_out_buffers_raise_and_change_nothing(fused):
    problem = make_problem(2, 4, 5, "none", seed=6)
    stored, _, _ = problem.stored("float32")
    scores = harness.as_host_array(stored)
    before = stored.copy()
    args = (problem.grad_out.astype(np.float32), scores, problem.counts.astype(np.float32), None)
    lengths = problem.lengths.astype(np.float32)
    shape = stored.shape
    bad = [
        (TypeError, "dtype", np.zeros(shape, np.float64)),
        (ValueError, "shape", np.zeros((2, 4, 6), np.float32)),
        (ValueError, "contiguous", np.zeros((2, 5, 4), np.float32).transpose(0, 2, 1)),
        (ValueError, "overlaps", stored),
        (TypeError, "array", [0.0]),
    ]
    for error, match, out in bad:
        out = harness.as_host_array(out) if isinstance(out, np.ndarray) else out
        snapshot = np.array(out, copy=True)
        with pytest.raises(error, match=match):
            fused.forward_backward_logits(XP, *args, lengths, np.float32, out=out)
        assert np.array_equal(np.asarray(out), snapshot)
    assert np.array_equal(stored, before)


def test_bad_arguments_raise(fused):
    problem = make_problem(2, 3, 5, "none")
    stored, _, _ = problem.stored("float32")
    scores = harness.as_host_array(stored)
    with pytest.raises(TypeError, match="bfloat16_bits"):
        fused.forward_logits(XP, scores, None, np.float32, bfloat16_bits=True)
    with pytest.raises(ValueError, match="valid"):
        fused.forward_logits(XP, scores, np.ones((2, 4), dtype=bool), np.float32)
    statistics = fused.forward_logits(XP, scores, None, np.float32)
    res = residuals(statistics, None, problem.lengths.astype(np.float32))
    with pytest.raises(ValueError, match="counts"):
        fused.backward_logits(XP, problem.grad_out, scores, problem.counts[:, :4], res, np.float32)
    with pytest.raises(ValueError, match="mass_max"):
        fused.backward_logits(
            XP, problem.grad_out, scores, problem.counts, res._replace(mass_max=statistics[2][:1]), np.float32
        )
    assert np.array_equal(stored, problem.stored("float32")[0])


def test_non_contiguous_scores_are_copied_and_left_unchanged(fused):
    problem = make_problem(3, 9, 37, "lengths", seed=6)
    stored, _, values = problem.stored("float32")
    transposed = np.ascontiguousarray(stored.transpose(1, 0, 2)).transpose(1, 0, 2).view(harness.HostArray)
    assert not transposed.flags.c_contiguous
    before = np.array(transposed)
    out = fused.forward_backward_logits(
        XP,
        problem.grad_out.astype(np.float32),
        transposed,
        problem.counts.astype(np.float32),
        problem.valid,
        problem.lengths.astype(np.float32),
        np.float32,
    )
    assert_close(out[4], reference(problem, values)[4], rtol=RTOL["float32"], atol=ATOL["float32"])
    assert np.array_equal(transposed, before)


def test_falls_back_to_the_generic_kernel_above_max_classes(fused):
    problem = make_problem(1, 2, launch.MAX_CLASSES + 1, "none", seed=10)
    stored, _, values = problem.stored("float32")
    scores = harness.as_host_array(stored)
    assert not fused.is_supported(scores, np.float32)
    harness.made.clear()
    out = fused.forward_backward_logits(
        XP,
        problem.grad_out.astype(np.float32),
        scores,
        problem.counts.astype(np.float32),
        None,
        problem.lengths.astype(np.float32),
        np.float32,
    )
    assert harness.made == []  # no kernel compiled
    assert_close(out[4], reference(problem, values)[4], rtol=RTOL["float32"], atol=ATOL["float32"])
