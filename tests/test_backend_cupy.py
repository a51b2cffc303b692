"""The fused CuPy kernels (``ace_core.backends.cupy``) against the generic array-API kernel.

The reference is :mod:`ace_core._kernel` in float64 on the same values, run on
the GPU by CuPy itself. The module is skipped without CuPy; the tests that
launch kernels are skipped without a CUDA device (the import and host-compile
tests need none). Written on a machine without a GPU: these tests are what
verifies the kernels where a GPU is present.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from _helpers import assert_close

cupy = pytest.importorskip("cupy")

import ace_core  # noqa: E402
from ace_core import _kernel  # noqa: E402
from ace_core._dispatch import kernel_for  # noqa: E402
from ace_core.backends import _cupy_source  # noqa: E402
from ace_core.backends import cupy as fused  # noqa: E402


def _device_count() -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - any CUDA runtime error means no usable GPU
        return 0


HAS_GPU = _device_count() > 0
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="CuPy sees no CUDA device")

# Tolerances of the stored results against the float64 reference, relative and absolute; the
# absolute part covers log-space values near 0 (log Σ_t y ≈ 0 carries an absolute error of ~T ulps).
RTOL = {"float64": 1e-12, "float32": 2e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}
ATOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-4}


def _xp() -> Any:
    from array_api_compat import cupy as xp

    return xp


# --------------------------------------------------------------------------- test data


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounded to nearest even; NaN stays NaN."""
    u = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(is_nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns → float64 values."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@dataclasses.dataclass
class Problem:
    """Host data of one case: float64 logits (before rounding to a storage dtype) and labels."""

    logits: np.ndarray  # (B, T, C) float64
    valid: np.ndarray | None  # (B, T) bool
    lengths: np.ndarray  # (B,) float64 T_b
    counts: np.ndarray  # (B, C) float64, rows sum to T_b
    grad_out: np.ndarray  # (B,) float64

    def stored(self, storage: str, pad: float | None = None) -> tuple[Any, dict[str, Any], np.ndarray]:
        """``(scores on the GPU, keywords, float64 values they hold)``, padding at masked steps."""
        logits = self.logits if pad is None else np.where(self._valid3(), self.logits, pad)
        if storage == "bfloat16":
            bits = bfloat16_bits(logits)
            return cupy.asarray(bits), {"bfloat16_bits": True}, bfloat16_values(bits)
        host = logits.astype(storage)
        return cupy.asarray(host), {}, host.astype(np.float64)

    def _valid3(self) -> np.ndarray:
        shape = self.logits.shape[:2]
        return (np.ones(shape, bool) if self.valid is None else self.valid)[:, :, None]

    def device(self, dtype: Any) -> dict[str, Any]:
        """valid, lengths, counts, grad_out on the GPU, in ``dtype``."""
        return {
            "valid": None if self.valid is None else cupy.asarray(self.valid),
            "lengths": cupy.asarray(self.lengths, dtype=dtype),
            "counts": cupy.asarray(self.counts, dtype=dtype),
            "grad_out": cupy.asarray(self.grad_out, dtype=dtype),
        }


def make_problem(
    batch: int, steps: int, classes: int, mask: str = "none", *, scale: float = 2.0, seed: int = 0
) -> Problem:
    """A random case. ``mask``: ``none`` (valid=None), ``lengths`` (prefixes, one T_b = 0 when B >= 3)
    or ``mask`` (random steps, one sample without any valid step when B >= 3)."""
    rng = np.random.default_rng([seed, batch, steps, classes])
    logits = rng.normal(scale=scale, size=(batch, steps, classes))
    if mask == "none":
        valid = None
    elif mask == "lengths":
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps
        if batch >= 3:
            lengths[1] = 0
        valid = np.arange(steps)[None, :] < lengths[:, None]
    elif mask == "mask":
        valid = rng.random((batch, steps)) < 0.6
        valid[0, 0] = True
        if batch >= 3:
            valid[1] = False
    else:
        raise ValueError(mask)
    per_sample = np.full(batch, steps) if valid is None else valid.sum(axis=1)
    counts = np.zeros((batch, classes))
    for b, length in enumerate(per_sample):
        if classes > 1 and length > 0:
            labels = rng.integers(1, classes, size=min(int(length), 25, int(rng.integers(0, length + 1))))
            np.add.at(counts[b], labels, 1)
        counts[b, 0] = length - counts[b].sum()
    grad_out = rng.uniform(0.5, 2.0, size=batch)
    return Problem(logits, valid, per_sample.astype(np.float64), counts, grad_out)


def reference(problem: Problem, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """The generic kernel in float64 on ``values``, on the GPU: (step_max, step_log_sum, log_mass, grad)."""
    xp = _xp()
    d = problem.device(cupy.float64)
    scores = cupy.asarray(values)
    step_max, step_log_sum, log_mass = _kernel.forward_logits(xp, scores, d["valid"], cupy.float64)
    grad = _kernel.backward_logits(
        xp,
        d["grad_out"],
        scores,
        d["counts"],
        d["valid"],
        d["lengths"],
        step_max,
        step_log_sum,
        log_mass,
        cupy.float64,
    )
    return tuple(cupy.asnumpy(x) for x in (step_max, step_log_sum, log_mass, grad))


def host(x: Any, storage: str = "") -> np.ndarray:
    """A result on the host as float64 (bfloat16 bit patterns decoded)."""
    x = cupy.asnumpy(x)
    return bfloat16_values(x) if storage == "bfloat16" else x.astype(np.float64)


def accumulation(storage: str) -> Any:
    return cupy.float64 if storage == "float64" else cupy.float32


def run_fused(problem: Problem, storage: str, pad: float | None = None) -> tuple[tuple[Any, ...], np.ndarray]:
    """forward_logits then backward_logits of the fused path: ``((step_max, step_log_sum, log_mass, grad),
    values)`` where ``values`` are the float64 values of the stored scores."""
    xp = _xp()
    scores, kw, values = problem.stored(storage, pad)
    acc = accumulation(storage)
    d = problem.device(acc)
    assert fused.is_supported(scores, acc, **kw)
    step_max, step_log_sum, log_mass = fused.forward_logits(xp, scores, d["valid"], acc, **kw)
    grad = fused.backward_logits(
        xp,
        d["grad_out"],
        scores,
        d["counts"],
        d["valid"],
        d["lengths"],
        step_max,
        step_log_sum,
        log_mass,
        acc,
        **kw,
    )
    assert step_max.dtype == step_log_sum.dtype == log_mass.dtype == acc
    assert grad.dtype == scores.dtype and grad.shape == scores.shape
    return (step_max, step_log_sum, log_mass, grad), values


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


def test_launch_shapes_cover_the_classes():
    for classes in (1, 2, 3, 31, 32, 33, 37, 512, 513, 1000, 7357, 8192, 8193, fused.MAX_CLASSES):
        items, threads = fused.launch_shape(classes)
        assert items in fused.ITEMS_CHOICES and threads % 32 == 0 and 32 <= threads <= fused.MAX_THREADS
        assert items * threads >= classes
        assert items * (threads - 32) < classes or items == 1  # no whole idle warp
    assert fused.launch_shape(fused.MAX_CLASSES + 1) is None
    assert fused.launch_shape(0) is None


@pytest.mark.parametrize("batch", [1, 2, 3, 64, 1000])
@pytest.mark.parametrize("steps", [1, 2, 7, 8, 9, 144, 1000, 4099])
def test_tiles_cover_every_step_once(batch, steps):
    rows, tiles = fused.tiling(batch, steps)
    assert rows >= 1 and tiles >= 1
    assert (tiles - 1) * rows < steps <= tiles * rows  # no empty tile, none missing
    assert tiles <= max(fused.MIN_TILES_PER_SAMPLE, -(-fused.TARGET_BLOCKS // batch))  # partials O(B·C)


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
    names = [_cupy_source.combine_name("float"), _cupy_source.combine_name("double")]
    for storage in ("float", "double", "ace_f16", "ace_bf16"):
        for items in fused.ITEMS_CHOICES:
            names.append(_cupy_source.forward_name(storage, "float", items))
            names.append(_cupy_source.backward_name(storage, "float", items))
    names += [
        _cupy_source.forward_name("double", "double", 1),
        _cupy_source.backward_name("double", "double", 1),
    ]
    options = ("-arch=sm_80", "--std=c++17", "--device-as-default-execution-space")
    binary, mapping = program(_cupy_source.SOURCE, "ace.cu", name_expressions=names, method="cubin").compile(
        options
    )
    assert len(binary) > 0 and set(mapping) == set(names)


# --------------------------------------------------------------------------- against the generic kernel

SHAPES = [
    (2, 5, 1),
    (3, 4, 2),
    (3, 7, 3),
    (4, 19, 37),  # the paper's small alphabet
    (3, 33, 7357),  # the paper's large alphabet (16 classes a thread)
    (3, 1, 37),  # T = 1
    (5, 17, 1000),  # C not a multiple of the block, T not of the tile
    (1, 301, 129),  # many tiles for one sample
    (70, 3, 5),  # B larger than the tile target
    (2, 9, 16384),  # the largest C of the fused path (32 classes a thread)
]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", ["none", "lengths", "mask"])
@pytest.mark.parametrize("storage", ["float64", "float32"])
def test_matches_generic_kernel(shape, mask, storage):
    problem = make_problem(*shape, mask)
    results, values = run_fused(problem, storage)
    expected = reference(problem, values)
    names = ("step_max", "step_log_sum", "log_mass", "grad")
    for name, got, want in zip(names, results, expected, strict=True):
        assert_close(
            host(got), want, rtol=RTOL[storage], atol=ATOL[storage], kind=f"cupy fused {name} {storage}"
        )
    # the max is exact: the same element in any precision
    if problem.valid is not None:
        assert np.array_equal(host(results[0])[problem.valid], expected[0][problem.valid])
        assert np.all(host(results[3])[~problem.valid] == 0)
    else:
        assert np.array_equal(host(results[0]), expected[0])


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
    expected = reference(problem, values)  # float64 on the very values the half array holds
    for name, got, want in zip(
        ("step_max", "step_log_sum", "log_mass"), results[:3], expected[:3], strict=True
    ):
        # accumulated in float32 on exact inputs: float32 accuracy, not half accuracy
        assert_close(
            host(got), want, rtol=RTOL["float32"], atol=ATOL["float32"], kind=f"cupy fused {name} {storage}"
        )
    # the gradient is rounded once, to the storage dtype
    assert_close(
        host(results[3], storage),
        expected[3],
        rtol=RTOL[storage],
        atol=ATOL[storage],
        kind=f"cupy grad {storage}",
    )
    # ... and agrees with the float32 path on the same values to 1e-2
    float32_results, _ = run_fused(dataclasses.replace(problem, logits=values), "float32")
    assert_close(host(results[3], storage), host(float32_results[3]), rtol=1e-2, atol=1e-3)


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
    grad = host(padded[3], storage)
    assert np.all(grad[~problem.valid] == 0) and np.all(np.isfinite(grad))
    assert np.all(np.isfinite(host(padded[2])[0]))


@pytest.mark.gpu
@requires_gpu
def test_samples_without_valid_steps_stay_apart():
    problem = make_problem(5, 11, 37, "lengths", seed=1)  # sample 1 has T_b = 0
    (step_max, step_log_sum, log_mass, grad), values = run_fused(problem, "float32")
    log_mass, grad = host(log_mass), host(grad)
    assert np.all(log_mass[1] == -np.inf) and np.all(grad[1] == 0)
    others = [0, 2, 3, 4]
    assert np.all(np.isfinite(log_mass[others])) and np.all(np.isfinite(grad[others]))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["1e4", "30"])
def test_extreme_logits(storage, kind):
    problem = make_problem(3, 10, 6, "lengths", seed=2)  # sample 1 has T_b = 0
    if kind == "1e4":
        # y underflows to 0 for every class but 0, even in float64; r stays finite in log space
        logits = np.full(problem.logits.shape, -1e4)
        logits[:, :, 0] = 1e4
        logits[0, ::2, 3] = 30.0
        logits[2, :, 1] = 0.0
    else:
        # y of the others ~ 1e-13: the two-part log-normalizer keeps y of class 0 near 1 exact
        logits = np.zeros(problem.logits.shape)
        logits[:, :, 0] = 30.0
    problem.logits = logits
    problem.counts[:] = 0
    problem.counts[:, 5] = problem.lengths > 0  # a label whose class has (almost) no mass
    problem.counts[:, 0] = problem.lengths - problem.counts[:, 5]
    problem.grad_out[:] = 1.0
    results, values = run_fused(problem, storage)
    expected = reference(problem, values)
    # float32 with logits of 1e4 cancels log-masses of size 2e4 (ulp 2e-3)
    rtol = {"float64": 1e-9, "float32": 5e-3 if kind == "1e4" else 1e-4}[storage]
    for name, got, want in zip(
        ("step_max", "step_log_sum", "log_mass", "grad"), results, expected, strict=True
    ):
        assert_close(host(got), want, rtol=rtol, atol=1e-6, kind=f"cupy fused extreme {name} {storage}")
    grad = host(results[3])
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() <= 1 + 1e-6  # the bound |∂L/∂a| <= 1


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
def test_forward_backward_logits_is_the_two_halves():
    xp = _xp()
    problem = make_problem(3, 21, 37, "mask", seed=5)
    scores, kw, _ = problem.stored("float32")
    d = problem.device(cupy.float32)
    halves, _ = run_fused(problem, "float32")
    fused_all = fused.forward_backward_logits(
        xp, d["grad_out"], scores, d["counts"], d["valid"], d["lengths"], cupy.float32, **kw
    )
    for a, b in zip(fused_all, halves, strict=True):
        assert np.array_equal(cupy.asnumpy(a), cupy.asnumpy(b))


@pytest.mark.gpu
@requires_gpu
def test_non_contiguous_scores_and_inputs_unchanged():
    xp = _xp()
    problem = make_problem(3, 9, 37, "lengths", seed=6)
    scores, _, values = problem.stored("float32")
    transposed = cupy.ascontiguousarray(scores.transpose(1, 0, 2)).transpose(1, 0, 2)  # (B, T, C) view
    assert not transposed.flags.c_contiguous
    before = cupy.asnumpy(transposed)
    d = problem.device(cupy.float32)
    out = fused.forward_backward_logits(
        xp, d["grad_out"], transposed, d["counts"], d["valid"], d["lengths"], cupy.float32
    )
    expected = reference(problem, values)
    assert_close(host(out[3]), expected[3], rtol=RTOL["float32"], atol=ATOL["float32"])
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
    scores, _, _ = first.stored("float32")
    d = first.device(cupy.float32)
    cupy.cuda.Device().synchronize()  # the inputs were queued on the default stream

    def call():
        return fused.forward_backward_logits(
            xp, d["grad_out"], scores, d["counts"], d["valid"], d["lengths"], cupy.float32
        )

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        call()  # compiles and warms the memory pool outside the capture
        stream.synchronize()
        stream.begin_capture()
        outputs = call()  # kept alive: the graph writes into these buffers
        graph = stream.end_capture()
        for problem in (first, second):
            new_scores, _, values = problem.stored("float32")
            scores[...] = new_scores
            graph.launch(stream)
            stream.synchronize()
            expected = reference(problem, values)
            for got, want in zip(outputs, expected, strict=True):
                assert_close(host(got), want, rtol=RTOL["float32"], atol=ATOL["float32"])


@pytest.mark.gpu
@requires_gpu
def test_falls_back_to_the_generic_kernel_above_max_classes():
    xp = _xp()
    problem = make_problem(1, 2, fused.MAX_CLASSES + 1, "none", seed=10)
    scores, _, values = problem.stored("float32")
    assert not fused.is_supported(scores, cupy.float32)
    d = problem.device(cupy.float32)
    out = fused.forward_backward_logits(
        xp, d["grad_out"], scores, d["counts"], None, d["lengths"], cupy.float32
    )
    assert_close(host(out[3]), reference(problem, values)[3], rtol=RTOL["float32"], atol=ATOL["float32"])


@pytest.mark.gpu
@requires_gpu
def test_bad_arguments_raise():
    xp = _xp()
    problem = make_problem(2, 3, 5, "none")
    scores, _, _ = problem.stored("float32")
    with pytest.raises(TypeError, match="bfloat16_bits"):
        fused.forward_logits(xp, scores, None, cupy.float32, bfloat16_bits=True)
    with pytest.raises(ValueError, match="valid"):
        fused.forward_logits(xp, scores, cupy.ones((2, 4), dtype=bool), cupy.float32)
    step_max, step_log_sum, log_mass = fused.forward_logits(xp, scores, None, cupy.float32)
    d = problem.device(cupy.float32)
    with pytest.raises(ValueError, match="counts"):
        fused.backward_logits(
            xp,
            d["grad_out"],
            scores,
            d["counts"][:, :4],
            None,
            d["lengths"],
            step_max,
            step_log_sum,
            log_mass,
            cupy.float32,
        )


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
    _, _, log_mass, grad = fused.forward_backward_logits(
        xp, grad_out, scores, counts, valid, lengths, cupy.float32
    )
    small = make_problem(1, 3, classes, "none")
    small.logits = tail.astype(np.float64)[None]
    small.counts = cupy.asnumpy(counts[1:]).astype(np.float64)
    small.lengths = np.array([3.0])
    small.grad_out = np.array([1.0])
    expected = reference(small, small.logits)
    assert_close(host(log_mass[1:]), expected[2], rtol=RTOL["float32"], atol=ATOL["float32"])
    assert_close(host(grad[1, -3:])[None], expected[3], rtol=RTOL["float16"], atol=ATOL["float16"])
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
    d = problem.device(cupy.float32)
    cupy.cuda.Device().synchronize()  # the inputs were queued on CuPy's stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), fused.on_torch_stream(torch.cuda.current_stream().cuda_stream):
        out = fused.forward_backward_logits(
            xp, d["grad_out"], bits, d["counts"], d["valid"], d["lengths"], cupy.float32, bfloat16_bits=True
        )
        grad = torch.from_dlpack(out[3]).view(torch.bfloat16)
    side.synchronize()
    expected = reference(problem, values)
    assert_close(grad.float().cpu().numpy(), expected[3], rtol=RTOL["bfloat16"], atol=ATOL["bfloat16"])
