"""Neural-network layers with explicit forward and backward passes, written with the array API.

The same code trains on NumPy (CPU) and CuPy (GPU) and runs on array-api-strict,
JAX and torch: only standard functions, explicit ``dtype=``/``device=``, no
scatter, no in-place updates. Every layer follows one contract:

- ``params``: ``dict[str, Array]`` (possibly empty). Replace the whole dict to
  update a layer (``layer.params = new_params``); the optimisers in
  :mod:`ace_core.reference.optim` return new dicts and never mutate arrays.
- ``buffers``: ``dict[str, Array]`` of non-trained state (batch-norm running
  statistics); empty for every other layer.
- ``forward(x, *, train=True) -> (y, cache)``: ``cache`` holds what the
  backward pass needs. Nothing changes in the layer, except that
  :class:`BatchNorm2d` replaces its running statistics when ``train=True``.
- ``backward(dy, cache) -> (dx, grads)``: ``grads`` has the keys of ``params``.

Shapes: images are NCHW; sequences are ``(N, T, D)``. Parameters are drawn on
the host with a NumPy ``Generator`` (pass ``rng=`` a seed or a generator) and
moved to ``device`` once.

Examples
--------
>>> import numpy as np
>>> from ace_core.reference.layers import Conv2d, MaxPool2d, ReLU, Sequential
>>> net = Sequential([Conv2d(1, 4, rng=0, dtype="float64"), ReLU(), MaxPool2d(2, 2)])
>>> sorted(net.params)
['0.bias', '0.weight']
>>> y, cache = net.forward(np.ones((2, 1, 6, 8)))
>>> y.shape
(2, 4, 3, 4)
>>> dx, grads = net.backward(np.ones_like(y), cache)
>>> dx.shape, grads["0.weight"].shape
((2, 1, 6, 8), (4, 1, 3, 3))
"""

from __future__ import annotations

from .conv_layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU
from .dense_layers import ColumnsToSequence, Linear, MapToCells
from .layer_base import Layer, Sequential
from .recurrent_layers import LSTM, BiLSTM

__all__ = [
    "BatchNorm2d",
    "BiLSTM",
    "ColumnsToSequence",
    "Conv2d",
    "LSTM",
    "Layer",
    "Linear",
    "MapToCells",
    "MaxPool2d",
    "ReLU",
    "Sequential",
]
