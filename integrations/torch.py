"""PyTorch adapter: ACE as a drop-in for ``torch.nn.functional.ctc_loss`` / ``torch.nn.CTCLoss``.

Swap one line::

    loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths)    # before
    loss = ace_loss(log_probs, targets, input_lengths, target_lengths)      # after

The math is :mod:`ace_core`'s: the forward and the closed-form backward run
as two ``torch.library`` custom ops (``ace_core::ace_forward`` and
``ace_core::ace_backward``) tied together with ``register_autograd``. So
autograd keeps no graph through the loss's inner operations and saves no
``(N, T, C)`` tensor besides the input, and ``torch.compile(fullgraph=True)``
treats each half as one opaque node (the input checks still run, on the
concrete tensors inside the op). Counts are built by a third op,
``ace_core::counts_from_targets``.

Importing this module imports torch; ``import ace_core`` never does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

import ace_core
from ace_core.loss import ACEResiduals

__all__ = ["ACELoss", "CTCWithACELoss", "ace_loss", "ctc_with_ace_loss"]

Layout = Literal["TNC", "NTC", "NHWC"]
_LAYOUTS = ("TNC", "NTC", "NHWC")
_REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("ace_core::counts_from_targets", mutates_args=())
def _counts_op(
    targets: Tensor, target_lengths: Tensor, input_lengths: Tensor, num_classes: int, blank: int
) -> Tensor:
    return ace_core.counts_from_targets(
        targets, target_lengths, num_classes=num_classes, input_lengths=input_lengths, blank=blank
    )


@_counts_op.register_fake
def _(targets, target_lengths, input_lengths, num_classes, blank):
    return input_lengths.new_empty((input_lengths.shape[0], num_classes))


@torch.library.custom_op("ace_core::ace_forward", mutates_args=())
def _forward_op(
    scores: Tensor, counts: Tensor, valid: Tensor, zero_infinity: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss, res = ace_core.ace_forward(scores, counts, mask=valid, zero_infinity=zero_infinity)
    # Custom ops may not return their inputs or views of them: ``valid`` stays the
    # caller's, and the 0-d ``drop_value`` is rebuilt from ``zero_infinity``.
    return loss, res.step_max, res.step_log_sum, res.log_mass, res.lengths, res.keep


@_forward_op.register_fake
def _(scores, counts, valid, zero_infinity):
    batch, steps, classes = scores.shape
    accumulate = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    new = scores.new_empty
    return (
        new((batch,)),
        new((batch, steps), dtype=accumulate),
        new((batch, steps), dtype=accumulate),
        new((batch, classes), dtype=accumulate),
        new((batch,), dtype=accumulate),
        new((batch,), dtype=torch.bool),
    )


@torch.library.custom_op("ace_core::ace_backward", mutates_args=())
def _backward_op(
    grad_loss: Tensor,
    scores: Tensor,
    counts: Tensor,
    valid: Tensor,
    step_max: Tensor,
    step_log_sum: Tensor,
    log_mass: Tensor,
    lengths: Tensor,
    keep: Tensor,
    zero_infinity: bool,
) -> Tensor:
    drop_value = lengths.new_full((), 0.0 if zero_infinity else math.nan)
    residuals = ACEResiduals(step_max, step_log_sum, log_mass, valid, lengths, keep, drop_value)
    # Elementwise ops on a transposed (TNC) view keep its strides; the fake
    # kernel must promise one layout, so the gradient is always contiguous.
    return ace_core.ace_backward(grad_loss, scores, counts, residuals).contiguous()


@_backward_op.register_fake
def _(grad_loss, scores, *rest):
    return scores.new_empty(scores.shape)


def _setup_context(ctx, inputs, output):
    scores, counts, valid, ctx.zero_infinity = inputs
    _, *residuals = output
    ctx.save_for_backward(scores, counts, valid, *residuals)


def _backward(ctx, grad_loss, *unused_residual_grads):
    scores, counts, valid, *residuals = ctx.saved_tensors
    grad = _backward_op(grad_loss.contiguous(), scores, counts, valid, *residuals, ctx.zero_infinity)
    return grad, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- the CTC-style call


def _as_lengths(lengths: Tensor | Sequence[int], device: torch.device) -> Tensor:
    # CTC accepts lengths as tuples or CPU tensors next to CUDA log-probs; ACE
    # needs them on the scores' device (a B-element copy, not a host round trip
    # of the scores).
    return torch.as_tensor(lengths, device=device)


def _scores_view(log_probs: Tensor, layout: Layout) -> Tensor:
    """``(N, T, C)`` view of the input (``(N, H·W, C)`` for 2D), no copy for TNC/NTC."""
    if layout not in _LAYOUTS:
        raise ValueError(f"`layout` must be one of {_LAYOUTS}, got {layout!r}")
    expected = 4 if layout == "NHWC" else 3
    if log_probs.dim() != expected:
        raise ValueError(f"layout {layout!r} needs a {expected}D input, got shape {tuple(log_probs.shape)}")
    if layout == "TNC":
        return log_probs.transpose(0, 1)
    if layout == "NHWC":
        batch, height, width, classes = log_probs.shape
        return log_probs.reshape(batch, height * width, classes)
    return log_probs


def ace_loss(
    log_probs: Tensor,
    targets: Tensor | None,
    input_lengths: Tensor | Sequence[int] | None,
    target_lengths: Tensor | Sequence[int] | None,
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
        (``layout="NTC"``) or a 2D map ``(N, H, W, C)`` (``layout="NHWC"``).
        Log-probabilities or raw logits: the softmax inside makes them equal.
        float16/bfloat16 are accumulated in float32.
    targets : Tensor or None
        Padded ``(N, S)`` or concatenated ``(sum(target_lengths),)`` labels,
        as for CTC; ``None`` when ``counts`` is given.
    input_lengths : Tensor, sequence of int, or None
        ``(N,)`` valid steps; ``None`` means all T (and is required to be
        ``None`` for ``NHWC``, which takes ``mask`` instead).
    target_lengths : Tensor, sequence of int, or None
        ``(N,)`` label lengths; ``None`` only with ``counts``.
    blank : int
        The blank class.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` is the batch mean. Unlike CTC's ``"mean"`` it does not
        divide by the target lengths: ACE is already normalised by T.
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

    Examples
    --------
    >>> import torch
    >>> from ace_core.integrations.torch import ace_loss
    >>> log_probs = torch.randn(50, 4, 20).log_softmax(2).requires_grad_()  # (T, N, C)
    >>> targets = torch.randint(1, 20, (4, 10))
    >>> loss = ace_loss(log_probs, targets, [50, 50, 40, 30], [10, 8, 9, 5])
    >>> loss.backward()
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
    scores = _scores_view(log_probs, layout)
    batch, steps, classes = scores.shape
    device = scores.device
    if mask is not None and input_lengths is not None:
        raise ValueError("give either `input_lengths` or `mask`, not both")
    if layout == "NHWC" and input_lengths is not None:
        raise ValueError("a 2D map (layout='NHWC') takes a `mask`, not `input_lengths`")
    if mask is not None:
        valid = mask.reshape(batch, steps).to(device=device, dtype=torch.bool)
        lengths = valid.sum(dim=1)
    else:
        if input_lengths is None:
            lengths = torch.full((batch,), steps, device=device, dtype=torch.long)
        else:
            lengths = _as_lengths(input_lengths, device)
        valid = torch.arange(steps, device=device) < lengths[:, None]
    if counts is None:
        if targets is None or target_lengths is None:
            raise ValueError("give `targets` and `target_lengths`, or `counts`")
        counts = _counts_op(targets.to(device), _as_lengths(target_lengths, device), lengths, classes, blank)
    elif targets is not None:
        raise ValueError("give either `targets` or `counts`, not both")
    per_sample = _forward_op(scores, counts.to(device), valid, zero_infinity)[0]
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / batch


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
