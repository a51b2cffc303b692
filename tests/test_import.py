"""``import ace_core`` pulls in no framework: torch, jax and cupy load only when their arrays arrive."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import ace_core

HEAVY = ("torch", "jax", "jaxlib", "cupy", "array_api_strict")


def _assert_no_framework_after(snippet: str) -> None:
    code = (
        f"import sys, numpy as np, ace_core; {snippet}; "
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules); "
        "assert not loaded, loaded; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_ace_core_imports_no_framework():
    _assert_no_framework_after("pass")


def test_numpy_use_imports_no_framework():
    # A full NumPy round (loss, gradient, counts, decode) must not load the others either.
    _assert_no_framework_after(
        "s = np.zeros((1, 3, 3)); "
        "c = ace_core.counts_from_targets(np.array([[1, 2]]), num_classes=3, input_lengths=3); "
        "ace_core.ace_loss_and_grad(s, c); ace_core.decode_greedy(s); ace_core.decode_counts(s)"
    )


def test_public_names():
    # The contract's public surface (docs/contract.rst) is importable from the package.
    for name in (
        "ace_loss",
        "ace_loss_and_grad",
        "ace_forward",
        "ace_backward",
        "counts_from_targets",
        "counts_with_background",
        "regression_ace_loss",
        "regression_ace_loss_and_grad",
        "entropy_floor",
        "decode_greedy",
        "decode_counts",
        "edit_distance",
        "character_error_rate",
        "sequence_accuracy",
        "bag_accuracy",
        "counting_errors",
    ):
        assert callable(getattr(ace_core, name)), name
        assert name in ace_core.__all__, name
    assert isinstance(ace_core.ace_loss(np.zeros((1, 2, 2)), np.array([[2, 0]])), np.floating | np.ndarray)
