"""A helpful error when fastlr's compiled modules cannot be imported (scikit-learn's
``__check_build`` idea): say whether this is an unbuilt source tree and how to build it."""

import os

_SOURCE_TREE_HELP = """\
It seems that fastlr has not been built correctly.

You are importing fastlr from its source tree ({here}), where the compiled modules have not
been built. Either:
  * install it and run Python from another directory:   pip install .
  * or build the extensions in place (for development):  python setup.py build_ext --inplace

At the top of a clone, `python -m fastlr` and `python -m pytest` import this source tree;
the `fastlr` and `pytest` console scripts import the installed package.
"""

_INSTALL_HELP = """\
fastlr's compiled module could not be imported from {here}. The installation looks broken
(compiled for another Python or NumPy?). Reinstall it: pip install --force-reinstall fastlr
"""


def raise_build_error(error):
    here = os.path.dirname(os.path.abspath(__file__))
    in_source_tree = os.path.exists(os.path.join(here, "_kernels.pyx")) and os.path.exists(
        os.path.join(os.path.dirname(here), "setup.py")
    )
    text = (_SOURCE_TREE_HELP if in_source_tree else _INSTALL_HELP).format(here=here)
    contents = ", ".join(sorted(f for f in os.listdir(here) if not f.startswith("__py")))
    raise ImportError(f"{error}\n{'_' * 70}\nContents of {here}:\n{contents}\n{'_' * 70}\n"
                      f"{text}") from error
