"""The fused CuPy kernels (``ace_core.backends.cupy``) on a GPU, against the generic array-API kernel.

The reference is :mod:`ace_core._kernel` in float64 on the host, on the very
values each storage dtype holds (``tests/cuda_host/problems.py``, shared with
the host harness tests of ``tests/test_cuda_host.py``, which run the same
kernel source and launches without a GPU). The module is skipped without
CuPy; the tests that launch kernels are skipped without a CUDA device (the
import and NVRTC tests need none). What only a GPU shows: NVRTC's compilation
and the device's own ``expf``/``logf``, streams, CUDA graphs, DLPack hand-over
from torch, and 64-bit offsets past 2**31 elements.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from _helpers import assert_close
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

cupy = pytest.importorskip("cupy")

import ace_core  # noqa: E402
from ace_core._dispatch import kernel_for  # noqa: E402
from ace_core.backends import _cupy_launch  # noqa: E402
from ace_core.backends import cupy as fused  # noqa: E402
from ace_core.backends._cupy_source import SOURCE  # noqa: E402


def _device_count() -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - any CUDA runtime error means no usable GPU
        return 0


HAS_GPU = _device_count() > 0
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="CuPy sees no CUDA device")


def _xp() -> Any:
    from array_api_compat import cupy as xp

    return xp


def host(x: Any, storage: str = "") -> np.ndarray:
    """A result on the host as float64 (bfloat16 bit patterns decoded)."""
    return as_float64(cupy.asnumpy(x), storage)


def on_device(problem: Problem, dtype: Any) -> dict[str, Any]:
    """valid, lengths, counts, grad_out on the GPU, in ``dtype``."""
    return {
        "valid": None if problem.valid is None else cupy.asarray(problem.valid),
        "lengths": cupy.asarray(problem.lengths, dtype=dtype),
        "counts": cupy.asarray(problem.counts, dtype=dtype),
        "grad_out": cupy.asarray(problem.grad_out, dtype=dtype),
    }


def stored_on_device(problem: Problem, storage: str, pad: float | None = None):
    stored, kw, values = problem.stored(storage, pad)
    return cupy.asarray(stored), kw, values


def run_fused(problem: Problem, storage: str, pad: float | None = None) -> tuple[tuple[Any, ...], np.ndarray]:
    """forward_logits, then backward_logits: ``((4 statistics, grad), float64 stored values)``."""
    xp = _xp()
    scores, kw, values = stored_on_device(problem, storage, pad)
    acc = accumulation(storage)
    d = on_device(problem, acc)
    assert fused.is_supported(scores, acc, **kw)
    statistics = fused.forward_logits(xp, scores, d["valid"], acc, **kw)
    res = residuals(statistics, d["valid"], d["lengths"])
    grad = fused.backward_logits(xp, d["grad_out"], scores, d["counts"], res, acc, **kw)
    assert all(x.dtype == acc for x in statistics)
    assert grad.dtype == scores.dtype and grad.shape == scores.shape
    return (*statistics, grad), values


def compare(problem: Problem, results: tuple, expected: tuple, storage: str, grad_storage: str = "") -> None:
    """The statistics and the gradient against the float64 reference (the mass in its two parts)."""
    precision = "float64" if storage == "float64" else "float32"
    rtol, atol = RTOL[precision], ATOL[precision]
    step_max, step_log_sum, mass_max, mass_log_sum = (host(x) for x in results[:4])
    rows = problem.valid3()[:, :, 0]
    assert np.array_equal(step_max[rows], expected[0][rows])  # the max is exact in any precision
    assert_close(step_log_sum, expected[1], rtol=rtol, atol=atol, kind=f"cupy fused step_log_sum {storage}")
    log_mass = expected[2] + expected[3]
    assert_close(
        mass_max + mass_log_sum, log_mass, rtol=rtol, atol=atol, kind=f"cupy fused log_mass {storage}"
    )
    has_mass = np.isfinite(log_mass)
    assert_close(mass_max[has_mass], expected[2][has_mass], rtol=rtol, atol=atol)
    assert_close(mass_log_sum[has_mass], expected[3][has_mass], rtol=rtol, atol=atol)
    grad_precision = grad_storage or precision
    assert_close(
        host(results[4], grad_storage),
        expected[4],
        rtol=RTOL[grad_precision],
        atol=ATOL[grad_precision],
        kind=f"cupy fused grad {grad_precision}",
    )
    if problem.valid is not None:
        assert np.all(host(results[4], grad_storage)[~problem.valid] == 0)


# --------------------------------------------------------------------------- without a GPU


def test_import_compiles_nothing_and_touches_no_device():
    # A fresh interpreter: importing the module (and asking for launch shapes) must neither
    # compile a kernel nor call the CUDA runtime; it runs on machines without a GPU.
    code = (
        "import cupy\n"
        "made = []\n"
        "cupy.RawModule = lambda *a, **k: made.append(a)\n"
        "from ace_core.backends import cupy as fused\n"
        "assert fused.launch_shape(7357) is not None and fused.tiling(64, 144)\n"
        "assert made == [] and fused.compiled_variants() == [], (made, fused.compiled_variants())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_dispatch_picks_the_fused_functions():
    kernel = kernel_for(_xp())
    assert kernel.forward_logits is fused.forward_logits
    assert kernel.backward_logits is fused.backward_logits
    assert kernel.forward_backward_logits is fused.forward_backward_logits


def test_cuda_source_compiles_for_every_variant():
    # NVRTC compiles on the host, with no GPU; this uses CuPy's private compiler class.
    compiler = pytest.importorskip("cupy.cuda.compiler")
    program = getattr(compiler, "_NVRTCProgram", None)
    if program is None:
        pytest.skip("this CuPy has no _NVRTCProgram")
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as error:  # noqa: BLE001 - no NVRTC library: nothing to compile with
        pytest.skip(f"NVRTC is not available: {error}")
    names = _cupy_launch.all_kernel_names()
    options = ("-arch=sm_80", "--std=c++17", "--device-as-default-execution-space")
    binary, mapping = program(SOURCE, "ace.cu", name_expressions=names, method="cubin").compile(options)
    assert len(binary) > 0 and set(mapping) == set(names)


# --------------------------------------------------------------------------- against the generic kernel

SHAPES = [
    (2, 5, 1),
    (3, 4, 2),
    (3, 7, 3),
    (4, 19, 37),  # the paper's small alphabet
    (3, 33, 7357),  # the paper's large alphabet (8 classes a thread)
    (3, 1, 37),  # T = 1
    (5, 17, 1000),  # C not a multiple of the block, T not of the tile
    (1, 301, 129),  # many tiles for one sample
    (70, 3, 5),  # B larger than the tile target
    (2, 9, 1025),  # 2 classes a thread
    (2, 9, 4097),  # 8 classes a thread
    (2, 9, 8193),  # 16 classes a thread
    (2, 9, 16384),  # the largest C of the fused path
]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", ["none", "lengths", "mask"])
@pytest.mark.parametrize("storage", ["float64", "float32"])
def test_matches_generic_kernel(shape, mask, storage):
    problem = make_problem(*shape, mask)
    results, values = run_fused(problem, storage)
    compare(problem, results, reference(problem, values), storage)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "shape", [(3, 19, 37), (3, 20, 7357), (2, 9, 3)], ids=lambda s: "x".join(map(str, s))
)
@pytest.mark.parametrize("mask", ["none", "lengths"])
def test_half_inputs_accumulate_in_float32(storage, shape, mask):
    problem = make_problem(*shape, mask)
    results, values = run_fused(problem, storage)
    # accumulated in float32 on exact inputs: float32 accuracy; the gradient rounded once to storage
    compare(problem, results, reference(problem, values), "float32", grad_storage=storage)
    # ... and agrees with the float32 path on the same values to 1e-2
    float32_results, _ = run_fused(dataclasses.replace(problem, logits=values), "float32")
    assert_close(host(results[4], storage), host(float32_results[4]), rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("pad", [np.nan, -np.inf, np.inf, 1e4])
@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "float64"])
def test_masked_steps_are_never_read(pad, storage):
    problem = make_problem(4, 13, 37, "mask", seed=3)
    padded, _ = run_fused(problem, storage, pad=pad)
    clean, _ = run_fused(problem, storage, pad=0.0)
    for got, want in zip(padded, clean, strict=True):
        assert np.array_equal(cupy.asnumpy(got), cupy.asnumpy(want))  # bitwise
    grad = host(padded[4], storage)
    assert np.all(grad[~problem.valid] == 0) and np.all(np.isfinite(grad))


@pytest.mark.gpu
@requires_gpu
def test_samples_without_valid_steps_stay_apart():
    problem = make_problem(5, 11, 37, "lengths", seed=1)  # sample 1 has T_b = 0
    (_, _, mass_max, mass_log_sum, grad), _ = run_fused(problem, "float32")
    log_mass, grad = host(mass_max) + host(mass_log_sum), host(grad)
    assert np.all(log_mass[1] == -np.inf) and np.all(grad[1] == 0)
    others = [0, 2, 3, 4]
    assert np.all(np.isfinite(log_mass[others])) and np.all(np.isfinite(grad[others]))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["1e4", "30"])
def test_extreme_logits(storage, kind):
    problem = large_logits_problem(kind)
    results, values = run_fused(problem, storage)
    compare(problem, results, reference(problem, values), storage)
    grad = host(results[4])
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() <= 1  # the bound |∂L/∂a| <= 1


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize(("storage", "big"), [("float32", 3e38), ("float64", 1e300), ("bfloat16", 3e38)])
def test_tied_steps_at_extreme_logits_share_the_pull_exactly(storage, big):
    # Two identical steps: r = 1/2 for every class, pulls N̄/2 (a one-part mass would give r = 1).
    rows = np.array([[0.0, big / 2, big], [-big, 0.0, -big / 3], [big, big, 0.0]])
    logits = np.concatenate([np.repeat(rows[None, i : i + 1], 2, axis=1) for i in range(3)])
    counts = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    problem = Problem(logits, None, np.full(3, 2.0), counts, np.ones(3))
    results, _ = run_fused(problem, storage)
    grad = host(results[4], storage)
    ulps = 4e-16 if storage == "float64" else 2.4e-7
    assert np.abs(grad).max() <= 1
    assert_close(grad[0], [[-0.25, -0.25, 0.5]] * 2, rtol=ulps)
    assert_close(grad[1], [[0.0, 0.25, -0.25]] * 2, rtol=ulps)
    assert_close(grad[2], [[0.0, 0.25, -0.25]] * 2, rtol=ulps, atol=ulps)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape", [(64, 144, 37), (8, 144, 7357)], ids=["C37", "C7357"])
@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_bitwise_deterministic(shape, storage):
    problem = make_problem(*shape, "lengths", seed=4)
    first, _ = run_fused(problem, storage)
    second, _ = run_fused(problem, storage)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b), equal_nan=True)


@pytest.mark.gpu
@requires_gpu
def test_forward_backward_logits_is_the_two_halves_and_writes_out():
    xp = _xp()
    problem = make_problem(3, 21, 37, "mask", seed=5)
    scores, kw, _ = stored_on_device(problem, "float32")
    d = on_device(problem, cupy.float32)
    halves, _ = run_fused(problem, "float32")
    args = (xp, d["grad_out"], scores, d["counts"], d["valid"], d["lengths"], cupy.float32)
    together = fused.forward_backward_logits(*args, **kw)
    assert len(together) == 5
    for a, b in zip(together, halves, strict=True):
        assert np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b))
    out = cupy.full(scores.shape, 7.0, dtype=scores.dtype)
    given = fused.forward_backward_logits(*args, out=out, **kw)
    assert given[4] is out and np.array_equal(cupy.asnumpy(out), cupy.asnumpy(halves[4]))
    for error, bad in [
        (TypeError, cupy.empty(scores.shape, dtype=cupy.float64)),
        (ValueError, cupy.empty((3, 21, 38), dtype=scores.dtype)),
        (ValueError, cupy.empty((3, 37, 21), dtype=scores.dtype).transpose(0, 2, 1)),
        (ValueError, scores),
    ]:
        with pytest.raises(error, match="out"):
            fused.forward_backward_logits(*args, out=bad, **kw)


@pytest.mark.gpu
@requires_gpu
def test_backward_takes_the_generic_forwards_residuals():
    xp = _xp()
    problem = make_problem(3, 21, 37, "mask", seed=5)
    scores, _, values = stored_on_device(problem, "float64")
    expected = reference(problem, values)
    d = on_device(problem, cupy.float64)
    generic = residuals(tuple(cupy.asarray(x) for x in expected[:4]), d["valid"], d["lengths"])
    grad = fused.backward_logits(xp, d["grad_out"], scores, d["counts"], generic, cupy.float64)
    assert_close(host(grad), expected[4], rtol=RTOL["float64"], atol=ATOL["float64"])


@pytest.mark.gpu
@requires_gpu
def test_non_contiguous_scores_and_inputs_unchanged():
    xp = _xp()
    problem = make_problem(3, 9, 37, "lengths", seed=6)
    scores, _, values = stored_on_device(problem, "float32")
    transposed = cupy.ascontiguousarray(scores.transpose(1, 0, 2)).transpose(1, 0, 2)  # (B, T, C) view
    assert not transposed.flags.c_contiguous
    before = cupy.asnumpy(transposed)
    d = on_device(problem, cupy.float32)
    out = fused.forward_backward_logits(
        xp, d["grad_out"], transposed, d["counts"], d["valid"], d["lengths"], cupy.float32
    )
    assert_close(host(out[4]), reference(problem, values)[4], rtol=RTOL["float32"], atol=ATOL["float32"])
    assert np.array_equal(cupy.asnumpy(transposed), before)


@pytest.mark.gpu
@requires_gpu
def test_runs_on_the_current_stream():
    problem = make_problem(4, 30, 1000, "mask", seed=7)
    expected, _ = run_fused(problem, "float32")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        got, _ = run_fused(problem, "float32")
    stream.synchronize()
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b))


@pytest.mark.gpu
@requires_gpu
def test_capturable_in_a_cuda_graph():
    # Capture fails on any host synchronisation; replaying the graph on new input values proves
    # that nothing value-dependent was decided on the host.
    xp = _xp()
    first = make_problem(4, 25, 37, "lengths", seed=8)
    second = make_problem(4, 25, 37, "lengths", seed=9)
    second.valid, second.lengths, second.counts = first.valid, first.lengths, first.counts
    second.grad_out = first.grad_out
    scores, _, _ = stored_on_device(first, "float32")
    d = on_device(first, cupy.float32)
    out = cupy.empty(scores.shape, dtype=scores.dtype)
    cupy.cuda.Device().synchronize()  # the inputs were queued on the default stream

    def call():
        return fused.forward_backward_logits(
            xp, d["grad_out"], scores, d["counts"], d["valid"], d["lengths"], cupy.float32, out=out
        )

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        call()  # compiles and warms the memory pool outside the capture
        stream.synchronize()
        stream.begin_capture()
        outputs = call()  # kept alive: the graph writes into these buffers
        graph = stream.end_capture()
        for problem in (first, second):
            new_scores, _, values = stored_on_device(problem, "float32")
            scores[...] = new_scores
            graph.launch(stream)
            stream.synchronize()
            expected = reference(problem, values)
            compare(problem, outputs, expected, "float32")


@pytest.mark.gpu
@requires_gpu
def test_falls_back_to_the_generic_kernel_above_max_classes():
    xp = _xp()
    problem = make_problem(1, 2, fused.MAX_CLASSES + 1, "none", seed=10)
    scores, _, values = stored_on_device(problem, "float32")
    assert not fused.is_supported(scores, cupy.float32)
    d = on_device(problem, cupy.float32)
    out = fused.forward_backward_logits(
        xp, d["grad_out"], scores, d["counts"], None, d["lengths"], cupy.float32
    )
    assert_close(host(out[4]), reference(problem, values)[4], rtol=RTOL["float32"], atol=ATOL["float32"])


@pytest.mark.gpu
@requires_gpu
def test_bad_arguments_raise():
    xp = _xp()
    problem = make_problem(2, 3, 5, "none")
    scores, _, _ = stored_on_device(problem, "float32")
    with pytest.raises(TypeError, match="bfloat16_bits"):
        fused.forward_logits(xp, scores, None, cupy.float32, bfloat16_bits=True)
    with pytest.raises(ValueError, match="valid"):
        fused.forward_logits(xp, scores, cupy.ones((2, 4), dtype=bool), cupy.float32)
    statistics = fused.forward_logits(xp, scores, None, cupy.float32)
    d = on_device(problem, cupy.float32)
    res = residuals(statistics, None, d["lengths"])
    with pytest.raises(ValueError, match="counts"):
        fused.backward_logits(xp, d["grad_out"], scores, d["counts"][:, :4], res, cupy.float32)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.slow
def test_more_than_two_to_the_31_elements():
    # 64-bit offsets: the last rows of sample 1 lie past element 2**31 (B·T·C = 2.148e9); only those
    # rows of sample 1 are valid, so that the reference needs just them.
    classes, steps = 7357, 146_000
    need = 2 * 2 * steps * classes * 2 + (1 << 30)
    if cupy.cuda.runtime.memGetInfo()[0] < need:
        pytest.skip("not enough free GPU memory")
    xp = _xp()
    rng = np.random.default_rng(11)
    tail = rng.normal(size=(3, classes)).astype(np.float16)
    scores = cupy.zeros((2, steps, classes), dtype=cupy.float16)
    scores[1, -3:] = cupy.asarray(tail)
    valid = cupy.zeros((2, steps), dtype=bool)
    valid[0, :5] = True
    valid[1, -3:] = True
    counts = cupy.zeros((2, classes), dtype=cupy.float32)
    counts[0, 0], counts[1, 0], counts[1, 7000] = 5, 2, 1
    lengths = cupy.asarray([5.0, 3.0], dtype=cupy.float32)
    grad_out = cupy.ones(2, dtype=cupy.float32)
    _, _, mass_max, mass_log_sum, grad = fused.forward_backward_logits(
        xp, grad_out, scores, counts, valid, lengths, cupy.float32
    )
    small = make_problem(1, 3, classes, "none")
    small.logits = tail.astype(np.float64)[None]
    small.counts = cupy.asnumpy(counts[1:]).astype(np.float64)
    small.lengths = np.array([3.0])
    small.grad_out = np.array([1.0])
    expected = reference(small, small.logits)
    log_mass = host(mass_max[1:]) + host(mass_log_sum[1:])
    assert_close(log_mass, expected[2] + expected[3], rtol=RTOL["float32"], atol=ATOL["float32"])
    assert_close(host(grad[1, -3:])[None], expected[4], rtol=RTOL["float16"], atol=ATOL["float16"])
    assert int(cupy.count_nonzero(grad[1, :-3])) == 0


# --------------------------------------------------------------------------- the public API


def _public_case(mask: str, seed: int = 12) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """(logits, counts, numpy keywords, cupy keywords) of 4 feasible samples of 23 steps, C = 37."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(4, 23, 37))
    if mask == "mask":
        valid = rng.random((4, 23)) < 0.6
        valid[:, :3] = True
        lengths = valid.sum(axis=1)
    else:
        lengths = np.array([23, 5, 9, 14])
    counts = ace_core.counts_from_targets(
        np.array([[1, 2, 3], [4, 0, 0], [5, 6, 0], [7, 7, 7]]),
        np.array([3, 1, 2, 3]),
        num_classes=37,
        input_lengths=lengths,
    )
    if mask == "mask":
        return logits, counts, {"mask": valid}, {"mask": cupy.asarray(valid)}
    return logits, counts, {"input_lengths": lengths}, {"input_lengths": cupy.asarray(lengths)}


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mask", ["lengths", "mask"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_public_ace_loss_and_grad_matches_numpy(mask, dtype, reduction):
    logits, counts, np_kw, cp_kw = _public_case(mask)
    stored = logits.astype(dtype)
    want_loss, want_grad = ace_core.ace_loss_and_grad(
        stored.astype(np.float64), counts, reduction=reduction, **np_kw
    )
    loss, grad = ace_core.ace_loss_and_grad(
        cupy.asarray(stored), cupy.asarray(counts), reduction=reduction, **cp_kw
    )
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == logits.shape
    rtol = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2}[dtype]
    atol = {"float64": 1e-13, "float32": 1e-6, "float16": 1e-4}[dtype]
    assert_close(host(loss), want_loss, rtol=rtol, atol=atol)
    assert_close(host(grad), want_grad, rtol=rtol, atol=atol)


