"""Precision: float16/bfloat16 inputs, extreme logits, -inf and garbage at masked steps."""

from __future__ import annotations

import math

import brute_force
import numpy as np
import pytest
from _backends import backend_params, load_backend
from _helpers import assert_close, make_case

import ace_core

HALF_PAIRS = [
    ("numpy", "float16"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("jax", "bfloat16"),
    ("jax", "float16"),
    ("cupy", "float16"),
    ("torch:cuda", "float16"),
    ("torch:cuda", "bfloat16"),
    ("jax:gpu", "bfloat16"),
]


def _half_params():
    selected = {p.values[0]: p for p in backend_params()}
    return [
        pytest.param(name, dtype, id=f"{name}-{dtype}", marks=selected[name].marks)
        for name, dtype in HALF_PAIRS
        if name in selected
    ]


def _round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to ``dtype`` and widened back to float64.

    bfloat16 is float32 with the low 16 bits rounded off (to nearest, ties to even),
    done here on the bits so that no bfloat16 type is needed on the NumPy side.
    """
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return values.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", ["1d_lengths", "2d_mask"])
@pytest.mark.parametrize(("backend_name", "dtype"), _half_params())
def test_half_precision_is_close_to_float32_and_keeps_its_dtype(backend_name, dtype, name, from_logits):
    backend = load_backend(backend_name)
    case = make_case(name, from_logits)
    rounded = _round_to(case.scores, dtype)  # both runs see the same values
    half = backend.asarray(rounded, dtype)
    single = backend.asarray(rounded, "float32")
    keywords = case.keywords(backend)
    for reduction in ("none", "mean"):
        loss_h, grad_h = ace_core.ace_loss_and_grad(
            half, backend.asarray(case.counts), reduction=reduction, **keywords
        )
        loss_s, grad_s = ace_core.ace_loss_and_grad(
            single, backend.asarray(case.counts), reduction=reduction, **keywords
        )
        assert loss_h.dtype == half.dtype and grad_h.dtype == half.dtype
        loss_h, grad_h = backend.to_numpy(loss_h), backend.to_numpy(grad_h)
        assert np.all(np.isfinite(loss_h)) and np.all(np.isfinite(grad_h))
        assert_close(loss_h, backend.to_numpy(loss_s), rtol=1e-2, kind=f"{dtype} loss vs float32")
        grad_s = backend.to_numpy(grad_s)
        assert_close(
            grad_h, grad_s, rtol=1e-2, atol=1e-2 * np.abs(grad_s).max(), kind=f"{dtype} gradient vs float32"
        )


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize(("backend_name", "dtype"), _half_params())
def test_half_precision_accumulates_long_sums_in_float32(backend_name, dtype, from_logits):
    # 4096 steps of y = (0.3, 0.7): a half-precision running sum of 0.3s stalls
    # long before 1229 (float16 spacing is 2 at 2048, bfloat16's is 2 at 256).
    backend = load_backend(backend_name)
    steps = 4096
    probabilities = _round_to(np.tile([0.3, 0.7], (1, steps, 1)), dtype)
    counts = np.array([[1229, steps - 1229]])
    scores = np.log(probabilities) if from_logits else probabilities
    scores = _round_to(scores, dtype)
    expected = brute_force.ace_per_sample(scores, counts, from_logits=from_logits)
    loss = ace_core.ace_loss(backend.asarray(scores, dtype), backend.asarray(counts), from_logits=from_logits)
    assert_close(backend.to_numpy(loss), expected[0], rtol=1e-2)


# ---------------------------------------------------------------------------
# Extreme logits


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logits_of_plus_minus_1e4_hand_derived(backend, dtype):
    # Each step puts +1e4 on one class and -1e4 on the others, so y is one-hot up
    # to e^-20000 (0 in any float). Sample 0: the one-hot histogram equals N, so
    # L = H(N̄) and the gradient is 0. Sample 1: steps choose classes (1, 1, 2), N = (1, 1, 1);
    # class 0 gets ȳ = e^-20000, which only log space can hold:
    #   L = -(1/3)(-20000) - (1/3) log(2/3) - (1/3) log(1/3),
    # and with r = y/Σ_t y, s = Σ_k N̄ r (class 0 has r = 1/3 at every step):
    #   steps 0, 1: s = 1/9 + 1/6 = 5/18, grad = (-1/9, 5/18 - 1/6, 0) = (-1/9, 1/9, 0)
    #   step 2:     s = 1/9 + 1/3 = 4/9,  grad = (-1/9, 0, 4/9 - 1/3) = (-1/9, 0, 1/9)
    chosen = np.array([[0, 1, 1], [1, 1, 2]])
    logits = np.where(np.eye(3, dtype=bool)[chosen], 1e4, -1e4)
    counts = np.array([[1, 2, 0], [1, 1, 1]])
    loss, grad = ace_core.ace_loss_and_grad(
        backend.asarray(logits, dtype), backend.asarray(counts), reduction="none"
    )
    expected_loss = [
        -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3),
        20000 / 3 - (1 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3),
    ]
    expected_grad = np.zeros((2, 3, 3))
    expected_grad[1] = [[-1 / 9, 1 / 9, 0], [-1 / 9, 1 / 9, 0], [-1 / 9, 0, 1 / 9]]
    rtol = 1e-14 if dtype == "float64" else 1e-6
    assert_close(
        backend.to_numpy(loss), expected_loss, rtol=rtol, kind=f"loss at ±1e4 logits, hand-derived ({dtype})"
    )
    # log ȳ_0 ≈ -20000 is held to within half its ulp; exp of the cancellation against it
    # turns that absolute error into a relative one, so the gradient is good to ~ulp(2e4).
    grad_atol = 2 * float(np.spacing(np.array(2e4, dtype=dtype)))
    assert_close(
        backend.to_numpy(grad),
        expected_grad,
        rtol=0,
        atol=grad_atol,
        kind=f"gradient at ±1e4 logits, hand-derived ({dtype})",
    )
    # The log-space brute force agrees with the hand derivation (checks the reference too).
    assert_close(brute_force.ace_per_sample_log_space(logits, counts), expected_loss, rtol=1e-14)


def _tiny_probability_case():
    """Class 2 has probability ~1e-300 at every step (logit -690.8 against two 0s), N_2 = 1."""
    logits = np.array([[[0.0, 0.5, -690.7755], [0.3, 0.0, -689.0], [0.0, 0.0, -691.5]]])
    counts = np.array([[1, 1, 1]])
    return logits, counts


def test_class_with_probability_1e_minus_300(backend):
    logits, counts = _tiny_probability_case()
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert 1e-302 < probabilities[0, :, 2].min() < 1e-298  # normal float64, not subnormal
    loss, grad = ace_core.ace_loss_and_grad(backend.asarray(logits), backend.asarray(counts), reduction="sum")
    loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert_close(
        loss,
        brute_force.ace_per_sample_log_space(logits, counts).sum(),
        rtol=1e-14,
        kind="loss at p ~ 1e-300",
    )
    assert_close(loss, brute_force.ace_per_sample(logits, counts).sum(), rtol=1e-14)

    def reference(x):
        return float(brute_force.ace_per_sample_log_space(x, counts).sum())

    # |L| ~ 230 here, so central differences carry ~eps·230/h ~ 3e-9 of rounding.
    assert_close(grad, brute_force.central_difference(reference, logits), rtol=0, atol=2e-8)
    assert abs(grad.sum(axis=-1)).max() < 1e-15


def test_extreme_logits_against_mpmath(backend):
    # 50-digit arithmetic for the loss and its gradient (central differences with h = 1e-15).
    mpmath = pytest.importorskip("mpmath")
    chosen = np.array([[1, 1, 2]])
    logits = np.concatenate(
        [
            np.where(np.eye(3, dtype=bool)[chosen], 1e4, -1e4) + np.array([0.0, 0.25, -0.5]),
            _tiny_probability_case()[0],
        ]
    )
    counts = np.array([[1, 1, 1], [1, 1, 1]])
    with mpmath.workdps(50):
        expected_loss = [float(v) for v in brute_force.ace_per_sample_mp(logits, counts, mp=mpmath.mp)]
        expected_grad = brute_force.gradient_mp(logits, counts, mp=mpmath.mp)
    loss, grad = ace_core.ace_loss_and_grad(
        backend.asarray(logits), backend.asarray(counts), reduction="none"
    )
    loss, grad = backend.to_numpy(loss), backend.to_numpy(grad)
    assert_close(loss, expected_loss, rtol=1e-14, kind="extreme logits loss vs mpmath")
    # Log-space intermediates of size M carry ulp(M) absolute error, which exp makes
    # relative: sample 0 (±1e4, M = 2e4) is good to ~4e-12, sample 1 (M = 691) to ~1e-13.
    assert_close(
        grad[0],
        expected_grad[0],
        rtol=0,
        atol=2 * float(np.spacing(2e4)),
        kind="±1e4 logits gradient vs mpmath",
    )
    assert_close(
        grad[1],
        expected_grad[1],
        rtol=0,
        atol=2 * float(np.spacing(691.0)),
        kind="p ~ 1e-300 gradient vs mpmath",
    )


def test_minus_infinity_logits_for_an_absent_class(backend):
    # log-probabilities may hold -inf (probability exactly 0); for a class with N = 0
    # the loss and gradient stay finite and that class gets gradient 0.
    case = make_case("1d_lengths", True)
    counts = case.counts.copy()
    counts[:, 0] += counts[:, 3]  # class 3 becomes absent from every label
    counts[:, 3] = 0
    logits = case.scores.copy()
    logits[:, :, 3] = -np.inf
    valid = case.valid
    loss, grad = ace_core.ace_loss_and_grad(
        backend.asarray(logits), backend.asarray(counts), input_lengths=case.lengths, reduction="sum"
    )
    grad = backend.to_numpy(grad)
    assert np.all(np.isfinite(grad)) and np.all(grad[:, :, 3] == 0)
    expected = brute_force.ace_per_sample(logits[:, :, :3], counts[:, :3], valid).sum()
    assert_close(backend.to_numpy(loss), expected, rtol=1e-12)
    _, grad_without = ace_core.ace_loss_and_grad(
        backend.asarray(logits[:, :, :3]),
        backend.asarray(counts[:, :3]),
        input_lengths=case.lengths,
        reduction="sum",
    )
    assert_close(grad[:, :, :3], backend.to_numpy(grad_without), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize(("dtype", "big"), [("float32", 100.0), ("float64", 800.0)])
def test_confident_short_sample_does_not_overflow_at_masked_steps(backend, dtype, big):
    # T_b = 1 and the needed class has logit -big there: Σ_t y_0 = e^-big, so
    # log(N̄/Σ_t y) = +big. At the masked step y_0 = 1/2, and exp(log y + big) would
    # overflow if it were formed there; the valid step gives, by hand (r = 1, s = 1):
    #   L = -log y_00 = big + log(1 + e^-big),  ∂L/∂a_0 = (y_00 - 1, y_01) = (-1, 1) to rounding.
    logits = np.array([[[-big, 0.0], [0.0, 0.0]]])
    loss, grad = ace_core.ace_loss_and_grad(
        backend.asarray(logits, dtype), backend.asarray(np.array([[1, 0]])), input_lengths=[1]
    )
    assert_close(backend.to_numpy(loss), big, rtol=1e-7)
    assert_close(backend.to_numpy(grad), [[[-1.0, 1.0], [0.0, 0.0]]], rtol=0, atol=1e-7)


@pytest.mark.parametrize("padding", ["-inf", "nan", "1e30", "+inf"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_values_at_masked_steps_do_not_matter(backend, padding, from_logits):
    # Padding (past input_lengths, or outside the mask) may hold anything, e.g. the
    # -inf of masked_fill: the loss and gradient equal those with zero padding.
    case = make_case("1d_lengths", from_logits)
    invalid = ~case.valid
    clean = np.where(invalid[:, :, None], 0.0, case.scores)
    dirty = np.where(invalid[:, :, None], float(padding), case.scores)
    counts = backend.asarray(case.counts)
    results = []
    for scores in (clean, dirty):
        loss, grad = ace_core.ace_loss_and_grad(
            backend.asarray(scores),
            counts,
            input_lengths=case.lengths,
            from_logits=from_logits,
            reduction="none",
        )
        results.append((backend.to_numpy(loss), backend.to_numpy(grad)))
    (loss_clean, grad_clean), (loss_dirty, grad_dirty) = results
    assert_close(loss_dirty, loss_clean, rtol=0)
    assert np.array_equal(grad_dirty, grad_clean)
