"""Regression ACE (the paper's Eq. 4) against the brute force and central differences."""

from __future__ import annotations

import brute_force
import numpy as np
import pytest
from _helpers import assert_close, make_case

import ace_core

REDUCTIONS = ("none", "sum", "mean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", ["1d", "1d_lengths", "2d_mask"])
def test_regression_loss_and_gradient(backend, name, from_logits, reduction):
    case = make_case(name, from_logits)
    scores, counts = backend.asarray(case.scores), backend.asarray(case.counts)
    keywords = case.keywords(backend)
    loss, grad = ace_core.regression_ace_loss_and_grad(scores, counts, reduction=reduction, **keywords)
    loss_only = ace_core.regression_ace_loss(scores, counts, reduction=reduction, **keywords)
    assert (
        loss.dtype == scores.dtype and grad.dtype == scores.dtype and tuple(grad.shape) == case.scores.shape
    )

    def reference(x, how):
        per_sample = brute_force.regression_per_sample(x, case.counts, case.valid, from_logits=from_logits)
        return brute_force.reduce(per_sample, how)

    assert_close(
        backend.to_numpy(loss),
        reference(case.scores, reduction),
        rtol=1e-12,
        kind="regression loss vs brute force",
    )
    assert_close(backend.to_numpy(loss_only), backend.to_numpy(loss), rtol=1e-15)
    effective = "sum" if reduction == "none" else reduction
    expected_grad = brute_force.central_difference(lambda x: float(reference(x, effective)), case.scores)
    assert_close(
        backend.to_numpy(grad),
        expected_grad,
        rtol=1e-8,
        atol=1e-9,
        kind="regression gradient vs central differences",
    )
    if case.valid is not None:
        assert np.all(backend.to_numpy(grad)[~case.valid.reshape(case.scores.shape[:-1])] == 0)


def test_regression_by_hand(backend):
    # Uniform y = 1/4 over 3 steps: Σ_t y = 3/4 per class; N = (2, 1, 0, 0):
    # L = ½ (1.25² + 0.25² + 0.75² + 0.75²) = 1.375; ∂L/∂y = Σ_t y - N = (-1.25, -0.25, 0.75, 0.75).
    probabilities = np.full((1, 3, 4), 0.25)
    counts = np.array([[2, 1, 0, 0]])
    loss, grad = ace_core.regression_ace_loss_and_grad(
        backend.asarray(probabilities), backend.asarray(counts), from_logits=False
    )
    assert_close(backend.to_numpy(loss), 1.375, rtol=1e-15)
    assert_close(backend.to_numpy(grad), np.tile([-1.25, -0.25, 0.75, 0.75], (1, 3, 1)), rtol=1e-15)
