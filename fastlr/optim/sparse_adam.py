"""SparseAdam (torch.optim.SparseAdam): Adam on row-sparse grads, updating only the rows
each grad names (:class:`SparseAdam`).

It does not fit the element-wise table (``fastlr._specs``): its grads are
:class:`fastlr.RowSparseGrad` and its update reads and writes only the named rows, with
the kernel of :mod:`fastlr._core.sparse`. Everything else is the optimizers' common code
(:class:`fastlr.Optimizer`): param groups and names, schedules, the per-param step count,
state buffers ``exp_avg`` / ``exp_avg_sq``, checkpoints, ``repr``.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from fastlr._core.args import POSITIVE, UNIT, checked_real
from fastlr._core.sparse import check_param, check_rows, sparse_adam
from fastlr.optim.base import Optimizer
from fastlr.reference import sparse as _reference
from fastlr.sparse import RowSparseGrad

__all__ = ["SparseAdam"]

#: What ``SparseAdam.step`` takes: one RowSparseGrad (or None: no grad) per param.
SparseGrads = Union[Sequence[Optional[RowSparseGrad]], Mapping[str, Optional[RowSparseGrad]]]

_CHECKS = {"lr": POSITIVE, "eps": POSITIVE, "beta1": UNIT, "beta2": UNIT}


class SparseAdam(Optimizer):
    """SparseAdam (torch.optim.SparseAdam 2.13): Adam's update applied only to the rows a
    row-sparse grad names.

    Each param is a 2-D float32/float64 C-contiguous array (an embedding table); its grad
    is a :class:`fastlr.RowSparseGrad` ``(indices, rows)``. At every step the grad is
    coalesced (repeated indices summed, as torch's ``coalesce()``) and, at its rows ``r``
    only, with ``g`` the summed grad (negated when ``maximize``) and ``t`` the param's
    update count (``fastlr.reference.sparse.sparse_adam``)::

        m[r] = m[r] + (g - m[r]) * (1 - beta1)
        v[r] = v[r] + (g * g - v[r]) * (1 - beta2)
        p[r] = p[r] - lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m[r] / (sqrt(v[r]) + eps)

    Rows not named keep their params and moments (torch's lazy semantics: not Adam, whose
    moments decay everywhere every step). ``t`` counts the steps that gave the param a
    grad, an empty one included (as torch, which skips the update of an empty grad but
    still counts it); ``None`` for a param's grad leaves it and its count alone (torch's
    ``p.grad is None``).

    Parameters
    ----------
    params : array, list of arrays, dict of name -> array, list of (name, array) pairs, or
        list of group dicts
        2-D float32/float64 C-contiguous arrays, updated in place (named and grouped as for
        :class:`fastlr.Adam`).
    lr : default 0.001 (a number or a schedule)
        Learning rate, > 0 (parameter units per gradient unit).
    betas : default (0.9, 0.999) (either may be a schedule)
        First- and second-moment decays, each in [0, 1).
    eps : default 1e-08 (a number or a schedule)
        Added to the denominator, > 0 (gradient units).
    maximize : default False
        Ascend instead of descend.

    Raises
    ------
    TypeError
        If a param is not a float32/float64 array, or a hyperparameter has the wrong type.
    ValueError
        If a param is not 2-D and C-contiguous, a hyperparameter is out of range (torch's
        checks: ``lr > 0``, ``eps > 0``, betas in [0, 1)), or params overlap in memory.

    Notes
    -----
    The kernel rounds as torch does, operation by operation in the params' dtype. torch
    sums a row's repeated entries in the order of its CPU sort, which is stable only up to
    16 entries; fastlr's is always stable (entries of a row in the order given), so a row
    named three or more times in a long grad may differ from torch's by an ulp of the sum.

    There is no gradient clipping or non-finite skipping (``max_grad_norm``,
    ``skip_nonfinite``) and the step runs on one thread. Checkpoints restore the step
    counts and the moments, never the hyperparameters (see :class:`fastlr.Adam`).

    Examples
    --------
    >>> table = np.zeros((4, 2), dtype=np.float32)
    >>> opt = fastlr.SparseAdam([table], lr=0.1)
    >>> opt.step([fastlr.RowSparseGrad([3, 1, 3], np.ones((3, 2), dtype=np.float32))])
    >>> table[:, 0].round(4)                 # lr * m / (sqrt(v) + eps): about lr
    array([ 0. , -0.1,  0. , -0.1], dtype=float32)
    """

    _kernel = "adam"                    # the engine's family: schedules and layout only
    _schedulable = ("lr", "beta1", "beta2", "eps")
    _pairs = {"betas": ("beta1", "beta2")}
    _flags = ("maximize",)
    _ranges = {"lr": POSITIVE, "eps": POSITIVE, "beta1": UNIT, "beta2": UNIT, "betas": None}
    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params: Any, lr: Any = 1e-3, betas: Any = (0.9, 0.999),
                 eps: Any = 1e-8, maximize: bool = False) -> None:
        betas = tuple(betas) if isinstance(betas, (list, tuple)) else betas
        Optimizer.__init__(self, params, dict(lr=lr, betas=betas, eps=eps,
                                              maximize=maximize))
        self._engine = _SparseStep(self, self._engine)

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _check_param(self, label, p):
        Optimizer._check_param(self, label, p)
        check_param(self._name, label, p)

    @property
    def max_grad_norm(self) -> None:
        """Always None: SparseAdam does not clip its grads (setting another value raises)."""
        return None

    @max_grad_norm.setter
    def max_grad_norm(self, value: Any) -> None:
        if value is not None:
            raise ValueError(f"{self._name}: max_grad_norm is not supported (row-sparse "
                             f"grads are not clipped), got {value!r}")
        self._max_grad_norm = None

    @property
    def skip_nonfinite(self) -> bool:
        """Always False: non-finite grads propagate, as in torch (setting True raises)."""
        return False

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: Any) -> None:
        if value is not False:
            raise ValueError(f"{self._name}: skip_nonfinite is not supported, got "
                             f"{value!r}")
        self._skip_nonfinite = False

    # ---- the step -------------------------------------------------------------------------
    def _checked_grads(self, grads, what):
        """The grads as a list in param order, every one checked against its param, and the
        groups' hyperparameters at this step: nothing is written before this returns."""
        fn = f"{self._name}.{what}" if what != "step" else self._name
        if isinstance(grads, dict):
            if self._names is None:
                raise TypeError(f"{fn}: the grads are a dict but the params have no names; "
                                f"pass a list of grads in param order")
            grads = self._grads_list(grads, what)
        if isinstance(grads, RowSparseGrad) or not isinstance(grads, (list, tuple)):
            raise TypeError(f"{fn}: grads must be a list of fastlr.RowSparseGrad (one per "
                            f"param, None for no grad), got {type(grads).__name__}")
        if len(grads) != len(self._params):
            raise ValueError(f"{fn}: got {len(grads)} grads for {len(self._params)} params")
        if self._dirty:
            self._configure()
        values = self._engine.group_values(self._t)
        for g, v in enumerate(values):
            for key, rule in _CHECKS.items():
                checked_real(fn, f"param_groups[{g}][{key!r}] (at step {self._t})", v[key],
                             rule)
        for i, (p, grad) in enumerate(zip(self._params, grads)):
            if grad is None:
                continue
            if not isinstance(grad, RowSparseGrad):
                raise TypeError(f"{fn}: grads[{i}] must be a fastlr.RowSparseGrad or None, "
                                f"got {type(grad).__name__} (SparseAdam does not support "
                                f"dense gradients; use fastlr.Adam for those)")
            check_rows(fn, f"params[{i}]", f"grads[{i}]", p, grad.indices, grad.rows)
            for name, buf in self._state[i].items():
                if np.may_share_memory(grad.rows, buf):
                    raise ValueError(f"{fn}: grads[{i}] rows share memory with the "
                                     f"optimizer's {name} buffer of params[{i}]")
        return grads, values

    def step(self, grads: SparseGrads) -> None:  # type: ignore[override]
        """Apply one SparseAdam update to every param from its row-sparse grad.

        Everything (every grad's type, dtype, width and indices against its param, the
        scheduled hyperparameters' values) is checked before any param or moment is
        written; a message names the param as ``params[i] (param_groups[g]['params'][j],
        'name')``.

        Parameters
        ----------
        grads : list of RowSparseGrad or None, or dict of str -> RowSparseGrad or None
            One per param, in param order (or by name when the params are named); ``None``
            for a param without a grad this step.

        Raises
        ------
        TypeError
            If a grad is not a :class:`fastlr.RowSparseGrad` (or None) or its rows' dtype
            is not the param's.
        ValueError
            If the number of grads, a grad's width or an index does not fit its param, or
            a scheduled hyperparameter gives an invalid value.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> E = np.zeros((3, 1))
        >>> opt = fastlr.SparseAdam([E], lr=0.5)
        >>> opt.step([fastlr.RowSparseGrad([0], np.array([[2.0]]))])
        >>> E[:, 0].round(4), opt.state[0]["step"]
        (array([-0.5,  0. ,  0. ]), 1)
        """
        Optimizer.step(self, grads)     # the lock, names, relabelling; _SparseStep.step

    def _apply(self, grads, values, kernel):
        index = 0
        for g, (group, v) in enumerate(zip(self.param_groups, values)):
            for p in group["params"]:
                grad = grads[index]
                if grad is not None:
                    st = self._state[index]
                    kernel(p, grad.indices, grad.rows, st["exp_avg"], st["exp_avg_sq"],
                           lr=v["lr"], beta1=v["beta1"], beta2=v["beta2"], eps=v["eps"],
                           step=int(self._counts[index]) + 1, maximize=group["maximize"])
                    self._counts[index] += 1
                index += 1
            self._used[g] = [v["lr"], 0.0, v["beta1"], 0.0]

    def step_reference(self, grads: SparseGrads) -> None:  # type: ignore[override]
        """The same update as :meth:`step`, computed by :mod:`fastlr.reference.sparse` in
        NumPy (the oracle the tests hold :meth:`step` to).

        Parameters
        ----------
        grads : list of RowSparseGrad or None, or dict of str -> RowSparseGrad or None
            As for :meth:`step`.

        Raises
        ------
        TypeError, ValueError
            As for :meth:`step`.

        Examples
        --------
        >>> E = np.zeros((3, 1))
        >>> opt = fastlr.SparseAdam([E], lr=0.5)
        >>> opt.step_reference([fastlr.RowSparseGrad([0], np.array([[2.0]]))])
        >>> E[:, 0].round(4)
        array([-0.5,  0. ,  0. ])
        """
        grads, values = self._checked_grads(grads, "step_reference")
        self._apply(grads, values, _reference.sparse_adam)
        self._t += 1


class _SparseStep:
    """SparseAdam's engine: the Adam engine evaluates the schedules and holds the layout
    (``configure``, ``set_groups``, ``group_values``); ``step`` checks every row-sparse grad
    and then runs the sparse kernel. :meth:`Optimizer.step` calls it as it calls the
    engine, with the optimizer's lock, name lookup and error relabelling around it."""

    __slots__ = ("_owner", "_engine")

    def __init__(self, owner: SparseAdam, engine: Any) -> None:
        self._owner = weakref.ref(owner)
        self._engine = engine

    def configure(self, *args: Any) -> None:
        self._engine.configure(*args)

    def set_groups(self, groups: Any) -> None:
        self._engine.set_groups(groups)

    def group_values(self, t: int) -> Any:
        return self._engine.group_values(t)

    @property
    def last_grad_norm(self) -> float:
        return math.nan             # never clips

    def step(self, grads: Any, t: int, n_threads: int, max_grad_norm: float,
             skip_nonfinite: bool) -> bool:
        opt = self._owner()
        grads, values = opt._checked_grads(grads, "step")
        opt._apply(grads, values, sparse_adam)
        return True
