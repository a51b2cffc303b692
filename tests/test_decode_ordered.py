"""decode_ordered against hand-made cases and an independent Python loop, on every backend.

The loop below (:func:`ordered_loops`) is written from the definition alone,
in float64 with ``math.fsum``: each class occurs ``floor(mass + 1/2)`` times,
its j-th occurrence where the running sum of its probabilities first reaches
``j - 1/2`` (linearly inside that step), all occurrences sorted by that place
and then by class id. It returns the margins to the nearest knife edge too
(a mass next to a half-integer, two occurrences at nearly one place), where
float32 and float64 may honestly disagree.
"""

from __future__ import annotations

import math

import brute_force
import numpy as np
import pytest
from _fuzz import examples
from _helpers import assert_unchanged, random_mask
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ace_core


def _reading_steps(scores: np.ndarray, valid: np.ndarray | None, order: str) -> tuple[list, list]:
    """Per sample, the score rows and valid flags in reading order (columns first for ``order="column"``)."""
    if scores.ndim == 4 and order == "column":
        scores = np.swapaxes(scores, 1, 2)
        valid = None if valid is None else np.swapaxes(np.asarray(valid), 1, 2)
    return brute_force.steps_of(np.ascontiguousarray(scores)), brute_force.valid_of(
        None if valid is None else np.ascontiguousarray(valid), scores
    )


def ordered_loops(
    scores: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    blank: int = 0,
    from_logits: bool = True,
    order: str = "row",
) -> tuple[list[list[int]], float]:
    """``(labels per sample, margin)``: the count-ordered reading, and its distance to a knife edge."""
    steps, keep = _reading_steps(np.asarray(scores, dtype=np.float64), valid, order)
    decoded, margin = [], math.inf
    for rows, flags in zip(steps, keep, strict=True):
        probabilities = [
            (t, brute_force.softmax(row) if from_logits else list(row))
            for t, (row, flag) in enumerate(zip(rows, flags, strict=True))
            if flag
        ]
        occurrences = []
        for k in range(len(rows[0]) if rows else 0):
            if k == blank:
                continue
            mass = math.fsum(y[k] for _, y in probabilities)
            margin = min(margin, abs(mass - math.floor(mass) - 0.5))
            for j in range(1, math.floor(mass + 0.5) + 1):
                running = []
                for t, y in probabilities:
                    before = math.fsum(running)
                    running.append(y[k])
                    after = math.fsum(running)
                    if after >= j - 0.5:
                        occurrences.append((t + (j - 0.5 - before) / y[k], k))
                        break
        occurrences.sort()
        for (p, _), (q, _) in zip(occurrences, occurrences[1:], strict=False):
            margin = min(margin, q - p)
        decoded.append([k for _, k in occurrences])
    return decoded, margin


def _assert_python_ints(decoded):
    assert isinstance(decoded, list)
    for labels in decoded:
        assert isinstance(labels, list) and all(type(v) is int for v in labels)


def _probabilities(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


# --------------------------------------------------------------------------- by hand


def test_peaky_steps_read_as_they_are(backend):
    # One-hot steps: every class gets mass 1 in its step; blanks between are dropped.
    y = _probabilities([[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0]]])
    decoded = ace_core.decode_ordered(backend.asarray(y), from_logits=False)
    _assert_python_ints(decoded)
    assert decoded == [[1, 3, 2]]


def test_mass_spread_below_the_blank_is_still_read(backend):
    # Class 1 holds 1/3 of three steps (the blank wins each), then class 2 holds 0.6 of one.
    third = 1 / 3
    y = _probabilities([[[1 - third, third, 0], [1 - third, third, 0], [1 - third, third, 0], [0.4, 0, 0.6]]])
    assert ace_core.decode_greedy(backend.asarray(y)) == [[2]]
    assert ace_core.decode_ordered(backend.asarray(y), from_logits=False) == [[1, 2]]


