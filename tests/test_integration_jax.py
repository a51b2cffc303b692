"""The JAX adapter ``ace_core.integrations.jax``: custom_vjp, jit, vmap, grad-of-grad, optax call.

Values and gradients are checked against ``jax.grad`` of a naive jnp formula
written here (softmax, masked mean over valid steps, -Σ N̄ log ȳ with the N = 0
terms masked; counts from a one-hot sum of the labels), which shares nothing
with the library, and against ``ace_core.ace_loss`` itself.
"""

from __future__ import annotations

import doctest
import inspect
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
# float64 checks need x64; set before this module creates any array (the suite's
# jax fixture does the same, so the flag is already on in a full run).
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from _helpers import assert_close  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import ace_core  # noqa: E402
import ace_core.integrations.jax as ace_jax  # noqa: E402

TIGHT = {"rtol": 1e-12, "atol": 1e-14}


# ---------------------------------------------------------------------------
# Data in optax's layout and the independent reference


def optax_batch(seed: int = 0, *, scrambled_padding: bool = False):
    """(logits (B,T,K), logit_paddings, labels (B,N), label_paddings), NumPy float64/int64.

    Steps lengths 9, 6, 8, 4 and label lengths 5, 2, 0, 4 (the last sample's label fills its
    input). Padded logits are NaN and padded labels hold junk (blank, out of range), which must
    not matter. ``scrambled_padding`` puts padding between valid entries, not only at the end.
    """
    rng = np.random.default_rng(seed)
    batch, steps, classes, width = 4, 9, 6, 5
    step_lengths, label_lengths = [9, 6, 8, 4], [5, 2, 0, 4]
    logits = rng.normal(scale=2.0, size=(batch, steps, classes))
    logit_paddings = (np.arange(steps)[None, :] >= np.array(step_lengths)[:, None]).astype(np.float64)
    labels = rng.integers(1, classes, size=(batch, width))
    label_paddings = (np.arange(width)[None, :] >= np.array(label_lengths)[:, None]).astype(np.float64)
    if scrambled_padding:
        for b in range(batch):
            logit_paddings[b] = rng.permutation(logit_paddings[b])
            label_paddings[b] = rng.permutation(label_paddings[b])
    logits[logit_paddings == 1] = np.nan
    junk = rng.choice([0, -3, classes + 2], size=labels.shape)
    labels = np.where(label_paddings == 1, junk, labels)
    return logits, logit_paddings, labels, label_paddings


def naive_per_sample(logits, logit_paddings, labels, label_paddings, blank=0):
    """The textbook ACE in jnp: differentiated by ``jax.grad`` as the reference."""
    classes = logits.shape[-1]
    valid = logit_paddings == 0
    lengths = valid.sum(axis=1).astype(logits.dtype)
    hits = jax.nn.one_hot(jnp.where(label_paddings == 0, labels, -1), classes, dtype=logits.dtype)
    counts = hits.sum(axis=1)
    counts = counts.at[:, blank].set(lengths - counts.sum(axis=1))
    y = jax.nn.softmax(jnp.where(valid[:, :, None], logits, 0.0), axis=-1)
    y_bar = jnp.where(valid[:, :, None], y, 0.0).sum(axis=1) / lengths[:, None]
    present = counts > 0
    log_y_bar = jnp.log(jnp.where(present, y_bar, 1.0))
    return -jnp.where(present, counts / lengths[:, None] * log_y_bar, 0.0).sum(axis=1)


def as_jax(*arrays):
    return tuple(jnp.asarray(a) for a in arrays)


def finite_logits(logits: np.ndarray) -> np.ndarray:
    """Padded NaN replaced by numbers, for finite differences (which also move padded steps)."""
    return np.nan_to_num(logits, nan=0.5)


# ---------------------------------------------------------------------------
# Values and first-order gradients


@pytest.mark.parametrize("scrambled", [False, True], ids=["trailing_padding", "any_padding"])
def test_loss_and_grad_match_autodiff_of_naive_formula(scrambled):
    logits, lp, labels, labp = as_jax(*optax_batch(scrambled_padding=scrambled))

    def ours(x):
        return jnp.mean(ace_jax.ace_loss(x, lp, labels, labp))

    def naive(x):
        return jnp.mean(naive_per_sample(x, lp, labels, labp))

    loss, grad = jax.value_and_grad(ours)(logits)
    expected_loss, expected_grad = jax.value_and_grad(naive)(logits)
    assert_close(loss, expected_loss, **TIGHT)
    # The naive gradient is NaN at padded steps (NaN logits through where); ours is exactly 0 there.
    padded = np.asarray(lp) == 1
    grad, expected_grad = np.asarray(grad), np.asarray(expected_grad)
    assert np.all(grad[padded] == 0)
    assert_close(grad[~padded], expected_grad[~padded], **TIGHT, kind="jax adapter grad vs jax.grad(naive)")


