"""Hypothesis property tests of every public function besides the loss invariants of test_properties.py.

Counts, the entropy floor, regression ACE, the forward/backward halves, the
decoders and the metrics, on every CPU backend (``api_backend``), each against
the brute force of ``brute_force.py`` or an identity that does not use the
code under test. Random shapes, lengths (as ints, lists and arrays), signed and
unsigned integer dtypes, float32/float64.
"""

from __future__ import annotations

import math

import brute_force
import numpy as np
import pytest
from _backends import CPU_BACKENDS, backend_params, load_backend
from _fuzz import examples
from _helpers import assert_close, assert_unchanged
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ace_core

INDEX_DTYPES = ("int64", "int32", "int16", "uint8", "uint16", "uint32")
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@pytest.fixture(scope="module", params=backend_params(CPU_BACKENDS))
def api_backend(request):
    """Every CPU backend (module scope: hypothesis reruns the body, a function fixture would not reset)."""
    return load_backend(request.param)


def _index_dtype(backend, name: str) -> str:
    """``name``, or int64 where the backend lacks it (array_api_strict and torch lack some unsigned)."""
    try:
        backend.asarray(np.zeros(1, dtype=name), name)
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return "int64"
    return name


@st.composite
def labelled_batches(draw, max_batch=4, max_steps=7, max_classes=6):
    """``(labels per sample, T_b per sample, C, blank)`` with every label fitting its input."""
    batch = draw(st.integers(1, max_batch))
    classes = draw(st.integers(2, max_classes))
    blank = draw(st.integers(0, classes - 1))
    symbols = [k for k in range(classes) if k != blank]
    lengths = draw(st.lists(st.integers(0, max_steps), min_size=batch, max_size=batch))
    labels = [draw(st.lists(st.sampled_from(symbols), max_size=t)) for t in lengths]
    return labels, lengths, classes, blank


# --------------------------------------------------------------------------- counts


@settings(max_examples=examples(20), **SETTINGS)
@given(
    batch=labelled_batches(),
    layout=st.sampled_from(["padded", "padded_full", "concatenated"]),
    lengths_as=st.sampled_from(["list", "array", "int"]),
    dtype=st.sampled_from(INDEX_DTYPES),
    junk=st.integers(-3, 9),
)
def test_counts_from_targets_match_label_lists(api_backend, batch, layout, lengths_as, dtype, junk):
    be = api_backend
    labels, lengths, classes, blank = batch
    dtype = _index_dtype(be, dtype)
    if dtype.startswith("uint"):
        junk = abs(junk)
    if lengths_as == "int":
        lengths = [lengths[0]] * len(lengths)
    if layout == "padded_full":  # no target_lengths: every entry of the (B, S) targets is label
        shortest = min(len(label) for label in labels)
        labels = [label[:shortest] for label in labels]
    label_sizes = [len(label) for label in labels]
    width = max(label_sizes) if layout == "padded_full" else max([1, *label_sizes])
    if layout == "concatenated":
        targets = np.array([s for label in labels for s in label], dtype=dtype)
    else:
        targets = np.full((len(labels), width), junk, dtype=dtype)
        for b, label in enumerate(labels):
            targets[b, : len(label)] = label
    target_lengths = (
        None if layout == "padded_full" else be.asarray(np.array(label_sizes, dtype=dtype), dtype)
    )
    input_lengths = {
        "list": lengths,
        "array": be.asarray(np.array(lengths, dtype=dtype), dtype),
        "int": lengths[0],
    }[lengths_as]
    t = be.asarray(targets, dtype)
    before = [be.to_numpy(t)]
    got = ace_core.counts_from_targets(
        t, target_lengths, num_classes=classes, input_lengths=input_lengths, blank=blank
    )
    expected = brute_force.counts_from_label_lists(labels, classes, lengths, blank=blank)
    got_np = be.to_numpy(got)
    assert got_np.dtype.kind == "i", f"counts must be signed integers, got {got_np.dtype}"
    np.testing.assert_array_equal(got_np, expected)
    # Rows sum to T_b: the blank entry holds the rest.
    np.testing.assert_array_equal(got_np.sum(axis=1), lengths)
    assert_unchanged(before, [be.to_numpy(t)])


