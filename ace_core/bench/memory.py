"""Peak memory of one ``ace_loss_and_grad`` call above its inputs, measured per library.

The target is a peak no larger than the gradient itself plus
O(B·(T + C)). Each library is measured with its own instrument:

* NumPy: ``tracemalloc`` (NumPy reports its data allocations to it);
* torch on CUDA: ``torch.cuda.max_memory_allocated``, plus CuPy's pool when
  the call ran on the CuPy kernels (torch's CPU allocator has no such counter:
  not measured);
* CuPy: the default memory pool's growth after its cached blocks are freed
  (the pool keeps what it allocated, so its growth is the peak);
* JAX: XLA's memory plan of the jitted call (temporaries plus outputs).
"""

from __future__ import annotations

import importlib
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from .backend_table import Backend

__all__ = ["peak_bytes"]


def peak_bytes(
    entry: Backend, call: Callable[[], Any], jitted: Any = None, args: tuple = ()
) -> tuple[int | None, str]:
    """``(peak bytes above the inputs, how it was measured)``; ``(None, why)`` where not measurable.

    ``call`` runs one synchronised ``ace_loss_and_grad``; it is called once
    first (compilation, caches), then measured. ``jitted`` and ``args`` give
    JAX's plan.
    """
    if entry.library == "jax":
        if jitted is None:
            return None, "not jitted"
        plan = jitted.lower(*args).compile().memory_analysis()
        if plan is None:
            return None, "XLA gives no memory analysis"
        return int(plan.temp_size_in_bytes + plan.output_size_in_bytes - plan.alias_size_in_bytes), "XLA plan"
    call()
    if entry.library == "numpy":
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1], "tracemalloc"
        finally:
            tracemalloc.stop()
    if not entry.gpu:
        return None, f"no allocation counter for {entry.name}"
    # torch's CUDA tensors may run on the CuPy kernels, which allocate from CuPy's pool.
    pool = sys.modules["cupy"].get_default_memory_pool() if "cupy" in sys.modules else None
    if pool is not None:
        pool.free_all_blocks()
        pool_base = pool.total_bytes()
    if entry.library == "torch":
        cuda = importlib.import_module("torch").cuda
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
        torch_base = cuda.memory_allocated()
    call()
    total, how = 0, []
    if entry.library == "torch":
        total += cuda.max_memory_allocated() - torch_base
        how.append("torch.cuda.max_memory_allocated")
    if pool is not None and (entry.library == "cupy" or pool.total_bytes() > pool_base):
        total += pool.total_bytes() - pool_base
        how.append("CuPy pool growth")
    if not how:
        return None, f"no allocation counter for {entry.name}"
    return int(total), " + ".join(how)
