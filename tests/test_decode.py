"""decode_greedy and decode_counts against Python loops and hand-made maps, on every backend."""

from __future__ import annotations

import brute_force
import numpy as np
import pytest
from _helpers import random_mask

import ace_core


def _one_hot_scores(best: np.ndarray, classes: int) -> np.ndarray:
    """Scores whose argmax at every cell is ``best`` (softened, so that it is not one-hot)."""
    return np.eye(classes)[best] * 3.0 + 0.1 * np.random.default_rng(0).random((*best.shape, classes))


def _assert_python_ints(decoded):
    assert isinstance(decoded, list)
    for labels in decoded:
        assert isinstance(labels, list) and all(type(v) is int for v in labels)


@pytest.mark.parametrize(
    ("collapse", "expected"), [(True, [[1, 1, 2], [3]]), (False, [[1, 1, 1, 2, 2], [3, 3]])]
)
def test_greedy_by_hand(backend, collapse, expected):
    # Runs merge before blanks drop: 1 1 _ 1 2 2 -> (1, 1, 2); without merging every non-blank step counts.
    best = np.array([[1, 1, 0, 1, 2, 2], [0, 3, 3, 0, 0, 0]])
    decoded = ace_core.decode_greedy(backend.asarray(_one_hot_scores(best, 4)), collapse_repeats=collapse)
    _assert_python_ints(decoded)
    assert decoded == expected


def test_greedy_drops_another_blank(backend):
    best = np.array([[2, 2, 1, 0, 0, 2, 1]])
    decoded = ace_core.decode_greedy(backend.asarray(_one_hot_scores(best, 3)), blank=2)
    assert decoded == [[1, 0, 1]]


@pytest.mark.parametrize(
    ("order", "expected"), [("row", [[1, 2, 3, 4, 5, 6]]), ("column", [[1, 4, 2, 5, 3, 6]])]
)
def test_greedy_reading_order_on_2d_maps(backend, order, expected):
    best = np.array([[[1, 2, 3], [4, 5, 6]]])  # (B, H, W): rows top to bottom
    decoded = ace_core.decode_greedy(
        backend.asarray(_one_hot_scores(best, 7)), order=order, collapse_repeats=False
    )
    assert decoded == expected


def test_greedy_collapses_within_the_reading_order(backend):
    # Column order reads 1 1 | 2 2 (each column holds one class): collapsing gives (1, 2);
    # row order reads 1 2 1 2: nothing to merge.
    best = np.array([[[1, 2], [1, 2]]])
    scores = backend.asarray(_one_hot_scores(best, 3))
    assert ace_core.decode_greedy(scores, order="column") == [[1, 2]]
    assert ace_core.decode_greedy(scores, order="row") == [[1, 2, 1, 2]]


def test_greedy_skips_masked_steps(backend):
    # A masked step between two 1s does not split the run, and masked 3s vanish.
    best = np.array([[1, 3, 1, 2, 3]])
    mask = np.array([[True, False, True, True, False]])
    decoded = ace_core.decode_greedy(backend.asarray(_one_hot_scores(best, 4)), mask=backend.asarray(mask))
    assert decoded == [[1, 2]]
    by_lengths = ace_core.decode_greedy(backend.asarray(_one_hot_scores(best, 4)), input_lengths=[3])
    assert by_lengths == [[1, 3, 1]]


@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("collapse", [True, False])
@pytest.mark.parametrize("layout", ["full", "lengths_list", "lengths_array", "mask"])
def test_greedy_matches_loops_1d(backend, layout, collapse, blank):
    rng = np.random.default_rng(21)
    # Few classes and a sharp blank so that runs, repeats and blanks all occur.
    scores = rng.normal(size=(4, 12, 4)) + np.array([1.0, 0, 0, 0])
    lengths = [12, 7, 1, 0]
    keywords, valid = {}, None
    if layout.startswith("lengths"):
        keywords["input_lengths"] = (
            lengths if layout == "lengths_list" else backend.asarray(np.array(lengths))
        )
        valid = brute_force.valid_from_lengths(lengths, 12)
    elif layout == "mask":
        valid = random_mask(rng, (4, 12))
        keywords["mask"] = backend.asarray(valid)
    decoded = ace_core.decode_greedy(
        backend.asarray(scores), blank=blank, collapse_repeats=collapse, **keywords
    )
    _assert_python_ints(decoded)
    assert decoded == brute_force.greedy_decode(scores, valid, blank=blank, collapse_repeats=collapse)


@pytest.mark.parametrize("order", ["row", "column"])
@pytest.mark.parametrize("collapse", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_greedy_matches_loops_2d(backend, masked, collapse, order):
    rng = np.random.default_rng(22)
    scores = rng.normal(size=(3, 4, 5, 3)) + np.array([0.5, 0, 0])
    mask = random_mask(rng, (3, 4, 5)) if masked else None
    decoded = ace_core.decode_greedy(
        backend.asarray(scores),
        mask=None if mask is None else backend.asarray(mask),
        collapse_repeats=collapse,
        order=order,
    )
    assert decoded == brute_force.greedy_decode(scores, mask, collapse_repeats=collapse, order=order)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("layout", ["full", "lengths", "mask_2d"])
def test_decode_counts_matches_loops(backend, layout, from_logits):
    rng = np.random.default_rng(23)
    shape = (3, 4, 3, 5) if layout == "mask_2d" else (3, 12, 5)
    logits = rng.normal(scale=2.0, size=shape)
    scores = logits if from_logits else np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    keywords, valid = {}, None
    if layout == "lengths":
        keywords["input_lengths"] = [12, 5, 0]
        valid = brute_force.valid_from_lengths([12, 5, 0], 12)
    elif layout == "mask_2d":
        valid = random_mask(rng, shape[:-1])
        keywords["mask"] = backend.asarray(valid)
    counts = ace_core.decode_counts(backend.asarray(scores), from_logits=from_logits, **keywords)
    assert backend.xp.isdtype(counts.dtype, "integral")
    mass = brute_force.aggregated_probabilities(scores, valid, from_logits=from_logits)
    assert np.all(
        np.abs(mass - np.floor(mass) - 0.5) > 1e-9
    )  # no .5 ties in this data: rounding is unambiguous
    assert np.array_equal(backend.to_numpy(counts), np.round(mass).astype(np.int64))


def test_decode_counts_by_hand(backend):
    # Σ_t y over the 3 valid steps = (1.2, 1.8) -> (1, 2); with the 4th step it would be (1, 3).
    probabilities = np.array([[[0.9, 0.1], [0.3, 0.7], [0.0, 1.0], [0.0, 1.0]]])
    counts = ace_core.decode_counts(backend.asarray(probabilities), from_logits=False, input_lengths=[3])
    assert backend.to_numpy(counts).tolist() == [[1, 2]]
