"""The ACE loss on the SPEC §5 protocol: forward, forward + backward, memory.

Parameters: backend × C ∈ {37, 7357} × dtype ∈ {float32, bfloat16 (GPU only)}.
"""

from __future__ import annotations

import importlib

import ace_core
from ace_core.bench import device_inputs, prepare_case

from .common import BackendBenchmark, SkipNotImplemented, protocol_data, synchronised


class Forward(BackendBenchmark):
    """``ace_loss(scores, counts)`` (batch mean), jitted on JAX."""

    def prepare(self, entry, classes, dtype):
        scores, counts = device_inputs(entry, protocol_data(classes), dtype)
        self.call = synchronised(entry, entry.jit(ace_core.ace_loss), scores, counts)

    def time_forward(self, backend, classes, dtype):
        self.call()


class ForwardBackward(BackendBenchmark):
    """``ace_loss_and_grad``: ``case.ace`` of :func:`ace_core.bench.prepare_case` (jitted, warmed up)."""

    def prepare(self, entry, classes, dtype):
        data = protocol_data(classes)
        self.case = prepare_case(entry.name, classes, dtype=dtype, with_ctc=False, data=data)
        self.case.ace()  # touches the outputs (prepare_case already compiled and ran it on JAX)

    def time_forward_backward(self, backend, classes, dtype):
        self.case.ace()

    def peakmem_forward_backward(self, backend, classes, dtype):
        """Host peak RSS of the process: imports, host data, inputs and one call (GPU memory not seen)."""
        self.case.ace()


class DevicePeakMemory(BackendBenchmark):
    """Peak GPU memory of one ``ace_loss_and_grad`` call above what the inputs hold (GPU backends).

    torch: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``;
    CuPy: growth of the default memory pool from an emptied pool (the pool
    keeps every block it grows to, so its size after the call is the call's
    high-water mark); JAX: XLA's own plan for the compiled call (temporaries
    and outputs, ``Compiled.memory_analysis()``), since JAX's peak counter
    cannot be reset.
    """

    unit = "bytes"

    def prepare(self, entry, classes, dtype):
        if not entry.gpu:
            raise SkipNotImplemented(f"{entry.name} is a CPU backend; see peakmem_forward_backward")
        self.scores, self.counts = device_inputs(entry, protocol_data(classes), dtype)

    def track_device_peak_bytes(self, backend, classes, dtype):
        entry, scores, counts = self.entry, self.scores, self.counts
        if entry.library == "jax":
            compiled = entry.jit(ace_core.ace_loss_and_grad).lower(scores, counts).compile()
            plan = compiled.memory_analysis()
            if plan is None:
                raise SkipNotImplemented(f"XLA gives no memory analysis on {entry.name}")
            return int(plan.temp_size_in_bytes + plan.output_size_in_bytes - plan.alias_size_in_bytes)
        call = synchronised(entry, ace_core.ace_loss_and_grad, scores, counts)  # warm-up, outputs freed
        if entry.library == "torch":
            cuda = importlib.import_module("torch").cuda
            cuda.reset_peak_memory_stats()
            base = cuda.memory_allocated()
            call()
            return int(cuda.max_memory_allocated() - base)
        if entry.library == "cupy":
            pool = importlib.import_module("cupy").get_default_memory_pool()
            pool.free_all_blocks()
            base = pool.total_bytes()
            call()
            return int(pool.total_bytes() - base)
        raise SkipNotImplemented(f"no device memory counter for {entry.name}")