def test_matches_core_ace_loss_reduction_none():
    logits, lp, labels, labp = optax_batch(1)
    step_lengths = (lp == 0).sum(axis=1)
    label_lengths = (labp == 0).sum(axis=1)
    counts = ace_core.counts_from_targets(
        np.where(labp == 0, labels, 1),
        label_lengths,
        num_classes=logits.shape[-1],
        input_lengths=step_lengths,
    )
    expected = ace_core.ace_loss(logits, counts, input_lengths=step_lengths, reduction="none")
    got = ace_jax.ace_loss(*as_jax(logits, lp, labels, labp))
    assert got.shape == (4,) and got.dtype == jnp.float64
    assert_close(got, expected, rtol=1e-13)
    # The mean over the batch is the core's "mean" (no division by label lengths).
    expected_mean = ace_core.ace_loss(logits, counts, input_lengths=step_lengths, reduction="mean")
    assert_close(jnp.mean(got), expected_mean, rtol=1e-13)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_from_counts_2d_mask_matches_core_and_autodiff(from_logits):
    rng = np.random.default_rng(2)
    shape = (3, 4, 5, 6)
    mask = rng.random(shape[:-1]) < 0.7
    mask[:, 0, 0] = True
    scores = rng.normal(size=shape) if from_logits else rng.dirichlet(np.ones(6), size=shape[:-1])
    objects = rng.integers(0, 3, size=(3, 6))
    counts = ace_core.counts_with_background(objects, input_lengths=mask.reshape(3, -1).sum(axis=1))
    scores_j, counts_j, mask_j = as_jax(scores, counts, mask)

    got = ace_jax.ace_loss_from_counts(scores_j, counts_j, mask=mask_j, from_logits=from_logits)
    expected = ace_core.ace_loss(scores, counts, mask=mask, from_logits=from_logits, reduction="none")
    assert_close(got, expected, rtol=1e-13)

    def naive(s):
        flat = s.reshape(3, -1, 6)
        valid = mask_j.reshape(3, -1)
        y = jax.nn.softmax(flat, axis=-1) if from_logits else flat
        lengths = valid.sum(axis=1)
        y_bar = jnp.where(valid[:, :, None], y, 0.0).sum(axis=1) / lengths[:, None]
        present = counts_j > 0
        terms = jnp.where(present, counts_j / lengths[:, None] * jnp.log(jnp.where(present, y_bar, 1.0)), 0.0)
        return -terms.sum(axis=1)

    weights = jnp.asarray(rng.normal(size=3))  # a non-uniform upstream gradient

    def ours_weighted(s):
        return ace_jax.ace_loss_from_counts(s, counts_j, mask=mask_j, from_logits=from_logits) @ weights

    grad = jax.grad(ours_weighted)(scores_j)
    expected_grad = jax.grad(lambda s: naive(s) @ weights)(scores_j)
    assert grad.shape == shape
    assert_close(grad, expected_grad, **TIGHT, kind="jax adapter grad vs jax.grad(naive)")


def test_from_counts_input_lengths_forms_agree():
    rng = np.random.default_rng(3)
    scores = jnp.asarray(rng.normal(size=(2, 6, 4)))
    counts = jnp.asarray([[2, 1, 1, 0], [1, 1, 1, 1]])
    as_int = ace_jax.ace_loss_from_counts(scores, counts, input_lengths=4)
    as_list = ace_jax.ace_loss_from_counts(scores, counts, input_lengths=[4, 4])
    as_array = ace_jax.ace_loss_from_counts(scores, counts, input_lengths=jnp.array([4, 4]))
    as_mask = ace_jax.ace_loss_from_counts(scores, counts, mask=jnp.arange(6)[None, :].repeat(2, 0) < 4)
    for other in (as_list, as_array, as_mask):
        assert_close(other, as_int, rtol=0)


