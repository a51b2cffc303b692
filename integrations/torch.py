"""PyTorch adapter: ACE as a drop-in for ``torch.nn.functional.ctc_loss`` / ``torch.nn.CTCLoss``.

Swap one line::

    loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths)    # before
    loss = ace_loss(log_probs, targets, input_lengths, target_lengths)      # after

The math and the input checks are :mod:`ace_core`'s: the forward and the
closed-form backward run as two ``torch.library`` custom ops
(``ace_core::ace_forward`` and ``ace_core::ace_backward``) tied together with
``register_autograd``, and each calls the core on the caller's lengths or mask,
so every check of the core (lengths outside ``[0, T]``, a mask of the wrong
shape or dtype, infeasible samples) runs on the concrete tensors inside the op,
also under ``torch.compile(fullgraph=True)``, which treats each op as one opaque
node. Autograd keeps no graph through the loss's inner operations and saves no
``(N, T, C)`` tensor besides the input. Counts are built by a third op,
``ace_core::counts_from_targets``.

Importing this module imports torch; ``import ace_core`` never does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import array_api_compat.torch as torch_namespace
import torch
from torch import Tensor

import ace_core
from ace_core._inputs import check_class_index, check_flag, check_reduction, prepare_scores, valid_steps
from ace_core.loss import ACEResiduals, reduce_per_sample

__all__ = ["ACELoss", "CTCWithACELoss", "ace_loss", "ctc_with_ace_loss", "init_blank_bias_"]

Layout = Literal["TNC", "NTC", "NHWC"]
_LAYOUTS = ("TNC", "NTC", "NHWC")


# --------------------------------------------------------------------------- custom ops
#
# The residual tensors that cross from the forward op to the backward op are
# the fields of ACEResiduals except ``valid`` (rebuilt from the caller's
# lengths or mask by the core, so that no view of an input is returned) and
# the 0-d ``drop_value`` (rebuilt from ``zero_infinity``). The schemas are
# written from the field names, so that they follow the core's residuals.

_SAVED = tuple(name for name in ACEResiduals._fields if name not in ("valid", "drop_value"))
_SAVED_SCHEMA = ", ".join(f"Tensor {name}" for name in _SAVED)


def _counts_impl(
    scores: Tensor,
    targets: Tensor,
    target_lengths: Tensor | None,
    input_lengths: Tensor | None,
    mask: Tensor | None,
    blank: int,
) -> Tensor:
    # T_b from the core's preparation of the lengths or mask (checked there).
    prepared = prepare_scores(scores, input_lengths=input_lengths, mask=mask)
    steps = prepared.lengths.to(torch.int64)
    return ace_core.counts_from_targets(
        targets, target_lengths, num_classes=scores.shape[-1], input_lengths=steps, blank=blank
    )


_counts_op = torch.library.custom_op(
    "ace_core::counts_from_targets",
    _counts_impl,
    mutates_args=(),
    schema="(Tensor scores, Tensor targets, Tensor? target_lengths, Tensor? input_lengths, Tensor? mask, "
    "int blank) -> Tensor",
)


@_counts_op.register_fake
def _(scores, targets, target_lengths, input_lengths, mask, blank):
    return scores.new_empty((scores.shape[0], scores.shape[-1]), dtype=torch.int64)


def _forward_impl(
    scores: Tensor, counts: Tensor, input_lengths: Tensor | None, mask: Tensor | None, zero_infinity: bool
) -> tuple[Tensor, ...]:
    loss, residuals = ace_core.ace_forward(
        scores, counts, input_lengths=input_lengths, mask=mask, zero_infinity=zero_infinity
    )
    # Custom ops may not return their inputs or views of them, nor one tensor twice.
    return (loss, *(_fresh(getattr(residuals, name), scores) for name in _SAVED))


def _fresh(tensor: Tensor, scores: Tensor) -> Tensor:
    return (
        tensor.clone()
        if tensor.untyped_storage().data_ptr() == scores.untyped_storage().data_ptr()
        else tensor
    )


_forward_op = torch.library.custom_op(
    "ace_core::ace_forward",
    _forward_impl,
    mutates_args=(),
    schema="(Tensor scores, Tensor counts, Tensor? input_lengths, Tensor? mask, bool zero_infinity) -> ("
    + ", ".join(["Tensor"] * (1 + len(_SAVED)))
    + ")",
)


def _fake_residual(name: str, scores: Tensor) -> Tensor:
    batch, classes = scores.shape[0], scores.shape[-1]
    steps = math.prod(scores.shape[1:-1])
    accumulate = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    if name == "keep":
        return scores.new_empty((batch,), dtype=torch.bool)
    if name == "lengths":
        return scores.new_empty((batch,), dtype=accumulate)
    if name.startswith("step_"):
        return scores.new_empty((batch, steps), dtype=accumulate)
    return scores.new_empty((batch, classes), dtype=accumulate)  # the per-class mass


@_forward_op.register_fake
def _(scores, counts, input_lengths, mask, zero_infinity):
    return (scores.new_empty((scores.shape[0],)), *(_fake_residual(name, scores) for name in _SAVED))


def _backward_impl(
    grad_loss: Tensor,
    scores: Tensor,
    counts: Tensor,
    input_lengths: Tensor | None,
    mask: Tensor | None,
    *rest: Any,
) -> Tensor:
    *saved, zero_infinity = rest
    fields = dict(zip(_SAVED, saved, strict=True))
    fields["valid"] = valid_steps(torch_namespace, scores, input_lengths, mask, scores.device)
    fields["drop_value"] = fields["lengths"].new_full((), 0.0 if zero_infinity else math.nan)
    residuals = ACEResiduals(**fields)
    # Elementwise ops on a transposed (TNC) view keep its strides; the fake
    # kernel must promise one layout, so the gradient is always contiguous.
    return ace_core.ace_backward(grad_loss, scores, counts, residuals).contiguous()


_backward_op = torch.library.custom_op(
    "ace_core::ace_backward",
    _backward_impl,
    mutates_args=(),
    schema="(Tensor grad_loss, Tensor scores, Tensor counts, Tensor? input_lengths, Tensor? mask, "
    f"{_SAVED_SCHEMA}, bool zero_infinity) -> Tensor",
)


@_backward_op.register_fake
def _(grad_loss, scores, *rest):
    return scores.new_empty(scores.shape)


def _setup_context(ctx, inputs, output):
    scores, counts, input_lengths, mask, ctx.zero_infinity = inputs
    _, *saved = output
    ctx.save_for_backward(scores, counts, input_lengths, mask, *saved)


def _backward(ctx, grad_loss, *unused_residual_grads):
    scores, counts, input_lengths, mask, *saved = ctx.saved_tensors
    grad = _backward_op(
        grad_loss.contiguous(), scores, counts, input_lengths, mask, *saved, ctx.zero_infinity
    )
    return grad, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- the CTC-style call


def _require_tensor(value: Any, name: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")


def _index_tensor(value: Any, name: str, device: torch.device) -> Tensor | None:
    """Lengths as a tensor on the scores' device; the core checks their dtype, shape and values.

    CTC accepts lengths as tuples of ints or CPU tensors next to CUDA
    log-probs; ACE moves them to the scores' device (a B-element copy, not a
    host round trip of the scores). Arrays of other libraries are refused.
    """
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.to(device)
    if not isinstance(value, (numbers.Number, list, tuple)):
        raise TypeError(f"`{name}` must be a torch.Tensor or a sequence of ints, got {type(value).__name__}")
    try:
        # The dtype follows the values, so that the core refuses floats and bools by name.
        return torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise TypeError(f"`{name}` must be ints or a sequence of ints: {error}") from None


def _scores_view(log_probs: Tensor, layout: Layout) -> tuple[Tensor, bool]:
    """``(N, T, C)`` (or ``(N, H, W, C)``) view of the input, no copy; and whether it was unbatched."""
    _require_tensor(log_probs, "log_probs")
    if layout not in _LAYOUTS:
        raise ValueError(f"`layout` must be one of {_LAYOUTS}, got {layout!r}")
    if layout == "NHWC":
        if log_probs.dim() != 4:
            raise ValueError(
                f"`log_probs` must be 4D (N, H, W, C) for layout 'NHWC', got shape {tuple(log_probs.shape)}"
            )
        return log_probs, False
    if log_probs.dim() == 2:  # CTC's unbatched form: (T, C)
        return log_probs[None], True
    if log_probs.dim() != 3:
        raise ValueError(
            f"`log_probs` must be 3D for layout {layout!r} (or 2D (T, C) for one unbatched sample), "
            f"got shape {tuple(log_probs.shape)}"
        )
    return (log_probs.transpose(0, 1) if layout == "TNC" else log_probs), False


def _one_sample(value: Tensor | None, name: str, rank: int) -> Tensor | None:
    """An unbatched argument given a batch axis of 1 (``rank`` is its unbatched rank)."""
    if value is None:
        return None
    if value.dim() != rank:
        kind = "0-d" if rank == 0 else f"{rank}D"
        raise ValueError(
            f"with unbatched (T, C) `log_probs`, `{name}` must be {kind}, got shape {tuple(value.shape)}"
        )
    return value[None]


def ace_loss(
    log_probs: Tensor,
    targets: Tensor | None,
    input_lengths: Tensor | Sequence[int] | int | None,
    target_lengths: Tensor | Sequence[int] | int | None,
    blank: int = 0,
    reduction: Literal["none", "sum", "mean"] = "mean",
    zero_infinity: bool = False,
    *,
    layout: Layout = "TNC",
    counts: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""ACE loss with the call of :func:`torch.nn.functional.ctc_loss`.

    .. math:: L_n = -\sum_k \frac{N_{nk}}{T_n} \log \Big(\frac{1}{T_n} \sum_{t < T_n}
              \operatorname{softmax}(x_{nt})_k\Big)

    Parameters
    ----------
    log_probs : Tensor
        ``(T, N, C)`` as for CTC (``layout="TNC"``), ``(N, T, C)``
        (``layout="NTC"``) or a 2D map ``(N, H, W, C)`` (``layout="NHWC"``);
        CTC's unbatched ``(T, C)`` for one sample. Log-probabilities or raw
        logits: the softmax inside makes them equal. float16/bfloat16 are
        accumulated in float32.
    targets : Tensor or None
        Padded ``(N, S)`` or concatenated ``(sum(target_lengths),)`` labels,
        as for CTC (``(S,)`` for unbatched input); ``None`` when ``counts`` is given.
    input_lengths : Tensor, sequence of int, int, or None
        ``(N,)`` valid steps (0-d or an int: the same for every sample);
        ``None`` means all T (and is required to be ``None`` for ``NHWC``,
        which takes ``mask`` instead).
    target_lengths : Tensor, sequence of int, int, or None
        ``(N,)`` label lengths; ``None`` for padded targets that are all label,
        or with ``counts``.
    blank : int
        The blank class, in ``[0, C)``.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` is the batch mean. Unlike CTC's ``"mean"`` it does not
        divide by the target lengths: ACE is already normalised by T.
        ``"none"`` gives ``(N,)`` (0-d for unbatched input).
    zero_infinity : bool
        Samples whose label is longer than their input (or with no valid step)
        get loss 0 and gradient 0 instead of an error.
    layout : {"TNC", "NTC", "NHWC"}
        Axis order of ``log_probs``.
    counts : Tensor, optional
        ``(N, C)`` class counts with the blank entry (rows summing to T_n),
        instead of targets: for 2D recognition and counting.
    mask : bool Tensor, optional
        ``(N, H, W)`` or ``(N, T)`` valid cells, instead of ``input_lengths``.

    Returns
    -------
    Tensor
        Scalar, or ``(N,)`` for ``reduction="none"``, in the dtype of ``log_probs``.

    Raises
    ------
    TypeError
        Arguments that are not tensors (or, for lengths, ints), non-floating
        ``log_probs``, non-integer targets or lengths, a mask that is not boolean.
    ValueError
        Shapes that do not match, lengths outside ``[0, T]``, a target equal
        to ``blank`` or outside ``[0, C)``, and (unless ``zero_infinity``) a
        label longer than its input; the sample is named.

    Examples
    --------
    >>> import torch
    >>> from ace_core.integrations.torch import ace_loss
    >>> log_probs = torch.randn(50, 4, 20).log_softmax(2).requires_grad_()  # (T, N, C)
    >>> targets = torch.randint(1, 20, (4, 10))
    >>> loss = ace_loss(log_probs, targets, [50, 50, 40, 30], [10, 8, 9, 5])
    >>> loss.backward()
    """
    check_reduction(reduction)
    scores, unbatched = _scores_view(log_probs, layout)
    device, classes = scores.device, scores.shape[-1]
    if layout == "NHWC" and input_lengths is not None:
        raise ValueError("a 2D map (layout='NHWC') takes a `mask`, not `input_lengths`")
    input_lengths = _index_tensor(input_lengths, "input_lengths", device)
    target_lengths = _index_tensor(target_lengths, "target_lengths", device)
    for name, value in (("targets", targets), ("counts", counts), ("mask", mask)):
        if value is not None:
            _require_tensor(value, name)
    if unbatched:
        input_lengths = _one_sample(input_lengths, "input_lengths", 0)
        target_lengths = _one_sample(target_lengths, "target_lengths", 0)
        targets = _one_sample(targets, "targets", 1)
        counts = _one_sample(counts, "counts", 1)
        mask = _one_sample(mask, "mask", 1)
    mask = None if mask is None else mask.to(device)
    if counts is None:
        if targets is None:
            raise ValueError("give `targets` (with `target_lengths`), or `counts`")
        blank = check_class_index(blank, "blank", classes)
        counts = _counts_op(scores.detach(), targets.to(device), target_lengths, input_lengths, mask, blank)
    elif targets is not None:
        raise ValueError("give either `targets` or `counts`, not both")
    zero_infinity = check_flag(zero_infinity, "zero_infinity")
    per_sample = _forward_op(scores, counts.to(device), input_lengths, mask, zero_infinity)[0]
    if unbatched and reduction == "none":
        return per_sample[0]
    return reduce_per_sample(torch_namespace, per_sample, reduction)


