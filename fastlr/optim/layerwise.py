"""Layer-wise adaptive optimizers: :class:`LAMB` and :class:`LARS`, with optax's definitions
(``optax.lamb``, ``optax.lars``, optax 0.2.8).

Each step scales every param array's update by a trust ratio built from the L2 norms of the
array and of its update, so these do not fit the element-wise table of
:mod:`fastlr._specs`: their kernels are :mod:`fastlr._core.layerwise` (the norms fused into
the step), their NumPy twins :mod:`fastlr.reference.layerwise`. The classes share the other
optimizers' param groups, argument checks, names, checkpoints and ``repr``
(:mod:`fastlr.optim.groups`, :mod:`fastlr.optim.checkpoint`). optax's masks are group
options: ``weight_decay_mask`` (both) and ``trust_ratio_mask`` (LARS), True by default.
torch has neither optimizer, so there is no ``fastlr.compat.torch`` bridge.
"""

from __future__ import annotations

import bisect
import numbers
import threading
import uuid
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np

from fastlr import reference
from fastlr._core.args import (NONNEG, UNIT, checked_real, layout_hint, ndarray_hint,
                                threads_arg)
from fastlr._core.dispatch import module as _variant
from fastlr._core.ema import check_arrays
from fastlr._kernels import get_num_threads
from fastlr.optim.base import Optimizer
from fastlr.optim.checkpoint import CheckpointMixin
from fastlr.optim.front import split_flat_same_dtype
from fastlr.optim.groups import GroupsMixin
from fastlr.optim.stepping import StepMixin

__all__ = ["LAMB", "LARS"]

Params = Union[np.ndarray, Sequence[Any], Mapping[str, np.ndarray]]
Grads = Union[Sequence[np.ndarray], np.ndarray, Mapping[str, np.ndarray]]


# the kernels for this CPU (fastlr._core.layerwise, or its x86-64-v3 build)
_lw = _variant("layerwise")
COLUMNS, N_COLS, Kind, Layerwise = _lw.COLUMNS, _lw.N_COLS, _lw.Kind, _lw.Layerwise


