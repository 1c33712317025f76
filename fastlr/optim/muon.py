"""Muon with torch.optim.Muon's semantics (:class:`Muon`).

Muon does not fit the element-wise optimizer table: its update orthogonalizes each 2-D
param's momentum by a Newton-Schulz iteration (matrix products). So, like
:class:`fastlr.LBFGS`, it is its own class; its compiled passes and validated kernel are
in ``fastlr._core.muon`` (``fastlr.kernels.muon``), its NumPy twin in
:mod:`fastlr.reference.muon`.
"""

from __future__ import annotations

import bisect
import itertools
import numbers
import operator
import threading
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastlr._core import muon as _kernel
from fastlr._core.args import NONNEG, checked_real, choice_arg, flag_arg, int_arg
from fastlr.optim.checkpoint import (CheckpointMixin, StateFileMixin, _hyper_diff,
                                     _names_diff, _plain)
from fastlr.optim.front import split_flat_same_dtype
from fastlr.optim.groups import (GroupsMixin, ParamGroup, _FIXED_KEYS, _nonneg_int, _some,
                                 by_name, groups_arg, split_named)
from fastlr.optim.lbfgs import _same_hyper
from fastlr.schedules import Schedule

__all__ = ["Muon"]

_FORMAT = "fastlr-muon-1"
_HYPERS = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps",
           "ns_steps", "adjust_lr_fn")
#: hyperparameters that may be a schedule (a fastlr schedule or a callable of the step)
_SCHEDULABLE = ("lr", "weight_decay", "momentum")
_DEFAULT_COEFFICIENTS = (3.4445, -4.775, 2.0315)

Grads = Union[Sequence[Optional[np.ndarray]], np.ndarray,
              Mapping[str, Optional[np.ndarray]]]


