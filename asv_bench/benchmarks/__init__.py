"""asv benchmarks of ace_core (see docs/performance_tracking.rst).

Importing this package pins the thread pools before NumPy, torch or JAX is
imported (asv imports the package first in every benchmark process):

* ``ACE_ASV_THREADS`` (default ``1``) sets ``OMP_NUM_THREADS`` and the BLAS
  variables, and, at 1, turns XLA's CPU thread pool off. One thread keeps
  timings stable on small shared machines, where a second thread makes the
  ops wait for scheduler quanta.
* ``THP_MEM_ALLOC_ENABLE=1`` (unless set) backs torch's large CPU allocations
  with transparent huge pages, as NumPy's already are; without it page faults
  dominate torch at C = 7357 (``ace bench --thp``).
* ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless set) lets JAX and torch share
  a GPU (the ACE/CTC ratio on ``jax:gpu`` runs torch's CTC in the same process).

Variables that are already set are kept, except the thread counts, which
follow ``ACE_ASV_THREADS``.
"""

import os

THREADS = os.environ.get("ACE_ASV_THREADS", "1")
for _name in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
):
    os.environ[_name] = THREADS
if THREADS == "1" and "intra_op_parallelism_threads" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
