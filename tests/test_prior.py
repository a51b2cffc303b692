"""blank_prior_bias and the framework helpers that put it into an output layer.

The check is the definition: with the blank's logit at the bias and every
other logit at 0, the softmax gives the blank the labels' average blank share
(computed here by hand from the counts or the lengths).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _fuzz import examples
from _helpers import assert_unchanged
from hypothesis import given, settings
from hypothesis import strategies as st

import ace_core


def _blank_probability(bias: float, classes: int) -> float:
    """``softmax([bias, 0, ..., 0])[0]`` in float64."""
    return math.exp(bias) / (math.exp(bias) + classes - 1)


def test_counts_give_the_average_blank_share(backend):
    # Blank shares 6/8, 5/8 and 2/4: the mean is 0.625.
    counts = np.array([[6, 1, 1, 0], [5, 0, 2, 1], [2, 1, 0, 1]])
    bias = ace_core.blank_prior_bias(backend.asarray(counts))
    assert type(bias) is float
    assert _blank_probability(bias, 4) == pytest.approx(0.625, rel=1e-12)


def test_another_blank_index():
    counts = np.array([[1, 0, 3], [0, 1, 3]])  # class 2 is the blank: share 3/4
    bias = ace_core.blank_prior_bias(counts, blank=2)
    assert _blank_probability(bias, 3) == pytest.approx(0.75, rel=1e-12)


def test_lengths_and_steps(backend):
    lengths = np.array([4, 6, 8])
    bias = ace_core.blank_prior_bias(
        target_lengths=backend.asarray(lengths), input_lengths=32, num_classes=37
    )
    assert _blank_probability(bias, 37) == pytest.approx(1 - 6 / 32, rel=1e-12)
    per_sample = ace_core.blank_prior_bias(
        target_lengths=[1, 2], input_lengths=backend.asarray(np.array([4, 8])), num_classes=5
    )
    assert _blank_probability(per_sample, 5) == pytest.approx((3 / 4 + 6 / 8) / 2, rel=1e-12)


@settings(max_examples=examples(50), deadline=None)
@given(
    lengths=st.lists(st.integers(0, 10), min_size=1, max_size=6).filter(any),  # some character
    extra=st.integers(1, 20),
    classes=st.integers(2, 50),
)
def test_property_lengths_agree_with_counts(lengths, extra, classes):
    steps = max(lengths) + extra
    counts = np.zeros((len(lengths), classes), dtype=np.int64)
    counts[:, 0] = steps - np.array(lengths)
    counts[:, 1] = lengths  # which class holds the characters does not matter
    from_counts = ace_core.blank_prior_bias(counts)
    from_lengths = ace_core.blank_prior_bias(target_lengths=lengths, input_lengths=steps, num_classes=classes)
    assert from_counts == pytest.approx(from_lengths, rel=1e-12, abs=1e-12)
    share = float(np.mean(1 - np.array(lengths) / steps))
    assert _blank_probability(from_counts, classes) == pytest.approx(share, rel=1e-9)


@pytest.mark.parametrize(
    ("args", "keywords", "error", "match"),
    [
        ((), {}, ValueError, "either"),
        ((np.ones((2, 3)),), {"target_lengths": [1, 2]}, ValueError, "either"),
        ((np.ones((2, 3)),), {"num_classes": 3}, ValueError, "drop"),
        ((), {"target_lengths": [1, 2]}, ValueError, "input_lengths"),
        ((), {"target_lengths": [1, 2], "input_lengths": 4}, ValueError, "num_classes"),
        ((), {"target_lengths": [0, 0], "input_lengths": 4, "num_classes": 3}, ValueError, "all blank"),
        ((), {"target_lengths": [4, 4], "input_lengths": 4, "num_classes": 3}, ValueError, "no step blank"),
        ((), {"target_lengths": [1, 5], "input_lengths": 4, "num_classes": 3}, ValueError, r"sample 1\b"),
        (
            (),
            {"target_lengths": [1, 1], "input_lengths": [4, 0], "num_classes": 3},
            ValueError,
            r"sample 1\b",
        ),
        ((), {"target_lengths": [1, -1], "input_lengths": 4, "num_classes": 3}, ValueError, "negative"),
        ((), {"target_lengths": [1, 1], "input_lengths": [4, 4, 4], "num_classes": 3}, ValueError, "shape"),
        ((), {"target_lengths": [1, 1], "input_lengths": 4, "num_classes": 1}, ValueError, "blank"),
        ((), {"target_lengths": [1, 1], "input_lengths": 4, "num_classes": 2.0}, TypeError, "num_classes"),
        ((np.ones(3),), {}, ValueError, r"\(B, C\)"),
        ((np.array([[2, 1], [0, 0]]),), {}, ValueError, r"sample 1\b"),
        ((np.array([[2, 1], [1, 1]]),), {"blank": 2}, ValueError, "blank"),
        ((np.array([[2, 1], [1, 1]]),), {"blank": True}, TypeError, "blank"),
        ((np.array([[2.0, np.nan]]),), {}, ValueError, "finite"),
        ((np.array([[True, False]]),), {}, TypeError, "counts"),
    ],
)
def test_bad_input_raises_and_leaves_inputs_unchanged(args, keywords, error, match):
    arrays = [a for a in (*args, *keywords.values()) if isinstance(a, np.ndarray)]
    before = [np.array(a, copy=True) for a in arrays]
    with pytest.raises(error, match=match):
        ace_core.blank_prior_bias(*args, **keywords)
    assert_unchanged(before, arrays)


# --------------------------------------------------------------------------- framework helpers


def test_torch_linear_starts_at_the_prior():
    torch = pytest.importorskip("torch")
    from ace_core.integrations.torch import init_blank_bias_

    bias = ace_core.blank_prior_bias(target_lengths=[3, 5], input_lengths=16, num_classes=6)
    layer = torch.nn.Linear(4, 6)
    assert init_blank_bias_(layer, bias) is layer
    start = torch.softmax(layer(torch.zeros(1, 4)), dim=-1)[0]
    assert start[0].item() == pytest.approx(1 - 4 / 16, rel=1e-6)
    assert torch.allclose(start[1:], torch.full((5,), (4 / 16) / 5), rtol=1e-5)
    assert layer.bias.requires_grad  # still a trainable parameter
    conv = torch.nn.Conv2d(3, 6, 1)
    init_blank_bias_(conv, 1.5, blank=2)
    assert conv.bias.tolist() == [0, 0, 1.5, 0, 0, 0]


@pytest.mark.parametrize(
    ("layer", "value", "blank", "match"),
    [("nobias", 1.0, 0, "bias"), ("linear", 1.0, 6, "blank"), ("linear", math.nan, 0, "finite")],
)
def test_torch_helper_rejects_bad_input(layer, value, blank, match):
    torch = pytest.importorskip("torch")
    from ace_core.integrations.torch import init_blank_bias_

    module = torch.nn.Linear(4, 6, bias=layer != "nobias")
    before = module.weight.detach().clone()
    before_bias = None if module.bias is None else module.bias.detach().clone()
    with pytest.raises(ValueError, match=match):
        init_blank_bias_(module, value, blank=blank)
    assert torch.equal(module.weight, before)
    if before_bias is not None:
        assert torch.equal(module.bias.detach(), before_bias)


def test_jax_bias_starts_at_the_prior():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from ace_core.integrations.jax import init_blank_bias

    bias = ace_core.blank_prior_bias(target_lengths=[3, 5], input_lengths=16, num_classes=6)
    old = jnp.ones(6, dtype=jnp.float32)
    new = init_blank_bias(old, bias)
    assert new.dtype == old.dtype and new.shape == old.shape
    assert np.asarray(old).tolist() == [1.0] * 6  # a new array; the old one is left as it was
    start = np.asarray(jnp.exp(new) / jnp.sum(jnp.exp(new)))
    assert start[0] == pytest.approx(1 - 4 / 16, rel=1e-6)
    assert np.asarray(init_blank_bias(old, 2.0, blank=3)).tolist() == [0, 0, 0, 2.0, 0, 0]
    with pytest.raises(ValueError, match="blank"):
        init_blank_bias(old, 1.0, blank=6)
    with pytest.raises(ValueError, match="shape"):
        init_blank_bias(jnp.ones((2, 3)), 1.0)
    with pytest.raises(ValueError, match="finite"):
        init_blank_bias(old, math.inf)


def test_reference_models_use_the_public_function():
    pytest.importorskip("PIL")
    from ace_core.reference import tasks

    task = tasks.get_task("fcn")
    dataset = tasks.build_dataset(task)
    labels = tasks.label_lists(task, dataset.heldout(256, seed=0x5EED))
    expected = ace_core.blank_prior_bias(
        target_lengths=[len(row) for row in labels],
        input_lengths=tasks.output_steps(task, dataset),
        num_classes=dataset.num_classes,
    )
    assert tasks.prior_blank_bias(task, dataset) == expected
    model = tasks.build_model(task, dataset)
    bias = np.asarray(model.params["classifier.bias"])
    assert bias[0] == pytest.approx(expected, rel=1e-6) and not bias[1:].any()
