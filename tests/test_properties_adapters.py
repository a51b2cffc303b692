"""Hypothesis property tests of the torch and JAX adapters, and of bad input everywhere.

The adapters must give the core's loss and gradient for every layout, form of
lengths and targets (the core's own results on the same data are the
reference here, and the core is checked against the brute force in
test_properties.py). The bad-input property replaces one argument of a valid
call of any public function or adapter with a bad value and asserts a
``ValueError``/``TypeError`` (never another exception), and inputs unchanged.
"""

from __future__ import annotations

import brute_force
import numpy as np
import pytest
from _backends import CPU_BACKENDS, load_backend, selected_backends
from _fuzz import examples
from _helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ace_core

SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@st.composite
def ctc_batches(draw):
    """A CTC-style batch: (T, N, C), lengths, labels that fit, and the forms to pass them in."""
    batch = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 5))
    blank = draw(st.integers(0, classes - 1))
    symbols = [k for k in range(classes) if k != blank]
    input_lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    labels = [draw(st.lists(st.sampled_from(symbols), max_size=t)) for t in input_lengths]
    return {
        "shape": (steps, batch, classes),
        "blank": blank,
        "input_lengths": input_lengths,
        "labels": labels,
        "layout": draw(st.sampled_from(["TNC", "NTC"])),
        "targets_as": draw(st.sampled_from(["padded", "concatenated"])),
        "lengths_as": draw(st.sampled_from(["list", "tuple", "tensor", "int32_tensor", "uint8_tensor"])),
        "reduction": draw(st.sampled_from(["none", "sum", "mean"])),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _torch_lengths(torch, values, form):
    return {
        "list": list(values),
        "tuple": tuple(values),
        "tensor": torch.tensor(values),
        "int32_tensor": torch.tensor(values, dtype=torch.int32),
        "uint8_tensor": torch.tensor(values, dtype=torch.uint8),
    }[form]


@pytest.mark.skipif("torch" not in selected_backends(CPU_BACKENDS), reason="torch not selected")
@settings(max_examples=examples(25), **SETTINGS)
@given(problem=ctc_batches())
def test_torch_adapter_is_the_core_loss_for_every_call_form(problem):
    torch = pytest.importorskip("torch")
    from ace_core.integrations.torch import ace_loss

    steps, batch, classes = problem["shape"]
    rng = np.random.default_rng(problem["seed"])
    logits_tnc = rng.normal(scale=2.0, size=problem["shape"])
    dtype = getattr(torch, problem["dtype"])
    labels, lengths, blank = problem["labels"], problem["input_lengths"], problem["blank"]
    label_sizes = [len(label) for label in labels]
    if problem["targets_as"] == "padded":
        padded = np.zeros((batch, max([1, *label_sizes])), dtype=np.int64)
        for b, label in enumerate(labels):
            padded[b, : len(label)] = label
        targets = torch.tensor(padded)
    else:
        targets = torch.tensor([s for label in labels for s in label], dtype=torch.int64)
    source = logits_tnc if problem["layout"] == "TNC" else logits_tnc.transpose(1, 0, 2)
    log_probs = torch.tensor(source, dtype=dtype, requires_grad=True)
    before = log_probs.detach().clone()
    loss = ace_loss(
        log_probs,
        targets,
        _torch_lengths(torch, lengths, problem["lengths_as"]),
        _torch_lengths(torch, label_sizes, problem["lengths_as"]),
        blank=blank,
        reduction=problem["reduction"],
        layout=problem["layout"],
    )
    loss.sum().backward()
    assert loss.dtype == dtype and loss.shape == ((batch,) if problem["reduction"] == "none" else ())
    assert torch.equal(log_probs.detach(), before)

    # The core on the same (rounded) data, batch-first.
    ntc = torch.tensor(logits_tnc.transpose(1, 0, 2), dtype=dtype).double().numpy()
    counts = brute_force.counts_from_label_lists(labels, classes, lengths, blank=blank)
    effective = "sum" if problem["reduction"] == "none" else problem["reduction"]
    core_loss = ace_core.ace_loss(ntc, counts, input_lengths=lengths, reduction=problem["reduction"])
    _, core_grad = ace_core.ace_loss_and_grad(ntc, counts, input_lengths=lengths, reduction=effective)
    tolerance = 1e-5 if problem["dtype"] == "float32" else 1e-12
    assert_close(loss.detach().double().numpy(), core_loss, rtol=tolerance, atol=tolerance)
    grad = log_probs.grad.double().numpy()
    if problem["layout"] == "TNC":
        grad = grad.transpose(1, 0, 2)
    assert_close(grad, core_grad, rtol=tolerance, atol=tolerance)


@pytest.mark.skipif("torch" not in selected_backends(CPU_BACKENDS), reason="torch not selected")
@settings(max_examples=examples(15), **SETTINGS)
@given(problem=ctc_batches(), lengths_as=st.sampled_from(["int", "0-d"]))
def test_torch_unbatched_call_is_the_batch_of_one(problem, lengths_as):
    torch = pytest.importorskip("torch")
    from ace_core.integrations.torch import ace_loss

    steps, _, classes = problem["shape"]
    rng = np.random.default_rng(problem["seed"])
    label, length = problem["labels"][0], problem["input_lengths"][0]
    log_probs = torch.tensor(rng.normal(size=(steps, classes)), requires_grad=True)
    targets = torch.tensor(label or [0], dtype=torch.int64)[: len(label)]

    def scalar(value):
        return value if lengths_as == "int" else torch.tensor(value)

    keywords = {"blank": problem["blank"], "reduction": problem["reduction"]}
    single = ace_loss(log_probs, targets, scalar(length), scalar(len(label)), **keywords)
    batched = ace_loss(log_probs[:, None], targets[None], [length], [len(label)], **keywords)
    assert single.shape == ()  # 0-d for "none" too, as F.ctc_loss gives
    assert torch.allclose(single, batched.reshape(()), rtol=0, atol=0)
    single.backward()
    assert log_probs.grad.shape == (steps, classes)


@st.composite
def optax_batches(draw):
    batch = draw(st.integers(0, 3))
    steps = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 5))
    blank = draw(st.integers(0, classes - 1))
    symbols = [k for k in range(classes) if k != blank]
    width = draw(st.integers(1, 4))
    logit_valid = [
        draw(st.lists(st.booleans(), min_size=steps, max_size=steps).filter(any)) for _ in range(batch)
    ]
    label_valid, labels = [], []
    for b in range(batch):
        room = min(width, sum(logit_valid[b]))
        chosen = draw(
            st.lists(st.booleans(), min_size=width, max_size=width).filter(lambda v, r=room: sum(v) <= r)
        )
        label_valid.append(chosen)
        labels.append(
            [draw(st.sampled_from(symbols)) if v else draw(st.integers(-2, classes + 2)) for v in chosen]
        )
    return {
        "shape": (batch, steps, classes),
        "blank": blank,
        "logit_valid": np.array(logit_valid, dtype=bool).reshape(batch, steps),
        "label_valid": np.array(label_valid, dtype=bool).reshape(batch, width),
        "labels": np.array(labels, dtype=np.int64).reshape(batch, width),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@pytest.mark.skipif("jax" not in selected_backends(CPU_BACKENDS), reason="jax not selected")
@settings(max_examples=examples(15), **SETTINGS)
@given(problem=optax_batches())
def test_jax_adapter_is_the_core_loss_for_any_padding(problem):
    load_backend("jax")  # x64 on
    import jax
    import jax.numpy as jnp

    import ace_core.integrations.jax as ace_jax

    batch, steps, classes = problem["shape"]
    rng = np.random.default_rng(problem["seed"])
    logits = rng.normal(scale=2.0, size=problem["shape"])
    logit_paddings = (~problem["logit_valid"]).astype(np.float64)
    label_paddings = (~problem["label_valid"]).astype(np.float64)
    args = (jnp.asarray(logit_paddings), jnp.asarray(problem["labels"]), jnp.asarray(label_paddings))

    def total(x):
        return jnp.sum(ace_jax.ace_loss(x, *args, blank_id=problem["blank"]))

    loss = ace_jax.ace_loss(jnp.asarray(logits), *args, blank_id=problem["blank"])
    assert loss.shape == (batch,)
    if batch == 0:
        assert jax.grad(total)(jnp.asarray(logits)).shape == problem["shape"]
        return
    labels = [list(row[keep]) for row, keep in zip(problem["labels"], problem["label_valid"], strict=True)]
    lengths = problem["logit_valid"].sum(axis=1)
    counts = brute_force.counts_from_label_lists(labels, classes, lengths, blank=problem["blank"])
    core_loss, core_grad = ace_core.ace_loss_and_grad(
        logits, counts, mask=problem["logit_valid"], reduction="sum"
    )
    per_sample = ace_core.ace_loss(logits, counts, mask=problem["logit_valid"], reduction="none")
    assert_close(np.asarray(loss), per_sample, rtol=1e-12, atol=1e-13)
    assert_close(np.asarray(jax.grad(total)(jnp.asarray(logits))), core_grad, rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- bad input, everywhere

# Values that must be refused wherever an argument of that kind is expected.
BAD_LENGTHS = {
    "float": 2.5,
    "float_list": [4.0, 4.0, 4.0],
    "bool": True,
    "string": "4",
    "negative": [4, -1, 4],
    "too_long": [4, 9, 4],
    "short": [4, 4],
    "two_d": [[4, 4, 4]],
    "none_element": [4, None, 4],
    "float_array": np.array([4.0, 4.0, 4.0]),
    "bool_array": np.array([True, True, True]),
    "uint64_huge": np.array([4, 2**63 + 1, 4], dtype=np.uint64),
    "python_int_huge": [4, 2**70, 4],
}
BAD_CLASS = {"float": 0.0, "too_big": 9, "negative": -1, "bool": True, "string": "0", "array": np.array([0])}
BAD_ARRAY = {
    "list": [[1.0, 2.0]],
    "string": "scores",
    "none_object": object(),
    "wrong_rank": np.zeros((3, 4)),
    "integer": np.zeros((3, 4, 4), dtype=np.int64),
    "bool": np.zeros((3, 4, 4), dtype=bool),
}
BAD_COUNTS = {
    "negative": np.array([[5, -1, 0, 0], [3, 0, 0, 1], [0, 2, 1, 1]]),
    "wrong_sum": np.array([[2, 1, 1, 1], [3, 0, 0, 1], [0, 2, 1, 1]]),
    "fractional": np.array([[2.5, 0.5, 1, 0], [3, 0, 0, 1], [0, 2, 1, 1]]),
    "nan": np.array([[1, np.nan, 1, 0], [3, 0, 0, 1], [0, 2, 1, 1]]),
    "inf": np.array([[1, np.inf, 1, 0], [3, 0, 0, 1], [0, 2, 1, 1]]),
    "shape": np.array([[2, 1, 1], [3, 0, 1], [0, 2, 2]]),
    "bool": np.ones((3, 4), dtype=bool),
    "list": [[2, 1, 1, 0]] * 3,
}
BAD_MASK = {
    "float": np.ones((3, 4)),
    "transposed": np.ones((4, 3), dtype=bool),
    "int": np.ones((3, 4), dtype=np.int64),
    "list": [[True] * 4] * 3,
}
BAD_FLAG = {"string": "yes", "none": None, "array": np.array([True])}

SCORES = np.random.default_rng(5).normal(size=(3, 4, 4))
COUNTS = np.array([[2, 1, 1, 0], [3, 0, 0, 1], [0, 2, 1, 1]])
TARGETS = np.array([[1, 2], [3, 0], [1, 2]])


def _core_calls(be):
    """name -> (call(argument value), {kind of the argument: bad values})."""
    s, c, a = be.asarray(SCORES), be.asarray(COUNTS), be.asarray
    forward = ace_core.ace_forward(s, c)[1]
    lengths = {**BAD_LENGTHS, "float_array": a(BAD_LENGTHS["float_array"])}
    lengths["bool_array"] = a(BAD_LENGTHS["bool_array"])
    mask = {name: (a(value) if isinstance(value, np.ndarray) else value) for name, value in BAD_MASK.items()}
    counts = {
        name: (a(value) if isinstance(value, np.ndarray) else value) for name, value in BAD_COUNTS.items()
    }
    scores = {
        name: (a(value) if isinstance(value, np.ndarray) else value) for name, value in BAD_ARRAY.items()
    }
    targets = a(TARGETS)
    return {
        "ace_loss.input_lengths": (lambda v: ace_core.ace_loss(s, c, input_lengths=v), lengths),
        "ace_loss.mask": (lambda v: ace_core.ace_loss(s, c, mask=v), mask),
        "ace_loss.counts": (lambda v: ace_core.ace_loss(s, v), counts),
        "ace_loss.scores": (lambda v: ace_core.ace_loss(v, c), scores),
        "ace_loss.zero_infinity": (lambda v: ace_core.ace_loss(s, c, zero_infinity=v), BAD_FLAG),
        "ace_loss_and_grad.input_lengths": (
            lambda v: ace_core.ace_loss_and_grad(s, c, input_lengths=v),
            lengths,
        ),
        "ace_loss_and_grad.counts": (lambda v: ace_core.ace_loss_and_grad(s, v), counts),
        "ace_forward.mask": (lambda v: ace_core.ace_forward(s, c, mask=v), mask),
        "ace_backward.residuals": (
            lambda v: ace_core.ace_backward(a(np.ones(3)), s, c, v),
            {"none": None, "tuple": (1, 2), "other": ace_core.ace_forward(a(SCORES[:2]), a(COUNTS[:2]))[1]},
        ),
        "ace_backward.grad_output": (
            lambda v: ace_core.ace_backward(v, s, c, forward),
            {"short": a(np.ones(2)), "two_d": a(np.ones((3, 1))), "bool": True, "string": "1"},
        ),
        "ace_backward.scores": (lambda v: ace_core.ace_backward(a(np.ones(3)), v, c, forward), scores),
        "regression.counts": (lambda v: ace_core.regression_ace_loss(s, v), counts),
        "regression.input_lengths": (lambda v: ace_core.regression_ace_loss(s, c, input_lengths=v), lengths),
        "entropy_floor.counts": (
            lambda v: ace_core.entropy_floor(v),
            {k: counts[k] for k in ("negative", "nan", "inf", "bool", "list")},
        ),
        "counts_from_targets.input_lengths": (
            lambda v: ace_core.counts_from_targets(targets, num_classes=4, input_lengths=v),
            {**{k: lengths[k] for k in lengths if k != "too_long"}, "none": None},
        ),
        "counts_from_targets.target_lengths": (
            lambda v: ace_core.counts_from_targets(targets, v, num_classes=4, input_lengths=4),
            {k: lengths[k] for k in lengths if k != "uint64_huge"},
        ),
        "counts_from_targets.blank": (
            lambda v: ace_core.counts_from_targets(targets + 1, num_classes=5, input_lengths=4, blank=v),
            {**BAD_CLASS, "too_big": 5},
        ),
        "counts_from_targets.targets": (
            lambda v: ace_core.counts_from_targets(v, num_classes=4, input_lengths=4),
            {
                "float": a(TARGETS.astype(float)),
                "list": [[1, 2]],
                "blank": a(np.array([[1, 0]])),
                "too_big": a(np.array([[1, 4]])),
                "negative": a(np.array([[1, -2]])),
            },
        ),
        "counts_with_background.object_counts": (
            lambda v: ace_core.counts_with_background(v, input_lengths=9),
            {k: counts[k] for k in ("negative", "fractional", "nan", "inf", "bool", "list")},
        ),
        "counts_with_background.input_lengths": (
            lambda v: ace_core.counts_with_background(c, input_lengths=v),
            {k: lengths[k] for k in lengths if k != "too_long"},
        ),
        "decode_greedy.blank": (lambda v: ace_core.decode_greedy(s, blank=v), BAD_CLASS),
        "decode_greedy.input_lengths": (lambda v: ace_core.decode_greedy(s, input_lengths=v), lengths),
        "decode_greedy.collapse_repeats": (lambda v: ace_core.decode_greedy(s, collapse_repeats=v), BAD_FLAG),
        "decode_counts.input_lengths": (lambda v: ace_core.decode_counts(s, input_lengths=v), lengths),
        "decode_counts.scores": (
            lambda v: ace_core.decode_counts(v),
            {**scores, "nan": a(np.where(np.arange(4) == 2, np.nan, SCORES))},
        ),
        "counting_errors.classes": (
            lambda v: ace_core.counting_errors(c, c, classes=v),
            {"too_big": [5], "negative": [-1], "float": [1.0], "empty": [], "bool": [True], "int": 1},
        ),
        "edit_distance.prediction": (lambda v: ace_core.edit_distance(v, [1]), {"int": 5, "none": None}),
        "character_error_rate.predictions": (
            lambda v: ace_core.character_error_rate(v, [[1]] * 3),
            {"int": 5, "short": [[1]], "string": "abc"},
        ),
    }


def _torch_calls():
    import torch

    from ace_core.integrations.torch import ace_loss

    log_probs = torch.tensor(SCORES.transpose(1, 0, 2))
    targets = torch.tensor([[1, 2], [3, 1], [2, 2]])
    torch_lengths = {
        name: (torch.tensor(value) if isinstance(value, np.ndarray) and value.dtype != np.uint64 else value)
        for name, value in BAD_LENGTHS.items()
    }
    torch_lengths["numpy"] = np.array([4, 4, 4])
    torch_lengths["too_long_tensor"] = torch.tensor([4, 9, 4])
    torch_lengths["negative_tensor"] = torch.tensor([4, -1, 4])
    return {
        "torch.input_lengths": (lambda v: ace_loss(log_probs, targets, v, [2, 2, 2]), torch_lengths),
        "torch.input_lengths.zero_infinity": (
            lambda v: ace_loss(log_probs, targets, v, [2, 2, 2], zero_infinity=True),
            {
                k: torch_lengths[k]
                for k in ("negative", "negative_tensor", "too_long_tensor", "float", "numpy")
            },
        ),
        "torch.target_lengths": (
            lambda v: ace_loss(log_probs, targets, [4, 4, 4], v),
            {k: torch_lengths[k] for k in torch_lengths if k != "uint64_huge"},
        ),
        "torch.blank": (lambda v: ace_loss(log_probs, targets, [4, 4, 4], [2, 2, 2], blank=v), BAD_CLASS),
        "torch.log_probs": (
            lambda v: ace_loss(v, targets, [4, 4, 4], [2, 2, 2]),
            {
                "numpy": SCORES.transpose(1, 0, 2),
                "list": [[[0.0]]],
                "integer": torch.zeros(4, 3, 4, dtype=torch.long),
                "rank_4": torch.zeros(4, 3, 4, 1),
            },
        ),
        "torch.targets": (
            lambda v: ace_loss(log_probs, v, [4, 4, 4], [2, 2, 2]),
            {
                "numpy": np.array([[1, 2]] * 3),
                "list": [[1, 2]] * 3,
                "float": targets.double(),
                "blank": torch.tensor([[1, 0]] * 3),
                "too_big": torch.tensor([[1, 4]] * 3),
            },
        ),
        "torch.mask": (
            lambda v: ace_loss(log_probs, targets, None, [2, 2, 2], mask=v),
            {
                "float": torch.ones(3, 4),
                "transposed": torch.ones(4, 3, dtype=torch.bool),
                "numpy": np.ones((3, 4), dtype=bool),
                "empty_row": torch.tensor([[True] * 4, [False] * 4, [True] * 4]),
            },
        ),
        "torch.counts": (
            lambda v: ace_loss(log_probs, None, None, None, counts=v),
            {
                name: (torch.tensor(value) if isinstance(value, np.ndarray) else value)
                for name, value in BAD_COUNTS.items()
            },
        ),
        "torch.reduction": (
            lambda v: ace_loss(log_probs, targets, [4, 4, 4], [2, 2, 2], reduction=v),
            {"unknown": "avg", "none_object": None, "int": 0},
        ),
        "torch.layout": (
            lambda v: ace_loss(log_probs, targets, [4, 4, 4], [2, 2, 2], layout=v),
            {"unknown": "CTN", "NHWC": "NHWC", "none_object": None},
        ),
    }


def _jax_calls():
    load_backend("jax")
    import ace_core.integrations.jax as ace_jax

    paddings, labels, label_paddings = np.zeros((3, 4)), np.array([[1, 2]] * 3), np.zeros((3, 2))
    return {
        "jax.logits": (
            lambda v: ace_jax.ace_loss(v, paddings, labels, label_paddings),
            {"rank_2": np.zeros((3, 4)), "integer": np.zeros((3, 4, 4), dtype=np.int64), "string": "x"},
        ),
        "jax.logit_paddings": (
            lambda v: ace_jax.ace_loss(SCORES, v, labels, label_paddings),
            {"transposed": np.zeros((4, 3)), "all_padding": np.ones((3, 4))},
        ),
        "jax.labels": (
            lambda v: ace_jax.ace_loss(SCORES, paddings, v, label_paddings),
            {
                "float": labels.astype(float),
                "blank": np.array([[1, 0]] * 3),
                "too_big": np.array([[1, 7]] * 3),
            },
        ),
        "jax.blank_id": (
            lambda v: ace_jax.ace_loss(SCORES, paddings, labels, label_paddings, blank_id=v),
            BAD_CLASS,
        ),
        "jax.counts": (
            lambda v: ace_jax.ace_loss_from_counts(SCORES, v),
            {k: BAD_COUNTS[k] for k in BAD_COUNTS if k != "list"},  # a list of counts is array-like for JAX
        ),
        "jax.input_lengths": (
            lambda v: ace_jax.ace_loss_from_counts(SCORES, COUNTS, input_lengths=v),
            BAD_LENGTHS,
        ),
        "jax.mask": (
            lambda v: ace_jax.ace_loss_from_counts(SCORES, COUNTS, mask=v),
            {k: BAD_MASK[k] for k in BAD_MASK if k != "list"},
        ),
    }


def _all_calls(backend_name):
    if backend_name == "torch_adapter":
        return _torch_calls()
    if backend_name == "jax_adapter":
        return _jax_calls()
    return _core_calls(load_backend(backend_name))


def _bad_input_targets():
    chosen = selected_backends(CPU_BACKENDS)
    names = list(chosen)
    if "torch" in chosen:
        names.append("torch_adapter")
    if "jax" in chosen:
        names.append("jax_adapter")
    return names


def _snapshot(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    return None


@pytest.mark.parametrize("target", _bad_input_targets())
@settings(max_examples=examples(30), **SETTINGS)
@given(data=st.data())
def test_one_bad_argument_gives_value_or_type_error_and_leaves_inputs_unchanged(target, data):
    calls = _all_calls(target)
    name = data.draw(st.sampled_from(sorted(calls)), label="call")
    call, bad_values = calls[name]
    kind = data.draw(st.sampled_from(sorted(bad_values)), label="bad value")
    value = bad_values[kind]
    before = _snapshot(value)
    with pytest.raises((ValueError, TypeError)) as info:
        call(value)
    argument = name.split(".")[1]
    message = str(info.value)
    assert "`" in message or "sample" in message, f"{name}={kind}: the message names nothing: {message}"
    if argument in ("input_lengths", "target_lengths", "blank", "counts", "mask", "classes", "residuals"):
        named = {
            "counts": ("counts", "sample"),
            "mask": ("mask", "sample"),
            "input_lengths": ("input_lengths", "sample"),
        }
        expected = named.get(argument, (argument,))
        assert any(word in message for word in expected), f"{name}={kind}: {message}"
    if before is not None:
        after = _snapshot(value)
        np.testing.assert_array_equal(before, after)
