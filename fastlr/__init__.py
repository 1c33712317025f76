"""fastlr: optimizer steps and learning-rate schedules as typed Cython kernels.

The update loops of SGD (momentum, Nesterov), RMSprop and Adam/AdamW run in compiled code,
in place on your float32/float64 NumPy arrays, with torch.optim's semantics.

Modules:
  fastlr.kernels    in-place kernels (validate, then one C call)
  fastlr.reference  pure-NumPy twins of the kernels, the test oracle
"""

try:
    from fastlr import _kernels  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised by an unbuilt tree
    from fastlr._build_check import raise_build_error

    raise_build_error(_error)

from fastlr import kernels, reference
from fastlr._kernels import get_num_threads, set_num_threads

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("fastlr")
except PackageNotFoundError:  # pragma: no cover - an in-place build that was never installed
    __version__ = "0+unknown"

__all__ = ["kernels", "reference", "get_num_threads", "set_num_threads", "get_include",
           "__version__"]


def get_include():
    """The directory to add to a Cython build's include path to ``cimport fastlr._kernels``.

    It is the directory that contains the ``fastlr`` package (with its ``.pxd`` files).
    """
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