class ACELoss(torch.nn.Module):
    """:func:`ace_loss` as a module, with the constructor of :class:`torch.nn.CTCLoss`.

    Parameters
    ----------
    blank : int
    reduction : {"mean", "sum", "none"}
    zero_infinity : bool
    layout : {"TNC", "NTC", "NHWC"}
        Keyword-only; ``"TNC"`` as for CTC.

    Examples
    --------
    >>> import torch
    >>> from ace_core.integrations.torch import ACELoss
    >>> criterion = ACELoss(blank=0)  # was: torch.nn.CTCLoss(blank=0)
    >>> log_probs = torch.randn(30, 2, 5).log_softmax(2)
    >>> criterion(log_probs, torch.tensor([[1, 2, 2], [3, 4, 0]]), [30, 25], [3, 2]).shape
    torch.Size([])
    """

    def __init__(
        self,
        blank: int = 0,
        reduction: Literal["none", "sum", "mean"] = "mean",
        zero_infinity: bool = False,
        *,
        layout: Layout = "TNC",
    ) -> None:
        super().__init__()
        self.blank, self.reduction, self.zero_infinity, self.layout = blank, reduction, zero_infinity, layout

    def forward(
        self,
        log_probs: Tensor,
        targets: Tensor | None,
        input_lengths: Tensor | Sequence[int] | None = None,
        target_lengths: Tensor | Sequence[int] | None = None,
        *,
        counts: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return ace_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            self.blank,
            self.reduction,
            self.zero_infinity,
            layout=self.layout,
            counts=counts,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}, layout={self.layout!r}"


