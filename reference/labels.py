"""How a task's labels become ACE counts and lists of class ids.

A batch of a 1D task carries padded ``targets`` and ``target_lengths``; a
batch of a 2D task carries ``object_counts`` per class. :func:`batch_counts`
turns either into the ``(B, C)`` counts of the loss, blank included;
:func:`label_lists` into the reference labels that the metrics compare
against; :func:`shuffle_targets` permutes the characters of some labels
(the paper's Fig. 4).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

import ace_core
from ace_core._typing import Array, ArrayNamespace

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["batch_counts", "label_lists", "shuffle_targets", "output_cells"]


def output_cells(logits: Array) -> int:
    """T: the steps of a (B, T, C) output, or the cells H·W of a (B, H, W, C) map."""
    return math.prod(logits.shape[1:-1])


def shuffle_targets(
    targets: np.ndarray, target_lengths: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Shuffle the order of the characters inside a fraction ``ratio`` of the labels (paper Fig. 4).

    Parameters
    ----------
    targets : int array, shape (B, S)
        Padded labels.
    target_lengths : int array, shape (B,)
    ratio : float
        Fraction of labels (in [0, 1]) whose first ``target_lengths[b]`` entries are permuted.
    rng : numpy.random.Generator
        A stream of its own (not the data stream, so that the images stay the same).

    Returns
    -------
    int array, shape (B, S)
        A shuffled copy; the padding stays in place.

    Examples
    --------
    >>> import numpy as np
    >>> t = shuffle_targets(np.array([[1, 2, 3, 0]]), np.array([3]), 1.0, np.random.default_rng(1))
    >>> sorted(t[0, :3].tolist()), int(t[0, 3])
    ([1, 2, 3], 0)
    """
    out = np.array(targets, copy=True)
    chosen = rng.random(out.shape[0]) < ratio
    for b in np.flatnonzero(chosen):
        n = int(target_lengths[b])
        out[b, :n] = out[b, rng.permutation(n)]
    return out


def batch_counts(task: Task, batch: Any, logits: Array, *, xp: ArrayNamespace, device: Any) -> Array:
    """ACE counts ``(B, C)`` for ``batch``, blank included, on ``device``.

    1D labels go through :func:`ace_core.counts_from_targets` with ``T`` steps,
    object counts through :func:`ace_core.counts_with_background` with the
    ``H·W`` cells of the map.
    """
    steps = output_cells(logits)
    if task.kind == "sequence":
        targets = xp.asarray(np.asarray(batch.targets), device=device)
        lengths = xp.asarray(np.asarray(batch.target_lengths), device=device)
        return ace_core.counts_from_targets(
            targets, lengths, num_classes=logits.shape[-1], input_lengths=steps, xp=xp
        )
    objects = xp.asarray(np.asarray(batch.object_counts), device=device)
    return ace_core.counts_with_background(objects, input_lengths=steps, xp=xp)


def label_lists(task: Task, batch: Any) -> list[list[int]]:
    """The reference labels of ``batch`` as lists of class ids (a multiset for 2D tasks)."""
    if task.kind == "sequence":
        targets, lengths = np.asarray(batch.targets), np.asarray(batch.target_lengths)
        return [row[:n].tolist() for row, n in zip(targets, lengths, strict=True)]
    counts = np.asarray(batch.object_counts)
    return [np.repeat(np.arange(counts.shape[1]), row).tolist() for row in counts]
