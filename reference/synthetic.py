"""Deprecated alias of :mod:`ace_core.bench.data` (the benchmark protocol's synthetic batch).

Kept for one release.
"""

from __future__ import annotations

from ace_core._moved import moved_to

__all__ = [  # noqa: F822 - the names are served by __getattr__
    "BATCH",
    "STEPS",
    "CLASSES",
    "MIN_TARGET_LENGTH",
    "MAX_TARGET_LENGTH",
    "BLANK",
    "SyntheticBatch",
    "synthetic_logits",
    "synthetic_targets",
    "synthetic_batch",
]

__getattr__ = moved_to(__name__, "ace_core.bench.data", __all__)
