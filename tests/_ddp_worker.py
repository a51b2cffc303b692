"""Train a tiny model with ACELoss under DistributedDataParallel (gloo, 2 CPU processes).

Run as a script: ``python _ddp_worker.py OUT.json``. It trains the same model
for a few steps once in one process on the whole batch and once with DDP on
two halves, and writes the largest parameter difference to OUT.json. A
script (not an in-process test) because process groups and spawned workers
must not share the pytest process.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ace_core.integrations.torch import ACELoss

BATCH, STEPS, FEATURES, CLASSES, TRAIN_STEPS = 8, 10, 5, 4, 3


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, STEPS, FEATURES, generator=generator, dtype=torch.float64)
    targets = torch.randint(1, CLASSES, (BATCH, 3), generator=generator)
    target_lengths = torch.randint(1, 4, (BATCH,), generator=generator)
    input_lengths = torch.randint(6, STEPS + 1, (BATCH,), generator=generator)
    return inputs, targets, input_lengths, target_lengths


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Linear(FEATURES, CLASSES).double()


def _train(model: torch.nn.Module, rows: slice) -> None:
    inputs, targets, input_lengths, target_lengths = _data()
    criterion = ACELoss(layout="NTC")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        logits = model(inputs[rows])
        loss = criterion(logits, targets[rows], input_lengths[rows], target_lengths[rows])
        loss.backward()
        optimizer.step()


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    half = BATCH // world
    _train(model, slice(rank * half, (rank + 1) * half))
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.module.state_dict().items()}, out)
    # Both ranks leave together: a rank that tears gloo down while the other still
    # works on it was seen to abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def main(out_json: str) -> None:
    single = _model()
    _train(single, slice(None))
    with tempfile.TemporaryDirectory() as tmp:
        weights = f"{tmp}/ddp.pt"
        mp.spawn(_worker, args=(2, f"{tmp}/init", weights), nprocs=2, join=True)
        parallel = torch.load(weights)
    initial = _model().state_dict()
    report = {
        name: {
            "max_difference": float((single.state_dict()[name] - value).abs().max()),
            "moved": float((single.state_dict()[name] - initial[name]).abs().max()),
        }
        for name, value in parallel.items()
    }
    with open(out_json, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1])
