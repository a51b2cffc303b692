"""Fixtures: the array backends (see _backends.py) and the end-of-run error summary.

Every backend-generic test takes the ``xp`` fixture (the array namespace) or
``backend`` (the namespace plus ``asarray``/``to_numpy`` for its device). Both
are parametrized over numpy, array_api_strict, torch, jax (CPU) and cupy,
torch:cuda, jax:gpu (GPU, marked ``gpu``); unavailable ones are skipped with
the reason. ``ACE_TEST_BACKENDS=numpy,torch`` restricts the list.

Hypothesis profiles (``_fuzz.py``): ``CI=1`` or ``ACE_HYPOTHESIS_PROFILE=ci``
replays derandomized examples; the default ``dev`` draws new ones each run;
``ACE_HYPOTHESIS_PROFILE=fuzz`` (with ``ACE_FUZZ_FACTOR``, default 40) runs many
more with random seeds and no deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from _backends import Backend, backend_params, load_backend
from _fuzz import load_profile
from _helpers import MAX_ERRORS

# CI replays the same examples every run (a red CI must mean a change broke
# something); local runs keep exploring new ones; ACE_HYPOTHESIS_PROFILE=fuzz
# runs many more (see _fuzz.py).
load_profile()


@pytest.fixture(params=backend_params())
def xp(request: pytest.FixtureRequest) -> ModuleType:
    """The array namespace of one backend (numpy, array_api_strict, torch, jax, GPU variants)."""
    return load_backend(request.param).xp


@pytest.fixture
def backend(xp: ModuleType, request: pytest.FixtureRequest) -> Backend:
    """The backend of this test's ``xp``: ``.asarray(np_data)``, ``.to_numpy(x)``, ``.device``."""
    return load_backend(request.node.callspec.params["xp"])


@pytest.fixture
def asarray(backend: Backend) -> Callable[..., Any]:
    """``asarray(np_array, dtype=None)``: NumPy data as a fresh array of the backend, on its device."""
    return backend.asarray


@pytest.fixture
def to_numpy(backend: Backend) -> Callable[[Any], np.ndarray]:
    """``to_numpy(x)``: a host NumPy copy of a backend array."""
    return backend.to_numpy


@pytest.fixture(params=backend_params(("torch", "torch:cuda")))
def torch_backend(request: pytest.FixtureRequest) -> Backend:
    """torch on the CPU and on CUDA, for torch-only tests (autograd)."""
    return load_backend(request.param)


@pytest.fixture(params=backend_params(("jax", "jax:gpu")))
def jax_backend(request: pytest.FixtureRequest) -> Backend:
    """jax on the CPU and on a GPU, for jax-only tests (jit, grad)."""
    return load_backend(request.param)


@pytest.fixture(scope="module", params=backend_params(("numpy", "torch")))
def property_backend(request: pytest.FixtureRequest) -> Backend:
    """numpy and torch for the hypothesis tests (module scope: hypothesis reruns the test body,
    and a function-scoped fixture would not be reset between its examples)."""
    return load_backend(request.param)


# ---------------------------------------------------------------------------
# The largest errors against the brute force, printed at the end of the run
# so that they can be quoted (recorded by _helpers.assert_close(..., kind=...)).


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MAX_ERRORS:
        return
    terminalreporter.section("largest errors seen by assert_close (float64 unless the kind says)")
    width = max(len(kind) for kind in MAX_ERRORS)
    for kind in sorted(MAX_ERRORS):
        entry = MAX_ERRORS[kind]
        terminalreporter.write_line(
            f"{kind:<{width}}  max abs {entry['abs']:.3e}  max rel {entry['rel']:.3e}  "
            f"(over {int(entry['n'])} comparisons)"
        )
