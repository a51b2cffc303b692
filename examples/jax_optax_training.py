"""Train a tiny JAX model with ACE in an optax-style loop.

The task (:mod:`ace_core.reference.toy_sequences`): read the glyphs of a noisy
strip, one column per step, from labels that give only the glyphs' classes.
The model is two 1D convolutions over the columns; the loss is
:func:`ace_core.integrations.jax.ace_loss`, called as ``optax.ctc_loss`` is.
The optimizer is ``optax.adam`` where optax is installed, else the few lines
of Adam below (same ``init``/``update`` interface; optax is not a dependency of
ace_core). The output bias of the blank starts at the labels' prior
(:func:`ace_core.blank_prior_bias` put into the parameters with
:func:`ace_core.integrations.jax.init_blank_bias`; ``--blank-bias zero``
leaves it at 0). The held-out strips are read twice, greedily
(:func:`ace_core.decode_greedy`) and count-ordered
(:func:`ace_core.decode_ordered`).

Run::

    python examples/jax_optax_training.py --steps 300

It prints the loss (and its distance to the entropy floor, the smallest value
ACE can take) while training, then the sequence accuracy of both readouts on
held-out strips. It takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ace_core
from ace_core.integrations.jax import ace_loss, init_blank_bias
from ace_core.reference.toy_sequences import glyph_strips

CLASSES = 6  # 5 glyphs and the blank
STEPS = 32  # columns per strip
HEIGHT = 8  # pixels per column
MAX_LENGTH = 4

Params = dict[str, jax.Array]


def init_params(key: jax.Array, hidden: int = 64) -> Params:
    """Two 1D convolutions over columns: (5 columns x HEIGHT) -> hidden -> (3 columns) -> classes."""
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (5, HEIGHT, hidden)) / np.sqrt(5 * HEIGHT),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (3, hidden, CLASSES)) / np.sqrt(3 * hidden),
        "b2": jnp.zeros(CLASSES),
    }


def conv1d(x: jax.Array, w: jax.Array) -> jax.Array:
    """(B, T, C_in) * (width, C_in, C_out) -> (B, T, C_out), zero-padded to keep T."""
    return jax.lax.conv_general_dilated(x, w, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))


def model(params: Params, images: jax.Array) -> jax.Array:
    """Logits (B, T, CLASSES) from strips (B, T, HEIGHT)."""
    hidden = jax.nn.relu(conv1d(images, params["w1"]) + params["b1"])
    return conv1d(hidden, params["w2"]) + params["b2"]


def builtin_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam with optax's ``init(params)`` / ``update(grads, state, params)`` interface."""

    def init(params: Params) -> tuple[Any, ...]:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return jnp.zeros((), jnp.int32), zeros, zeros

    def update(grads: Params, state: tuple[Any, ...], params: Params | None = None):
        count, mu, nu = state
        count = count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
        # Bias correction of the two moving averages, as in the Adam paper.
        scale_mu, scale_nu = 1 - b1**count, 1 - b2**count
        updates = jax.tree.map(
            lambda m, v: -learning_rate * (m / scale_mu) / (jnp.sqrt(v / scale_nu) + eps), mu, nu
        )
        return updates, (count, mu, nu)

    return SimpleNamespace(init=init, update=update)


def make_optimizer(name: str, learning_rate: float) -> tuple[Any, Callable[[Params, Params], Params], str]:
    """``(optimizer, apply_updates, which)`` for ``name`` in {"auto", "optax", "builtin"}."""
    if name in ("auto", "optax"):
        try:
            import optax
        except ImportError:
            if name == "optax":
                raise
        else:
            return optax.adam(learning_rate), optax.apply_updates, "optax.adam"
    return builtin_adam(learning_rate), lambda p, u: jax.tree.map(jnp.add, p, u), "built-in Adam"


def optax_layout(data) -> tuple[jax.Array, ...]:
    """Strips and labels as optax's CTC takes them: paddings are 1.0 where padded."""
    steps = np.arange(data.images.shape[1])[None, :]
    logit_paddings = (steps >= data.input_lengths[:, None]).astype(np.float32)
    positions = np.arange(data.labels.shape[1])[None, :]
    label_paddings = (positions >= data.label_lengths[:, None]).astype(np.float32)
    return tuple(jnp.asarray(a) for a in (data.images, logit_paddings, data.labels, label_paddings))


