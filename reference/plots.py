"""PNG figures of the training reference: learning curves and 2D prediction maps.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch, no display needed). matplotlib is part of the ``reference``
extra and is imported when this module is, which the training driver does
lazily, only when it draws.

- :func:`learning_curves`: the training loss minus its entropy floor and the
  held-out metric of one run against steps.
- :func:`compare_curves`: one held-out metric of several runs (the
  reproductions: ACE vs regression, shuffled labels, the plateau).
- :func:`prediction_maps`: input images with the argmax class of every cell
  of the FCN's output map written over it, as the paper's Fig. 2 and 5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["METRIC_LABELS", "learning_curves", "compare_curves", "prediction_maps", "save"]

#: Axis labels of the metrics that :func:`ace_core.reference.tasks.evaluate` returns.
METRIC_LABELS = {
    "sequence_accuracy": "held-out sequence accuracy",
    "cer": "held-out character error rate",
    "bag_accuracy": "held-out exact multiset accuracy",
    "count_accuracy": "held-out exact counts",
    "m_rel_rmse": "held-out m-relRMSE",
    "mean_rmse": "held-out mRMSE",
    "loss_minus_floor": "held-out loss - entropy floor",
}
_DPI = 80


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG (Agg) to ``path``, creating the directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=_DPI, format="png")
    return path


def _eval_series(history: Mapping[str, Any], metric: str) -> tuple[list[int], list[float]]:
    rows = [row for row in history.get("eval", []) if metric in row]
    return [int(row["step"]) for row in rows], [float(row[metric]) for row in rows]


def _primary(task: Any) -> list[str]:
    kind = getattr(task, "kind", task)
    return {
        "sequence": ["sequence_accuracy", "cer"],
        "bag": ["bag_accuracy", "count_accuracy"],
        "count": ["m_rel_rmse", "mean_rmse"],
    }[kind]


def learning_curves(history: Mapping[str, Any], path: str | Path, *, task: Any, title: str = "") -> Path:
    """Two panels: training loss minus the entropy floor (log scale) and the held-out metrics.

    Parameters
    ----------
    history : mapping
        ``{"train": {"step": [...], "loss_minus_floor": [...]}, "eval": [{"step": ..., metric: ...}]}``
        as :func:`ace_core.reference.train.train` records it.
    path : path-like
        The PNG to write.
    task : Task or str
        The task (or its kind: ``"sequence"``, ``"bag"``, ``"count"``), which picks the metrics.
    title : str

    Returns
    -------
    pathlib.Path
    """
    figure = Figure(figsize=(8, 3), layout="constrained")
    left, right = figure.subplots(1, 2)
    train = history.get("train", {})
    steps, gap = train.get("step", []), train.get("loss_minus_floor", [])
    if steps:
        left.plot(steps, np.maximum(np.asarray(gap, dtype=float), 1e-6), color="C0")
        left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("train loss - entropy floor")
    left.grid(alpha=0.3)
    for index, metric in enumerate(_primary(task)):
        xs, ys = _eval_series(history, metric)
        if xs:
            right.plot(xs, ys, marker="o", markersize=3, color=f"C{index + 1}", label=METRIC_LABELS[metric])
    right.set_xlabel("step")
    right.grid(alpha=0.3)
    right.legend(fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium")
    return save(figure, path)


def compare_curves(
    runs: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str,
    title: str = "",
    second: str | None = None,
) -> Path:
    """One held-out ``metric`` of several runs against steps (and optionally a ``second`` panel).

    Parameters
    ----------
    runs : mapping
        Label → history (as in ``metrics.json``).
    path : path-like
    metric : str
        A key of the evaluation records (see :data:`METRIC_LABELS`).
    title : str
    second : str, optional
        Another metric for a second panel; ``"train"`` plots the training
        loss minus floor instead.
    """
    panels = 1 if second is None else 2
    figure = Figure(figsize=(4.5 * panels, 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, panels))
    for index, (label, history) in enumerate(runs.items()):
        style = {"color": f"C{index}", "label": label, "linestyle": ("-", "--", ":", "-.")[index % 4]}
        xs, ys = _eval_series(history, metric)
        axes[0].plot(xs, ys, **style)
        if second == "train":
            train = history.get("train", {})
            gap = np.maximum(np.asarray(train.get("loss_minus_floor", []), dtype=float), 1e-6)
            axes[1].plot(train.get("step", []), gap, **style)
        elif second is not None:
            axes[1].plot(*_eval_series(history, second), **style)
    axes[0].set_ylabel(METRIC_LABELS.get(metric, metric))
    if second == "train":
        axes[1].set_yscale("log")
        axes[1].set_ylabel("train loss - entropy floor")
    elif second is not None:
        axes[1].set_ylabel(METRIC_LABELS.get(second, second))
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium")
    return save(figure, path)


def prediction_maps(
    images: np.ndarray,
    logits: np.ndarray,
    path: str | Path,
    *,
    class_names: Sequence[str],
    truths: Sequence[Sequence[int]] | None = None,
    counts: bool = False,
) -> Path:
    """Each input image with its output map over it: the argmax class of every non-blank cell.

    As the paper's Fig. 2 and 5: the ``H' x W'`` grid of the FCN's output
    cells is drawn over the ``S x S`` image, and every cell whose most likely
    class is not the blank shows that class's name. With ``counts=True`` the
    cells are shaded by their non-blank probability instead, which suits
    counting models (they spread an object's unit of mass over several cells).

    Parameters
    ----------
    images : array, shape (N, 1, S, S) or (N, S, S)
    logits : array, shape (N, H', W', C)
        Class axis last, host NumPy.
    path : path-like
    class_names : sequence of str
        Index 0 is the blank.
    truths : sequence of label lists, optional
        The true multiset of each image, for the panel titles.
    counts : bool
    """
    images = np.asarray(images, dtype=float).reshape(len(images), images.shape[-2], images.shape[-1])
    logits = np.asarray(logits, dtype=float)
    n, rows, cols = logits.shape[0], logits.shape[1], logits.shape[2]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    best = probs.argmax(axis=-1)
    figure = Figure(figsize=(2.3 * n, 2.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, n))
    for index, axis in enumerate(axes):
        size_y, size_x = images[index].shape
        axis.imshow(images[index], cmap="gray", vmin=0, vmax=1, extent=(0, size_x, size_y, 0))
        cell_y, cell_x = size_y / rows, size_x / cols
        for r in range(1, rows):
            axis.axhline(r * cell_y, color="tab:blue", linewidth=0.4, alpha=0.6)
        for c in range(1, cols):
            axis.axvline(c * cell_x, color="tab:blue", linewidth=0.4, alpha=0.6)
        if counts:
            mass = 1.0 - probs[index, :, :, 0]
            axis.imshow(
                mass, cmap="autumn", alpha=0.45 * (mass > 0.05), extent=(0, size_x, size_y, 0), vmin=0, vmax=1
            )
        predicted = []
        for r in range(rows):
            for c in range(cols):
                k = int(best[index, r, c])
                if k == 0:
                    continue
                predicted.append(k)
                if not counts:
                    axis.text(
                        (c + 0.5) * cell_x,
                        (r + 0.5) * cell_y,
                        class_names[k],
                        color="tab:red",
                        fontsize=9,
                        fontweight="bold",
                        ha="center",
                        va="center",
                    )
        axis.set_xticks([])
        axis.set_yticks([])
        label = "".join(sorted(class_names[k] for k in predicted))
        if counts:
            totals = probs[index].reshape(-1, probs.shape[-1]).sum(axis=0)
            label = " ".join(
                f"{class_names[k]}:{int(np.rint(totals[k]))}" for k in range(1, len(class_names))
            )
        title = f"pred {label or '-'}"
        if truths is not None:
            truth = truths[index]
            if counts:
                tally = np.bincount(np.asarray(truth, dtype=int), minlength=len(class_names))
                truth_text = " ".join(f"{class_names[k]}:{tally[k]}" for k in range(1, len(class_names)))
            else:
                truth_text = "".join(sorted(class_names[k] for k in truth))
            title = f"true {truth_text}\n{title}"
        axis.set_title(title, fontsize=8)
    return save(figure, path)
