"""Stateful optimizers with torch.optim's names and rules: SGD, RMSprop, Adam, AdamW, Adagrad,
Adadelta, Adamax, NAdam, RAdam; and Lion (optax's definition).

>>> import numpy as np, fastlr
>>> w = np.ones(3, dtype=np.float32)
>>> opt = fastlr.Adam([w], lr=0.1)
>>> opt.step([np.array([0.5, -0.5, 0.0], dtype=np.float32)])
>>> w
array([0.9, 1.1, 1. ], dtype=float32)
>>> opt.steps
1

``params`` is an array, a list of arrays, or a list of group dicts ``{"params": [...],
"lr": ...}`` overriding any hyperparameter per group. Params can be named: a dict of name
-> array, or a list of ``(name, array)`` pairs (torch's ``named_parameters()``), also as a
group's ``"params"``; :func:`named_groups` picks groups by name. Then ``opt.step(grads)``
takes a dict of name -> grad (any order; a list in param order still works), each group
has ``"param_names"``, and checkpoints record and check the names.

>>> named = {"fc.weight": np.ones((2, 2)), "fc.bias": np.zeros(2)}
>>> opt = fastlr.SGD(named_groups(named, [{"params": ["fc.bias"], "lr": 0.5}]), lr=0.1)
>>> opt.step({"fc.bias": np.ones(2), "fc.weight": np.ones((2, 2))})
>>> named["fc.bias"], [g["param_names"] for g in opt.param_groups]
(array([-0.5, -0.5]), [['fc.bias'], ['fc.weight']])

Arrays are updated in place. Every numeric
hyperparameter (``lr``, ``momentum``, ``dampening``, ``alpha``, ``eps``, ``rho``,
``lr_decay``, ``momentum_decay``, ``weight_decay``, either slot of ``betas``, ...; each
class's docstring says which) takes a number, a :mod:`fastlr.schedules` schedule (evaluated
in C each step, its value checked there against the argument's range) or a Python callable
``step -> float`` (slower). Update ``t + 1`` uses ``schedule(t)``.

``opt.step(grads)`` takes the grads in param order (or one 1-D flat grad array when the
params are views of one flat buffer, see :func:`flat_buffer`; with a single param, an array
of its shape is its grad), checks them in compiled code and
updates every array of every group in one C call. Params that are adjacent views of one
buffer (same group and dtype) are updated as one span.
"""


from fastlr._core.engine import clip_grad_norm
from fastlr.optim.base import Optimizer, ParamGroup, flat_buffer, named_groups  # noqa: F401
from fastlr.optim.checkpoint import (read_checkpoint, read_npz_members,  # noqa: F401
                                     write_checkpoint, write_npz_atomic)
from fastlr.optim.families import CLASSES
from fastlr.optim.lbfgs import LBFGS
from fastlr.optim.sparse_adam import SparseAdam
from fastlr.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeRAdam, ScheduleFreeSGD
from fastlr.optim.layerwise import LAMB, LARS
from fastlr.optim.lrfree import Prodigy
from fastlr.optim.dadapt import DAdaptAdaGrad, DAdaptAdam, DAdaptSGD
from fastlr.optim.muon import Muon
from fastlr.optim.adafactor import Adafactor

# the optimizer classes, one per row of the table (fastlr._specs): SGD, RMSprop, Adam, ...
globals().update(CLASSES)

__all__ = ["Optimizer", *CLASSES, "LBFGS", "LAMB", "LARS", "Prodigy", "SparseAdam", "Muon",
           "Adafactor", "flat_buffer", "clip_grad_norm", "named_groups"]
__all__ += ["DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad"]
__all__ += ["ScheduleFreeSGD", "ScheduleFreeAdamW", "ScheduleFreeRAdam"]
