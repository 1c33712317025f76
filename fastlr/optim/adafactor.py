"""Adafactor with torch.optim.Adafactor's semantics (:class:`Adafactor`) and its functional
kernel (:func:`adafactor`).

Adafactor does not fit the element-wise optimizer table (its second moment of a >= 2-D param
is factored into row and column statistics reduced from the whole gradient), so, like
:class:`fastlr.LBFGS`, it has its own module: the compiled kernels are in
:mod:`fastlr._core.adafactor`, the NumPy twin is :func:`fastlr.reference.adafactor`, the
``torch.optim`` bridge is ``fastlr.compat.torch.Adafactor``. The class follows the
conventions of the table's classes: param groups (dicts, per-group hyperparameters,
``add_param_group``), named params, a float or a :mod:`fastlr.schedules` schedule for
``lr``, ``beta2_decay``, ``d`` and ``weight_decay``, ``state_dict`` / ``load_state_dict``
that restore the state and never a hyperparameter, torch's ``repr``.
"""

from __future__ import annotations

import bisect
import numbers
import threading
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastlr._core.dispatch import module as _variant
from fastlr._core.args import FINITE, NONNEG, flag_arg
from fastlr.optim.base import Optimizer
from fastlr.optim.checkpoint import (CheckpointMixin, StateFileMixin, _plain)
from fastlr.optim.front import split_flat_same_dtype
from fastlr.optim.groups import GroupsMixin, _nonneg_int, groups_arg
from fastlr.optim.stepping import StepMixin
from fastlr.schedules import Schedule

__all__ = ["Adafactor", "adafactor"]

_FORMAT = "fastlr-adafactor-1"

Grads = Union[Sequence[np.ndarray], np.ndarray, Mapping[str, np.ndarray]]


# the kernel for this CPU (fastlr._core.adafactor, or its x86-64-v3 build)
_af = _variant("adafactor")
_apply, adafactor, check_hypers, state_shapes = (_af._apply, _af.adafactor, _af.check_hypers,
                                                 _af.state_shapes)


