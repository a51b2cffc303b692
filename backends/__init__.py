"""Per-library fast paths of the ACE forward and backward.

A module here is named after the array library it serves (``numpy``,
``cupy``, ``torch``, ``jax``) and is imported only when arrays of that library
reach :mod:`ace_core`. It defines any of the five functions of the kernel
contract (:class:`ace_core._contract.KernelFunctions`), and with a half from
logits also ``forward_backward_logits``; any function it leaves out falls back
to the generic array-API kernel, which stays the readable reference that every
fast path is tested against. ``_common`` holds what the fast paths share.
"""
