"""Modules that moved keep their old import path for one release: the same objects, with a warning on use."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("ace_core.backend_table", "ace_core.bench.backend_table", "BACKENDS"),
    ("ace_core.backend_table", "ace_core.bench.backend_table", "backend"),
    ("ace_core.reference.synthetic", "ace_core.bench.data", "synthetic_batch"),
    ("ace_core.reference.synthetic", "ace_core.bench.data", "BATCH"),
]


@pytest.mark.parametrize(("old", "new", "name"), MOVED)
def test_old_path_warns_and_serves_the_moved_object(old, new, name):
    module = importlib.import_module(old)  # importing alone does not warn (filterwarnings = error)
    with pytest.warns(DeprecationWarning, match=f"import {name} from {new}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("old", sorted({old for old, _, _ in MOVED}))
def test_old_path_lists_only_moved_names(old):
    module = importlib.import_module(old)
    new = importlib.import_module(next(n for o, n, _ in MOVED if o == old))
    assert set(module.__all__) <= set(dir(new))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018