class Adafactor(GroupsMixin, StateFileMixin):
    r"""Adafactor (torch.optim.Adafactor 2.13's update rule, names, defaults and checks).

    Each :meth:`step` updates every param in place from its grad ``G``. With ``t`` the
    param's update number, ``w = t ** beta2_decay``, ``rho = min(lr, 1 / sqrt(t))`` and
    ``alpha = max(eps2, RMS(param)) * rho`` (``RMS(x) = sqrt(mean(x^2))``):

    * a param of >= 2 dims (the last two m x n, leading dims a batch) keeps a row statistic
      ``R`` (shape ``(..., m, 1)``) and a column statistic ``C`` (``(..., 1, n)``):
      ``R = lerp(R, mean_j G^2, w)``, ``C = lerp(C, mean_i G^2, w)``,
      ``V = R C / max(mean_i R, eps1)``;
    * a param of 0 or 1 dims keeps ``V = variance = lerp(variance, G^2, w)``;

    then ``U = G / sqrt(max(V, eps1^2))``, ``param *= 1 - lr * weight_decay`` and
    ``param -= alpha / max(1, RMS(U) / d) * U`` (``G = -grad`` with ``maximize``).

    Memory: the state of an m x n param is ``m + n`` values (``R`` and ``C``), not
    ``m * n`` as Adam's two buffers of ``m * n`` each; the update ``U`` is never stored (the
    compiled kernel recomputes it element by element).

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or
        list of group dicts
        The float32/float64 arrays to update in place (C- or F-contiguous, writeable),
        optionally named and in groups (``{"params": [...], hyperparameter: value}``), as
        for :class:`fastlr.Adam`.
    lr : float or schedule, default 1e-2
        ``>= 0``: the cap of the relative step size ``rho`` (dimensionless) and the factor
        of the weight decay. A schedule (or callable ``step -> float``) is evaluated at
        each step.
    beta2_decay : float or schedule, default -0.8
        ``<= 0``: the exponent of the statistics' weight ``w = t ** beta2_decay``.
    eps : (float or None, float), default (None, 1e-3)
        ``(eps1, eps2)``, each ``>= 0``: ``eps1`` floors ``mean_i R`` and ``sqrt(V)`` (grad
        units; None: the machine epsilon of the dtype of the group's first param, as
        torch), ``eps2`` floors the param's RMS in ``alpha`` (param units).
    d : float or schedule, default 1
        ``>= 1``: the update clipping threshold on ``RMS(U)``.
    weight_decay : float or schedule, default 0
        ``>= 0``: decoupled weight decay, ``param *= 1 - lr * weight_decay`` per step.
    maximize : bool, default False
        Ascend instead of descend.

    Attributes
    ----------
    defaults : dict
        The checked default hyperparameters.
    param_groups : list of dict
        The groups (dicts like torch's whose writes are checked): ``params``,
        ``param_names`` when named, and the hyperparameters; a write takes effect at the
        next step.

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, or params overlap in memory.

    Notes
    -----
    The arithmetic is torch's single-tensor path, operation by operation in the param's
    dtype; the reductions (sums of squares) are accumulated in double, so results agree with
    torch to rounding (float64: about 1e-15 relative after 100 steps), not bit for bit.
    Every param takes a grad at every step (fastlr has no ``None`` grads); an empty param
    is left as it is, its update count still advances (torch divides by its zero size).

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> W = np.ones((3, 4)); b = np.zeros(4)
    >>> opt = fastlr.Adafactor([W, b], lr=0.01)
    >>> opt.step([np.full((3, 4), 0.5), np.full(4, 0.1)])
    >>> [v.shape for v in opt.state[0].values() if isinstance(v, np.ndarray)]
    [(3, 1), (1, 4)]
    >>> round(float(W[0, 0]), 6)
    0.99
    """

    _flags = ("maximize",)
    _pairs = {"eps": ("eps1", "eps2")}
    _ranges = {"lr": NONNEG, "beta2_decay": FINITE, "eps1": NONNEG, "eps2": NONNEG,
               "d": FINITE, "weight_decay": NONNEG}
    _schedulable = ("lr", "beta2_decay", "d", "weight_decay")
    # what the borrowed repr shows after the groups (none of these options here)
    _max_grad_norm = None
    _skip_nonfinite = False
    _n_threads = None
    _state_dtype = "float32"    # (read by that repr on branches with state_dtype)
    _scalar_init = 1.0      # (GroupsMixin._add_group fills a per-param array with it)

    def __init__(self, params: Any, lr: Any = 1e-2, beta2_decay: Any = -0.8,
                 eps: Tuple[Optional[float], float] = (None, 1e-3), d: Any = 1.0,
                 weight_decay: Any = 0.0, *, maximize: bool = False) -> None:
        self._busy = threading.Lock()
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d,
                    "weight_decay": weight_decay, "maximize": maximize}
        self.defaults: Dict[str, Any] = {k: self._check_hyper(k, v, "")
                                         for k, v in defaults.items()}
        self.param_groups = []
        self._params: List[np.ndarray] = []
        self._names = None
        self._name_index = {}
        self._getter = None
        # per param / per group arrays that GroupsMixin._add_group extends
        self._counts = np.zeros(0, dtype=np.int64)      # per param: updates applied
        self._started = np.zeros(0, dtype=np.uint8)
        self._used = np.zeros((0, 4), dtype=np.float64)
        self._mu_product = np.zeros(0, dtype=np.float64)
        self._lr_scale = np.zeros(0, dtype=np.float64)
        self._state: List[Dict[str, np.ndarray]] = []  # per param: {name: buffer}
        self._t = 0
        self._dirty = False
        self._last_lr: Optional[List[float]] = None
        self._snapshot_id = uuid.uuid4().hex
        self._starts: List[int] = []                    # the written buffers' byte spans
        self._ends: List[int] = []
        for group in groups_arg(self._name, params):
            self._add_group(group)
        self._configure()

    # the grads dict, params, steps, the repr and the checkpoint's group checks and refusal
    # of the other optimizers
    _grads_list: Any = StepMixin._grads_list
    params = StepMixin.params
    steps = StepMixin.steps
    __repr__: Any = Optimizer.__repr__
    _refuse_or_warn: Any = CheckpointMixin._refuse_or_warn
    _checked_groups: Any = CheckpointMixin._checked_groups
    _settle_groups: Any = CheckpointMixin._settle_groups

    # ------------------------------------------------------------------------------------
    # hyperparameters and state
    # ------------------------------------------------------------------------------------
    def _check_hyper(self, key, value, where):
        """torch's checks of one hyperparameter (``eps1`` may be None; ``beta2_decay``
        ``<= 0``, ``d >= 1``), before it is stored."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key == "eps" and isinstance(value, (tuple, list)) and len(value) == 2 and \
                value[0] is None:
            self._check_hyper("eps2", value[1], where)
            return value
        if key == "eps1" and value is None:
            return value
        value = GroupsMixin._check_hyper(self, key, value, where)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            label = f"{where}[{key!r}]" if where else key
            if key == "beta2_decay" and value > 0:
                raise ValueError(f"{self._name}: {label} must be <= 0, got {value!r}")
            if key == "d" and not value >= 1:
                raise ValueError(f"{self._name}: {label} must be >= 1, got {value!r}")
        return value

    def _configure(self):
        """State buffers (zeros, torch's shapes, the param's layout) for params that have
        none yet, and the byte spans of every written buffer (for the grads' overlap
        check)."""
        for p, st in zip(self._params, self._state):
            if not st:
                order = "F" if not p.flags.c_contiguous else "C"
                st.update((k, np.zeros(s, dtype=p.dtype, order=order))
                          for k, s in state_shapes(p.shape).items())
        spans = sorted((a.__array_interface__["data"][0], a.nbytes)
                       for a in [*self._params, *(v for st in self._state
                                                  for v in st.values())] if a.nbytes)
        self._starts = [s for s, _ in spans]
        self._ends = [s + n for s, n in spans]
        self._dirty = False

    def _values_at(self, t: int, fn: str) -> List[Tuple[Any, ...]]:
        """Each group's kernel arguments for the update after ``t`` steps (schedules
        evaluated at ``t``), checked: ``(lr, beta2_decay, eps1, eps2, d, weight_decay,
        maximize)`` with ``eps1`` resolved."""
        out = []
        for g, group in enumerate(self.param_groups):
            v = {k: (group[k](t) if (isinstance(group[k], Schedule) or callable(group[k]))
                     else group[k]) for k in ("lr", "beta2_decay", "d", "weight_decay")}
            eps1, eps2 = group["eps"]
            lr, b2, e1, e2, d, wd, mx = check_hypers(
                fn, f"param_groups[{g}] at step {t}: ", v["lr"], v["beta2_decay"], eps1,
                eps2, v["d"], v["weight_decay"], group["maximize"], ("eps[0]", "eps[1]"))
            if e1 is None:      # torch: the machine epsilon of the group's first param
                e1 = float(np.finfo(group["params"][0].dtype).eps)
            out.append((lr, b2, e1, e2, d, wd, mx))
        return out

    @property
    def last_lr(self) -> Optional[List[float]]:
        """The lr each group used in the last update (None before the first)."""
        return None if self._last_lr is None else list(self._last_lr)

    @property
    def next_lr(self) -> List[float]:
        """The lr each group will use in the next update."""
        return [v[0] for v in self._values_at(self._t, f"{self._name}.next_lr")]

    @property
    def state(self) -> Dict[int, Dict[str, Any]]:
        """Per-param state, keyed by param index: ``{"step": updates applied to it,
        "row_var", "col_var"}`` (>= 2 dims; shapes ``(..., m, 1)``, ``(..., 1, n)``) or
        ``{"step", "variance"}`` (0 or 1 dims): live views, torch's names."""
        return {i: dict(st, step=int(self._counts[i])) for i, st in enumerate(self._state)}

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
    def _checked_grads(self, grads, fn):
        n = len(self._params)
        if self._getter is not None and isinstance(grads, dict):
            grads = self._grads_list(grads, "step")
            labels = [f"grads[{k!r}]" for k in self._names]
        elif isinstance(grads, dict):
            grads = self._grads_list(grads, "step")     # raises: the params have no names
        elif isinstance(grads, (list, tuple, np.ndarray)):
            if isinstance(grads, np.ndarray):   # the one param's grad, or a flat buffer
                grads = split_flat_same_dtype(self._params, grads, fn)
            labels = [f"grads[{i}]" for i in range(n)]
        else:
            raise TypeError(f"{fn}: grads must be a list of {n} arrays in param order"
                            f"{' or a dict of name -> array' if self._names else ''} (or "
                            f"one array: the one param's grad or a 1-D flat grad buffer), "
                            f"got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"{fn}: got {len(grads)} grads for {n} params")
        for i, (g, p) in enumerate(zip(grads, self._params)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"{fn}: {labels[i]} must be a numpy.ndarray, got "
                                f"{type(g).__name__}")
            if g.dtype != p.dtype:
                raise TypeError(f"{fn}: {labels[i]} has dtype {g.dtype} but "
                                f"{self._label(i)} has dtype {p.dtype}; they must be equal")
            if g.shape != p.shape:
                raise ValueError(f"{fn}: {labels[i]} has shape {g.shape} but "
                                 f"{self._label(i)} has shape {p.shape}; they must be equal")
            if not (g.flags.c_contiguous if p.flags.c_contiguous else g.flags.f_contiguous):
                raise ValueError(f"{fn}: {labels[i]} must have the layout of "
                                 f"{self._label(i)} ({'C' if p.flags.c_contiguous else 'F'}"
                                 f"-contiguous), got strides {g.strides}")
            if not g.flags.aligned:
                raise ValueError(f"{fn}: {labels[i]} is not aligned in memory")
            if g.nbytes:
                lo = g.__array_interface__["data"][0]
                k = bisect.bisect_right(self._starts, lo + g.nbytes - 1) - 1
                if k >= 0 and self._ends[k] > lo:
                    raise ValueError(f"{fn}: {labels[i]} overlaps a param or a state buffer "
                                     f"in memory (a grad is read while they are written)")
        return grads

    def step(self, grads: Grads) -> None:
        """Apply one update to every param from ``grads``.

        Everything is checked first (the grads, and the hyperparameters the schedules give
        at this step); on error nothing is written and no counter moves.

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
            If a grad has the wrong type or dtype.
        ValueError
            If the number, shapes, layouts or names of the grads do not match the params
            (one array: neither the one param's shape nor a 1-D flat grad buffer of their
            size), a grad overlaps a written buffer, or a schedule gives a value out of
            range.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> w = np.ones(2)
        >>> opt = fastlr.Adafactor([w], lr=0.1)
        >>> opt.step([np.array([1.0, -1.0])])
        >>> w
        array([0.9, 1.1])
        """
        fn = f"{self._name}.step"
        with self._exclusive("step"):
            if self._dirty:
                self._configure()
            grads = self._checked_grads(grads, fn)
            values = self._values_at(self._t, fn)
            i = 0
            for group, v in zip(self.param_groups, values):
                for p in group["params"]:
                    st = self._state[i]
                    _apply(p, grads[i], st.get("row_var"), st.get("col_var"),
                           st.get("variance"), int(self._counts[i]) + 1, *v)
                    i += 1
            self._counts += 1
            self._t += 1
            self._last_lr = [v[0] for v in values]

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        A scheduled hyperparameter is recorded as ``{"schedule": repr}``.

        Returns
        -------
        dict
            ``{"format", "steps", "state": {i: {"step", "row_var", "col_var"} or {"step",
            "variance"}}, "param_groups": [hyperparameters, "params": indices,
            "param_names": names], "last_lr", "snapshot_of"}``.

        Examples
        --------
        >>> opt = fastlr.Adafactor([np.ones((2, 3))])
        >>> sorted(opt.state_dict()["state"][0])
        ['col_var', 'row_var', 'step']
        """
        with self._exclusive("state_dict"):
            groups, index = [], 0
            for group in self.param_groups:
                g = {k: _plain(v) for k, v in group.items()
                     if k not in ("params", "param_names")}
                g["params"] = list(range(index, index + len(group["params"])))
                index += len(group["params"])
                if "param_names" in group:
                    g["param_names"] = list(group["param_names"])
                groups.append(g)
            state = {i: dict({k: v.copy(order="K") for k, v in st.items()},
                             step=int(self._counts[i])) for i, st in enumerate(self._state)}
            return {"format": _FORMAT, "steps": self._t, "state": state,
                    "param_groups": groups, "last_lr": self.last_lr,
                    "snapshot_of": self._snapshot_id}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict: the step count, the per-param counts and statistics; never
        a hyperparameter.

        Everything is validated first; on any error nothing changes. Every hyperparameter
        the state dict records must equal the optimizer's (a difference raises
        ``ValueError`` naming the group, the key and both values; ``strict=False``: a
        warning, the optimizer's values kept), except for this optimizer's own
        :meth:`state_dict` (a rollback restores them too). Named params must carry the
        same names in order (an unnamed state dict loads by position).

        Parameters
        ----------
        state_dict : dict
            From :meth:`state_dict`.
        strict : bool, default True
            Raise on hyperparameters or names that differ; with False, warn.

        Raises
        ------
        TypeError
            If ``state_dict`` is not a dict or ``strict`` is not a bool.
        ValueError
            If the state dict is malformed, does not fit the params, or (``strict=True``)
            records other hyperparameters or names.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> w = np.ones(3)
        >>> opt = fastlr.Adafactor([w])
        >>> sd = opt.state_dict()
        >>> opt.step([np.ones(3)])
        >>> opt.load_state_dict(sd)
        >>> opt.steps, opt.state[0]["step"]
        (0, 0)
        """
        name = f"{self._name}.load_state_dict"
        strict = flag_arg(name, "strict", strict)
        with self._exclusive("load_state_dict"):
            self._load(state_dict, strict, "load_state_dict")

    def _load(self, sd, strict, what):
        name = f"{self._name}.{what}"
        if not isinstance(sd, dict):
            raise TypeError(f"{name}: expected a dict, got {type(sd).__name__}")
        for key in ("steps", "state", "param_groups"):
            if key not in sd:
                raise ValueError(f"{name}: the state dict has no {key!r} entry")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}, expected "
                             f"{_FORMAT!r}")
        steps = _nonneg_int(name, "steps", sd["steps"])
        last_lr = sd.get("last_lr")
        if last_lr is not None and (not isinstance(last_lr, (list, tuple)) or
                                    len(last_lr) != len(self.param_groups)):
            raise ValueError(f"{name}: last_lr must be None or one lr per param group, got "
                             f"{last_lr!r:.100}")
        new_hypers, renamed, differ = self._checked_groups(name, sd["param_groups"])
        state = sd["state"]
        if not isinstance(state, dict):
            raise TypeError(f"{name}: 'state' must be a dict keyed by param index")
        known = {str(i) for i in range(len(self._params))}
        unknown = [k for k in state if not (isinstance(k, (int, np.integer, str))
                                            and str(k) in known)]
        if unknown:
            raise ValueError(f"{name}: 'state' has entries {unknown[:5]!r} for params this "
                             f"optimizer does not have (it has {len(self._params)})")
        new_state = []
        for i, p in enumerate(self._params):
            st = state.get(i, state.get(str(i)))
            if not isinstance(st, dict):
                raise ValueError(f"{name}: the state dict has no state for param {i}")
            count = _nonneg_int(name, f"state[{i}]['step']", st.get("step"))
            shapes = state_shapes(p.shape)
            extra = sorted(set(st) - set(shapes) - {"step"}, key=str)
            if extra:
                raise ValueError(f"{name}: state[{i}] has entries {extra} that "
                                 f"{self._label(i)} of shape {p.shape} does not have "
                                 f"(expected {sorted(shapes)})")
            bufs = {}
            for key, shape in shapes.items():
                arr = st.get(key)
                if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or \
                        arr.shape != shape:
                    raise ValueError(f"{name}: state[{i}][{key!r}] must be a float array "
                                     f"of shape {shape} for {self._label(i)}, got "
                                     f"{getattr(arr, 'dtype', type(arr).__name__)} "
                                     f"{getattr(arr, 'shape', '')}")
                bufs[key] = arr
            new_state.append((count, bufs))
        self._settle_groups(name, strict, sd, new_hypers, renamed, differ)
        # everything checked: apply
        for i, (count, bufs) in enumerate(new_state):
            self._counts[i] = count
            for key, arr in bufs.items():
                np.copyto(self._state[i][key], arr, casting="unsafe")
        self._t = steps
        self._last_lr = None if last_lr is None else [float(v) for v in last_lr]
