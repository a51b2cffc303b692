"""The chart of docs/performance_tracking.rst: ACE vs torch CTC across the number of classes C.

Measure (a few minutes on a 2-core CPU; needs torch and JAX), then draw::

    python asv_bench/ace_vs_ctc_chart.py --run    # writes docs/_static/ace_vs_ctc.json, then the PNG
    python asv_bench/ace_vs_ctc_chart.py          # redraws docs/_static/ace_vs_ctc.png from the JSON

``--run`` runs ``ace bench --json`` (:func:`ace_core.bench.run_protocol`, the
benchmark protocol, whose callables the asv suite times too) on the numpy, torch
and jax CPU backends for C in {37, 500, 2000, 7357}, with the asv suite's
settings: the thread pools pinned as ``asv_bench/benchmarks/__init__.py`` pins
them (``ACE_ASV_THREADS``, default 1) and torch's huge pages on (``--thp``);
glibc's too (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` unless set), so that
XLA's CPU buffers get them.
Drawing needs matplotlib (the ``reference`` extra). The data table is printed
as reStructuredText.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC = HERE.parent / "docs" / "_static"
DATA = STATIC / "ace_vs_ctc.json"
CHART = STATIC / "ace_vs_ctc.png"
BACKENDS = ("numpy", "torch", "jax")
CLASSES = (37, 500, 2000, 7357)


def measure(path: Path) -> None:
    """Run ``ace bench --json`` with the asv suite's thread and huge-page settings into ``path``."""
    sys.path.insert(0, str(HERE))
    import benchmarks  # noqa: F401 - pins the thread pools in os.environ, as in every asv process

    command = [
        sys.executable,
        "-m",
        "ace_core.cli",
        "bench",
        "--backend",
        ",".join(BACKENDS),
        "--classes",
        ",".join(map(str, CLASSES)),
        "--threads",
        os.environ["OMP_NUM_THREADS"],
        "--thp",
        "--json",
    ]
    # glibc reads its tunables at start-up: the child's malloc, hence XLA's buffers, asks for huge pages.
    tunables = os.environ.get("GLIBC_TUNABLES") or "glibc.malloc.hugetlb=1"
    environment = dict(os.environ, GLIBC_TUNABLES=tunables)
    print(f"$ GLIBC_TUNABLES={environment['GLIBC_TUNABLES']}", " ".join(command[1:]), file=sys.stderr)
    result = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True, env=environment)
    if result.returncode != 0:
        raise SystemExit(f"ace bench failed with status {result.returncode}")
    path.write_text(result.stdout, encoding="utf-8")


def rows(report: dict) -> list[dict]:
    """The records that ran, sorted by C then backend order."""
    good = [r for r in report["records"] if r.get("error") is None]
    return sorted(good, key=lambda r: (r["classes"], BACKENDS.index(r["backend"])))


def table(report: dict) -> str:
    """The data as an RST list-table (times in ms, medians)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - C",
        "     - backend",
        "     - ACE fwd+bwd (ms)",
        "     - torch CTC fwd+bwd (ms)",
        "     - ACE/CTC",
        "     - fraction of memory floor",
    ]
    for r in rows(report):
        lines += [
            f"   * - {r['classes']}",
            f"     - {r['backend']}",
            f"     - {r['ace_ms']:.3g}",
            f"     - {r['ctc_ms']:.3g}",
            f"     - {r['ace_over_ctc']:.3f}",
            f"     - {r['floor_fraction']:.2f}",
        ]
    return "\n".join(lines)


def draw(report: dict, path: Path) -> None:
    """Two panels: times against C (log-log) and the ACE/CTC ratio against C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = rows(report)
    header = report["header"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100, layout="constrained")
    markers = {"numpy": "o", "torch": "s", "jax": "^"}
    for backend in BACKENDS:
        mine = [r for r in records if r["backend"] == backend]
        if not mine:
            continue
        cs = [r["classes"] for r in mine]
        left.plot(cs, [r["ace_ms"] for r in mine], marker=markers[backend], label=f"ACE, {backend}")
        right.plot(cs, [r["ace_over_ctc"] for r in mine], marker=markers[backend], label=backend)
    # CTC was timed in every case (torch on the CPU, same data): its median per C.
    by_c: dict[int, list[float]] = {}
    for r in records:
        by_c.setdefault(r["classes"], []).append(r["ctc_ms"])
    cs = sorted(by_c)
    left.plot(cs, [statistics.median(by_c[c]) for c in cs], "k--", marker="x", label="CTC, torch")
    left.set(xscale="log", yscale="log", xlabel="classes C", ylabel="forward + backward, ms (median)")
    left.set_title("ACE vs CTC, B = 64, T = 144, float32")
    left.legend(fontsize="small")
    right.set(xscale="log", yscale="log", xlabel="classes C", ylabel="ACE time / CTC time")
    right.set_title("ACE/CTC (measured in the same process)")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.legend(fontsize="small")
    for axis in (left, right):
        axis.set_xticks(cs, [str(c) for c in cs])
        axis.minorticks_off()
        axis.grid(True, which="major", alpha=0.3)
    threads = header.get("threads", {}).get("torch_num_threads")
    fig.suptitle(
        f"{header['cpu']}, {threads} thread(s), ace_core {header['ace_core']}, {header['time'][:10]}",
        fontsize="small",
    )
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="measure first (writes the JSON)")
    parser.add_argument("--data", type=Path, default=DATA, help="the ace bench --json file")
    parser.add_argument("--out", type=Path, default=CHART, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.run:
        measure(args.data)
    report = json.loads(args.data.read_text(encoding="utf-8"))
    draw(report, args.out)
    print(table(report))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
