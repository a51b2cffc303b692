"""Hypothesis profiles of the suite, chosen by ``ACE_HYPOTHESIS_PROFILE``.

- ``ci`` (also chosen by ``CI=1``): derandomized, so a red CI means a change
  broke something, not that a new example was drawn;
- ``dev`` (the default): random seeds, the examples each test asks for;
- ``fuzz``: random seeds, ``ACE_FUZZ_FACTOR`` (default 40) times the examples,
  no deadline; for long runs before an issue is closed, e.g.
  ``ACE_HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_properties*.py``.

Tests take their example counts from :func:`examples`, so that ``fuzz`` scales
them (an explicit ``max_examples`` would override any profile).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("ACE_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
FUZZ_FACTOR = int(os.environ.get("ACE_FUZZ_FACTOR", "40"))

settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.register_profile(
    "fuzz",
    derandomize=False,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load_profile() -> None:
    """Load the profile named by the environment (``UsageError`` for an unknown name)."""
    if PROFILE not in ("ci", "dev", "fuzz"):
        raise ValueError(f"ACE_HYPOTHESIS_PROFILE must be ci, dev or fuzz, got {PROFILE!r}")
    settings.load_profile(PROFILE)


def examples(count: int) -> int:
    """The number of examples for a test that asks for ``count`` (scaled under ``fuzz``)."""
    return count * FUZZ_FACTOR if PROFILE == "fuzz" else count