def test_adjacent_repeats_are_read_twice(backend):
    # "aa" with no blank between: mass 2, crossings of 1/2 and 3/2 in the two steps.
    y = _probabilities([[[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]])
    assert ace_core.decode_greedy(backend.asarray(y)) == [[1, 2]]
    assert ace_core.decode_ordered(backend.asarray(y), from_logits=False) == [[1, 1, 2]]


def test_the_half_crossing_sets_the_place():
    # Class 2's mass reaches 1/2 in step 1 (0.3 + 0.3), class 1's only in step 2 (0.2 + 0.2 + 0.2):
    # class 2 is read first although class 1 has mass earlier.
    y = _probabilities([[[0.5, 0.2, 0.3], [0.5, 0.2, 0.3], [0.4, 0.2, 0.4], [0.6, 0.4, 0.0]]])
    expected, _ = ordered_loops(y, from_logits=False)
    assert expected == [[2, 1]]
    assert ace_core.decode_ordered(y, from_logits=False) == [[2, 1]]


def test_ties_read_the_smaller_class_first(backend):
    # Classes 1 and 2 each gather 0.3 + 0.5: both cross 1/2 at 0.4 of the second step.
    y = _probabilities([[[0.4, 0.3, 0.3], [0, 0.5, 0.5]], [[0.4, 0.3, 0.3], [0, 0.5, 0.5]]])
    assert ace_core.decode_ordered(backend.asarray(y), from_logits=False) == [[1, 2], [1, 2]]


def test_logits_and_probabilities_agree(backend):
    y = _probabilities([[[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]]])
    from_logits = ace_core.decode_ordered(backend.asarray(np.log(y) + 3.0))
    assert from_logits == ace_core.decode_ordered(backend.asarray(y), from_logits=False) == [[1, 2]]


def test_another_blank_is_not_read(backend):
    y = _probabilities([[[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 0]]])
    assert ace_core.decode_ordered(backend.asarray(y), from_logits=False, blank=2) == [[0, 1]]


def test_lengths_and_masks_skip_steps(backend):
    y = _probabilities([[[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]]] * 2)
    asarray = backend.asarray
    assert ace_core.decode_ordered(asarray(y), from_logits=False, input_lengths=[3, 0]) == [[1, 2], []]
    mask = np.array([[True, False, False, True], [False, False, True, False]])
    assert ace_core.decode_ordered(asarray(y), from_logits=False, mask=asarray(mask)) == [[1, 1], [2]]


def test_masked_steps_may_hold_anything(backend):
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3.0, size=(3, 9, 4))
    lengths = [9, 4, 0]
    padded = logits.copy()
    for b, n in enumerate(lengths):
        padded[b, n:] = [np.nan, np.inf, -np.inf, 1e30]
    clean = ace_core.decode_ordered(backend.asarray(logits), input_lengths=lengths)
    assert ace_core.decode_ordered(backend.asarray(padded), input_lengths=lengths) == clean


def test_nothing_to_read(backend):
    # The blank takes all mass: every sample reads empty (also with all steps masked).
    logits = np.zeros((2, 5, 3))
    logits[..., 0] = 10.0
    assert ace_core.decode_ordered(backend.asarray(logits)) == [[], []]
    assert ace_core.decode_ordered(backend.asarray(np.zeros((2, 5, 3))), input_lengths=[0, 0]) == [[], []]


@pytest.mark.parametrize(
    ("order", "expected"), [("row", [[1, 2, 3, 4, 5, 6]]), ("column", [[1, 4, 2, 5, 3, 6]])]
)
def test_2d_reading_order(backend, order, expected):
    best = np.array([[[1, 2, 3], [4, 5, 6]]])  # (B, H, W): rows top to bottom
    y = np.eye(7)[best]
    assert ace_core.decode_ordered(backend.asarray(y), from_logits=False, order=order) == expected


def test_2d_character_over_several_cells_is_read_once(backend):
    # A "1" covering a 2x2 block with 1/4 in each cell (mass 1), then a "2" in one cell.
    y = np.zeros((1, 2, 4, 3))
    y[..., 0] = 1.0
    y[0, :, :2] = [0.75, 0.25, 0.0]
    y[0, 1, 3] = [0.0, 0.0, 1.0]
    for order in ("row", "column"):
        assert ace_core.decode_ordered(backend.asarray(y), from_logits=False, order=order) == [[1, 2]]
        assert ace_core.decode_greedy(backend.asarray(y), order=order, collapse_repeats=False) == [[2]]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_low_precision_scores(backend, dtype):
    logits = np.full((1, 4, 3), -4.0)
    logits[0, [0, 2], [1, 2]] = 4.0
    logits[0, [1, 3], 0] = 4.0
    assert ace_core.decode_ordered(backend.asarray(logits, dtype=dtype)) == [[1, 2]]


