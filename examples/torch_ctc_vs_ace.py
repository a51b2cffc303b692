"""Replace CTC with ACE in a torch CRNN: the one-line swap, and CTC + 0.1·ACE.

The task (:mod:`ace_core.reference.toy_sequences`): read the glyphs of a noisy
strip, one column per step. The model is a small CRNN: two 1D convolutions
over the columns, a bidirectional LSTM and a linear layer to the classes. It
is trained three times from the same initialisation and the same batches,
changing only the criterion:

- ``ctc``: ``torch.nn.CTCLoss(zero_infinity=True)``
- ``ace``: ``ACELoss()``, the one-line swap
- ``ctc+ace``: ``CTCWithACELoss(ace_weight=0.1)``

Every ``--eval-every`` steps it reads held-out strips greedily (repeats
collapsed, blanks dropped) and records the sequence accuracy. Run::

    python examples/torch_ctc_vs_ace.py --steps 600 --json curves.json --plot curves.png

``--plot`` needs matplotlib (the ``reference`` extra).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

import ace_core
from ace_core.integrations.torch import ACELoss, CTCWithACELoss
from ace_core.reference.toy_sequences import glyph_strips

CLASSES, STEPS, HEIGHT, MAX_LENGTH = 6, 32, 8, 4
CRITERIA = ("ctc", "ace", "ctc+ace")


class CRNN(nn.Module):
    """Columns ``(B, T, height)`` → per-step class scores ``(T, B, C)`` (CTC's layout)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(HEIGHT, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.rnn = nn.LSTM(hidden, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        columns = self.features(images.transpose(1, 2))  # (B, hidden, T)
        sequence, _ = self.rnn(columns.permute(2, 0, 1))  # (T, B, 2 hidden)
        return self.head(sequence).log_softmax(-1)


def _criterion(name: str) -> nn.Module:
    if name == "ctc":
        return nn.CTCLoss(blank=0, zero_infinity=True)
    if name == "ace":
        return ACELoss(blank=0)
    return CTCWithACELoss(blank=0, ace_weight=0.1)


def _batch(size: int, seed: int) -> tuple[torch.Tensor, ...]:
    data = glyph_strips(size, classes=CLASSES, steps=STEPS, height=HEIGHT, max_length=MAX_LENGTH, seed=seed)
    return tuple(
        torch.from_numpy(a) for a in (data.images, data.labels, data.input_lengths, data.label_lengths)
    )


def sequence_accuracy(model: nn.Module, test: tuple[torch.Tensor, ...]) -> float:
    images, labels, input_lengths, label_lengths = test
    with torch.no_grad():
        scores = model(images).transpose(0, 1)  # (B, T, C)
    predictions = ace_core.decode_greedy(scores, input_lengths=input_lengths)
    references = [row[:n].tolist() for row, n in zip(labels, label_lengths, strict=True)]
    return ace_core.sequence_accuracy(predictions, references)


def train(name: str, steps: int, batch: int, eval_every: int, seed: int) -> dict[str, list[float]]:
    """Train one criterion; returns the curves (step, loss, accuracy)."""
    torch.manual_seed(seed)
    model = CRNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = _criterion(name)
    test = _batch(500, seed=10_000 + seed)
    curve: dict[str, list[float]] = {"step": [], "loss": [], "accuracy": []}
    for step in range(1, steps + 1):
        images, labels, input_lengths, label_lengths = _batch(batch, seed=seed * 1_000_003 + step)
        loss = criterion(model(images), labels, input_lengths, label_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            curve["step"].append(step)
            curve["loss"].append(loss.item())
            curve["accuracy"].append(sequence_accuracy(model, test))
    return curve


def plot(curves: dict[str, dict[str, list[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=120)
    for name, curve in curves.items():
        axis.plot(curve["step"], curve["accuracy"], label=name, marker="o", markersize=2)
    axis.set_xlabel("training step")
    axis.set_ylabel("held-out sequence accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(title="criterion")
    axis.set_title("CRNN on glyph strips: CTC vs ACE")
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--criteria", default=",".join(CRITERIA), help="comma-separated subset of ctc,ace,ctc+ace"
    )
    parser.add_argument("--json", help="write the curves here")
    parser.add_argument("--plot", help="draw the accuracy curves into this PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small model: threads cost more than they give
    curves = {}
    for name in args.criteria.split(","):
        if name not in CRITERIA:
            parser.error(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
        start = time.perf_counter()
        curves[name] = train(name, args.steps, args.batch, args.eval_every, args.seed)
        print(
            f"{name:8s} accuracy {curves[name]['accuracy'][-1]:.3f} after {args.steps} steps "
            f"(loss {curves[name]['loss'][-1]:.4f}, {time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(curves, handle)
    if args.plot:
        plot(curves, args.plot)
    return curves


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