class Muon(StateFileMixin):
    r"""Muon (torch.optim.Muon 2.13's algorithm, names and defaults): momentum
    orthogonalized by Newton-Schulz, for 2-D params.

    Per 2-D param ``W`` (``rows x cols``) with grad ``g`` and momentum buffer ``B``
    (zeros before the param's first update)::

        B = lerp(B, g, 1 - momentum)                 # B = momentum * B + (1 - momentum) * g
        u = lerp(g, B, momentum) if nesterov else B
        O = NS(u)
        W = W * (1 - lr * weight_decay) - lr' * O

    ``NS`` is torch's Newton-Schulz orthogonalization in bfloat16: ``X = u / max(||u||_F,
    eps)`` (transposed when rows > cols), then ``ns_steps`` times ``G = X X^T``,
    ``X = a X + (b G + c G G) X`` with ``(a, b, c) = ns_coefficients``, which drives the
    singular values of ``X`` towards 1 (``O ~ U V^T`` for ``u = U S V^T``). The lr is
    scaled by the shape: ``lr' = lr * sqrt(max(1, rows / cols))`` (``adjust_lr_fn`` None
    or ``"original"``) or ``lr' = lr * 0.2 * sqrt(max(rows, cols))``
    (``"match_rms_adamw"``: the update's RMS matches AdamW's, so AdamW's lr and weight
    decay carry over).

    The matrix products go to NumPy's BLAS (float32 products of bfloat16 values, each
    result rounded to bfloat16 as torch's CPU kernels do); the momentum, the rounding and
    the param update are fused compiled passes in the param's dtype, with torch's fused
    multiply-adds. Results agree with torch's up to the bfloat16 rounding of the update:
    the momentum buffers bit for bit, the params within a fraction of a bfloat16 ulp of the
    update per step (BLAS and MKL sum the float32 products in different orders; see
    :doc:`/muon`).

    Parameters
    ----------
    params : array, list of arrays, dict of str -> array, list of (str, array) pairs, or
        list of group dicts
        The 2-D params (float32 or float64, C- or F-contiguous, writeable), updated in
        place; as torch, groups may override any hyperparameter. Params that are not 2-D
        are refused (as torch refuses them): optimize biases and embeddings with another
        optimizer such as :class:`fastlr.AdamW`.
    lr : float or schedule, default 1e-3
        Learning rate, ``>= 0``, in param units per unit of the orthogonalized update; a
        fastlr schedule (or a callable of the step count) is evaluated at each step.
    weight_decay : float or schedule, default 0.1
        Decoupled weight decay, ``>= 0``: params are multiplied by ``1 - lr * weight_decay``.
    momentum : float or schedule, default 0.95
        Momentum factor, ``>= 0``.
    nesterov : bool, default True
        Nesterov's blend of the grad and the buffer.
    ns_coefficients : tuple of 3 floats, default (3.4445, -4.775, 2.0315)
        The Newton-Schulz polynomial's ``(a, b, c)``, finite (Keller Jordan's quintic).
    eps : float, default 1e-7
        Lower bound of the Frobenius norm the update is divided by, ``>= 0``.
    ns_steps : int, default 5
        Newton-Schulz iterations, in [0, 99] (torch refuses 100 and more at its step; fastlr
        at construction).
    adjust_lr_fn : {None, "original", "match_rms_adamw"}, default None
        The lr's scaling by the param's shape (None means ``"original"``).

    Attributes
    ----------
    defaults : dict
        The checked default hyperparameters.
    param_groups : list of dict
        The groups (dicts like torch's, writes checked): ``params``, ``param_names`` when
        named, and the hyperparameters.

    Raises
    ------
    TypeError
        If a param or a hyperparameter has the wrong type.
    ValueError
        If a param is not 2-D, not contiguous, read-only or overlaps another, or a
        hyperparameter is out of range.

    Examples
    --------
    >>> import numpy as np, fastlr
    >>> w = np.zeros((2, 3))
    >>> opt = fastlr.Muon([w], lr=0.1, weight_decay=0.0)
    >>> opt.step([np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])])
    >>> np.round(w, 2)
    array([[-0.11,  0.  ,  0.  ],
           [ 0.  , -0.11,  0.  ]])

    (the default coefficients leave singular values near, not at, 1: about 1.1 here.)
    """

    def __init__(self, params: Any, lr: Any = 1e-3, weight_decay: Any = 0.1,
                 momentum: Any = 0.95, nesterov: bool = True,
                 ns_coefficients: Tuple[float, float, float] = _DEFAULT_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5,
                 adjust_lr_fn: Optional[str] = None) -> None:
        self._busy = threading.Lock()
        self.param_groups: List[ParamGroup] = []
        self._params: List[np.ndarray] = []
        self._names: Optional[List[str]] = None
        self._name_index: Dict[str, int] = {}
        self._getter: Optional[Callable[[Any], Any]] = None
        self._buffers: List[Optional[np.ndarray]] = []
        self._t = 0
        self._dirty = False
        self._snapshot_id = uuid.uuid4().hex
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "nesterov": nesterov, "ns_coefficients": ns_coefficients, "eps": eps,
                    "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn}
        self.defaults: Dict[str, Any] = {k: self._check_hyper(k, v, "")
                                         for k, v in defaults.items()}
        for group in groups_arg(self._name, params):
            self._add_group(group)

    # the labels, thread guard, overlap check and checkpoint refusal of the other optimizers
    # (they use only _name, _names, param_groups and _busy)
    _check_overlap: Any = GroupsMixin._check_overlap
    _label: Any = GroupsMixin._label
    _where: Any = GroupsMixin._where
    _exclusive: Any = GroupsMixin._exclusive
    _busy_error: Any = GroupsMixin._busy_error
    _refuse_or_warn: Any = CheckpointMixin._refuse_or_warn
    _base_check_param: Any = GroupsMixin._check_param

    @property
    def _name(self) -> str:
        return f"fastlr.{type(self).__name__}"

    # ------------------------------------------------------------------------------------
    # params and hyperparameters
    # ------------------------------------------------------------------------------------
    def _check_param(self, label, p):
        self._base_check_param(label, p)
        if p.ndim != 2:
            raise ValueError(f"{self._name}: {label} has shape {p.shape}; Muon only "
                             f"supports 2-D params (as torch.optim.Muon): optimize the others "
                             f"(biases, embeddings) with another optimizer such as "
                             f"fastlr.AdamW")

    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter, before it is stored (a schedule is checked
        when evaluated)."""
        fn = self._name
        label = f"{where}[{key!r}]" if where else key
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key in _SCHEDULABLE:
            if not isinstance(value, numbers.Real) and \
                    (isinstance(value, Schedule) or callable(value)):
                return value
            return checked_real(fn, label, value, NONNEG)
        if key == "nesterov":
            return bool(flag_arg(fn, label, value))
        if key == "ns_coefficients":
            coefs = _kernel.check_coefficients(fn, label, value)
            return value if isinstance(value, tuple) and coefs == value else coefs
        if key == "eps":
            return checked_real(fn, label, value, NONNEG)
        if key == "ns_steps":
            return int(int_arg(fn, label, value, 0, 99))
        if key == "adjust_lr_fn":
            if value is not None:
                choice_arg(fn, label, value, _kernel.ADJUST_LR_FNS)
            return value
        raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                         f"{', '.join(sorted(_HYPERS))}")

    def _validate_group(self, group):
        """(ParamGroup's hook.) Muon has no relation between hyperparameters to check."""

    def _add_group(self, group):
        name = self._name
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a param group must be a dict with a 'params' entry")
        g = len(self.param_groups)
        arrays, names = split_named(name, group["params"], f"param_groups[{g}]['params']")
        if "param_names" in group:
            given = group["param_names"]
            if names is not None or isinstance(given, (str, bytes)) or \
                    not isinstance(given, (list, tuple)) or len(given) != len(arrays):
                raise ValueError(f"{name}: param_groups[{g}]['param_names'] must be a list "
                                 f"of {len(arrays)} names beside a list of arrays, got "
                                 f"{given!r:.100}")
            arrays, names = split_named(name, list(zip(given, arrays)),
                                        f"param_groups[{g}]['param_names']")
        if self.param_groups and (names is None) != (self._names is None):
            raise ValueError(f"{name}: param_groups[{g}] has "
                             f"{'no names' if names is None else 'named params'} but the "
                             f"optimizer's params are {'un' if names is not None else ''}named"
                             f"; name all params or none")
        if names is not None:
            taken = [k for k in names if k in self._name_index]
            if taken:
                raise ValueError(f"{name}: param_groups[{g}] names {taken[0]!r} twice; "
                                 f"names must be unique")
        start = len(self._params)
        all_names = None if names is None else (self._names or []) + names
        for j, p in enumerate(arrays):
            self._check_param(self._label(start + j, all_names, g, j), p)
        checked = {key: self._check_hyper(key, value, f"param_groups[{g}]")
                   for key, value in group.items() if key not in _FIXED_KEYS}
        self._check_overlap(self._params + arrays, all_names)
        full = ParamGroup()
        for key in _HYPERS:
            dict.__setitem__(full, key, checked.get(key, self.defaults[key]))
        full._set_params(name, g, arrays, names)
        if names is not None:
            self._names = all_names
            self._name_index.update((k, start + j) for j, k in enumerate(names))
            self._getter = operator.itemgetter(*all_names)
        full._owner = self          # type: ignore[attr-defined]  # (a slot)
        self.param_groups.append(full)
        self._params.extend(arrays)
        self._buffers.extend(None for _ in arrays)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group of 2-D params (torch's ``add_param_group``).

        Parameters
        ----------
        param_group : dict
            ``{"params": arrays or named arrays, hyperparameter: value, ...}``; missing
            hyperparameters come from the constructor's.

        Raises
        ------
        TypeError
            If the group, a param or a hyperparameter has the wrong type.
        ValueError
            If a param is not 2-D or overlaps one already present, or a hyperparameter is
            out of range.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> opt = fastlr.Muon([np.ones((2, 2))], lr=0.02)
        >>> opt.add_param_group({"params": [np.ones((3, 2))], "lr": 0.01})
        >>> [g["lr"] for g in opt.param_groups]
        [0.02, 0.01]
        """
        with self._exclusive("add_param_group"):
            self._add_group(param_group)

    @property
    def steps(self) -> int:
        """Steps taken so far (the step count ``t`` that drives the schedules)."""
        return self._t

    @property
    def state(self) -> Dict[int, Dict[str, np.ndarray]]:
        """Per-param state by param index: ``{"momentum_buffer": buffer}`` (a live view),
        for the params updated at least once."""
        return {i: {"momentum_buffer": b} for i, b in enumerate(self._buffers)
                if b is not None}

    # ------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------
    def _values(self, fn):
        """Each group's hyperparameters at this step: schedules evaluated and checked."""
        t = self._t
        rows = []
        for g, group in enumerate(self.param_groups):
            row = {}
            for key in _SCHEDULABLE:
                value = group[key]
                if isinstance(value, numbers.Real):
                    row[key] = float(value)
                    continue
                got = value(t)
                row[key] = checked_real(fn, f"param_groups[{g}][{key!r}] (the schedule "
                                            f"{value!r} at step {t})", got, NONNEG)
            rows.append(row)
        return rows

    def _grads(self, grads, fn):
        """The grads as a list in param order (None: no update), all checked."""
        n = len(self._params)
        if isinstance(grads, dict):
            grads = list(by_name(fn, self._names, grads, "grads",
                                 "step takes one grad per param", self._getter))
            labels = [f"grads[{k!r}]" for k in self._names or ()]
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
        spans = []
        for i, (g, p) in enumerate(zip(grads, self._params)):
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"{fn}: {labels[i]} must be a numpy.ndarray or None, got "
                                f"{type(g).__name__}")
            if g.dtype != p.dtype:
                raise TypeError(f"{fn}: {labels[i]} has dtype {g.dtype} but "
                                f"{self._label(i)} has dtype {p.dtype}; they must be equal")
            if g.shape != p.shape:
                raise ValueError(f"{fn}: {labels[i]} has shape {g.shape} but "
                                 f"{self._label(i)} has shape {p.shape}; they must be equal")
            if not (g.flags.c_contiguous if p.flags.c_contiguous else g.flags.f_contiguous):
                order = "C" if p.flags.c_contiguous else "F"
                raise ValueError(f"{fn}: {labels[i]} must be {order}-contiguous like "
                                 f"{self._label(i)}; pass np.asarray(grad, order={order!r})")
            if not g.flags.aligned:
                raise ValueError(f"{fn}: {labels[i]} is not aligned in memory")
            if g.size:
                start = g.__array_interface__["data"][0]
                spans.append((start, start + g.nbytes, i))
        self._check_grad_overlap(fn, spans, labels)
        return grads

    def _check_grad_overlap(self, fn, grad_spans, labels):
        """No grad may overlap a param or a momentum buffer (the step writes them)."""
        written = []
        for i, p in enumerate(self._params):
            for a in (p, self._buffers[i]):
                if a is not None and a.size:
                    start = a.__array_interface__["data"][0]
                    written.append((start, start + a.nbytes, i))
        written.sort()
        starts = [w[0] for w in written]
        reach = list(itertools.accumulate((w[1] for w in written), max))
        for start, end, i in grad_spans:
            k = bisect.bisect_left(starts, end)     # the written spans starting before end
            if k and reach[k - 1] > start:
                j = next(w[2] for w in written[:k] if w[1] > start)
                raise ValueError(f"{fn}: {labels[i]} overlaps {self._label(j)} or its "
                                 f"momentum buffer in memory, which the step writes")

    def step(self, grads: Grads) -> None:
        """Apply one Muon update to every param that has a grad.

        Everything is checked before anything is written: the grads (type, dtype, shape,
        layout, overlap with what the step writes) and the scheduled hyperparameters.

        Parameters
        ----------
        grads : list of numpy.ndarray or None, numpy.ndarray, or dict of str -> numpy.ndarray
            One grad per param, in param order (a dict of name -> grad for named params),
            each of its param's dtype, shape and layout; None skips the param (torch's
            ``p.grad is None``). One array (not a list) is the one param's grad when there
            is one param and it has its shape (checked as the list ``[grads]`` is), else a
            1-D flat grad buffer of the params' dtype and total size
            (:func:`fastlr.flat_buffer`), split in param order.

        Returns
        -------
        None

        Raises
        ------
        TypeError
            If a grad has the wrong type or dtype.
        ValueError
            If the number, shapes, layouts or names of the grads do not match (one array:
            neither the one param's shape nor a 1-D flat grad buffer of their size), a grad
            overlaps a param or a buffer, or a schedule gives an invalid value.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> w = np.ones((2, 2))
        >>> opt = fastlr.Muon([w], lr=0.1, weight_decay=0.0, momentum=0.0)
        >>> opt.step([np.eye(2)])
        >>> w
        array([[0.8875, 1.    ],
               [1.    , 0.8875]])
        """
        with self._exclusive("step"):
            self._step(grads, "step", _kernel.run)

    def step_reference(self, grads: Grads) -> None:
        """The same update as :meth:`step`, computed by :mod:`fastlr.reference.muon` in
        NumPy (slow; the oracle the tests hold :meth:`step` to).

        Parameters
        ----------
        grads : list of numpy.ndarray or None, numpy.ndarray, or dict of str -> numpy.ndarray
            As for :meth:`step`.

        Returns
        -------
        None

        Raises
        ------
        TypeError, ValueError, RuntimeError
            As for :meth:`step`.

        Examples
        --------
        >>> w = np.ones((2, 2))
        >>> fastlr.Muon([w], lr=0.1, momentum=0.0).step_reference([np.eye(2)])
        """
        from fastlr.reference.muon import muon as twin

        def run(p, g, b, lr, weight_decay, momentum, nesterov, coefs, eps, ns_steps,
                adjust_lr_fn):
            twin(p, g, b, lr=lr, weight_decay=weight_decay, momentum=momentum,
                 nesterov=nesterov, ns_coefficients=coefs, eps=eps, ns_steps=ns_steps,
                 adjust_lr_fn=adjust_lr_fn)

        with self._exclusive("step_reference"):
            self._step(grads, "step_reference", run)

    def _step(self, grads, what, run):
        fn = f"{self._name}.{what}"
        grads = self._grads(grads, fn)
        values = self._values(fn)
        # everything checked: create the buffers the step needs, then update
        i = 0
        for g, group in enumerate(self.param_groups):
            v = values[g]
            coefs = tuple(float(c) for c in group["ns_coefficients"])
            for p in group["params"]:
                grad = grads[i]
                if grad is not None:
                    buf = self._buffers[i]
                    if buf is None:
                        buf = self._buffers[i] = np.zeros_like(p)
                    run(p, grad, buf, v["lr"], v["weight_decay"], v["momentum"],
                        bool(group["nesterov"]), coefs, float(group["eps"]),
                        int(group["ns_steps"]), group["adjust_lr_fn"])
                i += 1
        self._t += 1

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The optimizer's state as a plain dict, arrays copied.

        A scheduled hyperparameter is recorded as ``{"schedule": repr}``.

        Returns
        -------
        dict
            ``{"format", "steps", "state": {i: {"momentum_buffer": array}},
            "param_groups": [hyperparameters, "params": indices, "param_names": names],
            "snapshot_of"}`` (``param_names`` when named; loading its own state dict back
            is a rollback: the hyperparameters too).

        Examples
        --------
        >>> opt = fastlr.Muon([np.ones((2, 2))])
        >>> opt.step([np.eye(2)])
        >>> sd = opt.state_dict()
        >>> sd["steps"], sorted(sd["state"][0])
        (1, ['momentum_buffer'])
        """
        with self._exclusive("state_dict"):
            groups, index = [], 0
            for group in self.param_groups:
                g: Dict[str, Any] = {k: _plain(group[k]) for k in _HYPERS}
                g["ns_coefficients"] = [float(c) for c in group["ns_coefficients"]]
                g["params"] = list(range(index, index + len(group["params"])))
                index += len(group["params"])
                if "param_names" in group:
                    g["param_names"] = list(group["param_names"])
                groups.append(g)
            state = {i: {"momentum_buffer": b.copy()} for i, b in enumerate(self._buffers)
                     if b is not None}
            return {"format": _FORMAT, "steps": self._t, "state": state,
                    "param_groups": groups, "snapshot_of": self._snapshot_id}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a state dict: the step count and the momentum buffers, never a
        hyperparameter.

        Everything is validated first; on any error nothing changes. Every hyperparameter
        the state dict records must equal the optimizer's (a difference raises
        ``ValueError`` naming it; ``strict=False``: a warning, the optimizer's values kept),
        except when it is this optimizer's own :meth:`state_dict` (a rollback restores them
        too). Named params must carry the same names in order.

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
        >>> w = np.ones((2, 2))
        >>> opt = fastlr.Muon([w])
        >>> sd = opt.state_dict()
        >>> opt.step([np.eye(2)])
        >>> opt.load_state_dict(sd)
        >>> opt.steps, opt.state
        (0, {})
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
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups) \
                or not all(isinstance(g, dict) for g in groups):
            raise ValueError(f"{name}: param_groups must be a list of "
                             f"{len(self.param_groups)} group dicts (one per group)")
        renamed, differ, new_hypers = [], [], []
        index = 0
        for g, (saved, group) in enumerate(zip(groups, self.param_groups)):
            n = len(group["params"])
            expected = list(range(index, index + n))
            held = saved.get("params", [])
            if not isinstance(held, (list, tuple, np.ndarray)) or list(held) != expected:
                raise ValueError(f"{name}: param_groups[{g}] holds params {held!r:.100}, "
                                 f"expected {expected}")
            saved_names = saved.get("param_names")
            if saved_names is not None:
                if not isinstance(saved_names, (list, tuple)) or len(saved_names) != n or \
                        not all(isinstance(k, str) for k in saved_names):
                    raise ValueError(f"{name}: param_groups[{g}]['param_names'] must be a "
                                     f"list of {n} strings, got {saved_names!r:.200}")
                mine = group.get("param_names")
                if mine is not None and list(saved_names) != list(mine):
                    renamed.append(_names_diff(g, list(mine), list(saved_names)))
            hypers = {}
            for key, value in saved.items():
                if key in _FIXED_KEYS:
                    continue
                if key not in _HYPERS:
                    raise ValueError(f"{name}: param_groups[{g}] has an unknown "
                                     f"hyperparameter {key!r}")
                if not _same_hyper(group[key], value):
                    differ.append((g, key, group[key], value))
                    if not isinstance(value, dict):
                        hypers[key] = self._check_hyper(key, value, f"param_groups[{g}]")
            new_hypers.append(hypers)
            index += n
        steps = int(_nonneg_int(name, "steps", sd.get("steps", 0)))
        buffers = self._checked_state(name, sd["state"])
        rollback = sd.get("snapshot_of") == self._snapshot_id
        if renamed:
            self._refuse_or_warn(name, strict, "names its params otherwise", renamed,
                                 "build the optimizer over the checkpoint's names, in its "
                                 "order", "loaded by position")
        if differ and not rollback:
            self._refuse_or_warn(name, strict, "recorded other hyperparameters",
                                 [_hyper_diff(*d) for d in differ],
                                 "a checkpoint restores the step count and the buffers, "
                                 "never the hyperparameters: build the optimizer with the "
                                 "checkpoint's values", "kept this optimizer's values")
        # everything checked: apply
        if rollback:
            for group, hypers in zip(self.param_groups, new_hypers):
                for key, value in hypers.items():
                    dict.__setitem__(group, key, value)
        self._buffers = buffers
        self._t = steps

    def _checked_state(self, name, st):
        """The state's buffers, checked against the params and copied into their dtype and
        layout."""
        if not isinstance(st, dict):
            raise TypeError(f"{name}: 'state' must be a dict, got {type(st).__name__}")
        n = len(self._params)
        out: List[Optional[np.ndarray]] = [None] * n
        for key, entry in st.items():
            i = int(key) if isinstance(key, (int, np.integer)) or \
                (isinstance(key, str) and key.isdigit()) else -1
            if not 0 <= i < n:
                raise ValueError(f"{name}: 'state' has an entry for param {key!r}; expected "
                                 f"indices 0 to {n - 1}")
            if not isinstance(entry, dict) or set(entry) - {"momentum_buffer"}:
                raise ValueError(f"{name}: state[{i}] must be {{'momentum_buffer': array}}, "
                                 f"got {entry!r:.100}")
            buf = entry.get("momentum_buffer")
            if buf is None:
                continue
            p = self._params[i]
            if not isinstance(buf, np.ndarray) or buf.dtype.kind != "f" or \
                    buf.shape != p.shape:
                raise ValueError(f"{name}: state[{i}]['momentum_buffer'] must be a float "
                                 f"array of shape {p.shape} like {self._label(i)}, got "
                                 f"{getattr(buf, 'dtype', type(buf).__name__)} "
                                 f"{getattr(buf, 'shape', '')}")
            copy = np.empty_like(p)
            copy[...] = buf
            out[i] = copy
        return out

    def __repr__(self) -> str:
        """torch's layout: the class, then per group its params (count, names) and its
        hyperparameters, sorted."""
        lines = ["Muon ("]
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            shown = f"{n} array{'' if n == 1 else 's'}"
            if group.get("param_names"):
                shown += f" ({_some(group['param_names'], 8)})"
            lines += [f"Parameter Group {g}", f"    params: {shown}"]
            lines += [f"    {key}: {group[key]!r}" for key in sorted(_HYPERS)]
        lines.append(")")
        return "\n".join(lines)