# --------------------------------------------------------------------------- against the loop


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("layout", ["full", "lengths_list", "lengths_array", "mask"])
def test_matches_loops_1d(backend, layout, blank, from_logits):
    rng = np.random.default_rng(31)
    logits = rng.normal(scale=2.0, size=(5, 14, 4)) + np.array([1.0, 0, 0, 0])
    scores = logits if from_logits else np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    lengths = [14, 9, 3, 1, 0]
    keywords, valid = {}, None
    if layout.startswith("lengths"):
        keywords["input_lengths"] = (
            lengths if layout == "lengths_list" else backend.asarray(np.array(lengths))
        )
        valid = brute_force.valid_from_lengths(lengths, 14)
    elif layout == "mask":
        valid = random_mask(rng, (5, 14))
        keywords["mask"] = backend.asarray(valid)
    expected, margin = ordered_loops(scores, valid, blank=blank, from_logits=from_logits)
    assert margin > 1e-9  # the seeded data stays clear of knife edges
    decoded = ace_core.decode_ordered(
        backend.asarray(scores), blank=blank, from_logits=from_logits, **keywords
    )
    _assert_python_ints(decoded)
    assert decoded == expected


@pytest.mark.parametrize("order", ["row", "column"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_loops_2d(backend, masked, order):
    rng = np.random.default_rng(32)
    logits = rng.normal(scale=2.0, size=(3, 4, 5, 3)) + np.array([0.5, 0, 0])
    mask = random_mask(rng, (3, 4, 5)) if masked else None
    expected, margin = ordered_loops(logits, mask, order=order)
    assert margin > 1e-9
    decoded = ace_core.decode_ordered(
        backend.asarray(logits), mask=None if mask is None else backend.asarray(mask), order=order
    )
    assert decoded == expected


# --------------------------------------------------------------------------- properties


# The properties run on NumPy (each example is a few calls); the backends meet the loop above.
@settings(max_examples=examples(40), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 3),
    steps=st.integers(1, 9),
    classes=st.integers(2, 5),
    scale=st.sampled_from([0.5, 2.0, 6.0]),
    use_lengths=st.booleans(),
)
def test_property_matches_loops(seed, batch, steps, classes, scale, use_lengths):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(batch, steps, classes))
    lengths = rng.integers(0, steps + 1, size=batch).tolist() if use_lengths else None
    valid = None if lengths is None else brute_force.valid_from_lengths(lengths, steps)
    expected, margin = ordered_loops(logits, valid)
    assume(margin > 1e-6)
    assert ace_core.decode_ordered(logits, input_lengths=lengths) == expected


@settings(max_examples=examples(40), deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 10), classes=st.integers(2, 6))
def test_property_counts_and_reading_order(seed, steps, classes):
    # Each class is read floor(mass + 1/2) times (decode_counts' readout away from .5), and a
    # lengths prefix reads as the same prefix mask.
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(2, steps, classes))
    mass = brute_force.aggregated_probabilities(logits)
    assume(np.all(np.abs(mass - np.floor(mass) - 0.5) > 1e-6))
    lengths = [steps, int(rng.integers(0, steps + 1))]
    by_lengths = ace_core.decode_ordered(logits, input_lengths=lengths)
    prefix = brute_force.valid_from_lengths(lengths, steps)
    assert ace_core.decode_ordered(logits, mask=prefix) == by_lengths
    decoded = ace_core.decode_ordered(logits)
    for b in range(2):
        read = np.bincount(np.array(decoded[b], dtype=np.int64), minlength=classes)
        want = np.floor(mass[b] + 0.5).astype(np.int64)
        want[0] = 0
        assert read.tolist() == want.tolist()


def test_exact_half_masses_round_as_decode_counts(backend):
    # Masses of exactly 0.5, 1.5 and 2.5 (sums of quarters, exact in float64) round half to even,
    # as decode_counts reads them: 0, 2 and 2 occurrences.
    rows = [
        [0.5, 0.25, 0.25, 0.0],
        [0.25, 0.25, 0.25, 0.25],
        [0.0, 0.0, 0.5, 0.5],
        [0.0, 0.0, 0.5, 0.5],
        [0.5, 0.0, 0.0, 0.5],
        [0.25, 0.0, 0.0, 0.75],
    ]
    y = backend.asarray(np.array([rows]), "float64")
    assert np.array(rows).sum(axis=0)[1:].tolist() == [0.5, 1.5, 2.5]
    counts = backend.to_numpy(ace_core.decode_counts(y, from_logits=False))[0]
    read = np.bincount(
        np.array(ace_core.decode_ordered(y, from_logits=False)[0], dtype=np.int64), minlength=4
    )
    assert read[1:].tolist() == counts[1:].tolist() == [0, 2, 2]


