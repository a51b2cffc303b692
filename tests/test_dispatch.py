"""The dispatch point: a library's fast path replaces a generic kernel function, the rest falls back."""

from __future__ import annotations

import importlib
import sys
import types

import array_api_compat.numpy as np_compat
import numpy as np
import pytest

import ace_core
from ace_core import _dispatch, _kernel


@pytest.fixture
def fresh_dispatch():
    _dispatch._kernel_for_library.cache_clear()
    yield
    _dispatch._kernel_for_library.cache_clear()


def test_without_fast_path_every_function_is_generic(fresh_dispatch, monkeypatch):
    monkeypatch.setitem(sys.modules, "ace_core.backends.numpy", None)  # import fails: no module
    kernel = _dispatch.kernel_for(np_compat)
    for name in _dispatch.KERNEL_FUNCTIONS:
        assert getattr(kernel, name) is getattr(_kernel, name)


def test_fast_path_function_is_used_and_others_fall_back(fresh_dispatch, monkeypatch):
    calls = []

    def forward_logits(xp, scores, valid, dtype):
        calls.append(scores.shape)
        return _kernel.forward_logits(xp, scores, valid, dtype)

    fake = types.ModuleType("ace_core.backends.numpy")
    fake.forward_logits = forward_logits
    fake.forward_backward_logits = _kernel.forward_backward_logits
    monkeypatch.setitem(sys.modules, "ace_core.backends.numpy", fake)
    kernel = _dispatch.kernel_for(np_compat)
    assert kernel.library == "numpy"
    assert kernel.forward_logits is forward_logits
    assert kernel.backward_logits is _kernel.backward_logits
    assert kernel.forward_probs is _kernel.forward_probs

    scores = np.zeros((2, 3, 4))
    counts = np.array([[3, 0, 0, 0], [1, 1, 1, 0]])
    ace_core.ace_loss(scores, counts)
    assert calls == [(2, 3, 4)]


@pytest.mark.parametrize(
    ("module", "expected"),
    [("array_api_compat.numpy", "numpy"), ("array_api_strict", "array_api_strict")],
)
def test_library_name(module, expected):
    xp = pytest.importorskip(module)
    assert _dispatch.library_name(xp) == expected


def test_a_fast_half_without_the_fused_function_is_refused(fresh_dispatch, monkeypatch):
    # ace_loss_and_grad would otherwise mix a fast forward with the generic backward unseen.
    fake = types.ModuleType("ace_core.backends.numpy")
    fake.backward_logits = _kernel.backward_logits
    monkeypatch.setitem(sys.modules, "ace_core.backends.numpy", fake)
    with pytest.raises(TypeError, match="forward_backward_logits"):
        _dispatch.kernel_for(np_compat)


def test_a_kernel_that_masks_infeasible_samples_gets_the_mask_and_no_second_pass(fresh_dispatch, monkeypatch):
    # With MASKS_INFEASIBLE the core hands the kernel keep and drop_value and does not mask
    # the gradient itself; without it, it does (the generic kernel's way).
    seen = {}

    def forward_backward_logits(xp, grad_out, scores, counts, valid, lengths, dtype, *, out=None, **drop):
        seen.update(drop)
        *statistics, grad = _kernel.forward_backward_logits(
            xp, grad_out, scores, counts, valid, lengths, dtype
        )
        return (*statistics, xp.full_like(grad, 7.0))  # a sentinel: what the core passes on is visible

    fake = types.ModuleType("ace_core.backends.numpy")
    fake.forward_backward_logits = forward_backward_logits
    monkeypatch.setitem(sys.modules, "ace_core.backends.numpy", fake)
    scores = np.zeros((2, 3, 4))
    counts = np.array([[3, 0, 0, 0], [1, 1, 1, 0]])
    lengths = np.array([3, 0])  # sample 1 is infeasible: T_b = 0
    counts[1] = 0
    for masks in (False, True):
        _dispatch._kernel_for_library.cache_clear()
        seen.clear()
        fake.MASKS_INFEASIBLE = masks
        assert _dispatch.kernel_for(np_compat).masks_infeasible is masks
        _, grad = ace_core.ace_loss_and_grad(scores, counts, input_lengths=lengths, zero_infinity=True)
        assert np.all(grad[0] == 7.0)
        if masks:
            assert list(seen["keep"]) == [True, False] and float(seen["drop_value"]) == 0.0
            assert np.all(grad[1] == 7.0)  # left to the kernel
        else:
            assert not seen and np.all(grad[1] == 0.0)


def test_every_kernel_follows_the_contract():
    # The Protocol documents the five functions; each module's own ones take its parameters.
    import inspect

    from ace_core._contract import KernelFunctions

    modules = [_kernel]
    for library in ("numpy", "torch", "jax"):
        try:
            modules.append(importlib.import_module(f"ace_core.backends.{library}"))
        except ImportError:
            continue
    for name in _dispatch.KERNEL_FUNCTIONS:
        wanted = list(inspect.signature(getattr(KernelFunctions, name)).parameters)[1:]
        for module in modules:
            if not hasattr(module, name):  # left to the generic kernel
                continue
            got = list(inspect.signature(getattr(module, name)).parameters)
            if name == "forward_backward_logits" and getattr(module, "MASKS_INFEASIBLE", False):
                # Such a kernel takes the mask of infeasible samples from the caller.
                assert got == [*wanted, "keep", "drop_value"], module.__name__
                continue
            assert got == wanted, (module.__name__, name)
