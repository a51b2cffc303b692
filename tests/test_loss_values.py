"""ACE loss values against the independent float64 brute force, on every backend."""

from __future__ import annotations

import array_api_compat
import brute_force
import numpy as np
import pytest
from _helpers import CASE_NAMES, assert_close, make_case, reference_per_sample

import ace_core

REDUCTIONS = ("none", "sum", "mean")
LOSS_RTOL = 1e-12  # float64, shapes of a few dozen elements: the error is a few ulps


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_ace_loss_matches_brute_force(backend, name, from_logits, reduction):
    case = make_case(name, from_logits)
    scores = backend.asarray(case.scores)
    loss = ace_core.ace_loss(
        scores, backend.asarray(case.counts), reduction=reduction, **case.keywords(backend)
    )
    assert loss.dtype == scores.dtype
    expected = brute_force.reduce(reference_per_sample(name, from_logits), reduction)
    assert_close(backend.to_numpy(loss), expected, rtol=LOSS_RTOL, kind="loss vs brute force")


@pytest.mark.parametrize("lengths_kind", ["list", "tuple", "int32", "int64"])
def test_input_lengths_as_list_tuple_or_array(backend, lengths_kind):
    case = make_case("1d_lengths", True)
    loss = ace_core.ace_loss(
        backend.asarray(case.scores),
        backend.asarray(case.counts),
        reduction="none",
        **case.keywords(backend, lengths_kind),
    )
    assert_close(backend.to_numpy(loss), reference_per_sample("1d_lengths", True), rtol=LOSS_RTOL)


def test_input_lengths_as_one_int(backend):
    case = make_case("1d_same_lengths", True)
    loss = ace_core.ace_loss(
        backend.asarray(case.scores),
        backend.asarray(case.counts),
        reduction="none",
        **case.keywords(backend, "int"),
    )
    expected = brute_force.ace_per_sample(case.scores, case.counts, case.valid)
    assert_close(backend.to_numpy(loss), expected, rtol=LOSS_RTOL)


def test_flattened_mask_on_2d_scores_is_read_row_major(backend):
    # A (B, H*W) mask for (B, H, W, C) scores is read row-major (h outer, w inner),
    # so it must select the same cells as the (B, H, W) mask it was reshaped from.
    case = make_case("2d_mask", True)
    scores, counts = backend.asarray(case.scores), backend.asarray(case.counts)
    full = ace_core.ace_loss(scores, counts, mask=backend.asarray(case.mask), reduction="none")
    flat = ace_core.ace_loss(scores, counts, mask=backend.asarray(case.mask.reshape(2, -1)), reduction="none")
    assert_close(backend.to_numpy(flat), backend.to_numpy(full), rtol=0)
    assert_close(backend.to_numpy(full), reference_per_sample("2d_mask", True), rtol=LOSS_RTOL)
    # The check can fail: the same mask flattened column-major selects other cells.
    by_columns = backend.asarray(case.mask.transpose(0, 2, 1).reshape(2, -1))
    other = ace_core.ace_loss(scores, counts, mask=by_columns, reduction="none", zero_infinity=True)
    assert not np.allclose(backend.to_numpy(other), backend.to_numpy(full), rtol=1e-6)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_ace_loss_equals_first_output_of_loss_and_grad(backend, from_logits):
    case = make_case("1d_mask", from_logits)
    args = (backend.asarray(case.scores), backend.asarray(case.counts))
    for reduction in REDUCTIONS:
        alone = ace_core.ace_loss(*args, reduction=reduction, **case.keywords(backend))
        with_grad, _ = ace_core.ace_loss_and_grad(*args, reduction=reduction, **case.keywords(backend))
        assert_close(backend.to_numpy(alone), backend.to_numpy(with_grad), rtol=1e-15)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_mean_is_the_batch_mean_not_ctc_mean(backend, from_logits):
    # "mean" divides by B only; CTC's "mean" would also divide each L_b by its target length.
    case = make_case("1d_lengths", from_logits)
    args = (backend.asarray(case.scores), backend.asarray(case.counts))
    per_sample = backend.to_numpy(ace_core.ace_loss(*args, reduction="none", **case.keywords(backend)))
    mean = backend.to_numpy(ace_core.ace_loss(*args, reduction="mean", **case.keywords(backend)))
    total = backend.to_numpy(ace_core.ace_loss(*args, reduction="sum", **case.keywords(backend)))
    assert mean.shape == () and total.shape == ()
    assert_close(mean, per_sample.sum() / per_sample.shape[0], rtol=1e-15)
    assert_close(total, per_sample.sum(), rtol=1e-15)


def test_default_reduction_is_mean(backend):
    case = make_case("1d", True)
    args = (backend.asarray(case.scores), backend.asarray(case.counts))
    assert_close(
        backend.to_numpy(ace_core.ace_loss(*args)),
        backend.to_numpy(ace_core.ace_loss(*args, reduction="mean")),
        rtol=0,
    )