# --------------------------------------------------------------------------- CTC + ACE


def ctc_with_ace_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int],
    target_lengths: Tensor | Sequence[int],
    blank: int = 0,
    reduction: Literal["none", "sum", "mean"] = "mean",
    zero_infinity: bool = False,
    *,
    ace_weight: float = 0.1,
    layout: Literal["TNC", "NTC"] = "TNC",
) -> Tensor:
    r"""CTC with ACE as an auxiliary loss: ``ctc_loss + ace_weight · ace_loss``.

    .. math:: L = L_{\mathrm{CTC}} + \lambda L_{\mathrm{ACE}}, \quad \lambda = 0.1 \text{ by default}

    PaddleOCR trains with this combination (its ``EnhancedCTCLoss``). Both
    terms take the same arguments and the same ``reduction`` (each with its
    own ``"mean"``: CTC divides by target lengths, ACE does not).
    ``log_probs`` must be log-probabilities, as CTC requires.
    """
    if layout not in ("TNC", "NTC"):
        raise ValueError(f"`layout` must be 'TNC' or 'NTC', got {layout!r}")
    tnc = log_probs if layout == "TNC" else log_probs.transpose(0, 1)
    ctc = torch.nn.functional.ctc_loss(
        tnc, targets, input_lengths, target_lengths, blank, reduction, zero_infinity
    )
    ace = ace_loss(tnc, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
    return ctc + ace_weight * ace


class CTCWithACELoss(torch.nn.Module):
    """:func:`ctc_with_ace_loss` as a module (the constructor of CTCLoss plus ``ace_weight``)."""

    def __init__(
        self,
        blank: int = 0,
        reduction: Literal["none", "sum", "mean"] = "mean",
        zero_infinity: bool = False,
        *,
        ace_weight: float = 0.1,
        layout: Literal["TNC", "NTC"] = "TNC",
    ) -> None:
        super().__init__()
        self.blank, self.reduction, self.zero_infinity = blank, reduction, zero_infinity
        self.ace_weight, self.layout = ace_weight, layout

    def forward(
        self,
        log_probs: Tensor,
        targets: Tensor,
        input_lengths: Tensor | Sequence[int],
        target_lengths: Tensor | Sequence[int],
    ) -> Tensor:
        return ctc_with_ace_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            self.blank,
            self.reduction,
            self.zero_infinity,
            ace_weight=self.ace_weight,
            layout=self.layout,
        )


