"""fastlr: optimizer steps and learning-rate schedules as typed Cython kernels.

The update loops of SGD (momentum, Nesterov), RMSprop, Adam/AdamW and more run in compiled code,
in place on your float32/float64 NumPy arrays, with torch.optim's semantics.

Modules:
  fastlr.optim      SGD, RMSprop, Adam, AdamW, Adagrad, Adadelta, Adamax, NAdam, RAdam, Lion:
                    param groups, state, clipping, one C call per step
  fastlr.plateau    ReduceLROnPlateau, a metric-driven lr controller
  fastlr.ema        EMA: an exponential moving average of the params (fused kernel)
  fastlr.compat     scikit-learn-style and torch.optim front ends
  fastlr.distributed  ZeRO-1 data-parallel training over MPI (needs mpi4py)
  fastlr.schedules  learning-rate schedules evaluated in C
  fastlr.kernels    in-place kernels (validate, then one C call)
  fastlr.reference  pure-NumPy twins of the kernels, the test oracle
  fastlr.lr_finder  the learning-rate range test (fastlr.find_lr)
  fastlr.plot       pictures of schedules and curves (needs matplotlib)
"""

try:
    from fastlr import _kernels  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised by an unbuilt tree
    from fastlr._build_check import raise_build_error

    raise_build_error(_error)

_kernels._init_cores()

from fastlr import kernels, reference, schedules
from fastlr._kernels import get_num_threads, set_num_threads
from fastlr.lr_finder import LRFinderResult, find_lr
from fastlr.optim import Optimizer, clip_grad_norm, flat_buffer
from fastlr.optim.lbfgs import LBFGS
from fastlr.optim.sparse_adam import SparseAdam
from fastlr.sparse import RowSparseGrad
from fastlr.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeRAdam, ScheduleFreeSGD
from fastlr.optim.layerwise import LAMB, LARS
from fastlr.optim.lrfree import Prodigy
from fastlr.optim.dadapt import DAdaptAdaGrad, DAdaptAdam, DAdaptSGD
from fastlr.optim.muon import Muon
from fastlr.optim.adafactor import Adafactor
from fastlr.optim.families import CLASSES as _CLASSES
from fastlr.ema import EMA
from fastlr.plateau import ReduceLROnPlateau

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("fastlr")
except PackageNotFoundError:  # pragma: no cover - an in-place build that was never installed
    __version__ = "0+unknown"

# the optimizer classes, one per row of the table (fastlr._specs): fastlr.SGD, fastlr.Adam, ...
globals().update(_CLASSES)

__all__ = [*_CLASSES, "LBFGS", "LAMB", "LARS", "Prodigy", "SparseAdam", "RowSparseGrad",
           "Muon", "Adafactor", "Optimizer", "flat_buffer", "clip_grad_norm",
           "ReduceLROnPlateau", "EMA",
           "find_lr", "LRFinderResult", "kernels", "reference", "schedules", "get_num_threads",
           "set_num_threads", "get_include", "__version__"]
__all__ += ["ScheduleFreeSGD", "ScheduleFreeAdamW", "ScheduleFreeRAdam"]
__all__ += ["DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad"]


def get_include() -> str:
    """The directory to add to a Cython build's include path to ``cimport fastlr._kernels``.

    It is the directory that contains the ``fastlr`` package (with its ``.pxd`` files).

    Returns
    -------
    str
        An absolute path, e.g. for ``Extension(..., include_dirs=[fastlr.get_include()])``.
    """
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
