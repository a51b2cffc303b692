"""Type aliases shared by the package.

The array API standard has no single array class, so ``Array`` is ``Any``
for type checkers; the aliases still document intent at each signature.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal, TypeAlias

Array: TypeAlias = Any
ArrayNamespace: TypeAlias = ModuleType
Device: TypeAlias = Any
DType: TypeAlias = Any
Reduction: TypeAlias = Literal["none", "sum", "mean"]

__all__ = ["Array", "ArrayNamespace", "DType", "Device", "Reduction"]
