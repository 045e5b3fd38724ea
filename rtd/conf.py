"""Sphinx configuration of the isoflop documentation.

Build from the repository root (``pip install -e '.[docs]'`` first)::

    sphinx-build -W --keep-going -b html rtd rtd/_build/html

autodoc imports the real packages (torch, lightning, transformers, datasets ...), so the build
needs the project installed; nothing is mocked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sphinx.util.docutils import SphinxDirective

# The repository root, so that autodoc imports ``objectives``, ``datamodules``, ``downstream`` and
# ``experiments`` from this checkout even without an editable install.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

project = "isoflop"
author = "the isoflop authors"
copyright = "the isoflop authors, Apache-2.0"
release = "0.1.0"
version = "0.1"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

# -- links to torch, Lightning, transformers and datasets (rtd/inventories.py) ----------------

sys.path.insert(0, os.path.dirname(__file__))
from inventories import intersphinx_mapping as _mapping  # noqa: E402

intersphinx_mapping = _mapping(Path(__file__).parent / "_build" / "inventories")
intersphinx_timeout = 10

exclude_patterns = ["_build", "_include"]  # fragments included by pages, not pages themselves
root_doc = "index"

# -- autodoc ----------------------------------------------------------------------------------

autodoc_mock_imports: list[str] = []  # the real packages are installed
autodoc_member_order = "bysource"
# Only isoflop's own docstrings: an undocumented Lightning hook override would otherwise show
# Lightning's docstring as if it were ours.
autodoc_inherit_docstrings = False
autodoc_typehints = "signature"
# Class docstring and __init__ docstring together: TaskDataModule and SequenceClassification
# (``downstream``) document their arguments on __init__, the others on the class.
autoclass_content = "both"
autodoc_default_options = {
    "show-inheritance": True,
}

# Module docstrings that are not valid reStructuredText (a Markdown table, an indented layout
# sketch) and make docutils warn. They are shown verbatim, as a literal block, instead of being
# parsed. Remove a module from this set once its docstring is valid reStructuredText.
LITERAL_MODULE_DOCSTRINGS: set[str] = set()


def _literal_module_docstring(app, what, name, obj, options, lines):
    if what == "module" and name in LITERAL_MODULE_DOCSTRINGS and lines:
        lines[:] = ["::", ""] + [f"   {line}" if line else "" for line in lines] + [""]


class PackageModules(SphinxDirective):
    """``.. package-modules:: objectives``: one section with ``.. automodule:: <module>`` and
    ``:members:`` for every module of a package and of its subpackages, in name order. ``rtd/api.rst``
    uses it, so a new module (a new objective is one new file in ``objectives/``) is in the API
    reference without an edit there."""

    required_arguments = 1

    def run(self):
        import importlib
        import pkgutil

        package = importlib.import_module(self.arguments[0])
        lines: list[str] = []
        infos = pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
        for name in sorted(info.name for info in infos):
            lines += [name, "^" * len(name), "", f".. automodule:: {name}", "   :members:", ""]
        return self.parse_text_to_nodes("\n".join(lines), allow_section_headings=True)


def setup(app):
    app.connect("autodoc-process-docstring", _literal_module_docstring)
    app.add_directive("package-modules", PackageModules)


# -- napoleon (Google-style ``Args:``) --------------------------------------------------------

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ``Attributes:`` sections become :ivar: fields, not attribute directives that would duplicate
# the dataclass fields autodoc documents.
napoleon_use_ivar = True
napoleon_use_rtype = False

# -- HTML -------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = "isoflop"
html_theme_options = {
    "description": "Language-model pre-training objectives compared at equal FLOPs",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path: list[str] = []
