"""The gradient at extreme logits: tied steps share ``r`` exactly and ``|∂L/∂a| <= 1`` for any finite input.

The expected values come from the math evaluated in mpmath (whose exponent
range holds ``exp(-2 · 1.8e308)``), not from the kernels: ``y`` by the softmax of
each step, the mass ``m = Σ_t y``, ``r = y / m`` and ``s = Σ_k N̄ r``. For copied
steps that gives the closed form ``∂L/∂a = (y - N̄) / T`` at every step.
"""

from __future__ import annotations

import importlib

import brute_force
import mpmath
import numpy as np
import pytest
from _fuzz import examples
from _helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ace_core

# A sum of losses near the largest float overflows to inf, and NumPy says so: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

DTYPES = ("float32", "float64")
#: Eight units in the last place: what the sums of s and of the loss may round (see docs/math.rst).
ULPS = 8


def magnitudes(dtype: str) -> list[float]:
    """Logit scales from where float32 rounding started to bite up to the largest finite value."""
    largest = float(np.finfo(dtype).max)
    return [s for s in (1e4, 1e8, 1e16, 1e30, 1e100, 1e300) if s < largest] + [
        largest / 4,
        largest / 2,
        largest,
    ]


def exact_gradient(scores: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, list]:
    """``(Σ_b g_b ∂L_b/∂a as float64, [(L_b, min_k log m_bk over present k) as mpf])`` in mpmath,
    from the closed form of the math."""
    mp = mpmath.mp.clone()
    mp.dps = 40
    batch, steps, classes = scores.shape
    grad = np.zeros(scores.shape)
    losses = []
    for b in range(batch):
        rows = [[mp.mpf(float(v)) for v in scores[b, t]] for t in range(steps)]
        y = []
        for row in rows:
            peak = max(row)
            exps = [mp.exp(v - peak) for v in row]
            total = mp.fsum(exps)
            y.append([e / total for e in exps])
        n_bar = [mp.mpf(int(n)) / steps for n in counts[b]]
        mass = [mp.fsum(y[t][k] for t in range(steps)) for k in range(classes)]
        r = [[y[t][k] / mass[k] for k in range(classes)] for t in range(steps)]
        for t in range(steps):
            s = mp.fsum(n_bar[k] * r[t][k] for k in range(classes) if counts[b, k] != 0)
            for k in range(classes):
                pull = n_bar[k] * r[t][k] if counts[b, k] != 0 else 0
                grad[b, t, k] = float(weights[b] * (y[t][k] * s - pull))
        present = [k for k in range(classes) if counts[b, k] != 0]
        loss = -mp.fsum(n_bar[k] * mp.log(mass[k] / steps) for k in present)
        losses.append((loss, min((mp.log(mass[k]) for k in present), default=mp.mpf(0))))
    return grad, losses


def expected_loss(losses: list, dtype: str) -> np.ndarray:
    """The per-sample losses as the dtype holds them; ``inf`` where a log-mass is below its range.

    A present class whose ``log Σ_t y`` is below ``-finfo.max`` has a log-mass
    of ``-inf`` in the dtype, so its loss is ``inf`` even where the product with
    ``N̄`` would be finite again.
    """
    largest = float(np.finfo(dtype).max)
    with np.errstate(over="ignore"):
        return np.array(
            [
                np.inf if log_mass < -largest else np.asarray(float(loss)).astype(dtype)
                for loss, log_mass in losses
            ],
            dtype=np.float64,
        )


def test_exact_gradient_is_the_derivative_of_the_loss():
    # The mpmath closed form above against central differences of the brute-force loss.
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 3, 4)) * 3
    counts = np.array([[1, 2, 0, 0], [0, 1, 1, 1]])
    mp = mpmath.mp.clone()
    mp.dps = 40
    want = brute_force.gradient_mp(scores, counts, mp=mp)
    got, losses = exact_gradient(scores, counts, np.ones(2))
    assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert_close([float(x) for x, _ in losses], brute_force.ace_per_sample(scores, counts), rtol=1e-13)