def test_no_gradient_flows_into_counts_or_paddings():
    rng = np.random.default_rng(4)
    scores = jnp.asarray(rng.normal(size=(2, 5, 3)))
    counts = jnp.asarray([[3.0, 1.0, 1.0], [1.0, 2.0, 2.0]])  # float counts: differentiable type
    grad_counts = jax.grad(lambda c: ace_jax.ace_loss_from_counts(scores, c).sum())(counts)
    assert np.all(np.asarray(grad_counts) == 0)
    logits, lp, labels, labp = as_jax(*optax_batch(5))
    grad_lp = jax.grad(lambda p: ace_jax.ace_loss(jnp.nan_to_num(logits), p, labels, labp).sum())(lp)
    assert np.all(np.asarray(grad_lp) == 0)


def test_backward_keeps_only_the_scores_and_small_residuals():
    batch, steps, classes = 4, 50, 7
    logits = jnp.asarray(np.random.default_rng(22).normal(size=(batch, steps, classes)))
    lp, labp = jnp.zeros((batch, steps)), jnp.zeros((batch, 5))
    labels = jnp.ones((batch, 5), dtype=jnp.int32)
    _, vjp_fn = jax.vjp(lambda x: ace_jax.ace_loss(x, lp, labels, labp), logits)
    saved = [leaf for leaf in jax.tree.leaves(vjp_fn) if hasattr(leaf, "shape")]
    big = [leaf for leaf in saved if leaf.size >= batch * steps * classes]
    # One (B, T, C) array, the scores themselves; everything else is O(B (T + C)).
    assert len(big) == 1 and np.array_equal(big[0], logits)
    assert sum(leaf.size for leaf in saved) - logits.size <= 4 * batch * (steps + classes)


# ---------------------------------------------------------------------------
# check_grads: first and second order (reverse mode; custom_vjp has no forward mode)


def test_check_grads_optax_call_order_1_and_2():
    logits, lp, labels, labp = optax_batch(6)
    logits = jnp.asarray(finite_logits(logits))
    lp, labels, labp = as_jax(lp, labels, labp)

    def loss(x):
        return ace_jax.ace_loss(x, lp, labels, labp)

    check_grads(loss, (logits,), order=1, modes=("rev",))
    check_grads(loss, (logits,), order=2, modes=("rev",))


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_check_grads_from_counts_order_2(from_logits):
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(2, 3, 2, 4)) if from_logits else rng.dirichlet(np.ones(4), size=(2, 3, 2))
    counts = jnp.asarray([[3, 1, 2, 0], [1, 1, 1, 3]])
    check_grads(
        lambda s: ace_jax.ace_loss_from_counts(s, counts, from_logits=from_logits),
        (jnp.asarray(scores),),
        order=2,
        modes=("rev",),
    )


def test_hessian_vector_product_matches_naive():
    logits, lp, labels, labp = as_jax(*optax_batch(8))
    logits = jnp.nan_to_num(logits, nan=0.5)
    direction = jnp.asarray(np.random.default_rng(9).normal(size=logits.shape))

    def hvp(loss_fn):
        return jax.grad(lambda x: jnp.vdot(jax.grad(loss_fn)(x), direction))(logits)

    ours = hvp(lambda x: ace_jax.ace_loss(x, lp, labels, labp).sum())
    # The naive formula reads padded steps only through where: fine with finite logits.
    naive = hvp(lambda x: naive_per_sample(x, lp, labels, labp).sum())
    assert_close(ours, naive, rtol=1e-10, atol=1e-13, kind="jax adapter HVP vs naive")


