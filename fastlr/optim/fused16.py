"""16-bit params in :class:`fastlr.Adam` / :class:`fastlr.AdamW` in one fused pass per param
(part of :class:`fastlr.Optimizer`): :func:`fastlr.kernels.adam_mixed` for a float16 or
bfloat16 (``ml_dtypes.bfloat16``) param, with or without its float32 master.

- ``master_weights=False``: the 16-bit param is the optimizer's own param; its moments are
  float32 (or bfloat16 with ``state_dtype="bfloat16"``). Each step computes the update in
  float32 from the param's widened value and stores it rounded stochastically: no master
  copy, so the optimizer keeps 8 bytes per param (4 with bfloat16 state) where master
  weights keep 12 (8). The random bits are a hash of the element's value, its grad and the
  step: no random state, reproducible, the same for any thread count.
- Master weights (the default; fastlr/optim/master.py): the master is the optimizer's param,
  the kernel updates it and writes it into the 16-bit param rounded to nearest even in the
  same pass, reading 16-bit grads as they are: the bits of three passes (cast the grads,
  step the masters, round), without the float32 grad buffers. Used while no group has
  AMSGrad (which adam_mixed does not have; the step engine then takes the masters, one
  pass per block: fastlr/_core/master16.pxd).

The step engine runs Adam's moments as float32/float64 arrays, so the optimizer's engine is then
:class:`Fused16Step`, a front (:mod:`fastlr.optim.front`): the engine keeps the groups and
schedules; the front checks every grad first (nothing written on an error), then runs one
kernel call per param: ``adam_mixed`` for a 16-bit param, ``adam`` or ``adam_bf16_state``
for a float32/float64 one (the bits of the engine's step). The step's NumPy twin runs
:mod:`fastlr.reference`'s same-named functions per param.
"""

from __future__ import annotations

import math
from typing import Any, List

import numpy as np

from fastlr import kernels, reference
from fastlr._core.args import layout_hint
from fastlr.optim.front import (EngineFront, bare_grad, check_flat_size_and_layout,
                                 check_overlap, clipped, flat_views, memory_order, regions,
                                 run_per_param)
from fastlr.optim.master import _round_into, is_16bit

__all__ = ["Fused16Step", "run", "check_grads", "wanted"]


def _face(opt, p):
    """The caller's array of param ``p``: its 16-bit array when ``p`` is a master."""
    user = opt._user(p)
    return p if user is None else user


def run(opt, grads, values, twin=False, n_threads=None):
    """Every param's update by its kernel (``twin``: the NumPy twins) with its group's
    values at this step, then the counts (:func:`fastlr.optim.front.run_per_param`)."""
    where = reference if twin else kernels
    plain = where.adam_bf16_state if opt._state_dtype == "bfloat16" else where.adam
    mixed = where.adam_mixed

    def call(i, grad, st, kwargs):
        p = opt._params[i]
        user = opt._user(p)
        if user is not None and not (twin or user.flags.aligned):
            # the kernel refuses a misaligned array: the master stepped from the grad
            # widened exactly, then rounded into the param (adam_mixed's bits: its passes)
            if grad.dtype != np.float32:
                grad = grad.astype(np.float32, order="K")
            plain(p, grad, st["exp_avg"], st["exp_avg_sq"], **kwargs)
            _round_into(user, p)
        elif user is not None:               # 16-bit param and its float32 master
            mixed(user, grad, st["exp_avg"], st["exp_avg_sq"], p, **kwargs)
        elif is_16bit(p.dtype):              # master_weights=False
            mixed(p, grad, st["exp_avg"], st["exp_avg_sq"], **kwargs)
        else:
            plain(p, grad, st["exp_avg"], st["exp_avg_sq"], **kwargs)

    run_per_param(opt, grads, values, call, n_threads)


def wanted(opt) -> bool:
    """Whether ``opt`` (whose front is :class:`Fused16Step`) steps through it: with
    master_weights=False always; with master weights while it holds a 16-bit param and no
    group has AMSGrad (else the engine's step on the masters, in passes)."""
    if opt._master_weights is False:
        return True
    # (a refused group's masters stay in _masters_of: only the params held count)
    return any(opt._user(p) is not None for p in opt._params) and \
        not any(g.get("amsgrad") for g in opt.param_groups)


def _grad_dtype_ok(face, g):
    return g.dtype == face.dtype or (is_16bit(face.dtype) and g.dtype == np.float32)


def _wants(face):
    return f"{face.dtype} or float32" if is_16bit(face.dtype) else str(face.dtype)


