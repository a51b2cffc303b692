"""The array library and device a run trains on (NumPy on the CPU or CuPy on a GPU), and its CPU threads.

The training reference runs on NumPy on the CPU and on CuPy on an NVIDIA GPU
(the models are written with array-API operations only). The backends come
from :mod:`ace_core.bench.backend_table`, the one table that ``ace info`` and
``ace bench`` use, so "is CuPy usable here" has one answer project-wide.

Examples
--------
>>> from ace_core.reference.array_library import select_backend
>>> select_backend("numpy").name
'numpy'
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from ace_core.bench.backend_table import Backend, backend

__all__ = ["BACKEND_CHOICES", "TEST_BACKENDS", "default_backend_name", "select_backend", "thread_limit"]

#: The backends ``ace train`` accepts: the CPU one and the GPU one.
BACKEND_CHOICES = ("numpy", "cupy")
#: Also accepted by :func:`select_backend`: array-api-strict, which the tests use to check that the
#: driver assumes nothing of NumPy that CuPy would not do (it runs on the CPU, slowly).
TEST_BACKENDS = ("array_api_strict",)


def default_backend_name() -> str:
    """``"cupy"`` when CuPy is installed and sees a GPU, else ``"numpy"``."""
    return "cupy" if backend("cupy").usable else "numpy"


def select_backend(name: str | None = None) -> Backend:
    """The table entry to train on: ``name``, or the default (:func:`default_backend_name`).

    Parameters
    ----------
    name : {"numpy", "cupy"}, optional

    Returns
    -------
    ace_core.bench.backend_table.Backend

    Raises
    ------
    ValueError
        For another name, or for a backend that is not usable here (the
        reason, e.g. "cupy is not installed", is in the message).
    """
    chosen = backend(name if name is not None else default_backend_name())
    if chosen.name not in BACKEND_CHOICES + TEST_BACKENDS:
        raise ValueError(f"the training reference runs on {' or '.join(BACKEND_CHOICES)}, not {chosen.name}")
    reason = chosen.unusable_reason()
    if reason is not None:
        raise ValueError(f"backend {chosen.name} is not usable here: {reason}")
    return chosen


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Limit the BLAS/OpenMP thread pools to ``threads`` inside the block (``None``: no change).

    Uses ``threadpoolctl`` (a dependency of scikit-learn, so part of the
    ``reference`` extra). Without it a warning says the limit is not applied;
    setting ``OMP_NUM_THREADS`` before Python starts does the same job.
    """
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        warnings.warn(
            "threadpoolctl is not installed, --threads is ignored (set OMP_NUM_THREADS instead)",
            RuntimeWarning,
            stacklevel=3,
        )
        yield
        return
    with threadpool_limits(limits=threads):
        yield
