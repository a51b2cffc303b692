"""The reference layers: float64 central differences for every backward pass, forwards against
independent NumPy loops, and the layer contract (names, setters, buffers), on numpy and
array_api_strict (which rejects anything outside the array API standard); CuPy skips without a GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _backends import backend_params

from ace_core.reference import layers as L

# The backends the reference must run on unchanged; the conftest `xp`/`backend` fixtures, restricted.
on_backends = pytest.mark.parametrize(
    "xp", backend_params(("numpy", "array_api_strict", "cupy")), indirect=True
)
# Central differences in float64: h = 1e-6 keeps the truncation (h² f''') and rounding
# (eps·|f|/h) errors near 1e-10 and makes crossing a ReLU/max-pool kink unlikely.
STEP = 1e-6
MAX_REL_ERROR = 1e-5
MAX_ENTRIES = 24  # entries of one array probed by finite differences (all of them when fewer)


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``max |a - n| / max |n|``: the error relative to the array's scale (entrywise relative errors
    are meaningless where a gradient entry is near 0). An array whose gradient is below 1e-4 (say a
    bias that a batch norm cancels) is held to an absolute 1e-9 instead, the finite differences' noise."""
    scale = max(float(np.max(np.abs(numeric))), 1e-4)
    return float(np.max(np.abs(analytic - numeric))) / scale


def probe_indices(shape: tuple[int, ...], rng: np.random.Generator, limit: int) -> list[tuple[int, ...]]:
    """All indices of a small array, else a random subset of ``limit``."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= limit else rng.choice(size, limit, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def check_gradients(
    loss: Callable[[dict[str, np.ndarray]], float],
    point: dict[str, np.ndarray],
    analytic: dict[str, np.ndarray],
    *,
    seed: int = 0,
    max_entries: int = MAX_ENTRIES,
) -> dict[str, float]:
    """Central differences of the scalar ``loss(arrays)`` around ``point`` against ``analytic``
    (host arrays, same keys), on a subset of entries; returns the relative error per array."""
    assert set(analytic) == set(point), (sorted(analytic), sorted(point))
    rng = np.random.default_rng(seed)
    errors = {}
    for name, value in point.items():
        indices = probe_indices(value.shape, rng, max_entries)
        numeric = np.empty(len(indices))
        for j, index in enumerate(indices):
            shifted = {}
            for sign in (1, -1):
                moved = value.copy()
                moved[index] += sign * STEP
                shifted[sign] = loss({**point, name: moved})
            numeric[j] = (shifted[1] - shifted[-1]) / (2 * STEP)
        got = np.array([analytic[name][index] for index in indices])
        assert got.shape == numeric.shape
        errors[name] = rel_error(got, numeric)
    worst = max(errors.values())
    assert worst <= MAX_REL_ERROR, f"relative errors {errors}"
    return errors


def layer_gradcheck(layer: L.Layer, x_np: np.ndarray, backend: Any, *, train: bool = True) -> None:
    """Check dx and every parameter gradient of ``layer`` at ``x`` with the loss Σ y·R (R fixed, random)."""
    rng = np.random.default_rng(1)
    params0 = {k: backend.to_numpy(v).copy() for k, v in layer.params.items()}
    y, cache = layer.forward(backend.asarray(x_np), train=train)
    weights = rng.standard_normal(tuple(y.shape))
    dx, grads = layer.backward(backend.asarray(weights), cache)
    assert set(grads) == set(layer.params)
    for k, g in grads.items():
        assert tuple(g.shape) == tuple(layer.params[k].shape) and g.dtype == layer.params[k].dtype
    assert tuple(dx.shape) == x_np.shape

    def loss(arrays: dict[str, np.ndarray]) -> float:
        layer.params = {k: backend.asarray(arrays[k]) for k in params0}
        out, _ = layer.forward(backend.asarray(arrays["x"]), train=train)
        return float(np.sum(backend.to_numpy(out) * weights))

    analytic = {"x": backend.to_numpy(dx)} | {k: backend.to_numpy(g) for k, g in grads.items()}
    check_gradients(loss, {"x": x_np} | params0, analytic)
    layer.params = {k: backend.asarray(v) for k, v in params0.items()}


def conv_loops(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, stride: int) -> np.ndarray:
    """Direct convolution by loops over output positions (the brute force of Conv2d.forward)."""
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    ho = (xp_.shape[2] - k) // stride + 1
    wo = (xp_.shape[3] - k) // stride + 1
    y = np.empty((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp_[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            y[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    return y


def lstm_loops(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Textbook LSTM, gates (i, f, o, g), one step at a time."""
    n, t, _ = x.shape
    hid = w_hh.shape[0]
    h, c = np.zeros((n, hid)), np.zeros((n, hid))
    out = []
    for s in range(t):
        a = x[:, s] @ w_ih + h @ w_hh + b
        i, f, o = (1 / (1 + np.exp(-a[:, k * hid : (k + 1) * hid])) for k in range(3))
        c = f * c + i * np.tanh(a[:, 3 * hid :])
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


