"""Sphinx configuration for the ace_core documentation.

Build (CI runs exactly these, both must give zero warnings)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W -b doctest docs docs/_build/doctest

The build works offline: no intersphinx mappings, nothing is fetched.
"""

from __future__ import annotations

import doctest

import ace_core

# -- Project -----------------------------------------------------------------

project = "ace_core"
author = "ace_core developers"
copyright = "ace_core developers"
release = ace_core.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
root_doc = "index"
default_role = "py:obj"
nitpicky = False

# -- autodoc / autosummary / numpydoc ----------------------------------------

# Stubs go to docs/api/generated/ (git-ignored), regenerated on every build.
autosummary_generate = True
autosummary_generate_overwrite = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc "Parameters" sections carry the types
autodoc_member_order = "bysource"
autodoc_default_options = {"inherited-members": False}

# numpydoc would otherwise add autosummary tables of the members of every
# class, including the tuple methods of the NamedTuples, which have no stubs.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- doctest -----------------------------------------------------------------

# Examples in docstrings (``>>>``, pulled in by autosummary) are run by
# ``-b doctest`` too. Like ``pytest --doctest-modules``, they may use the
# public names of ace_core without importing them, hence the star import.
doctest_test_doctest_blocks = "default"
# Sphinx's default flags include IGNORE_EXCEPTION_DETAIL; leave it out so that
# the error messages shown in the docs are checked too.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1
doctest_global_setup = """
import numpy as np
from ace_core import *
"""

# -- HTML --------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"ace_core {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_show_sourcelink = False


# -- Keep api.rst in step with ace_core.__all__ -------------------------------


def _check_api_page(app):
    """Warn (an error under ``-W``) when a public name is missing from api.rst."""
    import re
    from pathlib import Path

    from sphinx.util import logging

    text = (Path(app.srcdir) / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^ {3}([A-Za-z_]\w*)\s*$", text, flags=re.MULTILINE))
    missing = sorted(set(ace_core.__all__) - listed)
    if missing:
        logging.getLogger(__name__).warning(
            "api.rst does not list these names of ace_core.__all__: %s", ", ".join(missing)
        )


def setup(app):
    app.connect("builder-inited", _check_api_page)
