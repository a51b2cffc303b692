"""One optimiser step of the training loop, and the loss it takes (from :mod:`ace_core`).

:func:`training_step` draws a batch on the host, moves it to the device, runs
the model forward, turns the labels into ACE counts
(:func:`~ace_core.reference.labels.batch_counts`), takes the loss and its
gradient (:func:`loss_and_grad`), runs the model backward, clips the gradient
when asked, and lets the optimiser update the parameters.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Literal

import ace_core
from ace_core._typing import Array, ArrayNamespace

from .labels import batch_counts, shuffle_targets
from .optim import clip_by_global_norm

if TYPE_CHECKING:
    from .tasks import Task
    from .train import TrainConfig

__all__ = ["LossKind", "StepResult", "loss_and_grad", "training_step"]

LossKind = Literal["ace", "regression"]


_GRADIENT_BUFFER: list[Any] = [None]


def _gradient_buffer(logits: Array) -> Array | None:
    """An array like ``logits`` for the gradient, the same one while shape, dtype and device stay.

    None for JAX, whose arrays are immutable.
    """
    import array_api_compat

    if array_api_compat.is_jax_array(logits):
        return None
    buffer, device = _GRADIENT_BUFFER[0], array_api_compat.device(logits)
    reusable = (
        type(buffer) is type(logits)
        and tuple(buffer.shape) == tuple(logits.shape)
        and buffer.dtype == logits.dtype
        and array_api_compat.device(buffer) == device
    )
    if not reusable:
        namespace = array_api_compat.array_namespace(logits)
        buffer = namespace.empty(logits.shape, dtype=logits.dtype, device=device)
        _GRADIENT_BUFFER[0] = buffer
    return buffer


def loss_and_grad(
    logits: Array, counts: Array, *, loss: LossKind = "ace", xp: ArrayNamespace | None = None
) -> tuple[Array, Array]:
    """Batch-mean loss and its gradient with respect to ``logits``, from :mod:`ace_core`.

    ``loss="ace"`` is the cross-entropy ACE (the paper's Eq. 8),
    ``"regression"`` the regression form (Eq. 4).
    """
    if loss == "ace":
        # One gradient buffer, reused while the shape stays: no fresh (B, T, C) array to fault
        # in at every step (the gradient is consumed by the model's backward before the next call).
        return ace_core.ace_loss_and_grad(logits, counts, xp=xp, out=_gradient_buffer(logits))
    if loss == "regression":
        return ace_core.regression_ace_loss_and_grad(logits, counts, xp=xp)
    raise ValueError(f"`loss` must be 'ace' or 'regression', got {loss!r}")


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one :func:`training_step` gives back."""

    opt_state: Any  #: the optimiser's state after the step
    loss: float  #: the batch-mean loss before the step
    floor: float  #: the batch's entropy floor (0 for the regression loss)
    seconds: float  #: wall clock of the step (drawing the batch to the loss on the host)


def training_step(
    config: TrainConfig,
    task: Task,
    dataset: Any,
    model: Any,
    optimizer: Any,
    opt_state: Any,
    streams: Any,
    *,
    step: int,
    lr: float,
    xp: ArrayNamespace,
    device: Any,
) -> StepResult:
    """Optimiser step ``step`` (0-based) of a resolved ``config`` at learning rate ``lr``.

    Updates ``model.params`` in place of the model and draws from ``streams``
    (``data``, and ``shuffle`` for shuffled labels).
    """
    started = time.perf_counter()
    batch = dataset.batch(streams.data, config.batch)
    if config.shuffle_labels > 0 and task.kind == "sequence":
        batch = batch._replace(
            targets=shuffle_targets(
                batch.targets, batch.target_lengths, config.shuffle_labels, streams.shuffle
            )
        )
    images = xp.asarray(batch.images, device=device)
    if config.dtype != "float32":
        images = xp.astype(images, getattr(xp, config.dtype))
    logits, cache = model.forward(images, train=True)
    counts = batch_counts(task, batch, logits, xp=xp, device=device)
    loss, dlogits = loss_and_grad(logits, counts, loss=config.loss, xp=xp)
    grads = model.backward(dlogits, cache)
    if config.clip is not None:
        grads, _ = clip_by_global_norm(grads, config.clip)
    if config.restart_optimizer_at is not None and step == config.restart_optimizer_at:
        opt_state = optimizer.init(model.params)
    model.params, opt_state = optimizer.step(model.params, grads, opt_state, lr=lr)
    loss_value = float(loss)  # one host sync per step: also makes the timing honest on a GPU
    seconds = time.perf_counter() - started
    floor = float(ace_core.entropy_floor(counts, reduction="mean", xp=xp)) if config.loss == "ace" else 0.0
    return StepResult(opt_state, loss_value, floor, seconds)