F64 = {"dtype": "float64"}


def _kw(backend: Any) -> dict[str, Any]:
    return {"xp": backend.xp, "device": backend.device, **F64}


# --------------------------------------------------------------------------- Conv2d

CONV_CASES = [  # (in, out, kernel, padding, stride, H, W)
    (2, 3, 3, "same", 1, 5, 6),
    (2, 3, 3, 1, 2, 7, 6),
    (1, 2, 5, "valid", 1, 6, 7),
    (3, 2, 1, "same", 1, 3, 4),
    (2, 2, 3, 2, 2, 6, 5),
]


@on_backends
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[2]}p{c[3]}s{c[4]}")
def test_conv2d_forward_matches_loops_and_gradients(backend, case):
    cin, cout, k, pad, stride, h, w = case
    layer = L.Conv2d(cin, cout, k, pad, stride, rng=3, **_kw(backend))
    # a non-zero bias, so that its gradient and broadcast are exercised
    layer.params = layer.params | {"bias": backend.asarray(np.linspace(-0.5, 0.5, cout))}
    x = np.random.default_rng(0).standard_normal((2, cin, h, w))
    y, _ = layer.forward(backend.asarray(x))
    p = layer.padding
    expected = conv_loops(
        x, backend.to_numpy(layer.params["weight"]), backend.to_numpy(layer.params["bias"]), p, stride
    )
    np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=1e-12, atol=1e-12)
    layer_gradcheck(layer, x, backend)


@on_backends
def test_conv2d_without_input_grad(backend):
    layer = L.Conv2d(1, 2, rng=0, input_grad=False, **_kw(backend))
    y, cache = layer.forward(backend.asarray(np.ones((1, 1, 4, 4))))
    dx, grads = layer.backward(backend.asarray(np.ones(tuple(y.shape))), cache)
    assert dx is None and set(grads) == {"weight", "bias"}
    np.testing.assert_allclose(backend.to_numpy(grads["bias"]), [16.0, 16.0])  # Σ dy over 4x4 outputs
    # the centre tap sees all 16 ones of the image, a corner tap the 9 that a one-pixel shift keeps
    np.testing.assert_allclose(backend.to_numpy(grads["weight"])[0, 0, 1, 1], 16.0)
    np.testing.assert_allclose(backend.to_numpy(grads["weight"])[0, 0, 0, 0], 9.0)


@on_backends
def test_conv2d_without_bias(backend):
    layer = L.Conv2d(2, 3, bias=False, rng=1, **_kw(backend))
    assert set(layer.params) == {"weight"}
    x = np.random.default_rng(3).standard_normal((2, 2, 4, 5))
    y, _ = layer.forward(backend.asarray(x))
    expected = conv_loops(x, backend.to_numpy(layer.params["weight"]), np.zeros(3), 1, 1)
    np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=1e-12, atol=1e-12)
    layer_gradcheck(layer, x, backend)


def test_conv2d_rejects_bad_padding():
    with pytest.raises(ValueError, match="odd kernel"):
        L.Conv2d(1, 1, 4)
    with pytest.raises(ValueError, match="padding"):
        L.Conv2d(1, 1, 3, padding=3)


# --------------------------------------------------------------------------- pooling, ReLU, norm


