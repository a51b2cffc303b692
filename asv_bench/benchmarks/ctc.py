"""CTC references on the same data as the ACE benchmarks: torch's and optax's, forward + backward.

torch: ``case.ctc`` of :func:`ace_core.bench.prepare_case` (``log_softmax`` +
``F.ctc_loss(reduction="mean")`` + ``torch.autograd.grad``), the CTC that the
protocol's ACE/CTC ratio divides by. optax: ``optax.ctc_loss`` on the logits
(it normalises them itself) divided by the target lengths and averaged over
the batch, as torch's ``"mean"``, under ``jax.value_and_grad`` and
``jax.jit``; skipped unless optax is importable. Half-precision scores are
promoted to float32 for CTC, as in the protocol.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np

from ace_core.bench import prepare_case

from .common import BackendBenchmark, SkipNotImplemented, protocol_data, synchronised


class TorchCTC(BackendBenchmark):
    """torch CTC forward + backward on torch's CPU and on CUDA."""

    params = [["torch", "torch:cuda"], *BackendBenchmark.params[1:]]

    def prepare(self, entry, classes, dtype):
        self.case = prepare_case(entry.name, classes, dtype=dtype, data=protocol_data(classes))
        self.case.ctc()  # touches the buffers (prepare_case synchronised the inputs)

    def time_torch_ctc(self, backend, classes, dtype):
        self.case.ctc()


class OptaxCTC(BackendBenchmark):
    """optax CTC forward + backward on JAX's CPU and GPU (jitted)."""

    params = [["jax", "jax:gpu"], *BackendBenchmark.params[1:]]

    def prepare(self, entry, classes, dtype):
        if importlib.util.find_spec("optax") is None:
            raise SkipNotImplemented("optax is not installed")
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
        optax = importlib.import_module("optax")
        data = protocol_data(classes)
        logits = entry.asarray(data.logits, dtype)
        labels = entry.asarray(data.targets)
        lengths = entry.asarray(data.target_lengths)
        logit_paddings = entry.asarray(np.zeros(data.logits.shape[:2]), "float32")
        padding = np.arange(data.targets.shape[1])[None, :] >= data.target_lengths[:, None]
        label_paddings = entry.asarray(padding, "float32")

        def loss(x):
            per_sample = optax.ctc_loss(
                x.astype(jnp.float32), logit_paddings, labels, label_paddings, blank_id=data.blank
            )
            return jnp.mean(per_sample / lengths)

        self.call = synchronised(entry, jax.jit(jax.value_and_grad(loss)), logits)

    def time_optax_ctc(self, backend, classes, dtype):
        self.call()
