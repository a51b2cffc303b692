"""The layer contract of the reference (:class:`Layer`), the :class:`Sequential` container and helpers
shared by the layer families (:mod:`.conv_layers`, :mod:`.dense_layers`, :mod:`.recurrent_layers`).

The contract is described in :mod:`ace_core.reference.layers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import array_api_compat
import numpy as np

from ace_core._typing import Array, ArrayNamespace

from ._array import device_of, resolve

__all__ = [
    "Cache",
    "Grads",
    "Layer",
    "Sequential",
    "distribute",
    "generator",
    "layer_setup",
    "namespace_of",
    "scalar_zero",
    "sigmoid",
]

Cache = Any
Grads = dict[str, Array]


def namespace_of(*arrays: Array) -> ArrayNamespace:
    return array_api_compat.array_namespace(*arrays)


def layer_setup(xp: Any, device: Any, dtype: Any) -> tuple[ArrayNamespace, Any, Any]:
    """The namespace, device and dtype object a layer builds its parameters with."""
    xp, device = resolve(xp, device)
    return xp, device, getattr(xp, dtype) if isinstance(dtype, str) else dtype


def generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def scalar_zero(x: Array, xp: ArrayNamespace) -> Array:
    """A 0-d zero of ``x``'s dtype on its device (array operands are portable where scalars may not be)."""
    return xp.zeros((), dtype=x.dtype, device=device_of(x))


def sigmoid(x: Array, xp: ArrayNamespace) -> Array:
    # tanh form: no overflow of exp(-x) for large negative x (warnings are errors in the tests).
    return 0.5 * xp.tanh(0.5 * x) + 0.5


class Layer:
    """Base class: a layer with no parameters and no buffers. Subclasses set ``params`` in ``__init__``."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        """``(y, cache)``; ``train`` matters only for layers that behave differently at inference."""
        raise NotImplementedError

    def backward(self, dy: Array, cache: Cache) -> tuple[Array | None, Grads]:
        """``(dL/dx, {name: dL/dparam})`` from ``dy = dL/dy`` and the forward's ``cache``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


# --------------------------------------------------------------------------- convolution


def distribute(children: Mapping[str, Layer], new: Mapping[str, Array], kind: str) -> None:
    """Split ``{"child.name": array}`` into the children's ``params``/``buffers`` (all keys required)."""
    expected = {f"{c}.{k}" for c, layer in children.items() for k in getattr(layer, kind)}
    if set(new) != expected:
        missing, extra = sorted(expected - set(new)), sorted(set(new) - expected)
        raise KeyError(f"{kind} mismatch: missing {missing}, unexpected {extra}")
    for child, layer in children.items():
        prefix = f"{child}."
        own = {k[len(prefix) :]: v for k, v in new.items() if k.startswith(prefix)}
        if own or getattr(layer, kind):
            setattr(layer, kind, own)


class Sequential(Layer):
    """Layers applied in order; parameter names are prefixed with the child's name.

    Parameters
    ----------
    layers : sequence of layers, or mapping of name to layer
        Children of a list are named ``"0"``, ``"1"``, ...; so ``"0.weight"``
        is the weight of the first layer.

    Notes
    -----
    ``params`` and ``buffers`` are assembled from the children on every read:
    assign a whole new dict to update them (``seq.params = new``), not an entry.
    """

    def __init__(self, layers: Sequence[Layer] | Mapping[str, Layer]) -> None:
        items = layers.items() if isinstance(layers, Mapping) else enumerate(layers)
        self.children: dict[str, Layer] = {str(name): layer for name, layer in items}

    @property  # type: ignore[override]
    def params(self) -> dict[str, Array]:
        return {f"{c}.{k}": v for c, layer in self.children.items() for k, v in layer.params.items()}

    @params.setter
    def params(self, new: Mapping[str, Array]) -> None:
        distribute(self.children, new, "params")

    @property  # type: ignore[override]
    def buffers(self) -> dict[str, Array]:
        return {f"{c}.{k}": v for c, layer in self.children.items() for k, v in layer.buffers.items()}

    @buffers.setter
    def buffers(self, new: Mapping[str, Array]) -> None:
        distribute(self.children, new, "buffers")

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        caches = []
        for layer in self.children.values():
            x, cache = layer.forward(x, train=train)
            caches.append(cache)
        return x, caches

    def backward(self, dy: Array, cache: Cache) -> tuple[Array | None, Grads]:
        grads: Grads = {}
        names = list(self.children)
        for index in reversed(range(len(names))):
            if dy is None:
                raise ValueError(f"layer {names[index + 1]!r} returned no input gradient but is not first")
            dy, own = self.children[names[index]].backward(dy, cache[index])
            grads.update({f"{names[index]}.{k}": v for k, v in own.items()})
        return dy, grads

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({name}): {layer!r}" for name, layer in self.children.items())
        return f"Sequential(\n{inner}\n)"
