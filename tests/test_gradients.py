"""The closed-form gradient against central differences of the brute force, on every backend;
``ace_forward`` + ``ace_backward`` against ``ace_loss_and_grad``; ``zero_infinity``."""

from __future__ import annotations

import brute_force
import numpy as np
import pytest
from _helpers import (
    CASE_NAMES,
    assert_close,
    assert_unchanged,
    make_case,
    reference_gradient,
    reference_per_sample,
)

import ace_core

REDUCTIONS = ("none", "sum", "mean")
# Central differences with h = 1e-5 in float64 are good to ~1e-10 here (truncation
# h² f''' plus rounding eps·|L|/h); probability inputs have gradients up to ~20, hence rtol.
GRAD_ATOL, GRAD_RTOL = 1e-9, 1e-8


def _valid_cells(case) -> np.ndarray:
    """(B, T) or (B, H, W) bool: the steps that count."""
    if case.valid is None:
        return np.ones(case.scores.shape[:-1], dtype=bool)
    return case.valid.reshape(case.scores.shape[:-1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_gradient_matches_central_differences(backend, name, from_logits, reduction):
    case = make_case(name, from_logits)
    scores = backend.asarray(case.scores)
    loss, grad = ace_core.ace_loss_and_grad(
        scores, backend.asarray(case.counts), reduction=reduction, **case.keywords(backend)
    )
    assert tuple(grad.shape) == tuple(scores.shape) and grad.dtype == scores.dtype
    assert loss.dtype == scores.dtype
    expected_loss = brute_force.reduce(reference_per_sample(name, from_logits), reduction)
    assert_close(backend.to_numpy(loss), expected_loss, rtol=1e-12, kind="loss vs brute force")
    grad_np = backend.to_numpy(grad)
    assert_close(
        grad_np,
        reference_gradient(name, from_logits, reduction),
        rtol=GRAD_RTOL,
        atol=GRAD_ATOL,
        kind=f"gradient vs central differences ({'logits' if from_logits else 'probs'})",
    )
    # Masked steps get exactly 0, not merely something small.
    assert np.all(grad_np[~_valid_cells(case)] == 0)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_gradient_of_mean_is_gradient_of_sum_over_batch(backend, from_logits):
    case = make_case("2d_mask", from_logits)
    args = (backend.asarray(case.scores), backend.asarray(case.counts))
    _, grad_sum = ace_core.ace_loss_and_grad(*args, reduction="sum", **case.keywords(backend))
    _, grad_mean = ace_core.ace_loss_and_grad(*args, reduction="mean", **case.keywords(backend))
    _, grad_none = ace_core.ace_loss_and_grad(*args, reduction="none", **case.keywords(backend))
    batch = case.scores.shape[0]
    assert_close(backend.to_numpy(grad_mean), backend.to_numpy(grad_sum) / batch, rtol=1e-15, atol=1e-18)
    # "none" returns the gradient of the sum (the documented convention).
    assert_close(backend.to_numpy(grad_none), backend.to_numpy(grad_sum), rtol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", ["1d_lengths", "2d_mask"])
def test_forward_then_backward_equals_loss_and_grad(backend, name, from_logits, reduction):
    case = make_case(name, from_logits)
    scores, counts = backend.asarray(case.scores), backend.asarray(case.counts)
    keywords = case.keywords(backend)
    loss, grad = ace_core.ace_loss_and_grad(scores, counts, reduction=reduction, **keywords)
    per_sample, residuals = ace_core.ace_forward(scores, counts, **keywords)
    assert tuple(per_sample.shape) == (case.scores.shape[0],)
    assert_close(backend.to_numpy(per_sample), reference_per_sample(name, from_logits), rtol=1e-12)
    batch = case.scores.shape[0]
    weight = 1.0 / batch if reduction == "mean" else 1.0
    grad_output = backend.asarray(np.full(batch, weight))
    grad_split = ace_core.ace_backward(grad_output, scores, counts, residuals, from_logits=from_logits)
    assert tuple(grad_split.shape) == tuple(scores.shape) and grad_split.dtype == scores.dtype
    # Fast paths keep the softmax between the halves of ace_loss_and_grad and
    # recompute it from the residuals in ace_backward: equal up to rounding.
    assert_close(backend.to_numpy(grad_split), backend.to_numpy(grad), rtol=1e-12, atol=1e-15)
    if reduction == "none":
        assert_close(backend.to_numpy(loss), backend.to_numpy(per_sample), rtol=0)


def test_backward_weights_each_sample_by_grad_output(backend):
    # ace_backward(g) is the gradient of Σ_b g_b L_b: sample b's block is g_b ∇L_b.
    case = make_case("1d_lengths", True)
    scores, counts = backend.asarray(case.scores), backend.asarray(case.counts)
    keywords = case.keywords(backend)
    _, residuals = ace_core.ace_forward(scores, counts, **keywords)
    _, grad_of_sum = ace_core.ace_loss_and_grad(scores, counts, reduction="sum", **keywords)
    weights = np.array([2.0, -0.5, 0.0])
    weighted = ace_core.ace_backward(backend.asarray(weights), scores, counts, residuals)
    expected = backend.to_numpy(grad_of_sum) * weights[:, None, None]
    # grad_of_sum comes from the fused path: equal up to rounding (see above).
    assert_close(backend.to_numpy(weighted), expected, rtol=1e-12, atol=1e-15)
    # A scalar grad_output is broadcast over the batch.
    scalar = ace_core.ace_backward(backend.asarray(np.float64(3.0)), scores, counts, residuals)
    assert_close(backend.to_numpy(scalar), 3.0 * backend.to_numpy(grad_of_sum), rtol=1e-12, atol=1e-15)


def test_residuals_hold_no_per_step_class_buffer(backend):
    # The contract: what the backward keeps is O(B·C + B·T); nothing of shape (B, T, C).
    case = make_case("1d_lengths", True)
    _, residuals = ace_core.ace_forward(
        backend.asarray(case.scores), backend.asarray(case.counts), **case.keywords(backend)
    )
    batch, steps, classes = case.scores.shape
    for field, value in residuals._asdict().items():
        if hasattr(value, "shape"):
            assert len(value.shape) <= 2, f"residual {field} has shape {tuple(value.shape)}"
    assert tuple(residuals.log_mass.shape) == (batch, classes)
    assert tuple(residuals.mass_max.shape) == tuple(residuals.mass_log_sum.shape) == (batch, classes)
    assert tuple(residuals.step_max.shape) == (batch, steps)
    assert tuple(residuals.step_log_sum.shape) == (batch, steps)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("layout", ["lengths", "mask_2d"])
def test_zero_infinity_gives_infeasible_samples_zero_loss_and_gradient(backend, from_logits, layout):
    # Four samples: fine, T_b = 0, a label longer than the input (negative blank), fine.
    rng = np.random.default_rng(7)
    classes = 3
    if layout == "lengths":
        shape = (4, 5, classes)
        lengths = [5, 0, 2, 4]
        valid = brute_force.valid_from_lengths(lengths, 5)
        keywords = {"input_lengths": lengths}
    else:
        shape = (4, 2, 3, classes)
        mask = np.ones((4, 2, 3), dtype=bool)
        mask[1] = False
        mask[2, 1, :] = False
        mask[3, 0, 0] = False
        valid = mask
        keywords = {"mask": backend.asarray(mask)}
        lengths = [int(m.sum()) for m in mask]
    labels = [[1, 2], [], [1, 2, 1, 2], [2, 2]]  # sample 1: T_1 = 0; sample 2: |S| = 4 > T_2
    counts = brute_force.counts_from_label_lists(labels, classes, lengths)
    assert counts[2, 0] < 0
    scores_np = rng.normal(size=shape) if from_logits else np.full(shape, 1.0 / classes)
    scores = backend.asarray(scores_np)
    reference = brute_force.ace_per_sample(scores_np, counts, valid, from_logits=from_logits)
    expected = np.where(np.isnan(reference), 0.0, reference)
    assert np.isnan(reference[1]) and np.isnan(reference[2])

    for reduction in REDUCTIONS:
        loss, grad = ace_core.ace_loss_and_grad(
            scores,
            backend.asarray(counts),
            reduction=reduction,
            zero_infinity=True,
            from_logits=from_logits,
            **keywords,
        )
        assert_close(backend.to_numpy(loss), brute_force.reduce(expected, reduction), rtol=1e-12)
        grad_np = backend.to_numpy(grad)
        assert np.all(grad_np[1] == 0) and np.all(grad_np[2] == 0)
        assert np.all(np.isfinite(grad_np))
        assert np.any(grad_np[0] != 0) and np.any(grad_np[3] != 0)

    # The feasible samples' gradient is unchanged by the zeroed ones next to them.
    keep = [0, 3]
    alone_keywords = (
        {"input_lengths": [lengths[b] for b in keep]}
        if layout == "lengths"
        else {"mask": backend.asarray(valid[keep])}
    )
    _, grad_alone = ace_core.ace_loss_and_grad(
        backend.asarray(scores_np[keep]),
        backend.asarray(counts[keep]),
        reduction="sum",
        from_logits=from_logits,
        **alone_keywords,
    )
    _, grad_all = ace_core.ace_loss_and_grad(
        scores,
        backend.asarray(counts),
        reduction="sum",
        zero_infinity=True,
        from_logits=from_logits,
        **keywords,
    )
    assert_close(backend.to_numpy(grad_all)[keep], backend.to_numpy(grad_alone), rtol=1e-15, atol=1e-18)


def test_forward_backward_with_zero_infinity(backend):
    lengths = [3, 0]
    counts = np.array([[1, 1, 1], [0, 0, 0]])
    scores = backend.asarray(np.random.default_rng(3).normal(size=(2, 3, 3)))
    per_sample, residuals = ace_core.ace_forward(
        scores, backend.asarray(counts), input_lengths=lengths, zero_infinity=True
    )
    assert backend.to_numpy(per_sample)[1] == 0
    grad = ace_core.ace_backward(backend.asarray(np.ones(2)), scores, backend.asarray(counts), residuals)
    grad_np = backend.to_numpy(grad)
    assert np.all(grad_np[1] == 0) and np.all(np.isfinite(grad_np))


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
def test_non_contiguous_scores(backend, from_logits):
    # A transposed view (memory column-major) and a strided slice must be read in logical
    # order: (B, H, W, C) flattened h outer, w inner whatever the strides.
    xp = backend.xp
    case = make_case("2d_mask", from_logits)
    transposed = xp.permute_dims(backend.asarray(case.scores.transpose(0, 2, 1, 3)), (0, 2, 1, 3))
    loss, grad = ace_core.ace_loss_and_grad(
        transposed, backend.asarray(case.counts), reduction="sum", **case.keywords(backend)
    )
    assert tuple(grad.shape) == case.scores.shape
    assert_close(backend.to_numpy(loss), reference_per_sample("2d_mask", from_logits).sum(), rtol=1e-12)
    assert_close(
        backend.to_numpy(grad),
        reference_gradient("2d_mask", from_logits, "sum"),
        rtol=GRAD_RTOL,
        atol=GRAD_ATOL,
    )

    case = make_case("1d_lengths", from_logits)
    doubled = np.repeat(case.scores, 2, axis=1)  # every step twice; [:, ::2] recovers the original
    doubled[:, 1::2] = np.nan  # the skipped copies must never be read
    strided = backend.asarray(doubled)[:, ::2, :]
    loss, grad = ace_core.ace_loss_and_grad(
        strided, backend.asarray(case.counts), reduction="sum", **case.keywords(backend)
    )
    assert_close(backend.to_numpy(loss), reference_per_sample("1d_lengths", from_logits).sum(), rtol=1e-12)
    assert_close(
        backend.to_numpy(grad),
        reference_gradient("1d_lengths", from_logits, "sum"),
        rtol=GRAD_RTOL,
        atol=GRAD_ATOL,
    )


# --------------------------------------------------------------------------- out=: a caller's buffer


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_out_receives_the_gradient(backend, name, from_logits):
    if backend.library == "jax":
        pytest.skip("JAX arrays are immutable: out= is refused (tested below)")
    case = make_case(name, from_logits)
    scores, counts = backend.asarray(case.scores), backend.asarray(case.counts)
    keywords = {"reduction": "mean", **case.keywords(backend)}
    want_loss, want_grad = ace_core.ace_loss_and_grad(scores, counts, **keywords)
    out = backend.asarray(np.full(case.scores.shape, np.nan))  # stale contents must not leak through
    loss, grad = ace_core.ace_loss_and_grad(scores, counts, out=out, **keywords)
    assert grad is out
    np.testing.assert_array_equal(backend.to_numpy(loss), backend.to_numpy(want_loss))
    np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(want_grad))
    # Reused for a second call, as a training loop would.
    ace_core.ace_loss_and_grad(scores, counts, out=out, **keywords)
    np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(want_grad))


def test_out_for_half_precision_and_dropped_samples(backend):
    # float16 is accumulated in float32 (the gradient is then copied into out);
    # an infeasible sample with zero_infinity gets 0 in out, not what was there.
    if backend.library == "jax":
        pytest.skip("JAX arrays are immutable")
    logits = np.random.default_rng(3).standard_normal((3, 6, 300))
    counts = np.zeros((3, 300), dtype=np.int64)
    counts[:, 0], counts[:, 7] = 4, 2
    lengths = np.array([6, 0, 6])
    for dtype in ("float16", "float32"):
        scores = backend.asarray(logits, dtype)
        keywords = {"input_lengths": backend.asarray(lengths), "zero_infinity": True}
        _, want = ace_core.ace_loss_and_grad(scores, backend.asarray(counts), **keywords)
        out = backend.asarray(np.ones(logits.shape), dtype)
        _, grad = ace_core.ace_loss_and_grad(scores, backend.asarray(counts), out=out, **keywords)
        assert grad is out
        np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(want))
        assert np.all(backend.to_numpy(out)[1] == 0)


