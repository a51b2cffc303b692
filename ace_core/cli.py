"""The ``ace`` command: ``ace info``, ``ace bench``, ``ace train``, ``ace predict``, ``ace reproduce``.

``ace info`` lists the versions and, for each backend of
:mod:`ace_core.backend_table` (NumPy, array_api_strict, torch CPU/CUDA, JAX
CPU/GPU, CuPy), whether it can run here and on which devices. ``ace bench``
runs the benchmark protocol of SPEC §5 (:mod:`ace_core.bench`): ACE
forward+backward against torch's CTC and against a device copy (the memory
floor) on every usable backend. ``ace train`` trains a model of the training
reference (:mod:`ace_core.reference.train`) with ACE, ``ace predict`` reads an
image with a trained model, ``ace reproduce`` runs a miniature of one of the
paper's experiments (:mod:`ace_core.reference.experiments`). This module only
parses and prints.

Heavy imports (torch, JAX, CuPy) happen inside the subcommands, and only for
installed libraries. ``python -m ace_core.cli``
works as ``ace``.

Examples
--------
::

    ace info
    ace bench                                   # numpy, torch, jax, ... at C = 37 and 7357
    ace bench --backend numpy,torch --classes 37 --repeat 15
    ace bench --backend torch:cuda --dtype bfloat16 --json > bench.json
    ace train crnn                              # CRNN on rendered text lines, NumPy on the CPU
    ace train fcn --steps 500 --out runs/fcn --resume
    ace predict runs/crnn line.png
    ace reproduce plateau --out figures
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["main", "build_parser"]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ace`` (exposed for documentation tools).

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ace",
        description="Aggregation Cross-Entropy (ACE) loss: environment report, benchmarks, and the "
        "CRNN/FCN training reference.",
    )
    parser.add_argument("--version", action="version", version=f"ace_core {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info",
        help="versions, and which backends (array libraries and devices) are usable",
        description="Print ace_core's version, Python's, the array libraries' and, for each "
        "backend, whether it is usable, its version and its devices.",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    bench = commands.add_parser(
        "bench",
        help="ACE vs torch CTC vs the memory floor (SPEC §5 protocol)",
        description="Median forward+backward time of ace_loss_and_grad, of torch's CTC "
        "(log_softmax + ctc_loss + backward, on the same device) and of a device copy of the "
        "scores, for each backend and number of classes. The fraction of the memory floor is "
        "1.5 x copy time / ACE time (ACE must move 3 passes of B*T*C*itemsize, a copy moves 2). "
        "Progress goes to stderr.",
    )
    from .backend_table import BACKENDS
    from .bench import (
        DEFAULT_BATCH,
        DEFAULT_CLASSES,
        DEFAULT_DTYPE,
        DEFAULT_MIN_TIME_S,
        DEFAULT_REPEAT,
        DEFAULT_STEPS,
        DTYPES,
    )

    bench.add_argument(
        "--backend",
        "--backends",
        dest="backend",
        default=None,
        help=f"comma-separated backends: {', '.join(b.name for b in BACKENDS)} (torch and jax are "
        "their CPU devices; default: every usable one but array_api_strict)",
    )
    bench.add_argument(
        "--classes",
        type=_int_list,
        default=list(DEFAULT_CLASSES),
        help="comma-separated numbers of classes C, blank included "
        f"(default: {','.join(map(str, DEFAULT_CLASSES))})",
    )
    bench.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, help="B (default: %(default)s)")
    bench.add_argument(
        "--steps",
        type=_positive_int,
        default=DEFAULT_STEPS,
        help="T, prediction steps (default: %(default)s)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive_int,
        default=DEFAULT_REPEAT,
        help="at least this many timed calls per measurement; the median call is reported "
        "(default: %(default)s)",
    )
    bench.add_argument(
        "--dtype",
        choices=DTYPES,
        default=DEFAULT_DTYPE,
        help="scores dtype; float16/bfloat16 on GPU backends only (default: %(default)s)",
    )
    bench.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic batch (default: %(default)s)"
    )
    bench.add_argument(
        "--min-time-ms",
        type=float,
        default=DEFAULT_MIN_TIME_S * 1e3,
        help="fast calls are timed until the timed calls add up to this many milliseconds "
        f"(default: {DEFAULT_MIN_TIME_S * 1e3:g})",
    )
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="set torch's intra-op threads for the run (default: torch's own choice, reported)",
    )
    bench.add_argument(
        "--thp",
        action="store_true",
        help="let torch use transparent huge pages for its CPU allocations "
        "(sets THP_MEM_ALLOC_ENABLE=1 before importing torch; reported in the header)",
    )
    bench.add_argument("--no-jit", action="store_true", help="run ACE eagerly on JAX (default: jax.jit)")
    bench.add_argument(
        "--json", action="store_true", help="print {'header': {...}, 'records': [...]} as JSON to stdout"
    )
    bench.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    _add_training_commands(commands)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _blank_bias(text: str) -> str | float:
    if text == "prior":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'prior' or a number, got {text!r}") from None


def _add_training_commands(commands: Any) -> None:
    """``ace train``, ``ace predict`` and ``ace reproduce`` (the training reference)."""
    # Both modules import only NumPy and ace_core; the models, matplotlib and
    # Pillow are imported when a command runs.
    from ace_core.reference.experiments import REPRODUCTIONS
    from ace_core.reference.tasks import TASKS

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
        choices=("numpy", "cupy"),
        default=None,
        help="numpy (CPU) or cupy (GPU); default: cupy when a GPU is usable, else numpy",
    )
    train.add_argument(
        "--steps", type=_positive_int, default=None, help="optimiser steps (default: per task)"
    )
    train.add_argument("--batch", type=_positive_int, default=None, help="images per step (default: 32)")
    train.add_argument(
        "--lr", type=_positive_float, default=None, help="peak learning rate (default: per task)"
    )
    train.add_argument(
        "--optimizer", choices=("adam", "adadelta"), default="adam", help="default: %(default)s"
    )
    train.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=None,
        help="after the warmup (default: per task)",
    )
    train.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: per task)")
    train.add_argument("--seed", type=int, default=0, help="weights and data (default: %(default)s)")
    train.add_argument("--out", default=None, help="run directory (default: runs/TASK)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.npz exactly where it stopped"
    )
    train.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="evaluate on held-out data and checkpoint every N steps (default: per task)",
    )
    train.add_argument("--eval-size", type=_positive_int, default=None, help="held-out images (default: 500)")
    train.add_argument(
        "--head", choices=("bilstm", "linear"), default=None, help="CRNN head (default: per task)"
    )
    train.add_argument(
        "--blank-bias",
        type=_blank_bias,
        default=None,
        help="initial output bias of the blank: 'prior' (the labels' average blank share, the default) "
        "or a number (0 gives the plateau of the usual initialisation)",
    )
    train.add_argument(
        "--loss", choices=("ace", "regression"), default="ace", help="cross-entropy or regression ACE"
    )
    train.add_argument(
        "--threads", type=_positive_int, default=None, help="limit BLAS/OpenMP threads (default: no limit)"
    )
    train.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    train.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")

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
    predict.add_argument("--backend", choices=("numpy", "cupy"), default=None, help="default: as for train")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")

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
        "--steps", type=_positive_int, default=None, help="training steps per run (default: per experiment)"
    )
    reproduce.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    reproduce.add_argument("--backend", choices=("numpy", "cupy"), default=None, help="default: as for train")
    reproduce.add_argument(
        "--threads", type=_positive_int, default=None, help="limit BLAS/OpenMP threads (default: no limit)"
    )
    reproduce.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


# --------------------------------------------------------------------------- info


def _info(args: argparse.Namespace, out: TextIO) -> int:
    from . import __version__
    from .backend_table import BACKENDS, library_version

    backends = [b.info() for b in BACKENDS]
    report: dict[str, Any] = {
        "ace_core": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "executable": sys.executable,
        "platform": platform.platform(),
        "libraries": {
            name.replace("_", "-"): library_version(name)
            for name in ("numpy", "array_api_compat", "array_api_extra")
        },
        "backends": backends,
    }
    if args.json:
        json.dump(report, out, indent=2)
        out.write("\n")
        return 0
    print(f"ace_core   {report['ace_core']}", file=out)
    print(f"Python     {report['python']} at {report['executable']}", file=out)
    print(f"platform   {report['platform']}", file=out)
    for name, version in report["libraries"].items():
        print(f"{name:<17}  {version or 'not installed'}", file=out)
    print("", file=out)
    rows = [("backend", "usable", "version", "devices / reason")]
    for b in backends:
        where = ", ".join(b["devices"]) if b["usable"] else (b["reason"] or "")
        if "num_threads" in b["details"]:
            where += f" ({b['details']['num_threads']} threads)"
        rows.append((b["name"], "yes" if b["usable"] else "no", b["version"] or "-", where))
    _print_table(rows, out, align="llll")
    return 0


# --------------------------------------------------------------------------- bench


def _fmt_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value <= 0:
        return f"{value:.3f}"
    # three significant digits below 1 ms: 0.512, 0.0421, 0.00317
    return f"{value:.{max(3, 2 - math.floor(math.log10(value)))}f}"


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _fmt_percent(fraction: float | None) -> str:
    if fraction is None or math.isnan(fraction):
        return "-"
    return f"{100 * fraction:.1f} %"


def _print_table(rows: list[tuple[str, ...]], out: TextIO, align: str) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ]
        print("  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _bench_table(records: Sequence[Any], header: dict[str, Any], out: TextIO) -> None:
    cfg = header["config"]
    libs = header["libraries"]
    used_libs = _used_libraries(records)
    used = ", ".join(f"{k} {v}" for k, v in libs.items() if v is not None and k in used_libs)
    run_threads = [r.torch_threads for r in records if r.torch_threads is not None]
    threads = run_threads[0] if run_threads else header["threads"].get("torch_num_threads")
    thp_env = header["environment"].get("THP_MEM_ALLOC_ENABLE")
    thp_env = f" (THP_MEM_ALLOC_ENABLE={thp_env})" if thp_env is not None else ""
    print(f"ace_core {header['ace_core']}, Python {header['python']}; {used}", file=out)
    print(
        f"{header['cpu']}, {header['cpu_count']} CPUs ({header['cpu_affinity']} usable), "
        f"THP {header['transparent_hugepages']}{thp_env}, "
        f"torch threads {threads if threads is not None else '-'}",
        file=out,
    )
    print(
        f"B={cfg['batch']} T={cfg['steps']} seed={cfg['seed']}; per-call wall clock, median of "
        f">= {cfg['repeat']} calls; CTC = torch log_softmax + ctc_loss + backward (mean); "
        "floor = 1.5 x copy ms (3 passes of B*T*C*itemsize); peak/grad = peak memory of one call "
        "above its inputs over the gradient's size (target: 1 + O(B(T+C))/BTC)",
        file=out,
    )
    print("", file=out)
    rows = [
        (
            "backend",
            "device",
            "C",
            "dtype",
            "ACE ms",
            "CTC ms",
            "ACE/CTC",
            "copy ms",
            "floor",
            "ACE GB/s",
            "peak/grad",
        )
    ]
    errors = []
    for r in records:
        if r.error is not None:
            errors.append(r)
            rows.append((r.backend, r.device, str(r.classes), r.dtype, "error", "", "", "", "", "", ""))
            continue
        backend = r.backend + (" (jit)" if r.jit else " (eager)" if r.jit is False else "")
        rows.append(
            (
                backend,
                r.device,
                str(r.classes),
                r.dtype,
                _fmt_ms(r.ace_ms),
                _fmt_ms(r.ctc_ms),
                _fmt(r.ace_over_ctc, ".3f"),
                _fmt_ms(r.copy_ms),
                _fmt_percent(r.floor_fraction),
                _fmt(r.ace_gbps, ".2f"),
                _fmt(None if r.peak_bytes is None else r.peak_bytes / r.grad_bytes, ".2f"),
            )
        )
    _print_table(rows, out, align="llrlrrrrrrr")
    for r in records:
        for note in r.notes:
            print(f"note: {r.backend} C={r.classes}: {note}", file=out)
    if (
        "torch" in used_libs
        and header["transparent_hugepages"] == "madvise"
        and "THP_MEM_ALLOC_ENABLE" not in header["environment"]
    ):
        print(
            "note: THP is 'madvise' and THP_MEM_ALLOC_ENABLE is unset, so torch's large CPU "
            "allocations are not huge-page backed (page faults are part of its times; see --thp)",
            file=out,
        )
    for r in errors:
        print(f"error: {r.backend} C={r.classes}: {r.error}", file=out)


def _used_libraries(records: Sequence[Any]) -> set[str]:
    from .backend_table import backend

    used = {"numpy"}
    for r in records:
        used.add(backend(r.backend).library)
        if r.ctc_device is not None:
            used.add("torch")
    return used


def _bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._machine import environment_header, request_torch_thp
    from .bench import BenchError, run_protocol

    if args.thp and not request_torch_thp():
        print("ace bench: warning: torch is already imported, --thp has no effect", file=err)

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=err, flush=True)

    config = {
        "classes": args.classes,
        "batch": args.batch,
        "steps": args.steps,
        "dtype": args.dtype,
        "repeat": args.repeat,
        "seed": args.seed,
        "jit": not args.no_jit,
        "min_time_s": args.min_time_ms / 1e3,
        "threads": args.threads,
    }
    try:
        records = run_protocol(args.backend, progress=progress, **config)
    except BenchError as error:
        print(f"ace bench: error: {error}", file=err)
        return 2
    header = environment_header(backends=[r.backend for r in records], **config)
    if args.json:
        json.dump({"header": header, "records": [r.as_dict() for r in records]}, out, indent=2)
        out.write("\n")
    else:
        _bench_table(records, header, out)
    return 1 if any(r.error is not None for r in records) else 0


# --------------------------------------------------------------------------- train, predict, reproduce


def _progress(quiet: bool, err: TextIO) -> Any:
    def log(line: str) -> None:
        if not quiet:
            print(line, file=err, flush=True)

    return log


def _train(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ace_core.reference.tasks import get_task
    from ace_core.reference.train import TrainConfig, TrainingDiverged, train

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
        eval_size=args.eval_size if args.eval_size is not None else 500,
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
    from ace_core.reference.train import format_metrics

    print(
        f"{result.config.task}: {format_metrics(get_task(result.config.task), final)} "
        f"on {result.config.eval_size} held-out images after {result.steps} steps "
        f"({result.ms_per_step:.0f} ms/step on {result.config.backend}); run saved in {result.out}",
        file=out,
    )
    return 0


def _predict(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ace_core.reference.predict import predict_files

    try:
        results = predict_files(args.run, args.images, invert=args.invert, backend=args.backend)
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
    from ace_core.reference.experiments import REPRODUCTIONS, reproduce

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


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ace`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The exit code: 0 on success (and for ``ace`` alone, which prints the
        help), 1 when a benchmark case failed, 2 for a usage error, 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "info":
            return _info(args, out)
        if args.command == "bench":
            return _bench(args, out, err)
        if args.command == "train":
            return _train(args, out, err)
        if args.command == "predict":
            return _predict(args, out, err)
        if args.command == "reproduce":
            return _reproduce(args, out, err)
        parser.print_help(out)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:  # `ace bench | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
