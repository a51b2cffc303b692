"""The JAX training example runs and learns: sequence accuracy far above chance.

Chance is near 0: a label is 1 to 4 glyphs of 5 classes, so guessing one
exactly succeeds with probability below 1/5 for the shortest and far less for
the rest. Each run is a subprocess, as a user would start it. The example's
data generator (``ace_core.reference.toy_sequences``, NumPy only) is tested here too.
"""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ace_core.reference import toy_sequences

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "jax_optax_training.py"
FINAL = re.compile(
    r"^final: loss=(?P<loss>\S+) greedy_accuracy=(?P<accuracy>\S+) ordered_accuracy=(?P<ordered>\S+)$",
    re.MULTILINE,
)


def run_example(*args: str) -> tuple[float, float, str]:
    """``(final loss, greedy accuracy, stdout)``; the ordered accuracy is in ``stdout``."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    match = FINAL.search(result.stdout)
    assert match, result.stdout
    return float(match["loss"]), float(match["accuracy"]), result.stdout


def test_example_learns_with_the_builtin_adam():
    pytest.importorskip("jax")
    loss, accuracy, output = run_example("--steps", "200", "--optimizer", "builtin", "--log-every", "50")
    assert "built-in Adam" in output
    assert accuracy >= 0.8, output
    assert 0 < loss < 1.0, output


def test_the_prior_start_reads_sooner_with_both_readouts():
    pytest.importorskip("jax")
    # After 60 steps from the same weights and batches: the prior start reads nearly every strip,
    # the zero start is still on ACE's plateau.
    _, prior, output = run_example("--steps", "60", "--optimizer", "builtin", "--log-every", "60")
    assert "blank bias: prior" in output
    ordered = float(FINAL.search(output)["ordered"])
    _, zero, _ = run_example("--steps", "60", "--optimizer", "builtin", "--blank-bias", "zero")
    assert prior >= 0.9 and ordered >= 0.9, output
    assert zero < 0.5 < prior


def test_example_with_optax_matches_the_builtin_adam():
    pytest.importorskip("jax")
    pytest.importorskip("optax")  # not a dependency of ace_core
    loss_optax, accuracy_optax, output = run_example("--steps", "40", "--optimizer", "optax")
    assert "optax.adam" in output
    loss_builtin, accuracy_builtin, _ = run_example("--steps", "40", "--optimizer", "builtin")
    # The same Adam: the two runs agree up to float32 rounding.
    assert loss_optax == pytest.approx(loss_builtin, rel=1e-3)
    assert accuracy_optax == pytest.approx(accuracy_builtin, abs=0.02)


def test_toy_sequences_doctests():
    failures, tried = doctest.testmod(toy_sequences)
    assert tried > 0 and failures == 0


def test_glyph_strips_are_seeded_and_consistent():
    first = toy_sequences.glyph_strips(64, classes=6, steps=32, seed=5)
    again = toy_sequences.glyph_strips(64, classes=6, steps=32, seed=5)
    other = toy_sequences.glyph_strips(64, classes=6, steps=32, seed=6)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(first.images, other.images)
    positions = np.arange(first.labels.shape[1])[None, :]
    inside = positions < first.label_lengths[:, None]
    assert np.all((first.labels != first.blank) == inside)  # blank exactly at the padding
    assert np.all(first.images[np.arange(32)[None, :] >= first.input_lengths[:, None]] == 0)
    # Without noise, each strip holds exactly its glyphs' ink.
    clean = toy_sequences.glyph_strips(64, classes=6, steps=32, noise=0.0, seed=5)
    font = toy_sequences.glyph_font(6)
    ink = font.sum(axis=(1, 2))
    expected = [ink[row[:n]].sum() for row, n in zip(clean.labels, clean.label_lengths, strict=True)]
    assert np.allclose(clean.images.sum(axis=(1, 2)), expected)
