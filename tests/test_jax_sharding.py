"""The JAX loss on a batch sharded over 8 host devices equals the unsharded loss and gradient.

``--xla_force_host_platform_device_count=8`` must be set before JAX
initialises, and the rest of the suite may have initialised it in this process
already, so the check runs in a fresh interpreter and reports back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

DEVICES = 8

SCRIPT = r"""
import json
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ace_core.integrations.jax import ace_loss

devices = jax.devices()
assert len(devices) == DEVICES, devices
rng = np.random.default_rng(0)
batch, steps, classes, width = 2 * DEVICES, 24, 11, 8
step_lengths = rng.integers(width, steps + 1, size=batch)
label_lengths = rng.integers(0, width + 1, size=batch)
logit_paddings = (np.arange(steps)[None, :] >= step_lengths[:, None]).astype(np.float64)
label_paddings = (np.arange(width)[None, :] >= label_lengths[:, None]).astype(np.float64)
labels = np.where(label_paddings == 0, rng.integers(1, classes, size=(batch, width)), 0)
logits = rng.normal(scale=2.0, size=(batch, steps, classes))


def mean_loss(x, lp, lab, labp):
    return jnp.mean(ace_loss(x, lp, lab, labp))


step = jax.jit(jax.value_and_grad(mean_loss))
results = {}
for dtype in ("float64", "float32"):
    host = (logits.astype(dtype), logit_paddings.astype(dtype), labels, label_paddings.astype(dtype))
    single = [jax.device_put(a, devices[0]) for a in host]
    loss_1, grad_1 = step(*single)

    mesh = Mesh(np.array(devices), ("batch",))
    by_batch = NamedSharding(mesh, PartitionSpec("batch"))
    sharded = [jax.device_put(a, by_batch) for a in host]
    loss_n, grad_n = step(*sharded)
    hlo = step.lower(*sharded).compile().as_text()

    loss_1, grad_1, loss_n, grad_n = (
        np.asarray(a, dtype=np.float64) for a in (loss_1, grad_1, loss_n, grad_n)
    )
    results[dtype] = {
        "loss": float(loss_1),
        "loss_abs_diff": float(abs(loss_n - loss_1)),
        "grad_max_abs_diff": float(np.max(np.abs(grad_n - grad_1))),
        "grad_max_abs": float(np.max(np.abs(grad_1))),
        "input_shards": len(sharded[0].addressable_shards),
        "grad_sharded_by_batch": tuple(step(*sharded)[1].sharding.spec)[:1] == ("batch",),
        "all_gather_in_hlo": "all-gather" in hlo,
    }
print(json.dumps(results))
"""


def run_sharded() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    script = f"DEVICES = {DEVICES}\n" + SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sharded_batch_gives_the_unsharded_loss_and_gradient():
    results = run_sharded()
    for dtype, rtol in (("float64", 1e-13), ("float32", 1e-6)):
        r = results[dtype]
        assert r["input_shards"] == DEVICES
        # Only the final mean over the batch crosses devices: its summation order may differ.
        assert r["loss_abs_diff"] <= rtol * abs(r["loss"]), r
        assert r["grad_max_abs_diff"] <= rtol * r["grad_max_abs"], r
        # The per-sample work stays where its sample lives: the gradient comes back sharded
        # by batch and nothing is gathered.
        assert r["grad_sharded_by_batch"], r
        assert not r["all_gather_in_hlo"], r