class _Layerwise(GroupsMixin, CheckpointMixin):
    """What LAMB and LARS share: construction, the step through the compiled engine, its
    NumPy twin, the attributes of the other optimizers."""

    _kind: int
    _twin: str                          # the NumPy twin in fastlr.reference
    _slots: Tuple[str, ...]             # the state buffers, in the engine's order
    _flags: Tuple[str, ...]
    _ranges: Dict[str, int]
    _schedulable = ("lr", "weight_decay")
    _optional_state: Tuple[str, ...] = ()
    _scalar = None
    _scalar_init = 1.0
    _pairs: Dict[str, Tuple[str, str]] = {}

    def __init__(self, params: Params, defaults: Mapping[str, Any],
                 n_threads: Optional[int]) -> None:
        self.defaults = {k: self._check_hyper(k, v, "") for k, v in defaults.items()}
        self._n_threads = None if n_threads is None else threads_arg(self._name, n_threads)
        self._max_grad_norm = None          # (the other optimizers' options, unused here)
        self._skip_nonfinite = False
        self.param_groups = []
        self._params = []
        self._names = None
        self._name_index = {}
        self._getter = None
        self._counts = np.zeros(0, dtype=np.int64)
        self._started = np.zeros(0, dtype=np.uint8)
        self._used = np.zeros((0, 4), dtype=np.float64)
        self._mu_product = np.zeros(0, dtype=np.float64)
        self._lr_scale = np.zeros(0, dtype=np.float64)
        self._skipped = 0
        self._plateau = None
        self._pending_plateau = None
        self._state = []
        self._t = 0
        self._dirty = False
        self._snapshot_id = uuid.uuid4().hex
        self._busy = threading.Lock()
        self._engine: Optional[Layerwise] = None
        self._ratios = np.zeros(0)
        for group in self._groups_arg(params):
            self._add_group(group)
        self._configure()

    # the other optimizers' step-side helpers (they use only the attributes set above)
    __repr__ = Optimizer.__repr__
    _grads_list: Any = StepMixin._grads_list
    _relabelled: Any = StepMixin._relabelled
    _live_state: Any = StepMixin._live_state
    params = StepMixin.params
    steps = StepMixin.steps
    state = StepMixin.state
    last_lr = StepMixin.last_lr

    def _configure(self) -> None:
        """State for params that have none yet (zeros like the param); the engine over
        every param when the params changed."""
        for p, st in zip(self._params, self._state):
            if not st:
                st.update((k, np.zeros_like(p)) for k in self._slots)
        if self._engine is None or len(self._engine.params) != len(self._params):
            groups = [g for g, group in enumerate(self.param_groups)
                      for _ in group["params"]]
            self._engine = Layerwise(self._name, self._kind, self._params,
                                     [[st[k] for st in self._state] for k in self._slots],
                                     groups)
            self._ratios = np.ones(len(self._params))
        self._dirty = False

    # ---- hyperparameters at a step ----------------------------------------------------
    def _group_values(self, t: int) -> List[Dict[str, float]]:
        """Every group's hyperparameters at step ``t`` (schedules evaluated and checked),
        as the kernels take them: the masks applied (weight decay 0 where masked off), the
        flags as 0.0/1.0."""
        out = []
        for g, group in enumerate(self.param_groups):
            values: Dict[str, float] = {}
            for key, value in group.items():
                if key in ("params", "param_names"):
                    continue
                if key in self._pairs:
                    values.update(zip(self._pairs[key], (float(v) for v in value)))
                elif key in self._flags:
                    values[key] = float(bool(value))
                elif isinstance(value, numbers.Real):
                    values[key] = float(value)
                else:                           # a schedule or a callable of the step
                    values[key] = checked_real(
                        f"{self._name}.step", f"param_groups[{g}][{key!r}] (its value at "
                        f"step {t})", value(t), self._ranges[key])
            values["lr"] *= float(self._lr_scale[g])
            if not values.pop("weight_decay_mask"):
                values["weight_decay"] = 0.0
            out.append(values)
        return out

    def _table(self, values: List[Dict[str, float]]) -> np.ndarray:
        table = np.zeros((len(values), N_COLS))
        columns = COLUMNS[self._kind]
        for row, v in zip(table, values):
            for key, value in v.items():
                row[columns[key]] = value
        return table

    @property
    def next_lr(self) -> List[float]:
        """The lr each group will use in the next update."""
        return [v["lr"] for v in self._group_values(self._t)]

    @property
    def trust_ratios(self) -> List[float]:
        """The trust ratio each param's last update used, in param order (1.0 before the
        first update, and where masked off or a norm was 0)."""
        return [float(r) for r in self._ratios]

    # ---- the step -------------------------------------------------------------------
    def step(self, grads: Grads) -> None:
        """Apply one update to every param from ``grads``, in one compiled call.

        The grads are checked (type, dtype, shape, layout, overlap with a buffer the step
        writes) and the schedules evaluated and checked before anything is written.

        Parameters
        ----------
        grads : list of numpy.ndarray, numpy.ndarray or dict of str -> numpy.ndarray
            One grad per param, with its dtype, shape and layout: a list in param order,
            or (named params) a dict of name -> grad in any order. One array (not a list)
            is the one param's grad when there is one param and it has its shape (checked
            as the list ``[grads]`` is), else a 1-D flat grad buffer of the params' dtype
            and total size (:func:`fastlr.flat_buffer`), split in param order.

        Raises
        ------
        TypeError
            If a grad has the wrong type, dtype or layout, or the grads are not a list,
            an array or (named params) a dict.
        ValueError
            If the number, shapes or names of the grads do not match the params (one
            array: neither the one param's shape nor a 1-D flat grad buffer of their
            size), a grad overlaps a param or a state buffer, or a schedule gives an
            invalid value.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.
        """
        if not self._busy.acquire(blocking=False):
            raise self._busy_error("step")
        given = grads
        try:
            grads = self._grads_arg(grads, "step")
            if self._dirty:
                self._configure()
            table = self._table(self._group_values(self._t))
            n_threads = self._n_threads if self._n_threads is not None else get_num_threads()
            assert self._engine is not None
            self._engine.step(grads, table, self._counts, n_threads, f"{self._name}.step")
            self._ratios[:] = self._engine.ratios
            self._counts += 1
            self._used[:, 0] = table[:, COLUMNS[self._kind]["lr"]]
            self._t += 1
        except (TypeError, ValueError) as error:
            self._raise_labelled(error, given)
        finally:
            self._busy.release()

    def step_reference(self, grads: Grads) -> None:
        """The same update as :meth:`step`, computed by the NumPy twins
        (:mod:`fastlr.reference.layerwise`); slow, the oracle the tests hold :meth:`step`
        to.

        Parameters
        ----------
        grads : list of numpy.ndarray, numpy.ndarray or dict of str -> numpy.ndarray
            As for :meth:`step`, and checked as :meth:`step` checks them (the same errors,
            before anything is written).

        Raises
        ------
        TypeError, ValueError
            As for :meth:`step`.
        """
        given = grads
        try:
            grads = self._grads_arg(grads, "step_reference")
            if self._dirty:
                self._configure()
            values = self._group_values(self._t)
            self._check_grads(grads, f"{self._name}.step_reference")
        except (TypeError, ValueError) as error:
            self._raise_labelled(error, given)
        twin = getattr(reference, self._twin)
        index = 0
        for g, (group, v) in enumerate(zip(self.param_groups, values)):
            kwargs = self._twin_kwargs(v)
            for p in group["params"]:
                st = self._state[index]
                self._ratios[index] = twin(p, np.asarray(grads[index]),
                                           *(st[k] for k in self._slots),
                                           **kwargs, **self._twin_step(index))
                index += 1
            self._used[g, 0] = v["lr"]
        self._counts += 1
        self._t += 1

    def _raise_labelled(self, error: Exception, given: Any) -> NoReturn:
        """Raise ``error`` (a TypeError/ValueError that :meth:`step` or
        :meth:`step_reference` caught) with its params and grads named as the optim layer
        names them (StepMixin._relabelled; ``given``: the grads as passed)."""
        relabelled = self._relabelled(error, given)
        if relabelled is error:
            raise error
        raise relabelled from None

    def _grads_arg(self, grads: Any, what: str) -> Any:
        """The grads as the engine takes them: a dict of name -> grad (named params) as the
        list in param order; one array as per-param grads (the one param's own grad as
        ``[grads]``, else a 1-D flat grad buffer of the params' dtype and total size, split
        in param order: front.split_flat_same_dtype); anything else as given (the engine,
        or :meth:`_check_grads`, refuses what is not a list)."""
        if type(grads) is list:
            return grads
        if isinstance(grads, dict):
            return self._grads_list(grads, what)
        if isinstance(grads, np.ndarray):
            return split_flat_same_dtype(self._params, grads, f"{self._name}.{what}")
        return grads

    def _check_grads(self, grads: Any, fn: str) -> None:
        """The engine's checks of the grads (fastlr._core.layerwise, Layerwise._check_grads:
        the same order and wording), for the NumPy twin: a list of float32/float64
        contiguous, aligned, native arrays (fastlr._core.ema.check_arrays, the engine's
        own), one per param, each of its param's dtype, shape and contiguous layout, none
        overlapping a param or a state buffer (which the step writes)."""
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"{fn}: grads must be a list of numpy.ndarray (one per param), "
                            f"got {type(grads).__name__}{ndarray_hint(grads)}")
        grads = check_arrays(fn, "grads", grads, False)
        n = len(self._params)
        if len(grads) != n:
            raise ValueError(f"{fn}: got {len(grads)} grads for {n} params; one grad per "
                             f"param. Nothing was updated")
        written = sorted((a.__array_interface__["data"][0], a.nbytes, label)
                         for i, (p, st) in enumerate(zip(self._params, self._state))
                         if p.nbytes
                         for a, label in [(p, f"params[{i}]"),
                                          *((st[k], f"state[{i}][{k!r}]")
                                            for k in self._slots)])
        starts = [lo for lo, _, _ in written]
        for i, (g, p) in enumerate(zip(grads, self._params)):
            name = f"grads[{i}]"
            if g.dtype != p.dtype:
                raise TypeError(f"{fn}: {name} has dtype {g.dtype} but params[{i}] has dtype "
                                f"{p.dtype}; they must be equal (float32 or float64)")
            if g.shape != p.shape:
                raise ValueError(f"{fn}: {name} has shape {g.shape} but params[{i}] has "
                                 f"shape {p.shape}; they must be equal")
            c_order = p.flags.c_contiguous
            if not (g.flags.c_contiguous if c_order else g.flags.f_contiguous):
                raise ValueError(f"{fn}: {name} is {'F' if c_order else 'C'}-contiguous but "
                                 f"params[{i}] is {'C' if c_order else 'F'}-contiguous; they "
                                 f"must share one contiguous layout"
                                 f"{layout_hint(name, not c_order, False)}")
            if g.nbytes:
                # the last written buffer starting below the grad's end is the only one
                # that can reach its start (they are disjoint)
                lo = g.__array_interface__["data"][0]
                k = bisect.bisect_left(starts, lo + g.nbytes)
                if k and written[k - 1][0] + written[k - 1][1] > lo:
                    raise ValueError(f"{fn}: {name} overlaps {written[k - 1][2]}, which the "
                                     f"step writes; pass a grad of its own. Nothing was "
                                     f"updated")

    def _twin_kwargs(self, v: Dict[str, float]) -> Dict[str, Any]:
        raise NotImplementedError

    def _twin_step(self, i: int) -> Dict[str, Any]:
        return {}

    # ---- checkpoints ------------------------------------------------------------------
    def _load_state_dict(self, state_dict, strict, what):
        """CheckpointMixin's, with the lr of the last step filled in from the schedules
        when the state dict does not record it."""
        sd = state_dict
        if isinstance(sd, dict) and sd.get("last_lr") is None and \
                isinstance(sd.get("steps"), int) and not isinstance(sd["steps"], bool) and \
                sd["steps"] > 0:
            sd = dict(sd, last_lr=[v["lr"] for v in self._group_values(sd["steps"] - 1)])
        CheckpointMixin._load_state_dict(self, sd, strict, what)