# --------------------------------------------------------------------------- the blank-prior start


def init_blank_bias_(layer: torch.nn.Module, bias: float, *, blank: int = 0) -> torch.nn.Module:
    """Start an output layer at the labels' class mix: the blank's bias at ``bias``, the others' at 0.

    ``bias`` comes from :func:`ace_core.blank_prior_bias`; with the other
    logits equal, the softmax then starts at :math:`y_\\text{blank} = p`, the
    labels' average blank share. One line after building the model::

        init_blank_bias_(model.head, ace_core.blank_prior_bias(target_lengths=lengths,
                                                               input_lengths=T, num_classes=C))

    Parameters
    ----------
    layer : torch.nn.Module
        The layer that produces the class scores, with a ``bias`` of shape
        ``(C,)`` (``nn.Linear``, a 1×1 ``nn.Conv2d``...). Changed in place.
    bias : float
    blank : int

    Returns
    -------
    torch.nn.Module
        ``layer``, for chaining.
    """
    current = getattr(layer, "bias", None)
    if not isinstance(current, torch.Tensor) or current.ndim != 1:
        raise ValueError(f"`layer` needs a bias of shape (C,), got {type(layer).__name__} without one")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < current.shape[0]:
        raise ValueError(f"`blank` must be a class index in [0, {current.shape[0]}), got {blank!r}")
    if not math.isfinite(float(bias)):
        raise ValueError(f"`bias` must be finite, got {bias!r}")
    with torch.no_grad():
        current.zero_()
        current[blank] = float(bias)
    return layer
