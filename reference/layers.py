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

from collections.abc import Mapping, Sequence
from typing import Any

import array_api_compat
import numpy as np

from ace_core._typing import Array, ArrayNamespace

from ._array import device_of, from_host, normal_init, pad2d, resolve, uniform_init

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

Cache = Any
Grads = dict[str, Array]


def _ns(*arrays: Array) -> ArrayNamespace:
    return array_api_compat.array_namespace(*arrays)


def _setup(xp: Any, device: Any, dtype: Any) -> tuple[ArrayNamespace, Any, Any]:
    """The namespace, device and dtype object a layer builds its parameters with."""
    xp, device = resolve(xp, device)
    return xp, device, getattr(xp, dtype) if isinstance(dtype, str) else dtype


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _zero(x: Array, xp: ArrayNamespace) -> Array:
    """A 0-d zero of ``x``'s dtype on its device (array operands are portable where scalars may not be)."""
    return xp.zeros((), dtype=x.dtype, device=device_of(x))


def _sigmoid(x: Array, xp: ArrayNamespace) -> Array:
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


def _im2col(x: Array, kh: int, kw: int, stride: int, xp: ArrayNamespace) -> tuple[Array, int, int]:
    """Patches of an already padded NCHW ``x`` as ``(N, C·kh·kw, Ho·Wo)``, channel-major like the weights.

    One strided slice per kernel offset, stacked (k² copies of the output
    size): the array API has no ``as_strided``/``sliding_window_view``, and in
    NumPy this is as fast as those.
    """
    n, c, h, w = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    if kh == kw == 1 and stride == 1:
        return xp.reshape(x, (n, c, h * w)), h, w
    hi, wi = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    patches = [x[:, :, i : i + hi : stride, j : j + wi : stride] for i in range(kh) for j in range(kw)]
    cols = xp.stack(patches, axis=2)  # (N, C, kh·kw, Ho, Wo)
    return xp.reshape(cols, (n, c * kh * kw, ho * wo)), ho, wo


def _dilate(x: Array, stride: int, xp: ArrayNamespace) -> Array:
    """Insert ``stride - 1`` zeros between the rows and between the columns of NCHW ``x``.

    Built by stacking with zeros and reshaping, so no scatter is needed.
    """
    if stride == 1:
        return x
    n, c, h, w = x.shape
    zeros = xp.zeros_like(x)
    x = xp.reshape(xp.stack([x] + [zeros] * (stride - 1), axis=3), (n, c, h * stride, w))
    x = x[:, :, : stride * (h - 1) + 1, :]
    zeros = xp.zeros_like(x)
    x = xp.reshape(xp.stack([x] + [zeros] * (stride - 1), axis=4), (n, c, x.shape[2], w * stride))
    return x[:, :, :, : stride * (w - 1) + 1]


def _col2im(
    dcols: Array, c: int, h: int, w: int, k: int, padding: int, stride: int, xp: ArrayNamespace
) -> Array:
    """The adjoint of :func:`_im2col` (plus padding): patch gradients ``(N, C·k², Ho·Wo)`` → ``(N, C, H, W)``.

    Patch entry ``(i, j)`` of output ``(a, b)`` came from padded pixel
    ``(s·a + i, s·b + j)``, so its gradient goes back there: one shifted,
    zero-padded copy per kernel offset, summed (columns first, then rows). No
    scatter-add, only slices, concatenation and additions.
    """
    n, _, hw = dcols.shape
    ho = (h + 2 * padding - k) // stride + 1
    wo = hw // ho
    dcols = _dilate(xp.reshape(dcols, (n, c * k * k, ho, wo)), stride, xp)
    hd, wd = dcols.shape[2], dcols.shape[3]
    dcols = xp.reshape(dcols, (n, c, k, k, hd, wd))
    dx = None
    for i in range(k):
        row = None
        for j in range(k):
            # offset j lands in columns [j - p, j - p + wd) of the unpadded image (pad2d crops outside)
            term = pad2d(dcols[:, :, i, j, :, :], 0, 0, j - padding, w - (j - padding) - wd, xp)
            row = term if row is None else row + term
        term = pad2d(row, i - padding, h - (i - padding) - hd, 0, 0, xp)
        dx = term if dx is None else dx + term
    return dx


