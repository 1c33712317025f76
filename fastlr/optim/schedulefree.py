"""Schedule-free SGD, AdamW and RAdam (:class:`ScheduleFreeSGD`, :class:`ScheduleFreeAdamW`,
:class:`ScheduleFreeRAdam`): the semantics, names and defaults of the authors' reference
package ``schedulefree`` 1.4.1 (``SGDScheduleFree``, ``AdamWScheduleFree``,
``RAdamScheduleFree``; their per-tensor path), on NumPy arrays.

They do not fit the element-wise optimizer table: the step needs per-group averaging
weights carried between steps, and the params switch between two points (``train`` /
``eval``). So, as :class:`fastlr.LBFGS`, each is its own class here; the per-element work
is the fused loops of ``fastlr._core.schedulefree`` (twins: ``fastlr.reference.schedulefree``).
For code using the package, ``fastlr.compat.torch`` has bridges of the same names.
"""

from __future__ import annotations

import numbers
import operator
import threading
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from fastlr._core.dispatch import module as _variant
from fastlr._core.args import (FINITE, INT_MAX, NONNEG, OPEN_UNIT, UNIT, checked_real,
                               flag_arg, int_arg)
from fastlr.optim.checkpoint import (CheckpointMixin, StateFileMixin, _hyper_diff, _is_marker,
                                     _names_diff, _plain, _same)
from fastlr.optim.groups import (GroupsMixin, ParamGroup, _FIXED_KEYS, _nonneg_int, _some,
                                 by_name, groups_arg, split_named)
from fastlr.schedules import Schedule

__all__ = ["ScheduleFreeSGD", "ScheduleFreeAdamW", "ScheduleFreeRAdam"]

_FORMAT = "fastlr-schedulefree-1"


# the loops for this CPU (fastlr._core.schedulefree, or its x86-64-v3 build)
_kernels = _variant("schedulefree")


