"""The training commands of ``ace``: ``ace train``, ``ace predict`` and ``ace reproduce``.

:func:`add_training_commands` defines their arguments on the ``ace`` parser
(the defaults come from :mod:`ace_core.reference.defaults`); :func:`run`
carries one out and prints its result. ``ace_core.cli`` only parses and
dispatches here.

Examples
--------
::

    ace train crnn                              # CRNN on rendered text lines, NumPy on the CPU
    ace train fcn --steps 500 --out runs/fcn --resume
    ace predict runs/crnn line.png              # count-ordered reading; --readout greedy
    ace reproduce plateau --out figures
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

from ace_core._argtypes import positive_float, positive_int

from .array_library import BACKEND_CHOICES
from .defaults import ADADELTA_LR, BLANK_BIAS, SEQUENCE_READOUT, TRAIN_DEFAULTS, describe
from .experiments import REPRODUCTIONS
from .readout import SEQUENCE_READOUTS
from .tasks import TASKS

__all__ = [
    "TRAINING_COMMANDS",
    "add_training_commands",
    "run",
    "blank_bias",
]

#: The subcommands this module defines.
TRAINING_COMMANDS = ("train", "predict", "reproduce")


def blank_bias(text: str) -> str | float:
    """An ``argparse`` type: ``"prior"`` or a number (the blank's initial output bias)."""
    if text == "prior":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'prior' or a number, got {text!r}") from None


def add_training_commands(commands: Any) -> None:
    """Add ``ace train``, ``ace predict`` and ``ace reproduce`` to the subparsers ``commands``."""
    _add_train(commands)
    _add_predict(commands)
    _add_reproduce(commands)


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train a CRNN (1D) or FCN (2D) of the training reference with ACE",
        description="Train a model of the training reference with the ACE loss on seeded synthetic "
        "data: "
        + "; ".join(f"{name}: {task.summary}" for name, task in TASKS.items())
        + ". Progress (loss minus its entropy floor, images/s) goes to stderr, the held-out "
        "result to stdout. OUT holds checkpoint.npz, config.json, metrics.json and PNG plots.",
    )
    train.add_argument("task", choices=list(TASKS), help="what to train")
    train.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="numpy (CPU) or cupy (GPU); default: cupy when a GPU is usable, else numpy",
    )
    train.add_argument(
        "--steps", type=positive_int, default=None, help=f"optimiser steps (default: {describe('steps')})"
    )
    train.add_argument(
        "--batch", type=positive_int, default=None, help=f"images per step (default: {describe('batch')})"
    )
    train.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"peak learning rate (default: {describe('lr')}; with adadelta its multiplier, {ADADELTA_LR:g})",
    )
    train.add_argument(
        "--optimizer",
        choices=("adam", "adadelta"),
        default=TRAIN_DEFAULTS["optimizer"],
        help="default: %(default)s",
    )
    train.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=None,
        help=f"after the warmup (default: {describe('schedule')})",
    )
    train.add_argument(
        "--warmup", type=int, default=None, help=f"linear warmup steps (default: {describe('warmup')})"
    )
    train.add_argument(
        "--seed", type=int, default=TRAIN_DEFAULTS["seed"], help="weights and data (default: %(default)s)"
    )
    train.add_argument("--out", default=None, help="run directory (default: runs/TASK)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.npz exactly where it stopped"
    )
    train.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help=f"evaluate on held-out data and checkpoint every N steps (default: {describe('eval_every')})",
    )
    train.add_argument(
        "--eval-size",
        type=positive_int,
        default=TRAIN_DEFAULTS["eval_size"],
        help="held-out images (default: %(default)s)",
    )
    train.add_argument(
        "--head", choices=("bilstm", "linear"), default=None, help="CRNN head (default: bilstm)"
    )
    train.add_argument(
        "--blank-bias",
        type=blank_bias,
        default=None,
        help=f"initial output bias of the blank: '{BLANK_BIAS}' (the labels' average blank share, the "
        "default) or a number (0 gives the plateau of the usual initialisation)",
    )
    train.add_argument(
        "--loss",
        choices=("ace", "regression"),
        default=TRAIN_DEFAULTS["loss"],
        help="cross-entropy or regression ACE (default: %(default)s)",
    )
    train.add_argument(
        "--threads", type=positive_int, default=None, help="limit BLAS/OpenMP threads (default: no limit)"
    )
    train.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    train.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser(
        "predict",
        help="read image files with a trained model: the text, or the objects and counts",
        description="Load the checkpoint in RUN (written by ace train) and print, for each image, "
        "the decoded string (crnn, digits), the recognised multiset (fcn) or the counts per class "
        "(count). Images are read with Pillow, turned to grayscale and resized to the model's "
        "input height (the width keeps the aspect ratio for text lines).",
    )
    predict.add_argument("run", help="run directory of ace train (or its checkpoint.npz)")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    predict.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="the models see light ink on a dark ground; auto inverts images that are mostly light "
        "(default: %(default)s)",
    )
    predict.add_argument(
        "--readout",
        choices=SEQUENCE_READOUTS,
        default=SEQUENCE_READOUT,
        help="how the text tasks (crnn, digits) are read: ordered (each class as often as its rounded "
        "mass, in the order its mass accrues) or greedy (best class per column, repeats collapsed); "
        "the 2D tasks have one readout (default: %(default)s)",
    )
    predict.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="default: as for train")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")


