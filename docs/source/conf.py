"""Sphinx configuration for the pyro-relax API reference (modelled on Pyro's docs/source/conf.py).

Build from the repository root (no network needed)::

    python -m sphinx -W --keep-going -b html docs/source docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import pyro_relax  # noqa: E402

# -- Project information ---------------------------------------------------------------------

project = "pyro-relax"
author = "pyro-relax contributors"
copyright = "pyro-relax contributors"
version = pyro_relax.__version__
release = version

# -- General configuration -------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# Docstrings are plain reST with ``:param:`` fields, as in Pyro (no napoleon). Do not inherit
# docstrings: those of torch's and Pyro's base classes are written for their own docs.
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # types are given in the ``:param type name:`` fields
add_module_names = False

source_suffix = ".rst"
root_doc = "index"
language = "en"
exclude_patterns = ["_build"]
pygments_style = "sphinx"

# Unresolved cross-references are not warnings (``nitpicky`` off, Sphinx's default).
nitpicky = False

# -- Cross-references to Pyro, PyTorch, Python and SciPy -------------------------------------

# The inventories are read from the files stored under _inv/ (never from the network, so the
# build works offline, e.g. in CI); the links point to the online docs. docs/make_inventories.py
# regenerates the files; see docs/README.md.
intersphinx_mapping = {
    "pyro": ("https://docs.pyro.ai/en/stable/", "_inv/pyro.inv"),
    "torch": ("https://docs.pytorch.org/docs/stable/", "_inv/torch.inv"),
    "python": ("https://docs.python.org/3/", "_inv/python.inv"),
    "scipy": ("https://docs.scipy.org/doc/scipy/", "_inv/scipy.inv"),
}

# -- HTML output -----------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"pyro-relax {version}"
html_static_path = []
