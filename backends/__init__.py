"""Per-library fast paths of the ACE forward and backward.

A module here is named after the array library it serves (``numpy``,
``cupy``, ``torch``, ``jax``) and is imported only when arrays of that library
reach :mod:`ace_core`. It may define ``forward_logits`` and/or
``backward_logits`` with the signatures of :mod:`ace_core._kernel`; any
function it leaves out falls back to the generic array-API kernel, which stays
the readable reference that every fast path is tested against.
"""
