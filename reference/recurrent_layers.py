"""Recurrent layers of the reference: LSTM and bidirectional LSTM with backpropagation through time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ace_core._typing import Array

from ._array import device_of, from_host, uniform_init
from .layer_base import (
    Cache,
    Grads,
    Layer,
    distribute,
    generator,
    layer_setup,
    namespace_of,
    sigmoid,
)

__all__ = ["LSTM", "BiLSTM"]


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
        xp, device, dtype = layer_setup(xp, device, dtype)
        rng = generator(rng)
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
        xp = namespace_of(x, w_ih)
        n, steps, _ = x.shape
        hid = self.hidden
        # Every step's input term in one (N·T, D) @ (D, 4H) matmul.
        projected = xp.reshape(xp.reshape(x, (n * steps, -1)) @ w_ih + b, (n, steps, 4 * hid))
        h = xp.zeros((n, hid), dtype=x.dtype, device=device_of(x))
        c = h
        hs, cs, sigs, gs, tcs = [], [], [], [], []
        for t in range(steps):
            a = projected[:, t, :] + h @ w_hh
            sig = sigmoid(a[:, : 3 * hid], xp)
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
        xp = namespace_of(dy, w_ih)
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
        rng = generator(rng)
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
        distribute(self.directions, new, "params")

    def forward(self, x: Array, *, train: bool = True) -> tuple[Array, Cache]:
        xp = namespace_of(x)
        y_fwd, cache_fwd = self.directions["forward"].forward(x, train=train)
        y_rev, cache_rev = self.directions["reverse"].forward(xp.flip(x, axis=1), train=train)
        return xp.concat([y_fwd, xp.flip(y_rev, axis=1)], axis=-1), (cache_fwd, cache_rev)

    def backward(self, dy: Array, cache: Cache) -> tuple[Array, Grads]:
        xp = namespace_of(dy)
        hid = self.hidden
        dx_fwd, g_fwd = self.directions["forward"].backward(dy[..., :hid], cache[0])
        dx_rev, g_rev = self.directions["reverse"].backward(xp.flip(dy[..., hid:], axis=1), cache[1])
        grads = {f"forward.{k}": v for k, v in g_fwd.items()} | {f"reverse.{k}": v for k, v in g_rev.items()}
        return dx_fwd + xp.flip(dx_rev, axis=1), grads


# --------------------------------------------------------------------------- reshaping