class _ScheduleFree(StateFileMixin):
    """What the three schedule-free optimizers share: groups, checks, the step's driver,
    the mode switch and checkpoints. Subclasses set the hyperparameters and the per-group
    coefficients (:meth:`_coefficients`)."""

    #: the hyperparameters, in the order of the reference's constructor
    _HYPERS: Tuple[str, ...] = ()
    #: the state buffers of each param
    _BUFFERS: Tuple[str, ...] = ("z",)

    def _setup(self, params: Any, defaults: Dict[str, Any]) -> None:
        name = self._name
        self._busy = threading.Lock()
        self.param_groups: List[ParamGroup] = []
        self._names: Optional[List[str]] = None
        self._params: List[np.ndarray] = []
        self._dirty = False
        checked = {k: self._check_hyper(k, v, "") for k, v in defaults.items()}
        self.defaults: Dict[str, Any] = dict(checked)
        all_names: Optional[List[str]] = None
        for g, group in enumerate(groups_arg(name, params)):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{name}: a param group must be a dict with a 'params' entry")
            where = f"param_groups[{g}]['params']"
            arrays, names = split_named(name, group["params"], where)
            if "param_names" in group:
                given = group["param_names"]
                if names is not None or not isinstance(given, (list, tuple)) or \
                        len(given) != len(arrays):
                    raise ValueError(f"{name}: param_groups[{g}]['param_names'] must be a "
                                     f"list of {len(arrays)} names beside a list of arrays, "
                                     f"got {given!r:.100}")
                arrays, names = split_named(name, list(zip(given, arrays)),
                                            f"param_groups[{g}]['param_names']")
            if g and (names is None) != (all_names is None):
                raise ValueError(f"{name}: param_groups[{g}] has "
                                 f"{'no names' if names is None else 'named params'} but "
                                 f"param_groups[0] {'has' if names is None else 'has none'}; "
                                 f"name all params or none")
            start = len(self._params)
            if names is not None:
                all_names = (all_names or []) + names
                if len(set(all_names)) != len(all_names):
                    dup = next(n for k, n in enumerate(all_names) if n in all_names[:k])
                    raise ValueError(f"{name}: param_groups[{g}] names {dup!r}, which "
                                     f"another group already holds; names must be unique")
            for j, p in enumerate(arrays):
                self._check_param(self._label(start + j, all_names, g, j), p)
            full = ParamGroup()
            given_hypers = {k: self._check_hyper(k, v, f"param_groups[{g}]")
                            for k, v in group.items() if k not in _FIXED_KEYS}
            for k in self._HYPERS:
                dict.__setitem__(full, k, given_hypers.get(k, checked[k]))
            full._set_params(name, g, arrays, names)
            full._owner = self      # type: ignore[attr-defined]  # (a slot)
            self.param_groups.append(full)
            self._params.extend(arrays)
        self._names = all_names
        self._getter = None if all_names is None else operator.itemgetter(*all_names)
        self._check_overlap(self._params, all_names)
        bounds = np.cumsum([0] + [len(g["params"]) for g in self.param_groups]).tolist()
        self._slices = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
        spans = sorted((p.__array_interface__["data"][0], p.nbytes) for p in self._params
                       if p.nbytes)
        self._starts = np.array([a for a, _ in spans], dtype=np.uint64)
        self._ends = np.array([a + n for a, n in spans], dtype=np.uint64)
        n_groups = len(self.param_groups)
        self._t = 0
        self._train_mode = False
        self._weight_sum = [0.0] * n_groups
        self._lr_max = [-1.0] * n_groups
        self._scheduled_lr: List[Optional[float]] = [None] * n_groups
        self._buffers: Optional[Dict[str, List[np.ndarray]]] = None
        self._snapshot_id = uuid.uuid4().hex

    # the param checks, labels, thread guard and checkpoint refusal of the other optimizers
    # (they use only the attributes set above: _name, _names, param_groups, _busy)
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

    # ------------------------------------------------------------------------------------
    # hyperparameters
    # ------------------------------------------------------------------------------------
    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter, before it is stored (also a group write's
        check: ParamGroup calls it)."""
        fn = self._name
        label = f"{where}[{key!r}]" if where else key
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key not in self._HYPERS:
            raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                             f"{', '.join(sorted(self._HYPERS))}")
        if key == "lr":
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
                checked_real(fn, label, value, NONNEG)
                return value
            if isinstance(value, Schedule) or callable(value):
                return value
            raise TypeError(f"{fn}: {label} must be a number >= 0, a fastlr schedule or a "
                            f"callable, got {type(value).__name__}")
        if key == "momentum":
            checked_real(fn, label, value, OPEN_UNIT)
            return value
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{fn}: {label} must be a pair (beta1, beta2), got {value!r}")
            b1, b2 = (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v
                      for v in value)
            checked_real(fn, f"{label}[0] (beta1)", b1, OPEN_UNIT)
            checked_real(fn, f"{label}[1] (beta2)", b2, UNIT)
            return (b1, b2)
        if key in ("eps", "weight_decay", "weight_lr_power"):
            checked_real(fn, label, value, NONNEG)
            return value
        if key == "r":
            checked_real(fn, label, value, FINITE)
            return value
        if key == "warmup_steps":
            return int(int_arg(fn, label, value, 0, INT_MAX))
        # silent_sgd_phase
        return bool(flag_arg(fn, label, value))

    def _validate_group(self, group):
        """(ParamGroup's hook.) No relation between hyperparameters to check."""

    def _lr_at(self, g: int, group: Mapping[str, Any], t: int) -> float:
        """Group ``g``'s base lr for the update after ``t`` steps (a schedule evaluated at
        ``t``), checked."""
        lr = group["lr"]
        if isinstance(lr, numbers.Real):
            return float(lr)
        value = lr(t)
        return checked_real(f"{self._name}.step", f"param_groups[{g}]['lr'] (a schedule) at "
                            f"step {t}", value, NONNEG)

    def _plan(self, g, group, k, lr, beta1, **kernel):
        """Group ``g``'s update ``k + 1`` at (scheduled, warmed-up) lr ``lr``: the
        reference's new ``lr_max`` and ``weight_sum``, the lr, and the kernel's keywords.

        The averaging weight is ``(k+1)^r * lr_max^weight_lr_power`` over the running sum
        (``ckp1``; 0 when the sum is 0), ``y_coef = lr * (beta1 * (1 - ckp1) - 1)``."""
        r, weight_lr_power = group["r"], group["weight_lr_power"]
        lr_max = max(lr, self._lr_max[g])
        try:
            weight = ((k + 1) ** r) * (lr_max ** weight_lr_power)
        except OverflowError:
            raise ValueError(f"{self._name}.step: param_groups[{g}]: the averaging weight "
                             f"(k+1)**r * lr_max**weight_lr_power overflows at step {k + 1} "
                             f"(r={r!r}, lr_max={lr_max!r}, weight_lr_power="
                             f"{weight_lr_power!r}). Nothing was updated") from None
        weight_sum = self._weight_sum[g] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0
        return lr_max, weight_sum, lr, dict(ckp1=ckp1, lr=lr,
                                            y_coef=lr * (beta1 * (1 - ckp1) - 1),
                                            weight_decay=group["weight_decay"], **kernel)

    def _beta1(self, group: Mapping[str, Any]) -> float:
        return group["betas"][0]

    # ------------------------------------------------------------------------------------
    # what the optimizer exposes
    # ------------------------------------------------------------------------------------
    @property
    def train_mode(self) -> bool:
        """True when the params hold the training point y (after :meth:`train`), False when
        they hold the averaged point x (at construction and after :meth:`eval`)."""
        return self._train_mode

    @property
    def steps(self) -> int:
        """Updates applied so far (the reference's ``k`` of every group)."""
        return self._t

    @property
    def params(self) -> List[np.ndarray]:
        """The params, in order (the caller's arrays)."""
        return list(self._params)

    @property
    def last_lr(self) -> Optional[List[float]]:
        """The lr each group used in the last update, after the schedule, the warmup (and
        RAdam's rectification): the reference's ``scheduled_lr``. None before the first."""
        if self._t == 0 or any(v is None for v in self._scheduled_lr):
            return None
        return [float(v) for v in self._scheduled_lr]    # type: ignore[arg-type]

    @property
    def state(self) -> Dict[int, Dict[str, np.ndarray]]:
        """Each param's state by flat index: ``z`` (and ``exp_avg_sq`` for the Adam kinds),
        the live arrays in the param's shape and layout; empty before the first step."""
        if self._buffers is None:
            return {}
        return {i: {k: self._buffers[k][i] for k in self._BUFFERS}
                for i in range(len(self._params))}

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
    def _checked_grads(self, fn: str, grads: Any) -> List[np.ndarray]:
        """The grads as a list in param order, checked in C (type, dtype, shape, layout,
        alignment, no overlap with a param); the message is formed on the error path."""
        n = len(self._params)
        named = False
        if type(grads) is not list:
            if isinstance(grads, dict):
                grads = list(by_name(fn, self._names, grads, "the grads",
                                     f"it needs one grad per param name ({n}). Nothing was "
                                     f"updated", self._getter))
                named = True
            elif isinstance(grads, (list, tuple)):
                grads = list(grads)
            else:
                raise TypeError(f"{fn}: grads must be a list of {n} arrays in param order"
                                f"{' or a dict of name -> array' if self._names else ''}, "
                                f"got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"{fn}: got {len(grads)} grads for {n} params")
        bad = _kernels.first_bad_grad(self._params, grads, self._starts, self._ends)
        if bad >= 0:
            self._explain_grad(fn, grads[bad], bad, named)
        return grads

    def _explain_grad(self, fn, g, i, named):
        """Raise the error for grad ``i``, which ``first_bad_grad`` refused."""
        label = f"grads[{self._names[i]!r}]" if named and self._names else f"grads[{i}]"
        p = self._params[i]
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{fn}: {label} must be a numpy.ndarray, got {type(g).__name__}")
        if g.dtype != p.dtype:
            raise TypeError(f"{fn}: {label} must have dtype {p.dtype} like {self._label(i)}, "
                            f"got {g.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"{fn}: {label} must have shape {p.shape} like "
                             f"{self._label(i)}, got {g.shape}")
        order = "C" if p.flags.c_contiguous else "F"
        if not (g.flags.c_contiguous if order == "C" else g.flags.f_contiguous):
            raise ValueError(f"{fn}: {label} must be {order}-contiguous like "
                             f"{self._label(i)}, got strides {g.strides} (np.asarray(g, "
                             f"order={order!r}) makes a copy that is)")
        if not g.flags.aligned:
            raise ValueError(f"{fn}: {label} is not aligned in memory")
        raise ValueError(f"{fn}: {label} overlaps a param in memory (the step writes the "
                         f"params; pass a separate grad buffer). Nothing was updated")

    def step(self, grads: Any) -> None:
        """Apply one schedule-free update to every param, in place (train mode only).

        Everything is checked first (the grads, every group's scheduled lr and averaging
        weight); on an error nothing changes.

        Parameters
        ----------
        grads : list of numpy.ndarray or dict of str -> numpy.ndarray
            The grads at the params' current values (the training point y), one per param
            with its shape, dtype and layout, in param order, or, for named params, a dict
            of name -> grad. Read only.

        Raises
        ------
        TypeError
            If a grad has the wrong type, dtype or layout.
        ValueError
            If the number, shapes or names of the grads do not match the params, a grad
            overlaps a param, or a schedule gives an invalid lr.
        RuntimeError
            If the optimizer is in eval mode (call :meth:`train` first), or another thread
            is stepping or changing this optimizer at the same time.
        """
        fn = f"{self._name}.step"
        if not self._busy.acquire(blocking=False):
            raise self._busy_error("step")
        try:
            if not self._train_mode:
                raise RuntimeError(f"{fn}: the optimizer is in eval mode (the params hold the "
                                   f"averaged point x); call train() before stepping and "
                                   f"eval() before evaluating or saving the params. Nothing "
                                   f"was updated")
            grads = self._checked_grads(fn, grads)
            t = self._t
            plans = [self._coefficients(g, group, t)
                     for g, group in enumerate(self.param_groups)]
            if self._buffers is None:
                self._buffers = self._new_buffers()
            bufs = [self._buffers[k] for k in self._BUFFERS]
            for g, (_, _, _, kwargs) in enumerate(plans):
                s = self._slices[g]
                self._run(self._params[s], grads[s], [b[s] for b in bufs], kwargs)
            for g, (lr_max, weight_sum, lr, _) in enumerate(plans):
                self._lr_max[g], self._weight_sum[g], self._scheduled_lr[g] = \
                    lr_max, weight_sum, lr
            self._t = t + 1
        finally:
            self._busy.release()

    def _new_buffers(self) -> Dict[str, List[np.ndarray]]:
        """The state at the first step: ``z`` a copy of the params (the reference's
        ``torch.clone``), ``exp_avg_sq`` zeros; each in its param's layout."""
        bufs = {"z": [np.array(p, copy=True, order="K") for p in self._params]}
        if "exp_avg_sq" in self._BUFFERS:
            bufs["exp_avg_sq"] = [np.zeros_like(p) for p in self._params]
        return bufs

    # ------------------------------------------------------------------------------------
    # train / eval
    # ------------------------------------------------------------------------------------
    def train(self) -> None:
        """Put the params at the training point y (before stepping).

        ``y = lerp(x, z, 1 - beta1)``, one pass over the params and ``z``; nothing to do
        in train mode or before the first step (the params are their own z then).

        Raises
        ------
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.
        """
        self._switch(True)

    def eval(self) -> None:
        """Put the params at the averaged point x (before evaluating or saving them).

        ``x = lerp(y, z, 1 - 1/beta1)``, one pass over the params and ``z``; nothing to do
        in eval mode or before the first step.

        Raises
        ------
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.
        """
        self._switch(False)

    def _switch(self, to_train: bool) -> None:
        with self._exclusive("train" if to_train else "eval"):
            if self._train_mode == to_train:
                return
            if self._buffers is not None:
                z = self._buffers["z"]
                for g, group in enumerate(self.param_groups):
                    beta1 = float(self._beta1(group))
                    s = self._slices[g]
                    _kernels.switch(self._params[s], z[s],
                                    1 - beta1 if to_train else 1 - 1 / beta1)
            self._train_mode = to_train

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        The params are not in it (save them with the model); ``train_mode`` says which
        point they hold at this moment: save the params and the optimizer together, in
        the same mode.

        Returns
        -------
        dict
            ``{"format", "optimizer" (the class name), "steps", "train_mode",
            "group_state": [{"weight_sum", "lr_max", "scheduled_lr"}], "state": {i: {"z",
            "exp_avg_sq"}} (empty before the first step), "param_groups":
            [hyperparameters, "params": indices, "param_names": names], "snapshot_of"}``
            (a schedule as ``{"schedule": repr}``; loading its own state dict back is a
            rollback: the hyperparameters too).
        """
        with self._exclusive("state_dict"):
            groups, index = [], 0
            for group in self.param_groups:
                g = {k: _plain(group[k]) for k in self._HYPERS}
                g["params"] = list(range(index, index + len(group["params"])))
                index += len(group["params"])
                if "param_names" in group:
                    g["param_names"] = list(group["param_names"])
                groups.append(g)
            state = {} if self._buffers is None else {
                i: {k: self._buffers[k][i].copy(order="K") for k in self._BUFFERS}
                for i in range(len(self._params))}
            return {"format": _FORMAT, "optimizer": type(self).__name__, "steps": self._t,
                    "train_mode": self._train_mode,
                    "group_state": [{"weight_sum": ws, "lr_max": lm, "scheduled_lr": s}
                                    for ws, lm, s in zip(self._weight_sum, self._lr_max,
                                                         self._scheduled_lr)],
                    "state": state, "param_groups": groups, "snapshot_of": self._snapshot_id}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict: ``z`` (and ``exp_avg_sq``), the counters and the mode.

        Everything is validated first; on any error nothing changes. The arrays are not
        touched: the mode restored is the one the params saved with the checkpoint are in.
        Every hyperparameter the state dict records must equal the optimizer's (a
        difference raises ``ValueError`` naming it; ``strict=False``: a warning, the
        optimizer's values kept), except when it is this optimizer's own
        :meth:`state_dict` (a rollback restores them too). Named params must carry the
        same names in order.

        Parameters
        ----------
        state_dict : dict
            From :meth:`state_dict` (of the same class, over params of the same shapes).
        strict : bool, default True
            Raise on hyperparameters or names that differ; with False, warn.

        Raises
        ------
        TypeError
            If ``state_dict`` is not a dict or ``strict`` is not a bool.
        ValueError
            If the state dict is malformed, of another optimizer, does not fit the params,
            or (``strict=True``) records other hyperparameters or names.
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
        for key in ("state", "param_groups", "steps", "train_mode", "group_state"):
            if key not in sd:
                raise ValueError(f"{name}: the state dict has no {key!r} entry")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}, expected "
                             f"{_FORMAT!r}")
        mine = type(self).__name__
        if sd.get("optimizer", mine) != mine:
            raise ValueError(f"{name}: the state dict is of {sd['optimizer']!r}, not {mine!r}")
        steps = int(_nonneg_int(name, "state_dict['steps']", sd["steps"]))
        train_mode = bool(flag_arg(name, "state_dict['train_mode']", sd["train_mode"]))
        n_groups = len(self.param_groups)
        groups, gstate = sd["param_groups"], sd["group_state"]
        for key, value in (("param_groups", groups), ("group_state", gstate)):
            if not isinstance(value, (list, tuple)) or len(value) != n_groups or \
                    not all(isinstance(v, dict) for v in value):
                raise ValueError(f"{name}: {key} must be a list of {n_groups} dicts (one per "
                                 f"group), got {value!r:.200}")
        renamed, differ, new_hypers = [], [], []
        for g, (saved, group) in enumerate(zip(groups, self.param_groups)):
            s = self._slices[g]
            held = saved.get("params")
            if not isinstance(held, (list, tuple)) or list(held) != list(range(s.start, s.stop)):
                raise ValueError(f"{name}: param_groups[{g}] holds params {held!r:.200}, "
                                 f"expected {list(range(s.start, s.stop))!r:.200}")
            saved_names = saved.get("param_names")
            if saved_names is not None:
                n = s.stop - s.start
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
                if not _is_marker(value):
                    hypers[key] = self._check_hyper(key, value, f"param_groups[{g}]")
                if not _same(group[key], value):
                    differ.append((g, key, group[key], value))
            new_hypers.append(hypers)
        counters = []
        for g, gs in enumerate(gstate):
            lr_max = checked_real(name, f"group_state[{g}]['lr_max']", gs.get("lr_max"),
                                  FINITE)
            if lr_max < 0 and lr_max != -1.0:
                raise ValueError(f"{name}: group_state[{g}]['lr_max'] must be >= 0 (or -1.0 "
                                 f"before the first step), got {lr_max!r}")
            ws = checked_real(name, f"group_state[{g}]['weight_sum']", gs.get("weight_sum"),
                              NONNEG)
            sched = gs.get("scheduled_lr")
            if sched is not None:
                sched = checked_real(name, f"group_state[{g}]['scheduled_lr']", sched, NONNEG)
            counters.append((lr_max, ws, sched))
        bufs = self._checked_state(name, sd["state"], steps)
        rollback = sd.get("snapshot_of") == self._snapshot_id
        if renamed:
            self._refuse_or_warn(name, strict, "names its params otherwise", renamed,
                                 "build the optimizer over the checkpoint's names, in its "
                                 "order", "loaded by position")
        if differ and not rollback:
            self._refuse_or_warn(name, strict, "recorded other hyperparameters",
                                 [_hyper_diff(*d) for d in differ],
                                 "a checkpoint restores the state, the counters and the "
                                 "mode, never the hyperparameters: build the optimizer with "
                                 "the checkpoint's values", "kept this optimizer's values")
        # everything checked: apply
        if rollback:
            for group, hypers in zip(self.param_groups, new_hypers):
                for key, value in hypers.items():
                    dict.__setitem__(group, key, value)
        self._t = steps
        self._train_mode = train_mode
        self._lr_max = [c[0] for c in counters]
        self._weight_sum = [c[1] for c in counters]
        self._scheduled_lr = [c[2] for c in counters]
        self._buffers = bufs

    def _checked_state(self, name, st, steps):
        """A state dict's ``state`` checked and copied into the params' dtypes and
        layouts; None for an empty one (before the first step)."""
        if not isinstance(st, dict):
            raise TypeError(f"{name}: 'state' must be a dict, got {type(st).__name__}")
        n = len(self._params)
        if not st:
            if steps:
                raise ValueError(f"{name}: 'state' is empty but 'steps' is {steps} (after a "
                                 f"step every param has {', '.join(self._BUFFERS)})")
            return None
        if sorted(st, key=str) != sorted(range(n), key=str):
            raise ValueError(f"{name}: 'state' must have an entry for each of the {n} params "
                             f"(0 to {n - 1}), got keys {sorted(st, key=str)[:8]!r}")
        out: Dict[str, List[np.ndarray]] = {k: [] for k in self._BUFFERS}
        for i in range(n):
            entry, p = st[i], self._params[i]
            if not isinstance(entry, dict) or set(entry) != set(self._BUFFERS):
                raise ValueError(f"{name}: state[{i}] must be a dict of "
                                 f"{', '.join(self._BUFFERS)}, got "
                                 f"{sorted(entry) if isinstance(entry, dict) else entry!r:.100}")
            for k in self._BUFFERS:
                v = entry[k]
                if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.shape != p.shape:
                    raise ValueError(f"{name}: state[{i}][{k!r}] must be a float array of "
                                     f"shape {p.shape} like {self._label(i)}, got "
                                     f"{getattr(v, 'dtype', type(v).__name__)} "
                                     f"{getattr(v, 'shape', '')}")
                order = "C" if p.flags.c_contiguous else "F"
                out[k].append(np.array(v, dtype=p.dtype, order=order, copy=True))
        return out

    def __repr__(self) -> str:
        """torch's layout: the class, then per group its params (count, names), its
        hyperparameters and the mode (the reference's ``train_mode``)."""
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            shown = f"{n} array{'' if n == 1 else 's'}"
            if "param_names" in group:
                shown += f" ({_some(group['param_names'], 8)})"
            lines += [f"Parameter Group {g}", f"    params: {shown}"]
            lines += [f"    {key}: {group[key]!r}" for key in sorted(self._HYPERS)]
            lines.append(f"    train_mode: {self._train_mode}")
        lines.append(")")
        return "\n".join(lines)

    # subclasses: the per-group coefficients and the kernel call
    def _coefficients(self, g: int, group: Mapping[str, Any], t: int) -> Tuple[Any, ...]:
        raise NotImplementedError

    def _run(self, ys: List[np.ndarray], grads: List[np.ndarray],
             bufs: List[List[np.ndarray]], kwargs: Dict[str, Any]) -> None:
        """One group's step: the fused loop (SGD's with ``z`` alone, Adam's with
        ``exp_avg_sq`` too)."""
        if len(bufs) == 1:
            _kernels.sgd_step(ys, grads, bufs[0], **kwargs)
        else:
            _kernels.adam_step(ys, grads, bufs[0], bufs[1], **kwargs)


def _warmup_factor(k: int, warmup_steps: int) -> float:
    """The reference's linear warmup: ``(k+1) / warmup_steps`` for ``k < warmup_steps``."""
    return (k + 1) / warmup_steps if k < warmup_steps else 1.0


_COMMON_PARAMS = """
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or
        list of group dicts
        The params, float32 or float64, C- or F-contiguous, writeable; updated in place.
        Group dicts (``{"params": ..., "lr": ...}``) override the hyperparameters per group,
        as in torch."""

_AVERAGE_PARAMS = """
    r : float, default 0
        Polynomial weighting of the average: update ``k`` weighs ``k^r`` (finite).
    weight_lr_power : float, default 2
        The weights of the average are ``lr_max^weight_lr_power`` times the polynomial
        weight, ``lr_max`` the largest lr so far (``>= 0``; 0: no lr weighting)."""

_COMMON_NOTES = """
    Schedule-free training keeps three sequences: ``z`` (a plain SGD / Adam iterate, in
    :attr:`state`), the average ``x`` and the point ``y = (1 - beta1) z + beta1 x`` where
    the grads are taken. Update ``k`` (1-based), at lr ``lr_k``:
    ``lr_max = max(lr_max, lr_k)``, ``c = k^r lr_max^weight_lr_power / sum_{i<=k} (...)``
    (``ckp1``; 0 while the sum is 0), ``z <- z - lr_k d``, ``x <- (1 - c) x + c z``, done on
    ``y`` directly: ``y <- lerp(y, z, c) + lr_k (beta1 (1 - c) - 1) d`` with ``d`` the
    (normalized) grad plus ``weight_decay * y`` (decay taken at y). The arrays hold ``y`` in
    train mode and ``x`` in eval mode: call :meth:`train` before the training steps and
    :meth:`eval` before evaluating, checkpointing or exporting the params (and
    :meth:`train` again to resume). Both are one pass over the params and ``z``
    (``lerp(p, z, 1 - beta1)`` and ``lerp(p, z, 1 - 1/beta1)``). Like the reference, the
    optimizer starts in eval mode and :meth:`step` refuses to run in it; unlike the
    reference, every param takes part in every step (a grad per param).

    ``lr`` may be a fastlr schedule (or a callable ``step -> lr``): its value at the step
    count replaces the number ``lr`` before anything else, so the built-in warmup
    multiplies it and ``lr_max`` (hence the averaging weights) follows it — as when a torch
    LR scheduler sets ``group["lr"]`` of the reference optimizer each step. Schedule-free
    needs no decay schedule; a schedule is for warmups of another shape or experiments.

    The arithmetic is the reference's per-tensor path, operation by operation, in the
    params' dtype (coefficients in double, rounded once); the step is one fused pass
    (``fastlr._core.schedulefree``). float64 agrees with the reference to about 1e-15
    relative per step. Not provided: ``foreach`` (an implementation choice of torch). For
    torch code using the package: ``fastlr.compat.torch.AdamWScheduleFree`` etc.

    Checkpoints (:meth:`state_dict`, :meth:`save`) hold ``z`` (and ``exp_avg_sq``), the
    step count, each group's ``lr_max``, ``weight_sum`` and ``scheduled_lr``, and the
    mode; loading restores them, mode included, without touching the arrays: restore the
    params saved at the same moment (in the same mode). Saving in eval mode, as the
    reference advises, stores the averaged params.
"""

_WARMUP_PARAMS = """
    warmup_steps : int, default 0
        Linear warmup: update ``k`` uses ``lr * min(1, k / warmup_steps)``; ``>= 0``."""

_ADAM_PARAMS = """
    lr : float or schedule, default 0.0025
        Learning rate, ``>= 0``; a fastlr schedule or a callable of the step count is
        evaluated at each step (see Notes).
    betas : (float, float), default (0.9, 0.999)
        ``beta1`` in ``(0, 1)``: ``y = (1 - beta1) z + beta1 x``; ``beta2`` in ``[0, 1)``:
        the decay of the squared-grad average ``exp_avg_sq``.
    eps : float, default 1e-8
        Added to the denominator (units of the grad), ``>= 0``."""

_COMMON_RAISES = """    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a hyperparameter is out of range, params overlap in memory, or names repeat."""

_ATTRIBUTES = f"""

    Attributes
    ----------
    param_groups : list of dict
        The groups (dicts like torch's, writes checked): ``params``, ``param_names`` when
        named, and the hyperparameters.

{_COMMON_RAISES}
"""


class ScheduleFreeSGD(_ScheduleFree):
    __doc__ = f"""Schedule-free SGD (``schedulefree.SGDScheduleFree`` 1.4.1's algorithm,
    names and defaults).

    The step with ``d = g + weight_decay * y`` (``g`` the grad at ``y``)::

        z <- z - lr d
        y <- lerp(y, z, ckp1) + lr (momentum (1 - ckp1) - 1) d

    Parameters
    ----------{_COMMON_PARAMS}
    lr : float or schedule, default 1.0
        Learning rate, ``>= 0`` (units of the params per unit of grad); a fastlr schedule
        or a callable of the step count is evaluated at each step (see Notes).
    momentum : float, default 0.9
        The interpolation ``beta`` between ``z`` and ``x`` (``y = (1 - momentum) z +
        momentum x``), in ``(0, 1)``.
    weight_decay : float, default 0
        L2 penalty ``>= 0``, applied at ``y`` (added to the grad).{_WARMUP_PARAMS}{_AVERAGE_PARAMS}{_ATTRIBUTES}
    Notes
    -----{_COMMON_NOTES}
    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.ScheduleFreeSGD([w], lr=0.1)
    >>> opt.train()
    >>> for _ in range(100):
    ...     opt.step([2 * w])          # the grad of |w|^2 at y
    >>> opt.eval()                     # w now holds the average x
    >>> bool(np.abs(w).max() < 0.05)
    True
    """

    _HYPERS = ("lr", "momentum", "weight_decay", "warmup_steps", "r", "weight_lr_power")

    def __init__(self, params: Any, lr: Any = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0) -> None:
        self._setup(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                 warmup_steps=warmup_steps, r=r,
                                 weight_lr_power=weight_lr_power))

    def _beta1(self, group):
        return group["momentum"]

    def _coefficients(self, g, group, t):
        lr = self._lr_at(g, group, t) * _warmup_factor(t, group["warmup_steps"])
        return self._plan(g, group, t, lr, group["momentum"])


class ScheduleFreeAdamW(_ScheduleFree):
    __doc__ = f"""Schedule-free AdamW (``schedulefree.AdamWScheduleFree`` 1.4.1's
    algorithm, names and defaults).

    The step ``k`` (1-based), with ``g`` the grad at ``y``::

        v <- beta2 v + (1 - beta2) g^2
        d <- g / (sqrt(v / (1 - beta2^k)) + eps) + weight_decay * y
        z <- z - lr d
        y <- lerp(y, z, ckp1) + lr (beta1 (1 - ckp1) - 1) d

    (no first moment: ``beta1`` is the interpolation between ``z`` and ``x``).

    Parameters
    ----------{_COMMON_PARAMS}{_ADAM_PARAMS}
    weight_decay : float, default 0
        Decay ``>= 0`` applied at ``y``, added to the normalized grad (decoupled).{_WARMUP_PARAMS}{_AVERAGE_PARAMS}{_ATTRIBUTES}
    Notes
    -----{_COMMON_NOTES}
    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.ScheduleFreeAdamW([w], lr=0.05, warmup_steps=10)
    >>> opt.train()
    >>> for _ in range(300):
    ...     opt.step([2 * w])
    >>> opt.eval()
    >>> bool(np.abs(w).max() < 0.05)
    True
    """

    _HYPERS = ("lr", "betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power")
    _BUFFERS = ("z", "exp_avg_sq")

    def __init__(self, params: Any, lr: Any = 0.0025,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0) -> None:
        self._setup(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 warmup_steps=warmup_steps, r=r,
                                 weight_lr_power=weight_lr_power))

    def _coefficients(self, g, group, t):
        beta1, beta2 = group["betas"]
        lr = self._lr_at(g, group, t) * _warmup_factor(t, group["warmup_steps"])
        return self._plan(g, group, t, lr, beta1, beta2=beta2,
                          bias_correction2=1 - beta2 ** (t + 1), eps=group["eps"],
                          adaptive=True)


class ScheduleFreeRAdam(_ScheduleFree):
    __doc__ = f"""Schedule-free RAdam (``schedulefree.RAdamScheduleFree`` 1.4.1's
    algorithm, names and defaults).

    As :class:`ScheduleFreeAdamW` without a warmup parameter: RAdam's rectification
    scales the lr. With ``rho_inf = 2 / (1 - beta2) - 1`` and ``rho_k = rho_inf - 2 k
    beta2^k / (1 - beta2^k)``, update ``k`` uses ``lr * rect`` with ``rect = sqrt((rho_k -
    4)(rho_k - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_k))`` when ``rho_k > 4``;
    before that (the first 5 updates for ``beta2 = 0.999``) the grad is not normalized and
    ``rect`` is 0 (``silent_sgd_phase=True``: only ``exp_avg_sq`` moves) or 1 (plain SGD
    steps).

    Parameters
    ----------{_COMMON_PARAMS}{_ADAM_PARAMS}
    weight_decay : float, default 0
        Decay ``>= 0`` applied at ``y``, added to the (normalized) grad.{_AVERAGE_PARAMS}
    silent_sgd_phase : bool, default True
        Whether the updates before the rectification starts leave the params as they are.{_ATTRIBUTES}
    Notes
    -----{_COMMON_NOTES}
    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.array([1.0, -2.0])
    >>> opt = fastlr.ScheduleFreeRAdam([w], lr=0.2)
    >>> opt.train()
    >>> for _ in range(300):
    ...     opt.step([2 * w])
    >>> opt.eval()
    >>> bool(np.abs(w).max() < 0.05)
    True
    """

    _HYPERS = ("lr", "betas", "eps", "weight_decay", "r", "weight_lr_power",
               "silent_sgd_phase")
    _BUFFERS = ("z", "exp_avg_sq")

    def __init__(self, params: Any, lr: Any = 0.0025,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 silent_sgd_phase: bool = True) -> None:
        self._setup(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 r=r, weight_lr_power=weight_lr_power,
                                 silent_sgd_phase=silent_sgd_phase))

    def _coefficients(self, g, group, t):
        beta1, beta2 = group["betas"]
        step = t + 1
        beta2_t = beta2 ** step
        bias_correction2 = 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2_t / bias_correction2
        if rho_t > 4.0:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        else:
            rect = float(not group["silent_sgd_phase"])
        lr = self._lr_at(g, group, t) * rect
        return self._plan(g, group, t, lr, beta1, beta2=beta2,
                          bias_correction2=bias_correction2, eps=group["eps"],
                          adaptive=rho_t > 4.0)