class LAMB(_Layerwise):
    r"""LAMB: Adam's update scaled per param array by a trust ratio (optax.lamb).

    For each param array ``p`` with grad ``g`` and ``k`` its update count (from 1):

    .. math::

        m &\leftarrow (1 - \beta_1)\, g + \beta_1 m, \qquad
        v \leftarrow (1 - \beta_2)\, g^2 + \beta_2 v \\
        u &= \frac{m / (1 - \beta_1^k)}{\sqrt{v / (1 - \beta_2^k) + \epsilon_{root}}
             + \epsilon} + \lambda p \\
        r &= \lVert p \rVert_2 / \lVert u \rVert_2 \quad
             (1 \text{ when either norm is } 0) \\
        p &\leftarrow p - \eta\, r\, u

    with ``lr`` :math:`\eta` and ``weight_decay`` :math:`\lambda` (the term is left out
    where the group's ``weight_decay_mask`` is False, optax's ``mask``). Since
    :math:`\lVert r u \rVert = \lVert p \rVert`, each array moves by
    :math:`\lVert \Delta p \rVert = \eta \lVert p \rVert` a step: ``lr`` is a relative
    step size (dimensionless). Matches optax 0.2.8's
    ``optax.lamb(lr, b1, b2, eps, eps_root, weight_decay, mask)`` to rounding (float64:
    about 1e-15 relative after 100 steps). The norms are summed in double in fixed blocks
    (the same bits for any thread count); each step makes two passes over each array
    (moments and norms, then the update; see :mod:`fastlr._core.layerwise`).

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or
        list of group dicts
        The float32/float64 arrays to update in place (C- or F-contiguous, writeable),
        optionally named and in groups (``{"params": [...], "weight_decay": 0.0,
        "weight_decay_mask": False, ...}``), as the other optimizers.
    lr : float, schedule or callable, default 1e-3
        Learning rate, ``>= 0`` (per step, relative to each array's norm); a
        :mod:`fastlr.schedules` schedule or a callable ``step -> float`` is evaluated at
        each step (update ``t + 1`` uses ``lr(t)``).
    betas : (float, float), default (0.9, 0.999)
        The moments' decay rates ``(b1, b2)``, each in ``[0, 1)``.
    eps : float, default 1e-6
        Added to the denominator outside the square root, ``>= 0`` (grad units).
    eps_root : float, default 0.0
        Added inside the square root, ``>= 0`` (squared grad units).
    weight_decay : float, schedule or callable, default 0.0
        Decoupled weight decay :math:`\lambda`, ``>= 0`` (per unit of lr, before the trust
        ratio).
    weight_decay_mask : bool, default True
        Whether weight decay applies (set it per group: False for biases and norms, as
        optax's ``mask``).
    n_threads : int, optional
        Threads for the step; ``None`` uses :func:`fastlr.get_num_threads` at each step.

    Attributes
    ----------
    defaults : dict
        The checked default hyperparameters.
    param_groups : list of ParamGroup
        The groups (dicts like torch's; writes are checked and apply at the next step).
    state : dict
        Per param index: ``step`` (updates applied), ``exp_avg`` (:math:`m`),
        ``exp_avg_sq`` (:math:`v`).

    Raises
    ------
    TypeError
        If a param is not a float32/float64 contiguous writeable array, or a
        hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, or params overlap in memory.

    See Also
    --------
    LARS : the trust ratio on momentum SGD.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([3.0, 4.0])
    >>> opt = fastlr.LAMB([w], lr=0.1)
    >>> opt.step([np.array([1.0, 1.0])])
    >>> w                               # moved by lr * |w| = 0.5 along -u
    array([2.64644661, 3.64644661])
    >>> round(opt.trust_ratios[0], 6)   # |w| / |u| = 5 / (sqrt(2) / (1 + 1e-6))
    3.535537
    """

    _kind = int(Kind.KIND_LAMB)
    _twin = "lamb"
    _slots = ("exp_avg", "exp_avg_sq")
    _flags = ("weight_decay_mask",)
    _pairs = {"betas": ("beta1", "beta2")}
    _ranges = {"lr": NONNEG, "beta1": UNIT, "beta2": UNIT, "eps": NONNEG, "eps_root": NONNEG,
               "weight_decay": NONNEG}

    def __init__(self, params: Params, lr: Any = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 eps_root: float = 0.0, weight_decay: Any = 0.0, *,
                 weight_decay_mask: bool = True, n_threads: Optional[int] = None) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "eps_root": eps_root,
                                  "weight_decay": weight_decay,
                                  "weight_decay_mask": weight_decay_mask}, n_threads)

    def _twin_kwargs(self, v):
        return {k: v[k] for k in ("lr", "beta1", "beta2", "eps", "eps_root", "weight_decay")}

    def _twin_step(self, i):
        return {"step": int(self._counts[i]) + 1}


