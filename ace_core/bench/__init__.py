"""Benchmarking ACE: the protocol of ``ace bench``, asv and the GPU report, in one subpackage.

Nothing in the math modules of :mod:`ace_core` imports this package; it imports
the core (the loss it times) and no framework until a backend is asked for.

- :mod:`~ace_core.bench.protocol`: the benchmark protocol (see :doc:`/contract`,
  "The benchmark protocol"): :func:`run_case`, :func:`run_protocol`, :class:`BenchRecord`;
- :mod:`~ace_core.bench.case`: one case, its data on the device and the timed callables;
- :mod:`~ace_core.bench.timing`, :mod:`~ace_core.bench.memory`: how a call is timed, and its peak memory;
- :mod:`~ace_core.bench.machine`: the machine, versions and thread settings of a report;
- :mod:`~ace_core.bench.backend_table`: the one table of backends (an array library on one kind of
  device), also used by ``ace info``, the reference trainer and the test fixtures;
- :mod:`~ace_core.bench.data`: the protocol's seeded synthetic batch;
- :mod:`~ace_core.bench.report`: the text tables of ``ace info`` and ``ace bench``.
"""

from __future__ import annotations

from . import protocol
from .protocol import *  # noqa: F403 - the protocol's public names are the package's

__all__ = protocol.__all__
