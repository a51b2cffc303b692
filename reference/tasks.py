"""The training tasks: which data, which model, how labels become ACE counts, how to score.

A :class:`Task` ties a data generator of :mod:`ace_core.reference` to a model
and to one of three kinds of readout:

- ``"sequence"`` (1D, CRNN): the label is a string; counts come from
  :func:`ace_core.counts_from_targets`; the prediction is read twice, with
  :func:`ace_core.decode_greedy` (argmax per column, repeats collapsed, blanks
  dropped) and with :func:`ace_core.decode_ordered` (each class as often as
  its rounded mass, in the order its mass accrues), and each is scored with
  sequence accuracy and the character error rate.
- ``"bag"`` (2D, FCN, the paper's Fig. 2 toy): the label is a multiset of
  characters at unknown places; counts come from
  :func:`ace_core.counts_with_background`; the prediction is the argmax of
  every cell of the map, blanks dropped, repeats kept, scored with exact
  multiset (bag) accuracy.
- ``"count"`` (2D, FCN, the paper's Table 4): the label is a count per class;
  the prediction is :func:`ace_core.decode_counts` (the rounded aggregated
  probability), scored with RMSE and relRMSE per class and their means
  (:func:`ace_core.counting_errors`).

The loss is always :func:`ace_core.ace_loss_and_grad` (or
:func:`ace_core.regression_ace_loss_and_grad` for the paper's Table 1
comparison), never re-derived: see :mod:`ace_core.reference.training_step`.
Labels become counts in :mod:`ace_core.reference.labels`, scores come from
:mod:`ace_core.reference.evaluation`, readouts from
:mod:`ace_core.reference.readout`; this module re-exports their names.

Examples
--------
>>> from ace_core.reference.tasks import TASKS, get_task
>>> sorted(TASKS)
['count', 'crnn', 'digits', 'fcn']
>>> get_task("crnn").kind, get_task("fcn").kind, get_task("count").kind
('sequence', 'bag', 'count')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

import ace_core
from ace_core._typing import ArrayNamespace

from .counting import CountingCanvas
from .defaults import BLANK_BIAS, train_defaults
from .digit_strings import DigitStrings
from .evaluation import evaluate, forward_in_chunks
from .labels import batch_counts, label_lists, shuffle_targets
from .readout import class_names, readout
from .scatter_toy import ScatterToy
from .text_lines import TextLines
from .training_step import LossKind as LossKind
from .training_step import loss_and_grad

__all__ = [
    "Task",
    "TASKS",
    "get_task",
    "build_dataset",
    "build_model",
    "model_class",
    "batch_counts",
    "loss_and_grad",
    "shuffle_targets",
    "evaluate",
    "readout",
    "forward_in_chunks",
    "label_lists",
    "class_names",
    "output_steps",
    "prior_blank_bias",
]

Kind = Literal["sequence", "bag", "count"]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True)
class Task:
    """One trainable task: data generator, model, readout and the defaults of ``ace train``."""

    name: str  #: the ``ace train`` argument
    kind: Kind  #: ``"sequence"``, ``"bag"`` or ``"count"`` (see the module docstring)
    summary: str  #: one line for ``--help`` and the docs
    data: type  #: the generator class (of ``ace_core.reference``)
    model: str  #: ``"CRNN"`` or ``"FCN"`` (in :mod:`ace_core.reference.models`)
    data_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: defaults of :class:`ace_core.reference.train.TrainConfig` fields for this task
    #: (from :func:`ace_core.reference.defaults.train_defaults`)
    train_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        """The metric printed first and plotted: higher is better except for ``m_rel_rmse``."""
        return {"sequence": "sequence_accuracy", "bag": "bag_accuracy", "count": "m_rel_rmse"}[self.kind]


_MODEL_DEFAULTS = _frozen({"init_blank_bias": BLANK_BIAS})
_CRNN_DEFAULTS = _frozen({"head": "bilstm", "init_blank_bias": BLANK_BIAS})

TASKS: Mapping[str, Task] = _frozen(
    {
        "crnn": Task(
            name="crnn",
            kind="sequence",
            summary="CRNN reads rendered text lines (blank + 0-9 + A-Z, 37 classes), 1D ACE",
            data=TextLines,
            model="CRNN",
            data_defaults=_frozen({"height": 32, "width": 128, "min_length": 4, "max_length": 8}),
            model_defaults=_CRNN_DEFAULTS,
            train_defaults=train_defaults("crnn"),
        ),
        "digits": Task(
            name="digits",
            kind="sequence",
            summary="CRNN reads strings of handwritten digits (scikit-learn's load_digits), 1D ACE",
            data=DigitStrings,
            model="CRNN",
            model_defaults=_CRNN_DEFAULTS,
            train_defaults=train_defaults("digits"),
        ),
        "fcn": Task(
            name="fcn",
            kind="bag",
            summary="FCN recognises characters scattered at random 2D positions (the paper's Fig. 2), 2D ACE",
            data=ScatterToy,
            model="FCN",
            model_defaults=_MODEL_DEFAULTS,
            train_defaults=train_defaults("fcn"),
        ),
        "count": Task(
            name="count",
            kind="count",
            summary="FCN counts objects of several classes (0-9 each) on a canvas (the paper's Table 4)",
            data=CountingCanvas,
            model="FCN",
            model_defaults=_MODEL_DEFAULTS,
            train_defaults=train_defaults("count"),
        ),
    }
)


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` listing the names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(sorted(TASKS))}") from None


def build_dataset(task: Task, options: Mapping[str, Any] | None = None, *, seed: int = 0) -> Any:
    """The task's data generator, made with its defaults updated by ``options``.

    Parameters
    ----------
    task : Task
    options : mapping, optional
        Keyword arguments of the generator's constructor (e.g. ``max_length``).
    seed : int
        The generator's own seed (fonts, glyph splits); the training batches
        come from a separate stream that the caller owns.
    """
    kwargs = {**task.data_defaults, **(options or {})}
    return task.data(**kwargs, seed=seed)


def model_class(task: Task) -> Any:
    """The model class of ``task`` (the models are imported at the first call)."""
    from . import models

    return {"CRNN": models.CRNN, "FCN": models.FCN}[task.model]


def _input_height(dataset: Any) -> int:
    for name in ("height", "canvas"):
        value = getattr(dataset, name, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    raise AttributeError(f"{type(dataset).__name__} has neither `height` nor `canvas`")


def build_model(
    task: Task,
    dataset: Any,
    options: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    xp: ArrayNamespace | None = None,
    device: Any = None,
    dtype: str = "float32",
) -> Any:
    """A freshly initialised model for ``task`` and ``dataset`` on ``xp``/``device``.

    Parameters
    ----------
    task : Task
    dataset : object
        The task's generator (for the number of classes and the input height).
    options : mapping, optional
        Keyword arguments of the model's constructor (``channels``, ``hidden``, ``head``...).
    seed : int
        Seed of the weight initialisation.
    xp, device : optional
        Array namespace and device; NumPy on the CPU by default.
    dtype : str
        ``"float32"`` or ``"float64"``.
    """
    cls = model_class(task)
    kwargs = {**task.model_defaults, **(options or {})}
    if task.model == "CRNN":
        kwargs.setdefault("height", _input_height(dataset))
    if kwargs.get("init_blank_bias") == "prior":
        kwargs["init_blank_bias"] = prior_blank_bias(task, dataset)
    return cls(dataset.num_classes, **kwargs, seed=seed, xp=xp, device=device, dtype=dtype)


def output_steps(task: Task, dataset: Any) -> int:
    """T, the prediction steps of the task's model on the dataset's images (cells for 2D maps)."""
    if task.model == "CRNN":
        return int(model_class(task).steps(dataset.width))
    side = _input_height(dataset)
    return math.prod(model_class(task).map_shape(side, side))


def prior_blank_bias(task: Task, dataset: Any, *, sample: int = 256) -> float:
    r"""The blank's output bias that makes the untrained model predict the labels' average class mix.

    :func:`ace_core.blank_prior_bias` of the label lengths of ``sample``
    held-out images. With the other biases at 0 and small logits, the model starts at
    :math:`y_0 = p`, :math:`y_k = (1 - p) / (C - 1)`, where
    :math:`p = 1 - \bar n / T` is the average blank share of the counts
    (:math:`\bar n` objects or characters per image, measured on ``sample``
    held-out images, over ``T`` steps):

    .. math:: b_0 = \log \frac{p\,(C - 1)}{1 - p}

    Starting there removes the first phase of ACE training (learning the blank
    share, which takes large gradients) and, with it, the long plateau that
    follows: Adam's second-moment estimate remembers those large gradients
    and shrinks every later step (see docs/training_reference.rst).

    Examples
    --------
    >>> from ace_core.reference.tasks import get_task, build_dataset, prior_blank_bias
    >>> task = get_task("fcn")
    >>> round(prior_blank_bias(task, build_dataset(task)), 2)  # 3.5 objects on 64 cells, 11 classes
    5.15
    """
    labels = label_lists(task, dataset.heldout(sample, seed=0x5EED))
    return ace_core.blank_prior_bias(
        target_lengths=[len(row) for row in labels],
        input_lengths=output_steps(task, dataset),
        num_classes=dataset.num_classes,
    )
