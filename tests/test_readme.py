"""The README's Python examples run as written, and its commands are the ones CI runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _imports(code: str) -> set[str]:
    return set(re.findall(r"^(?:import|from) (\w+)", code, flags=re.M))


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code):
    missing = sorted(name for name in _imports(code) if importlib.util.find_spec(name) is None)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_readme_has_examples_and_both_commands():
    text = README.read_text()
    assert len(EXAMPLES) >= 2
    for marker, command in (("main-command", "ace "), ("test-command", "python -m pytest")):
        block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, flags=re.S)
        assert block is not None, marker
        assert command in block.group(1)
