"""The CuPy adapter (GPU only: skipped cleanly without CuPy or a GPU, run wherever there is one)."""

from __future__ import annotations

import numpy as np
import pytest

import ace_core
from ace_core import backend_table

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
    with pytest.raises(ValueError, match="out"):
        ace_loss_and_grad(
            cupy.asarray(scores), cupy.asarray(counts), out=cupy.empty((B, T, C), dtype=cupy.float32)
        )


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
