"""Decoding the protocol's float32 scores: ``decode_greedy`` and ``decode_counts``.

Parameters: backend × C ∈ {37, 7357}. ``decode_greedy`` returns Python lists,
so it copies the best classes to the host and is never jitted;
``decode_counts`` stays on the device and is jitted on JAX.
"""

from __future__ import annotations

import ace_core

from .common import BACKENDS, CLASSES, BackendBenchmark, protocol_data, synchronised


class Decode(BackendBenchmark):
    """Greedy label sequences (repeats collapsed, blanks dropped) and rounded aggregated counts."""

    params = [BACKENDS, list(CLASSES)]
    param_names = ["backend", "classes"]

    def prepare(self, entry, classes, dtype):
        scores = entry.asarray(protocol_data(classes).logits, "float32")
        entry.synchronize(scores)
        self.greedy = synchronised(entry, ace_core.decode_greedy, scores)
        self.counts = synchronised(entry, entry.jit(ace_core.decode_counts), scores)

    def time_decode_greedy(self, backend, classes):
        self.greedy()

    def time_decode_counts(self, backend, classes):
        self.counts()