def test_forward_mode_on_the_loss_raises_but_forward_over_reverse_works():
    scores = jnp.asarray(np.random.default_rng(21).normal(size=(2, 3, 4)))
    counts = jnp.asarray([[1, 1, 1, 0], [0, 1, 1, 1]])

    def total(s):
        return ace_jax.ace_loss_from_counts(s, counts).sum()

    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(total, (scores,), (scores,))
    # jax.hessian is jacfwd(jacrev(f)): the forward pass differentiates the closed-form backward.
    assert_close(jax.hessian(total)(scores), jax.jacrev(jax.jacrev(total))(scores), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# jit and vmap


def test_jit_matches_eager_loss_and_grad():
    logits, lp, labels, labp = as_jax(*optax_batch(10, scrambled_padding=True))

    def loss_and_grad(x, p, lab, labp_):
        return jax.value_and_grad(lambda z: jnp.mean(ace_jax.ace_loss(z, p, lab, labp_, blank_id=0)))(x)

    eager = loss_and_grad(logits, lp, labels, labp)
    jitted = jax.jit(loss_and_grad)(logits, lp, labels, labp)
    assert_close(jitted[0], eager[0], rtol=1e-14)
    assert_close(jitted[1], eager[1], rtol=1e-13, atol=1e-16)


def test_blank_id_other_than_zero():
    logits, lp, labels, labp = optax_batch(11)
    classes = logits.shape[-1]
    # Relabel: class 0 becomes a label class and the last class the blank.
    labels = np.where(labp == 0, labels % (classes - 1), labels)
    got = jax.jit(lambda *a: ace_jax.ace_loss(*a, blank_id=classes - 1))(*as_jax(logits, lp, labels, labp))
    expected = naive_per_sample(*as_jax(logits, lp, labels, labp), blank=classes - 1)
    assert_close(got, expected, **TIGHT)


def test_vmap_over_a_leading_axis_matches_a_loop():
    batches = [optax_batch(seed) for seed in (12, 13, 14)]
    stacked = [jnp.stack([jnp.asarray(b[i]) for b in batches]) for i in range(4)]

    def mean_loss(x, p, lab, labp_):
        return jnp.mean(ace_jax.ace_loss(x, p, lab, labp_))

    values, grads = jax.vmap(jax.value_and_grad(mean_loss))(*stacked)
    for i, batch in enumerate(batches):
        value, grad = jax.value_and_grad(mean_loss)(*as_jax(*batch))
        assert_close(values[i], value, rtol=1e-14)
        assert_close(grads[i], grad, rtol=1e-13, atol=1e-16)


def test_vmap_of_single_example_loss_gives_per_example_gradients():
    logits, lp, labels, labp = as_jax(*optax_batch(15))

    def one(x, p, lab, labp_):  # one example: add and drop a batch axis of 1
        return ace_jax.ace_loss(x[None], p[None], lab[None], labp_[None])[0]

    per_example = jax.jit(jax.vmap(one))(logits, lp, labels, labp)
    assert_close(per_example, ace_jax.ace_loss(logits, lp, labels, labp), rtol=1e-14)
    per_example_grads = jax.vmap(jax.grad(one))(logits, lp, labels, labp)
    batch_grad = jax.grad(lambda x: ace_jax.ace_loss(x, lp, labels, labp).sum())(logits)
    assert_close(per_example_grads, batch_grad, rtol=1e-14, atol=1e-16)


# ---------------------------------------------------------------------------
# Infeasible samples, bad labels, dtypes


def infeasible_batch():
    """Sample 1 has 3 labels but 2 valid steps; sample 2 has no valid step; 0 and 3 are fine."""
    rng = np.random.default_rng(16)
    logits = rng.normal(size=(4, 5, 3))
    lp = (np.arange(5)[None, :] >= np.array([5, 2, 0, 4])[:, None]).astype(np.float64)
    labels = np.array([[1, 2, 0], [1, 2, 1], [0, 0, 0], [2, 0, 0]])
    labp = (np.arange(3)[None, :] >= np.array([2, 3, 0, 1])[:, None]).astype(np.float64)
    return as_jax(logits, lp, labels, labp)


def test_infeasible_sample_raises_eagerly():
    logits, lp, labels, labp = infeasible_batch()
    with pytest.raises(ValueError, match="sample 2 has no valid step"):
        ace_jax.ace_loss(logits, lp, labels, labp)
    lp = lp.at[2, 0].set(0.0)  # sample 2 now has one step and an empty label: fine
    with pytest.raises(ValueError, match="sample 1 has a negative count"):
        ace_jax.ace_loss(logits, lp, labels, labp)


def test_infeasible_sample_is_nan_under_jit_and_others_are_untouched():
    logits, lp, labels, labp = infeasible_batch()
    loss = jax.jit(ace_jax.ace_loss)(logits, lp, labels, labp)
    grad = jax.jit(jax.grad(lambda x: ace_jax.ace_loss(x, lp, labels, labp).sum()))(logits)
    assert np.isnan(loss[1]) and np.isnan(loss[2])
    assert np.all(np.isnan(grad[1])) and np.all(np.isnan(grad[2]))
    expected = naive_per_sample(logits, lp, labels, labp)
    assert_close(loss[np.array([0, 3])], expected[np.array([0, 3])], **TIGHT)
    assert np.all(np.isfinite(grad[np.array([0, 3])]))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_zero_infinity_gives_zero_loss_and_gradient(jit):
    logits, lp, labels, labp = infeasible_batch()

    def run(x):
        return ace_jax.ace_loss(x, lp, labels, labp, zero_infinity=True)

    run = jax.jit(run) if jit else run
    loss = run(logits)
    grad = jax.grad(lambda x: run(x).sum())(logits)
    assert float(loss[1]) == 0.0 and float(loss[2]) == 0.0
    assert np.all(np.asarray(grad[1:3]) == 0)
    expected = naive_per_sample(logits, lp, labels, labp)
    assert_close(loss[np.array([0, 3])], expected[np.array([0, 3])], **TIGHT)


def test_blank_inside_a_label_raises_eagerly():
    logits, lp, labels, labp = optax_batch(17)
    labels[0, 0] = 0  # sample 0's label is 5 long: position 0 is valid
    with pytest.raises(ValueError, match="sample 0.*blank"):
        ace_jax.ace_loss(*as_jax(logits, lp, labels, labp))


@pytest.mark.parametrize(
    ("which", "shape", "message"),
    [
        ("logits", (4, 9), "`logits` must have shape"),
        ("logit_paddings", (4, 8), "`logit_paddings` must have shape"),
        ("labels", (3, 5), "`labels` must have shape"),
        ("label_paddings", (4, 4), "`label_paddings` must have the shape"),
    ],
)
def test_shape_errors_name_the_optax_argument(which, shape, message):
    arrays = dict(zip(["logits", "logit_paddings", "labels", "label_paddings"], optax_batch(23), strict=True))
    arrays[which] = np.zeros(shape, dtype=arrays[which].dtype)
    with pytest.raises(ValueError, match=message):
        jax.jit(ace_jax.ace_loss)(*as_jax(*arrays.values()))


def test_bfloat16_logits_give_finite_bfloat16_loss_and_gradient():
    logits, lp, labels, labp = optax_batch(18)
    logits = np.nan_to_num(logits)
    low = jnp.asarray(logits, dtype=jnp.bfloat16)

    def loss_fn(x):
        return jnp.mean(ace_jax.ace_loss(x, lp, labels, labp))

    loss = ace_jax.ace_loss(low, lp, labels, labp)
    grad = jax.jit(jax.grad(loss_fn))(low)
    assert loss.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(loss, dtype=np.float32)))
    assert np.all(np.isfinite(np.asarray(grad, dtype=np.float32)))
    # Accumulated in float32: as close to the float32 result as bfloat16 rounding allows.
    reference = ace_jax.ace_loss(jnp.asarray(low, dtype=jnp.float32), lp, labels, labp)
    assert_close(np.asarray(loss, dtype=np.float32), reference, rtol=1e-2)