class Conv2d(Layer):
    r"""2D cross-correlation on NCHW input, as im2col + one matmul.

    .. math:: y_{nohw} = b_o + \sum_{c,i,j} W_{ocij}\, x^{pad}_{n,c,sh+i,sw+j}

    The input gradient is ``Wᵀ @ dy`` (the patch gradients) folded back onto the
    image by k² shifted additions (:func:`_col2im`), not a scatter-add. This is
    the same sum as a "full" convolution of ``dy`` with the flipped kernel, but
    measured 1.5–2.5× faster in NumPy: its buffers are C·k² rather than O·k²
    channels deep (and stay below the allocator's mmap threshold).

    Parameters
    ----------
    in_ch, out_ch : int
        Input and output channels.
    kernel : int
        Square kernel size k.
    padding : "same", "valid" or int
        Zero padding on every side; ``"same"`` is ``k // 2`` (odd ``k``), which
        keeps H and W at stride 1. At most ``k - 1``.
    stride : int
    bias : bool
        Whether to add a bias; a convolution followed by batch norm needs none
        (the norm subtracts it again, and Adam would random-walk it).
    input_grad : bool
        ``False`` makes ``backward`` return ``dx = None`` (the first layer of a
        network needs no input gradient; this saves a matmul and the col2im).
    rng : numpy.random.Generator or int, optional
        Host RNG (or seed) for the He-normal weights; the bias starts at 0.
    xp, device, dtype
        Namespace (a module such as ``numpy`` or ``cupy``), device and dtype of the parameters.

    Attributes
    ----------
    params : dict
        ``weight`` (out_ch, in_ch, k, k) and ``bias`` (out_ch,) unless ``bias=False``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        padding: str | int = "same",
        stride: int = 1,
        *,
        bias: bool = True,
        input_grad: bool = True,
        rng: np.random.Generator | int | None = None,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        if padding == "same":
            if kernel % 2 == 0:
                raise ValueError(f"padding='same' needs an odd kernel, got {kernel}")
            padding = kernel // 2
        elif padding == "valid":
            padding = 0
        if not 0 <= int(padding) <= kernel - 1:
            raise ValueError(f"padding must lie in [0, kernel - 1], got {padding}")
        self.kernel, self.padding, self.stride = int(kernel), int(padding), int(stride)
        self.input_grad = input_grad
        xp, device, dtype = _setup(xp, device, dtype)
        fan_in = in_ch * kernel * kernel
        self.params = {
            "weight": normal_init(_rng(rng), (out_ch, in_ch, kernel, kernel), fan_in, xp, device, dtype)
        }
        if bias:
            self.params["bias"] = xp.zeros((out_ch,), dtype=dtype, device=device)

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        w = self.params["weight"]
        xp = _ns(x, w)
        k, p, s = self.kernel, self.padding, self.stride
        out_ch = w.shape[0]
        cols, ho, wo = _im2col(pad2d(x, p, p, p, p, xp), k, k, s, xp)
        # (O, C·k²) @ (N, C·k², Ho·Wo) broadcasts over N: one GEMM per image.
        y = xp.reshape(w, (out_ch, -1)) @ cols
        if "bias" in self.params:
            y = y + xp.reshape(self.params["bias"], (out_ch, 1))
        return xp.reshape(y, (x.shape[0], out_ch, ho, wo)), (cols, tuple(x.shape))

    def backward(self, dy: Array, cache: Cache) -> tuple[Array | None, Grads]:
        cols, (n, c, h, w_in) = cache
        w = self.params["weight"]
        xp = _ns(dy, w)
        k, p, s = self.kernel, self.padding, self.stride
        out_ch = w.shape[0]
        dy2 = xp.reshape(dy, (n, out_ch, -1))
        # Batched matmul then a sum over N: NumPy's tensordot would copy cols to one layout first.
        dw = xp.sum(dy2 @ xp.matrix_transpose(cols), axis=0)
        grads = {"weight": xp.reshape(dw, w.shape)}
        if "bias" in self.params:
            grads["bias"] = xp.sum(dy2, axis=(0, 2))
        if not self.input_grad:
            return None, grads
        dcols = xp.matrix_transpose(xp.reshape(w, (out_ch, -1))) @ dy2  # (N, C·k², Ho·Wo)
        return _col2im(dcols, c, h, w_in, k, p, s, xp), grads


# --------------------------------------------------------------------------- pooling, activations, norm


class MaxPool2d(Layer):
    """Non-overlapping max-pooling over ``kh × kw`` windows of NCHW input (stride = window).

    Rows and columns beyond the last whole window are dropped (their gradient
    is 0), as in ``torch.nn.MaxPool2d``. Ties: the whole gradient goes to the
    *first* maximum of a window in row-major order (torch's choice), never split.

    Each window offset ``(i, j)`` is one strided slice, so the pass is ``kh·kw``
    elementwise operations on the pooled size: an ``argmax`` over a short last
    axis is far slower in NumPy (measured 60 vs 3 ms on 32×16×32×128).
    """

    def __init__(self, kh: int = 2, kw: int | None = None) -> None:
        super().__init__()
        self.kh, self.kw = int(kh), int(kh if kw is None else kw)

    def _offsets(self, x: Array) -> list[Array]:
        """The ``kh·kw`` strided slices ``x[..., i::kh, j::kw]`` cropped to whole windows, row-major."""
        kh, kw = self.kh, self.kw
        hc, wc = x.shape[2] // kh * kh, x.shape[3] // kw * kw
        return [x[:, :, i:hc:kh, j:wc:kw] for i in range(kh) for j in range(kw)]

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        xp = _ns(x)
        slices = self._offsets(x)
        y = slices[0]
        for s in slices[1:]:
            y = xp.maximum(y, s)
        return y, (x, y)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        x, y = cache
        xp = _ns(dy)
        n, c, h, w = x.shape
        ho, wo = y.shape[2], y.shape[3]
        # Hand the gradient to the offsets in row-major order: the first offset equal to the window's
        # maximum takes all of what remains (r·1 and r - r are exact), later ones get 0; the last
        # offset takes the rest, since some offset holds the maximum.
        offsets = self._offsets(x)
        remaining = dy
        parts = []
        for s in offsets[:-1]:
            part = remaining * xp.astype(s == y, dy.dtype)  # a multiply: NumPy's where is ~20x slower
            parts.append(part)
            remaining = remaining - part
        parts.append(remaining)
        # Interleave the offsets back: (N, C, Ho, kh, Wo, kw) is the row-major layout of the windows.
        kh, kw = self.kh, self.kw
        rows = [xp.stack(parts[i * kw : (i + 1) * kw], axis=-1) for i in range(kh)]  # (N, C, Ho, Wo, kw)
        dx = xp.reshape(xp.stack(rows, axis=3), (n, c, ho * kh, wo * kw))
        return pad2d(dx, 0, h - ho * kh, 0, w - wo * kw, xp), {}


class ReLU(Layer):
    """``y = max(x, 0)``; the gradient at exactly 0 is taken as 0."""

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        xp = _ns(x)
        # maximum and a multiply by the mask: NumPy's broadcasting `where` is ~20x slower.
        return xp.maximum(x, _zero(x, xp)), x > 0

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        xp = _ns(dy)
        return dy * xp.astype(cache, dy.dtype), {}


class BatchNorm2d(Layer):
    r"""Batch normalisation over N, H, W per channel, with running statistics for inference.

    .. math:: y = \gamma\,\frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} + \beta

    ``train=True`` normalises with the batch statistics (biased variance) and
    replaces ``buffers`` by ``running ← (1 - momentum)·running + momentum·batch``
    (unbiased variance there, as torch does); ``train=False`` uses the running
    statistics and changes nothing.

    Attributes
    ----------
    params : dict
        ``weight`` (γ, starts at 1) and ``bias`` (β, starts at 0), shape (channels,).
    buffers : dict
        ``running_mean`` (starts at 0) and ``running_var`` (starts at 1).
    """

    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)
        xp, device, dtype = _setup(xp, device, dtype)
        self.params = {
            "weight": xp.ones((channels,), dtype=dtype, device=device),
            "bias": xp.zeros((channels,), dtype=dtype, device=device),
        }
        self.buffers = {
            "running_mean": xp.zeros((channels,), dtype=dtype, device=device),
            "running_var": xp.ones((channels,), dtype=dtype, device=device),
        }

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        gamma, beta = self.params["weight"], self.params["bias"]
        xp = _ns(x, gamma)
        channels = (1, x.shape[1], 1, 1)
        if train:
            mean = xp.mean(x, axis=(0, 2, 3), keepdims=True)
            centred = x - mean
            var = xp.mean(centred * centred, axis=(0, 2, 3), keepdims=True)
            m = x.shape[0] * x.shape[2] * x.shape[3]
            mom = self.momentum
            self.buffers = {
                "running_mean": (1 - mom) * self.buffers["running_mean"] + mom * xp.reshape(mean, (-1,)),
                "running_var": (1 - mom) * self.buffers["running_var"]
                + (mom * m / max(m - 1, 1)) * xp.reshape(var, (-1,)),
            }
        else:
            centred = x - xp.reshape(self.buffers["running_mean"], channels)
            var = xp.reshape(self.buffers["running_var"], channels)
        inv_std = 1 / xp.sqrt(var + self.eps)
        # γ and 1/σ folded into one per-channel scale: two passes over x instead of three.
        y = centred * (inv_std * xp.reshape(gamma, channels)) + xp.reshape(beta, channels)
        return y, (centred, inv_std, train)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        centred, inv_std, train = cache
        gamma = self.params["weight"]
        xp = _ns(dy, gamma)
        axes = (0, 2, 3)
        scale = inv_std * xp.reshape(gamma, (1, -1, 1, 1))
        dy_centred = xp.sum(dy * centred, axis=axes, keepdims=True)  # Σ dy·x̂ / inv_std
        dy_sum = xp.sum(dy, axis=axes, keepdims=True)
        grads = {"weight": xp.reshape(dy_centred * inv_std, (-1,)), "bias": xp.reshape(dy_sum, (-1,))}
        if not train:
            return dy * scale, grads
        # The batch statistics depend on x too: dx = γ/σ · (dy - mean(dy) - x̂ · mean(dy·x̂)).
        m = dy.shape[0] * dy.shape[2] * dy.shape[3]
        projection = centred * (dy_centred * (inv_std * inv_std / m))
        return scale * (dy - dy_sum / m - projection), grads


# --------------------------------------------------------------------------- dense and recurrent


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
        xp, device, dtype = _setup(xp, device, dtype)
        bound = 1 / np.sqrt(in_features)
        self.params = {
            "weight": uniform_init(_rng(rng), (in_features, out_features), bound, xp, device, dtype),
            "bias": xp.zeros((out_features,), dtype=dtype, device=device),
        }

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        w, b = self.params["weight"], self.params["bias"]
        xp = _ns(x, w)
        x2 = xp.reshape(x, (-1, w.shape[0]))
        y = x2 @ w + b
        return xp.reshape(y, (*x.shape[:-1], w.shape[1])), (x2, tuple(x.shape))

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        x2, shape = cache
        w = self.params["weight"]
        xp = _ns(dy, w)
        dy2 = xp.reshape(dy, (-1, w.shape[1]))
        grads = {"weight": xp.matrix_transpose(x2) @ dy2, "bias": xp.sum(dy2, axis=0)}
        return xp.reshape(dy2 @ xp.matrix_transpose(w), shape), grads


class LSTM(Layer):
    r"""Unidirectional LSTM over ``(N, T, D)`` with full backpropagation through time.

    Gates in the order (input, forget, output, cell) so that the three
    sigmoids act on one contiguous slice:

    .. math::
        a_t = x_t W_{ih} + h_{t-1} W_{hh} + b, \quad (i, f, o) = \sigma(a_{t,:3H}),
        \ g = \tanh(a_{t,3H:}), \quad c_t = f c_{t-1} + i g, \quad h_t = o \tanh(c_t)

    The input projection of all steps is one matmul; only ``h @ W_hh`` runs in
    the loop; the outputs are stacked. ``h_0 = c_0 = 0``.

    Parameters
    ----------
    in_features, hidden : int
    rng, xp, device, dtype
        As for :class:`Conv2d`. Weights uniform in ``±1/sqrt(hidden)`` (torch's
        scale); bias 0, except 1 for the forget gate (remember by default).

    Attributes
    ----------
    params : dict
        ``weight_ih`` (D, 4H), ``weight_hh`` (H, 4H), ``bias`` (4H,).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        *,
        rng: np.random.Generator | int | None = None,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        xp, device, dtype = _setup(xp, device, dtype)
        rng = _rng(rng)
        self.hidden = int(hidden)
        bound = 1 / np.sqrt(hidden)
        bias = np.zeros(4 * hidden)
        bias[hidden : 2 * hidden] = 1.0
        self.params = {
            "weight_ih": uniform_init(rng, (in_features, 4 * hidden), bound, xp, device, dtype),
            "weight_hh": uniform_init(rng, (hidden, 4 * hidden), bound, xp, device, dtype),
            "bias": from_host(bias, xp, device, dtype),
        }

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        w_ih, w_hh, b = self.params["weight_ih"], self.params["weight_hh"], self.params["bias"]
        xp = _ns(x, w_ih)
        n, steps, _ = x.shape
        hid = self.hidden
        # Every step's input term in one (N·T, D) @ (D, 4H) matmul.
        projected = xp.reshape(xp.reshape(x, (n * steps, -1)) @ w_ih + b, (n, steps, 4 * hid))
        h = xp.zeros((n, hid), dtype=x.dtype, device=device_of(x))
        c = h
        hs, cs, sigs, gs, tcs = [], [], [], [], []
        for t in range(steps):
            a = projected[:, t, :] + h @ w_hh
            sig = _sigmoid(a[:, : 3 * hid], xp)
            g = xp.tanh(a[:, 3 * hid :])
            c = sig[:, hid : 2 * hid] * c + sig[:, :hid] * g
            tc = xp.tanh(c)
            h = sig[:, 2 * hid :] * tc
            hs.append(h)
            cs.append(c)
            sigs.append(sig)
            gs.append(g)
            tcs.append(tc)
        return xp.stack(hs, axis=1), (x, hs, cs, sigs, gs, tcs)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        x, hs, cs, sigs, gs, tcs = cache
        w_ih, w_hh = self.params["weight_ih"], self.params["weight_hh"]
        xp = _ns(dy, w_ih)
        n, steps, d_in = x.shape
        hid = self.hidden
        zeros = xp.zeros((n, hid), dtype=dy.dtype, device=device_of(dy))
        dh_next, dc_next = zeros, zeros
        w_hh_t = xp.matrix_transpose(w_hh)
        das: list[Array] = [zeros] * steps
        for t in reversed(range(steps)):
            sig, g, tc = sigs[t], gs[t], tcs[t]
            i, f, o = sig[:, :hid], sig[:, hid : 2 * hid], sig[:, 2 * hid :]
            c_prev = cs[t - 1] if t > 0 else zeros
            dh = dy[:, t, :] + dh_next
            dc = dh * o * (1 - tc * tc) + dc_next
            dsig = xp.concat([dc * g, dc * c_prev, dh * tc], axis=-1) * sig * (1 - sig)
            da = xp.concat([dsig, dc * i * (1 - g * g)], axis=-1)
            dc_next = dc * f
            dh_next = da @ w_hh_t
            das[t] = da
        da_all = xp.reshape(xp.stack(das, axis=1), (n * steps, 4 * hid))
        h_prev = xp.reshape(xp.stack([zeros, *hs[:-1]], axis=1), (n * steps, hid))
        x2 = xp.reshape(x, (n * steps, d_in))
        grads = {
            "weight_ih": xp.matrix_transpose(x2) @ da_all,
            "weight_hh": xp.matrix_transpose(h_prev) @ da_all,
            "bias": xp.sum(da_all, axis=0),
        }
        dx = xp.reshape(da_all @ xp.matrix_transpose(w_ih), (n, steps, d_in))
        return dx, grads


