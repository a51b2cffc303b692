"""What a model says, in the task's terms: decoded strings, multisets of characters, counts.

For the sequence tasks there are two readouts (``ace train`` scores both):
``"greedy"`` (:func:`ace_core.decode_greedy`: the best class per column,
repeats collapsed, blanks dropped) and ``"ordered"``
(:func:`ace_core.decode_ordered`: each class as often as its rounded mass,
in the order its mass accrues).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import ace_core
from ace_core._typing import Array, ArrayNamespace

from ._array import to_host

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["SEQUENCE_READOUTS", "readout", "class_names", "decode_sequences"]

#: The readouts of a sequence task.
SEQUENCE_READOUTS = ("greedy", "ordered")

SequenceReadout = Literal["greedy", "ordered"]


def decode_sequences(
    logits: Array, *, xp: ArrayNamespace, readout: SequenceReadout = "greedy"
) -> list[list[int]]:
    """The class ids read from ``(B, T, C)`` logits: :func:`ace_core.decode_greedy` or ``decode_ordered``."""
    if readout == "greedy":
        return ace_core.decode_greedy(logits, xp=xp)
    if readout == "ordered":
        return ace_core.decode_ordered(logits, xp=xp)
    raise ValueError(f"`readout` must be one of {', '.join(SEQUENCE_READOUTS)}, got {readout!r}")


def readout(
    task: Task,
    logits: Array,
    dataset: Any,
    *,
    xp: ArrayNamespace,
    sequence_readout: SequenceReadout = "greedy",
) -> list[Any]:
    """What the model says for each image, in the task's terms.

    - sequence: the decoded string (``dataset.decode`` of the labels that
      ``sequence_readout`` reads, ``"greedy"`` or ``"ordered"``);
    - bag: the sorted list of recognised characters (the multiset);
    - count: ``{class name: count}`` from :func:`ace_core.decode_counts`.
    """
    names = class_names(dataset)
    if task.kind == "sequence":
        decoded = decode_sequences(logits, xp=xp, readout=sequence_readout)
        return [_decode_text(dataset, labels) for labels in decoded]
    if task.kind == "bag":
        decoded = ace_core.decode_greedy(logits, collapse_repeats=False, xp=xp)
        return [sorted(names[k] for k in labels) for labels in decoded]
    counts = to_host(ace_core.decode_counts(logits, xp=xp))
    return [{names[k]: int(row[k]) for k in range(1, len(row))} for row in counts]


def _decode_text(dataset: Any, labels: list[int]) -> str:
    decode: Callable[[Sequence[int]], str] | None = getattr(dataset, "decode", None)
    if decode is not None:
        return decode(labels)
    names = class_names(dataset)
    return "".join(names[k] for k in labels)


def class_names(dataset: Any) -> list[str]:
    """A printable name per class, index 0 the blank (``"-"``)."""
    for attribute in ("class_names", "names"):
        names = getattr(dataset, attribute, None)
        if names is not None and len(names) == dataset.num_classes:
            return [str(n) for n in names]
    alphabet = getattr(dataset, "alphabet", None)
    if alphabet is not None:
        alphabet = list(alphabet)
        if len(alphabet) == dataset.num_classes - 1:
            return ["-", *map(str, alphabet)]
        if len(alphabet) == dataset.num_classes:
            return ["-", *map(str, alphabet[1:])]
    return ["-", *(str(k) for k in range(1, dataset.num_classes))]