@on_backends
@pytest.mark.parametrize("shape,window", [((2, 3, 4, 6), (2, 2)), ((1, 2, 5, 7), (2, 3))])
def test_maxpool_forward_and_gradients(backend, shape, window):
    layer = L.MaxPool2d(*window)
    x = np.random.default_rng(2).standard_normal(shape)
    y, _ = layer.forward(backend.asarray(x))
    kh, kw = window
    ho, wo = shape[2] // kh, shape[3] // kw
    expected = np.empty((*shape[:2], ho, wo))
    for i in range(ho):
        for j in range(wo):
            expected[:, :, i, j] = x[:, :, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].max(axis=(2, 3))
    np.testing.assert_array_equal(backend.to_numpy(y), expected)
    layer_gradcheck(layer, x, backend)


@on_backends
def test_maxpool_ties_send_the_gradient_to_the_first_maximum(backend):
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 3] = -1.0  # the second window's first entry (row-major) is a tied maximum
    y, cache = L.MaxPool2d(2).forward(backend.asarray(x))
    dx, grads = L.MaxPool2d(2).backward(backend.asarray(np.array([[[[2.0, 3.0]]]])), cache)
    expected = np.zeros((1, 1, 2, 4))
    expected[0, 0, 0, 0], expected[0, 0, 0, 2] = 2.0, 3.0
    np.testing.assert_array_equal(backend.to_numpy(dx), expected)
    assert grads == {}


@on_backends
def test_relu(backend):
    x = np.array([[-2.0, -1e-3, 0.0, 1e-3, 3.0]])
    layer = L.ReLU()
    y, cache = layer.forward(backend.asarray(x))
    np.testing.assert_array_equal(backend.to_numpy(y), np.maximum(x, 0))
    dx, _ = layer.backward(backend.asarray(np.full((1, 5), 5.0)), cache)
    np.testing.assert_array_equal(backend.to_numpy(dx), [[0.0, 0.0, 0.0, 5.0, 5.0]])
    x = np.random.default_rng(4).standard_normal((2, 3, 4))
    layer_gradcheck(layer, x, backend)


@on_backends
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batchnorm_gradients(backend, train):
    layer = L.BatchNorm2d(3, **_kw(backend))
    rng = np.random.default_rng(5)
    layer.params = {"weight": backend.asarray(rng.uniform(0.5, 2, 3)), "bias": backend.asarray([0.1, 0, -1])}
    layer.buffers = {
        "running_mean": backend.asarray([0.3, -0.2, 0]),
        "running_var": backend.asarray([2, 1, 0.5]),
    }
    x = rng.standard_normal((2, 3, 3, 4)) * 2 + 1
    layer_gradcheck(layer, x, backend, train=train)


@on_backends
def test_batchnorm_statistics(backend):
    layer = L.BatchNorm2d(2, momentum=0.25, **_kw(backend))
    x = np.random.default_rng(6).standard_normal((3, 2, 2, 5)) * np.array([1.0, 3.0])[:, None, None] + 2
    y, _ = layer.forward(backend.asarray(x), train=True)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=1e-12, atol=1e-12)
    running = {k: backend.to_numpy(v) for k, v in layer.buffers.items()}
    np.testing.assert_allclose(running["running_mean"], 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(
        running["running_var"], 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12
    )
    y_eval, _ = layer.forward(backend.asarray(x), train=False)
    expected = (x - running["running_mean"][:, None, None]) / np.sqrt(
        running["running_var"][:, None, None] + 1e-5
    )
    np.testing.assert_allclose(backend.to_numpy(y_eval), expected, rtol=1e-12, atol=1e-12)
    # inference leaves the running statistics alone
    for k, v in layer.buffers.items():
        np.testing.assert_array_equal(backend.to_numpy(v), running[k])


# --------------------------------------------------------------------------- dense and recurrent


@on_backends
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (2, 2, 1, 4)])
def test_linear_any_rank(backend, shape):
    layer = L.Linear(4, 5, rng=7, **_kw(backend))
    layer.params = layer.params | {"bias": backend.asarray(np.arange(5.0))}
    x = np.random.default_rng(8).standard_normal(shape)
    y, _ = layer.forward(backend.asarray(x))
    w = backend.to_numpy(layer.params["weight"])
    np.testing.assert_allclose(backend.to_numpy(y), x @ w + np.arange(5.0), rtol=1e-12, atol=1e-12)
    layer_gradcheck(layer, x, backend)


