"""Convolutional layers of the reference: 2D convolution (im2col + matmul), max-pooling, ReLU, batch norm."""

from __future__ import annotations

from typing import Any

import numpy as np

from ace_core._typing import Array, ArrayNamespace

from ._array import normal_init, pad2d
from .layer_base import (
    Cache,
    Grads,
    Layer,
    generator,
    layer_setup,
    namespace_of,
    scalar_zero,
)

__all__ = ["Conv2d", "MaxPool2d", "ReLU", "BatchNorm2d"]


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
        xp, device, dtype = layer_setup(xp, device, dtype)
        fan_in = in_ch * kernel * kernel
        self.params = {
            "weight": normal_init(generator(rng), (out_ch, in_ch, kernel, kernel), fan_in, xp, device, dtype)
        }
        if bias:
            self.params["bias"] = xp.zeros((out_ch,), dtype=dtype, device=device)

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        w = self.params["weight"]
        xp = namespace_of(x, w)
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
        xp = namespace_of(dy, w)
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
        xp = namespace_of(x)
        slices = self._offsets(x)
        y = slices[0]
        for s in slices[1:]:
            y = xp.maximum(y, s)
        return y, (x, y)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        x, y = cache
        xp = namespace_of(dy)
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
        xp = namespace_of(x)
        # maximum and a multiply by the mask: NumPy's broadcasting `where` is ~20x slower.
        return xp.maximum(x, scalar_zero(x, xp)), x > 0

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        xp = namespace_of(dy)
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
        xp, device, dtype = layer_setup(xp, device, dtype)
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
        xp = namespace_of(x, gamma)
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
        xp = namespace_of(dy, gamma)
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
