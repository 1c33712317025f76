"""SparseAdam (torch.optim.SparseAdam): Adam on row-sparse grads, updating only the rows
each grad names (:class:`SparseAdam`).

It does not fit the element-wise table (``fastlr._specs``): its grads are
:class:`fastlr.RowSparseGrad` and its update reads and writes only the named rows, with
the kernel of :mod:`fastlr._core.sparse`. Everything else is the optimizers' common code
(:class:`fastlr.Optimizer`): param groups and names, schedules, the per-param step count,
state buffers ``exp_avg`` / ``exp_avg_sq``, checkpoints, ``repr``.

:func:`lazy_step` is the row-sparse step of the table's SGD, Adagrad and Adam (the lazy
variants: torch's sparse SGD and Adagrad, SparseAdam's rule), which
:meth:`fastlr.Optimizer.step` calls when the engine refuses a grad list that holds a
:class:`fastlr.RowSparseGrad`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from fastlr._core.args import POSITIVE, UNIT, checked_real
from fastlr import kernels as kernels_module
from fastlr import reference as reference_module
from fastlr import sparse as sparse_module
from fastlr._core.sparse import check_param, check_rows, sparse_adam
from fastlr.optim.base import Optimizer
from fastlr.optim.front import EngineFront
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
    _fused16_class = False              # its own front (row-sparse steps)
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
        written = _written(self)
        for i, (p, grad) in enumerate(zip(self._params, grads)):
            if grad is None:
                continue
            if not isinstance(grad, RowSparseGrad):
                raise TypeError(f"{fn}: grads[{i}] must be a fastlr.RowSparseGrad or None, "
                                f"got {type(grad).__name__} (SparseAdam does not support "
                                f"dense gradients; use fastlr.Adam for those)")
            check_rows(fn, f"params[{i}]", f"grads[{i}]", p, grad.indices, grad.rows)
            _check_apart(fn, i, grad.rows, written)
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


class _SparseStep(EngineFront):
    """SparseAdam's engine front (:mod:`fastlr.optim.front`): the Adam engine evaluates
    the schedules and holds the layout; ``step`` checks every row-sparse grad and then runs
    the sparse kernel."""

    __slots__ = ()

    @property
    def last_grad_norm(self) -> float:
        return math.nan             # never clips

    def step(self, grads: Any, t: int, n_threads: int, max_grad_norm: float,
             skip_nonfinite: bool) -> bool:
        opt = self._owner()
        grads, values = opt._checked_grads(grads, "step")
        opt._apply(grads, values, sparse_adam)
        return True


# ---- row-sparse grads in SGD, Adagrad and Adam (StepMixin's hook) ------------------------
#: the table's families that take a RowSparseGrad, and the lazy kernel of each
_LAZY_FAMILIES = ("sgd", "adagrad", "adam")


def has_row_sparse(opt: Optimizer, grads: Any) -> bool:
    """Whether ``grads`` (a step's argument, after a names lookup) holds a RowSparseGrad for
    a table optimizer (SparseAdam checks its own grads)."""
    return not isinstance(opt, SparseAdam) and isinstance(grads, (list, tuple)) and \
        any(isinstance(g, RowSparseGrad) for g in grads)


def lazy_step(opt: Optimizer, grads: Sequence[Any], reference: bool = False) -> bool:
    """One update of a table optimizer (SGD, Adagrad, Adam) whose grads mix dense arrays and
    :class:`RowSparseGrad`: a dense grad gets the optimizer's kernel, a row-sparse one the
    lazy update of its rows (SGD: torch's sparse SGD; Adagrad: torch's sparse Adagrad; Adam:
    SparseAdam's rule). Every grad and every refusal is checked before anything is written;
    ``reference``: the NumPy twins instead of the kernels. Returns True (applied)."""
    fn = opt._name
    family = opt._kernel
    cls = type(opt).__name__
    first = next(i for i, g in enumerate(grads) if isinstance(g, RowSparseGrad))
    if family not in _LAZY_FAMILIES:
        raise TypeError(f"{fn}: grads[{first}] is a fastlr.RowSparseGrad, which {cls} does "
                        f"not take (row-sparse grads: fastlr.SparseAdam, SGD, Adagrad, Adam)")
    for option in ("max_grad_norm", "skip_nonfinite"):
        if getattr(opt, f"_{option}"):
            raise ValueError(f"{fn}: {option} is not supported with row-sparse grads "
                             f"(grads[{first}] is a fastlr.RowSparseGrad)")
    if getattr(opt, "_state_dtype", "float32") != "float32":
        raise ValueError(f"{fn}: row-sparse grads (grads[{first}]) need state_dtype='float32'; "
                         f"this optimizer keeps state_dtype={opt._state_dtype!r}")
    if len(grads) != len(opt._params):
        raise ValueError(f"{fn}: got {len(grads)} grads for {len(opt._params)} params")
    if getattr(opt, "_master_weights", None) is False:
        # (16-bit params without masters: the lazy kernels run float32/float64 params only)
        raise ValueError(f"{fn}: row-sparse grads (grads[{first}]) are not supported with "
                         f"master_weights=False; keep master weights (the default) for them")
    values = opt._engine.group_values(opt._t)
    written = _written(opt)
    plan, index = [], 0
    for g, (group, v) in enumerate(zip(opt.param_groups, values)):
        for p in group["params"]:
            grad = grads[index]
            if isinstance(grad, RowSparseGrad):
                check_rows(fn, f"params[{index}]", f"grads[{index}]", p, grad.indices,
                           grad.rows)
                _refuse(fn, family, group, v, g, index)
                data = grad.rows
            else:
                _check_dense(fn, index, p, grad)
                data = grad
            _check_apart(fn, index, data, written)
            plan.append((group, v, index, p, grad))
            index += 1
    if reference:
        dense, lazy, threads = reference_module, reference_module, {}
    else:
        dense, lazy, threads = kernels_module, sparse_module, {"n_threads": opt._n_threads}
    for group, v, i, p, grad in plan:
        kwargs = opt._reference_kwargs(group, v, i)
        if isinstance(grad, RowSparseGrad):
            _lazy_update(lazy, family, p, grad, kwargs)
        else:
            getattr(dense, family)(p, grad, **kwargs, **threads)
    for g, v in enumerate(values):
        opt._used[g] = [v["lr"], v["momentum"], v["beta1"], v["weight_decay"]]
    opt._counts += 1
    return True


def _lazy_update(kernels, family, p, grad, kw):
    """The row-sparse update of ``p``, its state and hyperparameters in ``kw`` (the dense
    kernel's keyword arguments)."""
    if family == "sgd":
        kernels.sparse_sgd(p, grad.indices, grad.rows, lr=kw["lr"], maximize=kw["maximize"])
    elif family == "adagrad":
        kernels.sparse_adagrad(p, grad.indices, grad.rows, kw["state_sum"], lr=kw["lr"],
                               lr_decay=kw["lr_decay"], eps=kw["eps"], step=kw["step"],
                               maximize=kw["maximize"])
    else:
        kernels.sparse_adam(p, grad.indices, grad.rows, kw["exp_avg"], kw["exp_avg_sq"],
                            lr=kw["lr"], beta1=kw["beta1"], beta2=kw["beta2"], eps=kw["eps"],
                            step=kw["step"], maximize=kw["maximize"])


def _refuse(fn, family, group, v, g, i):
    """The combinations torch refuses with sparse grads, or that would touch every row."""
    where = f"grads[{i}] is a fastlr.RowSparseGrad but param_groups[{g}] has"
    if v.get("weight_decay", 0.0) != 0:
        raise ValueError(f"{fn}: {where} weight_decay={v['weight_decay']!r}; weight decay "
                         f"is not compatible with sparse gradients (it would update every "
                         f"row); set it to 0 for this group")
    if family == "sgd" and v["momentum"] != 0:
        raise ValueError(f"{fn}: {where} momentum={v['momentum']!r}; torch's sparse SGD has "
                         f"no momentum (the buffer would move every row); set it to 0")
    if family == "adam":
        if group.get("amsgrad"):
            raise ValueError(f"{fn}: {where} amsgrad=True, which lazy Adam (SparseAdam's "
                             f"rule) does not have")
        for key in ("lr", "eps"):
            if not v[key] > 0:
                raise ValueError(f"{fn}: {where} {key}={v[key]!r}; lazy Adam (SparseAdam's "
                                 f"rule) needs {key} > 0")


def _written(opt):
    """Every array a step of ``opt`` writes: the params and their state buffers."""
    return [a for i, p in enumerate(opt._params) for a in (p, *opt._state[i].values())]


def _check_apart(fn, i, data, written):
    """A grad's values must not share memory with anything the step writes (a param updated
    before the grad is read would change it)."""
    if any(np.may_share_memory(data, a) for a in written):
        raise ValueError(f"{fn}: grads[{i}] shares memory with a param or a state buffer, "
                         f"which the step writes")


def _check_dense(fn, i, p, grad):
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"{fn}: grads[{i}] must be a numpy.ndarray or a fastlr.RowSparseGrad, "
                        f"got {type(grad).__name__}")
    if grad.dtype != p.dtype:
        raise TypeError(f"{fn}: grads[{i}] has dtype {grad.dtype} but params[{i}] has dtype "
                        f"{p.dtype}; they must be equal")
    if grad.shape != p.shape:
        raise ValueError(f"{fn}: grads[{i}] has shape {grad.shape} but params[{i}] has shape "
                         f"{p.shape}; they must be equal")
    if not (grad.flags.c_contiguous if p.flags.c_contiguous else grad.flags.f_contiguous):
        raise ValueError(f"{fn}: grads[{i}] must be contiguous in the layout of params[{i}]")
