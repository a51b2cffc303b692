"""The counts builder: ``counts_from_targets`` on the protocol's padded targets (B = 64, S = 25).

Parameters: backend × C ∈ {37, 7357} (C sets the width of the one-hot sum).
Jitted on JAX, where the value checks that need concrete arrays are skipped;
elsewhere the timed call includes them.
"""

from __future__ import annotations

import functools

import ace_core

from .common import BACKENDS, CLASSES, BackendBenchmark, protocol_data, synchronised


class CountsFromTargets(BackendBenchmark):
    """``counts_from_targets(targets, target_lengths, num_classes=C, input_lengths=T)``."""

    params = [BACKENDS, list(CLASSES)]
    param_names = ["backend", "classes"]

    def prepare(self, entry, classes, dtype):
        data = protocol_data(classes)
        build = functools.partial(
            ace_core.counts_from_targets,
            num_classes=classes,
            input_lengths=data.logits.shape[1],
            blank=data.blank,
        )
        targets, lengths = entry.asarray(data.targets), entry.asarray(data.target_lengths)
        entry.synchronize(targets, lengths)
        self.call = synchronised(entry, entry.jit(build), targets, lengths)

    def time_counts_from_targets(self, backend, classes):
        self.call()
