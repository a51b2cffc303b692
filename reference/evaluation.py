"""Scoring a model of a task on held-out data, and the one-line summary ``ace train`` prints.

:func:`evaluate` reports the ACE loss on the held-out set, its gap to the
entropy floor, and the task's metrics (see its docstring);
:func:`format_metrics` turns them into the line of the progress log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

import ace_core
from ace_core._typing import Array, ArrayNamespace

from ._array import to_host
from .labels import batch_counts, label_lists

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["evaluate", "forward_in_chunks", "format_metrics"]


def forward_in_chunks(
    model: Any, images: np.ndarray, *, xp: ArrayNamespace, device: Any, chunk: int = 128
) -> Array:
    """Inference logits for host ``images``, ``chunk`` images at a time (bounded memory), on device."""
    parts = []
    for start in range(0, images.shape[0], chunk):
        batch = xp.asarray(np.ascontiguousarray(images[start : start + chunk]), device=device)
        logits, _ = model.forward(batch, train=False)
        parts.append(logits)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _object_counts(counts: np.ndarray) -> np.ndarray:
    out = np.array(counts, copy=True)
    out[:, 0] = 0
    return out


def evaluate(
    task: Task,
    model: Any,
    heldout: Any,
    *,
    xp: ArrayNamespace,
    device: Any,
    chunk: int = 128,
) -> dict[str, Any]:
    """Score ``model`` on a held-out batch; every value is a JSON-ready float or list.

    Returns
    -------
    dict
        Always ``loss`` and ``loss_minus_floor`` (ACE on the held-out set) and
        ``count_accuracy`` (the rounded aggregated counts equal the label's
        for every non-blank class). Then by kind:

        - sequence: ``sequence_accuracy``, ``cer``, ``bag_accuracy`` of the
          greedy readout (:func:`ace_core.decode_greedy`), and
          ``ordered_sequence_accuracy``, ``ordered_cer`` of the count-ordered
          readout (:func:`ace_core.decode_ordered`);
        - bag: ``bag_accuracy`` (argmax per cell), ``precision``, ``recall``
          (of predicted characters, multiset intersection);
        - count: ``mean_rmse``, ``m_rel_rmse``, ``rmse``, ``rel_rmse`` (per
          object class), ``exact``.
    """
    images = np.asarray(heldout.images)
    logits = forward_in_chunks(model, images, xp=xp, device=device, chunk=chunk)
    counts = batch_counts(task, heldout, logits, xp=xp, device=device)
    loss = float(ace_core.ace_loss(logits, counts, xp=xp))
    floor = float(ace_core.entropy_floor(counts, reduction="mean", xp=xp))
    references = label_lists(task, heldout)
    predicted_counts = _object_counts(to_host(ace_core.decode_counts(logits, xp=xp)))
    true_counts = _object_counts(to_host(counts))
    metrics: dict[str, Any] = {
        "loss": loss,
        "loss_minus_floor": loss - floor,
        "count_accuracy": float(np.mean(np.all(predicted_counts == true_counts, axis=1))),
    }
    if task.kind == "sequence":
        metrics.update(_sequence_metrics(logits, references, xp=xp))
    elif task.kind == "bag":
        metrics.update(_bag_metrics(logits, references, xp=xp))
    else:
        metrics.update(_count_metrics(predicted_counts, true_counts))
        metrics["exact"] = metrics["count_accuracy"]
    return metrics


def _sequence_metrics(logits: Array, references: list[list[int]], *, xp: ArrayNamespace) -> dict[str, float]:
    decoded = ace_core.decode_greedy(logits, xp=xp)
    ordered = ace_core.decode_ordered(logits, xp=xp)
    return {
        "sequence_accuracy": ace_core.sequence_accuracy(decoded, references),
        "cer": ace_core.character_error_rate(decoded, references),
        "bag_accuracy": ace_core.bag_accuracy(decoded, references),
        "ordered_sequence_accuracy": ace_core.sequence_accuracy(ordered, references),
        "ordered_cer": ace_core.character_error_rate(ordered, references),
    }


def _bag_metrics(logits: Array, references: list[list[int]], *, xp: ArrayNamespace) -> dict[str, float]:
    decoded = ace_core.decode_greedy(logits, collapse_repeats=False, xp=xp)
    matched = predicted = true = 0
    for p, r in zip(decoded, references, strict=True):
        matched += sum((Counter(p) & Counter(r)).values())
        predicted += len(p)
        true += len(r)
    return {
        "bag_accuracy": ace_core.bag_accuracy(decoded, references),
        "precision": matched / predicted if predicted else 0.0,
        "recall": matched / true if true else 0.0,
    }


def _count_metrics(predicted_counts: np.ndarray, true_counts: np.ndarray) -> dict[str, Any]:
    classes = list(range(1, true_counts.shape[1]))
    errors = ace_core.counting_errors(predicted_counts, true_counts, classes=classes)
    return {
        "mean_rmse": errors.mean_rmse,
        "m_rel_rmse": errors.mean_rel_rmse,
        "rmse": errors.rmse.tolist(),
        "rel_rmse": errors.rel_rmse.tolist(),
    }


def format_metrics(task: Task, metrics: Mapping[str, Any]) -> str:
    """One line of the task's held-out metrics, as ``ace train`` prints them."""
    if task.kind == "sequence":
        return (
            f"sequence accuracy {100 * metrics['sequence_accuracy']:.1f}% greedy, "
            f"{100 * metrics['ordered_sequence_accuracy']:.1f}% ordered  "
            f"CER {100 * metrics['cer']:.2f}% greedy, {100 * metrics['ordered_cer']:.2f}% ordered  "
            f"counts exact {100 * metrics['count_accuracy']:.1f}%"
        )
    if task.kind == "bag":
        return (
            f"bag accuracy {100 * metrics['bag_accuracy']:.1f}%  "
            f"precision {100 * metrics['precision']:.1f}%  recall {100 * metrics['recall']:.1f}%"
        )
    return (
        f"m-relRMSE {metrics['m_rel_rmse']:.3f}  mRMSE {metrics['mean_rmse']:.3f}  "
        f"exact {100 * metrics['count_accuracy']:.1f}%"
    )