def check_grads(opt, grads, what="step") -> List[np.ndarray]:
    """The grads as one array per param, each checked as the kernels check them (type,
    dtype: the param's, or float32 for a 16-bit param; shape; the param's memory order;
    alignment; no overlap with a param or the state); raises before anything is
    written. One array (not a list) is the one param's grad when it has that param's shape
    (checked as the list ``[grads]``), else a 1-D flat grad buffer (C-contiguous, the
    params' total size: fastlr.flat_buffer), split in param order; its dtype must be one
    every param takes."""
    fn = f"{opt._name}.{what}"
    params = [_face(opt, p) for p in opt._params]
    for i, p in enumerate(params):
        if not p.flags.writeable:
            raise ValueError(f"{fn}: params[{i}] is read-only (flags.writeable=False) but is "
                             f"updated in place")
    if isinstance(grads, np.ndarray):
        total = sum(p.size for p in params)
        grads = bare_grad(fn, grads, [p.shape for p in params], total)
    if isinstance(grads, np.ndarray):
        refused = [i for i, p in enumerate(params) if not _grad_dtype_ok(p, grads)]
        if refused:
            i = refused[0]
            raise TypeError(f"{fn}: the flat grad buffer has dtype {grads.dtype} but "
                            f"params[{i}] has dtype {params[i].dtype} (its grad must be "
                            f"{_wants(params[i])}); pass a list of grads for params of "
                            f"several dtypes")
        check_flat_size_and_layout(fn, grads, total)
        check_overlap(opt, [grads], "the flat grad buffer", "params or state")
        return flat_views(params, grads)
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"{fn}: grads must be a list of arrays (one per param) or one flat "
                        f"array, got {type(grads).__name__}")
    if len(grads) != len(params):
        raise ValueError(f"{fn}: got {len(grads)} grads for {len(params)} params")
    grads = list(grads)
    for i, (p, g) in enumerate(zip(params, grads)):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{fn}: grads[{i}] must be a numpy.ndarray, got "
                            f"{type(g).__name__}")
        if not _grad_dtype_ok(p, g):
            raise TypeError(f"{fn}: grads[{i}] has dtype {g.dtype} but params[{i}] has dtype "
                            f"{p.dtype} (its grad must be {_wants(p)})")
        if g.shape != p.shape:
            raise ValueError(f"{fn}: grads[{i}] has shape {g.shape} but params[{i}] has shape "
                             f"{p.shape}")
        order = memory_order(p)
        if p is not opt._params[i] and g.dtype == p.dtype and g.size and not (
                g.flags.f_contiguous if order == "F" else g.flags.c_contiguous):
            # a 16-bit grad of a param with a master in another layout: copied into the
            # param's (the engine's step casts it into a float32 buffer of any layout)
            g = grads[i] = np.array(g, order=order)
        if not (g.flags.f_contiguous if order == "F" else g.flags.c_contiguous):
            raise ValueError(f"{fn}: grads[{i}] must be {order}-contiguous like params[{i}], "
                             f"got strides {g.strides}"
                             f"{layout_hint(f'grads[{i}]', order == 'F')}")
        if not (g.flags.aligned and g.dtype.isnative):
            raise ValueError(f"{fn}: grads[{i}] must be aligned and in native byte order")
    check_overlap(opt, grads, "grads[{}]", "params or state")
    return grads


class Fused16Step(EngineFront):
    """The engine front of 16-bit params in Adam/AdamW (see the module's notes): the
    engine holds the groups and evaluates and checks the schedules' values (it holds no
    params while this steps: they may be 16-bit); ``step`` checks the grads, then runs a
    kernel per param."""

    __slots__ = ("last_grad_norm", "regions")

    def __init__(self, owner: Any, engine: Any) -> None:
        super().__init__(owner, engine)
        #: the params, 16-bit arrays and state blocks, for the grads' overlap check
        self.regions = regions([])
        #: the grads' norm of the last step that clipped (NaN before)
        self.last_grad_norm = math.nan

    def step(self, grads: Any, t: int, n_threads: int, max_grad_norm: float,
             skip_nonfinite: bool) -> bool:
        """One update: the grads checked here and the schedules' values by the engine
        (nothing written), clipping and the non-finite scan by one compiled reduction,
        then the kernel per param. Returns whether the update was applied."""
        opt = self._owner()
        grads = check_grads(opt, grads)
        engine = self._engine
        engine.begin_windows([], t)          # the schedules' values: raises, writes nothing
        engine.abandon_windows()
        values = engine.group_values(t, False)
        grads = clipped(self, grads, n_threads, max_grad_norm, skip_nonfinite)
        if grads is None:
            return False
        self.update(opt, grads, values, n_threads=n_threads)
        return True

    @staticmethod
    def update(opt: Any, grads: Any, values: Any, twin: bool = False,
               n_threads: Any = None) -> None:
        """The per-param updates of a checked step (:func:`run`)."""
        run(opt, grads, values, twin, n_threads)