def test_float32_without_x64_style_int32_labels():
    logits, lp, labels, labp = optax_batch(19)
    got = ace_jax.ace_loss(
        jnp.asarray(logits, dtype=jnp.float32),
        jnp.asarray(lp, dtype=jnp.float32),
        jnp.asarray(labels, dtype=jnp.int32),
        jnp.asarray(labp, dtype=jnp.float32),
    )
    assert got.dtype == jnp.float32
    assert_close(got, naive_per_sample(*as_jax(logits, lp, labels, labp)), rtol=1e-5)


# ---------------------------------------------------------------------------
# The optax call


def test_signature_is_optax_ctc_loss_call():
    params = inspect.signature(ace_jax.ace_loss).parameters
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["logits", "logit_paddings", "labels", "label_paddings"]
    assert params["blank_id"].kind is inspect.Parameter.KEYWORD_ONLY and params["blank_id"].default == 0
    # ACE has no epsilon: optax's log_epsilon is refused rather than silently ignored.
    assert "log_epsilon" not in params


def test_drop_in_for_optax_ctc_loss():
    optax = pytest.importorskip("optax")
    expected = inspect.signature(optax.ctc_loss).parameters
    ours = inspect.signature(ace_jax.ace_loss).parameters
    for name in ("logits", "logit_paddings", "labels", "label_paddings", "blank_id"):
        assert ours[name].kind == expected[name].kind and ours[name].default == expected[name].default
    logits, lp, labels, labp = as_jax(*optax_batch(20))
    logits = jnp.nan_to_num(logits)
    for loss_fn in (optax.ctc_loss, ace_jax.ace_loss):
        loss = jax.jit(lambda x, fn=loss_fn: fn(x, lp, labels, labp, blank_id=0))(logits)
        assert loss.shape == (4,) and loss.dtype == logits.dtype and np.all(np.isfinite(loss))


# ---------------------------------------------------------------------------
# Module hygiene


