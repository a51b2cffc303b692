"""The ACE loss on the benchmark protocol: forward, forward + backward, memory.

Parameters: backend × C ∈ {37, 7357} × dtype ∈ {float32, bfloat16 (GPU only)}.
"""

from __future__ import annotations

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


class ForwardBackwardOut(BackendBenchmark):
    """``ace_loss_and_grad(..., out=buffer)``: ``case.ace_out``, the gradient written into one reused buffer.

    Skipped where arrays are immutable (JAX).
    """

    def prepare(self, entry, classes, dtype):
        data = protocol_data(classes)
        self.case = prepare_case(entry.name, classes, dtype=dtype, with_ctc=False, data=data)
        if self.case.ace_out is None:
            raise SkipNotImplemented(f"{entry.library} arrays are immutable: no out=")
        self.case.ace_out()

    def time_forward_backward_out(self, backend, classes, dtype):
        self.case.ace_out()


class PeakMemory(BackendBenchmark):
    """Peak memory of one ``ace_loss_and_grad`` call above its inputs, gradient included.

    Measured by :mod:`ace_core.bench.memory` (``BenchCase.memory``): NumPy with
    ``tracemalloc``, torch on CUDA with ``max_memory_allocated`` (plus CuPy's pool
    when torch's tensors ran on the CuPy kernels), CuPy by its pool's growth, JAX by
    XLA's plan for the compiled call. torch on the CPU has no counter (skipped).
    The target is the gradient's size plus O(B·(T + C)).
    """

    unit = "bytes"

    def prepare(self, entry, classes, dtype):
        self.case = prepare_case(
            entry.name, classes, dtype=dtype, with_ctc=False, data=protocol_data(classes)
        )

    def track_peak_bytes(self, backend, classes, dtype):
        peak, how = self.case.memory()
        if peak is None:
            raise SkipNotImplemented(how)
        return peak

    def track_peak_bytes_out(self, backend, classes, dtype):
        """The same with ``out=``: above the inputs and the buffer, so O(B·(T + C))."""
        if self.case.memory_out is None:
            raise SkipNotImplemented("no out= on this backend")
        peak, how = self.case.memory_out()
        if peak is None:
            raise SkipNotImplemented(how)
        return peak
