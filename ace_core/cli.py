"""The ``ace`` command: ``ace info``, ``ace bench``, ``ace train``, ``ace predict``, ``ace reproduce``.

``ace info`` lists the versions and, for each backend of
:mod:`ace_core.bench.backend_table` (NumPy, array_api_strict, torch CPU/CUDA, JAX
CPU/GPU, CuPy), whether it can run here and on which devices. ``ace bench``
runs the benchmark protocol (:mod:`ace_core.bench`): ACE
forward+backward against torch's CTC and against a device copy (the memory
floor) on every usable backend. ``ace train`` trains a model of the training
reference (:mod:`ace_core.reference.train`) with ACE, ``ace predict`` reads an
image with a trained model, ``ace reproduce`` runs a miniature of one of the
paper's experiments (:mod:`ace_core.reference.experiments`); their arguments
and handlers live in :mod:`ace_core.reference.commands`. This module only
parses, prints and dispatches.

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
import sys
from collections.abc import Sequence
from typing import TextIO

from ._argtypes import int_list, positive_int

__all__ = ["main", "build_parser"]


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
        help="ACE vs torch CTC vs the memory floor (the benchmark protocol of the docs' contract page)",
        description="Median forward+backward time of ace_loss_and_grad, of torch's CTC "
        "(log_softmax + ctc_loss + backward, on the same device) and of a device copy of the "
        "scores, for each backend and number of classes. The fraction of the memory floor is "
        "1.5 x copy time / ACE time (ACE must move 3 passes of B*T*C*itemsize, a copy moves 2). "
        "Progress goes to stderr.",
    )
    from .bench import (
        DEFAULT_BATCH,
        DEFAULT_CLASSES,
        DEFAULT_DTYPE,
        DEFAULT_MIN_TIME_S,
        DEFAULT_REPEAT,
        DEFAULT_STEPS,
        DTYPES,
    )
    from .bench.backend_table import BACKENDS

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
        type=int_list,
        default=list(DEFAULT_CLASSES),
        help="comma-separated numbers of classes C, blank included "
        f"(default: {','.join(map(str, DEFAULT_CLASSES))})",
    )
    bench.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH, help="B (default: %(default)s)")
    bench.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        help="T, prediction steps (default: %(default)s)",
    )
    bench.add_argument(
        "--repeat",
        type=positive_int,
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
        type=positive_int,
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
    # The training reference imports only NumPy and ace_core here; its models, matplotlib and
    # Pillow are imported when a command runs.
    from ace_core.reference import commands as training_commands

    training_commands.add_training_commands(commands)
    return parser


# --------------------------------------------------------------------------- info


def _info(args: argparse.Namespace, out: TextIO) -> int:
    from .bench.report import info_report, print_info

    report = info_report()
    if args.json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        print_info(report, out)
    return 0


# --------------------------------------------------------------------------- bench


def _bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .bench import BenchError, run_protocol
    from .bench.machine import environment_header, request_torch_thp
    from .bench.report import print_bench_table

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
        print_bench_table(records, header, out)
    return 1 if any(r.error is not None for r in records) else 0


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
        from ace_core.reference import commands as training_commands  # imported by build_parser

        if args.command in training_commands.TRAINING_COMMANDS:
            return training_commands.run(args, out, err)
        parser.print_help(out)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except BrokenPipeError:  # `ace bench | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
