"""Test data and comparisons shared by the test modules.

``make_case(name, from_logits)`` builds the small, seeded problems that the
value and gradient tests run on every backend; their brute-force answers are
cached here (they do not depend on the backend). ``assert_close`` compares
NumPy results and remembers the largest errors per ``kind``; conftest prints
them at the end of the run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import brute_force
import numpy as np

# ---------------------------------------------------------------------------
# Comparisons

MAX_ERRORS: dict[str, dict[str, float]] = {}


def assert_close(
    actual: Any, expected: Any, *, rtol: float, atol: float = 0.0, kind: str | None = None
) -> None:
    """``|actual - expected| <= atol + rtol |expected|`` elementwise, same shape, same nan/inf places.

    With ``kind``, the largest absolute and relative error is recorded for the
    end-of-run summary; the relative error is taken over the entries at least
    1e-3 of the largest (a near-zero expected value says nothing relative).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), (
        f"nan in different places:\n{actual}\n{expected}"
    )
    finite = np.isfinite(expected)
    assert np.array_equal(actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)]), (
        f"infinities differ:\n{actual}\n{expected}"
    )
    assert np.all(np.isfinite(actual[finite])), f"non-finite where a finite value is expected:\n{actual}"
    diff = np.abs(actual[finite] - expected[finite])
    scale = np.abs(expected[finite])
    if kind is not None and diff.size:
        entry = MAX_ERRORS.setdefault(kind, {"abs": 0.0, "rel": 0.0, "n": 0})
        entry["abs"] = max(entry["abs"], float(diff.max()))
        nonzero = scale >= 1e-3 * scale.max()
        if scale.max() > 0:
            entry["rel"] = max(entry["rel"], float((diff[nonzero] / scale[nonzero]).max()))
        entry["n"] += 1
    bad = diff > atol + rtol * scale
    if bad.any():
        worst = int(np.argmax(diff - (atol + rtol * scale)))
        raise AssertionError(
            f"{int(bad.sum())} of {diff.size} values differ beyond atol={atol:g}, rtol={rtol:g}; "
            f"worst: {actual[finite][worst]!r} vs {expected[finite][worst]!r} "
            f"(abs {diff[worst]:.3e})\nactual:\n{actual}\nexpected:\n{expected}"
        )


def assert_unchanged(before: list[np.ndarray], after: list[np.ndarray]) -> None:
    """Inputs held the same values (nan equal to nan) and dtypes after a call."""
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        assert old.dtype == new.dtype and old.shape == new.shape, f"input {i} changed dtype/shape"
        assert np.array_equal(old, new, equal_nan=old.dtype.kind == "f"), f"input {i} was modified"


# ---------------------------------------------------------------------------
# Random data


def random_logits(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 2.0) -> np.ndarray:
    return rng.normal(scale=scale, size=shape)


