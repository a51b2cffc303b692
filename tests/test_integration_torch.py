"""The torch adapter: CTC-compatible call, custom ops, autograd, compile, determinism, half precision."""

from __future__ import annotations

import brute_force
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ace_core.integrations.torch import ACELoss, CTCWithACELoss, ace_loss, ctc_with_ace_loss  # noqa: E402

T, N, C = 12, 3, 6
TARGETS = [[1, 2, 2], [3, 4, 0], [5, 0, 0]]
TARGET_LENGTHS = [3, 2, 1]
INPUT_LENGTHS = [12, 10, 8]


def _devices():
    devices = [pytest.param("cpu", id="cpu")]
    devices.append(
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA device"),
            ],
        )
    )
    return devices


@pytest.fixture(params=_devices())
def device(request):
    return request.param


def _log_probs(device, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, N, C, generator=generator, dtype=torch.float64)
    return logits.log_softmax(2).to(device=device, dtype=dtype).requires_grad_()


def _reference(log_probs_tnc: torch.Tensor, reduction: str = "mean") -> tuple[float, np.ndarray]:
    """Brute-force float64 loss and central-difference gradient, in (T, N, C) layout."""
    scores = log_probs_tnc.detach().double().cpu().numpy().transpose(1, 0, 2)
    valid = brute_force.valid_from_lengths(INPUT_LENGTHS, T)
    labels = [row[:length] for row, length in zip(TARGETS, TARGET_LENGTHS, strict=True)]
    counts = brute_force.counts_from_label_lists(labels, C, INPUT_LENGTHS)

    def loss_of(x):
        return float(brute_force.reduce(brute_force.ace_per_sample(x, counts, valid), reduction))

    grad = brute_force.central_difference(loss_of, scores)
    return loss_of(scores), grad.transpose(1, 0, 2)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ctc_call_matches_brute_force(device, reduction):
    log_probs = _log_probs(device)
    targets = torch.tensor(TARGETS, device=device)
    loss = ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, reduction=reduction)
    loss.backward()
    expected_loss, expected_grad = _reference(log_probs, reduction)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(log_probs.grad.cpu().numpy(), expected_grad, atol=1e-8)


def test_reduction_none_and_concatenated_targets(device):
    log_probs = _log_probs(device)
    padded = ace_loss(log_probs, torch.tensor(TARGETS), INPUT_LENGTHS, TARGET_LENGTHS, reduction="none")
    concatenated = torch.tensor([1, 2, 2, 3, 4, 5])
    flat = ace_loss(
        log_probs, concatenated, torch.tensor(INPUT_LENGTHS), torch.tensor(TARGET_LENGTHS), reduction="none"
    )
    assert padded.shape == (N,)
    torch.testing.assert_close(padded, flat, rtol=0, atol=0)


def test_batch_first_and_counts_inputs_agree(device):
    log_probs = _log_probs(device)
    reference = ace_loss(log_probs, torch.tensor(TARGETS), INPUT_LENGTHS, TARGET_LENGTHS)
    batch_first = log_probs.detach().transpose(0, 1).contiguous()
    ntc = ace_loss(batch_first, torch.tensor(TARGETS), INPUT_LENGTHS, TARGET_LENGTHS, layout="NTC")
    labels = [row[:length] for row, length in zip(TARGETS, TARGET_LENGTHS, strict=True)]
    counts = torch.tensor(brute_force.counts_from_label_lists(labels, C, INPUT_LENGTHS), device=device)
    from_counts = ace_loss(batch_first, None, INPUT_LENGTHS, None, layout="NTC", counts=counts)
    torch.testing.assert_close(ntc, reference.detach(), rtol=0, atol=0)
    torch.testing.assert_close(from_counts, reference.detach(), rtol=0, atol=0)


def test_two_dimensional_map_with_mask(device):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, C, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    mask = torch.ones(2, 3, 4, dtype=torch.bool, device=device)
    mask[1, 2, :] = False  # sample 1 has 8 valid cells
    counts = torch.tensor([[9, 1, 2, 0, 0, 0], [5, 0, 0, 2, 1, 0]], device=device)
    loss = ace_loss(logits, None, None, None, layout="NHWC", counts=counts, mask=mask)
    loss.backward()
    flat = logits.detach().reshape(2, 12, C).cpu().numpy()
    expected = brute_force.ace_per_sample(
        flat, counts.cpu().numpy(), mask.reshape(2, 12).cpu().numpy()
    ).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.all(logits.grad[1, 2] == 0)


def test_gradcheck_float64(device):
    targets = torch.tensor(TARGETS, device=device)
    log_probs = _log_probs(device)
    assert torch.autograd.gradcheck(
        lambda x: ace_loss(x, targets, INPUT_LENGTHS, TARGET_LENGTHS), (log_probs,), eps=1e-6, atol=1e-7
    )


def test_opcheck_custom_ops(device):
    from torch.library import opcheck

    import ace_core

    scores = _log_probs(device).detach().transpose(0, 1)
    lengths = torch.tensor(INPUT_LENGTHS, device=device)
    targets, target_lengths = (
        torch.tensor(TARGETS, device=device),
        torch.tensor(TARGET_LENGTHS, device=device),
    )
    valid = torch.arange(T, device=device) < lengths[:, None]
    counts = ace_core.counts_from_targets(targets, target_lengths, num_classes=C, input_lengths=lengths)
    opcheck(torch.ops.ace_core.counts_from_targets.default, (targets, target_lengths, lengths, C, 0))
    opcheck(torch.ops.ace_core.ace_forward.default, (scores.clone().requires_grad_(), counts, valid, False))
    residuals = torch.ops.ace_core.ace_forward.default(scores, counts, valid, False)[1:]
    grad_loss = torch.ones(N, dtype=scores.dtype, device=device)
    opcheck(torch.ops.ace_core.ace_backward.default, (grad_loss, scores, counts, valid, *residuals, False))