class LARS(_Layerwise):
    r"""LARS: momentum SGD with the update scaled per param array by a trust ratio
    (optax.lars).

    For each param array ``p`` with grad ``g``:

    .. math::

        u &= g + \lambda p \\
        r &= c\, \lVert p \rVert_2 / (\lVert u \rVert_2 + \epsilon) \quad
             (1 \text{ when either norm is } 0) \\
        s &= \eta\, r\, u, \qquad b \leftarrow s + \mu b \\
        p &\leftarrow p - b \quad (\text{nesterov: } p \leftarrow p - (s + \mu b))

    with ``lr`` :math:`\eta`, ``weight_decay`` :math:`\lambda` (left out where the group's
    ``weight_decay_mask`` is False), ``trust_coefficient`` :math:`c`, ``momentum``
    :math:`\mu`; :math:`r = 1` where the group's ``trust_ratio_mask`` is False (optax's
    masks; typically both off for biases and norms). The momentum buffer :math:`b` holds
    lr-scaled steps (param units): optax's ``trace`` with the sign flipped (exactly).
    Matches optax 0.2.8's ``optax.lars`` to rounding (float64: about 1e-15 relative after
    100 steps). The norms are summed in double in fixed blocks (the same bits for any thread
    count); a step makes two passes over each array (the norms, then the update), one where
    the trust ratio is masked off.

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or
        list of group dicts
        The float32/float64 arrays to update in place (C- or F-contiguous, writeable),
        optionally named and in groups (``{"params": [...], "trust_ratio_mask": False,
        "weight_decay_mask": False, ...}``), as the other optimizers.
    lr : float, schedule or callable, default 1e-3
        Learning rate, ``>= 0``; a :mod:`fastlr.schedules` schedule or a callable
        ``step -> float`` is evaluated at each step (update ``t + 1`` uses ``lr(t)``).
    momentum : float, default 0.9
        The buffer's decay :math:`\mu`, ``>= 0``.
    weight_decay : float, schedule or callable, default 0.0
        :math:`\lambda`, ``>= 0``: added to the grad (grad units per param unit).
    trust_coefficient : float, default 0.001
        :math:`c`, ``>= 0``.
    eps : float, default 0.0
        Added to the update's norm in the trust ratio, ``>= 0`` (grad units).
    nesterov : bool, default False
        Nesterov momentum.
    weight_decay_mask : bool, default True
        Whether weight decay applies (per group, optax's ``weight_decay_mask``).
    trust_ratio_mask : bool, default True
        Whether the trust ratio applies (per group, optax's ``trust_ratio_mask``).
    n_threads : int, optional
        Threads for the step; ``None`` uses :func:`fastlr.get_num_threads` at each step.

    Attributes
    ----------
    defaults : dict
        The checked default hyperparameters.
    param_groups : list of ParamGroup
        The groups (dicts like torch's; writes are checked and apply at the next step).
    state : dict
        Per param index: ``step`` (updates applied), ``momentum_buffer`` (:math:`b`).

    Raises
    ------
    TypeError
        If a param is not a float32/float64 contiguous writeable array, or a
        hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, or params overlap in memory.

    See Also
    --------
    LAMB : the trust ratio on Adam.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w, b = np.array([3.0, 4.0]), np.array([1.0])
    >>> opt = fastlr.LARS([{"params": [w]},
    ...                    {"params": [b], "trust_ratio_mask": False}],
    ...                   lr=0.1, trust_coefficient=0.01)
    >>> opt.step([np.array([0.6, 0.8]), np.array([0.5])])
    >>> w     # r = 0.01 * 5 / 1: s = 0.1 * 0.05 * g
    array([2.997, 3.996])
    >>> b     # r = 1: s = 0.1 * 0.5
    array([0.95])
    """

    _kind = int(Kind.KIND_LARS)
    _twin = "lars"
    _slots = ("momentum_buffer",)
    _flags = ("nesterov", "weight_decay_mask", "trust_ratio_mask")
    _ranges = {"lr": NONNEG, "momentum": NONNEG, "weight_decay": NONNEG,
               "trust_coefficient": NONNEG, "eps": NONNEG}

    def __init__(self, params: Params, lr: Any = 1e-3, momentum: float = 0.9,
                 weight_decay: Any = 0.0, trust_coefficient: float = 0.001, eps: float = 0.0,
                 nesterov: bool = False, *, weight_decay_mask: bool = True,
                 trust_ratio_mask: bool = True, n_threads: Optional[int] = None) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coefficient": trust_coefficient, "eps": eps,
                                  "nesterov": nesterov, "weight_decay_mask": weight_decay_mask,
                                  "trust_ratio_mask": trust_ratio_mask}, n_threads)

    def _twin_kwargs(self, v):
        kw = {k: v[k] for k in ("lr", "momentum", "weight_decay", "trust_coefficient", "eps")}
        kw["nesterov"] = bool(v["nesterov"])
        kw["trust_ratio"] = bool(v["trust_ratio_mask"])
        return kw
