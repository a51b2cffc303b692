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
            assert got == wanted, (module.__name__, name)
