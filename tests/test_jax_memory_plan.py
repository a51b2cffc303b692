"""XLA's memory plan of the jitted entry points: at most one ``(B, T, C)`` temporary besides the gradient.

The plan (``Compiled.memory_analysis``) is a property of the compiled program,
not a timing: it fails when an expression makes XLA store a second
``(B, T, C)`` array (a masked copy of the scores, a subexpression shared by two
reductions, an operand of a ``lax.cond``). The one temporary allowed is the
rare log-space branch's; the common path writes the gradient over the one
stored ``exp``. Everything else is ``O(B (T + C))``.
"""

from __future__ import annotations

import pytest

import ace_core

jax = pytest.importorskip("jax")
jnp = jax.numpy

B, T, C = 4, 32, 3001
FULL = B * T * C * 4  # bytes of one float32 (B, T, C) array
#: (B, T) and (B, C) arrays: a few dozen of them at this shape.
SMALL = 48 * B * (T + C) * 4


def _plan(function, *shapes):
    compiled = jax.jit(function).lower(*shapes).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this XLA backend reports no memory plan")
    return analysis.temp_size_in_bytes, analysis.output_size_in_bytes


def _shapes(lengths: bool):
    scores = jax.ShapeDtypeStruct((B, T, C), jnp.float32)
    counts = jax.ShapeDtypeStruct((B, C), jnp.int32)
    return (scores, counts, jax.ShapeDtypeStruct((B,), jnp.int32)) if lengths else (scores, counts)


def _with_lengths(function):
    return lambda scores, counts, lengths: function(scores, counts, input_lengths=lengths)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_loss_and_grad_stores_one_temporary_besides_the_gradient(lengths):
    function = _with_lengths(ace_core.ace_loss_and_grad) if lengths else ace_core.ace_loss_and_grad
    temp, output = _plan(function, *_shapes(lengths))
    assert output <= FULL + SMALL
    assert temp <= FULL + SMALL, f"temporaries of {temp / FULL:.2f} (B, T, C) arrays"


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_forward_then_backward_store_one_temporary_besides_the_gradient(lengths):
    # The path of the JAX adapter's custom_vjp: ace_forward, then ace_backward from the residuals.
    def forward_backward(scores, counts, *rest):
        keywords = {"input_lengths": rest[0]} if rest else {}
        _, residuals = ace_core.ace_forward(scores, counts, **keywords)
        upstream = jnp.ones((B,), jnp.float32)
        return ace_core.ace_backward(upstream, scores, counts, residuals)

    temp, output = _plan(forward_backward, *_shapes(lengths))
    assert output <= FULL + SMALL
    assert temp <= FULL + SMALL, f"temporaries of {temp / FULL:.2f} (B, T, C) arrays"


def test_the_loss_alone_outputs_no_full_size_array():
    temp, output = _plan(ace_core.ace_loss, *_shapes(False))
    assert output <= SMALL
    assert temp <= FULL + SMALL
