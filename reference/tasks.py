"""The training tasks: which data, which model, how labels become ACE counts, how to score.

A :class:`Task` ties a data generator of :mod:`ace_core.reference` to a model
and to one of three kinds of readout:

- ``"sequence"`` (1D, CRNN): the label is a string; counts come from
  :func:`ace_core.counts_from_targets`; the prediction is read with
  :func:`ace_core.decode_greedy` (argmax per column, repeats collapsed, blanks
  dropped) and scored with sequence accuracy and the character error rate.
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
comparison), never re-derived here.

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
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

import ace_core
from ace_core._typing import Array, ArrayNamespace

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
LossKind = Literal["ace", "regression"]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True)
class Task:
    """One trainable task: data generator, model, readout and the defaults of ``ace train``."""

    name: str  #: the ``ace train`` argument
    kind: Kind  #: ``"sequence"``, ``"bag"`` or ``"count"`` (see the module docstring)
    summary: str  #: one line for ``--help`` and the docs
    data: str  #: ``"module:Class"`` of the generator in ``ace_core.reference``
    model: str  #: ``"CRNN"`` or ``"FCN"`` (in :mod:`ace_core.reference.models`)
    data_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: defaults of :class:`ace_core.reference.train.TrainConfig` fields for this task
    train_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        """The metric printed first and plotted: higher is better except for ``m_rel_rmse``."""
        return {"sequence": "sequence_accuracy", "bag": "bag_accuracy", "count": "m_rel_rmse"}[self.kind]


# The defaults steer ``ace train TASK`` (no other argument) to the targets of
# the issue on a 2-core CPU; see docs/training_reference.rst for the numbers.
TASKS: Mapping[str, Task] = _frozen(
    {
        "crnn": Task(
            name="crnn",
            kind="sequence",
            summary="CRNN reads rendered text lines (blank + 0-9 + A-Z, 37 classes), 1D ACE",
            data="text_lines:TextLines",
            model="CRNN",
            data_defaults=_frozen({"height": 32, "width": 128, "min_length": 4, "max_length": 8}),
            model_defaults=_frozen({"head": "bilstm", "init_blank_bias": "prior"}),
            train_defaults=_frozen(
                {
                    "steps": 3000,
                    "batch": 32,
                    "lr": 2e-3,
                    "warmup": 100,
                    "schedule": "cosine",
                    "eval_every": 250,
                }
            ),
        ),
        "digits": Task(
            name="digits",
            kind="sequence",
            summary="CRNN reads strings of handwritten digits (scikit-learn's load_digits), 1D ACE",
            data="digit_strings:DigitStrings",
            model="CRNN",
            model_defaults=_frozen({"head": "bilstm", "init_blank_bias": "prior"}),
            train_defaults=_frozen(
                {
                    "steps": 3000,
                    "batch": 32,
                    "lr": 2e-3,
                    "warmup": 100,
                    "schedule": "cosine",
                    "eval_every": 250,
                }
            ),
        ),
        "fcn": Task(
            name="fcn",
            kind="bag",
            summary="FCN recognises characters scattered at random 2D positions (the paper's Fig. 2), 2D ACE",
            data="scatter_toy:ScatterToy",
            model="FCN",
            model_defaults=_frozen({"init_blank_bias": "prior"}),
            train_defaults=_frozen(
                {
                    "steps": 3000,
                    "batch": 32,
                    "lr": 2e-3,
                    "warmup": 100,
                    "schedule": "cosine",
                    "eval_every": 250,
                }
            ),
        ),
        "count": Task(
            name="count",
            kind="count",
            summary="FCN counts objects of several classes (0-9 each) on a canvas (the paper's Table 4)",
            data="counting:CountingCanvas",
            model="FCN",
            model_defaults=_frozen({"init_blank_bias": "prior"}),
            train_defaults=_frozen(
                {
                    "steps": 2000,
                    "batch": 32,
                    "lr": 2e-3,
                    "warmup": 100,
                    "schedule": "cosine",
                    "eval_every": 250,
                }
            ),
        ),
    }
)


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` listing the names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(sorted(TASKS))}") from None


def _import(module: str) -> Any:
    return importlib.import_module(f"ace_core.reference.{module}")


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
    module, _, name = task.data.partition(":")
    cls = getattr(_import(module), name)
    kwargs = {**task.data_defaults, **(options or {})}
    return cls(**kwargs, seed=seed)


def model_class(task: Task) -> Any:
    """The model class of ``task`` (imported lazily)."""
    return getattr(_import("models"), task.model)


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

    With the other biases at 0 and small logits, the model starts at
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
    steps = output_steps(task, dataset)
    labels = label_lists(task, dataset.heldout(sample, seed=0x5EED))
    mean = float(np.mean([len(row) for row in labels]))
    blank = min(max(1.0 - mean / steps, 1e-3), 1.0 - 1e-3)
    return float(math.log(blank * (dataset.num_classes - 1) / (1.0 - blank)))


# --------------------------------------------------------------------------- labels and loss


def _steps(logits: Array) -> int:
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
    steps = _steps(logits)
    if task.kind == "sequence":
        targets = xp.asarray(np.asarray(batch.targets), device=device)
        lengths = xp.asarray(np.asarray(batch.target_lengths), device=device)
        return ace_core.counts_from_targets(
            targets, lengths, num_classes=logits.shape[-1], input_lengths=steps, xp=xp
        )
    objects = xp.asarray(np.asarray(batch.object_counts), device=device)
    return ace_core.counts_with_background(objects, input_lengths=steps, xp=xp)


def loss_and_grad(
    logits: Array, counts: Array, *, loss: LossKind = "ace", xp: ArrayNamespace | None = None
) -> tuple[Array, Array]:
    """Batch-mean loss and its gradient with respect to ``logits``, from :mod:`ace_core`.

    ``loss="ace"`` is the cross-entropy ACE (the paper's Eq. 8),
    ``"regression"`` the regression form (Eq. 4).
    """
    if loss == "ace":
        return ace_core.ace_loss_and_grad(logits, counts, xp=xp)
    if loss == "regression":
        return ace_core.regression_ace_loss_and_grad(logits, counts, xp=xp)
    raise ValueError(f"`loss` must be 'ace' or 'regression', got {loss!r}")


# --------------------------------------------------------------------------- evaluation


def forward_in_chunks(
    model: Any, images: np.ndarray, *, xp: ArrayNamespace, device: Any, chunk: int = 128
) -> Array:
    """Inference logits for host ``images``, ``chunk`` images at a time (bounded memory), on device."""
    parts = []
    for start in range(0, images.shape[0], chunk):
        batch = xp.asarray(np.ascontiguousarray(images[start : start + chunk]), device=device)
        logits, _ = model.forward(batch, train=False)
        parts.append(logits)
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def label_lists(task: Task, batch: Any) -> list[list[int]]:
    """The reference labels of ``batch`` as lists of class ids (a multiset for 2D tasks)."""
    if task.kind == "sequence":
        targets, lengths = np.asarray(batch.targets), np.asarray(batch.target_lengths)
        return [row[:n].tolist() for row, n in zip(targets, lengths, strict=True)]
    counts = np.asarray(batch.object_counts)
    return [np.repeat(np.arange(counts.shape[1]), row).tolist() for row in counts]


def _object_counts(counts: np.ndarray) -> np.ndarray:
    out = np.array(counts, copy=True)
    out[:, 0] = 0
    return out


def evaluate(
    task: Task,
    model: Any,
    heldout: Any,
    *,
    xp: ArrayNamespace,
    device: Any,
    chunk: int = 128,
) -> dict[str, Any]:
    """Score ``model`` on a held-out batch; every value is a JSON-ready float or list.

    Returns
    -------
    dict
        Always ``loss`` and ``loss_minus_floor`` (ACE on the held-out set) and
        ``count_accuracy`` (the rounded aggregated counts equal the label's
        for every non-blank class). Then by kind:

        - sequence: ``sequence_accuracy``, ``cer``, ``bag_accuracy``;
        - bag: ``bag_accuracy`` (argmax per cell), ``precision``, ``recall``
          (of predicted characters, multiset intersection);
        - count: ``mean_rmse``, ``m_rel_rmse``, ``rmse``, ``rel_rmse`` (per
          object class), ``exact``.
    """
    images = np.asarray(heldout.images)
    logits = forward_in_chunks(model, images, xp=xp, device=device, chunk=chunk)
    counts = batch_counts(task, heldout, logits, xp=xp, device=device)
    loss = float(ace_core.ace_loss(logits, counts, xp=xp))
    floor = float(ace_core.entropy_floor(counts, reduction="mean", xp=xp))
    references = label_lists(task, heldout)
    predicted_counts = _object_counts(np.asarray(_host(ace_core.decode_counts(logits, xp=xp))))
    true_counts = _object_counts(np.asarray(_host(counts)))
    metrics: dict[str, Any] = {
        "loss": loss,
        "loss_minus_floor": loss - floor,
        "count_accuracy": float(np.mean(np.all(predicted_counts == true_counts, axis=1))),
    }
    if task.kind == "sequence":
        decoded = ace_core.decode_greedy(logits, xp=xp)
        metrics["sequence_accuracy"] = ace_core.sequence_accuracy(decoded, references)
        metrics["cer"] = ace_core.character_error_rate(decoded, references)
        metrics["bag_accuracy"] = ace_core.bag_accuracy(decoded, references)
    elif task.kind == "bag":
        decoded = ace_core.decode_greedy(logits, collapse_repeats=False, xp=xp)
        metrics["bag_accuracy"] = ace_core.bag_accuracy(decoded, references)
        matched = predicted = true = 0
        for p, r in zip(decoded, references, strict=True):
            matched += sum((_counter(p) & _counter(r)).values())
            predicted += len(p)
            true += len(r)
        metrics["precision"] = matched / predicted if predicted else 0.0
        metrics["recall"] = matched / true if true else 0.0
    else:
        classes = list(range(1, true_counts.shape[1]))
        errors = ace_core.counting_errors(predicted_counts, true_counts, classes=classes)
        metrics["mean_rmse"] = errors.mean_rmse
        metrics["m_rel_rmse"] = errors.mean_rel_rmse
        metrics["rmse"] = errors.rmse.tolist()
        metrics["rel_rmse"] = errors.rel_rmse.tolist()
        metrics["exact"] = metrics["count_accuracy"]
    return metrics


def _counter(labels: Sequence[int]) -> Any:
    from collections import Counter

    return Counter(labels)


def _host(x: Array) -> np.ndarray:
    from ace_core._namespace import to_numpy

    return np.asarray(to_numpy(x))


def readout(task: Task, logits: Array, dataset: Any, *, xp: ArrayNamespace) -> list[Any]:
    """What the model says for each image, in the task's terms.

    - sequence: the decoded string (``dataset.decode`` of the greedy labels);
    - bag: the sorted list of recognised characters (the multiset);
    - count: ``{class name: count}`` from :func:`ace_core.decode_counts`.
    """
    names = class_names(dataset)
    if task.kind == "sequence":
        return [_decode_text(dataset, labels) for labels in ace_core.decode_greedy(logits, xp=xp)]
    if task.kind == "bag":
        decoded = ace_core.decode_greedy(logits, collapse_repeats=False, xp=xp)
        return [sorted(names[k] for k in labels) for labels in decoded]
    counts = _host(ace_core.decode_counts(logits, xp=xp))
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
