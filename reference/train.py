"""The training loop of the reference: ``ace train`` in a function.

:func:`train` sets up the run (or resumes it from its checkpoint), then
repeats one optimiser step (:func:`ace_core.reference.training_step.training_step`:
a batch drawn on the host and moved to the device, the model's forward pass,
the ACE loss and its gradient from :func:`ace_core.ace_loss_and_grad`, the
backward pass, the optimiser). Every ``log_every`` steps it reports the loss
minus its entropy floor (:func:`ace_core.entropy_floor`: 0 is a perfect fit of
the batch) and the throughput; every ``eval_every`` steps it scores a fixed
held-out set (:func:`ace_core.reference.evaluation.evaluate`) and writes a checkpoint
(:mod:`ace_core.reference.checkpoint`) and ``metrics.json``; at the end it draws
the plots (:mod:`ace_core.reference.plots`).

Resuming (``resume=True``) restores parameters, buffers, optimiser state, the
data stream's RNG state and the step, so that ``N`` straight steps and ``N/2``
steps plus a resumed ``N/2`` give bitwise the same parameters (on the same
backend and thread count).

Examples
--------
>>> from ace_core.reference.train import TrainConfig, learning_rate
>>> config = TrainConfig(task="crnn", steps=1000, lr=1e-3, warmup=100, schedule="cosine").resolved()
>>> [round(learning_rate(config, s), 6) for s in (0, 99, 100, 999)]
[1e-05, 0.001, 0.001, 5e-05]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import tasks as _tasks
from ._array import to_host
from .array_library import select_backend, thread_limit
from .checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from .defaults import ADADELTA_LR, PER_TASK_FIELDS, TRAIN_DEFAULTS
from .evaluation import evaluate, format_metrics, forward_in_chunks
from .labels import label_lists
from .readout import class_names
from .training_step import training_step

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "learning_rate",
    "make_optimizer",
    "restore",
    "format_metrics",
]

#: Fields of :class:`TrainConfig` that a resumed run may change: bookkeeping,
#: the number of steps, and the backend (a run checkpointed on a GPU continues
#: on the CPU, though not bitwise as it would have on the GPU).
RESUMABLE_OVERRIDES = ("steps", "eval_every", "eval_size", "checkpoint_every", "log_every", "backend")

#: The defaults a task does not set (every task sets them: :mod:`ace_core.reference.defaults`).
_GLOBAL_DEFAULTS: dict[str, Any] = {name: TRAIN_DEFAULTS[name] for name in PER_TASK_FIELDS}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    ``None`` fields take the task's default (:attr:`Task.train_defaults
    <ace_core.reference.tasks.Task.train_defaults>`), then a global one; call
    :meth:`resolved` to fill them. Every default comes from
    :mod:`ace_core.reference.defaults`.
    """

    task: str = "crnn"  #: a name of :data:`ace_core.reference.tasks.TASKS`
    steps: int | None = None  #: optimiser steps in total
    batch: int | None = None  #: images per step
    lr: float | None = None  #: peak learning rate (Adadelta: its multiplier, 1.0 in the paper)
    optimizer: Literal["adam", "adadelta"] = TRAIN_DEFAULTS["optimizer"]
    schedule: Literal["constant", "cosine"] | None = None  #: after the warmup
    warmup: int | None = None  #: steps of linear warmup from lr/warmup to lr
    clip: float | None = None  #: clip the gradients' global norm to this (``None``: no clipping)
    seed: int = TRAIN_DEFAULTS["seed"]  #: seeds the weights and the data streams
    eval_every: int | None = None  #: evaluate, checkpoint and save metrics every this many steps
    eval_size: int = TRAIN_DEFAULTS["eval_size"]  #: held-out images per evaluation
    checkpoint_every: int | None = None  #: default: ``eval_every``
    log_every: int = TRAIN_DEFAULTS["log_every"]  #: progress line every this many steps
    loss: Literal["ace", "regression"] = TRAIN_DEFAULTS[
        "loss"
    ]  #: cross-entropy ACE, or regression ACE (Table 1)
    shuffle_labels: float = 0.0  #: fraction of labels whose order is shuffled (paper Fig. 4)
    #: diagnostic: throw the optimiser's state away before this step (the plateau experiment)
    restart_optimizer_at: int | None = None
    backend: str | None = None  #: ``"numpy"`` or ``"cupy"``; default: cupy when a GPU is usable
    dtype: Literal["float32", "float64"] = TRAIN_DEFAULTS["dtype"]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  #: generator options
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  #: model options

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in and the values checked."""
        task = _tasks.get_task(self.task)
        values = dataclasses.asdict(self)
        defaults = {**_GLOBAL_DEFAULTS, **task.train_defaults}
        if self.optimizer == "adadelta" and self.lr is None:
            defaults["lr"] = ADADELTA_LR
        for name, value in defaults.items():
            if values.get(name) is None:
                values[name] = value
        if values["checkpoint_every"] is None:
            values["checkpoint_every"] = values["eval_every"]
        if values["backend"] is None:
            values["backend"] = select_backend(None).name
        config = TrainConfig(**values)
        config.check()
        return config

    def check(self) -> None:
        """``ValueError`` for out-of-range values."""
        for name in ("steps", "batch", "eval_every", "eval_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"`warmup` must be >= 0, got {self.warmup}")
        if self.optimizer not in ("adam", "adadelta"):
            raise ValueError(f"`optimizer` must be 'adam' or 'adadelta', got {self.optimizer!r}")
        if self.schedule is not None and self.schedule not in ("constant", "cosine"):
            raise ValueError(f"`schedule` must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.loss not in ("ace", "regression"):
            raise ValueError(f"`loss` must be 'ace' or 'regression', got {self.loss!r}")
        if not 0.0 <= self.shuffle_labels <= 1.0:
            raise ValueError(f"`shuffle_labels` must lie in [0, 1], got {self.shuffle_labels}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"`clip` must be positive, got {self.clip}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config saved by :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**dict(values))


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    config: TrainConfig  #: the resolved configuration
    model: Any  #: the trained model (on the training device)
    dataset: Any  #: the task's data generator
    history: dict[str, Any]  #: ``{"train": {...}, "eval": [...]}`` as in ``metrics.json``
    final: dict[str, Any]  #: the last evaluation
    steps: int  #: the step reached
    ms_per_step: float  #: median training milliseconds per step of this process (no evaluation)
    out: Path | None  #: the run directory


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (lower the learning rate)."""


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a resolved ``config``.

    Linear warmup over ``warmup`` steps, then constant or a cosine decay to
    5 % of ``lr`` at ``steps``.
    """
    assert config.lr is not None and config.steps is not None
    lr, warmup = config.lr, config.warmup or 0
    if step < warmup:
        return lr * (step + 1) / warmup
    if config.schedule == "cosine":
        span = max(config.steps - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr


def make_optimizer(config: TrainConfig) -> Any:
    """The optimiser of ``config`` (:class:`~ace_core.reference.optim.Adam` or ``Adadelta``)."""
    from . import optim

    if config.optimizer == "adam":
        return optim.Adam(lr=config.lr)
    return optim.Adadelta(lr=config.lr)


def _tree_to_host(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _tree_to_host(value) for key, value in tree.items()}
    if isinstance(tree, (int, float, np.ndarray, np.generic)):
        return tree
    return to_host(tree)


class _Streams:
    """The host RNGs of a run: training batches, and label shuffling (its own stream, Fig. 4)."""

    def __init__(self, seed: int) -> None:
        self.data = np.random.default_rng(seed)
        self.shuffle = np.random.default_rng([seed, 0x5F])

    def state(self) -> dict[str, Any]:
        return {"data": self.data.bit_generator.state, "shuffle": self.shuffle.bit_generator.state}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.data.bit_generator.state = state["data"]
        self.shuffle.bit_generator.state = state["shuffle"]


def restore(directory: str | Path, *, backend: str | None = None) -> tuple[TrainConfig, Any, Any, Checkpoint]:
    """Rebuild a trained model from a run directory, for inference.

    Parameters
    ----------
    directory : path-like
        A run directory written by :func:`train` (or its ``checkpoint.npz``).
    backend : {"numpy", "cupy"}, optional
        Where to put the model; default: cupy when a GPU is usable.

    Returns
    -------
    config : TrainConfig
    model : object
        The model with the checkpoint's parameters and buffers.
    dataset : object
        The task's data generator (for class names and the input size).
    checkpoint : Checkpoint
    """
    checkpoint = load_checkpoint(directory)
    config = TrainConfig.from_dict(checkpoint.config)
    chosen = select_backend(backend)
    xp, device = chosen.namespace(), chosen.device()
    task = _tasks.get_task(config.task)
    dataset = _tasks.build_dataset(task, config.data, seed=config.seed)
    model = _tasks.build_model(
        task, dataset, config.model, seed=config.seed, xp=xp, device=device, dtype=config.dtype
    )
    model.load_state_dict(checkpoint.model)
    return config, model, dataset, checkpoint


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _empty_history() -> dict[str, Any]:
    return {
        "train": {"step": [], "loss": [], "loss_minus_floor": [], "lr": [], "ms_per_step": []},
        "eval": [],
        "train_seconds": 0.0,
    }


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    plots: bool = True,
) -> TrainResult:
    """Train a model of ``config.task`` with ACE; see the module docstring.

    Parameters
    ----------
    config : TrainConfig
        The run; ``None`` fields take the task's defaults.
    out : path-like, optional
        The run directory for ``checkpoint.npz``, ``config.json``,
        ``metrics.json`` and the plots; nothing is written when ``None``.
    resume : bool
        Continue from ``out/checkpoint.npz``: the saved configuration is used,
        except for the fields in :data:`RESUMABLE_OVERRIDES` that ``config``
        sets (e.g. more ``steps``). Without a checkpoint, start afresh.
    threads : int, optional
        Limit BLAS/OpenMP threads to this many while training.
    log : callable, optional
        Receives the progress lines (default: print to stderr).
    plots : bool
        Draw ``learning_curves.png`` (and ``prediction_map.png`` for 2D tasks)
        into ``out`` at the end; needs matplotlib (skipped with a note without it).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDiverged
        When the loss becomes NaN or infinite; the last checkpoint stays.
    """
    if log is None:

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    out_dir = Path(out) if out is not None else None
    checkpoint: Checkpoint | None = None
    if resume and out_dir is not None and has_checkpoint(out_dir):
        checkpoint = load_checkpoint(out_dir)
        saved = TrainConfig.from_dict(checkpoint.config)
        for name in RESUMABLE_OVERRIDES:
            value = getattr(config, name)
            if value is not None and value != getattr(TrainConfig(), name):
                setattr(saved, name, value)
        config = saved
    elif resume:
        log(f"no checkpoint in {out_dir}: starting a new run")
    elif out_dir is not None and has_checkpoint(out_dir):
        log(f"starting a new run in {out_dir}: its checkpoint will be replaced (--resume continues it)")
    config = config.resolved()
    with thread_limit(threads):
        return _train(config, out_dir, checkpoint, log, plots)


@dataclasses.dataclass
class _Run:
    """The state of a run in progress: what a checkpoint saves, and what the loop works on."""

    config: TrainConfig
    task: _tasks.Task
    backend: Any  #: the :class:`ace_core.bench.backend_table.Backend` trained on
    xp: Any
    device: Any
    dataset: Any
    model: Any
    optimizer: Any
    opt_state: Any
    streams: _Streams
    history: dict[str, Any]
    step: int
    heldout: Any
    out_dir: Path | None


def _start_run(
    config: TrainConfig, out_dir: Path | None, checkpoint: Checkpoint | None, log: Callable[[str], None]
) -> _Run:
    """A fresh model and optimiser for ``config``, or the ones of ``checkpoint`` where it stopped."""
    task = _tasks.get_task(config.task)
    chosen = select_backend(config.backend)
    xp, device = chosen.namespace(), chosen.device()
    dataset = _tasks.build_dataset(task, config.data, seed=config.seed)
    model = _tasks.build_model(
        task, dataset, config.model, seed=config.seed, xp=xp, device=device, dtype=config.dtype
    )
    optimizer = make_optimizer(config)
    streams = _Streams(config.seed)
    history = _empty_history()
    step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model)
        opt_state = optimizer.load_state(checkpoint.optimizer, xp=xp, device=device)
        if checkpoint.rng_state is not None:
            streams.set_state(checkpoint.rng_state)
        history = {**_empty_history(), **checkpoint.history}
        step = checkpoint.step
        log(f"resuming {config.task} from step {step} in {out_dir}")
    else:
        opt_state = optimizer.init(model.params)
    heldout = dataset.heldout(config.eval_size, seed=config.seed)
    return _Run(
        config=config,
        task=task,
        backend=chosen,
        xp=xp,
        device=device,
        dataset=dataset,
        model=model,
        optimizer=optimizer,
        opt_state=opt_state,
        streams=streams,
        history=history,
        step=step,
        heldout=heldout,
        out_dir=out_dir,
    )


def _announce(run: _Run, log: Callable[[str], None]) -> None:
    """Write ``config.json`` and log the run's first line (model, backend, schedule)."""
    config, model, chosen = run.config, run.model, run.backend
    if run.out_dir is not None:
        run_config = {**config.to_dict(), "model_config": getattr(model, "config", None)}
        write_json_atomic(run.out_dir / CONFIG_FILE, run_config)
    n_params = sum(int(np.prod(p.shape)) for p in model.params.values())
    log(
        f"ace train {config.task}: {type(model).__name__} ({n_params:,} parameters) on {chosen.name} "
        f"({chosen.device_name()}), {config.steps} steps of {config.batch}, {config.optimizer} "
        f"lr {config.lr:g} ({config.schedule}, warmup {config.warmup}), seed {config.seed}"
    )


