"""The defaults of ``ace train``: one table, read by the training loop, the tasks, the CLI and the docs.

:data:`TRAIN_DEFAULTS` holds the value of every :class:`~ace_core.reference.train.TrainConfig`
field that has a default; :data:`TASK_TRAIN_DEFAULTS` the few that a task changes.
:func:`train_defaults` merges the two for one task.

Examples
--------
>>> from ace_core.reference.defaults import TRAIN_DEFAULTS, train_defaults, describe
>>> TRAIN_DEFAULTS["batch"], train_defaults("count")["steps"]
(32, 2000)
>>> describe("steps")
'3000; count: 2000'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "TRAIN_DEFAULTS",
    "TASK_TRAIN_DEFAULTS",
    "ADADELTA_LR",
    "BLANK_BIAS",
    "SEQUENCE_READOUT",
    "PER_TASK_FIELDS",
    "train_defaults",
    "describe",
]

# The defaults steer ``ace train TASK`` (no other argument) to the accuracies
# that docs/training_reference.rst reports, on a 2-core CPU.
TRAIN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "steps": 3000,  # optimiser steps in total
        "batch": 32,  # images per step
        "lr": 2e-3,  # peak learning rate of Adam
        "optimizer": "adam",
        "schedule": "cosine",  # after the warmup
        "warmup": 100,  # steps of linear warmup
        "seed": 0,
        "eval_every": 250,  # evaluate and checkpoint every this many steps
        "eval_size": 500,  # held-out images per evaluation
        "log_every": 50,  # a progress line every this many steps
        "loss": "ace",
        "dtype": "float32",
    }
)

#: What a task changes of :data:`TRAIN_DEFAULTS` (counting needs fewer steps).
TASK_TRAIN_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "crnn": MappingProxyType({}),
        "digits": MappingProxyType({}),
        "fcn": MappingProxyType({}),
        "count": MappingProxyType({"steps": 2000}),
    }
)

#: The fields that :class:`~ace_core.reference.train.TrainConfig` leaves at ``None`` until
#: :meth:`~ace_core.reference.train.TrainConfig.resolved` fills them from the task's defaults.
PER_TASK_FIELDS = ("steps", "batch", "lr", "schedule", "warmup", "eval_every")

#: Adadelta's learning rate is a multiplier of its own step: 1.0, as in the paper.
ADADELTA_LR = 1.0

#: The blank's initial output bias: ``"prior"``, the labels' average blank share
#: (:func:`ace_core.reference.tasks.prior_blank_bias`).
BLANK_BIAS = "prior"

#: How ``ace predict`` reads a sequence task: ``"ordered"`` (:func:`ace_core.decode_ordered`), which
#: ends ahead of greedy decoding in ``ace train``'s held-out scores (docs/training_reference.rst).
SEQUENCE_READOUT = "ordered"


def train_defaults(task: str) -> Mapping[str, Any]:
    """The defaults of :data:`PER_TASK_FIELDS` for ``task``: :data:`TRAIN_DEFAULTS` updated by its own."""
    own = TASK_TRAIN_DEFAULTS.get(task, {})
    return MappingProxyType({name: own.get(name, TRAIN_DEFAULTS[name]) for name in PER_TASK_FIELDS})


def describe(name: str) -> str:
    """The default of ``name`` in words, for ``--help`` and the docs: ``"3000; count: 2000"``."""
    text = (
        f"{TRAIN_DEFAULTS[name]:g}" if isinstance(TRAIN_DEFAULTS[name], float) else f"{TRAIN_DEFAULTS[name]}"
    )
    changed = [
        f"{task}: {own[name]:g}" if isinstance(own[name], float) else f"{task}: {own[name]}"
        for task, own in TASK_TRAIN_DEFAULTS.items()
        if name in own
    ]
    return "; ".join([text, *changed])
