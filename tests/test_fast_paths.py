"""Every fast path in ``backends/`` against the generic array-API kernel, function by function.

The generic kernel (:mod:`ace_core._kernel`) is itself checked against the
float64 brute force elsewhere; here each ``ace_core.backends.<library>``
function is fed the same arrays as its generic twin, in float64 unless a test
says otherwise. Residuals may differ in how the log-normalizer is split
(``step_max + step_log_sum``), so their sum is compared.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from _backends import Backend, backend_params, load_backend
from _fuzz import examples
from _helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ace_core import ACEResiduals, _kernel

FAST_BACKENDS = ("numpy", "torch", "torch:cuda", "jax", "jax:gpu", "cupy")
#: torch CPU tensors run the NumPy path on zero-copy views; "torch-ops" keeps them on torch's own ops.
TORCH_OPS = "torch-ops"
#: Eager JAX CPU arrays run the NumPy path too; "jax-jnp" keeps them on the jnp path that jit runs.
JAX_JNP = "jax-jnp"
#: The variant name, the backend it runs on, and the module function that would send it to NumPy.
_OWN_OPS = {TORCH_OPS: ("torch", "_use_numpy"), JAX_JNP: ("jax", "_eager_on_cpu")}


def fast_params(names: tuple[str, ...]) -> list[Any]:
    params = backend_params(names)
    for variant, (library, _) in _OWN_OPS.items():
        if any(p.values[0] == library for p in params):
            params.append(pytest.param(variant, id=variant))
    return params


def load_fast(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Backend, ModuleType]:
    library, numpy_switch = _OWN_OPS.get(name, (name, None))
    backend = load_backend(library)
    module = importlib.import_module(f"ace_core.backends.{backend.entry.library}")
    if numpy_switch is not None:
        monkeypatch.setattr(module, numpy_switch, lambda *arrays: False)
    return backend, module


@pytest.fixture(params=fast_params(FAST_BACKENDS))
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[Backend, ModuleType]:
    return load_fast(request.param, monkeypatch)


def make_inputs(rng: np.random.Generator, batch: int, steps: int, classes: int, valid_kind: str, scale=3.0):
    """Logits, counts, valid steps (or None), T_b, per-sample weights; masked steps hold NaN/±inf."""
    logits = rng.standard_normal((batch, steps, classes)) * scale
    if valid_kind == "none":
        valid = None
        lengths = np.full(batch, steps)
    elif valid_kind == "lengths":
        lengths = rng.integers(1, steps + 1, size=batch)
        lengths[0] = steps
        valid = np.arange(steps)[None, :] < lengths[:, None]
    else:  # an arbitrary mask, as a flattened 2D map gives
        valid = rng.random((batch, steps)) < 0.6
        valid[:, 0] = True
        lengths = valid.sum(axis=1)
    if valid is not None:
        padding = rng.choice(np.array([np.nan, -np.inf, np.inf, 1e30]), size=(batch, steps, classes))
        logits = np.where(valid[:, :, None], logits, padding)
    counts = np.zeros((batch, classes))
    for sample in range(batch):
        if classes > 1:
            labels = rng.integers(1, classes, size=min(int(lengths[sample]) // 2, 6))
            np.add.at(counts[sample], labels, 1)
        counts[sample, 0] = lengths[sample] - counts[sample].sum()
    weights = rng.uniform(0.1, 2.0, size=batch)
    return logits, counts, valid, lengths.astype(np.float64), weights


def on(backend: Backend, *arrays: Any, dtype: str = "float64") -> list[Any]:
    converted = []
    for array in arrays:
        if array is None:
            converted.append(None)
        elif array.dtype == bool:
            converted.append(backend.asarray(array))
        else:
            converted.append(backend.asarray(array, dtype))
    return converted


def compare_forward(backend: Backend, got, want, valid: np.ndarray | None, rtol: float, atol: float) -> None:
    """The four statistics ``(step_max, step_log_sum, mass_max, mass_log_sum)``, compared as two sums."""
    got = [backend.to_numpy(x).astype(np.float64) for x in got]
    want = [backend.to_numpy(x).astype(np.float64) for x in want]
    rows = np.ones(got[0].shape, dtype=bool) if valid is None else valid
    assert_close((got[0] + got[1])[rows], (want[0] + want[1])[rows], rtol=rtol, atol=atol)
    assert_close(got[2] + got[3], want[2] + want[3], rtol=rtol, atol=atol)


def residuals_of(xp: Any, statistics, valid, lengths) -> ACEResiduals:
    """The residuals a backward reads, from the four statistics of a forward."""
    return _kernel.kernel_residuals(xp, tuple(statistics), valid, lengths)


def assert_matches_the_generic_kernel(backend: Backend, module: ModuleType, *arrays: Any) -> list[Any]:
    """The fused function, the forward and the backward (from both residuals) against the generic kernel.

    ``arrays`` are ``(logits, counts, valid, lengths, weights)`` in float64;
    returns the fused function's outputs.
    """
    xp = backend.xp
    logits, counts, valid, lengths, weights = arrays
    a, n, v, t, g = on(backend, logits, counts, valid, lengths, weights)
    dtype = backend.dtype("float64")
    want = _kernel.forward_backward_logits(xp, g, a, n, v, t, dtype)
    got = module.forward_backward_logits(xp, g, a, n, v, t, dtype)
    compare_forward(backend, got[:4], want[:4], valid, rtol=1e-12, atol=1e-12)
    assert_close(backend.to_numpy(got[4]), backend.to_numpy(want[4]), rtol=1e-11, atol=1e-14)
    statistics = module.forward_logits(xp, a, v, dtype)
    compare_forward(backend, statistics, want[:4], valid, rtol=1e-12, atol=1e-12)
    grad = module.backward_logits(xp, g, a, n, residuals_of(xp, statistics, v, t), dtype)
    assert_close(backend.to_numpy(grad), backend.to_numpy(want[4]), rtol=1e-11, atol=1e-14)
    # The backward also accepts the generic kernel's residuals (any split of the two sums).
    grad = module.backward_logits(xp, g, a, n, residuals_of(xp, want[:4], v, t), dtype)
    assert_close(backend.to_numpy(grad), backend.to_numpy(want[4]), rtol=1e-11, atol=1e-14)
    return got


CASES = [
    (1, 1, 1),
    (2, 5, 2),
    (3, 7, 5),
    (4, 20, 37),
    (2, 9, 256),  # the largest "dense" alphabet of the NumPy path
    (2, 9, 257),
    (2, 6, 7357),
]


@pytest.mark.parametrize("valid_kind", ["none", "lengths", "mask"])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_fused_and_halves_agree_with_the_generic_kernel(fast, shape, valid_kind):
    backend, module = fast
    logits, counts, valid, lengths, weights = make_inputs(
        np.random.default_rng(sum(shape)), *shape, valid_kind
    )
    got = assert_matches_the_generic_kernel(backend, module, logits, counts, valid, lengths, weights)
    if valid is not None:
        masked = backend.to_numpy(got[4])[~valid]
        assert np.all(masked == 0) and not np.any(np.signbit(masked)), "masked steps must be +0"


@pytest.mark.parametrize(
    ("case", "classes"),
    [
        ("huge", 5),
        ("huge", 300),
        ("large", 2),
        ("large", 37),
        ("large", 300),
        ("dominant", 37),
        ("dominant", 300),
        ("vanishing", 37),
        ("vanishing", 300),
    ],
)
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_extreme_logits(fast, case, classes, dtype_name):
    # huge: ±1e4 logits (exp overflows without a shift); large: all near 60 (exp stays
    # finite in float32 but 1/rowsum and its square leave the normal range); dominant: 30 vs 0 (float32
    # rounding of log y); vanishing: a present class whose probability underflows at
    # every step, so its mass must come from log space.
    backend, module = fast
    xp = backend.xp
    rng = np.random.default_rng(classes)
    logits, counts, valid, lengths, weights = make_inputs(rng, 3, 8, classes, "lengths")
    if case == "huge":
        logits = np.where(np.isfinite(logits), np.sign(logits) * 1e4 * rng.random(logits.shape), logits)
    elif case == "large":
        logits = np.where(np.isfinite(logits), 60 + rng.standard_normal(logits.shape), logits)
    elif case == "dominant":
        logits = np.where(np.isfinite(logits), 0.0, logits)
        logits[:, :, 1] = np.where(valid, 30.0, logits[:, :, 1])
    else:
        depth = 120.0 if dtype_name == "float32" else 760.0
        present = np.flatnonzero(counts[0, 1:]) + 1
        logits[0, :, present[0]] = np.where(valid[0], -depth + rng.random(8), logits[0, :, present[0]])
    logits = logits.astype(dtype_name).astype(np.float64)  # the yardstick sees the same inputs
    reference = on(backend, weights, logits, counts, valid, lengths)  # float64: the yardstick
    args = on(backend, weights, logits, counts, valid, lengths, dtype=dtype_name)
    want = _kernel.forward_backward_logits(xp, *reference, backend.dtype("float64"))
    got = module.forward_backward_logits(xp, *args, backend.dtype(dtype_name))
    tolerance = 1e-12 if dtype_name == "float64" else 2e-5
    compare_forward(backend, got[:4], want[:4], valid, rtol=tolerance, atol=tolerance)
    grad = backend.to_numpy(got[4]).astype(np.float64)
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad) <= weights[:, None, None] * (1 + 1e-6))
    assert_close(grad, backend.to_numpy(want[4]), rtol=tolerance, atol=tolerance)


def test_a_sample_without_valid_steps_does_not_leak(fast):
    # T_b = 0 is masked by the caller (zero_infinity or an error); the others must be untouched.
    backend, module = fast
    xp = backend.xp
    logits, counts, valid, lengths, weights = make_inputs(np.random.default_rng(5), 3, 6, 37, "lengths")
    valid[1] = False
    lengths[1] = 0
    counts[1] = 0
    a, n, v, t, g = on(backend, logits, counts, valid, lengths, weights)
    dtype = backend.dtype("float64")
    want = [backend.to_numpy(x) for x in _kernel.forward_backward_logits(xp, g, a, n, v, t, dtype)]
    got = [backend.to_numpy(x) for x in module.forward_backward_logits(xp, g, a, n, v, t, dtype)]
    keep = np.array([0, 2])
    assert_close((got[2] + got[3])[keep], (want[2] + want[3])[keep], rtol=1e-12, atol=1e-12)
    assert_close(got[4][keep], want[4][keep], rtol=1e-11, atol=1e-14)


def test_repeated_calls_are_bitwise_equal(fast):
    backend, module = fast
    xp = backend.xp
    logits, counts, valid, lengths, weights = make_inputs(np.random.default_rng(9), 4, 16, 300, "mask")
    args = on(backend, weights, logits, counts, valid, lengths, dtype="float32")
    first = [backend.to_numpy(x) for x in module.forward_backward_logits(xp, *args, backend.dtype("float32"))]
    second = [
        backend.to_numpy(x) for x in module.forward_backward_logits(xp, *args, backend.dtype("float32"))
    ]
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)


def test_numpy_blocks_and_threads_do_not_change_results(monkeypatch):
    # The batch is cut into blocks that run on a thread pool: the cut, not the
    # thread count, fixes the arithmetic, so results are bitwise equal for any count.
    from ace_core.backends import numpy as fast_numpy

    logits, counts, valid, lengths, weights = make_inputs(np.random.default_rng(3), 7, 12, 300, "lengths")
    args = (weights, logits.astype(np.float32), counts, valid, lengths)
    monkeypatch.setattr(fast_numpy, "BLOCK_ELEMENTS", 12 * 300 * 2)  # 4 blocks
    monkeypatch.setattr(fast_numpy, "THREADED_MIN_ELEMENTS", 0)
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("ACE_CORE_NUM_THREADS", threads)
        results.append(fast_numpy.forward_backward_logits(np, *args, np.dtype(np.float32)))
    for x, y in zip(*results, strict=True):
        np.testing.assert_array_equal(x, y)
    want = _kernel.forward_backward_logits(np, *args[:1], logits, *args[2:], np.float64)
    assert_close(results[0][4].astype(np.float64), want[4], rtol=2e-5, atol=1e-7)


def test_numpy_half_precision_is_accumulated_in_float32():
    from ace_core.backends import numpy as fast_numpy

    logits, counts, valid, lengths, weights = make_inputs(np.random.default_rng(4), 3, 10, 37, "none")
    half = logits.astype(np.float16)
    got = fast_numpy.forward_backward_logits(np, weights, half, counts, valid, lengths, np.dtype(np.float32))
    assert got[4].dtype == np.float32
    want = _kernel.forward_backward_logits(
        np, weights, half.astype(np.float64), counts, valid, lengths, np.float64
    )
    assert_close(got[4].astype(np.float64), want[4], rtol=2e-5, atol=1e-7)


@pytest.fixture(scope="module", params=fast_params(("numpy", "torch", "jax")))
def property_fast(request: pytest.FixtureRequest) -> tuple[Backend, ModuleType]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield load_fast(request.param, monkeypatch)


@settings(
    max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 4),
    steps=st.integers(1, 12),
    classes=st.integers(1, 300),
    valid_kind=st.sampled_from(["none", "lengths", "mask"]),
    scale=st.sampled_from([0.1, 3.0, 40.0]),
    seed=st.integers(0, 2**16),
)
def test_property_fused_path_matches_generic(property_fast, batch, steps, classes, valid_kind, scale, seed):
    backend, module = property_fast
    xp = backend.xp
    logits, counts, valid, lengths, weights = make_inputs(
        np.random.default_rng(seed), batch, steps, classes, valid_kind, scale
    )
    args = on(backend, weights, logits, counts, valid, lengths)
    dtype = backend.dtype("float64")
    want = _kernel.forward_backward_logits(xp, *args, dtype)
    got = module.forward_backward_logits(xp, *args, dtype)
    compare_forward(backend, got[:4], want[:4], valid, rtol=1e-11, atol=1e-11)
    assert_close(backend.to_numpy(got[4]), backend.to_numpy(want[4]), rtol=1e-10, atol=1e-13)


def test_autodiff_through_the_core_still_works(fast):
    # Users may differentiate ace_loss with their framework's autodiff instead of
    # calling ace_loss_and_grad: torch keeps the generic kernel's graph for scores
    # that require grad, JAX differentiates through the fast path itself.
    import ace_core

    backend, _ = fast
    if backend.entry.library not in ("torch", "jax"):
        pytest.skip("no autodiff in this library")
    logits, counts, valid, _, _ = make_inputs(np.random.default_rng(8), 3, 9, 37, "lengths")
    logits = np.where(valid[:, :, None], logits, 0.0)
    scores, n = backend.asarray(logits, "float64"), backend.asarray(counts, "float64")
    lengths = backend.asarray(valid.sum(axis=1))
    _, expected = ace_core.ace_loss_and_grad(scores, n, input_lengths=lengths)
    if backend.entry.library == "torch":
        scores.requires_grad_(True)
        ace_core.ace_loss(scores, n, input_lengths=lengths).backward()
        got = scores.grad
    else:
        import jax

        got = jax.grad(lambda s: ace_core.ace_loss(s, n, input_lengths=lengths))(scores)
    assert_close(backend.to_numpy(got), backend.to_numpy(expected), rtol=1e-10, atol=1e-13)


def test_torch_cpu_tensors_share_memory_with_the_numpy_path():
    # Zero-copy both ways: the gradient handed back is the buffer NumPy wrote, and out= is written in place.
    torch = pytest.importorskip("torch")
    import ace_core

    logits, counts, _, _, _ = make_inputs(np.random.default_rng(6), 2, 5, 300, "none")
    scores = torch.from_numpy(logits.astype(np.float32))
    _, grad = ace_core.ace_loss_and_grad(scores, torch.from_numpy(counts))
    assert grad.dtype == torch.float32 and grad.is_contiguous()
    out = torch.empty_like(scores)
    _, got = ace_core.ace_loss_and_grad(scores, torch.from_numpy(counts), out=out)
    assert got is out and torch.equal(out, grad)
    assert np.shares_memory(out.numpy(), got.numpy())


def test_counts_with_more_classes_than_steps(fast):
    # Valid counts have at most T_b present classes; these (not summing to T_b, which only
    # tracing leaves unchecked) have C of them: the formula still holds for any counts.
    backend, module = fast
    logits, _, valid, lengths, weights = make_inputs(np.random.default_rng(10), 3, 4, 300, "lengths")
    counts = np.random.default_rng(11).integers(1, 3, size=(3, 300)).astype(np.float64)
    assert_matches_the_generic_kernel(backend, module, logits, counts, valid, lengths, weights)


@pytest.fixture(params=fast_params(("jax", "jax:gpu")))
def masking_fast(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[Backend, ModuleType]:
    """The fast paths that set infeasible samples' gradient themselves (``MASKS_INFEASIBLE``)."""
    return load_fast(request.param, monkeypatch)


