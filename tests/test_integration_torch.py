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


@pytest.mark.parametrize("valid_by", ["input_lengths", "mask", "none"])
def test_opcheck_custom_ops(device, valid_by):
    from torch.library import opcheck

    scores = _log_probs(device).detach().transpose(0, 1)
    lengths = torch.tensor(INPUT_LENGTHS, device=device)
    mask = torch.arange(T, device=device) < lengths[:, None]
    input_lengths, mask = {"input_lengths": (lengths, None), "mask": (None, mask), "none": (None, None)}[
        valid_by
    ]
    targets, target_lengths = (
        torch.tensor(TARGETS, device=device),
        torch.tensor(TARGET_LENGTHS, device=device),
    )
    counts_args = (scores, targets, target_lengths, input_lengths, mask, 0)
    opcheck(torch.ops.ace_core.counts_from_targets.default, counts_args)
    counts = torch.ops.ace_core.counts_from_targets.default(*counts_args)
    forward_args = (scores.clone().requires_grad_(), counts, input_lengths, mask, False)
    opcheck(torch.ops.ace_core.ace_forward.default, forward_args)
    residuals = torch.ops.ace_core.ace_forward.default(scores, counts, input_lengths, mask, False)[1:]
    grad_loss = torch.ones(N, dtype=scores.dtype, device=device)
    backward_args = (grad_loss, scores, counts, input_lengths, mask, *residuals, False)
    opcheck(torch.ops.ace_core.ace_backward.default, backward_args)


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


# ----------------------------------------------------------------- the core's checks, through the adapter


def _bad_adapter_calls():
    """name -> (call, error, regex): each goes through the core's checks inside the custom ops."""
    log_probs = _log_probs("cpu")
    targets = torch.tensor(TARGETS)
    counts = torch.tensor(
        brute_force.counts_from_label_lists([[1, 2, 2], [3, 4], [5]], C, INPUT_LENGTHS), dtype=torch.int64
    )
    ntc = log_probs.detach().transpose(0, 1)
    calls = {
        "negative_length_zero_infinity": (
            lambda: ace_loss(
                log_probs, targets, torch.tensor([12, -1, 8]), TARGET_LENGTHS, zero_infinity=True
            ),
            ValueError,
            r"input_lengths.*sample 1\b",
        ),
        "length_above_T": (
            lambda: ace_loss(log_probs, targets, [12, 13, 8], TARGET_LENGTHS),
            ValueError,
            r"input_lengths.*sample 1\b",
        ),
        "length_above_T_zero_infinity": (
            lambda: ace_loss(log_probs, targets, [12, 13, 8], TARGET_LENGTHS, zero_infinity=True),
            ValueError,
            r"input_lengths.*sample 1\b",
        ),
        "mask_T_by_N": (
            lambda: ace_loss(
                log_probs, targets, None, TARGET_LENGTHS, mask=torch.ones(T, N, dtype=torch.bool)
            ),
            ValueError,
            "mask",
        ),
        "mask_float": (
            lambda: ace_loss(log_probs, targets, None, TARGET_LENGTHS, mask=torch.ones(N, T)),
            TypeError,
            "mask",
        ),
        "lengths_python_float": (
            lambda: ace_loss(log_probs, targets, 12.0, TARGET_LENGTHS),
            TypeError,
            "input_lengths",
        ),
        "lengths_float_tensor": (
            lambda: ace_loss(log_probs, targets, torch.tensor([12.0, 10.0, 8.0]), TARGET_LENGTHS),
            TypeError,
            "input_lengths",
        ),
        "lengths_1_by_N": (
            lambda: ace_loss(log_probs, targets, torch.tensor([INPUT_LENGTHS]), TARGET_LENGTHS),
            ValueError,
            "input_lengths",
        ),
        "lengths_numpy": (
            lambda: ace_loss(log_probs, targets, np.array(INPUT_LENGTHS), TARGET_LENGTHS),
            TypeError,
            "input_lengths",
        ),
        "target_lengths_float": (
            lambda: ace_loss(log_probs, targets, INPUT_LENGTHS, [3.0, 2.0, 1.0]),
            TypeError,
            "target_lengths",
        ),
        "blank_float": (
            lambda: ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, blank=0.0),
            TypeError,
            "blank",
        ),
        "blank_out_of_range": (
            lambda: ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, blank=C),
            ValueError,
            "blank",
        ),
        "log_probs_numpy": (
            lambda: ace_loss(log_probs.detach().numpy(), targets, INPUT_LENGTHS, TARGET_LENGTHS),
            TypeError,
            "log_probs",
        ),
        "targets_numpy": (
            lambda: ace_loss(log_probs, np.array(TARGETS), INPUT_LENGTHS, TARGET_LENGTHS),
            TypeError,
            "targets",
        ),
        "targets_list": (
            lambda: ace_loss(log_probs, TARGETS, INPUT_LENGTHS, TARGET_LENGTHS),
            TypeError,
            "targets",
        ),
        "targets_float": (
            lambda: ace_loss(log_probs, targets.double(), INPUT_LENGTHS, TARGET_LENGTHS),
            TypeError,
            "targets",
        ),
        "counts_numpy": (
            lambda: ace_loss(ntc, None, INPUT_LENGTHS, None, layout="NTC", counts=counts.numpy()),
            TypeError,
            "counts",
        ),
        "counts_wrong_sum": (
            lambda: ace_loss(ntc, None, [12, 11, 8], None, layout="NTC", counts=counts),
            ValueError,
            r"sample 1\b",
        ),
        "zero_infinity_not_bool": (
            lambda: ace_loss(log_probs, targets, INPUT_LENGTHS, TARGET_LENGTHS, zero_infinity="yes"),
            TypeError,
            "zero_infinity",
        ),
        "unbatched_lengths_not_0d": (
            lambda: ace_loss(log_probs[:, 0], targets[0], torch.tensor([12]), 3),
            ValueError,
            "input_lengths",
        ),
    }
    return log_probs, calls


