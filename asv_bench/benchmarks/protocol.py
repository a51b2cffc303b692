"""The derived figures of the benchmark protocol, measured by :func:`ace_core.bench.run_case` in one process.

``run_case`` times ACE, torch's CTC on the same data (on the same hardware)
and the device copies that set the memory floor, one after the other, in the
benchmark's process, with the protocol's per-call median. These are ``track_``
benchmarks (one value per process), for the graphs of ``asv publish``; asv
counts a larger value as worse, which holds for the ratio but not for the
floor fraction, so the regression check (``asv_bench/compare.sh``) leaves
them out.
"""

from __future__ import annotations

from ace_core.bench import prepare_case, run_case

from .common import BackendBenchmark, SkipNotImplemented, protocol_data

#: Timed calls per measurement (at least) and their minimum total, as in ``ace bench``.
REPEAT = 5
MIN_TIME_S = 0.1


class Protocol(BackendBenchmark):
    """ACE/CTC ratio and fraction of the memory floor (``ace bench``'s figures)."""

    def prepare(self, entry, classes, dtype):
        self.case = prepare_case(entry.name, classes, dtype=dtype, data=protocol_data(classes))

    def _record(self):
        return run_case(self.case, repeat=REPEAT, min_time_s=MIN_TIME_S)

    def track_ace_over_ctc(self, backend, classes, dtype):
        """ACE forward+backward time over torch CTC forward+backward time (same data, same hardware)."""
        if self.case.ctc is None:
            raise SkipNotImplemented("; ".join(self.case.notes) or "no CTC reference")
        return self._record().ace_over_ctc

    track_ace_over_ctc.unit = "ACE/CTC"

    def track_floor_fraction(self, backend, classes, dtype):
        """Memory floor (3 passes at device-copy speed) over ACE time; 1 = ACE runs at copy bandwidth."""
        return self._record().floor_fraction

    track_floor_fraction.unit = "fraction of floor"
