"""entropy_floor: H(N̄), the smallest ACE loss, reached where ȳ = N̄."""

from __future__ import annotations

import brute_force
import numpy as np
import pytest
from _helpers import assert_close

import ace_core

COUNTS = np.array([[2, 1, 1, 0], [4, 0, 0, 0], [1, 1, 1, 1], [0, 3, 0, 1]])  # rows sum to T = 4


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_entropy_floor_matches_loops(backend, reduction):
    floor = ace_core.entropy_floor(backend.asarray(COUNTS.astype(np.float64)), reduction=reduction)
    assert floor.dtype == backend.dtype("float64")
    expected = brute_force.reduce(brute_force.entropy(COUNTS), reduction)
    assert_close(backend.to_numpy(floor), expected, rtol=1e-15, atol=1e-16, kind="entropy floor vs loops")


def test_entropy_floor_by_hand(backend):
    # (2, 1, 1): -(1/2 log 1/2 + 2 · 1/4 log 1/4) = 1.5 log 2; one class only: 0; uniform over 4: log 4.
    floor = ace_core.entropy_floor(backend.asarray(COUNTS[:3].astype(np.float64)))
    assert_close(backend.to_numpy(floor), [1.5 * np.log(2), 0.0, np.log(4)], rtol=1e-15, atol=1e-300)


def test_entropy_floor_of_integer_counts_is_floating(backend):
    floor = ace_core.entropy_floor(backend.asarray(COUNTS))
    assert backend.xp.isdtype(floor.dtype, "real floating")
    rtol = 1e-15 if floor.dtype == backend.dtype("float64") else 1e-6
    assert_close(backend.to_numpy(floor), brute_force.entropy(COUNTS), rtol=rtol, atol=1e-300)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_loss_equals_floor_where_mean_prediction_equals_target(backend, from_logits):
    # y_t = N̄ at every step gives ȳ = N̄, where the loss reaches H(N̄) exactly.
    # (Class 3 of sample 0 and classes 1-3 of sample 1 have N = 0: logit -inf, probability 0.)
    steps = 4
    counts = COUNTS
    n_bar = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        scores = np.log(n_bar) if from_logits else n_bar
    scores = np.repeat(scores[:, None, :], steps, axis=1)
    loss, grad = ace_core.ace_loss_and_grad(
        backend.asarray(scores), backend.asarray(counts), from_logits=from_logits, reduction="none"
    )
    floor = ace_core.entropy_floor(backend.asarray(counts.astype(np.float64)))
    assert_close(backend.to_numpy(loss), backend.to_numpy(floor), rtol=1e-15, atol=1e-15)
    if from_logits:
        # The minimum is stationary: the gradient with respect to the logits vanishes.
        assert_close(backend.to_numpy(grad), np.zeros(scores.shape), rtol=0, atol=1e-16)


def test_loss_is_above_floor_elsewhere(backend):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 4, 4))
    loss = backend.to_numpy(
        ace_core.ace_loss(backend.asarray(logits), backend.asarray(COUNTS), reduction="none")
    )
    floor = brute_force.entropy(COUNTS)
    assert np.all(loss > floor + 1e-6)  # random predictions are strictly worse than ȳ = N̄
    # reduction agrees: the training-log difference loss - floor uses the same reduction for both.
    mean_gap = backend.to_numpy(
        ace_core.ace_loss(backend.asarray(logits), backend.asarray(COUNTS))
    ) - backend.to_numpy(ace_core.entropy_floor(backend.asarray(COUNTS.astype(np.float64)), reduction="mean"))
    assert_close(mean_gap, (loss - floor).mean(), rtol=1e-12)