@pytest.mark.gpu
@requires_gpu
def test_public_forward_backward_and_2d_mask():
    rng = np.random.default_rng(13)
    logits = rng.normal(size=(2, 3, 4, 37)).astype(np.float32)
    mask = rng.random((2, 3, 4)) < 0.7
    mask[:, 0, :2] = True
    counts = ace_core.counts_from_targets(
        np.array([[3, 4], [5, 0]]), np.array([2, 1]), num_classes=37, input_lengths=mask.reshape(2, -1).sum(1)
    )
    want_loss, want_res = ace_core.ace_forward(logits.astype(np.float64), counts, mask=mask)
    want_grad = ace_core.ace_backward(np.array([1.0, 0.5]), logits.astype(np.float64), counts, want_res)
    loss, res = ace_core.ace_forward(cupy.asarray(logits), cupy.asarray(counts), mask=cupy.asarray(mask))
    grad = ace_core.ace_backward(
        cupy.asarray([1.0, 0.5], dtype=cupy.float32), cupy.asarray(logits), cupy.asarray(counts), res
    )
    assert_close(host(loss), want_loss, rtol=1e-5, atol=1e-6)
    assert_close(host(grad), want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@requires_gpu
def test_public_zero_infinity_keeps_other_samples_finite():
    logits, counts, _, _ = _public_case("lengths")
    lengths = np.array([23, 0, 10, 5])
    counts = ace_core.counts_from_targets(
        np.array([[1, 2], [0, 0], [3, 0], [4, 4]]),
        np.array([2, 0, 1, 2]),
        num_classes=37,
        input_lengths=lengths,
    )
    loss, grad = ace_core.ace_loss_and_grad(
        cupy.asarray(logits.astype(np.float32)),
        cupy.asarray(counts),
        input_lengths=cupy.asarray(lengths),
        reduction="none",
        zero_infinity=True,
    )
    loss, grad = host(loss), host(grad)
    assert loss[1] == 0 and np.all(grad[1] == 0)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


# --------------------------------------------------------------------------- torch route


@pytest.mark.gpu
@requires_gpu
def test_torch_bfloat16_through_bits_on_torch_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    xp = _xp()
    problem = make_problem(3, 15, 37, "lengths", seed=14)
    tensor = torch.tensor(problem.logits, dtype=torch.bfloat16, device="cuda")
    bits = cupy.from_dlpack(tensor.view(torch.int16))
    assert bits.data.ptr == tensor.data_ptr()  # a view, not a copy
    values = tensor.float().cpu().numpy().astype(np.float64)
    # the test's own rounding gives torch's bits
    assert np.array_equal(bfloat16_bits(values).view(np.int16), cupy.asnumpy(bits))
    d = on_device(problem, cupy.float32)
    cupy.cuda.Device().synchronize()  # the inputs were queued on CuPy's stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), fused.on_torch_stream(torch.cuda.current_stream().cuda_stream):
        out = fused.forward_backward_logits(
            xp, d["grad_out"], bits, d["counts"], d["valid"], d["lengths"], cupy.float32, bfloat16_bits=True
        )
        grad = torch.from_dlpack(out[4]).view(torch.bfloat16)
    side.synchronize()
    expected = reference(problem, values)
    assert_close(grad.float().cpu().numpy(), expected[4], rtol=RTOL["bfloat16"], atol=ATOL["bfloat16"])
