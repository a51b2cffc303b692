"""Under ``jax.jit`` the value checks cannot raise (tracers hold no values): the loss
must match eager mode, infeasible samples give nan unless ``zero_infinity``.
"""

from __future__ import annotations

import functools

import brute_force
import numpy as np
import pytest
from _helpers import assert_close, make_case, reference_per_sample

import ace_core

REDUCTIONS = ("none", "sum", "mean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", ["1d_lengths", "2d_mask"])
def test_jitted_loss_and_grad_matches_eager(jax_backend, name, from_logits, reduction):
    import jax

    case = make_case(name, from_logits)
    scores, counts = jax_backend.asarray(case.scores), jax_backend.asarray(case.counts)
    if case.lengths is not None:
        # input_lengths as a traced argument: no value is known while tracing.
        valid_arg = jax_backend.asarray(np.array(case.lengths))

        def run(s, c, v):
            return ace_core.ace_loss_and_grad(
                s, c, input_lengths=v, from_logits=from_logits, reduction=reduction
            )
    else:
        valid_arg = jax_backend.asarray(case.mask)

        def run(s, c, v):
            return ace_core.ace_loss_and_grad(s, c, mask=v, from_logits=from_logits, reduction=reduction)

    jit_loss, jit_grad = jax.jit(run)(scores, counts, valid_arg)
    eager_loss, eager_grad = run(scores, counts, valid_arg)
    assert jit_loss.dtype == scores.dtype and jit_grad.dtype == scores.dtype
    assert_close(jax_backend.to_numpy(jit_loss), jax_backend.to_numpy(eager_loss), rtol=1e-13)
    assert_close(jax_backend.to_numpy(jit_grad), jax_backend.to_numpy(eager_grad), rtol=1e-12, atol=1e-16)
    expected = brute_force.reduce(reference_per_sample(name, from_logits), reduction)
    assert_close(jax_backend.to_numpy(jit_loss), expected, rtol=1e-12, kind="loss vs brute force (jax.jit)")


def _infeasible_batch(jax_backend):
    """Sample 1 has a label longer than its input, sample 2 has T_b = 0; samples 0 and 3 are fine."""
    rng = np.random.default_rng(4)
    lengths = [5, 2, 0, 4]
    labels = [[1, 2], [1, 2, 1], [], [2]]
    counts = brute_force.counts_from_label_lists(labels, 3, lengths)
    scores = rng.normal(size=(4, 5, 3))
    valid = brute_force.valid_from_lengths(lengths, 5)
    reference = brute_force.ace_per_sample(scores, counts, valid)
    return scores, counts, lengths, reference


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jitted_infeasible_samples_give_nan_without_zero_infinity(jax_backend, reduction):
    import jax

    scores, counts, lengths, reference = _infeasible_batch(jax_backend)
    run = jax.jit(functools.partial(ace_core.ace_loss, reduction=reduction))
    loss = jax_backend.to_numpy(
        run(
            jax_backend.asarray(scores),
            jax_backend.asarray(counts),
            input_lengths=jax_backend.asarray(np.array(lengths)),
        )
    )
    if reduction == "none":
        assert np.isnan(loss[1]) and np.isnan(loss[2])
        assert_close(loss[[0, 3]], reference[[0, 3]], rtol=1e-12)
    else:
        assert np.isnan(loss)  # a nan sample makes the batch loss nan: it is not hidden


def test_jitted_infeasible_samples_give_zero_with_zero_infinity(jax_backend):
    import jax

    scores, counts, lengths, reference = _infeasible_batch(jax_backend)
    run = jax.jit(functools.partial(ace_core.ace_loss_and_grad, reduction="none", zero_infinity=True))
    loss, grad = run(
        jax_backend.asarray(scores),
        jax_backend.asarray(counts),
        input_lengths=jax_backend.asarray(np.array(lengths)),
    )
    loss, grad = jax_backend.to_numpy(loss), jax_backend.to_numpy(grad)
    assert_close(loss, np.where(np.isnan(reference), 0.0, reference), rtol=1e-12)
    assert np.all(grad[[1, 2]] == 0) and np.all(np.isfinite(grad))


