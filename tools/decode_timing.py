"""Time :func:`ace_core.decode_ordered` against :func:`ace_core.decode_greedy` on the same scores.

The scores imitate a trained recogniser: Gaussian noise on every class, a
dominant blank on most steps, and 5-20 characters per sample, each over 1-3
steps. One process, ``--repeats`` alternating calls of each decoder after one
warm-up call each; it prints the medians and their ratio::

    python tools/decode_timing.py --batch 500 --steps 144 --classes 7357
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ace_core


def trained_like_scores(batch: int, steps: int, classes: int, seed: int = 0) -> np.ndarray:
    """float32 logits ``(B, T, C)``: blank-dominated steps and a few characters per sample."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((batch, steps, classes), dtype=np.float32)
    scores[:, :, 0] += 12.0
    for b in range(batch):
        starts = np.sort(rng.choice(steps // 3, size=int(rng.integers(5, 21)), replace=False)) * 3
        for start in starts:
            width = int(rng.integers(1, 4))
            scores[b, start : start + width, 0] -= 12.0
            scores[b, start : start + width, int(rng.integers(1, classes))] += 11.0
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=144)
    parser.add_argument("--classes", type=int, default=7357)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--library", choices=("numpy", "torch"), default="numpy")
    args = parser.parse_args(argv)
    scores = trained_like_scores(args.batch, args.steps, args.classes)
    if args.library == "torch":
        import torch

        scores = torch.from_numpy(scores)
    decoders = {"decode_greedy": ace_core.decode_greedy, "decode_ordered": ace_core.decode_ordered}
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for decode in decoders.values():
        decode(scores)  # warm-up
    for _ in range(args.repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            decode(scores)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    read = [len(labels) for labels in ace_core.decode_ordered(scores)[:3]]
    print(f"scores {tuple(scores.shape)} float32 on {args.library}, {args.repeats} repeats (medians):")
    for name, value in medians.items():
        print(f"  {name:15s} {1e3 * value:8.1f} ms")
    print(f"  ratio ordered / greedy: {medians['decode_ordered'] / medians['decode_greedy']:.2f}")
    print(f"  labels read in the first samples: {read}")


if __name__ == "__main__":
    main()