def test_module_doctests():
    failures, tried = doctest.testmod(ace_jax, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_importing_integrations_package_imports_no_jax():
    code = "import sys, ace_core.integrations; assert 'jax' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_ctc_with_ace_is_the_weighted_sum_and_differentiable():
    optax = pytest.importorskip("optax")
    from ace_core.integrations.jax import ace_loss, ctc_with_ace_loss

    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(2, 8, 5)))
    logit_paddings = jnp.asarray(np.array([[0.0] * 8, [0.0] * 6 + [1.0] * 2]))
    labels = jnp.asarray(np.array([[1, 2, 3], [4, 4, 0]]))
    label_paddings = jnp.asarray(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    args = (logits, logit_paddings, labels, label_paddings)
    combined = ctc_with_ace_loss(*args, ace_weight=0.25)
    expected = optax.ctc_loss(*args) + 0.25 * ace_loss(*args)
    np.testing.assert_allclose(np.asarray(combined), np.asarray(expected), rtol=1e-12)
    grad = jax.jit(jax.grad(lambda x: jnp.mean(ctc_with_ace_loss(x, *args[1:]))))(logits)
    assert grad.shape == logits.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_empty_batch_gives_shape_zero_as_optax():
    optax = pytest.importorskip("optax")
    logits, paddings = jnp.zeros((0, 4, 3)), jnp.zeros((0, 4))
    labels, label_paddings = jnp.zeros((0, 2), dtype=jnp.int32), jnp.zeros((0, 2))
    expected = optax.ctc_loss(logits, paddings, labels, label_paddings)
    loss = ace_jax.ace_loss(logits, paddings, labels, label_paddings)
    assert loss.shape == expected.shape == (0,) and loss.dtype == logits.dtype
    grad = jax.grad(lambda x: ace_jax.ace_loss(x, paddings, labels, label_paddings).sum())(logits)
    assert grad.shape == logits.shape
    assert ace_jax.ace_loss_from_counts(logits, jnp.zeros((0, 3), dtype=jnp.int32)).shape == (0,)
    assert jax.jit(ace_jax.ace_loss)(logits, paddings, labels, label_paddings).shape == (0,)


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("blank_id_float", TypeError, "blank_id"),
        ("blank_id_out_of_range", ValueError, "blank_id"),
        ("labels_float", TypeError, "labels"),
        ("logits_string", TypeError, "logits"),
        ("lengths_float", TypeError, "input_lengths"),
        ("lengths_negative", ValueError, r"input_lengths.*sample 1\b"),
        ("lengths_1_by_B", ValueError, "input_lengths"),
        ("mask_float", TypeError, "mask"),
        ("counts_negative", ValueError, r"sample 1\b"),
    ],
)
def test_bad_input_names_the_argument(name, error, match):
    logits, paddings, labels, label_paddings = optax_batch()
    logits = np.nan_to_num(logits)
    counts = np.array([[9, 0, 0], [3, 1, 2], [1, 1, 1]])
    scores = logits[:3, :, :3]
    calls = {
        "blank_id_float": lambda: ace_jax.ace_loss(logits, paddings, labels, label_paddings, blank_id=0.0),
        "blank_id_out_of_range": lambda: ace_jax.ace_loss(
            logits, paddings, labels, label_paddings, blank_id=6
        ),
        "labels_float": lambda: ace_jax.ace_loss(logits, paddings, labels.astype(float), label_paddings),
        "logits_string": lambda: ace_jax.ace_loss("logits", paddings, labels, label_paddings),
        "lengths_float": lambda: ace_jax.ace_loss_from_counts(scores, counts, input_lengths=9.0),
        "lengths_negative": lambda: ace_jax.ace_loss_from_counts(scores, counts, input_lengths=[9, -1, 3]),
        "lengths_1_by_B": lambda: ace_jax.ace_loss_from_counts(scores, counts, input_lengths=[[9, 6, 3]]),
        "mask_float": lambda: ace_jax.ace_loss_from_counts(scores, counts, mask=np.ones((3, 9))),
        "counts_negative": lambda: ace_jax.ace_loss_from_counts(
            scores, np.array([[9, 0, 0], [7, -1, 3], [9, 0, 0]])
        ),
    }
    before = [np.copy(x) for x in (logits, paddings, labels, label_paddings, counts)]
    with pytest.raises(error, match=match):
        calls[name]()
    for old, new in zip(before, (logits, paddings, labels, label_paddings, counts), strict=True):
        np.testing.assert_array_equal(old, new)