def test_jitted_mask_with_empty_sample_gives_nan(jax_backend):
    import jax

    scores = np.random.default_rng(2).normal(size=(2, 2, 2, 3))
    mask = np.ones((2, 2, 2), dtype=bool)
    mask[1] = False
    counts = brute_force.counts_from_label_lists([[1, 2], []], 3, [4, 0])
    loss = jax.jit(functools.partial(ace_core.ace_loss, reduction="none"))(
        jax_backend.asarray(scores), jax_backend.asarray(counts), mask=jax_backend.asarray(mask)
    )
    loss = jax_backend.to_numpy(loss)
    assert np.isnan(loss[1]) and np.isfinite(loss[0])


def test_eager_jax_arrays_are_value_checked(jax_backend):
    # Outside jit the arrays are concrete, so the checks run as for NumPy
    # (samples 1 and 2 are both infeasible; either may be named first).
    scores, counts, lengths, _ = _infeasible_batch(jax_backend)
    with pytest.raises(ValueError, match=r"sample [12]\b"):
        ace_core.ace_loss(jax_backend.asarray(scores), jax_backend.asarray(counts), input_lengths=lengths)


def test_residuals_cross_a_jit_boundary(jax_backend):
    # ACEResiduals is documented as a JAX pytree for custom_vjp: a jitted forward
    # and a jitted backward must reproduce ace_loss_and_grad.
    import jax

    case = make_case("1d_lengths", True)
    scores, counts = jax_backend.asarray(case.scores), jax_backend.asarray(case.counts)
    lengths = jax_backend.asarray(np.array(case.lengths))
    per_sample, residuals = jax.jit(ace_core.ace_forward)(scores, counts, input_lengths=lengths)
    grad = jax.jit(ace_core.ace_backward)(jax_backend.asarray(np.ones(3)), scores, counts, residuals)
    loss, expected_grad = ace_core.ace_loss_and_grad(scores, counts, input_lengths=lengths, reduction="sum")
    assert_close(jax_backend.to_numpy(per_sample).sum(), jax_backend.to_numpy(loss), rtol=1e-13)
    assert_close(jax_backend.to_numpy(grad), jax_backend.to_numpy(expected_grad), rtol=1e-12, atol=1e-16)


def test_jax_grad_through_custom_vjp_of_forward_backward(jax_backend):
    # The pattern the JAX integration uses: custom_vjp with ace_forward/ace_backward.
    import jax
    import jax.numpy as jnp

    case = make_case("2d_mask", True)
    counts, mask = jax_backend.asarray(case.counts), jax_backend.asarray(case.mask)

    @jax.custom_vjp
    def loss(scores):
        return ace_core.ace_forward(scores, counts, mask=mask)[0].sum()

    def forward(scores):
        per_sample, residuals = ace_core.ace_forward(scores, counts, mask=mask)
        return per_sample.sum(), (scores, residuals)

    def backward(saved, g):
        scores, residuals = saved
        return (ace_core.ace_backward(jnp.broadcast_to(g, (scores.shape[0],)), scores, counts, residuals),)

    loss.defvjp(forward, backward)
    scores = jax_backend.asarray(case.scores)
    grad = jax.jit(jax.grad(loss))(scores)
    _, expected = ace_core.ace_loss_and_grad(scores, counts, mask=mask, reduction="sum")
    assert_close(jax_backend.to_numpy(grad), jax_backend.to_numpy(expected), rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("bad_label", [0, 7], ids=["blank", "out_of_range"])
def test_jitted_counts_make_bad_labels_infeasible(jax_backend, bad_label):
    # Eagerly such a label raises; traced it cannot, so the sample must not
    # quietly train on wrong counts: its loss is NaN, or 0 with zero_infinity.
    jax = pytest.importorskip("jax")
    targets = jax_backend.asarray(np.array([[1, 2], [1, bad_label]]))
    scores = jax_backend.asarray(np.zeros((2, 4, 3)))

    def per_sample(scores, targets, zero_infinity):
        counts = ace_core.counts_from_targets(targets, num_classes=3, input_lengths=4)
        return ace_core.ace_loss(scores, counts, reduction="none", zero_infinity=zero_infinity)

    strict = jax_backend.to_numpy(jax.jit(per_sample, static_argnums=2)(scores, targets, False))
    lenient = jax_backend.to_numpy(jax.jit(per_sample, static_argnums=2)(scores, targets, True))
    assert np.isfinite(strict[0]) and np.isnan(strict[1])
    assert lenient[0] == strict[0] and lenient[1] == 0