def check_against_exact(backend, scores: np.ndarray, counts: np.ndarray, dtype: str, reduction: str) -> None:
    """``ace_loss_and_grad`` and ``ace_forward``/``ace_backward`` against :func:`exact_gradient`."""
    batch = scores.shape[0]
    weight = 1.0 / batch if reduction == "mean" else 1.0
    want_grad, losses = exact_gradient(scores, counts, np.full(batch, weight))
    eps = float(np.finfo(dtype).eps)
    a, n = backend.asarray(scores, dtype), backend.asarray(counts)
    loss, grad = ace_core.ace_loss_and_grad(a, n, reduction=reduction)
    grad = backend.to_numpy(grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() <= weight * (1 + ULPS * eps)
    assert_close(grad, want_grad, rtol=ULPS * eps, atol=ULPS * eps * weight)
    per_sample = expected_loss(losses, dtype)
    with np.errstate(over="ignore"):  # the batch's sum, in the dtype, may overflow
        want_loss = per_sample if reduction == "none" else np.sum(per_sample.astype(dtype)) * weight
    assert_close(backend.to_numpy(loss), want_loss, rtol=ULPS * eps)
    # The two halves (what the framework adapters call) give the same gradient.
    per_sample_loss, residuals = ace_core.ace_forward(a, n)
    assert_close(backend.to_numpy(per_sample_loss), per_sample, rtol=ULPS * eps)
    split = ace_core.ace_backward(backend.asarray(np.full(batch, weight), dtype), a, n, residuals)
    assert_close(backend.to_numpy(split), want_grad, rtol=ULPS * eps, atol=ULPS * eps * weight)


def test_the_documented_example(backend):
    # Two copied steps of float32 logits ±3e7: a one-part log-mass gave [-1, -1, 2] per step.
    scores = np.array([[[-3e7, 0.0, 3e7]] * 2], dtype=np.float32)
    counts = np.array([[1, 1, 0]])
    _, grad = ace_core.ace_loss_and_grad(
        backend.asarray(scores, "float32"), backend.asarray(counts), reduction="sum"
    )
    np.testing.assert_array_equal(backend.to_numpy(grad), [[[-0.25, -0.25, 0.5]] * 2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row", [(-1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (-1.0, -0.5, 0.25, 0.5, 1.0)])
def test_copied_steps_at_any_magnitude(backend, dtype, row):
    # Every step the same: r = 1/T exactly, so ∂L/∂a = (y - N̄) / T at every step.
    classes = len(row)
    counts = np.array([[1] * classes, [0] * (classes - 1) + [classes], [classes] + [0] * (classes - 1)])
    for scale in magnitudes(dtype):
        scores = np.broadcast_to(np.array(row) * scale, (3, classes, classes)).astype(dtype)
        check_against_exact(backend, scores.astype(np.float64), counts, dtype, "sum")


@pytest.mark.parametrize("dtype", DTYPES)
def test_partly_tied_steps_at_any_magnitude(backend, dtype):
    # Steps that are permutations of one row: a class ties at some steps and loses
    # by a whole scale at the others, so r is 1/(number of ties) or 0, exactly.
    rng = np.random.default_rng(7)
    base = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    orders = [rng.permutation(5) for _ in range(3)]
    steps = [orders[0], orders[0], orders[1], orders[2], orders[1], orders[0]]
    counts = np.array([[2, 1, 0, 3, 0], [1, 1, 1, 1, 2]])
    for scale in magnitudes(dtype):
        scores = np.stack([np.stack([base[order] * scale for order in steps])] * 2).astype(dtype)
        for reduction in ("sum", "mean", "none"):
            check_against_exact(backend, scores.astype(np.float64), counts, dtype, reduction)


@st.composite
def finite_problems(draw):
    """Any finite logits of a dtype (hypothesis favours the extremes), some steps copied."""
    dtype = draw(st.sampled_from(DTYPES))
    batch, steps, classes = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    width = 32 if dtype == "float32" else 64
    elements = st.floats(allow_nan=False, allow_infinity=False, width=width)
    scores = draw(hnp.arrays(np.dtype(dtype), (batch, steps, classes), elements=elements))
    copies = draw(st.lists(st.integers(0, steps - 1), min_size=steps, max_size=steps))
    scores = scores[:, copies, :]  # repeated steps, as in a prediction that stays put
    counts = np.zeros((batch, classes), dtype=np.int64)
    for b in range(batch):
        labels = draw(st.lists(st.integers(0, classes - 1), min_size=steps, max_size=steps))
        np.add.at(counts[b], labels, 1)
    reduction = draw(st.sampled_from(["sum", "mean", "none"]))
    return scores, counts, dtype, reduction


@settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=finite_problems())
def test_gradient_is_bounded_for_any_finite_logits(backend, problem):
    scores, counts, dtype, reduction = problem
    weight = 1.0 / scores.shape[0] if reduction == "mean" else 1.0
    bound = weight * (1 + ULPS * float(np.finfo(dtype).eps))
    a, n = backend.asarray(scores, dtype), backend.asarray(counts)
    _, grad = ace_core.ace_loss_and_grad(a, n, reduction=reduction)
    grad = backend.to_numpy(grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() <= bound
    _, residuals = ace_core.ace_forward(a, n)
    split = backend.to_numpy(
        ace_core.ace_backward(backend.asarray(np.full(scores.shape[0], weight), dtype), a, n, residuals)
    )
    assert np.all(np.isfinite(split)) and np.abs(split).max() <= bound


def test_float32_logits_of_scale_30_stay_within_the_bound(backend):
    # A dominant class at logits of about 30 in float32, one step: r = y / Σ_t y = 1 must not round above 1.
    rng = np.random.default_rng(12)
    bound = 1 + ULPS * float(np.finfo(np.float32).eps)
    for _ in range(200):
        scores = (rng.standard_normal((2, 1, 3)) * 30).astype(np.float32)
        counts = np.eye(3, dtype=np.int64)[rng.integers(0, 3, size=2)]
        _, grad = ace_core.ace_loss_and_grad(
            backend.asarray(scores, "float32"), backend.asarray(counts), reduction="sum"
        )
        assert np.abs(backend.to_numpy(grad)).max() <= bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_own_ops_at_any_magnitude(dtype, monkeypatch):
    # torch CPU tensors take the NumPy path; its own ops (CUDA without CuPy, bfloat16) must hold too.
    from _backends import load_backend

    backend = load_backend("torch")
    monkeypatch.setattr(
        importlib.import_module("ace_core.backends.torch"), "_use_numpy", lambda scores: False
    )
    base = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    steps = [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]]
    counts = np.array([[1, 1, 0, 2, 0], [0, 0, 0, 0, 4]])
    for scale in magnitudes(dtype):
        scores = np.stack([np.stack([base[order] * scale for order in steps])] * 2).astype(dtype)
        check_against_exact(backend, scores.astype(np.float64), counts, dtype, "sum")
