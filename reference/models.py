"""The two models of the training reference: a CRNN for 1D (line) recognition and an FCN for 2D maps.

Both are a :class:`~ace_core.reference.layers.Sequential` of the reference
layers with flat, dotted parameter names, seeded host-side initialisation and
explicit backward passes, so they train with any array-API library (NumPy on
the CPU, CuPy on a GPU) and the ACE loss of :mod:`ace_core`:

>>> import numpy as np
>>> import ace_core
>>> from ace_core.reference.models import CRNN
>>> model = CRNN(5, height=8, channels=(4, 4, 4), hidden=4)
>>> images = np.zeros((2, 1, 8, 16), dtype=np.float32)
>>> logits, cache = model.forward(images)
>>> logits.shape, model.steps(16)
((2, 4, 5), 4)
>>> counts = ace_core.counts_from_targets(np.array([[1, 2], [3, 3]]), num_classes=5, input_lengths=4)
>>> loss, dlogits = ace_core.ace_loss_and_grad(logits, counts)
>>> grads = model.backward(dlogits, cache)
>>> sorted(grads) == sorted(model.params)
True

A model is rebuilt from its JSON-serialisable ``config`` and a
``state_dict`` of host NumPy arrays (what a checkpoint stores).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ace_core._typing import Array

from ._array import dtype_name, from_host, resolve, to_host
from .layers import (
    BatchNorm2d,
    BiLSTM,
    ColumnsToSequence,
    Conv2d,
    Layer,
    Linear,
    MapToCells,
    MaxPool2d,
    ReLU,
    Sequential,
)

__all__ = ["CRNN", "FCN"]

_NORMS = (None, "batch")


class _Model:
    """What CRNN and FCN share: the network, params/buffers, backward, config and state round trips."""

    kind: ClassVar[str] = ""
    net: Sequential
    config: dict[str, Any]

    def _setup(self, xp: Any, device: Any, dtype: Any) -> None:
        self.xp, self.device = resolve(xp, device)
        self.dtype = getattr(self.xp, dtype) if isinstance(dtype, str) else dtype

    def _conv_block(
        self,
        layers: dict[str, Layer],
        index: int,
        c_in: int,
        c_out: int,
        norm: str | None,
        pool: tuple[int, int] | None,
        rng: Any,
    ) -> None:
        """conv → (batch norm) → (max-pool) → ReLU, named ``conv{i}``, ``norm{i}``, ``pool{i}``, ``relu{i}``.

        Max-pooling and ReLU commute (both are monotone), so pooling first runs
        the ReLU on a map 2–4× smaller: same outputs and gradients, less time.
        """
        kw = {"xp": self.xp, "device": self.device, "dtype": self.dtype}
        # The first layer sees the images, which need no gradient: skip its input-gradient convolution.
        layers[f"conv{index}"] = Conv2d(
            c_in, c_out, 3, bias=norm is None, input_grad=index > 1, rng=rng, **kw
        )
        if norm == "batch":
            layers[f"norm{index}"] = BatchNorm2d(c_out, **kw)
        if pool is not None:
            layers[f"pool{index}"] = MaxPool2d(*pool)
        layers[f"relu{index}"] = ReLU()

    def _set_blank_bias(self, name: str, value: float) -> None:
        """Start the output bias of class 0 (the blank) at ``value``, the others at 0."""
        if value:
            bias = np.zeros(self.num_classes)
            bias[0] = value
            self.params = self.params | {name: from_host(bias, self.xp, self.device, self.dtype)}

    # -- parameters ---------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Array]:
        """Trainable arrays, flat dotted names (``"conv1.weight"``). Assign a whole dict to update."""
        return self.net.params

    @params.setter
    def params(self, new: Mapping[str, Array]) -> None:
        self.net.params = new

    @property
    def buffers(self) -> dict[str, Array]:
        """Non-trained state (batch-norm running statistics); empty without normalisation."""
        return self.net.buffers

    @buffers.setter
    def buffers(self, new: Mapping[str, Array]) -> None:
        self.net.buffers = new

    # -- passes ---------------------------------------------------------------------------------

    def forward(self, images: Array, *, train: bool = True) -> tuple[Array, Any]:
        """``(logits, cache)`` for NCHW ``images``; ``train=False`` uses batch-norm running statistics."""
        return self.net.forward(images, train=train)

    def backward(self, dlogits: Array, cache: Any) -> dict[str, Array]:
        """``{name: dL/dparam}`` (the keys of ``params``) from ``dL/dlogits`` and the forward's cache."""
        _, grads = self.net.backward(dlogits, cache)
        return grads

    # -- checkpoints ----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, xp: Any = None, device: Any = None) -> _Model:
        """A new model built from ``config`` (seeded initialisation; load a state dict to restore weights)."""
        config = dict(config)
        kind = config.pop("model", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"config is for a {kind}, not a {cls.kind}")
        return cls(**config, xp=xp, device=device)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as host NumPy arrays (one flat dict; the names never collide)."""
        return {name: to_host(a) for name, a in (self.params | self.buffers).items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace parameters and buffers by ``state`` (host arrays, e.g. from :meth:`state_dict` or npz).

        Raises ``KeyError`` on missing or unexpected names and ``ValueError`` on a shape mismatch.
        """
        params, buffers = self.params, self.buffers
        expected = set(params) | set(buffers)
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {extra}")
        for name, current in (params | buffers).items():
            if tuple(np.shape(state[name])) != tuple(current.shape):
                raise ValueError(f"{name}: shape {np.shape(state[name])} != {tuple(current.shape)}")

        def load(names: Mapping[str, Array]) -> dict[str, Array]:
            return {k: from_host(state[k], self.xp, self.device, self.dtype) for k in names}

        self.params = load(params)
        if buffers:
            self.buffers = load(buffers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class CRNN(_Model):
    """Convolutional recurrent network: conv stack → image columns → BiLSTM → linear over C classes.

    Each conv block is a 3×3 "same" convolution, (batch norm,) a max-pool and ReLU:
    2×2 after the first two blocks and 2×1 (height only) after the others, so the
    width shrinks by 4 (``steps(width) = width // 4``) and the height by
    ``2 ** len(channels)``. Columns of the last feature map (``channels[-1] · H'``
    features) are the steps of the sequence.

    Parameters
    ----------
    num_classes : int
        C, the blank (class 0) included.
    height : int
        Image height; ``height // 2**len(channels)`` must be at least 1.
    channels : tuple of int
        Output channels of the conv blocks (at least two blocks).
    hidden : int
        LSTM units per direction (``head="bilstm"``).
    head : {"bilstm", "linear"}
        ``"linear"`` maps the column features straight to the classes (no recurrence).
    norm : {None, "batch"}
        Batch normalisation after each convolution (default). Measured on the
        37-class text lines (Adam 1e-3, batch 32): with it the CRNN leaves ACE's
        initial plateau after ~1,000 steps and reads 68% of held-out lines at
        step 2,000; without it the loss is still on the plateau there (0% read).
        It costs ~15-25% of the step time. ``train=False`` uses running statistics.
    init_blank_bias : float
        Initial output bias of the blank class; > 0 starts with the blank dominant.
    seed : int
        Seed of the host RNG that draws every weight.
    xp, device, dtype
        Array namespace (``numpy``, ``cupy``, ...; default NumPy), device and float dtype.

    Attributes
    ----------
    params, buffers : dict
        See :class:`ace_core.reference.layers.Sequential`.
    config : dict
        JSON-serialisable arguments; ``CRNN.from_config(config)`` rebuilds the model.
    """

    kind = "CRNN"

    def __init__(
        self,
        num_classes: int,
        *,
        height: int = 32,
        channels: tuple[int, ...] = (16, 32, 48),
        hidden: int = 64,
        head: str = "bilstm",
        norm: str | None = "batch",
        init_blank_bias: float = 0.0,
        seed: int = 0,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"CRNN needs at least two conv blocks, got channels={channels}")
        if head not in ("bilstm", "linear"):
            raise ValueError(f"head must be 'bilstm' or 'linear', got {head!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        out_height = height
        for _ in channels:
            out_height //= 2
        if out_height < 1:
            raise ValueError(f"height {height} is too small for {len(channels)} halvings")
        self._setup(xp, device, dtype)
        self.num_classes = int(num_classes)
        rng = np.random.default_rng(seed)
        kw = {"xp": self.xp, "device": self.device, "dtype": self.dtype}
        layers: dict[str, Layer] = {}
        c_in = 1
        for i, c_out in enumerate(channels, start=1):
            self._conv_block(layers, i, c_in, c_out, norm, (2, 2 if i <= 2 else 1), rng)
            c_in = c_out
        layers["columns"] = ColumnsToSequence()
        features = channels[-1] * out_height
        if head == "bilstm":
            layers["rnn"] = BiLSTM(features, hidden, rng=rng, **kw)
            features = 2 * hidden
        layers["classifier"] = Linear(features, self.num_classes, rng=rng, **kw)
        self.net = Sequential(layers)
        self._set_blank_bias("classifier.bias", init_blank_bias)
        self.config = {
            "model": self.kind,
            "num_classes": self.num_classes,
            "height": int(height),
            "channels": list(channels),
            "hidden": int(hidden),
            "head": head,
            "norm": norm,
            "init_blank_bias": float(init_blank_bias),
            "seed": int(seed),
            "dtype": dtype_name(self.xp, self.dtype),
        }

    @staticmethod
    def steps(width: int) -> int:
        """T, the sequence length for images ``width`` pixels wide (two 2× width poolings)."""
        return int(width) // 2 // 2

    def forward(self, images: Array, *, train: bool = True) -> tuple[Array, Any]:
        """``(logits (B, T, C), cache)`` for images ``(B, 1, height, W)``, ``T = steps(W)``."""
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != self.config["height"]:
            raise ValueError(
                f"images must have shape (B, 1, {self.config['height']}, W), got {tuple(images.shape)}"
            )
        return self.net.forward(images, train=train)


class FCN(_Model):
    """Fully convolutional network for 2D prediction: conv stack → 1×1 conv to C classes per cell.

    Conv blocks as in :class:`CRNN`, with a 2×2 max-pool after the first two
    only, so the class map is ``map_shape(H, W) = (H // 4, W // 4)``; the
    logits come with the class axis last, ``(B, H', W', C)``, the layout of 2D ACE
    (``T = H'·W'`` cells, flattened row-major by :mod:`ace_core`).

    Parameters
    ----------
    num_classes : int
        C, the blank/background (class 0) included.
    in_channels : int
        Image channels.
    channels : tuple of int
        Output channels of the conv blocks (at least two).
    norm, init_blank_bias, seed, xp, device, dtype
        As for :class:`CRNN`.
    """

    kind = "FCN"

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 1,
        channels: tuple[int, ...] = (32, 64, 64),
        norm: str | None = "batch",
        init_blank_bias: float = 0.0,
        seed: int = 0,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"FCN needs at least two conv blocks, got channels={channels}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        self._setup(xp, device, dtype)
        self.num_classes = int(num_classes)
        rng = np.random.default_rng(seed)
        layers: dict[str, Layer] = {}
        c_in = int(in_channels)
        for i, c_out in enumerate(channels, start=1):
            self._conv_block(layers, i, c_in, c_out, norm, (2, 2) if i <= 2 else None, rng)
            c_in = c_out
        layers["classifier"] = Conv2d(
            c_in, self.num_classes, 1, rng=rng, xp=self.xp, device=self.device, dtype=self.dtype
        )
        layers["cells"] = MapToCells()
        self.net = Sequential(layers)
        self._set_blank_bias("classifier.bias", init_blank_bias)
        self.config = {
            "model": self.kind,
            "num_classes": self.num_classes,
            "in_channels": int(in_channels),
            "channels": list(channels),
            "norm": norm,
            "init_blank_bias": float(init_blank_bias),
            "seed": int(seed),
            "dtype": dtype_name(self.xp, self.dtype),
        }

    @staticmethod
    def map_shape(height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` of the class map for ``height × width`` images (two 2× poolings)."""
        return int(height) // 2 // 2, int(width) // 2 // 2

    def forward(self, images: Array, *, train: bool = True) -> tuple[Array, Any]:
        """``(logits (B, H', W', C), cache)`` for images ``(B, in_channels, H, W)``."""
        if images.ndim != 4 or images.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"images must have shape (B, {self.config['in_channels']}, H, W), got {tuple(images.shape)}"
            )
        return self.net.forward(images, train=train)