def strips(batch: int, seed: int):
    return glyph_strips(batch, classes=CLASSES, steps=STEPS, height=HEIGHT, max_length=MAX_LENGTH, seed=seed)


def evaluate(params: Params, batch: int, seed: int) -> dict[str, float]:
    """Sequence accuracy on held-out strips of both readouts: ``{"greedy": ..., "ordered": ...}``."""
    data = strips(batch, seed)
    logits = jax.jit(model)(params, jnp.asarray(data.images))
    lengths = list(data.input_lengths)
    truth = [row[:n].tolist() for row, n in zip(data.labels, data.label_lengths, strict=True)]
    greedy = ace_core.decode_greedy(logits, input_lengths=lengths, blank=data.blank)
    ordered = ace_core.decode_ordered(logits, input_lengths=lengths, blank=data.blank)
    return {
        "greedy": ace_core.sequence_accuracy(greedy, truth),
        "ordered": ace_core.sequence_accuracy(ordered, truth),
    }


def start_at_the_prior(params: Params, seed: int) -> Params:
    """The blank's output bias at the labels' average blank share (measured on training strips)."""
    sample = strips(256, seed=2 * 10**6 + seed)
    bias = ace_core.blank_prior_bias(
        target_lengths=sample.label_lengths, input_lengths=sample.input_lengths, num_classes=CLASSES
    )
    return {**params, "b2": init_blank_bias(params["b2"], bias)}


def train(
    steps: int = 300,
    batch: int = 32,
    learning_rate: float = 1e-2,
    optimizer_name: str = "auto",
    seed: int = 0,
    log_every: int = 50,
    eval_size: int = 256,
    blank_bias: str = "prior",
) -> dict[str, float]:
    optimizer, apply_updates, which = make_optimizer(optimizer_name, learning_rate)
    params = init_params(jax.random.key(seed))
    if blank_bias == "prior":
        params = start_at_the_prior(params, seed)
    state = optimizer.init(params)

    def batch_loss(params: Params, images, logit_paddings, labels, label_paddings) -> jax.Array:
        per_example = ace_loss(model(params, images), logit_paddings, labels, label_paddings, blank_id=0)
        # ACE is already normalized by each strip's width: the batch mean is the "mean" loss.
        return jnp.mean(per_example)

    @jax.jit
    def train_step(params, state, images, logit_paddings, labels, label_paddings):
        loss, grads = jax.value_and_grad(batch_loss)(params, images, logit_paddings, labels, label_paddings)
        updates, state = optimizer.update(grads, state, params)
        return apply_updates(params, updates), state, loss

    print(f"optimizer: {which}, {steps} steps of {batch} strips, blank bias: {blank_bias}")
    start = time.perf_counter()
    loss = float("nan")
    for step in range(1, steps + 1):
        data = strips(batch, seed=1000 * seed + step)  # a fresh batch each step
        arrays = optax_layout(data)
        params, state, loss = train_step(params, state, *arrays)
        if step % log_every == 0 or step == steps:
            counts = ace_core.counts_from_targets(
                data.labels, data.label_lengths, num_classes=CLASSES, input_lengths=data.input_lengths
            )
            floor = float(ace_core.entropy_floor(counts, reduction="mean"))
            print(f"step {step:4d}  loss {float(loss):.4f}  loss - floor {float(loss) - floor:.4f}")
    seconds = time.perf_counter() - start
    accuracy = evaluate(params, eval_size, seed=10**6 + seed)  # seeds no training batch uses
    print(f"trained in {seconds:.1f} s")
    print(
        f"final: loss={float(loss):.4f} greedy_accuracy={accuracy['greedy']:.3f} "
        f"ordered_accuracy={accuracy['ordered']:.3f}"
    )
    return {
        "loss": float(loss),
        "greedy_accuracy": accuracy["greedy"],
        "ordered_accuracy": accuracy["ordered"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--optimizer", choices=("auto", "optax", "builtin"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--blank-bias", choices=("prior", "zero"), default="prior", help="start of the blank's output bias"
    )
    args = parser.parse_args(argv)
    train(
        args.steps,
        args.batch,
        args.learning_rate,
        args.optimizer,
        args.seed,
        args.log_every,
        blank_bias=args.blank_bias,
    )


if __name__ == "__main__":
    main()
