"""The CuPy adapter (GPU only: skipped cleanly without CuPy or a GPU, run wherever there is one)."""

from __future__ import annotations

import numpy as np
import pytest

import ace_core
from ace_core.bench import backend_table

reason = backend_table.backend("cupy").unusable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(reason is not None, reason=str(reason))]

B, T, C = 3, 9, 5


def _problem():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(B, T, C))
    lengths = np.array([9, 7, 4])
    counts = ace_core.counts_from_targets(
        np.array([[1, 2, 2], [3, 4, 0], [4, 0, 0]]), [3, 2, 1], num_classes=C, input_lengths=lengths
    )
    return scores, counts, lengths


def test_matches_numpy_core():
    import cupy

    from ace_core.integrations.cupy import ace_loss_and_grad

    scores, counts, lengths = _problem()
    expected_loss, expected_grad = ace_core.ace_loss_and_grad(scores, counts, input_lengths=lengths)
    loss, grad = ace_loss_and_grad(
        cupy.asarray(scores), cupy.asarray(counts), input_lengths=cupy.asarray(lengths)
    )
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-12)
    np.testing.assert_allclose(grad.get(), expected_grad, rtol=1e-10, atol=1e-14)


def test_out_buffer_and_stream():
    import cupy

    from ace_core.integrations.cupy import ace_loss_and_grad

    scores, counts, lengths = _problem()
    out = cupy.empty((B, T, C))
    stream = cupy.cuda.Stream(non_blocking=True)
    _, grad = ace_loss_and_grad(
        cupy.asarray(scores),
        cupy.asarray(counts),
        input_lengths=cupy.asarray(lengths),
        out=out,
        stream=stream,
    )
    stream.synchronize()
    assert grad is out
    _, expected = ace_core.ace_loss_and_grad(scores, counts, input_lengths=lengths)
    np.testing.assert_allclose(out.get(), expected, rtol=1e-10, atol=1e-14)


# float16/bfloat16 accumulate in float32, so the core copies their gradient into `out` once.
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out_is_written_by_the_kernel_without_a_copy(monkeypatch, dtype):
    import cupy

    from ace_core.integrations import cupy as adapter

    scores, counts, lengths = _problem()
    lengths = np.array([9, 0, 4])  # an infeasible sample: its gradient is masked in place
    counts[1] = 0
    device_scores = cupy.asarray(scores.astype(dtype))
    before = device_scores.copy()
    out = cupy.full((B, T, C), 7, dtype=dtype)

    def no_copy(*args, **kwargs):
        raise AssertionError("the gradient was copied into `out`")

    monkeypatch.setattr(cupy, "copyto", no_copy)
    loss, grad = adapter.ace_loss_and_grad(
        device_scores,
        cupy.asarray(counts),
        input_lengths=cupy.asarray(lengths),
        reduction="none",
        zero_infinity=True,
        out=out,
    )
    monkeypatch.undo()
    assert grad is out
    want_loss, want_grad = ace_core.ace_loss_and_grad(
        scores.astype(dtype).astype(np.float64),
        counts,
        input_lengths=lengths,
        reduction="none",
        zero_infinity=True,
    )
    rtol = {"float32": 1e-5, "float64": 1e-10}[dtype]
    np.testing.assert_allclose(loss.get().astype(np.float64), want_loss, rtol=rtol, atol=1e-4)
    np.testing.assert_allclose(out.get().astype(np.float64), want_grad, rtol=rtol, atol=1e-3)
    assert np.all(out.get()[1] == 0)
    assert cupy.array_equal(device_scores, before)


def test_bad_out_buffers_raise_and_change_nothing():
    import cupy

    from ace_core.integrations.cupy import ace_loss_and_grad

    scores, counts, lengths = _problem()
    device_scores = cupy.asarray(scores)
    cases = [
        (TypeError, cupy.empty((B, T, C), dtype=cupy.float32)),  # dtype
        (ValueError, cupy.empty((B, T, C + 1))),  # shape
        (ValueError, cupy.empty((B, C, T)).transpose(0, 2, 1)),  # not C-contiguous
        (ValueError, device_scores),  # overlaps the scores
        (TypeError, np.empty((B, T, C))),  # on the host
    ]
    for error, out in cases:
        snapshot = out.copy()
        with pytest.raises(error, match="out|GPU"):
            ace_loss_and_grad(
                device_scores, cupy.asarray(counts), input_lengths=cupy.asarray(lengths), out=out
            )
        assert (out == snapshot).all()
    assert np.array_equal(device_scores.get(), scores)


def test_torch_cuda_tensors_are_viewed_without_a_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    from ace_core.integrations.cupy import ace_loss_and_grad, as_cupy

    scores, counts, lengths = _problem()
    tensor = torch.tensor(scores, device="cuda")
    assert as_cupy(tensor).data.ptr == tensor.data_ptr()
    loss, grad = ace_loss_and_grad(
        tensor, torch.tensor(counts, device="cuda"), input_lengths=torch.tensor(lengths, device="cuda")
    )
    _, expected = ace_core.ace_loss_and_grad(scores, counts, input_lengths=lengths)
    np.testing.assert_allclose(torch.from_dlpack(grad).cpu().numpy(), expected, rtol=1e-10, atol=1e-14)


def test_host_arrays_are_refused():
    from ace_core.integrations.cupy import as_cupy

    with pytest.raises(TypeError, match="GPU"):
        as_cupy(np.zeros(3))