@settings(max_examples=examples(40), deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12), classes=st.integers(2, 6))
def test_property_the_multiset_is_decode_counts(seed, steps, classes):
    # Whatever the masses (half-integers included: probabilities in quarters), the classes read
    # are exactly the rounded counts of decode_counts.
    rng = np.random.default_rng(seed)
    quarters = rng.multinomial(4, np.ones(classes) / classes, size=(2, steps)) / 4
    counts = ace_core.decode_counts(quarters, from_logits=False)
    decoded = ace_core.decode_ordered(quarters, from_logits=False)
    for b in range(2):
        read = np.bincount(np.array(decoded[b], dtype=np.int64), minlength=classes)
        read[0] = counts[b, 0]
        assert read.tolist() == counts[b].tolist()


@settings(max_examples=examples(25), deadline=None)
@given(labels=st.lists(st.integers(1, 4), min_size=0, max_size=6), width=st.integers(1, 3))
def test_property_clean_peaks_read_the_label(labels, width):
    # Each label held by `width` one-hot steps, a blank step after it: repeats included, read exactly.
    rows = [np.eye(5)[0]]
    for label in labels:
        for _ in range(width):
            row = np.zeros(5)
            row[label], row[0] = 1 / width, 1 - 1 / width
            rows.append(row)
        rows.append(np.eye(5)[0])
    y = np.array([rows])
    assert ace_core.decode_ordered(y, from_logits=False) == [labels]


# --------------------------------------------------------------------------- bad inputs


def _bad_calls(backend):
    a = backend.asarray
    scores = a(np.random.default_rng(0).normal(size=(2, 5, 4)))
    nan_scores = np.random.default_rng(0).normal(size=(2, 5, 4))
    nan_scores[1, 2, 3] = np.nan
    return {
        "order_unknown": ((scores,), {"order": "diagonal"}, ValueError, "order"),
        "blank_too_large": ((scores,), {"blank": 4}, ValueError, "blank"),
        "blank_negative": ((scores,), {"blank": -1}, ValueError, "blank"),
        "scores_2d": ((a(np.zeros((2, 5))),), {}, ValueError, "scores"),
        "scores_integer": ((a(np.zeros((2, 5, 4), dtype=np.int32)),), {}, (TypeError, ValueError), "scores"),
        "lengths_above_T": ((scores,), {"input_lengths": [5, 6]}, ValueError, r"sample 1\b"),
        "lengths_wrong_batch": ((scores,), {"input_lengths": [5, 5, 5]}, ValueError, "input_lengths"),
        "mask_wrong_shape": ((scores,), {"mask": a(np.ones((2, 4), dtype=bool))}, ValueError, "mask"),
        "nan_scores": ((a(nan_scores),), {}, ValueError, r"sample 1\b"),
    }


BAD_CALL_NAMES = ["order_unknown", "blank_too_large", "blank_negative", "scores_2d", "scores_integer"]
BAD_CALL_NAMES += ["lengths_above_T", "lengths_wrong_batch", "mask_wrong_shape", "nan_scores"]


@pytest.mark.parametrize("name", BAD_CALL_NAMES)
def test_bad_input_raises_and_leaves_inputs_unchanged(backend, name):
    args, keywords, error, match = _bad_calls(backend)[name]
    arrays = [*args, *(v for v in keywords.values() if hasattr(v, "shape"))]
    before = [backend.to_numpy(x) for x in arrays]
    with pytest.raises(error, match=match):
        ace_core.decode_ordered(*args, **keywords)
    assert_unchanged(before, [backend.to_numpy(x) for x in arrays])


def test_valid_call_leaves_inputs_unchanged(backend):
    rng = np.random.default_rng(3)
    scores = backend.asarray(rng.normal(size=(3, 6, 4)))
    mask = backend.asarray(random_mask(rng, (3, 6)))
    before = [backend.to_numpy(scores), backend.to_numpy(mask)]
    ace_core.decode_ordered(scores, mask=mask)
    ace_core.decode_ordered(scores, mask=mask, from_logits=False)
    assert_unchanged(before, [backend.to_numpy(scores), backend.to_numpy(mask)])
