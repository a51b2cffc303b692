"""The contract's bad-input rules (docs/contract.rst): bad input gives the named error, names the
argument or the sample, and leaves the inputs as they were; read-only NumPy inputs work.

Every case puts the bad value in sample 1 of 3 (samples 0 and 2 are fine), so
that "sample 1" in the message shows that the right sample was found.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import brute_force
import numpy as np
import pytest
from _backends import backend_params, load_backend, selected_backends
from _helpers import assert_close, assert_unchanged

import ace_core

BATCH, STEPS, CLASSES = 3, 4, 4


def _good_scores() -> np.ndarray:
    return np.random.default_rng(5).normal(size=(BATCH, STEPS, CLASSES))


def _good_counts() -> np.ndarray:
    # Labels [1, 2], [3], [1, 1, 2, 3] with T_b = 4: the blank column holds the rest.
    return brute_force.counts_from_label_lists([[1, 2], [3], [1, 1, 2, 3]], CLASSES, [STEPS] * BATCH)


@dataclasses.dataclass
class BadCall:
    function: Callable[..., Any]
    args: tuple
    kwargs: dict
    error: type[Exception]
    match: str  # a regex the message must contain


def _bad_cases(be) -> dict[str, BadCall]:
    """name → the call, built from NumPy data on backend ``be``."""
    scores, counts = _good_scores(), _good_counts()
    a = be.asarray
    s, c = a(scores), a(counts)
    cases: dict[str, BadCall] = {}

    def add(name, function, args, error, match, **kwargs):
        cases[name] = BadCall(function, args, kwargs, error, match)

    loss = ace_core.ace_loss
    # Shapes and dtypes: the argument is named.
    add("scores_rank_2", loss, (a(scores[:, 0, :]), c), ValueError, "scores")
    add("scores_rank_5", loss, (a(scores[:, None, :, None, :]), c), ValueError, "scores")
    add(
        "scores_integer", loss, (a(np.zeros((BATCH, STEPS, CLASSES), dtype=np.int64)), c), TypeError, "scores"
    )
    add("scores_bool", loss, (a(np.zeros((BATCH, STEPS, CLASSES), dtype=bool)), c), TypeError, "scores")
    add("counts_classes_mismatch", loss, (s, a(counts[:, :3])), ValueError, "counts")
    add("counts_batch_mismatch", loss, (s, a(counts[:2])), ValueError, "counts")
    add("counts_rank_1", loss, (s, a(counts[0])), ValueError, "counts")
    add("counts_bool", loss, (s, a(counts > 0)), TypeError, "counts")
    add("input_lengths_batch_mismatch", loss, (s, c), ValueError, "input_lengths", input_lengths=[4, 4])
    add(
        "input_lengths_array_batch_mismatch",
        loss,
        (s, c),
        ValueError,
        "input_lengths",
        input_lengths=a(np.array([4, 4, 4, 4])),
    )
    add(
        "input_lengths_float",
        loss,
        (s, c),
        TypeError,
        "input_lengths",
        input_lengths=a(np.array([4.0, 4.0, 4.0])),
    )
    add("mask_batch_mismatch", loss, (s, c), ValueError, "mask", mask=a(np.ones((2, STEPS), dtype=bool)))
    add(
        "mask_steps_mismatch",
        loss,
        (s, c),
        ValueError,
        "mask",
        mask=a(np.ones((BATCH, STEPS + 1), dtype=bool)),
    )
    add("mask_not_bool", loss, (s, c), TypeError, "mask", mask=a(np.ones((BATCH, STEPS), dtype=np.int32)))
    add(
        "input_lengths_and_mask",
        loss,
        (s, c),
        ValueError,
        "input_lengths.*mask|mask.*input_lengths",
        input_lengths=[4, 4, 4],
        mask=a(np.ones((BATCH, STEPS), dtype=bool)),
    )
    add(
        "input_lengths_on_2d_scores",
        loss,
        (a(scores.reshape(BATCH, 2, 2, CLASSES)), c),
        ValueError,
        "input_lengths",
        input_lengths=[4, 4, 4],
    )
    add("reduction_unknown", loss, (s, c), ValueError, "reduction", reduction="avg")
    add(
        "reduction_unknown_with_grad",
        ace_core.ace_loss_and_grad,
        (s, c),
        ValueError,
        "reduction",
        reduction="batchmean",
    )
    add(
        "reduction_unknown_regression",
        ace_core.regression_ace_loss,
        (s, c),
        ValueError,
        "reduction",
        reduction="",
    )
    add("reduction_unknown_floor", ace_core.entropy_floor, (c,), ValueError, "reduction", reduction="MEAN")

    # Values: the sample is named.
    fractional = counts.astype(np.float64)
    fractional[1, 0] -= 0.5
    fractional[1, 3] += 0.5
    add("counts_fractional", loss, (s, a(fractional)), ValueError, r"sample 1\b")
    negative = counts.copy()
    negative[1, 0] += 1
    negative[1, 2] -= 1  # the row still sums to T_b, one class is -1
    add("counts_negative", loss, (s, a(negative)), ValueError, r"sample 1\b")
    wrong_sum = counts.copy()
    wrong_sum[1, 0] += 1
    add("counts_sum_not_T_b", loss, (s, a(wrong_sum)), ValueError, r"sample 1\b")
    add("counts_sum_not_T_b_with_lengths", loss, (s, c), ValueError, r"sample 1\b", input_lengths=[4, 3, 4])
    too_long = brute_force.counts_from_label_lists([[1, 2], [1, 2, 3, 1, 2], [3]], CLASSES, [STEPS] * BATCH)
    add("label_longer_than_input", loss, (s, a(too_long)), ValueError, r"sample 1\b")
    add(
        "no_valid_step_by_lengths",
        loss,
        (s, a(brute_force.counts_from_label_lists([[1], [], [2]], CLASSES, [4, 0, 4]))),
        ValueError,
        r"sample 1\b",
        input_lengths=[4, 0, 4],
    )
    empty_mask = np.ones((BATCH, 2, 2), dtype=bool)
    empty_mask[1] = False
    add(
        "no_valid_step_by_mask",
        loss,
        (
            a(scores.reshape(BATCH, 2, 2, CLASSES)),
            a(brute_force.counts_from_label_lists([[1], [], [2]], CLASSES, [4, 0, 4])),
        ),
        ValueError,
        r"sample 1\b",
        mask=a(empty_mask),
    )
    add("input_lengths_above_T", loss, (s, c), ValueError, r"sample 1\b", input_lengths=[4, 5, 4])
    add(
        "input_lengths_negative",
        loss,
        (s, c),
        ValueError,
        r"sample 1\b",
        input_lengths=a(np.array([4, -1, 4])),
    )

    # Targets: the sample is named.
    cft = ace_core.counts_from_targets
    padded = np.array([[1, 2, 0], [3, 0, 0], [1, 1, 2]])
    keep = {"num_classes": CLASSES, "input_lengths": STEPS}
    add("target_is_blank", cft, (a(padded), [2, 2, 3]), ValueError, r"sample 1\b", **keep)
    add(
        "target_is_blank_without_lengths",
        cft,
        (a(np.array([[1, 2], [3, 0], [1, 1]])),),
        ValueError,
        r"sample 1\b",
        **keep,
    )
    add("target_equals_C", cft, (a(np.array([[1, 2], [3, 4], [1, 1]])),), ValueError, r"sample 1\b", **keep)
    add("target_negative", cft, (a(np.array([[1, 2], [-1, 3], [1, 1]])),), ValueError, r"sample 1\b", **keep)
    add(
        "target_is_nonzero_blank",
        cft,
        (a(np.array([[1, 3], [2, 1], [0, 1]])),),
        ValueError,
        r"sample 1\b",
        num_classes=CLASSES,
        input_lengths=STEPS,
        blank=2,
    )
    add(
        "concatenated_target_is_blank",
        cft,
        (a(np.array([1, 2, 3, 0, 1])), a(np.array([2, 2, 1]))),
        ValueError,
        r"sample 1\b",
        **keep,
    )
    add("targets_float", cft, (a(padded.astype(np.float64)),), TypeError, "targets", **keep)
    add("target_lengths_above_S", cft, (a(padded), [2, 4, 3]), ValueError, "target_lengths", **keep)
    add("decode_order_unknown", ace_core.decode_greedy, (s,), ValueError, "order", order="diagonal")

    # Lengths in the forms a caller may try: refused with the argument named, never an IndexError.
    for name, function in (
        ("loss", loss),
        ("loss_and_grad", ace_core.ace_loss_and_grad),
        ("forward", ace_core.ace_forward),
        ("regression", ace_core.regression_ace_loss),
    ):
        add(
            f"{name}_input_lengths_python_float",
            function,
            (s, c),
            TypeError,
            "input_lengths",
            input_lengths=4.0,
        )
        add(
            f"{name}_input_lengths_float_list",
            function,
            (s, c),
            TypeError,
            "input_lengths",
            input_lengths=[4.0, 4.0, 4.0],
        )
        add(
            f"{name}_input_lengths_shape_1_by_B",
            function,
            (s, c),
            ValueError,
            "input_lengths",
            input_lengths=a(np.array([[4, 4, 4]])),
        )
    add("input_lengths_bool", loss, (s, c), TypeError, "input_lengths", input_lengths=True)
    add("input_lengths_string", loss, (s, c), TypeError, "input_lengths", input_lengths="4")
    add("scores_list", loss, (scores.tolist(), c), TypeError, "scores")
    add("counts_list", loss, (s, counts.tolist()), TypeError, "counts")
    add("zero_infinity_not_bool", loss, (s, c), TypeError, "zero_infinity", zero_infinity="yes")
    for name, function in (
        ("decode_greedy", ace_core.decode_greedy),
        ("decode_counts", ace_core.decode_counts),
    ):
        add(
            f"{name}_input_lengths_python_float",
            function,
            (s,),
            TypeError,
            "input_lengths",
            input_lengths=4.0,
        )
        add(
            f"{name}_input_lengths_shape_1_by_B",
            function,
            (s,),
            ValueError,
            "input_lengths",
            input_lengths=a(np.array([[4, 4, 4]])),
        )
        add(
            f"{name}_input_lengths_above_T",
            function,
            (s,),
            ValueError,
            r"sample 1\b",
            input_lengths=[4, 5, 4],
        )
    add(
        "cft_input_lengths_python_float",
        cft,
        (a(padded),),
        TypeError,
        "input_lengths",
        num_classes=CLASSES,
        input_lengths=4.0,
    )
    add(
        "cft_input_lengths_missing",
        cft,
        (a(padded),),
        TypeError,
        "input_lengths",
        num_classes=CLASSES,
        input_lengths=None,
    )
    add(
        "cft_input_lengths_negative",
        cft,
        (a(np.array([[1, 2], [3, 1], [2, 2]])),),
        ValueError,
        r"sample 1\b",
        num_classes=CLASSES,
        input_lengths=[4, -1, 4],
    )
    add("cft_target_lengths_python_float", cft, (a(padded), 2.0), TypeError, "target_lengths", **keep)
    add(
        "cft_blank_float",
        cft,
        (a(np.array([[1, 2], [3, 1], [2, 2]])),),
        TypeError,
        "blank",
        blank=0.0,
        **keep,
    )
    add(
        "cft_blank_out_of_range",
        cft,
        (a(np.array([[1, 2], [3, 1], [2, 2]])),),
        ValueError,
        "blank",
        blank=4,
        **keep,
    )
    add(
        "cft_num_classes_float", cft, (a(padded),), TypeError, "num_classes", num_classes=4.0, input_lengths=4
    )
    objects = np.array([[0, 1, 2, 0], [0, -1, 1, 1], [0, 2, 0, 0]])
    cwb = ace_core.counts_with_background
    add("cwb_negative_object_count", cwb, (a(objects),), ValueError, r"sample 1\b", input_lengths=STEPS)
    add(
        "cwb_fractional_object_count",
        cwb,
        (a(np.array([[0, 1, 2, 0], [0, 0.5, 1, 1], [0, 2, 0, 0]])),),
        ValueError,
        r"sample 1\b",
        input_lengths=STEPS,
    )
    add(
        "cwb_input_lengths_python_float",
        cwb,
        (a(np.abs(objects)),),
        TypeError,
        "input_lengths",
        input_lengths=4.0,
    )
    add(
        "cwb_input_lengths_negative",
        cwb,
        (a(np.abs(objects)),),
        ValueError,
        r"sample 1\b",
        input_lengths=[4, -1, 4],
    )
    add(
        "cwb_background_float",
        cwb,
        (a(np.abs(objects)),),
        TypeError,
        "background",
        input_lengths=STEPS,
        background=0.0,
    )
    add("cwb_bool_object_counts", cwb, (a(objects > 0),), TypeError, "object_counts", input_lengths=STEPS)

    # The halves of the loss.
    forward = ace_core.ace_forward(s, c)[1]
    back = ace_core.ace_backward
    add("backward_residuals_none", back, (a(np.ones(BATCH)), s, c, None), TypeError, "residuals")
    add(
        "backward_residuals_other_batch",
        back,
        (a(np.ones(BATCH)), s, c, ace_core.ace_forward(a(scores[:2]), a(counts[:2]))[1]),
        ValueError,
        "residuals",
    )
    add(
        "backward_grad_output_wrong_length",
        back,
        (a(np.ones(BATCH + 2)), s, c, forward),
        ValueError,
        "grad_output",
    )
    add("backward_grad_output_2d", back, (a(np.ones((BATCH, 1))), s, c, forward), ValueError, "grad_output")
    add(
        "backward_integer_scores",
        back,
        (a(np.ones(BATCH)), a(np.zeros((BATCH, STEPS, CLASSES), dtype=np.int64)), c, forward),
        TypeError,
        "scores",
    )
    add(
        "backward_from_logits_not_bool",
        back,
        (a(np.ones(BATCH)), s, c, forward),
        TypeError,
        "from_logits",
        from_logits="no",
    )

    # Values the regression loss and the floor used to accept.
    negative = counts.copy()
    negative[1, 0] += 1
    negative[1, 2] -= 1
    add(
        "regression_counts_negative",
        ace_core.regression_ace_loss,
        (s, a(negative)),
        ValueError,
        r"sample 1\b",
    )
    wrong_sum = counts.copy()
    wrong_sum[1, 0] += 1
    add(
        "regression_counts_sum_not_T_b",
        ace_core.regression_ace_loss,
        (s, a(wrong_sum)),
        ValueError,
        r"sample 1\b",
    )
    add(
        "regression_and_grad_counts_negative",
        ace_core.regression_ace_loss_and_grad,
        (s, a(negative)),
        ValueError,
        r"sample 1\b",
    )
    floor = ace_core.entropy_floor
    add("entropy_floor_negative", floor, (a(negative),), ValueError, r"sample 1\b")
    with_nan = counts.astype(np.float64)
    with_nan[1, 1] = np.nan
    add("entropy_floor_nan", floor, (a(with_nan),), ValueError, r"sample 1\b")
    with_inf = counts.astype(np.float64)
    with_inf[1, 1] = np.inf
    add("entropy_floor_inf", floor, (a(with_inf),), ValueError, r"sample 1\b")
    add("entropy_floor_bool", floor, (a(counts > 0),), TypeError, "counts")
    add("entropy_floor_rank_1", floor, (a(counts[0]),), ValueError, "counts")

    # Decoders.
    add("decode_greedy_blank_out_of_range", ace_core.decode_greedy, (s,), ValueError, "blank", blank=9)
    add("decode_greedy_blank_float", ace_core.decode_greedy, (s,), TypeError, "blank", blank=0.0)
    add(
        "decode_greedy_collapse_not_bool",
        ace_core.decode_greedy,
        (s,),
        TypeError,
        "collapse_repeats",
        collapse_repeats="no",
    )
    nan_scores = scores.copy()
    nan_scores[1, 2, 3] = np.nan
    add("decode_counts_nan_scores", ace_core.decode_counts, (a(nan_scores),), ValueError, r"sample 1\b")
    inf_probabilities = np.full((BATCH, STEPS, CLASSES), 0.25)
    inf_probabilities[1, 0, 0] = np.inf
    add(
        "decode_counts_inf_probabilities",
        ace_core.decode_counts,
        (a(inf_probabilities),),
        ValueError,
        r"sample 1\b",
        from_logits=False,
    )
    add(
        "decode_greedy_integer_scores",
        ace_core.decode_greedy,
        (a(np.zeros((BATCH, STEPS, CLASSES), dtype=np.int64)),),
        TypeError,
        "scores",
    )

    # Metrics (host-side: the backend's arrays are read).
    ce = ace_core.counting_errors
    add("counting_errors_class_out_of_range", ce, (c, c), ValueError, "classes", classes=[5])
    add("counting_errors_class_negative", ce, (c, c), ValueError, "classes", classes=[-1])
    add("counting_errors_class_float", ce, (c, c), TypeError, "classes", classes=[1.0])
    add("counting_errors_classes_empty", ce, (c, c), ValueError, "classes", classes=[])
    add("counting_errors_shape_mismatch", ce, (c, a(counts[:2])), ValueError, "predicted")
    return cases


BAD_CASE_NAMES = list(_bad_cases(load_backend("numpy")))


def _arrays_in(call: BadCall) -> list[Any]:
    return [v for v in (*call.args, *call.kwargs.values()) if hasattr(v, "shape")]


@pytest.mark.parametrize("case_name", BAD_CASE_NAMES)
def test_bad_input_raises_and_leaves_inputs_unchanged(backend, case_name):
    call = _bad_cases(backend)[case_name]
    before = [backend.to_numpy(x) for x in _arrays_in(call)]
    with pytest.raises(call.error) as info:
        call.function(*call.args, **call.kwargs)
    assert re.search(call.match, str(info.value)), f"message does not name {call.match!r}: {info.value}"
    assert_unchanged(before, [backend.to_numpy(x) for x in _arrays_in(call)])


NUMPY_ONLY = backend_params(("numpy",))  # read-only flags are a NumPy feature


@pytest.mark.parametrize("case_name", BAD_CASE_NAMES)
@pytest.mark.parametrize("numpy_name", NUMPY_ONLY)
def test_bad_input_with_read_only_numpy_arrays(numpy_name, case_name):
    # Read-only arrays must not change the outcome: the same error, not a write failure.
    call = _bad_cases(load_backend(numpy_name))[case_name]
    for array in _arrays_in(call):
        array.flags.writeable = False
    with pytest.raises(call.error, match=call.match):
        call.function(*call.args, **call.kwargs)


ZERO_INFINITY_CASES = [
    "counts_negative",
    "label_longer_than_input",
    "no_valid_step_by_lengths",
    "no_valid_step_by_mask",
]


@pytest.mark.parametrize("case_name", ZERO_INFINITY_CASES)
@pytest.mark.parametrize("function", ["ace_loss", "ace_loss_and_grad", "ace_forward"])
def test_infeasible_sample_raises_in_every_entry_point_unless_zero_infinity(backend, case_name, function):
    call = _bad_cases(backend)[case_name]
    entry = getattr(ace_core, function)
    with pytest.raises(ValueError, match=r"sample 1\b"):
        entry(*call.args, **call.kwargs)
    extra = {} if function == "ace_forward" else {"reduction": "none"}
    result = entry(*call.args, **call.kwargs, zero_infinity=True, **extra)
    per_sample = backend.to_numpy(result[0] if isinstance(result, tuple) else result)
    assert per_sample.shape == (BATCH,)
    assert per_sample[1] == 0
    assert np.all(np.isfinite(per_sample)) and per_sample[0] > 0 and per_sample[2] > 0


@pytest.mark.parametrize(
    "function",
    ["ace_loss", "ace_loss_and_grad", "ace_forward", "regression_ace_loss", "regression_ace_loss_and_grad"],
)
def test_every_loss_entry_point_checks_count_sums(backend, function):
    call = _bad_cases(backend)["counts_sum_not_T_b"]
    with pytest.raises(ValueError, match=r"sample 1\b"):
        getattr(ace_core, function)(*call.args, **call.kwargs)


# ---------------------------------------------------------------------------
# Arrays from two libraries, or on two devices


def _library_pairs() -> list[Any]:
    chosen = selected_backends(("numpy", "torch", "jax", "array_api_strict"))
    pairs = [
        ("numpy", "torch"),
        ("torch", "numpy"),
        ("numpy", "jax"),
        ("jax", "numpy"),
        ("torch", "jax"),
        ("array_api_strict", "numpy"),
    ]
    return [pytest.param(p, id=f"{p[0]}+{p[1]}") for p in pairs if p[0] in chosen and p[1] in chosen]


MIXED_CALLS = [
    "loss_counts",
    "loss_input_lengths",
    "loss_mask",
    "loss_and_grad_counts",
    "regression_counts",
    "backward_grad_output",
    "counts_from_targets_target_lengths",
    "counts_from_targets_input_lengths",
    "counts_from_targets_concatenated_lengths",
    "counts_with_background_input_lengths",
    "decode_greedy_input_lengths",
    "decode_greedy_mask",
    "decode_counts_input_lengths",
]


@pytest.mark.parametrize("call", MIXED_CALLS)
@pytest.mark.parametrize("pair", _library_pairs())
def test_arrays_from_two_libraries_raise_type_error(pair, call):
    # The contract: never a silent copy between libraries (or to the host).
    first, second = load_backend(pair[0]), load_backend(pair[1])
    scores, counts = _good_scores(), _good_counts()
    s, c = first.asarray(scores), first.asarray(counts)
    lengths_other = second.asarray(np.array([4, 4, 4]))
    mask_other = second.asarray(np.ones((BATCH, STEPS), dtype=bool))
    targets = first.asarray(np.array([[1, 2], [3, 1], [2, 2]]))
    calls = {
        "loss_counts": lambda: ace_core.ace_loss(s, second.asarray(counts)),
        "loss_input_lengths": lambda: ace_core.ace_loss(s, c, input_lengths=lengths_other),
        "loss_mask": lambda: ace_core.ace_loss(s, c, mask=mask_other),
        "loss_and_grad_counts": lambda: ace_core.ace_loss_and_grad(s, second.asarray(counts)),
        "regression_counts": lambda: ace_core.regression_ace_loss(s, second.asarray(counts)),
        "backward_grad_output": lambda: ace_core.ace_backward(
            second.asarray(np.ones(BATCH)), s, c, ace_core.ace_forward(s, c)[1]
        ),
        "counts_from_targets_target_lengths": lambda: ace_core.counts_from_targets(
            targets, second.asarray(np.array([2, 1, 2])), num_classes=CLASSES, input_lengths=STEPS
        ),
        "counts_from_targets_input_lengths": lambda: ace_core.counts_from_targets(
            targets, num_classes=CLASSES, input_lengths=lengths_other
        ),
        "counts_from_targets_concatenated_lengths": lambda: ace_core.counts_from_targets(
            first.asarray(np.array([1, 2, 3, 2, 2, 1])),
            second.asarray(np.array([2, 2, 2])),
            num_classes=CLASSES,
            input_lengths=STEPS,
        ),
        "counts_with_background_input_lengths": lambda: ace_core.counts_with_background(
            first.asarray(np.array([[0, 1, 2, 0], [0, 0, 1, 1], [0, 2, 0, 0]])), input_lengths=lengths_other
        ),
        "decode_greedy_input_lengths": lambda: ace_core.decode_greedy(s, input_lengths=lengths_other),
        "decode_greedy_mask": lambda: ace_core.decode_greedy(s, mask=mask_other),
        "decode_counts_input_lengths": lambda: ace_core.decode_counts(s, input_lengths=lengths_other),
    }
    with pytest.raises(TypeError):
        calls[call]()


@pytest.mark.parametrize("pair", _library_pairs())
def test_arrays_from_two_libraries_raise_type_error_with_explicit_xp(pair):
    # Passing xp= says which namespace to use; it must not switch the check off.
    first, second = load_backend(pair[0]), load_backend(pair[1])
    with pytest.raises(TypeError):
        ace_core.ace_loss(first.asarray(_good_scores()), second.asarray(_good_counts()), xp=first.xp)


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_name", selected_backends(("torch:cuda", "jax:gpu", "cupy")))
def test_arrays_on_two_devices_raise(gpu_name):
    # The contract: never a silent copy between devices; counts or input_lengths on another device raise.
    gpu = load_backend(gpu_name)
    scores, counts = _good_scores(), _good_counts()
    lengths = np.array([4, 4, 4])
    if gpu.library == "torch":
        import torch

        other_counts, other_lengths = torch.from_numpy(counts), torch.from_numpy(lengths)  # on the CPU
    elif gpu.library == "jax":
        import jax

        cpu = jax.devices("cpu")[0]
        other_counts, other_lengths = jax.device_put(counts, cpu), jax.device_put(lengths, cpu)
    else:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 2:
            pytest.skip("cupy arrays on two devices need two GPUs")
        with cupy.cuda.Device(1):
            other_counts, other_lengths = cupy.asarray(counts), cupy.asarray(lengths)
    s = gpu.asarray(scores)
    before = gpu.to_numpy(s)
    with pytest.raises((TypeError, ValueError), match="device"):
        ace_core.ace_loss(s, other_counts)
    with pytest.raises((TypeError, ValueError), match="device"):
        ace_core.ace_loss_and_grad(s, gpu.asarray(counts), input_lengths=other_lengths)
    assert_unchanged([before], [gpu.to_numpy(s)])


# ---------------------------------------------------------------------------
# Non-finite scores: nan/inf as arithmetic dictates, never an exception, never clipped


def test_nan_score_gives_nan_loss_for_its_sample_only(backend):
    scores = _good_scores()
    scores[1, 2, 0] = np.nan
    loss = backend.to_numpy(
        ace_core.ace_loss(backend.asarray(scores), backend.asarray(_good_counts()), reduction="none")
    )
    reference = brute_force.ace_per_sample(_good_scores(), _good_counts())
    assert np.isnan(loss[1])
    assert_close(loss[[0, 2]], reference[[0, 2]], rtol=1e-12)
    mean = ace_core.ace_loss(backend.asarray(scores), backend.asarray(_good_counts()))
    assert np.isnan(backend.to_numpy(mean))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy's note on inf - inf
def test_infinite_logit_gives_non_finite_loss(backend):
    scores = _good_scores()
    scores[1, 2, 1] = np.inf
    loss, _ = ace_core.ace_loss_and_grad(
        backend.asarray(scores), backend.asarray(_good_counts()), reduction="none"
    )
    loss = backend.to_numpy(loss)
    assert not np.isfinite(loss[1])
    assert np.all(np.isfinite(loss[[0, 2]]))


def test_needed_class_with_zero_probability_gives_infinite_loss(backend):
    # N_k > 0 but Σ_t y_k = 0: L = -N̄ log 0 = +inf exactly; no epsilon turns it into a big number.
    probabilities = np.full((2, 3, 3), 1 / 3)
    probabilities[1, :, 2] = 0.0
    probabilities[1, :, :2] = 0.5
    counts = np.array([[1, 1, 1], [1, 1, 1]])
    loss = backend.to_numpy(
        ace_core.ace_loss(
            backend.asarray(probabilities), backend.asarray(counts), from_logits=False, reduction="none"
        )
    )
    assert loss[1] == np.inf
    assert_close(loss[0], np.log(3.0), rtol=1e-15)


def test_needed_class_with_minus_infinity_logits_gives_infinite_loss(backend):
    logits = np.zeros((2, 3, 3))
    logits[1, :, 2] = -np.inf
    counts = np.array([[1, 1, 1], [1, 1, 1]])
    loss = backend.to_numpy(
        ace_core.ace_loss(backend.asarray(logits), backend.asarray(counts), reduction="none")
    )
    assert loss[1] == np.inf
    assert_close(loss[0], np.log(3.0), rtol=1e-15)


# ---------------------------------------------------------------------------
# Valid calls: no input changes; read-only NumPy arrays work


def _valid_calls(be) -> dict[str, tuple[Callable[..., Any], tuple, dict]]:
    scores, counts = _good_scores(), _good_counts()
    probabilities = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    s, c, p = be.asarray(scores), be.asarray(counts), be.asarray(probabilities)
    lengths = be.asarray(np.array([4, 3, 4]))
    counts_short = be.asarray(
        brute_force.counts_from_label_lists([[1, 2], [3], [1, 1, 2, 3]], CLASSES, [4, 3, 4])
    )
    mask = be.asarray(np.array([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=bool))
    mask_counts = be.asarray(
        brute_force.counts_from_label_lists([[1, 2], [3], [1, 1, 2]], CLASSES, [3, 4, 3])
    )
    forward = ace_core.ace_forward(s, counts_short, input_lengths=lengths)
    return {
        "ace_loss": (ace_core.ace_loss, (s, counts_short), {"input_lengths": lengths}),
        "ace_loss_mask": (ace_core.ace_loss, (s, mask_counts), {"mask": mask}),
        "ace_loss_and_grad": (ace_core.ace_loss_and_grad, (s, counts_short), {"input_lengths": lengths}),
        "ace_loss_and_grad_probs": (ace_core.ace_loss_and_grad, (p, c), {"from_logits": False}),
        "ace_forward": (ace_core.ace_forward, (s, c), {}),
        "ace_backward": (
            ace_core.ace_backward,
            (be.asarray(np.ones(BATCH)), s, counts_short, forward[1]),
            {},
        ),
        "regression": (ace_core.regression_ace_loss_and_grad, (s, mask_counts), {"mask": mask}),
        "entropy_floor": (ace_core.entropy_floor, (be.asarray(counts.astype(np.float64)),), {}),
        "counts_from_targets": (
            ace_core.counts_from_targets,
            (be.asarray(np.array([[1, 2, 0], [3, 0, 0], [1, 1, 2]])), be.asarray(np.array([2, 1, 3]))),
            {"num_classes": CLASSES, "input_lengths": lengths},
        ),
        "counts_with_background": (
            ace_core.counts_with_background,
            (be.asarray(np.array([[5, 1, 2, 0], [0, 0, 1, 1], [9, 2, 0, 0]])),),
            {"input_lengths": lengths},
        ),
        "decode_greedy": (ace_core.decode_greedy, (s,), {"mask": mask}),
        "decode_counts": (ace_core.decode_counts, (s,), {"input_lengths": lengths}),
    }


VALID_CALL_NAMES = list(_valid_calls(load_backend("numpy")))


def _flatten_results(result: Any, be) -> list[np.ndarray]:
    if isinstance(result, (tuple, list)):
        return [x for item in result for x in _flatten_results(item, be)]
    if hasattr(result, "shape"):
        return [be.to_numpy(result)]
    return [np.asarray(result)] if result is not None else []


@pytest.mark.parametrize("call_name", VALID_CALL_NAMES)
def test_valid_call_leaves_inputs_unchanged(backend, call_name):
    function, args, kwargs = _valid_calls(backend)[call_name]
    arrays = [v for v in (*args, *kwargs.values()) if hasattr(v, "shape")]
    before = [backend.to_numpy(x) for x in arrays]
    function(*args, **kwargs)
    assert_unchanged(before, [backend.to_numpy(x) for x in arrays])


@pytest.mark.parametrize("call_name", VALID_CALL_NAMES)
@pytest.mark.parametrize("numpy_name", NUMPY_ONLY)
def test_read_only_numpy_inputs_work(numpy_name, call_name):
    numpy_backend = load_backend(numpy_name)
    function, args, kwargs = _valid_calls(numpy_backend)[call_name]
    expected = _flatten_results(function(*args, **kwargs), numpy_backend)
    for value in (*args, *kwargs.values()):
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    got = _flatten_results(function(*args, **kwargs), numpy_backend)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert np.array_equal(g, e, equal_nan=g.dtype.kind == "f")


@pytest.mark.parametrize("pair", _library_pairs())
def test_explicit_xp_of_another_library_raises_type_error(pair):
    # Every array from one library but xp= another: named, never an AttributeError from inside.
    first, second = load_backend(pair[0]), load_backend(pair[1])
    scores, counts = first.asarray(_good_scores()), first.asarray(_good_counts())
    before = [first.to_numpy(scores), first.to_numpy(counts)]
    for call in (
        lambda: ace_core.ace_loss(scores, counts, xp=second.xp),
        lambda: ace_core.ace_loss_and_grad(scores, counts, xp=second.xp),
        lambda: ace_core.decode_counts(scores, xp=second.xp),
        lambda: ace_core.entropy_floor(counts, xp=second.xp),
        lambda: ace_core.counts_with_background(counts, input_lengths=STEPS, xp=second.xp),
    ):
        with pytest.raises(TypeError, match="xp"):
            call()
    assert_unchanged(before, [first.to_numpy(scores), first.to_numpy(counts)])


# ---------------------------------------------------------------------------
# Unsigned integers: converted to signed, never wrapped around


def test_unsigned_targets_and_lengths_give_the_signed_result(backend):
    a = backend.asarray
    targets = np.array([[1, 2, 0], [3, 0, 0], [1, 1, 2]])
    target_lengths, input_lengths = np.array([2, 1, 3]), np.array([4, 2, 2])  # sample 2: 3 labels, 2 steps
    expected = brute_force.counts_from_label_lists([[1, 2], [3], [1, 1, 2]], CLASSES, input_lengths)
    assert expected[2, 0] == -1
    unsigned = [a(x, "uint8") for x in (targets, target_lengths, input_lengths)]
    before = [backend.to_numpy(x) for x in unsigned]
    got = ace_core.counts_from_targets(
        unsigned[0], unsigned[1], num_classes=CLASSES, input_lengths=unsigned[2]
    )
    got_np = backend.to_numpy(got)
    assert got_np.dtype.kind == "i"
    np.testing.assert_array_equal(got_np, expected)  # -1, not 255 or 2**64 - 1
    assert_unchanged(before, [backend.to_numpy(x) for x in unsigned])

    objects = np.array([[0, 1, 2, 0], [0, 0, 1, 1], [0, 2, 3, 0]])
    background = backend.to_numpy(
        ace_core.counts_with_background(a(objects, "uint8"), input_lengths=a(np.array([4, 4, 4]), "uint8"))
    )
    np.testing.assert_array_equal(background[:, 0], [1, 2, -1])

    scores, counts = a(_good_scores()), a(_good_counts())
    lengths = np.array([4, 4, 4])
    signed = backend.to_numpy(ace_core.ace_loss(scores, counts, input_lengths=a(lengths), reduction="none"))
    from_unsigned = ace_core.ace_loss(scores, counts, input_lengths=a(lengths, "uint8"), reduction="none")
    np.testing.assert_array_equal(backend.to_numpy(from_unsigned), signed)
    decoded = ace_core.decode_greedy(scores, input_lengths=a(np.array([4, 2, 0]), "uint16"))
    assert decoded == ace_core.decode_greedy(scores, input_lengths=[4, 2, 0])


@pytest.mark.parametrize("numpy_name", NUMPY_ONLY)
def test_unsigned_values_too_large_for_a_signed_integer_raise(numpy_name):
    huge = np.array([4, 2**63 + 3, 4], dtype=np.uint64)
    scores, counts = _good_scores(), _good_counts()
    with pytest.raises(ValueError, match=r"input_lengths.*sample 1\b"):
        ace_core.ace_loss(scores, counts, input_lengths=huge)
    with pytest.raises(ValueError, match=r"target_lengths.*sample 1\b"):
        ace_core.counts_from_targets(np.array([[1, 2]] * 3), huge, num_classes=CLASSES, input_lengths=STEPS)
    assert huge[1] == 2**63 + 3


# ---------------------------------------------------------------------------
# Accepted forms: a Python int, a list or a 0-d array of lengths is one value per sample


def test_lengths_as_int_list_and_zero_d_array_agree(backend):
    scores, counts = backend.asarray(_good_scores()), backend.asarray(_good_counts())
    reference = backend.to_numpy(
        ace_core.ace_loss(scores, counts, input_lengths=backend.asarray(np.array([4] * 3)))
    )
    for form in (4, [4, 4, 4], (4, 4, 4), backend.asarray(np.array(4)), np.int64(4)):
        got = backend.to_numpy(ace_core.ace_loss(scores, counts, input_lengths=form))
        np.testing.assert_array_equal(got, reference)
