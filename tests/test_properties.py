"""Hypothesis: random shapes, lengths, dtypes and labels; the invariants of the math (docs/contract.rst).

Runs on numpy and torch (``property_backend``). Each example is also checked
against the brute force (loss) and its central differences (gradient), on the
inputs after rounding to the tested dtype, so only the library's own
arithmetic is measured.
"""

from __future__ import annotations

import brute_force
import numpy as np
from _fuzz import examples
from _helpers import assert_close, random_logits, random_probabilities
from hypothesis import given, settings
from hypothesis import strategies as st

import ace_core

REDUCTIONS = ("none", "sum", "mean")
# Per dtype: (loss rtol, loss atol, gradient rtol, gradient atol, class-sum atol).
# The class sum adds C <= 5 terms of size <= 1 that each carry a few ulps: ~50 eps.
TOLERANCES = {
    "float64": (1e-12, 1e-14, 1e-7, 2e-9, 1e-14),
    "float32": (1e-5, 1e-6, 1e-4, 1e-5, 1e-5),
}


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 5))
    layout = draw(st.sampled_from(["full", "lengths", "mask"]))
    if layout == "full":
        valid = np.ones((batch, steps), dtype=bool)
    elif layout == "lengths":
        lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
        valid = brute_force.valid_from_lengths(lengths, steps)
    else:
        rows = draw(
            st.lists(
                st.lists(st.booleans(), min_size=steps, max_size=steps).filter(any),
                min_size=batch,
                max_size=batch,
            )
        )
        valid = np.array(rows, dtype=bool)
    per_sample = [int(v.sum()) for v in valid]
    labels = [
        draw(st.lists(st.integers(1, classes - 1), min_size=0, max_size=length)) for length in per_sample
    ]
    return {
        "shape": (batch, steps, classes),
        "layout": layout,
        "valid": valid,
        "counts": brute_force.counts_from_label_lists(labels, classes, per_sample),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "from_logits": draw(st.booleans()),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "scale": draw(st.sampled_from([0.1, 1.0, 5.0, 30.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=examples(50), deadline=None)
@given(problem=problems())
def test_invariants_and_brute_force(property_backend, problem):
    backend = property_backend
    rng = np.random.default_rng(problem["seed"])
    shape, dtype, from_logits = problem["shape"], problem["dtype"], problem["from_logits"]
    values = random_logits(rng, shape, problem["scale"]) if from_logits else random_probabilities(rng, shape)
    values = values.astype(dtype).astype(np.float64)  # what the library sees, exactly
    valid, counts, reduction = problem["valid"], problem["counts"], problem["reduction"]
    keywords = {"from_logits": from_logits, "reduction": reduction}
    if problem["layout"] == "lengths":
        keywords["input_lengths"] = [int(v.sum()) for v in valid]
    elif problem["layout"] == "mask":
        keywords["mask"] = backend.asarray(valid)

    scores = backend.asarray(values, dtype)
    loss, grad = ace_core.ace_loss_and_grad(scores, backend.asarray(counts), **keywords)
    loss_np, grad_np = backend.to_numpy(loss), backend.to_numpy(grad)
    loss_rtol, loss_atol, grad_rtol, grad_atol, class_sum_atol = TOLERANCES[dtype]

    # Shape and dtype of the outputs follow the input.
    assert loss.dtype == scores.dtype and grad.dtype == scores.dtype
    assert tuple(grad.shape) == shape
    assert loss_np.shape == ((shape[0],) if reduction == "none" else ())
    assert np.all(np.isfinite(loss_np)) and np.all(np.isfinite(grad_np))

    # The loss is never below the entropy of N̄ (Gibbs' inequality), per sample.
    per_sample = backend.to_numpy(
        ace_core.ace_loss(scores, backend.asarray(counts), **{**keywords, "reduction": "none"})
    )
    floor = brute_force.entropy(counts)
    assert np.all(per_sample >= floor - (1e-5 if dtype == "float32" else 1e-12) * np.maximum(1, floor))

    # Masked steps get exactly zero gradient.
    assert np.all(grad_np[~valid] == 0)

    if from_logits:
        # Bounded: |∂L_b/∂a| <= 1, times 1/B for the batch mean.
        bound = 1.0 / shape[0] if reduction == "mean" else 1.0
        assert np.abs(grad_np).max() <= bound * (1 + 1e-6)
        # softmax is shift invariant, so the gradient sums to 0 over the classes of each step.
        assert np.abs(grad_np.sum(axis=-1)).max() <= class_sum_atol

    # Against the brute force on the same (rounded) inputs.
    effective = "sum" if reduction == "none" else reduction
    reference = brute_force.ace_per_sample(values, counts, valid, from_logits=from_logits)
    assert_close(
        loss_np,
        brute_force.reduce(reference, reduction),
        rtol=loss_rtol,
        atol=loss_atol,
        kind=f"hypothesis loss vs brute force ({dtype})",
    )

    def reference_loss(x):
        return float(
            brute_force.reduce(
                brute_force.ace_per_sample(x, counts, valid, from_logits=from_logits), effective
            )
        )

    expected_grad = brute_force.central_difference(reference_loss, values)
    assert_close(
        grad_np,
        expected_grad,
        rtol=grad_rtol,
        atol=grad_atol,
        kind=f"hypothesis gradient vs central differences ({dtype})",
    )