@pytest.mark.parametrize("drop", [0.0, float("nan")], ids=["zero_infinity", "nan"])
def test_a_kernel_that_masks_infeasible_samples_writes_the_drop_value(masking_fast, drop):
    # Such a kernel takes the mask from the caller: the dropped samples' gradient is the
    # drop value everywhere, masked steps included; the others are untouched.
    backend, module = masking_fast
    assert module.MASKS_INFEASIBLE
    xp = backend.xp
    logits, counts, valid, lengths, weights = make_inputs(np.random.default_rng(12), 4, 7, 300, "lengths")
    a, n, v, t, g = on(backend, logits, counts, valid, lengths, weights)
    keep = np.array([True, False, True, False])
    dtype = backend.dtype("float64")
    drop_value = xp.asarray(drop, dtype=dtype)
    want = backend.to_numpy(_kernel.forward_backward_logits(xp, g, a, n, v, t, dtype)[4])
    got = module.forward_backward_logits(
        xp, g, a, n, v, t, dtype, keep=backend.asarray(keep), drop_value=drop_value
    )
    got = backend.to_numpy(got[4])
    assert_close(got[keep], want[keep], rtol=1e-11, atol=1e-14)
    np.testing.assert_array_equal(got[~keep], np.full_like(got[~keep], drop))
    residuals = residuals_of(xp, _kernel.forward_logits(xp, a, v, dtype), v, t)
    residuals = residuals._replace(keep=backend.asarray(keep), drop_value=drop_value)
    grad = backend.to_numpy(module.backward_logits(xp, g, a, n, residuals, dtype))
    assert_close(grad[keep], want[keep], rtol=1e-11, atol=1e-14)
    np.testing.assert_array_equal(grad[~keep], np.full_like(grad[~keep], drop))