def _bad_outs(backend, scores_np: np.ndarray) -> list[tuple[str, object, type, str]]:
    """``(label, out, error, message)`` for every way an ``out`` can be wrong on this backend."""
    shape = scores_np.shape
    cases = [
        ("list", np.zeros(shape).tolist(), TypeError, "out"),
        ("shape", backend.asarray(np.zeros((2, 5, 4))), ValueError, "shape"),
        ("dtype", backend.asarray(np.zeros(shape), "float32"), TypeError, "dtype"),
    ]
    if backend.library != "numpy":
        cases.append(("library", np.zeros(shape), TypeError, "array like `scores`"))
    return cases


def test_bad_out_is_refused_and_nothing_changes(backend):
    scores_np = np.random.default_rng(1).standard_normal((2, 4, 3))
    counts_np = np.array([[2, 1, 1], [4, 0, 0]])
    scores, counts = backend.asarray(scores_np), backend.asarray(counts_np)
    if backend.library == "jax":
        cases = [("immutable", backend.asarray(np.zeros(scores_np.shape)), TypeError, "immutable")]
    else:
        cases = _bad_outs(backend, scores_np)
    for label, out, error, message in cases:
        before = backend.to_numpy(out) if hasattr(out, "shape") and not isinstance(out, np.ndarray) else None
        with pytest.raises(error, match=message):
            ace_core.ace_loss_and_grad(scores, counts, out=out)
        assert_unchanged([scores_np, counts_np], [backend.to_numpy(scores), backend.to_numpy(counts)])
        if before is not None:
            np.testing.assert_array_equal(backend.to_numpy(out), before, err_msg=label)