def test_autograd_saves_no_full_size_tensor_besides_the_input(device):
    log_probs = _log_probs(device)
    saved_sizes = []

    def pack(tensor):
        saved_sizes.append((tensor.numel(), tensor.untyped_storage().data_ptr()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ace_loss(log_probs, torch.tensor(TARGETS), INPUT_LENGTHS, TARGET_LENGTHS)
    full_size = [pointer for numel, pointer in saved_sizes if numel >= N * T * C]
    assert full_size == [log_probs.untyped_storage().data_ptr()]


# torch's own inductor passes still call torch.jit.script_method, which warns.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_matches_eager(device, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    targets = torch.tensor(TARGETS, device=device)
    eager_input, compiled_input = _log_probs(device), _log_probs(device)
    eager = ace_loss(eager_input, targets, INPUT_LENGTHS, TARGET_LENGTHS)
    eager.backward()
    compiled = torch.compile(lambda x: ace_loss(x, targets, INPUT_LENGTHS, TARGET_LENGTHS), fullgraph=True)
    loss = compiled(compiled_input)
    loss.backward()
    torch.testing.assert_close(loss, eager.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(compiled_input.grad, eager_input.grad, rtol=1e-12, atol=1e-15)


def test_deterministic_algorithms_and_bitwise_repeatable(device):
    targets = torch.tensor(TARGETS, device=device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            log_probs = _log_probs(device, dtype=torch.float32)
            loss = ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS)
            loss.backward()
            results.append((loss.detach(), log_probs.grad))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_close_to_float32(device, dtype):
    targets = torch.tensor(TARGETS, device=device)
    half, full = _log_probs(device, dtype=dtype), _log_probs(device, dtype=torch.float32)
    half_loss = ace_loss(half, targets, INPUT_LENGTHS, TARGET_LENGTHS)
    full_loss = ace_loss(full, targets, INPUT_LENGTHS, TARGET_LENGTHS)
    half_loss.backward()
    full_loss.backward()
    assert half_loss.dtype == dtype and half.grad.dtype == dtype
    assert torch.isfinite(half.grad).all()
    assert half_loss.float().item() == pytest.approx(full_loss.item(), rel=1e-2)
    torch.testing.assert_close(half.grad.float(), full.grad, rtol=0, atol=1e-2 / N)


def test_module_is_a_drop_in_for_ctc_loss(device):
    log_probs = _log_probs(device)
    args = (log_probs, torch.tensor(TARGETS, device=device), tuple(INPUT_LENGTHS), tuple(TARGET_LENGTHS))
    torch.nn.CTCLoss(blank=0)(*args)  # the same arguments are valid for CTC ...
    module = ACELoss(blank=0)
    assert module(*args).item() == pytest.approx(ace_loss(*args).item(), rel=0)
    assert "blank=0" in repr(module)


def test_zero_infinity_drops_infeasible_samples(device):
    log_probs = _log_probs(device)
    too_long = torch.tensor([[1, 2, 2, 3, 4], [3, 4, 0, 0, 0], [5, 0, 0, 0, 0]])
    input_lengths = [4, 10, 8]  # sample 0: 5 labels in 4 steps
    with pytest.raises(ValueError, match="sample 0"):
        ace_loss(log_probs, too_long, input_lengths, [5, 2, 1])
    loss = ace_loss(log_probs, too_long, input_lengths, [5, 2, 1], reduction="none", zero_infinity=True)
    loss.sum().backward()
    assert loss[0].item() == 0 and torch.all(log_probs.grad[:, 0] == 0)
    assert torch.all(loss[1:] > 0)


def test_ctc_with_ace_is_the_weighted_sum(device):
    log_probs = _log_probs(device)
    args = (log_probs, torch.tensor(TARGETS, device=device), INPUT_LENGTHS, TARGET_LENGTHS)
    ctc = torch.nn.functional.ctc_loss(*args)
    combined = ctc_with_ace_loss(*args, ace_weight=0.25)
    assert combined.item() == pytest.approx(ctc.item() + 0.25 * ace_loss(*args).item(), rel=1e-12)
    assert CTCWithACELoss(ace_weight=0.25)(*args).item() == pytest.approx(combined.item(), rel=0)


def test_bad_calls_name_the_problem():
    log_probs = _log_probs("cpu")
    targets = torch.tensor(TARGETS)
    with pytest.raises(ValueError, match="layout"):
        ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, layout="CTN")
    with pytest.raises(ValueError, match="3D"):
        ace_loss(log_probs[None], targets, INPUT_LENGTHS, TARGET_LENGTHS)
    with pytest.raises(ValueError, match="not both"):
        ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, counts=torch.ones(N, C))
    with pytest.raises(ValueError, match="reduction"):
        ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, reduction="average")
    with pytest.raises(ValueError, match="blank"):
        ace_loss(log_probs, torch.tensor([[0, 1, 1]] * N), INPUT_LENGTHS, [3, 3, 3])
