"""counts_from_targets and counts_with_background against Python loops, on every backend."""

from __future__ import annotations

import brute_force
import numpy as np
import pytest
from _helpers import random_labels

import ace_core


def _assert_counts(backend, counts, expected):
    assert backend.xp.isdtype(counts.dtype, "integral"), f"counts dtype {counts.dtype} is not integral"
    got = backend.to_numpy(counts)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"\n{got}\n!=\n{expected}"


def _random_labels(seed: int, blank: int = 0):
    rng = np.random.default_rng(seed)
    classes = 6
    input_lengths = [int(v) for v in rng.integers(1, 9, size=4)]
    labels = random_labels(rng, input_lengths, classes, blank=blank)
    return classes, input_lengths, labels


def _padded(labels, fill):
    width = max(1, max(len(label) for label in labels))
    return np.array([label + [fill] * (width - len(label)) for label in labels], dtype=np.int64)


@pytest.mark.parametrize("lengths_kind", ["list", "array"])
@pytest.mark.parametrize("blank", [0, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_padded_targets_with_target_lengths(backend, seed, blank, lengths_kind):
    classes, input_lengths, labels = _random_labels(seed, blank)
    # Padding beyond the target length is ignored, whatever it holds (blank, -1, >= C).
    targets = _padded(labels, fill=[-1, blank, classes + 7][seed])
    target_lengths = [len(label) for label in labels]
    convert = list if lengths_kind == "list" else (lambda v: backend.asarray(np.array(v)))
    counts = ace_core.counts_from_targets(
        backend.asarray(targets),
        convert(target_lengths),
        num_classes=classes,
        input_lengths=convert(input_lengths),
        blank=blank,
    )
    expected = brute_force.counts_from_label_lists(labels, classes, input_lengths, blank)
    _assert_counts(backend, counts, expected)
    assert np.array_equal(backend.to_numpy(counts).sum(axis=1), input_lengths)  # rows sum to T_b


@pytest.mark.parametrize("input_lengths_kind", ["int", "list", "array"])
def test_padded_targets_without_target_lengths_count_every_entry(backend, input_lengths_kind):
    targets = np.array([[1, 2, 2], [3, 3, 3], [4, 1, 2]])
    given = {"int": 7, "list": [7, 7, 7], "array": backend.asarray(np.array([7, 7, 7]))}[input_lengths_kind]
    counts = ace_core.counts_from_targets(backend.asarray(targets), num_classes=5, input_lengths=given)
    # Hand count: blank = 7 - 3 in every row.
    expected = np.array([[4, 1, 2, 0, 0], [4, 0, 0, 3, 0], [4, 1, 1, 0, 1]])
    _assert_counts(backend, counts, expected)
    assert np.array_equal(
        expected,
        brute_force.counts_from_label_lists(brute_force.label_lists_from_padded(targets), 5, [7, 7, 7]),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concatenated_targets(backend, seed):
    classes, input_lengths, labels = _random_labels(seed)
    labels[1] = []  # an empty label in the middle
    flat = np.array([s for label in labels for s in label], dtype=np.int64)
    target_lengths = np.array([len(label) for label in labels])
    counts = ace_core.counts_from_targets(
        backend.asarray(flat),
        backend.asarray(target_lengths),
        num_classes=classes,
        input_lengths=input_lengths,
    )
    split = brute_force.label_lists_from_concatenated(flat, target_lengths)
    assert split == labels
    _assert_counts(backend, counts, brute_force.counts_from_label_lists(labels, classes, input_lengths))


def test_label_longer_than_input_gives_negative_blank(backend):
    # Documented: the helper does not reject it; ace_loss does (or zeroes it).
    counts = ace_core.counts_from_targets(
        backend.asarray(np.array([[1, 2, 1]])), num_classes=3, input_lengths=2
    )
    _assert_counts(backend, counts, np.array([[-1, 2, 1]]))


def test_counts_from_targets_feed_ace_loss(backend):
    classes, input_lengths, labels = _random_labels(5)
    targets = _padded(labels, fill=0)
    counts = ace_core.counts_from_targets(
        backend.asarray(targets),
        [len(label) for label in labels],
        num_classes=classes,
        input_lengths=input_lengths,
    )
    scores = np.random.default_rng(5).normal(size=(4, 8, classes))
    loss = ace_core.ace_loss(backend.asarray(scores), counts, input_lengths=input_lengths, reduction="none")
    valid = brute_force.valid_from_lengths(input_lengths, 8)
    expected = brute_force.ace_per_sample(
        scores, brute_force.counts_from_label_lists(labels, classes, input_lengths), valid
    )
    assert np.allclose(backend.to_numpy(loss), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("lengths_kind", ["int", "list", "array"])
def test_counts_with_background_by_hand(backend, lengths_kind):
    objects = np.array([[0, 2, 5], [99, 0, 0], [0, 1, 1]])  # the background column is replaced
    given = {"int": 16, "list": [16, 16, 16], "array": backend.asarray(np.array([16, 16, 16]))}[lengths_kind]
    counts = ace_core.counts_with_background(backend.asarray(objects), input_lengths=given)
    _assert_counts(backend, counts, np.array([[9, 2, 5], [16, 0, 0], [14, 1, 1]]))


def test_counts_with_background_in_another_column(backend):
    objects = np.array([[3, 2, 7], [0, 4, 1]])
    counts = ace_core.counts_with_background(backend.asarray(objects), input_lengths=[12, 6], background=2)
    # Loops: background = T_b - (sum of the other columns).
    expected = objects.copy()
    for b, length in enumerate([12, 6]):
        expected[b, 2] = length - sum(int(objects[b, k]) for k in range(3) if k != 2)
    assert np.array_equal(expected, [[3, 2, 7], [0, 4, 2]])
    _assert_counts(backend, counts, expected)