def _add_reproduce(commands: Any) -> None:
    reproduce = commands.add_parser(
        "reproduce",
        help="run a miniature of one of the paper's experiments (figures + JSON)",
        description="Run a miniature reproduction and write its figures (PNG) and numbers "
        "(NAME.json) into OUT: "
        + "; ".join(f"{name}: {r.summary}" for name, r in REPRODUCTIONS.items())
        + ". Each takes a few minutes on a 2-core CPU by default; --steps scales it.",
    )
    reproduce.add_argument("name", choices=[*REPRODUCTIONS, "all"], help="which experiment")
    reproduce.add_argument("--out", default="reproductions", help="output directory (default: %(default)s)")
    reproduce.add_argument(
        "--steps", type=positive_int, default=None, help="training steps per run (default: per experiment)"
    )
    reproduce.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"], help="default: %(default)s")
    reproduce.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="default: as for train")
    reproduce.add_argument(
        "--threads", type=positive_int, default=None, help="limit BLAS/OpenMP threads (default: no limit)"
    )
    reproduce.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Carry out the training command ``args.command`` (one of :data:`TRAINING_COMMANDS`).

    Returns
    -------
    int
        The exit code: 0 on success, 1 when training diverged, 2 for a usage
        error, 130 when ``ace train`` was interrupted (its last checkpoint stays).
    """
    handlers = {"train": _train, "predict": _predict, "reproduce": _reproduce}
    return handlers[args.command](args, out, err)


def _progress(quiet: bool, err: TextIO) -> Callable[[str], None]:
    def log(line: str) -> None:
        if not quiet:
            print(line, file=err, flush=True)

    return log


def _train(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .evaluation import format_metrics
    from .tasks import get_task
    from .train import TrainConfig, TrainingDiverged, train

    if args.head is not None and get_task(args.task).model != "CRNN":
        print(f"ace train: error: --head is an option of the CRNN tasks, not of {args.task}", file=err)
        return 2
    model: dict[str, Any] = {"head": args.head} if args.head is not None else {}
    if args.blank_bias is not None:
        model["init_blank_bias"] = args.blank_bias
    config = TrainConfig(
        task=args.task,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup=args.warmup,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        loss=args.loss,
        backend=args.backend,
        model=model,
    )
    run_dir = args.out if args.out is not None else f"runs/{args.task}"
    try:
        result = train(
            config,
            run_dir,
            resume=args.resume,
            threads=args.threads,
            log=_progress(args.quiet, err),
            plots=not args.no_plots,
        )
    except TrainingDiverged as error:
        print(f"ace train: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print(
            f"ace train: interrupted; {run_dir} keeps the last checkpoint, continue with "
            f"`ace train {args.task} --out {run_dir} --resume`",
            file=err,
        )
        return 130
    except (ValueError, FileNotFoundError) as error:
        print(f"ace train: error: {error}", file=err)
        return 2
    final = result.final
    summary = {
        "task": result.config.task,
        "steps": result.steps,
        "ms_per_step": result.ms_per_step,
        "images_per_second": 1e3 * result.config.batch / result.ms_per_step if result.ms_per_step else None,
        "backend": result.config.backend,
        "out": str(result.out),
        **final,
    }
    if args.json:
        json.dump(summary, out, indent=2)
        out.write("\n")
        return 0
    print(
        f"{result.config.task}: {format_metrics(get_task(result.config.task), final)} "
        f"on {result.config.eval_size} held-out images after {result.steps} steps "
        f"({result.ms_per_step:.0f} ms/step on {result.config.backend}); run saved in {result.out}",
        file=out,
    )
    return 0


def _predict(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .predict import predict_files

    try:
        results = predict_files(
            args.run, args.images, invert=args.invert, backend=args.backend, sequence_readout=args.readout
        )
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"ace predict: error: {error}", file=err)
        return 2
    for path, value in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": path, "prediction": value}), file=out)
        elif isinstance(value, dict):
            print(f"{path}: " + " ".join(f"{name}={count}" for name, count in value.items()), file=out)
        elif isinstance(value, list):
            print(f"{path}: {{{', '.join(value)}}}", file=out)
        else:
            print(f"{path}: {value}", file=out)
    return 0


def _reproduce(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .experiments import reproduce

    names = list(REPRODUCTIONS) if args.name == "all" else [args.name]
    for name in names:
        try:
            summary = reproduce(
                name,
                args.out,
                steps=args.steps,
                seed=args.seed,
                backend=args.backend,
                threads=args.threads,
                log=_progress(args.quiet, err),
            )
        except ValueError as error:
            print(f"ace reproduce: error: {error}", file=err)
            return 2
        print(f"{name}: {summary['headline']}", file=out)
        print(f"  figures and numbers: {', '.join(summary['files'])}", file=out)
    return 0