@pytest.mark.parametrize("name", list(_bad_adapter_calls()[1]))
def test_adapter_runs_the_core_checks(name):
    log_probs, calls = _bad_adapter_calls()
    call, error, match = calls[name]
    before = log_probs.detach().clone()
    with pytest.raises(error, match=match):
        call()
    assert torch.equal(log_probs.detach(), before)


def test_lengths_as_int_zero_d_tensor_and_unsigned_agree(device):
    log_probs = _log_probs(device)
    targets = torch.tensor(TARGETS, device=device)
    reference = ace_loss(log_probs, targets, [T] * N, TARGET_LENGTHS, reduction="none")
    for form in (T, torch.tensor(T), torch.tensor([T] * N, dtype=torch.uint8), (T,) * N):
        got = ace_loss(
            log_probs, targets, form, torch.tensor(TARGET_LENGTHS, dtype=torch.uint8), reduction="none"
        )
        torch.testing.assert_close(got, reference, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_unbatched_ctc_form(device, reduction):
    # F.ctc_loss takes (T, C) log-probs, (S,) targets and 0-d lengths for one sample; "none" gives 0-d.
    log_probs = _log_probs(device)[:, 0].detach().requires_grad_()
    targets = torch.tensor([1, 2, 2], device=device)
    lengths, target_lengths = torch.tensor(10), torch.tensor(3)
    ctc = torch.nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, reduction=reduction)
    loss = ace_loss(log_probs, targets, lengths, target_lengths, reduction=reduction)
    assert loss.shape == ctc.shape == ()
    loss.backward()
    expected = brute_force.ace_per_sample(
        log_probs.detach().cpu().numpy()[None],
        brute_force.counts_from_label_lists([[1, 2, 2]], C, [10]),
        brute_force.valid_from_lengths([10], T),
    )
    assert loss.item() == pytest.approx(float(expected[0]), rel=1e-12)
    assert log_probs.grad.shape == (T, C) and torch.all(log_probs.grad[10:] == 0)
    same = ace_loss(log_probs, targets, 10, 3, reduction=reduction, layout="NTC")
    assert same.item() == loss.item()


def test_two_dimensional_map_mask_of_wrong_shape_or_dtype_raises():
    logits = torch.zeros(2, 3, 4, C)
    counts = torch.tensor([[9, 1, 2, 0, 0, 0], [5, 0, 0, 2, 1, 0]])
    with pytest.raises(ValueError, match="mask"):
        ace_loss(
            logits, None, None, None, layout="NHWC", counts=counts, mask=torch.ones(2, 4, 3, dtype=torch.bool)
        )
    with pytest.raises(TypeError, match="mask"):
        ace_loss(logits, None, None, None, layout="NHWC", counts=counts, mask=torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="input_lengths"):
        ace_loss(logits, None, [12, 12], None, layout="NHWC", counts=counts)