@settings(max_examples=examples(20), **SETTINGS)
@given(
    data=st.data(),
    batch=st.integers(1, 4),
    classes=st.integers(1, 6),
    dtype=st.sampled_from(INDEX_DTYPES + ("float64",)),
)
def test_counts_with_background_fills_the_rest(api_backend, data, batch, classes, dtype):
    be = api_backend
    dtype = dtype if dtype == "float64" else _index_dtype(be, dtype)
    background = data.draw(st.integers(0, classes - 1))
    objects = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, 5), min_size=classes, max_size=classes),
                min_size=batch,
                max_size=batch,
            )
        ),
        dtype=dtype,
    )
    others = objects.astype(np.int64).sum(axis=1) - objects[:, background].astype(np.int64)
    lengths = [int(o) + data.draw(st.integers(0, 4)) for o in others]
    got = be.to_numpy(
        ace_core.counts_with_background(
            be.asarray(objects, dtype), input_lengths=lengths, background=background
        )
    )
    assert got.dtype.kind in ("i", "f")
    np.testing.assert_array_equal(got.sum(axis=1), lengths)
    keep = np.arange(classes) != background
    np.testing.assert_array_equal(got[:, keep], objects[:, keep])
    assert np.all(got >= 0)


# --------------------------------------------------------------------------- entropy floor


