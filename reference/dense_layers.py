"""Dense and reshaping layers of the reference: linear maps, image columns to a sequence, maps to cells."""

from __future__ import annotations

from typing import Any

import numpy as np

from ace_core._typing import Array

from ._array import uniform_init
from .layer_base import (
    Cache,
    Grads,
    Layer,
    generator,
    layer_setup,
    namespace_of,
)

__all__ = ["Linear", "ColumnsToSequence", "MapToCells"]


class Linear(Layer):
    """``y = x @ W + b`` on the last axis of an input of any rank.

    Parameters
    ----------
    in_features, out_features : int
    rng, xp, device, dtype
        As for :class:`Conv2d`. Weights are uniform in ``±1/sqrt(in_features)``
        (torch's default scale), the bias starts at 0.

    Attributes
    ----------
    params : dict
        ``weight`` (in_features, out_features) and ``bias`` (out_features,).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rng: np.random.Generator | int | None = None,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        xp, device, dtype = layer_setup(xp, device, dtype)
        bound = 1 / np.sqrt(in_features)
        self.params = {
            "weight": uniform_init(generator(rng), (in_features, out_features), bound, xp, device, dtype),
            "bias": xp.zeros((out_features,), dtype=dtype, device=device),
        }

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        w, b = self.params["weight"], self.params["bias"]
        xp = namespace_of(x, w)
        x2 = xp.reshape(x, (-1, w.shape[0]))
        y = x2 @ w + b
        return xp.reshape(y, (*x.shape[:-1], w.shape[1])), (x2, tuple(x.shape))

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        x2, shape = cache
        w = self.params["weight"]
        xp = namespace_of(dy, w)
        dy2 = xp.reshape(dy, (-1, w.shape[1]))
        grads = {"weight": xp.matrix_transpose(x2) @ dy2, "bias": xp.sum(dy2, axis=0)}
        return xp.reshape(dy2 @ xp.matrix_transpose(w), shape), grads


class ColumnsToSequence(Layer):
    """``(N, C, H, W) → (N, W, C·H)``: each image column becomes one step (channel-major features)."""

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        xp = namespace_of(x)
        n, c, h, w = x.shape
        return xp.reshape(xp.permute_dims(x, (0, 3, 1, 2)), (n, w, c * h)), tuple(x.shape)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        xp = namespace_of(dy)
        n, c, h, w = cache
        return xp.permute_dims(xp.reshape(dy, (n, w, c, h)), (0, 2, 3, 1)), {}


class MapToCells(Layer):
    """``(N, C, H, W) → (N, H, W, C)``: class axis last, the layout of 2D ACE."""

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        return namespace_of(x).permute_dims(x, (0, 2, 3, 1)), None

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        return namespace_of(dy).permute_dims(dy, (0, 3, 1, 2)), {}


# --------------------------------------------------------------------------- containers
