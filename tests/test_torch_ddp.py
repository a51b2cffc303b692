"""ACELoss under DistributedDataParallel (gloo, 2 CPU processes) gives the parameters of one
process trained on the whole batch (the batch-mean reduction averages like DDP does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_ddp_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "ddp.json"
    worker = Path(__file__).with_name("_ddp_worker.py")
    result = subprocess.run(
        [sys.executable, str(worker), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {"weight", "bias"}
    for name, entry in report.items():
        assert entry["moved"] > 1e-3, f"{name} did not train"
        assert entry["max_difference"] < 1e-12, f"{name}: {entry}"
