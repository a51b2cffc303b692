"""The closed-form gradient against automatic differentiation of a naive formula:
``torch.autograd`` and ``jax.grad``, float64.

The naive formula is the textbook one (softmax, masked mean over steps,
-Σ N̄ log ȳ with the N = 0 terms masked), with no log-space tricks; autodiff
of it is exact up to rounding, so the tolerance is tight.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_close, make_case, random_labels, random_logits, random_mask, random_probabilities
from brute_force import counts_from_label_lists

import ace_core

REDUCTIONS = ("none", "sum", "mean")
AUTODIFF_ATOL, AUTODIFF_RTOL = 1e-13, 1e-11


def _problem(name: str, from_logits: bool):
    """(scores, counts, valid (B, T) bool for the flattened steps, keywords for ace_core)."""
    if name == "large_mask":  # bigger than the brute-force cases: autodiff is cheap
        rng = np.random.default_rng(11)
        shape = (4, 30, 10)
        mask = random_mask(rng, shape[:-1])
        lengths = [int(m.sum()) for m in mask]
        scores = random_logits(rng, shape, scale=4.0) if from_logits else random_probabilities(rng, shape)
        counts = counts_from_label_lists(random_labels(rng, lengths, 10), 10, lengths)
        return scores, counts, mask, {"mask": mask}
    case = make_case(name, from_logits)
    batch = case.scores.shape[0]
    steps = int(np.prod(case.scores.shape[1:-1]))
    valid = np.ones((batch, steps), dtype=bool) if case.valid is None else case.valid.reshape(batch, steps)
    keywords = {}
    if case.lengths is not None:
        keywords["input_lengths"] = list(case.lengths)
    if case.mask is not None:
        keywords["mask"] = case.mask
    return case.scores, case.counts, valid, keywords


def _on(backend, keywords):
    return {k: (backend.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in keywords.items()}


PROBLEMS = ["1d", "1d_lengths", "2d_mask", "large_mask"]


def _assert_gradient(backend, grad, expected_grad, kind: str) -> None:
    assert_close(
        backend.to_numpy(grad),
        backend.to_numpy(expected_grad),
        rtol=AUTODIFF_RTOL,
        atol=AUTODIFF_ATOL,
        kind=kind,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_gradient_matches_torch_autograd(torch_backend, name, from_logits, reduction):
    import torch

    scores_np, counts_np, valid_np, keywords = _problem(name, from_logits)
    scores = torch_backend.asarray(scores_np).requires_grad_(True)
    counts = torch_backend.asarray(counts_np).to(torch.float64)
    valid = torch_backend.asarray(valid_np)

    batch, classes = scores.shape[0], scores.shape[-1]
    flat = scores.reshape(batch, -1, classes)
    y = torch.softmax(flat, dim=-1) if from_logits else flat
    lengths = valid.sum(dim=1).to(torch.float64)
    y_bar = (y * valid[:, :, None]).sum(dim=1) / lengths[:, None]
    present = counts > 0
    log_y_bar = torch.log(torch.where(present, y_bar, torch.ones_like(y_bar)))
    per_sample = -torch.where(present, counts / lengths[:, None] * log_y_bar, torch.zeros_like(y_bar)).sum(
        dim=1
    )
    total = {"none": per_sample.sum(), "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    (expected_grad,) = torch.autograd.grad(total, scores)

    loss, grad = ace_core.ace_loss_and_grad(
        scores.detach(),
        torch_backend.asarray(counts_np),
        from_logits=from_logits,
        reduction=reduction,
        **_on(torch_backend, keywords),
    )
    expected_loss = per_sample if reduction == "none" else total
    assert_close(torch_backend.to_numpy(loss), torch_backend.to_numpy(expected_loss), rtol=1e-13)
    _assert_gradient(torch_backend, grad, expected_grad, "gradient vs torch.autograd")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_gradient_matches_jax_grad(jax_backend, name, from_logits, reduction):
    import jax
    import jax.numpy as jnp

    scores_np, counts_np, valid_np, keywords = _problem(name, from_logits)
    counts = jax_backend.asarray(counts_np.astype(np.float64))
    valid = jax_backend.asarray(valid_np)

    def naive_loss(scores):
        batch, classes = scores.shape[0], scores.shape[-1]
        flat = scores.reshape(batch, -1, classes)
        y = jax.nn.softmax(flat, axis=-1) if from_logits else flat
        lengths = valid.sum(axis=1).astype(jnp.float64)
        y_bar = jnp.where(valid[:, :, None], y, 0.0).sum(axis=1) / lengths[:, None]
        present = counts > 0
        log_y_bar = jnp.log(jnp.where(present, y_bar, 1.0))
        per_sample = -jnp.where(present, counts / lengths[:, None] * log_y_bar, 0.0).sum(axis=1)
        return per_sample.mean() if reduction == "mean" else per_sample.sum()

    scores = jax_backend.asarray(scores_np)
    expected_loss, expected_grad = jax.value_and_grad(naive_loss)(scores)
    loss, grad = ace_core.ace_loss_and_grad(
        scores,
        jax_backend.asarray(counts_np),
        from_logits=from_logits,
        reduction=reduction,
        **_on(jax_backend, keywords),
    )
    total = loss.sum() if reduction == "none" else loss
    assert_close(jax_backend.to_numpy(total), jax_backend.to_numpy(expected_loss), rtol=1e-13)
    _assert_gradient(jax_backend, grad, expected_grad, "gradient vs jax.grad")
