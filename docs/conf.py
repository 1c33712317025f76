"""Sphinx configuration of fastlr's documentation site.

Build (warnings are errors; ``.ci/docs`` does this and more)::

    sphinx-build -W --keep-going -b html docs /tmp/fastlr-docs
    sphinx-build -W --keep-going -b doctest docs /tmp/fastlr-docs-doctest

The API reference imports fastlr: the in-place build of this checkout when it has one
(``python setup.py build_ext --inplace``), the installed package otherwise. The per-family
optimizer pages and the schedule gallery (with its pictures) are generated from
``fastlr._specs`` and ``fastlr.schedules`` at every build by ``_ext/fastlr_docs.py``, into
``docs/generated/`` (not in git).
"""

import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "_ext"))
# the checkout's in-place build, when there is one; otherwise the installed fastlr
if glob.glob(os.path.join(ROOT, "fastlr", "_kernels.*.so")) or \
        glob.glob(os.path.join(ROOT, "fastlr", "_kernels.*.pyd")):
    sys.path.insert(0, ROOT)
else:
    # `python -m sphinx` run at the top of the clone puts it first on sys.path: that would
    # import the unbuilt source tree instead of the installed fastlr
    sys.path[:] = [p for p in sys.path
                   if os.path.abspath(p or os.curdir) != os.path.abspath(ROOT)]

import fastlr  # noqa: E402

project = "fastlr"
author = "the fastlr developers"
copyright = "the fastlr developers"
release = fastlr.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
    "fastlr_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "generated/README.md"]
templates_path = []

# -- warnings are errors (sphinx-build -W); nothing is silenced ---------------------------
nitpicky = False          # cross-references are checked by -W where they resolve to objects

# -- autodoc / numpydoc --------------------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"             # signatures as written; the types are in the stubs
numpydoc_show_class_members = False    # the API pages list members explicitly
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = False
# numpydoc's validation, as warnings (errors under -W): every parameter of a documented
# function or class is in its Parameters section (PR01), and nothing else is (PR02).
numpydoc_validation_checks = {"PR01", "PR02"}
# Documented objects kept out of that validation (regular expressions over full names),
# and only of it (-W still applies to their markup). Empty: every documented docstring has
# its Parameters section; an entry here is a debt to pay, not a place to park one.
NUMPYDOC_VALIDATION_PENDING: list = []
numpydoc_validation_exclude = set(NUMPYDOC_VALIDATION_PENDING)

# -- myst (docs/design.md, docs/threads_and_processes.md, ...) -----------------------------
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# -- doctest builder ------------------------------------------------------------------------
# docstring examples are written in their module's namespace: these names make them run here
doctest_global_setup = """
import numpy as np
import fastlr
from fastlr import schedules, kernels
from fastlr.kernels import make_state, state_names
from fastlr.optim import flat_buffer
from fastlr.distributed import shard_bounds
"""
doctest_test_doctest_blocks = "default"

# -- HTML -------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"fastlr {release}"
html_static_path = ["_static"]
html_css_files = ["fastlr.css"]
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    # the optimizer pages' argument tables want the width of the "On this page" column
    "secondary_sidebar_items": {"*": ["page-toc"], "api/*": ["page-toc"],
                                "generated/optimizers/*": []},
}
# pages without subpages: no (empty) section navigation on the left
html_sidebars = {page: [] for page in (
    "index", "getting_started", "schedules", "migrating", "lr_finder", "checkpoints",
    "threads_and_processes", "embedding", "distributed", "benchmarks", "nonfinite",
    "sanitizers", "design")}
html_last_updated_fmt = None

# -- docstrings awaiting a fix in files this site does not own ------------------------------
# Each entry: a documented object whose docstring does not build cleanly as reStructuredText,
# and the fix to apply in its source file. Until it is fixed, the docstring is shown verbatim
# (as a literal block) instead of being parsed, so ``sphinx-build -W`` stays an error on
# every other warning; the build prints this list. Empty it as the fixes land (the test
# tests/tools/test_docs.py fails when an entry names an object that no longer exists).
PENDING_DOCSTRING_FIXES = {
}


def _verbatim_pending(app, what, name, obj, options, lines):
    if name in PENDING_DOCSTRING_FIXES and lines:
        text = [line for line in lines]
        lines[:] = [".. note:: This docstring is shown verbatim until its markup is fixed.", "",
                    "::", ""] + ["    " + line if line.strip() else "" for line in text] + [""]


def setup(app):
    from sphinx.util import logging

    logger = logging.getLogger("fastlr_docs")

    def report(app):
        for name, fix in PENDING_DOCSTRING_FIXES.items():
            logger.info(f"docstring shown verbatim, pending a fix: {name}: {fix}")

    app.connect("builder-inited", report)
    app.connect("autodoc-process-docstring", _verbatim_pending, priority=900)