class BiLSTM(Layer):
    """Two :class:`LSTM` s, one reading the sequence backwards; outputs concatenated, ``(N, T, 2H)``.

    The reverse direction reads the whole padded sequence from its last step
    (no per-sample lengths), so padding columns feed into it first.

    Attributes
    ----------
    params : dict
        ``forward.<name>`` and ``reverse.<name>`` for the LSTM parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        *,
        rng: np.random.Generator | int | None = None,
        xp: Any = None,
        device: Any = None,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        rng = _rng(rng)
        self.hidden = int(hidden)
        self.directions = {
            name: LSTM(in_features, hidden, rng=rng, xp=xp, device=device, dtype=dtype)
            for name in ("forward", "reverse")
        }

    @property  # type: ignore[override]
    def params(self) -> dict[str, Array]:
        return {f"{d}.{k}": v for d, lstm in self.directions.items() for k, v in lstm.params.items()}

    @params.setter
    def params(self, new: Mapping[str, Array]) -> None:
        if not hasattr(self, "directions"):  # Layer.__init__ sets the empty default
            return
        _distribute(self.directions, new, "params")

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        xp = _ns(x)
        y_fwd, cache_fwd = self.directions["forward"].forward(x, train=train)
        y_rev, cache_rev = self.directions["reverse"].forward(xp.flip(x, axis=1), train=train)
        return xp.concat([y_fwd, xp.flip(y_rev, axis=1)], axis=-1), (cache_fwd, cache_rev)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        xp = _ns(dy)
        hid = self.hidden
        dx_fwd, g_fwd = self.directions["forward"].backward(dy[..., :hid], cache[0])
        dx_rev, g_rev = self.directions["reverse"].backward(xp.flip(dy[..., hid:], axis=1), cache[1])
        grads = {f"forward.{k}": v for k, v in g_fwd.items()} | {f"reverse.{k}": v for k, v in g_rev.items()}
        return dx_fwd + xp.flip(dx_rev, axis=1), grads


# --------------------------------------------------------------------------- reshaping


class ColumnsToSequence(Layer):
    """``(N, C, H, W) → (N, W, C·H)``: each image column becomes one step (channel-major features)."""

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        xp = _ns(x)
        n, c, h, w = x.shape
        return xp.reshape(xp.permute_dims(x, (0, 3, 1, 2)), (n, w, c * h)), tuple(x.shape)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        xp = _ns(dy)
        n, c, h, w = cache
        return xp.permute_dims(xp.reshape(dy, (n, w, c, h)), (0, 2, 3, 1)), {}


class MapToCells(Layer):
    """``(N, C, H, W) → (N, H, W, C)``: class axis last, the layout of 2D ACE."""

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        return _ns(x).permute_dims(x, (0, 2, 3, 1)), None

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        return _ns(dy).permute_dims(dy, (0, 3, 1, 2)), {}


# --------------------------------------------------------------------------- containers


def _distribute(children: Mapping[str, Layer], new: Mapping[str, Array], kind: str) -> None:
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
        _distribute(self.children, new, "params")

    @property  # type: ignore[override]
    def buffers(self) -> dict[str, Array]:
        return {f"{c}.{k}": v for c, layer in self.children.items() for k, v in layer.buffers.items()}

    @buffers.setter
    def buffers(self, new: Mapping[str, Array]) -> None:
        _distribute(self.children, new, "buffers")

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