def test_out_must_not_alias_the_scores_numpy():
    buffer = np.random.default_rng(2).standard_normal((2, 8, 3))
    counts = np.array([[2, 1, 1], [4, 0, 0]])
    scores = buffer[:, :4]
    kept = buffer.copy()
    read_only = np.zeros(scores.shape)
    read_only.flags.writeable = False
    for out, message in [
        (scores, "share memory"),
        (buffer[:, 2:6], "share memory"),  # overlaps half of the scores
        (np.zeros((2, 4, 6))[:, :, ::2], "contiguous"),
        (read_only, "read-only"),
    ]:
        with pytest.raises(ValueError, match=message):
            ace_core.ace_loss_and_grad(scores, counts, out=out)
        np.testing.assert_array_equal(buffer, kept)


def test_out_must_not_alias_the_scores_torch():
    torch = pytest.importorskip("torch")
    buffer = torch.randn(2, 8, 3, dtype=torch.float64)
    kept = buffer.clone()
    scores = buffer[:, :4]
    counts = torch.tensor([[2, 1, 1], [4, 0, 0]])
    for out, message in [
        (scores, "share memory"),
        (buffer[:, 4:], "share memory"),  # the same storage
        (torch.zeros(2, 4, 6, dtype=torch.float64)[:, :, ::2], "contiguous"),
        (torch.zeros(2, 4, 3, dtype=torch.float64, requires_grad=True), "grad"),
    ]:
        with pytest.raises(ValueError, match=message):
            ace_core.ace_loss_and_grad(scores, counts, out=out)
        assert torch.equal(buffer, kept)
