"""Replace CTC with ACE in a torch CRNN: the one-line swap, the recipe, and CTC + 0.1·ACE.

Three 1D tasks (``--task``):

- ``glyphs``: noisy glyph strips (:mod:`ace_core.reference.toy_sequences`),
  one column per step; a small CRNN (two 1D convolutions over the columns, a
  bidirectional LSTM, a linear layer), Adam at 3·10⁻³;
- ``text`` and ``digits``: the text lines and digit strings of ``ace train
  crnn`` and ``ace train digits`` (same generators, same held-out sets), read by
  a torch twin of the reference CRNN (three conv/batch-norm/pool blocks, a
  BiLSTM, a linear layer), Adam at 2·10⁻³ with 100 warm-up steps and a cosine
  decay, as in the reference.

Each criterion trains from the same initialisation and the same batches:

- ``ctc``: ``torch.nn.CTCLoss(zero_infinity=True)``
- ``ace``: ``ACELoss()``, the one-line swap, nothing else changed
- ``ace+recipe``: ``ACELoss()`` with the blank's output bias started at the
  labels' prior (:func:`ace_core.blank_prior_bias`,
  :func:`ace_core.integrations.torch.init_blank_bias_`) and read with
  :func:`ace_core.decode_ordered`
- ``ctc+ace``: ``CTCWithACELoss(ace_weight=0.1)``

Every ``--eval-every`` steps it reads the held-out set with both readouts,
greedy (:func:`ace_core.decode_greedy`: repeats collapsed, blanks dropped)
and count-ordered (:func:`ace_core.decode_ordered`), and records the
sequence accuracy of each. ``accuracy`` is the criterion's own readout:
ordered for ``ace+recipe``, greedy for the others. Run::

    python examples/torch_ctc_vs_ace.py --task glyphs --steps 2000 --json curves.json --plot curves.png

``--plot`` needs matplotlib (the ``reference`` extra); ``text`` and ``digits``
need the reference's data (Pillow, scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import ace_core
from ace_core.integrations.torch import ACELoss, CTCWithACELoss, init_blank_bias_

CRITERIA = ("ctc", "ace", "ace+recipe", "ctc+ace")
TASKS = ("glyphs", "text", "digits")
#: the readout that defines each criterion's ``accuracy``
READOUT = {"ctc": "greedy", "ace": "greedy", "ace+recipe": "ordered", "ctc+ace": "greedy"}

GLYPH_CLASSES, GLYPH_STEPS, GLYPH_HEIGHT, GLYPH_MAX_LENGTH = 6, 32, 8, 4


@dataclass
class Batch:
    """Images, padded targets ``(B, S)`` and their lengths, as torch tensors on the CPU."""

    images: torch.Tensor
    targets: torch.Tensor
    input_lengths: torch.Tensor
    target_lengths: torch.Tensor


class GlyphCRNN(nn.Module):
    """Columns ``(B, T, height)`` → per-step log-probabilities ``(T, B, C)`` (CTC's layout)."""

    def __init__(self, classes: int = GLYPH_CLASSES, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(GLYPH_HEIGHT, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.rnn = nn.LSTM(hidden, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        columns = self.features(images.transpose(1, 2))  # (B, hidden, T)
        sequence, _ = self.rnn(columns.permute(2, 0, 1))  # (T, B, 2 hidden)
        return self.head(sequence).log_softmax(-1)


class LineCRNN(nn.Module):
    """The reference CRNN in torch: images ``(B, 1, H, W)`` → log-probabilities ``(W/4, B, C)``.

    Conv 3×3, batch norm, max-pool (2×2, 2×2, then 2×1) and ReLU per block;
    the columns of the last map go through a BiLSTM and a linear layer.
    """

    def __init__(
        self, classes: int, height: int = 32, channels: tuple[int, ...] = (16, 32, 48), hidden: int = 64
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for index, c_out in enumerate(channels, start=1):
            pool = (2, 2) if index <= 2 else (2, 1)
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(pool),
                nn.ReLU(),
            ]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.rnn = nn.LSTM(c_in * (height >> len(channels)), hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.features(images)  # (B, c, H', W/4)
        sequence, _ = self.rnn(maps.permute(3, 0, 1, 2).flatten(2))  # (T, B, 2 hidden)
        return self.head(sequence).log_softmax(-1)


@dataclass
class Task:
    """A task's model, batches (by seed), held-out set and optimiser settings."""

    name: str
    classes: int
    steps_per_sample: int  # T
    make_model: Callable[[], nn.Module]
    train_batches: Callable[[int, int], Callable[[], Batch]]  # (seed, batch size) -> next batch
    heldout: Batch
    label_lengths: np.ndarray  # a sample of training label lengths, for the prior
    lr: float
    warmup: int
    cosine: bool


def _glyph_batch(size: int, seed: int) -> Batch:
    from ace_core.reference.toy_sequences import glyph_strips

    data = glyph_strips(
        size,
        classes=GLYPH_CLASSES,
        steps=GLYPH_STEPS,
        height=GLYPH_HEIGHT,
        max_length=GLYPH_MAX_LENGTH,
        seed=seed,
    )
    return Batch(
        *(torch.from_numpy(a) for a in (data.images, data.labels, data.input_lengths, data.label_lengths))
    )


def _line_batch(data: Any, steps: int) -> Batch:
    lengths = torch.from_numpy(np.asarray(data.target_lengths))
    return Batch(
        torch.from_numpy(np.asarray(data.images)),
        torch.from_numpy(np.asarray(data.targets)),
        torch.full(lengths.shape, steps, dtype=torch.int64),
        lengths,
    )


def build_task(name: str, seed: int, eval_size: int) -> Task:
    """The task ``name``: glyph strips, or the reference's text lines / digit strings."""
    if name == "glyphs":

        def glyph_batches(run_seed: int, size: int) -> Callable[[], Batch]:
            step = iter(range(1, 1 << 62))
            return lambda: _glyph_batch(size, seed=run_seed * 1_000_003 + next(step))

        return Task(
            name=name,
            classes=GLYPH_CLASSES,
            steps_per_sample=GLYPH_STEPS,
            make_model=GlyphCRNN,
            train_batches=glyph_batches,
            heldout=_glyph_batch(eval_size, seed=10_000 + seed),
            label_lengths=_glyph_batch(256, seed=20_000 + seed).target_lengths.numpy(),
            lr=3e-3,
            warmup=0,
            cosine=False,
        )
    from ace_core.reference import tasks as reference_tasks

    reference = reference_tasks.get_task({"text": "crnn", "digits": "digits"}[name])
    dataset = reference_tasks.build_dataset(reference, seed=seed)
    steps = dataset.width // 4  # two 2× width poolings

    def line_batches(run_seed: int, size: int) -> Callable[[], Batch]:
        rng = np.random.default_rng(run_seed)
        return lambda: _line_batch(dataset.batch(rng, size), steps)

    return Task(
        name=name,
        classes=dataset.num_classes,
        steps_per_sample=steps,
        make_model=lambda: LineCRNN(dataset.num_classes, height=dataset.height),
        train_batches=line_batches,
        heldout=_line_batch(dataset.heldout(eval_size, seed=seed), steps),
        label_lengths=np.asarray(dataset.batch(np.random.default_rng([seed, 0x9A1]), 256).target_lengths),
        lr=2e-3,
        warmup=100,
        cosine=True,
    )


def _criterion(name: str) -> nn.Module:
    if name == "ctc":
        return nn.CTCLoss(blank=0, zero_infinity=True)
    if name in ("ace", "ace+recipe"):
        return ACELoss(blank=0)
    return CTCWithACELoss(blank=0, ace_weight=0.1)


def accuracies(model: nn.Module, test: Batch) -> dict[str, float]:
    """Held-out sequence accuracy of both readouts: ``{"greedy": ..., "ordered": ...}``."""
    model.eval()
    with torch.no_grad():
        scores = model(test.images).transpose(0, 1)  # (B, T, C)
    model.train()
    references = [row[:n].tolist() for row, n in zip(test.targets, test.target_lengths, strict=True)]
    greedy = ace_core.decode_greedy(scores, input_lengths=test.input_lengths)
    ordered = ace_core.decode_ordered(scores, input_lengths=test.input_lengths)
    return {
        "greedy": ace_core.sequence_accuracy(greedy, references),
        "ordered": ace_core.sequence_accuracy(ordered, references),
    }


def _schedule(task: Task, steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:  # step counts from 0
        if step < task.warmup:
            return (step + 1) / task.warmup
        if not task.cosine:
            return 1.0
        progress = (step - task.warmup) / max(1, steps - task.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def train(task: Task, name: str, steps: int, batch: int, eval_every: int, seed: int) -> dict[str, Any]:
    """Train one criterion; returns the curves (step, loss, greedy, ordered, accuracy)."""
    torch.manual_seed(seed)
    model = task.make_model()  # the same initial weights for every criterion
    if name == "ace+recipe":
        prior = ace_core.blank_prior_bias(
            target_lengths=task.label_lengths, input_lengths=task.steps_per_sample, num_classes=task.classes
        )
        init_blank_bias_(model.head, prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=task.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(task, steps))
    criterion = _criterion(name)
    next_batch = task.train_batches(seed, batch)
    curve: dict[str, Any] = {"readout": READOUT[name], "step": [], "loss": [], "greedy": [], "ordered": []}
    for step in range(1, steps + 1):
        data = next_batch()
        loss = criterion(model(data.images), data.targets, data.input_lengths, data.target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % eval_every == 0 or step == steps:
            scores = accuracies(model, task.heldout)
            curve["step"].append(step)
            curve["loss"].append(loss.item())
            curve["greedy"].append(scores["greedy"])
            curve["ordered"].append(scores["ordered"])
    curve["accuracy"] = curve[READOUT[name]]
    return curve


def first_step_at(curve: dict[str, Any], level: float = 0.5, readout: str = "accuracy") -> int | None:
    """The first evaluated step whose accuracy is at least ``level`` (None if never)."""
    return next((s for s, a in zip(curve["step"], curve[readout], strict=True) if a >= level), None)


def plot(curves: dict[str, dict[str, Any]], path: str, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for index, (name, curve) in enumerate(curves.items()):
        color = f"C{index}"
        axis.plot(curve["step"], curve["accuracy"], color=color, label=f"{name} ({curve['readout']})")
        if name.startswith("ace"):
            other = "ordered" if curve["readout"] == "greedy" else "greedy"
            axis.plot(curve["step"], curve[other], color=color, linestyle=":", label=f"{name} ({other})")
    axis.set_xlabel("training step")
    axis.set_ylabel("held-out sequence accuracy")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(title="criterion (readout)", fontsize=8)
    axis.set_title(
        {"glyphs": "glyph strips", "text": "text lines", "digits": "digit strings"}[task] + ": CTC vs ACE"
    )
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="glyphs")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--criteria", default=",".join(CRITERIA), help=f"comma-separated subset of {','.join(CRITERIA)}"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models: 1 is fastest)")
    parser.add_argument("--json", help="write the curves here")
    parser.add_argument("--plot", help="draw the accuracy curves into this PNG")
    args = parser.parse_args(argv)
    names = args.criteria.split(",")
    for name in names:
        if name not in CRITERIA:
            parser.error(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    torch.set_num_threads(args.threads)
    task = build_task(args.task, args.seed, args.eval_size)
    curves = {}
    for name in names:
        start = time.perf_counter()
        curve = curves[name] = train(task, name, args.steps, args.batch, args.eval_every, args.seed)
        first = {readout: first_step_at(curve, readout=readout) for readout in ("greedy", "ordered")}
        print(
            f"{args.task} {name:10s} after {args.steps} steps: greedy {curve['greedy'][-1]:.3f}  "
            f"ordered {curve['ordered'][-1]:.3f}  (first >= 50%: greedy {first['greedy']}, "
            f"ordered {first['ordered']}; loss {curve['loss'][-1]:.4f}, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if args.json:  # after every criterion, so that a long run leaves its finished parts
            with open(args.json, "w") as handle:
                json.dump({"task": args.task, "eval_size": args.eval_size, "curves": curves}, handle)
    if args.plot:
        plot(curves, args.plot, args.task)
    return curves


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
