"""Functional optimisers for the training reference: Adam and Adadelta (the paper's), plus clipping.

An optimiser holds only its hyper-parameters. ``init(params)`` makes a state
(a step count and dicts of arrays shaped like ``params``), and
``step(params, grads, state)`` returns *new* parameter and state dicts: no array is
updated in place, so the same code runs on NumPy, CuPy and JAX. ``state_dict``
and ``load_state`` move a state to the host and back bit for bit, so a run
resumed from a checkpoint continues exactly as the uninterrupted one.

>>> import numpy as np
>>> from ace_core.reference.optim import Adam
>>> opt = Adam(lr=0.1)
>>> params = {"w": np.array([1.0, -2.0])}
>>> state = opt.init(params)
>>> params, state = opt.step(params, {"w": np.array([0.5, -0.5])}, state)
>>> params["w"]  # the first Adam step moves each entry by about lr against its gradient's sign
array([ 0.9, -1.9])
>>> state["step"]
1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from ace_core._typing import Array

from ._array import from_host, resolve, to_host

__all__ = ["Adadelta", "Adam", "clip_by_global_norm"]

State = dict[str, Any]


def _check_keys(params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
    if set(params) != set(grads):
        missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        raise KeyError(f"grads do not match params: missing {missing}, unexpected {extra}")


class _Optimizer:
    """Shared state handling: ``slots`` names the per-parameter arrays of the state."""

    slots: tuple[str, ...] = ()

    def init(self, params: Mapping[str, Array]) -> State:
        """A fresh state: ``{"step": 0, slot: {name: zeros_like(param)}}`` for each slot."""
        state: State = {"step": 0}
        for slot in self.slots:
            state[slot] = {
                name: array_api_compat.array_namespace(p).zeros_like(p) for name, p in params.items()
            }
        return state

    def state_dict(self, state: State) -> dict[str, np.ndarray]:
        """The state as flat host arrays: ``"step"`` and ``"<slot>.<param name>"``."""
        flat = {"step": np.asarray(state["step"], dtype=np.int64)}
        for slot in self.slots:
            flat |= {f"{slot}.{name}": to_host(a) for name, a in state[slot].items()}
        return flat

    def load_state(self, flat: Mapping[str, Any], xp: Any = None, device: Any = None) -> State:
        """The inverse of :meth:`state_dict`: arrays of ``xp`` on ``device`` with the stored dtypes."""
        xp, device = resolve(xp, device)
        state: State = {"step": int(np.asarray(flat["step"]))}
        for slot in self.slots:
            prefix = f"{slot}."
            state[slot] = {
                key[len(prefix) :]: from_host(value, xp, device)
                for key, value in flat.items()
                if key.startswith(prefix)
            }
        return state


class Adam(_Optimizer):
    r"""Adam (Kingma & Ba, 2015) with bias correction.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        p_t = p_{t-1} - \text{lr}\,\frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    Parameters
    ----------
    lr : float
        Step size (``step(..., lr=...)`` overrides it, for schedules).
    betas : (float, float)
        Decay rates of the first and second moment estimates.
    eps : float
        Added to the root of the second moment.
    """

    slots = ("m", "v")

    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)

    def step(
        self,
        params: Mapping[str, Array],
        grads: Mapping[str, Array],
        state: State,
        *,
        lr: float | None = None,
    ) -> tuple[dict[str, Array], State]:
        """One update: ``(new_params, new_state)``; the inputs are left unchanged."""
        _check_keys(params, grads)
        lr = self.lr if lr is None else float(lr)
        b1, b2 = self.betas
        t = state["step"] + 1
        correction1, correction2 = 1 - b1**t, 1 - b2**t
        new_params, m_new, v_new = {}, {}, {}
        for name, p in params.items():
            xp = array_api_compat.array_namespace(p)
            g = grads[name]
            m = b1 * state["m"][name] + (1 - b1) * g
            v = b2 * state["v"][name] + (1 - b2) * (g * g)
            new_params[name] = p - lr * (m / correction1) / (xp.sqrt(v / correction2) + self.eps)
            m_new[name], v_new[name] = m, v
        return new_params, {"step": t, "m": m_new, "v": v_new}


class Adadelta(_Optimizer):
    r"""Adadelta (Zeiler, 2012), the optimiser of the ACE paper, in torch's formulation.

    .. math::
        E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g_t^2,\quad
        \Delta_t = \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t,\quad
        E[\Delta^2]_t = \rho E[\Delta^2]_{t-1} + (1-\rho) \Delta_t^2,\quad p_t = p_{t-1} - \text{lr}\,\Delta_t

    Parameters
    ----------
    lr : float
        Scale of the update (1.0 is Zeiler's method).
    rho : float
        Decay rate of both running averages.
    eps : float
        Added inside both roots.
    """

    slots = ("square_avg", "acc_delta")

    def __init__(self, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6) -> None:
        self.lr, self.rho, self.eps = float(lr), float(rho), float(eps)

    def step(
        self,
        params: Mapping[str, Array],
        grads: Mapping[str, Array],
        state: State,
        *,
        lr: float | None = None,
    ) -> tuple[dict[str, Array], State]:
        """One update: ``(new_params, new_state)``; the inputs are left unchanged."""
        _check_keys(params, grads)
        lr = self.lr if lr is None else float(lr)
        rho, eps = self.rho, self.eps
        new_params, sq_new, acc_new = {}, {}, {}
        for name, p in params.items():
            xp = array_api_compat.array_namespace(p)
            g = grads[name]
            square_avg = rho * state["square_avg"][name] + (1 - rho) * (g * g)
            delta = xp.sqrt(state["acc_delta"][name] + eps) / xp.sqrt(square_avg + eps) * g
            acc_new[name] = rho * state["acc_delta"][name] + (1 - rho) * (delta * delta)
            sq_new[name] = square_avg
            new_params[name] = p - lr * delta
        return new_params, {"step": state["step"] + 1, "square_avg": sq_new, "acc_delta": acc_new}


def clip_by_global_norm(grads: Mapping[str, Array], max_norm: float) -> tuple[dict[str, Array], Array]:
    r"""Scale all gradients by ``min(1, max_norm / ‖g‖)``, ``‖g‖ = sqrt(Σ_k Σ g_k²)`` over every array.

    Returns the clipped gradients and the norm before clipping (a 0-d array on
    the gradients' device: no host synchronisation).
    """
    if not grads:
        raise ValueError("no gradients to clip")
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be positive and finite, got {max_norm}")
    arrays = list(grads.values())
    xp = array_api_compat.array_namespace(*arrays)
    norm = xp.sqrt(sum(xp.sum(g * g) for g in arrays))
    limit = xp.asarray(max_norm, dtype=norm.dtype, device=array_api_compat.device(norm))
    scale = limit / xp.maximum(norm, limit)
    return {name: g * scale for name, g in grads.items()}, norm