@on_backends
def test_lstm_forward_and_bptt(backend):
    layer = L.LSTM(3, 4, rng=9, **_kw(backend))
    x = np.random.default_rng(10).standard_normal((2, 5, 3))
    y, _ = layer.forward(backend.asarray(x))
    p = {k: backend.to_numpy(v) for k, v in layer.params.items()}
    expected = lstm_loops(x, p["weight_ih"], p["weight_hh"], p["bias"])
    np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=1e-12, atol=1e-12)
    layer_gradcheck(layer, x, backend)


@on_backends
def test_bilstm_forward_and_bptt(backend):
    layer = L.BiLSTM(3, 2, rng=11, **_kw(backend))
    assert sorted(layer.params) == [
        f"{d}.{k}" for d in ("forward", "reverse") for k in ("bias", "weight_hh", "weight_ih")
    ]
    x = np.random.default_rng(12).standard_normal((2, 4, 3))
    y, _ = layer.forward(backend.asarray(x))
    p = {k: backend.to_numpy(v) for k, v in layer.params.items()}
    fwd = lstm_loops(x, p["forward.weight_ih"], p["forward.weight_hh"], p["forward.bias"])
    rev = lstm_loops(x[:, ::-1], p["reverse.weight_ih"], p["reverse.weight_hh"], p["reverse.bias"])[:, ::-1]
    np.testing.assert_allclose(backend.to_numpy(y), np.concatenate([fwd, rev], -1), rtol=1e-12, atol=1e-12)
    layer_gradcheck(layer, x, backend)


# --------------------------------------------------------------------------- reshaping and containers


@on_backends
def test_columns_to_sequence_and_map_to_cells(backend):
    x = np.random.default_rng(13).standard_normal((2, 3, 4, 5))
    y, _ = L.ColumnsToSequence().forward(backend.asarray(x))
    # step w holds column w, channel-major: feature c·H + h
    np.testing.assert_array_equal(backend.to_numpy(y)[1, 4, 2 * 4 + 3], x[1, 2, 3, 4])
    assert tuple(y.shape) == (2, 5, 12)
    cells, _ = L.MapToCells().forward(backend.asarray(x))
    np.testing.assert_array_equal(backend.to_numpy(cells), x.transpose(0, 2, 3, 1))
    layer_gradcheck(L.ColumnsToSequence(), x, backend)
    layer_gradcheck(L.MapToCells(), x, backend)


@on_backends
def test_sequential_composes_and_names(backend):
    net = L.Sequential(
        {
            "conv": L.Conv2d(1, 2, rng=0, **_kw(backend)),
            "norm": L.BatchNorm2d(2, **_kw(backend)),
            "relu": L.ReLU(),
            "pool": L.MaxPool2d(2),
            "cols": L.ColumnsToSequence(),
            "rnn": L.BiLSTM(4, 2, rng=1, **_kw(backend)),
            "out": L.Linear(4, 3, rng=2, **_kw(backend)),
        }
    )
    assert set(net.params) == {
        "conv.weight", "conv.bias", "norm.weight", "norm.bias", "out.weight", "out.bias",
        *(f"rnn.{d}.{k}" for d in ("forward", "reverse") for k in ("weight_ih", "weight_hh", "bias")),
    }  # fmt: skip
    assert set(net.buffers) == {"norm.running_mean", "norm.running_var"}
    x = np.random.default_rng(14).standard_normal((3, 1, 4, 6))
    layer_gradcheck(net, x, backend)
    listed = L.Sequential([L.Linear(2, 2, rng=0, **_kw(backend)), L.ReLU()])
    assert sorted(listed.params) == ["0.bias", "0.weight"]
    with pytest.raises(KeyError, match="missing"):
        listed.params = {"0.weight": listed.params["0.weight"]}