def random_probabilities(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Rows on the simplex, none exactly 0 (so that finite differences stay inside the domain)."""
    raw = rng.uniform(0.05, 1.0, size=shape)
    return raw / raw.sum(axis=-1, keepdims=True)


def random_labels(
    rng: np.random.Generator, lengths: list[int], num_classes: int, *, blank: int = 0, full_last: bool = True
) -> list[list[int]]:
    """A label per sample with ``|S_b| <= T_b`` (the last one fills its input when ``full_last``)."""
    symbols = [k for k in range(num_classes) if k != blank]
    labels = []
    for b, length in enumerate(lengths):
        size = length if (full_last and b == len(lengths) - 1) else int(rng.integers(0, length + 1))
        labels.append([int(s) for s in rng.choice(symbols, size=size)])
    return labels


def random_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean, not a prefix, at least one valid step in every sample."""
    mask = rng.random(shape) < 0.6
    flat = mask.reshape(shape[0], -1)
    for b in range(shape[0]):
        if not flat[b].any():
            flat[b, int(rng.integers(flat.shape[1]))] = True
    return flat.reshape(shape)


# ---------------------------------------------------------------------------
# The named cases of the value and gradient tests

CASE_NAMES = ("1d", "1d_lengths", "1d_mask", "2d", "2d_mask")


@dataclasses.dataclass(frozen=True)
class Case:
    scores: np.ndarray  # float64, logits or probabilities
    counts: np.ndarray  # (B, C) int64, blank entry included
    lengths: list[int] | None  # input_lengths, for the cases that use them
    mask: np.ndarray | None  # (B, T) or (B, H, W)
    valid: np.ndarray | None  # what the brute force gets
    from_logits: bool

    def keywords(self, backend: Any, lengths_kind: str = "list") -> dict[str, Any]:
        """``input_lengths``/``mask``/``from_logits`` keywords for ace_core on ``backend``."""
        kw: dict[str, Any] = {"from_logits": self.from_logits}
        if self.lengths is not None:
            if lengths_kind == "list":
                kw["input_lengths"] = list(self.lengths)
            elif lengths_kind == "tuple":
                kw["input_lengths"] = tuple(self.lengths)
            elif lengths_kind == "int":
                assert len(set(self.lengths)) == 1
                kw["input_lengths"] = self.lengths[0]
            else:  # an integer array of the backend, int32 or int64
                kw["input_lengths"] = backend.asarray(np.array(self.lengths, dtype=lengths_kind))
        if self.mask is not None:
            kw["mask"] = backend.asarray(self.mask)
        return kw


@functools.cache
def make_case(name: str, from_logits: bool, seed: int = 0) -> Case:
    rng = np.random.default_rng([seed, CASE_NAMES.index(name) if name in CASE_NAMES else 99, from_logits])
    classes = 4
    lengths = mask = valid = None
    if name == "1d":
        shape = (3, 5, classes)
        per_sample = [5, 5, 5]
    elif name == "1d_lengths":
        shape = (3, 6, classes)
        lengths = [6, 3, 1]
        per_sample = lengths
        valid = brute_force.valid_from_lengths(lengths, 6)
    elif name == "1d_same_lengths":  # one length for all: the int form of input_lengths
        shape = (2, 6, classes)
        lengths = [4, 4]
        per_sample = lengths
        valid = brute_force.valid_from_lengths(lengths, 6)
    elif name == "1d_mask":
        shape = (3, 6, classes)
        mask = valid = random_mask(rng, shape[:-1])
        per_sample = [int(m.sum()) for m in mask]
    elif name == "2d":
        shape = (2, 2, 3, classes)
        per_sample = [6, 6]
    elif name == "2d_mask":
        shape = (2, 3, 3, classes)
        mask = valid = random_mask(rng, shape[:-1])
        per_sample = [int(m.sum()) for m in mask]
    else:
        raise KeyError(name)
    scores = random_logits(rng, shape) if from_logits else random_probabilities(rng, shape)
    labels = random_labels(rng, per_sample, classes)
    counts = brute_force.counts_from_label_lists(labels, classes, per_sample)
    return Case(scores, counts, lengths, mask, valid, from_logits)


@functools.cache
def reference_per_sample(name: str, from_logits: bool) -> np.ndarray:
    case = make_case(name, from_logits)
    return brute_force.ace_per_sample(case.scores, case.counts, case.valid, from_logits=from_logits)


@functools.cache
def reference_gradient(name: str, from_logits: bool, reduction: str) -> np.ndarray:
    """Central differences of the reduced brute-force loss (``"none"``: of the sum)."""
    case = make_case(name, from_logits)
    effective = "sum" if reduction == "none" else reduction

    def loss(scores: np.ndarray) -> float:
        per_sample = brute_force.ace_per_sample(scores, case.counts, case.valid, from_logits=from_logits)
        return float(brute_force.reduce(per_sample, effective))

    return brute_force.central_difference(loss, case.scores)


def float_tolerance(dtype_name: str) -> float:
    """A relative tolerance for results computed in ``dtype_name`` (accumulation error of tiny shapes)."""
    return {"float64": 1e-12, "float32": 2e-5, "float16": 1e-2, "bfloat16": 1e-2}[dtype_name]
