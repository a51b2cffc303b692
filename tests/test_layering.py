"""The layering of the code: dependencies run one way, from tooling to the math, never back.

Read from the sources (every ``import`` statement, also inside functions), so a
lazy import that breaks the layering fails here too:

- the math modules of ``ace_core/`` (everything directly in the folder but the
  CLI and deprecated aliases) import nothing from benchmarking (``ace_core.bench``),
  the CLI or the training reference;
- the fast paths (``backends/``) and the adapters (``integrations/``) import none
  of those either;
- benchmarking imports neither the CLI nor the reference (the reference may use
  benchmarking's backend table, so the other direction would be a cycle);
- the reference never imports the CLI (the CLI dispatches to the reference).

``import ace_core`` importing no framework is checked in test_import.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folders of the repository and the package each one is installed as.
PACKAGES = {
    "ace_core": "ace_core",
    "backends": "ace_core.backends",
    "integrations": "ace_core.integrations",
    "reference": "ace_core.reference",
}
TOOLING = ("ace_core.bench", "ace_core.cli", "ace_core._argtypes", "ace_core.reference")
#: Modules of ace_core/ that are not math: the CLI and its argument types, and aliases kept for one release.
NOT_MATH = {"cli.py", "_argtypes.py", "backend_table.py"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT)
    package = PACKAGES[relative.parts[0]]
    parts = [package, *relative.parts[1:-1]]
    if path.stem != "__init__":
        parts.append(path.stem)
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None) -> set[str]:
    """Every module that ``path`` (the module ``name``) imports, relative imports resolved, at any depth."""
    name = name or _module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from ace_core import bench`` imports the submodule ace_core.bench.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _forbidden_imports(imported: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))


def _violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in paths
        for module in _forbidden_imports(imported_modules(path), forbidden)
    ]


def _sources(folder: str, *, recursive: bool = True) -> list[Path]:
    pattern = "**/*.py" if recursive else "*.py"
    return sorted((ROOT / folder).glob(pattern))


def test_imports_are_resolved_as_installed():
    # The checks below would pass vacuously if relative imports were not resolved.
    loss = imported_modules(ROOT / "ace_core" / "loss.py")
    assert "ace_core._inputs" in loss and "ace_core._dispatch" in loss
    protocol = imported_modules(ROOT / "ace_core" / "bench" / "protocol.py")
    assert "ace_core.bench.backend_table" in protocol


@pytest.mark.parametrize(
    ("folder", "recursive", "skip", "forbidden"),
    [
        ("ace_core", False, NOT_MATH, TOOLING),
        ("backends", True, set(), TOOLING),
        ("integrations", True, set(), TOOLING),
        ("ace_core/bench", True, set(), ("ace_core.cli", "ace_core.reference")),
        ("reference", True, set(), ("ace_core.cli",)),
    ],
    ids=["math", "backends", "integrations", "bench", "reference"],
)
def test_layering(folder, recursive, skip, forbidden):
    paths = [p for p in _sources(folder, recursive=recursive) if p.name not in skip]
    assert paths, f"no sources found under {folder}"
    assert _violations(paths, forbidden) == []


def test_a_planted_violation_is_seen(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import numpy\n\ndef f():\n    from .bench import run_case\n    from . import cli\n")
    imported = imported_modules(planted, "ace_core.planted")
    expected = ["ace_core.bench", "ace_core.bench.run_case", "ace_core.cli"]
    assert _forbidden_imports(imported, TOOLING) == expected