def test_hand_computed_uniform_loss(backend):
    # Uniform predictions over C classes give ȳ = 1/C for every class, so
    # L = -Σ_k N̄_k log(1/C) = log C whatever the counts.
    counts = np.array([[2, 1, 1], [4, 0, 0], [0, 3, 1]])
    loss = ace_core.ace_loss(backend.asarray(np.zeros((3, 4, 3))), backend.asarray(counts), reduction="none")
    assert_close(backend.to_numpy(loss), np.full(3, np.log(3.0)), rtol=1e-15)


def test_hand_computed_one_hot_probabilities(backend):
    # Probabilities that are one-hot: ȳ = histogram of the chosen classes / T.
    # Steps choose classes (0, 1, 1, 2); counts (1, 1, 2, 0): the class-0 term is
    # -(1/4) log(1/4), class 1: -(1/4) log(2/4), class 2: -(2/4) log(1/4); class 3 has N = 0.
    probabilities = np.eye(4)[[[0, 1, 1, 2]]]
    counts = np.array([[1, 1, 2, 0]])
    expected = -(0.25 * np.log(0.25) + 0.25 * np.log(0.5) + 0.5 * np.log(0.25))
    loss = ace_core.ace_loss(backend.asarray(probabilities), backend.asarray(counts), from_logits=False)
    assert_close(backend.to_numpy(loss), expected, rtol=1e-15)


def test_absent_class_with_zero_mass_adds_exactly_zero(backend):
    # N_k = 0 and ȳ_k = 0: the term is 0 (no epsilon, no nan from 0·log 0).
    probabilities = np.array([[[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]]])
    counts = np.array([[1, 1, 0]])
    loss, grad = ace_core.ace_loss_and_grad(
        backend.asarray(probabilities), backend.asarray(counts), from_logits=False
    )
    expected = -(0.5 * np.log(0.375) + 0.5 * np.log(0.625))
    assert_close(backend.to_numpy(loss), expected, rtol=1e-15)
    # ∂L/∂y = -N_k / (T Σ_t y_k): -1/(2·0.75), -1/(2·1.25), and 0 for the absent class.
    expected_grad = np.array([[[-1 / 1.5, -1 / 2.5, 0.0], [-1 / 1.5, -1 / 2.5, 0.0]]])
    assert_close(backend.to_numpy(grad), expected_grad, rtol=1e-15)


def test_counts_as_floats_with_whole_values_are_accepted(backend):
    case = make_case("1d", True)
    as_int = ace_core.ace_loss(backend.asarray(case.scores), backend.asarray(case.counts), reduction="none")
    as_float = ace_core.ace_loss(
        backend.asarray(case.scores), backend.asarray(case.counts.astype(np.float64)), reduction="none"
    )
    assert_close(backend.to_numpy(as_float), backend.to_numpy(as_int), rtol=0)


def test_log_probabilities_give_the_same_loss_as_logits(backend):
    # softmax is invariant to a per-step shift, so log_softmax(a) may be passed as logits.
    case = make_case("1d_lengths", True)
    shifted = case.scores - np.log(np.exp(case.scores).sum(axis=-1, keepdims=True))
    loss = ace_core.ace_loss(
        backend.asarray(shifted), backend.asarray(case.counts), reduction="none", **case.keywords(backend)
    )
    assert_close(backend.to_numpy(loss), reference_per_sample("1d_lengths", True), rtol=LOSS_RTOL)


def test_results_stay_in_the_input_namespace_and_device(xp, asarray):
    # Nothing is silently moved to the host or to another library.
    case = make_case("1d_lengths", True)
    scores, counts = asarray(case.scores), asarray(case.counts)
    device = array_api_compat.device(scores)
    outputs = {
        "ace_loss": ace_core.ace_loss(scores, counts, input_lengths=case.lengths),
        "per_sample": ace_core.ace_forward(scores, counts, input_lengths=case.lengths)[0],
        "gradient": ace_core.ace_loss_and_grad(scores, counts, input_lengths=case.lengths)[1],
        "regression": ace_core.regression_ace_loss(scores, counts, input_lengths=case.lengths),
        "entropy_floor": ace_core.entropy_floor(counts),
        "counts_from_targets": ace_core.counts_from_targets(
            asarray(np.array([[1, 2], [3, 3]])), num_classes=4, input_lengths=[5, 5]
        ),
        "decode_counts": ace_core.decode_counts(scores, input_lengths=case.lengths),
    }
    for name, value in outputs.items():
        assert array_api_compat.array_namespace(value) is xp, f"{name} left the namespace"
        assert array_api_compat.device(value) == device, f"{name} left the device"