def _save(run: _Run) -> None:
    """Checkpoint the run at its step and write ``metrics.json`` (nothing without a run directory)."""
    if run.out_dir is None:
        return
    config = run.config
    save_checkpoint(
        run.out_dir,
        Checkpoint(
            step=run.step,
            model=run.model.state_dict(),
            optimizer=_tree_to_host(run.optimizer.state_dict(run.opt_state)),
            rng_state=run.streams.state(),
            config=config.to_dict(),
            history=run.history,
        ),
    )
    write_json_atomic(
        run.out_dir / METRICS_FILE, {"task": config.task, "config": config.to_dict(), **run.history}
    )


def _evaluate(run: _Run, log: Callable[[str], None]) -> dict[str, Any]:
    """Score the model on the held-out set, append the scores to the history and log them."""
    metrics = evaluate(run.task, run.model, run.heldout, xp=run.xp, device=run.device)
    final = {"step": run.step, "train_seconds": run.history["train_seconds"], **metrics}
    run.history["eval"].append(final)
    log(f"eval step {run.step}: {format_metrics(run.task, metrics)} ({run.config.eval_size} held-out images)")
    return final


class _ProgressWindow:
    """The steps since the last progress line: their mean loss, gap to the floor and time."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.loss, self.gap, self.seconds, self.count = 0.0, 0.0, 0.0, 0

    def add(self, loss: float, floor: float, seconds: float) -> None:
        self.loss += loss
        self.gap += loss - floor
        self.seconds += seconds
        self.count += 1

    def report(self, run: _Run, lr: float, log: Callable[[str], None]) -> None:
        """Append the window's means to the training history, log a progress line, start afresh."""
        config, n = run.config, self.count
        train_log = run.history["train"]
        train_log["step"].append(run.step)
        train_log["loss"].append(self.loss / n)
        train_log["loss_minus_floor"].append(self.gap / n)
        train_log["lr"].append(lr)
        train_log["ms_per_step"].append(1e3 * self.seconds / n)
        remaining = (config.steps - run.step) * self.seconds / n
        gap_name = "loss-floor" if config.loss == "ace" else "loss"
        log(
            f"step {run.step:>{len(str(config.steps))}}/{config.steps}  "
            f"{gap_name} {self.gap / n:.4f}  "
            f"lr {lr:.2e}  {config.batch * n / self.seconds:,.0f} img/s  "
            f"{1e3 * self.seconds / n:.0f} ms/step  eta {_format_seconds(remaining)}"
        )
        self._reset()


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _train(
    config: TrainConfig,
    out_dir: Path | None,
    checkpoint: Checkpoint | None,
    log: Callable[[str], None],
    plots: bool,
) -> TrainResult:
    """The loop of :func:`train`: steps, progress lines, evaluations and checkpoints, then the plots."""
    run = _start_run(config, out_dir, checkpoint, log)
    _announce(run, log)
    step_times: list[float] = []
    window = _ProgressWindow()
    final: dict[str, Any] = run.history["eval"][-1] if run.history["eval"] else {}
    while run.step < config.steps:
        lr = learning_rate(config, run.step)
        result = training_step(
            config,
            run.task,
            run.dataset,
            run.model,
            run.optimizer,
            run.opt_state,
            run.streams,
            step=run.step,
            lr=lr,
            xp=run.xp,
            device=run.device,
        )
        run.opt_state = result.opt_state
        run.step += 1
        if not math.isfinite(result.loss):
            raise TrainingDiverged(
                f"the loss is {result.loss} at step {run.step}; lower --lr (the last checkpoint is kept)"
            )
        step_times.append(result.seconds)
        run.history["train_seconds"] += result.seconds
        window.add(result.loss, result.floor, result.seconds)
        if _due(run.step, config.log_every, config.steps):
            window.report(run, lr, log)
        if _due(run.step, config.eval_every, config.steps):
            final = _evaluate(run, log)
        if _due(run.step, config.checkpoint_every, config.steps):
            _save(run)

    ms_per_step = 1e3 * float(np.median(step_times)) if step_times else float("nan")
    if out_dir is not None and plots:
        _draw_plots(run, out_dir, log)
    return TrainResult(config, run.model, run.dataset, run.history, final, run.step, ms_per_step, out_dir)


def _draw_plots(run: _Run, out_dir: Path, log: Callable[[str], None]) -> None:
    """``learning_curves.png``, and ``prediction_map.png`` for the 2D tasks, into ``out_dir``."""
    try:
        from . import plots
    except ImportError as error:  # matplotlib missing: training results stand without pictures
        log(f"no plots: {error}")
        return
    task, config, heldout = run.task, run.config, run.heldout
    try:
        plots.learning_curves(
            run.history, out_dir / "learning_curves.png", task=task, title=f"ace train {config.task}"
        )
        if task.kind in ("bag", "count"):
            count = min(4, config.eval_size)
            images = np.asarray(heldout.images)[:count]
            logits = forward_in_chunks(run.model, images, xp=run.xp, device=run.device)
            plots.prediction_maps(
                images,
                to_host(logits),
                out_dir / "prediction_map.png",
                class_names=class_names(run.dataset),
                truths=label_lists(task, heldout)[:count],
                counts=task.kind == "count",
            )
    except ImportError as error:
        log(f"no plots: {error}")
