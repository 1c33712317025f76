"""D-Adaptation (dadaptation 3.2) in NumPy: :class:`DAdaptAdam`, :class:`DAdaptSGD`,
:class:`DAdaptAdaGrad`.

Defazio & Mishchenko, *Learning-Rate-Free Learning by D-Adaptation* (ICML 2023). The step
size ``d`` is estimated from global sums over every param (inner products, norms), so these
optimizers do not fit the element-wise table: like :class:`fastlr.Prodigy` (which is derived
from D-Adapt Adam) each is its own class over a two-pass compiled step
(:mod:`fastlr._core.dadapt`, design notes there) with a NumPy twin
(:mod:`fastlr.reference.dadapt`). The reference implementation is the ``dadaptation``
package's torch optimizers; :mod:`fastlr.compat.torch` has bridges for each when it is
installed.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
import re
import threading
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fastlr._core.args import NONNEG, POSITIVE, UNIT, checked_real, flag_arg, int_arg, threads_arg
from fastlr._core.dispatch import module as _variant
from fastlr.optim.checkpoint import (CheckpointMixin, StateFileMixin, _hyper_diff,
                                     _names_diff, _plain, _same)
from fastlr.optim.groups import (GroupsMixin, ParamGroup, _FIXED_KEYS, _some, groups_arg,
                                 split_named)
from fastlr.optim.lrfree import Prodigy, _num
from fastlr.schedules import Schedule

__all__ = ["DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad"]

_log = logging.getLogger("fastlr.dadapt")

# the steps for this CPU (fastlr._core.dadapt, or its x86-64-v3 build)
_kernels = _variant("dadapt")
dadapt_adam_step = _kernels.dadapt_adam_step
dadapt_sgd_step = _kernels.dadapt_sgd_step
dadapt_adagrad_step = _kernels.dadapt_adagrad_step

# how each hyperparameter is checked: a range rule of fastlr._core.args, or a kind
_RULES: Dict[str, Any] = {"eps": POSITIVE, "d0": POSITIVE, "weight_decay": NONNEG,
                          "layer_scale": NONNEG, "decouple": "flag",
                          "use_bias_correction": "flag", "fsdp_in_use": "fsdp",
                          "log_every": "int", "growth_rate": "growth", "betas": "betas",
                          "lr": "lr"}


class _DAdapt(StateFileMixin):
    """The D-Adaptation optimizers' common machinery (groups, the step's driver, checkpoints);
    each subclass names its hyperparameters, estimate, buffers and kernel."""

    _HYPERS: Tuple[str, ...] = ()
    #: read from group 0 by the package: every group must hold the same value
    _SHARED: Tuple[str, ...] = ()
    _ESTIMATE: Tuple[str, ...] = ()
    _BUFFERS: Tuple[str, ...] = ()
    #: buffers copied from the params at the first step
    _START: Tuple[str, ...] = ()
    _MOMENTUM: Any = UNIT
    #: the compiled step: a name of this module's globals, looked up at each step (so that
    #: fastlr bench can swap in the NumPy twin, as it does for the other kernels)
    _kernel: str = ""

    def _setup(self, params: Any, defaults: Dict[str, Any], n_threads: Optional[int]) -> None:
        name = self._name
        self._busy = threading.Lock()
        self._built = False
        self.param_groups: List[ParamGroup] = []
        self._n_threads = None if n_threads is None else threads_arg(name, n_threads)
        self.defaults: Dict[str, Any] = {k: self._check_hyper(k, v, "")
                                         for k, v in defaults.items()}
        params_all: List[np.ndarray] = []
        names_all: Optional[List[str]] = None
        built = []
        for g, group in enumerate(groups_arg(name, params)):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{name}: a param group must be a dict with a 'params' entry")
            arrays, names = split_named(name, group["params"], f"param_groups[{g}]['params']")
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
        self.param_groups = built
        self._names = names_all
        for i, p in enumerate(params_all):
            self._check_param(self._label(i, names_all), p)
        self._check_overlap(params_all, names_all)
        self._check_shared(built, name)
        for full in built:
            full._owner = self      # type: ignore[attr-defined]  # (a slot)
        self._params: List[np.ndarray] = params_all
        self._getter = None if names_all is None else operator.itemgetter(*names_all)
        self._sizes = [len(gr["params"]) for gr in built]
        self._buffers: Dict[str, List[np.ndarray]] = {
            key: [self._fresh_buffer(key, p) for p in params_all] for key in self._BUFFERS}
        self._estimate = self._fresh_estimate()
        self._initialized = False
        self._dirty = False
        self._snapshot_id = uuid.uuid4().hex
        self._built = True

    # the param checks, labels, thread guard, grads and checkpoint refusal of the others
    _check_param: Any = GroupsMixin._check_param
    _check_overlap: Any = GroupsMixin._check_overlap
    _label: Any = GroupsMixin._label
    _where: Any = GroupsMixin._where
    _exclusive: Any = GroupsMixin._exclusive
    _busy_error: Any = GroupsMixin._busy_error
    _refuse_or_warn: Any = CheckpointMixin._refuse_or_warn
    _grads: Any = Prodigy._grads

    @property
    def _name(self) -> str:
        return f"fastlr.{type(self).__name__}"

    def _fresh_buffer(self, key: str, p: np.ndarray) -> np.ndarray:
        return np.zeros_like(p)

    def _fresh_estimate(self) -> Dict[str, Any]:
        est: Dict[str, Any] = {k: 0.0 for k in self._ESTIMATE}
        est.update(d=float(self.defaults["d0"]), k=0)
        return est

    # ------------------------------------------------------------------------------------
    # hyperparameters
    # ------------------------------------------------------------------------------------
    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter, before it is stored."""
        fn = self._name
        label = f"{where}[{key!r}]" if where else key
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key not in self._HYPERS:
            raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                             f"{', '.join(sorted(self._HYPERS))}")
        rule = self._MOMENTUM if key == "momentum" else _RULES[key]
        if rule == "lr":
            if isinstance(value, Schedule) or (callable(value) and
                                               not isinstance(value, numbers.Real)):
                return value
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{fn}: {label} must be a number, a fastlr schedule or a "
                                f"callable, got {type(value).__name__}")
            checked_real(fn, label, value, NONNEG)
        elif rule == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{fn}: {label} must be a pair (beta1, beta2), got "
                                f"{value!r:.100}")
            checked_real(fn, f"{label}[0]", value[0], UNIT)
            checked_real(fn, f"{label}[1]", value[1], UNIT)
            return tuple(value)
        elif rule == "flag":
            flag_arg(fn, label, value)
        elif rule == "fsdp":
            if flag_arg(fn, label, value):
                raise ValueError(f"{fn}: {label} is True, but fastlr has no sharded params "
                                 f"(the package all-reduces its sums over torch.distributed "
                                 f"there); use fsdp_in_use=False")
        elif rule == "int":
            return int(int_arg(fn, label, value, 0, 2 ** 62))
        elif rule == "growth":
            if not (isinstance(value, float) and value == math.inf):
                checked_real(fn, label, value, POSITIVE)
        else:
            checked_real(fn, label, value, rule)
        return value

    def _validate_group(self, group):
        """(ParamGroup's hook.) Nothing beyond the per-key checks."""

    def _check_shared(self, groups, fn):
        for key in self._SHARED:
            first = groups[0][key]
            for g, group in enumerate(groups[1:], 1):
                if not _same(first, _plain(group[key])):
                    raise ValueError(f"{fn}: param_groups[{g}][{key!r}] is {group[key]!r} but "
                                     f"param_groups[0]'s is {first!r}; {type(self).__name__} "
                                     f"shares {key} across groups (dadaptation reads group "
                                     f"0's)")

    # ------------------------------------------------------------------------------------
    # the estimate and the state
    # ------------------------------------------------------------------------------------
    @property
    def d(self) -> float:
        """The current step-size estimate ``d`` (shared by all groups; the params' units)."""
        return float(self._estimate["d"])

    @property
    def estimate(self) -> Dict[str, Any]:
        """The estimate's scalars as the package keeps them in its groups (a copy)."""
        return dict(self._estimate)

    @property
    def state(self) -> Dict[int, Dict[str, np.ndarray]]:
        """Per param index, its buffers (live views); empty before the first step."""
        if not self._initialized:
            return {}
        return {i: {k: self._buffers[k][i] for k in self._BUFFERS}
                for i in range(len(self._params))}

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
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
            if v != top and (v != 0.0 or "lr" in self._SHARED):
                raise ValueError(f"{fn}: param_groups[{g}]['lr'] is {v!r} at step {k} but "
                                 f"{'param_groups[0] has' if 'lr' in self._SHARED else 'the largest group lr is'} "
                                 f"{top!r}; {type(self).__name__}'s groups share one lr"
                                 f"{'' if 'lr' in self._SHARED else ' (or have lr 0)'}, as "
                                 f"in dadaptation")
        return out

    def step(self, grads: Any) -> bool:
        """One step over every param, in place (two compiled passes).

        Parameters
        ----------
        grads : list of numpy.ndarray, numpy.ndarray or dict of str -> numpy.ndarray
            One grad per param with its shape, dtype and layout: a list in param order (one
            array for a single param) or, for named params, a dict of name -> grad. Dense
            only (a :class:`fastlr.RowSparseGrad` is refused).

        Returns
        -------
        bool
            True when the params moved; False when the norm sum was zero (every grad zero):
            as in dadaptation only the state changes.

        Raises
        ------
        TypeError
            If a grad has the wrong type or dtype (a sparse grad included).
        ValueError
            If a grad has the wrong shape or layout, overlaps a buffer, a scheduled lr is
            out of range, or groups' lrs or shared hyperparameters differ (nothing changes).
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.
        """
        with self._exclusive("step"):
            grads = self._grads(grads)
            for i, g in enumerate(grads):
                if not isinstance(g, np.ndarray) and hasattr(g, "indices"):
                    raise TypeError(f"{self._name}.step: grads[{i}] is a sparse grad "
                                    f"({type(g).__name__}); {type(self).__name__} takes dense "
                                    f"grads only (dadaptation's DAdaptAdam and DAdaptSGD "
                                    f"do too)")
            groups = self.param_groups
            self._check_shared(groups, f"{self._name}.step")
            est = self._estimate
            lrs = self._lrs(est["k"])
            b = self._buffers
            if not self._initialized:
                for key in self._START:
                    for p, x in zip(self._params, b[key]):
                        x[...] = p
            try:
                out = globals()[self._kernel](
                    self._params, grads, *[b[key] for key in self._BUFFERS],
                    group_sizes=self._sizes, **self._kernel_args(groups, lrs, est),
                    n_threads=self._n_threads)
            except (TypeError, ValueError) as error:
                raise type(error)(self._relabel(str(error))) from None
            self._initialized = True
            stepped = out.pop("stepped")
            if stepped:
                log_every = groups[0]["log_every"]
                if log_every > 0 and est["k"] % log_every == 0:
                    _log.info("%s k=%d: lr %r, d_hat %r, d %r", type(self).__name__,
                              est["k"], max(lrs), out["d_hat"], out["d"])
                self._estimate = {key: out[key] for key in self._ESTIMATE}
            return bool(stepped)

    def _kernel_args(self, groups, lrs, est) -> Dict[str, Any]:
        raise NotImplementedError

    def _relabel(self, message):
        """The kernel's message in the class's words: ``params[i]`` with its group and name,
        ``grads[i]`` as the caller gave it."""
        message = re.sub(r"fastlr\._core\.dadapt\.dadapt_\w+_step", f"{self._name}.step",
                         message)
        message = re.sub(r"(?<![\w'\[])params\[(\d+)\]",
                         lambda m: self._label(int(m.group(1))), message)
        if self._names:
            message = re.sub(r"(?<![\w'\[])grads\[(\d+)\]",
                             lambda m: f"grads[{self._names[int(m.group(1))]!r}]", message)
        return message

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    @property
    def _format(self) -> str:
        return f"fastlr-{type(self).__name__.lower()}-1"

    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        Returns
        -------
        dict
            ``{"format", "state": {"estimate": {...}, "initialized", and one list of arrays
            in param order per buffer}, "param_groups": [hyperparameters, "params":
            indices, "param_names"]}`` and ``snapshot_of`` (loading its own state dict back
            is a rollback: the hyperparameters too).
        """
        with self._exclusive("state_dict"):
            state: Dict[str, Any] = {"estimate": dict(self._estimate),
                                     "initialized": self._initialized}
            for key in self._BUFFERS:
                state[key] = [a.copy() for a in self._buffers[key]]
            groups, start = [], 0
            for group in self.param_groups:
                g = {k: group[k] for k in self._HYPERS}
                n = len(group["params"])
                g["params"] = list(range(start, start + n))
                if "param_names" in group:
                    g["param_names"] = list(group["param_names"])
                start += n
                groups.append(g)
            return {"format": self._format, "state": state, "param_groups": groups,
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
        if sd.get("format", self._format) != self._format:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}, expected "
                             f"{self._format!r}")
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
                if key not in self._HYPERS:
                    raise ValueError(f"{name}: param_groups[{g}] has an unknown "
                                     f"hyperparameter {key!r}")
                if not _same(group[key], value):
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
        for key in self._BUFFERS:
            for dst, src in zip(self._buffers[key], state[key]):
                dst[...] = src
        self._estimate = state["estimate"]
        self._initialized = state["initialized"]

    def _checked_state(self, name, st):
        if not isinstance(st, dict):
            raise TypeError(f"{name}: 'state' must be a dict, got {type(st).__name__}")
        extra = sorted(set(st) - {"estimate", "initialized", *self._BUFFERS}, key=str)
        if extra:
            raise ValueError(f"{name}: 'state' has unknown entries {extra[:5]!r}")
        est = st.get("estimate")
        if not isinstance(est, dict) or set(est) != set(self._ESTIMATE):
            raise ValueError(f"{name}: state['estimate'] must be a dict of "
                             f"{', '.join(self._ESTIMATE)}, got {est!r:.200}")
        out: Dict[str, Any] = {"estimate": {}}
        for key in self._ESTIMATE:
            label = f"state['estimate'][{key!r}]"
            if key == "k":
                out["estimate"][key] = int(int_arg(name, label, _num(est[key]), 0, 2 ** 62))
            else:
                rule = POSITIVE if key == "d" else NONNEG if key in ("skl1", "g0_norm") else 0
                out["estimate"][key] = checked_real(name, label, _num(est[key]), rule)
        out["initialized"] = flag_arg(name, "state['initialized']",
                                      _num(st.get("initialized", False)))
        for key in self._BUFFERS:
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
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            shown = f"{n} array{'' if n == 1 else 's'}"
            if "param_names" in group:
                shown += f" ({_some(group['param_names'], 8)})"
            lines += [f"Parameter Group {g}", f"    params: {shown}"]
            lines += [f"    {key}: {group[key]!r}" for key in sorted(self._HYPERS)]
        lines.append(")")
        return "\n".join(lines)


class DAdaptAdam(_DAdapt):
    r"""D-Adapt Adam: Adam with a learning-rate-free step size (dadaptation 3.2's algorithm).

    Defazio & Mishchenko, *Learning-Rate-Free Learning by D-Adaptation* (ICML 2023). The
    step size is ``dlr = d * lr * bc`` where ``lr`` is a unitless multiplier (leave it at
    1), ``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with ``use_bias_correction``
    (else 1) and ``d`` (in the params' units) is estimated from the distance travelled: with
    ``g`` the grad (plus ``weight_decay * p`` unless ``decouple``), ``r`` the group's
    ``layer_scale`` and :math:`\beta = \sqrt{\beta_2}`, each step

    .. math::

        N &\leftarrow \beta N + (1 - \beta) \textstyle\sum r\,\mathrm{dlr}\,
        \langle g, s / (\sqrt v + \epsilon) \rangle, \\
        m &\leftarrow \beta_1 m + r\,\mathrm{dlr}\,(1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \qquad
        s \leftarrow \beta s + \mathrm{dlr}\,(1 - \beta) g, \\
        d &\leftarrow \max\bigl(d, \min(N / ((1 - \beta) \textstyle\sum r \lVert s \rVert_1),
        \; d \cdot \mathrm{growth\_rate})\bigr), \qquad
        p \leftarrow p - m / (\sqrt v + \epsilon)

    (``N`` uses the ``s`` and ``v`` before their update; with ``decouple``,
    ``p -= weight_decay * dlr * p`` before the update). The sums run over every param of
    every group, in fixed blocks in double (the same bits for any thread count), in the same
    compiled pass as the moments; the param update is a second pass.

    Semantics are dadaptation's: ``betas``, ``decouple``, ``use_bias_correction``, ``d0``,
    ``growth_rate``, ``log_every`` and ``fsdp_in_use`` are shared (the package reads group
    0's; here every group must hold the same value); ``weight_decay``, ``eps`` and
    ``layer_scale`` are per group; each group's ``lr`` must be the largest group lr or 0 (a
    group with lr 0 keeps its moments but still moves by its old moments, as in
    dadaptation). One estimate ``d`` is shared by all groups: :attr:`d`.

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
    eps : float, default 1e-8
        Added to ``sqrt(v)`` (``> 0``, the grads' units).
    weight_decay : float, default 0
        L2 penalty (``>= 0``), decoupled (AdamW style, scaled by ``dlr``) when ``decouple``.
    log_every : int, default 0
        Log ``d`` with :mod:`logging` (logger ``fastlr.dadapt``, level INFO) every
        ``log_every`` steps; 0: never.
    decouple : bool, default False
    use_bias_correction : bool, default False
    d0 : float, default 1e-6
        The initial estimate ``d`` (``> 0``, the params' units).
    growth_rate : float, default inf
        The largest factor ``d`` may grow by in one step (``> 0``).
    fsdp_in_use : bool, default False
        Must be False: fastlr has no sharded params (True is a ValueError).
    layer_scale : float, default 1
        Per group: the factor of the group's step relative to the others (``>= 0``).
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.

    Attributes
    ----------
    param_groups : list of dict
        The groups (dicts like torch's, writes checked).
    d : float
        The current estimate (``d0`` before the first step).
    estimate : dict
        ``d``, ``numerator_weighted`` and ``k`` (steps taken), as dadaptation keeps them in
        its groups.
    state : dict
        Per param index: ``exp_avg``, ``exp_avg_sq``, ``s`` (live views; empty before the
        first step).

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, params overlap, shared hyperparameters differ
        between groups, or ``fsdp_in_use`` is True.

    Notes
    -----
    Where fastlr differs from dadaptation: hyperparameters are checked at construction (a
    group's differing shared hyperparameter or lr is a ``ValueError`` before anything
    changes, where dadaptation silently uses group 0's or raises mid-step); grads are never
    modified (dadaptation adds the coupled weight decay into ``p.grad``); every param takes
    a grad each step; nothing is printed for ``decouple``. When every grad is zero the sums
    are zero and, as in dadaptation, the moments are updated but neither the params nor
    ``d`` nor ``k`` change.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.DAdaptAdam([w])
    >>> for _ in range(50):
    ...     _ = opt.step([2 * w])
    >>> bool(opt.d > 1e-6) and bool(np.abs(w).max() < 2.0)
    True
    """

    _HYPERS = ("lr", "betas", "eps", "weight_decay", "log_every", "decouple",
               "use_bias_correction", "d0", "growth_rate", "fsdp_in_use", "layer_scale")
    _SHARED = ("betas", "log_every", "decouple", "use_bias_correction", "d0", "growth_rate",
               "fsdp_in_use")
    _ESTIMATE = ("d", "numerator_weighted", "k")
    _BUFFERS = ("exp_avg", "exp_avg_sq", "s")
    _kernel = "dadapt_adam_step"

    def __init__(self, params: Any, lr: Any = 1.0, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, log_every: int = 0,
                 decouple: bool = False, use_bias_correction: bool = False, d0: float = 1e-6,
                 growth_rate: float = math.inf, fsdp_in_use: bool = False, *,
                 layer_scale: float = 1.0, n_threads: Optional[int] = None) -> None:
        self._setup(params, {"lr": lr, "betas": betas, "eps": eps,
                             "weight_decay": weight_decay, "log_every": log_every,
                             "decouple": decouple, "use_bias_correction": use_bias_correction,
                             "d0": d0, "growth_rate": growth_rate, "fsdp_in_use": fsdp_in_use,
                             "layer_scale": layer_scale}, n_threads)

    def _kernel_args(self, groups, lrs, est):
        g0 = groups[0]
        return dict(lr=lrs, weight_decay=[gr["weight_decay"] for gr in groups],
                    eps=[gr["eps"] for gr in groups],
                    layer_scale=[gr["layer_scale"] for gr in groups], betas=g0["betas"],
                    d=est["d"], numerator_weighted=est["numerator_weighted"],
                    growth_rate=g0["growth_rate"], decouple=g0["decouple"],
                    use_bias_correction=g0["use_bias_correction"], k=est["k"])


class DAdaptSGD(_DAdapt):
    r"""D-Adapt SGD: SGD with a learning-rate-free step size (dadaptation 3.2's algorithm).

    Defazio & Mishchenko, *Learning-Rate-Free Learning by D-Adaptation* (ICML 2023). With
    ``g`` the grad plus ``weight_decay * p``, ``g_0`` the first step's raw grads (over the
    groups with lr > 0), ``dlr = d * lr / ||g_0||`` (``lr`` a unitless multiplier, ``d`` in
    the params' units) and ``x_0`` the params at the first step, each step

    .. math::

        N &\leftarrow N + \textstyle\sum \mathrm{dlr}\,\langle g, s \rangle, \qquad
        s \leftarrow s + \mathrm{dlr}\; g, \\
        d &\leftarrow \max\bigl(d, \min(2 N / \lVert s \rVert_2,\;
        d \cdot \mathrm{growth\_rate})\bigr), \qquad
        p \leftarrow \mathrm{momentum}\; p + (1 - \mathrm{momentum}) (x_0 - s)

    (``N`` uses ``s`` before its update; the norms run over every param of every group with
    lr > 0, in fixed blocks in double, in the same compiled pass as ``s``).

    Semantics are dadaptation's: ``momentum``, ``weight_decay``, ``d0``, ``growth_rate``,
    ``log_every`` and ``fsdp_in_use`` are shared (the package reads group 0's; here every
    group must hold the same value); each group's ``lr`` must be the largest or 0 (a group
    with lr 0 keeps ``s`` at 0 and is pulled back to its ``x_0``, as in dadaptation).

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or list
        of group dicts
        The params, float32 or float64, C- or F-contiguous, writeable; updated in place.
    lr : float or schedule, default 1
        The step-size multiplier (unitless, ``>= 0``; a schedule or callable ``k -> float``
        is evaluated at the step count ``k``).
    momentum : float, default 0
        In [0, 1): the param's share in its update.
    weight_decay : float, default 0
        L2 penalty added to the grad (``>= 0``).
    log_every : int, default 0
        Log ``d`` with :mod:`logging` (logger ``fastlr.dadapt``) every ``log_every`` steps.
    d0 : float, default 1e-6
        The initial estimate ``d`` (``> 0``, the params' units).
    growth_rate : float, default inf
        The largest factor ``d`` may grow by in one step (``> 0``).
    fsdp_in_use : bool, default False
        Must be False (True is a ValueError: fastlr has no sharded params).
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.

    Attributes
    ----------
    param_groups : list of dict
        The groups (dicts like torch's, writes checked).
    d : float
        The current estimate (``d0`` before the first step).
    estimate : dict
        ``d``, ``numerator_weighted``, ``g0_norm`` and ``k``.
    state : dict
        Per param index: ``s`` and ``x0`` (live views; empty before the first step). The
        package's ``z`` is ``x0 - s``.

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, params overlap, shared hyperparameters differ
        between groups, or ``fsdp_in_use`` is True.

    Notes
    -----
    Where fastlr differs from dadaptation: hyperparameters are checked at construction;
    grads are never modified; when the first step's grads are all zero (its norm divides
    ``dlr``) the step raises ``ValueError`` and changes nothing (dadaptation raises
    ZeroDivisionError); when every lr is 0 after the first step nothing changes
    (dadaptation raises UnboundLocalError).

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.DAdaptSGD([w], momentum=0.9)
    >>> for _ in range(50):
    ...     _ = opt.step([2 * w])
    >>> bool(opt.d > 1e-6) and bool(np.abs(w).max() < 2.0)
    True
    """

    _HYPERS = ("lr", "momentum", "weight_decay", "log_every", "d0", "growth_rate",
               "fsdp_in_use")
    _SHARED = ("momentum", "weight_decay", "log_every", "d0", "growth_rate", "fsdp_in_use")
    _ESTIMATE = ("d", "numerator_weighted", "g0_norm", "k")
    _BUFFERS = ("s", "x0")
    _START = ("x0",)
    _kernel = "dadapt_sgd_step"

    def __init__(self, params: Any, lr: Any = 1.0, momentum: float = 0.0,
                 weight_decay: float = 0, log_every: int = 0, d0: float = 1e-6,
                 growth_rate: float = math.inf, fsdp_in_use: bool = False, *,
                 n_threads: Optional[int] = None) -> None:
        self._setup(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                             "log_every": log_every, "d0": d0, "growth_rate": growth_rate,
                             "fsdp_in_use": fsdp_in_use}, n_threads)

    def _kernel_args(self, groups, lrs, est):
        g0 = groups[0]
        return dict(lr=lrs, momentum=g0["momentum"], weight_decay=g0["weight_decay"],
                    d=est["d"], numerator_weighted=est["numerator_weighted"],
                    g0_norm=est["g0_norm"], growth_rate=g0["growth_rate"], k=est["k"])


class DAdaptAdaGrad(_DAdapt):
    r"""D-Adapt AdaGrad: AdaGrad with a learning-rate-free step size (dadaptation 3.2's
    algorithm, dense grads).

    Defazio & Mishchenko, *Learning-Rate-Free Learning by D-Adaptation* (ICML 2023). With
    ``g`` the grad plus the group's ``weight_decay * p``, ``dlr = d * lr`` (``lr`` a unitless
    multiplier), ``x_0`` the params at the first step and ``alpha`` starting at 1e-6, each
    step

    .. math::

        \alpha &\leftarrow \alpha + g^2, \qquad s \leftarrow s + \mathrm{dlr}\; g, \qquad
        G \leftarrow G + \mathrm{dlr}^2 \textstyle\sum g^2 / (\sqrt\alpha + \epsilon), \\
        d &\leftarrow \max\Bigl(d, \min\bigl((\textstyle\sum s^2 / (\sqrt\alpha + \epsilon)
        - G) / \lVert s \rVert_1,\; d \cdot \mathrm{growth\_rate}\bigr)\Bigr), \\
        p &\leftarrow \mathrm{momentum}\; p + (1 - \mathrm{momentum})
        \bigl(x_0 - s / (\sqrt\alpha + \epsilon)\bigr)

    (the sums ``sum s^2 / (sqrt(alpha) + eps)`` and ``||s||_1`` are kept as running totals
    moved by each step's change, as the package does; with ``momentum = 0``,
    ``p = x_0 - s / (sqrt(alpha) + eps)``). The sums run over every param in fixed blocks in
    double, in the same compiled pass as ``alpha`` and ``s``.

    Semantics are dadaptation's: ``lr``, ``momentum``, ``d0``, ``growth_rate`` and
    ``log_every`` are shared (the package reads group 0's; here every group must hold the
    same value, the lr included); ``weight_decay`` and ``eps`` are per group.

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or list
        of group dicts
        The params, float32 or float64, C- or F-contiguous, writeable; updated in place.
    lr : float or schedule, default 1
        The step-size multiplier (unitless, ``>= 0``; a schedule or callable ``k -> float``
        is evaluated at the step count ``k``).
    momentum : float, default 0
        ``>= 0``: the param's share in its update.
    log_every : int, default 0
        Log ``d`` with :mod:`logging` (logger ``fastlr.dadapt``) every ``log_every`` steps.
    weight_decay : float, default 0
        L2 penalty added to the grad (``>= 0``).
    eps : float, default 1e-6
        Added to ``sqrt(alpha)`` (``> 0``, the grads' units).
    d0 : float, default 1e-6
        The initial estimate ``d`` (``> 0``, the params' units).
    growth_rate : float, default inf
        The largest factor ``d`` may grow by in one step (``> 0``).
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.

    Attributes
    ----------
    param_groups : list of dict
        The groups (dicts like torch's, writes checked).
    d : float
        The current estimate (``d0`` before the first step).
    estimate : dict
        ``d``, ``gsq_weighted``, ``sksq_weighted``, ``skl1`` and ``k``.
    state : dict
        Per param index: ``alphak``, ``sk``, ``x0`` (live views; empty before the first
        step).

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, params overlap or shared hyperparameters
        differ between groups.

    Notes
    -----
    Where fastlr differs from dadaptation: hyperparameters are checked at construction;
    grads are never modified; sparse grads are refused (the package has a sparse path).

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.DAdaptAdaGrad([w])
    >>> for _ in range(50):
    ...     _ = opt.step([2 * w])
    >>> bool(opt.d > 1e-6) and bool(np.abs(w).max() < 2.0)
    True
    """

    _HYPERS = ("lr", "momentum", "log_every", "weight_decay", "eps", "d0", "growth_rate")
    _SHARED = ("lr", "momentum", "log_every", "d0", "growth_rate")
    _ESTIMATE = ("d", "gsq_weighted", "sksq_weighted", "skl1", "k")
    _BUFFERS = ("alphak", "sk", "x0")
    _START = ("x0",)
    _MOMENTUM = NONNEG
    _kernel = "dadapt_adagrad_step"

    def __init__(self, params: Any, lr: Any = 1.0, momentum: float = 0, log_every: int = 0,
                 weight_decay: float = 0.0, eps: float = 1e-6, d0: float = 1e-6,
                 growth_rate: float = math.inf, *, n_threads: Optional[int] = None) -> None:
        self._setup(params, {"lr": lr, "momentum": momentum, "log_every": log_every,
                             "weight_decay": weight_decay, "eps": eps, "d0": d0,
                             "growth_rate": growth_rate}, n_threads)

    def _fresh_buffer(self, key: str, p: np.ndarray) -> np.ndarray:
        return np.full_like(p, 1e-6) if key == "alphak" else np.zeros_like(p)

    def _kernel_args(self, groups, lrs, est):
        g0 = groups[0]
        return dict(weight_decay=[gr["weight_decay"] for gr in groups],
                    eps=[gr["eps"] for gr in groups], lr=lrs[0], momentum=g0["momentum"],
                    d=est["d"], gsq_weighted=est["gsq_weighted"],
                    sksq_weighted=est["sksq_weighted"], skl1=est["skl1"],
                    growth_rate=g0["growth_rate"], k=est["k"])
