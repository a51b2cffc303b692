"""Recognition and counting metrics against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ace_core


@pytest.mark.parametrize(
    ("prediction", "reference", "distance"),
    [
        ("", "", 0),
        ("", "abc", 3),  # three insertions
        ("abc", "", 3),  # three deletions
        ("abc", "abc", 0),
        ("flaw", "lawn", 2),  # delete f, insert n
        ("intention", "execution", 5),
        ([1, 2, 3], [3, 2, 1], 2),  # two substitutions
        ([1, 2, 3, 4], (2, 3, 4, 5), 2),  # any sequence types
    ],
)
def test_edit_distance(prediction, reference, distance):
    assert ace_core.edit_distance(prediction, reference) == distance
    assert ace_core.edit_distance(reference, prediction) == distance  # symmetric


def test_character_error_rate_is_corpus_level():
    # Distances 1 and 2 over reference lengths 2 and 3: 3/5, not the per-sample mean (1/2 + 2/3)/2.
    predictions, references = [[1, 2, 3], [4]], [[1, 3], [4, 5, 6]]
    assert ace_core.character_error_rate(predictions, references) == pytest.approx(0.6, rel=1e-15)


def test_character_error_rate_with_empty_references():
    assert ace_core.character_error_rate([[]], [[]]) == 0.0
    assert ace_core.character_error_rate([[1]], [[]]) == math.inf


def test_sequence_accuracy():
    predictions = [[1, 2], [3], [], [2, 1]]
    references = [[1, 2], [3, 3], [], [1, 2]]
    assert ace_core.sequence_accuracy(predictions, references) == pytest.approx(2 / 4, rel=1e-15)


def test_bag_accuracy_ignores_order_but_not_multiplicity():
    predictions = [[2, 1, 1], [3], [1, 2], [1, 2]]
    references = [[1, 1, 2], [3, 3], [2, 1], [1, 1, 2]]
    # Matches: sample 0 (same multiset), sample 2 (order differs); 1 and 3 miss a repeat.
    assert ace_core.bag_accuracy(predictions, references) == pytest.approx(2 / 4, rel=1e-15)


@pytest.mark.parametrize("metric", ["character_error_rate", "sequence_accuracy", "bag_accuracy"])
def test_sequence_metrics_reject_mismatched_or_empty_input(metric):
    function = getattr(ace_core, metric)
    with pytest.raises(ValueError):
        function([[1]], [[1], [2]])
    with pytest.raises(ValueError):
        function([], [])


def test_counting_errors_by_hand(backend):
    predicted = np.array([[1, 2, 0], [3, 3, 1], [0, 5, 2]])
    true = np.array([[1, 3, 0], [3, 3, 3], [1, 2, 2]])
    # Squared errors per class: (0, 0, 1), (1, 0, 9), (0, 4, 0).
    # relRMSE divides each by (c + 1): class 0: 1/2 -> mean 1/6; class 1: 1/4 + 9/3 -> mean 13/12;
    # class 2: 4/4 -> mean 1/3.
    rmse = np.sqrt([1 / 3, 10 / 3, 4 / 3])
    rel_rmse = np.sqrt([1 / 6, 13 / 12, 1 / 3])
    errors = ace_core.counting_errors(backend.asarray(predicted), backend.asarray(true))
    assert isinstance(errors.rmse, np.ndarray) and isinstance(errors.rel_rmse, np.ndarray)
    np.testing.assert_allclose(errors.rmse, rmse, rtol=1e-15)
    np.testing.assert_allclose(errors.rel_rmse, rel_rmse, rtol=1e-15)
    assert errors.mean_rmse == pytest.approx(rmse.mean(), rel=1e-15)
    assert errors.mean_rel_rmse == pytest.approx(rel_rmse.mean(), rel=1e-15)
    # Scoring a subset of classes (e.g. leaving out the background column 0).
    subset = ace_core.counting_errors(backend.asarray(predicted), backend.asarray(true), classes=[1, 2])
    np.testing.assert_allclose(subset.rmse, rmse[1:], rtol=1e-15)
    assert subset.mean_rel_rmse == pytest.approx(rel_rmse[1:].mean(), rel=1e-15)


def test_counting_errors_perfect_prediction_is_zero():
    counts = np.array([[4, 0, 2], [1, 1, 1]])
    errors = ace_core.counting_errors(counts, counts.copy())
    assert np.all(errors.rmse == 0) and np.all(errors.rel_rmse == 0)
    assert errors.mean_rmse == 0 and errors.mean_rel_rmse == 0


def test_counting_errors_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        ace_core.counting_errors(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        ace_core.counting_errors(np.zeros((0, 3)), np.zeros((0, 3)))
