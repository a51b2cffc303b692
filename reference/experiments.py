"""Miniature reproductions of the paper's claims, one command each (``ace reproduce NAME``).

========== ==================================================================
name       claim (paper) and what the miniature trains
========== ==================================================================
table1     Table 1 / Fig. 3: cross-entropy ACE learns far better than
           regression ACE. The text-line CRNN with each loss.
order      Fig. 4: ACE does not care about the order of the label. The
           text-line CRNN on labels whose characters are shuffled in 0 %,
           50 % and 100 % of the lines.
toy2d      Fig. 2: an FCN with 2D ACE recognises characters scattered at
           random places; the argmax map shows where it sees them.
counting   Table 4: ACE trains a counting model; m-RMSE and m-relRMSE
           against the "always the most frequent count" baseline.
plateau    Users report that a 1D CRNN with ACE sits on a plateau before it
           learns. The reference CRNN with the usual setup against the
           recipe of the docs: the blank's output bias starts at the labels'
           average blank share.
========== ==================================================================

Each writes ``NAME.json`` (configs, held-out curves, final numbers and a
headline) and ``NAME*.png`` into the output directory. The default step
budgets take a few minutes on a 2-core CPU; ``steps=`` scales every run.
Training runs write no checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import TRAIN_DEFAULTS

__all__ = ["Reproduction", "REPRODUCTIONS", "reproduce", "PLATEAU_RECIPE", "PLATEAU_BASELINE"]


@dataclasses.dataclass(frozen=True)
class Reproduction:
    """One miniature experiment."""

    name: str
    summary: str  #: one line for ``--help``
    steps: int  #: default training steps per run
    runner: Callable[[_Context], dict[str, Any]]


@dataclasses.dataclass
class _Context:
    name: str
    out: Path
    steps: int
    seed: int
    backend: str | None
    threads: int | None
    log: Callable[[str], None]
    eval_size: int = TRAIN_DEFAULTS["eval_size"]
    files: list[str] = dataclasses.field(default_factory=list)

    def train(self, label: str, task: str, **options: Any) -> Any:
        from .train import TrainConfig, train

        eval_every = max(self.steps // 12, 10)
        config = TrainConfig(
            task=task,
            steps=self.steps,
            seed=self.seed,
            backend=self.backend,
            eval_every=eval_every,
            log_every=max(eval_every // 2, 1),
            eval_size=self.eval_size,
            **options,
        )
        self.log(f"[{self.name}] {label}")
        started = time.perf_counter()
        result = train(
            config, None, threads=self.threads, log=lambda line: self.log(f"  {line}"), plots=False
        )
        result.wall_seconds = time.perf_counter() - started
        return result

    def figure(self, suffix: str = "") -> Path:
        path = self.out / f"{self.name}{suffix}.png"
        self.files.append(str(path))
        return path


def _run_record(result: Any) -> dict[str, Any]:
    return {
        "config": result.config.to_dict(),
        "final": result.final,
        "history": result.history,
        "ms_per_step": result.ms_per_step,
        "wall_seconds": getattr(result, "wall_seconds", None),
    }


def _first_step(history: Mapping[str, Any], metric: str, threshold: float) -> int | None:
    for row in history.get("eval", []):
        if row.get(metric, -1.0) >= threshold:
            return int(row["step"])
    return None


# --------------------------------------------------------------------------- table 1


def _table1(ctx: _Context) -> dict[str, Any]:
    from . import plots

    runs = {
        "cross-entropy ACE": ctx.train("cross-entropy ACE (Eq. 8)", "crnn", loss="ace"),
        "regression ACE": ctx.train("regression ACE (Eq. 4)", "crnn", loss="regression"),
    }
    plots.compare_curves(
        {k: r.history for k, r in runs.items()},
        ctx.figure(),
        metric="sequence_accuracy",
        second="cer",
        title="CRNN on text lines: cross-entropy vs regression ACE",
    )
    ce, reg = (runs[k].final for k in runs)
    return {
        "runs": {k: _run_record(r) for k, r in runs.items()},
        "table": {
            k: {"sequence_accuracy": r.final["sequence_accuracy"], "cer": r.final["cer"]}
            for k, r in runs.items()
        },
        "headline": (
            f"after {ctx.steps} steps, held-out sequence accuracy {100 * ce['sequence_accuracy']:.1f}% "
            f"(CER {100 * ce['cer']:.1f}%) with cross-entropy ACE vs {100 * reg['sequence_accuracy']:.1f}% "
            f"(CER {100 * reg['cer']:.1f}%) with regression ACE"
        ),
    }


# --------------------------------------------------------------------------- order (Fig. 4)


def _order(ctx: _Context) -> dict[str, Any]:
    from . import plots

    ratios = (0.0, 0.5, 1.0)
    runs = {
        f"shuffle {int(100 * r)}%": ctx.train(
            f"labels shuffled in {int(100 * r)}% of lines", "crnn", shuffle_labels=r
        )
        for r in ratios
    }
    plots.compare_curves(
        {k: r.history for k, r in runs.items()},
        ctx.figure(),
        metric="sequence_accuracy",
        second="bag_accuracy",
        title="CRNN + ACE with the label order shuffled",
    )
    reference = next(iter(runs.values())).model.state_dict()
    max_difference = 0.0
    for result in runs.values():
        state = result.model.state_dict()
        for name, value in reference.items():
            max_difference = max(max_difference, float(np.max(np.abs(state[name] - value))))
    accuracies = [r.final["sequence_accuracy"] for r in runs.values()]
    return {
        "runs": {k: _run_record(r) for k, r in runs.items()},
        "table": {
            k: {"sequence_accuracy": r.final["sequence_accuracy"], "bag_accuracy": r.final["bag_accuracy"]}
            for k, r in runs.items()
        },
        "max_parameter_difference": max_difference,
        "headline": (
            "held-out sequence accuracy "
            + " / ".join(f"{100 * a:.1f}%" for a in accuracies)
            + " with 0/50/100% of the labels shuffled; the trained weights differ by at most "
            + f"{max_difference:g}"
        ),
    }


# --------------------------------------------------------------------------- toy 2D (Fig. 2)


def _maps(ctx: _Context, result: Any, suffix: str, counts: bool) -> None:
    from . import plots
    from ._array import to_host
    from .labels import label_lists
    from .readout import class_names
    from .tasks import get_task

    task = get_task(result.config.task)
    heldout = result.dataset.heldout(4, seed=result.config.seed + 1)
    images = np.asarray(heldout.images)
    model = result.model
    logits, _ = model.forward(model.xp.asarray(images, device=model.device), train=False)
    plots.prediction_maps(
        images,
        to_host(logits),
        ctx.figure(suffix),
        class_names=class_names(result.dataset),
        truths=label_lists(task, heldout),
        counts=counts,
    )


def _toy2d(ctx: _Context) -> dict[str, Any]:
    from . import plots

    result = ctx.train("FCN on scattered digits", "fcn")
    plots.learning_curves(result.history, ctx.figure(), task="bag", title="FCN + 2D ACE on the Fig. 2 toy")
    _maps(ctx, result, "_map", counts=False)
    final = result.final
    return {
        "runs": {"fcn": _run_record(result)},
        "table": {k: final[k] for k in ("bag_accuracy", "precision", "recall", "count_accuracy")},
        "headline": (
            f"after {ctx.steps} steps, exact multiset accuracy {100 * final['bag_accuracy']:.1f}% "
            f"on held-out canvases (character precision {100 * final['precision']:.1f}%, "
            f"recall {100 * final['recall']:.1f}%)"
        ),
    }


# --------------------------------------------------------------------------- counting (Table 4)


def _counting(ctx: _Context) -> dict[str, Any]:
    import ace_core

    from . import plots

    result = ctx.train("FCN counting shapes", "count")
    plots.learning_curves(result.history, ctx.figure(), task="count", title="FCN + 2D ACE counting")
    _maps(ctx, result, "_map", counts=True)
    # The paper's "Always-0" row predicts the most frequent count of each class in training.
    dataset, config = result.dataset, result.config
    train_counts = np.asarray(dataset.batch(np.random.default_rng([config.seed, 0xC0]), 2000).object_counts)
    heldout = np.asarray(dataset.heldout(config.eval_size, seed=config.seed).object_counts)
    mode = np.array([np.bincount(column).argmax() for column in train_counts.T])
    classes = list(range(1, heldout.shape[1]))
    baseline = ace_core.counting_errors(np.broadcast_to(mode, heldout.shape), heldout, classes=classes)
    final = result.final
    table = {
        "always most frequent count": {"m_rmse": baseline.mean_rmse, "m_rel_rmse": baseline.mean_rel_rmse},
        "ACE (2D)": {
            "m_rmse": final["mean_rmse"],
            "m_rel_rmse": final["m_rel_rmse"],
            "rmse": final["rmse"],
            "rel_rmse": final["rel_rmse"],
            "exact": final["count_accuracy"],
        },
    }
    return {
        "runs": {"count": _run_record(result)},
        "table": table,
        "headline": (
            f"after {ctx.steps} steps, m-relRMSE {final['m_rel_rmse']:.3f} "
            f"and mRMSE {final['mean_rmse']:.3f} "
            f"(always-the-mode baseline: {baseline.mean_rel_rmse:.3f} / {baseline.mean_rmse:.3f}); "
            f"{100 * final['count_accuracy']:.1f}% of held-out canvases counted exactly"
        ),
    }


# --------------------------------------------------------------------------- plateau

#: The usual start that shows the plateau: the output bias at 0 (the model predicts every class
#: alike), everything else as in ``ace train crnn``.
PLATEAU_BASELINE: dict[str, Any] = {"model": {"init_blank_bias": 0.0}}
#: The recipe (the default of ``ace train``): the blank's bias starts at the labels' average blank
#: share (:func:`ace_core.reference.tasks.prior_blank_bias`).
PLATEAU_RECIPE: dict[str, Any] = {"model": {"init_blank_bias": "prior"}}


def _plateau(ctx: _Context) -> dict[str, Any]:
    from . import plots

    variants = {
        "blank bias 0 (usual init)": PLATEAU_BASELINE,
        "blank bias 0, Adam state restarted at step 100": {**PLATEAU_BASELINE, "restart_optimizer_at": 100},
        "blank bias at the label prior (recipe)": PLATEAU_RECIPE,
    }
    runs = {label: ctx.train(label, "crnn", **options) for label, options in variants.items()}
    plots.compare_curves(
        {k: r.history for k, r in runs.items()},
        ctx.figure(),
        metric="sequence_accuracy",
        second="train",
        title="CRNN + ACE on text lines: the plateau and the prior-bias start",
    )
    table = {
        label: {
            "first_step_50": _first_step(r.history, "sequence_accuracy", 0.5),
            "first_step_80": _first_step(r.history, "sequence_accuracy", 0.8),
            "final_sequence_accuracy": r.final["sequence_accuracy"],
        }
        for label, r in runs.items()
    }
    base, recipe = table[next(iter(variants))], table[list(variants)[-1]]

    def when(step: int | None) -> str:
        return f"at step {step}" if step is not None else f"never within {ctx.steps} steps"

    return {
        "runs": {k: _run_record(r) for k, r in runs.items()},
        "table": table,
        "headline": (
            f"50% held-out sequence accuracy {when(base['first_step_50'])} with the usual start "
            f"(blank bias 0), {when(recipe['first_step_50'])} with the blank bias at the label prior; "
            f"final {100 * base['final_sequence_accuracy']:.1f}% vs "
            f"{100 * recipe['final_sequence_accuracy']:.1f}%"
        ),
    }


REPRODUCTIONS: Mapping[str, Reproduction] = {
    r.name: r
    for r in (
        Reproduction(
            "table1", "cross-entropy vs regression ACE on the text-line CRNN (Table 1)", 1500, _table1
        ),
        Reproduction("order", "ACE trained on shuffled labels, 0/50/100% (Fig. 4)", 800, _order),
        Reproduction(
            "toy2d", "FCN with 2D ACE on scattered characters, with the prediction map (Fig. 2)", 3000, _toy2d
        ),
        Reproduction("counting", "FCN counting shapes, m-RMSE and m-relRMSE (Table 4)", 2000, _counting),
        Reproduction("plateau", "the 1D CRNN plateau and the recipe that removes it", 1200, _plateau),
    )
}


def reproduce(
    name: str,
    out: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    backend: str | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    eval_size: int = TRAIN_DEFAULTS["eval_size"],
) -> dict[str, Any]:
    """Run the reproduction ``name`` and write ``out/NAME.json`` and its figures.

    Parameters
    ----------
    name : str
        A key of :data:`REPRODUCTIONS`.
    out : path-like
        Output directory (created).
    steps : int, optional
        Training steps of every run (default: the reproduction's own).
    seed, backend, threads
        As for :func:`ace_core.reference.train.train`.
    log : callable, optional
        Receives progress lines (default: discard).
    eval_size : int
        Held-out images per evaluation.

    Returns
    -------
    dict
        What ``NAME.json`` holds: ``headline``, ``table``, ``runs`` and ``files``.
    """
    from .checkpoint import write_json_atomic

    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; choose from {', '.join(REPRODUCTIONS)}")
    spec = REPRODUCTIONS[name]
    ctx = _Context(
        name=name,
        out=Path(out),
        steps=steps if steps is not None else spec.steps,
        seed=seed,
        backend=backend,
        threads=threads,
        log=log if log is not None else (lambda line: None),
        eval_size=eval_size,
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = spec.runner(ctx)
    path = ctx.out / f"{name}.json"
    ctx.files.insert(0, str(path))
    summary = {
        "name": name,
        "summary": spec.summary,
        "steps": ctx.steps,
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
        **summary,
        "files": ctx.files,
    }
    write_json_atomic(path, summary)
    return summary