@settings(max_examples=examples(20), **SETTINGS)
@given(
    rows=st.lists(st.lists(st.integers(0, 9), min_size=2, max_size=6).filter(any), min_size=1, max_size=4),
    dtype=st.sampled_from(["int64", "float32", "float64", "uint8"]),
    reduction=st.sampled_from(["none", "sum", "mean"]),
)
def test_entropy_floor_is_the_entropy_and_the_loss_minimum(api_backend, rows, dtype, reduction):
    be = api_backend
    width = min(len(r) for r in rows)
    counts = np.array([r[:width] for r in rows])
    assume(np.all(counts.sum(axis=1) > 0))
    dtype = dtype if dtype.startswith("float") else _index_dtype(be, dtype)
    floor = be.to_numpy(ace_core.entropy_floor(be.asarray(counts, dtype), reduction=reduction))
    expected = brute_force.entropy(counts)
    # Integer counts give the library's default float (float32 for torch).
    tolerance = 1e-6 if floor.dtype == np.float32 else 1e-12
    assert_close(floor, brute_force.reduce(expected, reduction), rtol=tolerance, atol=tolerance)
    assert np.all(expected >= 0) and np.all(expected <= np.log(width) + 1e-12)
    if reduction == "none":
        # The loss at ȳ = N̄ (every step predicting N̄) equals the floor.
        lengths = counts.sum(axis=1)
        steps = int(lengths.max())
        probabilities = np.repeat((counts / lengths[:, None])[:, None, :], steps, axis=1)
        loss = ace_core.ace_loss(
            be.asarray(probabilities),
            be.asarray(counts),
            input_lengths=[int(v) for v in lengths],
            from_logits=False,
            reduction="none",
        )
        assert_close(be.to_numpy(loss), expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- regression, forward/backward


@st.composite
def loss_problems(draw, max_batch=3, max_steps=5, max_classes=4):
    batch = draw(st.integers(1, max_batch))
    steps = draw(st.integers(1, max_steps))
    classes = draw(st.integers(1, max_classes))
    lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    labels = [draw(st.lists(st.integers(1, classes - 1), max_size=t)) if classes > 1 else [] for t in lengths]
    valid_as = draw(st.sampled_from(["none", "lengths", "mask"]))
    if valid_as == "none":
        lengths = [steps] * batch
        labels = [label[:steps] for label in labels]
    valid = brute_force.valid_from_lengths(lengths, steps)
    if valid_as == "mask":
        order = draw(st.permutations(range(steps)))
        valid = valid[:, list(order)]
    return {
        "shape": (batch, steps, classes),
        "valid_as": valid_as,
        "valid": valid,
        "lengths": lengths,
        "counts": brute_force.counts_from_label_lists(labels, classes, lengths),
        "from_logits": draw(st.booleans()),
        "reduction": draw(st.sampled_from(["none", "sum", "mean"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _inputs(be, problem):
    rng = np.random.default_rng(problem["seed"])
    shape = problem["shape"]
    if problem["from_logits"]:
        values = rng.normal(scale=2.0, size=shape)
    else:
        raw = rng.uniform(0.05, 1.0, size=shape)
        values = raw / raw.sum(axis=-1, keepdims=True)
    keywords = {"from_logits": problem["from_logits"]}
    if problem["valid_as"] == "lengths":
        keywords["input_lengths"] = be.asarray(np.array(problem["lengths"]))
    elif problem["valid_as"] == "mask":
        keywords["mask"] = be.asarray(problem["valid"])
    return values, keywords


@settings(max_examples=examples(20), **SETTINGS)
@given(problem=loss_problems())
def test_regression_matches_brute_force_and_central_differences(api_backend, problem):
    be = api_backend
    values, keywords = _inputs(be, problem)
    counts, valid, reduction = problem["counts"], problem["valid"], problem["reduction"]
    scores = be.asarray(values)
    loss, grad = ace_core.regression_ace_loss_and_grad(
        scores, be.asarray(counts), reduction=reduction, **keywords
    )
    only = ace_core.regression_ace_loss(scores, be.asarray(counts), reduction=reduction, **keywords)
    from_logits = problem["from_logits"]

    def reference(x, how=reduction):
        per_sample = brute_force.regression_per_sample(x, counts, valid, from_logits=from_logits)
        return brute_force.reduce(per_sample, how)

    assert_close(be.to_numpy(loss), reference(values), rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(be.to_numpy(only), be.to_numpy(loss))
    effective = "sum" if reduction == "none" else reduction
    expected = brute_force.central_difference(lambda x: float(reference(x, effective)), values)
    assert_close(be.to_numpy(grad), expected, rtol=1e-6, atol=1e-8)
    assert np.all(be.to_numpy(grad)[~valid] == 0)


@settings(max_examples=examples(20), **SETTINGS)
@given(problem=loss_problems(), weights=st.lists(st.floats(-3, 3, width=32), min_size=3, max_size=3))
def test_forward_backward_halves_agree_with_loss_and_grad(api_backend, problem, weights):
    be = api_backend
    values, keywords = _inputs(be, problem)
    counts = be.asarray(problem["counts"])
    scores = be.asarray(values)
    batch = problem["shape"][0]
    per_sample, residuals = ace_core.ace_forward(scores, counts, **keywords)
    loss_none = ace_core.ace_loss(scores, counts, reduction="none", **keywords)
    np.testing.assert_array_equal(be.to_numpy(per_sample), be.to_numpy(loss_none))
    expected = brute_force.ace_per_sample(
        values, problem["counts"], problem["valid"], from_logits=problem["from_logits"]
    )
    assert_close(be.to_numpy(per_sample), expected, rtol=1e-12, atol=1e-13)

    # The backward is linear in grad_output: a weighted sum of the per-sample gradients.
    weight = np.array(weights[:batch], dtype=np.float64)
    grad = be.to_numpy(
        ace_core.ace_backward(be.asarray(weight), scores, counts, residuals, **_logits(keywords))
    )
    grad_sum = be.to_numpy(ace_core.ace_loss_and_grad(scores, counts, reduction="sum", **keywords)[1])
    scalar = be.to_numpy(ace_core.ace_backward(2.0, scores, counts, residuals, **_logits(keywords)))
    assert_close(scalar, 2.0 * grad_sum, rtol=1e-12, atol=1e-14)
    per_sample_grads = []
    for b in range(batch):
        one_hot = np.zeros(batch)
        one_hot[b] = 1.0
        per_sample_grads.append(
            be.to_numpy(
                ace_core.ace_backward(be.asarray(one_hot), scores, counts, residuals, **_logits(keywords))
            )
        )
    combined = sum(w * g for w, g in zip(weight, per_sample_grads, strict=True))
    assert_close(grad, combined, rtol=1e-10, atol=1e-13)
    assert grad.shape == problem["shape"]


def _logits(keywords):
    return {"from_logits": keywords["from_logits"]}


# --------------------------------------------------------------------------- decoders


@settings(max_examples=examples(20), **SETTINGS)
@given(
    data=st.data(),
    shape=st.sampled_from([(2, 6, 4), (1, 9, 3), (3, 2, 3, 4), (2, 1, 5, 3)]),
    collapse=st.booleans(),
    order=st.sampled_from(["row", "column"]),
    valid_as=st.sampled_from(["none", "lengths", "mask"]),
)
def test_decode_greedy_matches_brute_force(api_backend, data, shape, collapse, order, valid_as):
    be = api_backend
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    classes = shape[-1]
    # Few distinct values: ties happen, and the first maximum must win.
    scores = rng.integers(0, 3, size=shape).astype(np.float64)
    blank = data.draw(st.integers(0, classes - 1))
    keywords, valid = {}, None
    if valid_as == "lengths" and len(shape) == 3:
        lengths = data.draw(st.lists(st.integers(0, shape[1]), min_size=shape[0], max_size=shape[0]))
        keywords["input_lengths"] = lengths
        valid = brute_force.valid_from_lengths(lengths, shape[1])
    elif valid_as == "mask":
        valid = rng.random(shape[:-1]) < 0.7
        keywords["mask"] = be.asarray(valid)
    got = ace_core.decode_greedy(
        be.asarray(scores), blank=blank, collapse_repeats=collapse, order=order, **keywords
    )
    expected = brute_force.greedy_decode(scores, valid, blank=blank, collapse_repeats=collapse, order=order)
    assert got == expected
    assert all(isinstance(label, int) for row in got for label in row)


@settings(max_examples=examples(20), **SETTINGS)
@given(
    data=st.data(),
    shape=st.sampled_from([(2, 6, 4), (1, 9, 3), (3, 2, 3, 4)]),
    from_logits=st.booleans(),
    valid_as=st.sampled_from(["none", "lengths", "mask"]),
)
def test_decode_counts_rounds_the_aggregated_mass(api_backend, data, shape, from_logits, valid_as):
    be = api_backend
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if from_logits:
        scores = rng.normal(scale=3.0, size=shape)
    else:
        raw = rng.uniform(0.0, 1.0, size=shape)
        scores = raw / raw.sum(axis=-1, keepdims=True)
    keywords, valid = {}, None
    if valid_as == "lengths" and len(shape) == 3:
        lengths = data.draw(st.lists(st.integers(0, shape[1]), min_size=shape[0], max_size=shape[0]))
        keywords["input_lengths"] = be.asarray(np.array(lengths))
        valid = brute_force.valid_from_lengths(lengths, shape[1])
    elif valid_as == "mask":
        valid = rng.random(shape[:-1]) < 0.7
        keywords["mask"] = be.asarray(valid)
    mass = brute_force.aggregated_probabilities(scores, valid, from_logits=from_logits)
    # Half-way masses round either way within rounding error; such draws say nothing.
    assume(np.all(np.abs(mass - np.floor(mass) - 0.5) > 1e-9))
    got = be.to_numpy(ace_core.decode_counts(be.asarray(scores), from_logits=from_logits, **keywords))
    assert got.dtype.kind == "i" and got.shape == (shape[0], shape[-1])
    np.testing.assert_array_equal(got, np.round(mass).astype(np.int64))


# --------------------------------------------------------------------------- metrics

labels_st = st.lists(st.integers(0, 4), max_size=7)


def _levenshtein(a, b):
    """Independent reference: the recursion with memoization, not the two-row table."""
    a, b = tuple(a), tuple(b)
    cache = {}

    def d(i, j):
        if (i, j) not in cache:
            if i == 0 or j == 0:
                cache[(i, j)] = i + j
            else:
                cache[(i, j)] = min(
                    d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1])
                )
        return cache[(i, j)]

    return d(len(a), len(b))


@settings(max_examples=examples(60), deadline=None)
@given(a=labels_st, b=labels_st, c=labels_st)
def test_edit_distance_is_a_metric_and_matches_the_recursion(a, b, c):
    d = ace_core.edit_distance
    assert d(a, b) == _levenshtein(a, b)
    assert d(a, a) == 0 and d(a, b) == d(b, a)
    assert abs(len(a) - len(b)) <= d(a, b) <= max(len(a), len(b))
    assert d(a, c) <= d(a, b) + d(b, c)
    assert d(a, b) == d("".join(map(str, a)), "".join(map(str, b)))  # strings are label sequences too


@settings(max_examples=examples(40), deadline=None)
@given(pairs=st.lists(st.tuples(labels_st, labels_st), min_size=1, max_size=5), data=st.data())
def test_sequence_metrics_against_their_definitions(pairs, data):
    predictions = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    total = sum(len(r) for r in references)
    errors = sum(_levenshtein(p, r) for p, r in pairs)
    cer = ace_core.character_error_rate(predictions, references)
    if total:
        assert cer == pytest.approx(errors / total, rel=1e-15)
    else:
        assert cer == (0.0 if errors == 0 else math.inf)
    assert ace_core.sequence_accuracy(predictions, references) == pytest.approx(
        sum(p == r for p, r in pairs) / len(pairs)
    )
    # Bag accuracy ignores order: shuffled predictions score the same, and exact matches count.
    shuffled = [data.draw(st.permutations(p)) for p in predictions]
    bag = ace_core.bag_accuracy(predictions, references)
    assert bag == ace_core.bag_accuracy(shuffled, references)
    assert bag >= ace_core.sequence_accuracy(predictions, references)
    assert bag == pytest.approx(sum(sorted(p) == sorted(r) for p, r in pairs) / len(pairs))


@settings(max_examples=examples(20), **SETTINGS)
@given(
    data=st.data(),
    n=st.integers(1, 5),
    classes=st.integers(1, 4),
    dtype=st.sampled_from(["int64", "float64", "int32"]),
)
def test_counting_errors_against_the_formula(api_backend, data, n, classes, dtype):
    be = api_backend
    grid = st.lists(st.lists(st.integers(0, 9), min_size=classes, max_size=classes), min_size=n, max_size=n)
    predicted, true = np.array(data.draw(grid)), np.array(data.draw(grid))
    chosen = data.draw(
        st.none() | st.lists(st.integers(0, classes - 1), min_size=1, max_size=classes, unique=True)
    )
    got = ace_core.counting_errors(be.asarray(predicted, dtype), be.asarray(true, dtype), classes=chosen)
    columns = list(range(classes)) if chosen is None else chosen
    p, t = predicted[:, columns].astype(float), true[:, columns].astype(float)
    rmse = [math.sqrt(math.fsum((p[:, k] - t[:, k]) ** 2) / n) for k in range(len(columns))]
    rel = [math.sqrt(math.fsum((p[:, k] - t[:, k]) ** 2 / (t[:, k] + 1)) / n) for k in range(len(columns))]
    assert_close(got.rmse, rmse, rtol=1e-14, atol=1e-15)
    assert_close(got.rel_rmse, rel, rtol=1e-14, atol=1e-15)
    assert got.mean_rmse == pytest.approx(math.fsum(rmse) / len(rmse), rel=1e-14, abs=1e-15)
    assert got.mean_rel_rmse == pytest.approx(math.fsum(rel) / len(rel), rel=1e-14, abs=1e-15)
    assert all(r >= q - 1e-15 for r, q in zip(rmse, rel, strict=True))  # relRMSE <= RMSE
