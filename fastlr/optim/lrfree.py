"""Learning-rate-free optimizers: Prodigy (prodigyopt 1.1.2) in NumPy (:class:`Prodigy`).

Prodigy estimates the step size ``d`` from global sums over every param (an inner product
and an L1 norm), so it does not fit the element-wise optimizer table: its own class, its
own two-pass compiled step (:func:`fastlr._core.lrfree.prodigy_step`; design notes in
``fastlr/_core/lrfree.pyx``) and its NumPy twin (:mod:`fastlr.reference.lrfree`). The
reference implementation is a torch optimizer (``prodigyopt.Prodigy``): the tests compare
against it directly, and ``fastlr.compat.torch.Prodigy`` is its bridge.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import threading
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from fastlr._core.args import (CLOSED_UNIT, NONNEG, POSITIVE, UNIT, checked_real, flag_arg,
                               int_arg, threads_arg)
from fastlr._core.dispatch import module as _variant
from fastlr.optim.checkpoint import (CheckpointMixin, StateFileMixin, _hyper_diff,
                                     _names_diff, _plain, _same)
from fastlr.optim.groups import (GroupsMixin, ParamGroup, _FIXED_KEYS, _some, by_name,
                                 groups_arg, split_named)
from fastlr.schedules import Schedule

__all__ = ["Prodigy"]

_FORMAT = "fastlr-prodigy-1"
_HYPERS = ("lr", "betas", "beta3", "eps", "weight_decay", "decouple", "use_bias_correction",
           "safeguard_warmup", "d0", "d_coef", "growth_rate", "slice_p")
#: read from group 0 by prodigyopt: every group must hold the same value
_SHARED = ("betas", "beta3", "decouple", "use_bias_correction", "d_coef", "growth_rate")
_FLAGS = ("decouple", "use_bias_correction", "safeguard_warmup")
#: the estimate's scalars (prodigyopt keeps them in every group)
_ESTIMATE = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")
_BUFFERS = ("exp_avg", "exp_avg_sq", "s", "p0")


# the step for this CPU (fastlr._core.lrfree, or its x86-64-v3 build)
prodigy_step = _variant("lrfree").prodigy_step


class Prodigy(StateFileMixin):
    r"""Prodigy: Adam with a learning-rate-free step size (prodigyopt 1.1.2's algorithm).

    Mishchenko & Defazio, *Prodigy: An Expeditiously Adaptive Parameter-Free Learner*
    (ICML 2024). The step size is ``dlr = d * lr * bc`` where ``lr`` is a unitless multiplier
    (leave it at 1), ``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with
    ``use_bias_correction`` (else 1) and ``d`` (in the params' units) is estimated from the
    distance travelled: with ``g`` the grad (plus ``weight_decay * p`` when ``decouple`` is
    False) and ``p0`` the params at the first step, each step

    .. math::

        m &\leftarrow \beta_1 m + d (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + d^2 (1 - \beta_2) g^2, \\
        s &\leftarrow \beta_3 s + \tfrac{d}{d_0}\,\mathrm{dlr}\; g, \qquad
        N \leftarrow \beta_3 N + \textstyle\sum \tfrac{d}{d_0}\,\mathrm{dlr}\;
        \langle g, p_0 - p \rangle, \\
        \hat d &= d_\mathrm{coef} N / \textstyle\sum \lVert s \rVert_1, \qquad
        d \leftarrow \min(\max(d_\max, \hat d),\; d \cdot \mathrm{growth\_rate}), \\
        p &\leftarrow p - \mathrm{dlr} \cdot m / (\sqrt v + d\,\epsilon)

    (``d`` first jumps to ``max(d, d_hat)`` while it still equals ``d0``; with
    ``safeguard_warmup`` the ``s`` update uses ``d`` instead of ``dlr``; with ``decouple``,
    ``p -= weight_decay * dlr * p`` before the update; with ``beta1 = 0`` the update is
    ``dlr * d * g / (sqrt(v) + d eps)``). ``s``, ``p0`` and the inner products use every
    ``slice_p``-th element of each param (C order). The sums run over every param of every
    group, in fixed blocks in double (the same bits for any thread count), in the same
    compiled pass as the moments; the param update is a second pass.

    Semantics are prodigyopt's, group by group: ``betas``, ``beta3``, ``decouple``,
    ``use_bias_correction``, ``d_coef`` and ``growth_rate`` are shared (prodigyopt reads
    group 0's; here every group must hold the same value); ``weight_decay``, ``eps``,
    ``d0``, ``safeguard_warmup``, ``slice_p`` are per group; each group's ``lr`` must be
    the largest group lr or 0 (a group with lr 0 keeps its moments but still moves by its
    old moments, as in prodigyopt). One estimate ``d`` is shared by all groups (prodigyopt
    writes the same value into each group): :attr:`d`.

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or list
        of group dicts
        The params, float32 or float64, C- or F-contiguous, writeable; updated in place.
        Group dicts (``{"params": ..., "weight_decay": ...}``) override hyperparameters.
    lr : float or schedule, default 1
        The step-size multiplier (unitless, ``>= 0``); a fastlr schedule or a callable
        ``k -> float`` is evaluated at the step count ``k`` each step.
    betas : (float, float), default (0.9, 0.999)
        Decays of the first and second moments, in [0, 1).
    beta3 : float, optional
        Decay of ``s`` and of the numerator, in [0, 1]; default ``sqrt(beta2)``.
    eps : float, default 1e-8
        Added to ``sqrt(v)``, times ``d`` (``> 0``).
    weight_decay : float, default 0
        L2 penalty (``>= 0``), decoupled (AdamW style, scaled by ``dlr``) when ``decouple``.
    decouple : bool, default True
    use_bias_correction : bool, default False
    safeguard_warmup : bool, default False
        Use ``d`` instead of ``dlr`` in the ``s`` update.
    d0 : float, default 1e-6
        The initial estimate ``d`` (``> 0``, the params' units).
    d_coef : float, default 1
        Factor of the estimate ``d_hat`` (``> 0``).
    growth_rate : float, default inf
        The largest factor ``d`` may grow by in one step (``> 0``).
    slice_p : int, default 1
        Stride of the subsampling of ``s`` and ``p0`` (``>= 1``; memory ``2 / slice_p`` of
        the params); fixed at construction. With ``slice_p > 1`` params of more than one
        dimension must be C-contiguous.
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.

    Attributes
    ----------
    param_groups : list of dict
        The groups (dicts like torch's, writes checked).
    d : float
        The current estimate (``d0`` before the first step).
    estimate : dict
        ``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat`` and ``k`` (steps taken), as
        prodigyopt keeps them in its groups.
    state : dict
        Per param index: ``exp_avg`` (absent when ``beta1 = 0``), ``exp_avg_sq``, ``s``,
        ``p0`` (live views; empty before the first step).

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, params overlap, shared hyperparameters differ
        between groups, or ``slice_p > 1`` meets a non-C-contiguous param.

    Notes
    -----
    Where fastlr differs from prodigyopt: hyperparameters are checked at construction (and
    a group's differing shared hyperparameter or lr is a ``ValueError`` before anything
    changes, where prodigyopt silently uses group 0's or raises mid-step); grads are never
    modified (prodigyopt adds the coupled weight decay into ``p.grad``); ``p0`` is a full
    copy even for an all-zero param (prodigyopt keeps a scalar zero). When every grad is
    zero the sums are zero and, as in prodigyopt, the moments are updated but neither the
    params nor ``d`` nor ``k`` change.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.Prodigy([w])
    >>> for _ in range(50):
    ...     _ = opt.step([2 * w])
    >>> bool(opt.d > 1e-6) and bool(np.abs(w).max() < 2.0)
    True
    """

    def __init__(self, params: Any, lr: Any = 1.0, betas: Sequence[float] = (0.9, 0.999),
                 beta3: Optional[float] = None, eps: float = 1e-8, weight_decay: float = 0,
                 decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float = math.inf, slice_p: int = 1, *,
                 n_threads: Optional[int] = None) -> None:
        name = self._name
        self._busy = threading.Lock()
        self._built = False
        self.param_groups: List[ParamGroup] = []
        self._n_threads = None if n_threads is None else threads_arg(name, n_threads)
        defaults = {"lr": lr, "betas": betas, "beta3": beta3, "eps": eps,
                    "weight_decay": weight_decay, "decouple": decouple,
                    "use_bias_correction": use_bias_correction,
                    "safeguard_warmup": safeguard_warmup, "d0": d0, "d_coef": d_coef,
                    "growth_rate": growth_rate, "slice_p": slice_p}
        self.defaults: Dict[str, Any] = {k: self._check_hyper(k, v, "")
                                         for k, v in defaults.items()}
        groups = groups_arg(name, params)
        params_all: List[np.ndarray] = []
        names_all: Optional[List[str]] = None
        built = []
        for g, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{name}: a param group must be a dict with a 'params' entry")
            arrays, names = split_named(name, group["params"], f"param_groups[{g}]['params']")
            if "param_names" in group:
                given = group["param_names"]
                if names is not None or not isinstance(given, (list, tuple)) or \
                        len(given) != len(arrays) or not all(isinstance(k, str) for k in given):
                    raise ValueError(f"{name}: param_groups[{g}]['param_names'] must be a "
                                     f"list of {len(arrays)} names beside a list of arrays")
                names = list(given)
            if g and (names is None) != (names_all is None):
                raise ValueError(f"{name}: param_groups[{g}] has "
                                 f"{'no names' if names is None else 'named params'} but "
                                 f"param_groups[0] {'has' if names is None else 'has none'}; "
                                 f"name all params or none")
            if names is not None:
                names_all = (names_all or []) + names
            full = ParamGroup()
            for key, value in self.defaults.items():
                dict.__setitem__(full, key, value)
            for key, value in group.items():
                if key not in _FIXED_KEYS:
                    dict.__setitem__(full, key, self._check_hyper(key, value,
                                                                  f"param_groups[{g}]"))
            full._set_params(name, g, arrays, names)
            built.append(full)
            params_all.extend(arrays)
        if names_all is not None and len(set(names_all)) != len(names_all):
            dup = next(k for k in names_all if names_all.count(k) > 1)
            raise ValueError(f"{name}: the name {dup!r} appears twice; names must be unique")
        self.param_groups = built       # (for the labels of the checks below)
        self._names = names_all
        for i, p in enumerate(params_all):
            self._check_param(self._label(i, names_all), p)
        self._check_overlap(params_all, names_all)
        self._check_shared(built, name)
        for i, p in enumerate(params_all):
            g, _ = self._where(i)
            sp = built[g]["slice_p"]
            if sp > 1 and p.ndim > 1 and not p.flags.c_contiguous:
                raise ValueError(f"{name}: {self._label(i)} is F-contiguous but its group's "
                                 f"slice_p is {sp}: s and p0 hold every {sp}-th element in C "
                                 f"order, which needs a C-contiguous param")
        for full in built:
            full._owner = self      # type: ignore[attr-defined]  # (a slot)
        self._params: List[np.ndarray] = params_all
        self._getter = None if names_all is None else operator.itemgetter(*names_all)
        self._sizes = [len(gr["params"]) for gr in built]
        slices = [built[self._where(i)[0]]["slice_p"] for i in range(len(params_all))]
        self._slices = slices
        self._has_m = self.defaults["betas"][0] > 0 or any(gr["betas"][0] > 0 for gr in built)
        self._buffers: Dict[str, List[np.ndarray]] = {
            "exp_avg": [np.zeros_like(p) for p in params_all] if self._has_m else [],
            "exp_avg_sq": [np.zeros_like(p) for p in params_all],
            "s": [np.zeros((p.size + sp - 1) // sp, dtype=p.dtype)
                  for p, sp in zip(params_all, slices)],
            "p0": [np.zeros((p.size + sp - 1) // sp, dtype=p.dtype)
                   for p, sp in zip(params_all, slices)],
        }
        self._estimate = self._fresh_estimate()
        self._initialized = False
        self._dirty = False
        self._snapshot_id = uuid.uuid4().hex
        self._built = True

    # the param checks, labels, thread guard and checkpoint refusal of the other optimizers
    _check_param: Any = GroupsMixin._check_param
    _check_overlap: Any = GroupsMixin._check_overlap
    _label: Any = GroupsMixin._label
    _where: Any = GroupsMixin._where
    _exclusive: Any = GroupsMixin._exclusive
    _busy_error: Any = GroupsMixin._busy_error
    _refuse_or_warn: Any = CheckpointMixin._refuse_or_warn

    @property
    def _name(self) -> str:
        return f"fastlr.{type(self).__name__}"

    def _fresh_estimate(self) -> Dict[str, Any]:
        d0 = float(self.defaults["d0"])
        return {"d": d0, "d_max": d0, "d_numerator": 0.0, "d_denom": 0.0, "d_hat": d0, "k": 0}

    # ------------------------------------------------------------------------------------
    # hyperparameters
    # ------------------------------------------------------------------------------------
    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter, before it is stored."""
        fn = self._name
        label = f"{where}[{key!r}]" if where else key
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key == "lr":
            if isinstance(value, Schedule) or (callable(value) and
                                               not isinstance(value, numbers.Real)):
                return value
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{fn}: {label} must be a number, a fastlr schedule or a "
                                f"callable, got {type(value).__name__}")
            checked_real(fn, label, value, NONNEG)
            return value
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{fn}: {label} must be a pair (beta1, beta2), got "
                                f"{value!r:.100}")
            checked_real(fn, f"{label}[0]", value[0], UNIT)
            checked_real(fn, f"{label}[1]", value[1], UNIT)
            return tuple(value)
        if key == "beta3":
            if value is not None:
                checked_real(fn, label, value, CLOSED_UNIT)
            return value
        if key in _FLAGS:
            flag_arg(fn, label, value)
            return value
        if key in ("eps", "d0", "d_coef"):
            checked_real(fn, label, value, POSITIVE)
            return value
        if key == "weight_decay":
            checked_real(fn, label, value, NONNEG)
            return value
        if key == "growth_rate":
            if isinstance(value, float) and value == math.inf:
                return value
            checked_real(fn, label, value, POSITIVE)
            return value
        if key == "slice_p":
            if getattr(self, "_built", False):
                raise ValueError(f"{fn}: {label} is fixed at construction (it sets the size "
                                 f"of the s and p0 buffers); build a new optimizer")
            return int(int_arg(fn, label, value, 1, 2 ** 62))
        raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                         f"{', '.join(sorted(_HYPERS))}")

    def _validate_group(self, group):
        """(ParamGroup's hook.) A first moment cannot start after construction."""
        if group["betas"][0] > 0 and not self._has_m:
            raise ValueError(f"{self._name}: betas[0] > 0 needs the first moment, which was "
                             f"not allocated (the optimizer was built with betas[0] = 0)")

    def _check_shared(self, groups, fn):
        for key in _SHARED:
            first = groups[0][key]
            for g, group in enumerate(groups[1:], 1):
                if not _same(first, _plain(group[key])):
                    raise ValueError(f"{fn}: param_groups[{g}][{key!r}] is {group[key]!r} but "
                                     f"param_groups[0]'s is {first!r}; Prodigy shares {key} "
                                     f"across groups (prodigyopt reads group 0's)")

    # ------------------------------------------------------------------------------------
    # the estimate and the state
    # ------------------------------------------------------------------------------------
    @property
    def d(self) -> float:
        """The current step-size estimate (shared by all groups)."""
        return float(self._estimate["d"])

    @property
    def estimate(self) -> Dict[str, Any]:
        """``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k`` (a copy)."""
        return dict(self._estimate)

    @property
    def state(self) -> Dict[int, Dict[str, np.ndarray]]:
        """Per param index, its buffers (live views); empty before the first step."""
        if not self._initialized:
            return {}
        return {i: {k: self._buffers[k][i] for k in _BUFFERS if self._buffers[k]}
                for i in range(len(self._params))}

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
    def _grads(self, grads):
        where = f"{self._name}.step"
        n = len(self._params)
        if isinstance(grads, dict):
            grads = by_name(where, self._names, grads, "grads",
                            "step takes one grad per param", self._getter)
        elif isinstance(grads, np.ndarray) and n == 1:
            grads = [grads]
        elif not isinstance(grads, (list, tuple)):
            raise TypeError(f"{where}: grads must be a list of {n} arrays in param order"
                            f"{' or a dict of name -> array' if self._names else ''}, got "
                            f"{type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"{where}: got {len(grads)} grads for {n} params")
        return list(grads)

    def _lrs(self, k):
        fn = f"{self._name}.step"
        out = []
        for g, group in enumerate(self.param_groups):
            v = group["lr"]
            if isinstance(v, Schedule) or callable(v):
                v = v(k)
            out.append(checked_real(fn, f"param_groups[{g}]['lr'] at step {k}", v, NONNEG))
        top = max(out)
        for g, v in enumerate(out):
            if v != top and v != 0.0:
                raise ValueError(f"{fn}: param_groups[{g}]['lr'] is {v!r} at step {k} but the "
                                 f"largest group lr is {top!r}; Prodigy's groups share one lr "
                                 f"(or have lr 0), as in prodigyopt")
        return out

    def step(self, grads: Any) -> bool:
        """One Prodigy step over every param, in place (two compiled passes).

        Parameters
        ----------
        grads : list of numpy.ndarray, numpy.ndarray or dict of str -> numpy.ndarray
            One grad per param with its shape, dtype and layout: a list in param order (one
            array for a single param) or, for named params, a dict of name -> grad.

        Returns
        -------
        bool
            True when the params moved; False when every grad was zero (the sums are zero:
            as in prodigyopt only the moments change).

        Raises
        ------
        TypeError
            If a grad has the wrong type or dtype.
        ValueError
            If a grad has the wrong shape or layout, overlaps a buffer, a scheduled lr is
            out of range, or groups' lrs or shared hyperparameters differ (nothing changes).
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.
        """
        with self._exclusive("step"):
            grads = self._grads(grads)
            groups = self.param_groups
            self._check_shared(groups, f"{self._name}.step")
            est = self._estimate
            lrs = self._lrs(est["k"])
            g0 = groups[0]
            b = self._buffers
            if not self._initialized:
                for p, p0, sp in zip(self._params, b["p0"], self._slices):
                    p0[...] = p.ravel(order="K")[::sp]
            try:
                out = prodigy_step(
                    self._params, grads, b["exp_avg"] if self._has_m else None,
                    b["exp_avg_sq"], b["s"], b["p0"], group_sizes=self._sizes, lr=lrs,
                    weight_decay=[gr["weight_decay"] for gr in groups],
                    eps=[gr["eps"] for gr in groups], d0=[gr["d0"] for gr in groups],
                    safeguard_warmup=[gr["safeguard_warmup"] for gr in groups],
                    slice_p=[gr["slice_p"] for gr in groups], betas=g0["betas"], beta3=g0["beta3"], d=est["d"],
                    d_max=est["d_max"], d_numerator=est["d_numerator"], d_coef=g0["d_coef"],
                    growth_rate=g0["growth_rate"], decouple=g0["decouple"],
                    use_bias_correction=g0["use_bias_correction"], k=est["k"],
                    n_threads=self._n_threads)
            except (TypeError, ValueError) as error:
                if not self._initialized:
                    for p0 in b["p0"]:
                        p0.fill(0)
                raise type(error)(self._relabel(str(error))) from None
            self._initialized = True
            stepped = out.pop("stepped")
            if stepped:
                self._estimate = out
            return bool(stepped)

    def _relabel(self, message):
        """The kernel's message in the class's words: ``params[i]`` with its group and name,
        ``grads[i]`` as the caller gave it."""
        message = message.replace("fastlr._core.lrfree.prodigy_step", f"{self._name}.step")
        message = re.sub(r"(?<![\w'\[])params\[(\d+)\]",
                         lambda m: self._label(int(m.group(1))), message)
        if self._names:
            message = re.sub(r"(?<![\w'\[])grads\[(\d+)\]",
                             lambda m: f"grads[{self._names[int(m.group(1))]!r}]", message)
        return message

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        Returns
        -------
        dict
            ``{"format", "state": {"estimate": {d, d_max, d_numerator, d_denom, d_hat, k},
            "initialized", "exp_avg", "exp_avg_sq", "s", "p0" (lists of arrays in param
            order)}, "param_groups": [hyperparameters, "params": indices, "param_names"]}``
            and ``snapshot_of`` (loading its own state dict back is a rollback: the
            hyperparameters too).

        Examples
        --------
        >>> opt = fastlr.Prodigy([np.ones(2)])
        >>> opt.state_dict()["state"]["estimate"]["d"]
        1e-06
        """
        with self._exclusive("state_dict"):
            state: Dict[str, Any] = {"estimate": dict(self._estimate),
                                     "initialized": self._initialized}
            for key in _BUFFERS:
                state[key] = [a.copy() for a in self._buffers[key]]
            groups, start = [], 0
            for group in self.param_groups:
                g = {k: group[k] for k in _HYPERS}
                n = len(group["params"])
                g["params"] = list(range(start, start + n))
                if "param_names" in group:
                    g["param_names"] = list(group["param_names"])
                start += n
                groups.append(g)
            return {"format": _FORMAT, "state": state, "param_groups": groups,
                    "snapshot_of": self._snapshot_id}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict: the estimate, the buffers and the step count, never a
        hyperparameter.

        Everything is validated first; on any error nothing changes. Every hyperparameter
        the state dict records must equal the optimizer's (``strict=False``: a warning, the
        optimizer's values kept), except for this optimizer's own :meth:`state_dict` (a
        rollback restores them too). Named params must carry the same names in order.

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
        >>> w = np.ones(2)
        >>> opt = fastlr.Prodigy([w])
        >>> sd = opt.state_dict()
        >>> _ = opt.step([w.copy()])
        >>> opt.load_state_dict(sd)
        >>> opt.d
        1e-06
        """
        strict = flag_arg(f"{self._name}.load_state_dict", "strict", strict)
        with self._exclusive("load_state_dict"):
            self._load(state_dict, strict, "load_state_dict")

    def _load(self, sd, strict, what):
        name = f"{self._name}.{what}"
        if not isinstance(sd, dict):
            raise TypeError(f"{name}: expected a dict, got {type(sd).__name__}")
        for key in ("state", "param_groups"):
            if key not in sd:
                raise ValueError(f"{name}: the state dict has no {key!r} entry")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}, expected "
                             f"{_FORMAT!r}")
        groups = sd["param_groups"]
        mine = self.param_groups
        if not isinstance(groups, (list, tuple)) or len(groups) != len(mine) or \
                not all(isinstance(g, dict) for g in groups):
            raise ValueError(f"{name}: param_groups must be a list of {len(mine)} group dicts")
        renamed, differ, new_hypers = [], [], []
        start = 0
        for g, (saved, group) in enumerate(zip(groups, mine)):
            n = len(group["params"])
            held = saved.get("params", [])
            if not isinstance(held, (list, tuple, np.ndarray)) or \
                    [int(v) for v in held] != list(range(start, start + n)):
                raise ValueError(f"{name}: param_groups[{g}] holds params {held!r:.100}, "
                                 f"expected {list(range(start, start + n))!r:.100}")
            start += n
            saved_names = saved.get("param_names")
            if saved_names is not None:
                if not isinstance(saved_names, (list, tuple)) or len(saved_names) != n or \
                        not all(isinstance(k, str) for k in saved_names):
                    raise ValueError(f"{name}: param_groups[{g}]['param_names'] must be a "
                                     f"list of {n} strings, got {saved_names!r:.200}")
                if "param_names" in group and list(saved_names) != group["param_names"]:
                    renamed.append(_names_diff(g, group["param_names"], list(saved_names)))
            hypers = {}
            for key, value in saved.items():
                if key in _FIXED_KEYS:
                    continue
                if key not in _HYPERS:
                    raise ValueError(f"{name}: param_groups[{g}] has an unknown "
                                     f"hyperparameter {key!r}")
                if not _same(group[key], value):
                    if key == "slice_p":
                        raise ValueError(f"{name}: param_groups[{g}]['slice_p'] is "
                                         f"{value!r} in the checkpoint, {group[key]!r} here "
                                         f"(it sets the buffers' sizes)")
                    differ.append((g, key, group[key], value))
                    if key != "lr" or not isinstance(value, dict):
                        hypers[key] = self._check_hyper(key, value, f"param_groups[{g}]")
            new_hypers.append(hypers)
        state = self._checked_state(name, sd["state"])
        rollback = sd.get("snapshot_of") == self._snapshot_id
        if renamed:
            self._refuse_or_warn(name, strict, "names its params otherwise", renamed,
                                 "build the optimizer over the checkpoint's names, in its "
                                 "order", "loaded by position")
        if differ and not rollback:
            self._refuse_or_warn(name, strict, "recorded other hyperparameters",
                                 [_hyper_diff(*d) for d in differ],
                                 "a checkpoint restores the estimate and the buffers, never "
                                 "the hyperparameters: build the optimizer with the "
                                 "checkpoint's values", "kept this optimizer's values")
        # everything checked: apply
        if rollback:
            for group, hypers in zip(mine, new_hypers):
                for key, value in hypers.items():
                    dict.__setitem__(group, key, value)
        for key in _BUFFERS:
            for dst, src in zip(self._buffers[key], state[key]):
                dst[...] = src
        self._estimate = state["estimate"]
        self._initialized = state["initialized"]

    def _checked_state(self, name, st):
        if not isinstance(st, dict):
            raise TypeError(f"{name}: 'state' must be a dict, got {type(st).__name__}")
        extra = sorted(set(st) - {"estimate", "initialized", *_BUFFERS}, key=str)
        if extra:
            raise ValueError(f"{name}: 'state' has unknown entries {extra[:5]!r}")
        est = st.get("estimate")
        if not isinstance(est, dict) or set(est) != set(_ESTIMATE):
            raise ValueError(f"{name}: state['estimate'] must be a dict of "
                             f"{', '.join(_ESTIMATE)}, got {est!r:.200}")
        out: Dict[str, Any] = {"estimate": {}}
        for key in ("d", "d_max"):
            out["estimate"][key] = checked_real(name, f"state['estimate'][{key!r}]",
                                                _num(est[key]), POSITIVE)
        for key in ("d_numerator", "d_hat"):
            out["estimate"][key] = checked_real(name, f"state['estimate'][{key!r}]",
                                                _num(est[key]), 0)
        out["estimate"]["d_denom"] = checked_real(name, "state['estimate']['d_denom']",
                                                  _num(est["d_denom"]), NONNEG)
        out["estimate"]["k"] = int(int_arg(name, "state['estimate']['k']", _num(est["k"]),
                                           0, 2 ** 62))
        out["initialized"] = flag_arg(name, "state['initialized']",
                                      _num(st.get("initialized", False)))
        for key in _BUFFERS:
            mine = self._buffers[key]
            got = st.get(key, [])
            if not isinstance(got, (list, tuple)) or len(got) != len(mine):
                raise ValueError(f"{name}: state[{key!r}] must be a list of {len(mine)} arrays"
                                 f", got {type(got).__name__} of "
                                 f"{len(got) if isinstance(got, (list, tuple)) else '?'}")
            for i, (a, ref) in enumerate(zip(got, mine)):
                if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.shape != ref.shape:
                    raise ValueError(f"{name}: state[{key!r}][{i}] must be a float array of "
                                     f"shape {ref.shape}, got "
                                     f"{getattr(a, 'dtype', type(a).__name__)} "
                                     f"{getattr(a, 'shape', '')}")
            out[key] = list(got)
        return out

    def __repr__(self) -> str:
        """torch's layout: the class, then per group its params (count, names) and
        hyperparameters."""
        lines = ["Prodigy ("]
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            shown = f"{n} array{'' if n == 1 else 's'}"
            if "param_names" in group:
                shown += f" ({_some(group['param_names'], 8)})"
            lines += [f"Parameter Group {g}", f"    params: {shown}"]
            lines += [f"    {key}: {group[key]!r}" for key in sorted(_HYPERS)]
        lines.append(")")
        return "\n".join(lines)


def _num(v):
    """A 0-d array (as np.load returns) as its element."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v
