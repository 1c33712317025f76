"""The optimizer classes: SGD, RMSprop, Adam, AdamW, Adagrad, Adadelta, Adamax, NAdam, RAdam
(torch.optim) and Lion (optax), each built from its row of the table (``fastlr._specs``).

A row gives the class everything that used to be written per class: the constructor's
signature and defaults, the kernel family, which hyperparameters take a schedule, the flags
and range checks, the state buffers (in the kernel's argument order), when each exists and
what it starts at, the per-param scalar state, the keyword arguments of the NumPy twin and
the docstring. What is left here per class is what is genuinely that optimizer's semantics:
SGD's rule that Nesterov needs momentum and no dampening, SGD's momentum buffer, which torch
creates at the first update that uses it, and SGD's and RMSprop's momentum buffers, which
torch keeps while momentum is 0.
"""

from __future__ import annotations

import numbers
import operator
import re
import textwrap
from itertools import repeat
from typing import Any, Dict, List, Tuple, Type

import numpy as np

from fastlr import _specs, reference
from fastlr._core.args import RULES
from fastlr.optim.base import Optimizer


_COMMON = (("n_threads", None), ("max_grad_norm", None), ("skip_nonfinite", False),
           ("state_dtype", "float32"), ("master_weights", None))


def _pair(betas: Any) -> Any:
    return tuple(betas) if isinstance(betas, (list, tuple)) else betas


def _range(check):
    """A ``CHECKS`` rule as the rule code ``Optimizer._check_hyper`` hands to
    fastlr._core.args.checked_real."""
    return RULES[check]


class _TableOptimizer(Optimizer):
    """An optimizer class described by a row of the table (``_row``, ``_family``)."""

    _row = None
    _family = None

    def _state_names(self, group):
        values = {}
        for name in _specs.state_options(self._family.name):
            v = group[name]
            scheduled = not isinstance(v, (numbers.Real, np.bool_))
            values[name] = _specs.UNKNOWN if scheduled else v
        return _specs.state_names(self._family.name, values)

    def _state_fill(self, group):
        return {s.name: float(group[s.fill]) for s in self._family.state if s.fill}

    def _refill_unstarted(self, written):
        """A buffer filled from a hyperparameter (Rprop's step_size from lr) starts at the
        group's value at the param's first update, as torch creates it then: on a write to
        group ``written``, its params not yet updated are refilled."""
        index = 0
        for group in self.param_groups:
            for _ in group["params"]:
                if group is written and self._counts[index] == 0:
                    for name, option in self._hyper_fills:
                        buf = self._state[index].get(name)
                        if buf is not None:
                            buf[...] = float(group[option])
                index += 1

    def _reference_kwargs(self, group, v, i):
        kwargs = {}
        if self._family.uses_step:
            kwargs["step"] = int(self._counts[i]) + 1
        if self._scalar:
            kwargs[self._scalar] = float(self._mu_product[i])
        keywords = self._family.kernel_keywords
        for h in self._family.hypers:
            if keywords and h.name not in keywords:
                continue                    # Rprop's lr: it only fills step_size
            if h.schedulable:
                kwargs[h.name] = v[h.name]
            elif h.pair:
                kwargs[h.name] = group[h.pair][_pair_index(self._family, h)]
            else:
                kwargs[h.name] = group[h.name]
        kwargs.update(self._state[i])
        return kwargs


def _pair_index(family, hyper):
    return [h.name for h in family.hypers if h.pair == hyper.pair].index(hyper.name)


def _signature(row, family):
    """[(name, default)] of the constructor after ``params``: the hyperparameters (a pair
    as one argument, e.g. ``betas``) in the family's order, the class's options before the
    first flag; fixed hyperparameters are not arguments."""
    out, seen = [], set()
    for h in family.hypers:
        if h.name in row.fixed:
            continue
        name = h.pair or h.name
        if name in seen:
            continue
        seen.add(name)
        if h.pair:
            default = row.defaults.get(name, tuple(x.default for x in family.hypers
                                                   if x.pair == h.pair))
        else:
            default = row.defaults.get(name, h.default)
        out.append((name, default, h.check == "flag"))
    first_flag = next((k for k, (_, _, flag) in enumerate(out) if flag), len(out))
    options = [(name, default, isinstance(default, bool)) for name, default in row.options]
    out[first_flag:first_flag] = options
    return [(name, default) for name, default, _ in out]


def _formula(kernel):
    """The first literal block (after ``::``) of the NumPy twin's docstring."""
    doc = getattr(reference, kernel).__doc__ or ""
    m = re.search(r"::\n\n((?:(?: {8}.*)?\n)+)", doc)
    if not m:
        return ""
    return "\n".join(line[4:] for line in m.group(1).rstrip().splitlines())


def _doc(row, family, signature):
    lines = [f"{row.doc} ({row.follows}).", ""]
    formula = _formula(row.kernel)
    if formula:
        lines += [f"The update of each param (``fastlr.reference.{row.kernel}``)::", "",
                  formula, ""]
    hypers = {}
    for h in family.hypers:
        hypers.setdefault(h.pair or h.name, h)
    for name, value in row.fixed.items():
        lines += [f"``{name}`` is fixed to ``{value!r}``.", ""]
    lines += ["Parameters", "----------",
              "params : array, list of arrays, dict of name -> array, list of (name, array) "
              "pairs, or list of group dicts",
              *textwrap.wrap("Updated in place. Named params (a dict, or torch's "
                             "``named_parameters()`` pairs, also as a group's "
                             "``\"params\"``; groups picked by name with "
                             ":func:`fastlr.optim.named_groups`) let ``step`` take the grads "
                             "as a dict of name -> grad in any order, and checkpoints record "
                             "and check the names.", 88, initial_indent="    ",
                             subsequent_indent="    ")]
    for name, default in signature:
        h = hypers.get(name)
        text = h.doc if h is not None else "class option"
        if h is not None and h.pair:
            text = " and ".join(x.doc for x in family.hypers if x.pair == h.pair)
        sched = ""
        if h is not None and h.pair:
            slots = [k for k, x in enumerate(x for x in family.hypers if x.pair == h.pair)
                     if x.schedulable]
            sched = (" (either may be a schedule)" if len(slots) == 2 else
                     f" ({name}[{slots[0]}] may be a schedule)" if slots else "")
        elif h is not None and h.schedulable:
            sched = " (a number or a schedule)"
        lines += [f"{name} : default {default!r}{sched}", f"    {text}"]
    lines += ["n_threads, max_grad_norm, skip_nonfinite, state_dtype, master_weights",
              "    See :class:`fastlr.Optimizer`.",
              "", "Raises", "------", "TypeError",
              "    If a param is not a float32/float64 contiguous writeable array, or a",
              "    hyperparameter or option has the wrong type.", "ValueError",
              "    If a hyperparameter or option is out of range, or params overlap in memory."]
    if row.cls == "SGD":
        lines[-1:] = [lines[-1][:-1] + ",", "    or ``nesterov=True`` without momentum or "
                      "with dampening."]
    lines += ["", "Notes", "-----", *textwrap.wrap("Checkpoints (``state_dict``/``load_state_dict``, "
                                 "``save``/``load``) restore the step count and the state, "
                                 "never the hyperparameters: the optimizer keeps its own "
                                 "values and schedules, and one that differs from what the "
                                 "checkpoint recorded raises ``ValueError`` "
                                 "(``strict=False``: a warning). ``repr(opt)`` lists each "
                                 "group's hyperparameters.", 88)]
    for name, init in family.scalar_state:
        lines += ["", *textwrap.wrap(
            f"Each param's ``{name}`` (starting at {init!r}) is part of its state, as in "
            f"torch: ``opt.state[i][{name!r}]`` and the state dict.{family.scalar_doc}", 88)]
    first, default = signature[0]
    arg = "" if default is not None else f", {first}=0.1"
    lines += ["", "Examples", "--------",
              ">>> w = np.ones(2, dtype=np.float32)",
              f">>> opt = fastlr.{row.cls}([w]{arg})",
              ">>> opt.step([np.full(2, 0.5, dtype=np.float32)])",
              ">>> opt.steps, bool((w < 1).all())", "(1, True)"]
    return "\n".join(lines) + "\n"


def _init_source(signature, row, family):
    """The source of the class's ``__init__`` (a real function, so that inspect, help()
    and wrong arguments behave as for a hand-written one)."""
    args = ["self", "params"]
    first = signature[0]
    args.append(first[0] if first[1] is None else f"{first[0]}=_d[{first[0]!r}]")
    args.append("*")
    args += [f"{name}=_d[{name!r}]" for name, _ in signature[1:]]
    args += [f"{name}={default!r}" for name, default in _COMMON]
    pairs = {h.pair for h in family.hypers if h.pair}
    entries = [f"{name}=_pair({name})" if name in pairs else f"{name}={name}"
               for name, _ in signature]
    entries += [f"{name}=_fixed[{name!r}]" for name in row.fixed]
    return (f"def __init__({', '.join(args)}):\n"
            f"    _Optimizer.__init__(self, params, dict({', '.join(entries)}),\n"
            f"                        n_threads, max_grad_norm, skip_nonfinite, state_dtype,\n"
            f"                        master_weights)\n")


def _make_class(row, bases, namespace=None):
    family = _specs.family(row.family)
    signature = _signature(row, family)
    flags = tuple(h.name for h in family.hypers if h.check == "flag") + \
        tuple(name for name, default in row.options if isinstance(default, bool))
    ranges = {h.name: _range(h.check) for h in family.hypers if h.check != "flag"}
    ranges.update({name: _range("nonneg") for name, default in row.options
                   if not isinstance(default, bool)})
    if any(h.pair for h in family.hypers):
        ranges.update({h.pair: None for h in family.hypers if h.pair})
    attrs = dict(
        __module__=__name__,
        __doc__=_doc(row, family, signature),
        _row=row, _family=family,
        _kernel=family.name,
        _schedulable=tuple(h.name for h in family.hypers if h.schedulable),
        _pairs={h.pair: tuple(x.name for x in family.hypers if x.pair == h.pair)
                for h in family.hypers if h.pair},
        _flags=flags,
        _ranges=ranges,
        _slots=tuple(s.name for s in family.state),
        _optional_state=tuple(s.name for s in family.state if s.lazy),
        _hyper_fills=tuple((s.name, s.fill) for s in family.state
                           if s.fill in {h.name for h in family.hypers}),
        _scalar=family.scalar_state[0][0] if family.scalar_state else None,
        _scalar_init=float(family.scalar_state[0][1]) if family.scalar_state else 1.0,
        _scalar_check=family.scalar_check,
    )
    attrs.update(namespace or {})
    cls = type(row.cls, bases, attrs)
    scope = {"_d": dict(signature), "_pair": _pair, "_fixed": dict(row.fixed),
             "_Optimizer": Optimizer}
    exec(compile(_init_source(signature, row, family), f"<fastlr.{row.cls}.__init__>",
                 "exec"), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{row.cls}.__init__"
    init.__module__ = __name__
    cls.__init__ = init
    return cls


#: {id(optimizer): {id(group): index of its first param}} while the optimizer's
#: _configure runs (_KeptMomentumBuffer)
_GROUP_FIRSTS: Dict[int, Dict[int, int]] = {}


class _KeptMomentumBuffer:
    """torch's momentum buffer (SGD, RMSprop) once it exists: kept while momentum is 0 (such
    a step neither reads nor writes it), gone on from once momentum is nonzero again, and
    carried by checkpoints taken at momentum 0. A class says which params keep one
    (``_kept``) and what its load settles afterwards (``_loaded``)."""

    def _kept(self, first, n):
        """Whether params ``first .. first + n - 1`` (a group at momentum 0) keep their
        momentum buffer."""
        raise NotImplementedError

    def _loaded(self, saved):
        """After a load of per-param checkpoint state ``saved``."""

    def _configure(self):
        # each group's first param index, found once: _state_names asks per group
        firsts, first = {}, 0
        for g in self.param_groups:
            firsts[id(g)] = first
            first += len(g["params"])
        _GROUP_FIRSTS[id(self)] = firsts
        try:
            super()._configure()
        finally:
            _GROUP_FIRSTS.pop(id(self), None)

    def _first_index(self, group):
        """The index of ``group``'s first param among all the optimizer's params."""
        firsts = _GROUP_FIRSTS.get(id(self))
        if firsts is not None and id(group) in firsts:
            return firsts[id(group)]
        first = 0
        for g in self.param_groups:
            if g is group:
                break
            first += len(g["params"])
        return first

    def _state_names(self, group):
        # a group whose params keep a buffer keeps it, whatever its momentum now (the engine
        # and the twin pass it only while momentum != 0); in the slots' order, so that a
        # write of 0 leaves the layout as it is
        names = super()._state_names(group)
        if "momentum_buffer" in names:
            return names
        if self._kept(self._first_index(group), len(group["params"])):
            names = tuple(n for n in self._slots if n in names or n == "momentum_buffer")
        return names

    def _load_state_dict(self, state_dict, strict, what):
        # torch's load replaces the state: a checkpoint taken while momentum was 0 may hold
        # buffers (torch's does) that this optimizer, at momentum 0 and without one of its
        # own, has no room for, and one that holds none drops the stale buffer this
        # optimizer keeps. Room is made (zeros of the layout's dtype) and stale buffers the
        # load would ask for are taken out while loading; the loaded layout keeps what was
        # loaded, a failed load puts everything back
        state = state_dict.get("state") if isinstance(state_dict, dict) else None
        saved = [state.get(i, state.get(str(i))) if isinstance(state, dict) else None
                 for i in range(len(self._params))]
        used = []
        for group in self.param_groups:
            used += ["momentum_buffer" in super()._state_names(group)] * len(group["params"])
        before = {}
        for i, (p, st) in enumerate(zip(self._params, saved)):
            if not isinstance(st, dict):
                continue
            mine = self._state[i]
            if "momentum_buffer" in st and "momentum_buffer" not in mine:
                before[i] = dict(mine)
                mine["momentum_buffer"] = np.zeros(p.shape, self._buffer_dtype(p))
            elif "momentum_buffer" in mine and "momentum_buffer" not in st and \
                    not used[i] and "momentum_buffer" not in self._optional_state:
                before[i] = dict(mine)
                del mine["momentum_buffer"]
        if before:
            # buffers added or taken out: the next configure lays the spans out afresh (a
            # group's state names may stay as they were while one param's buffer changed,
            # and the spans would keep the stale buffer it no longer shows)
            self._layout = None
        try:
            super()._load_state_dict(state_dict, strict, what)
        except BaseException:
            for i, st in before.items():
                self._state[i].clear()
                self._state[i].update(st)
            raise
        self._loaded(saved)


class _SGDSemantics(_KeptMomentumBuffer):
    """SGD's own rules (torch.optim.SGD): Nesterov needs momentum > 0 and no dampening;
    the momentum buffer starts lazily, at the first update that applies momentum, and stays
    (untouched while momentum is 0, in checkpoints too) once it has started."""

    def _validate_group(self, group):
        # a scheduled momentum or dampening: the engine checks its value each step
        m, d = group["momentum"], group["dampening"]
        if group["nesterov"] and ((isinstance(d, numbers.Real) and d != 0) or
                                  (isinstance(m, numbers.Real) and m <= 0)):
            raise ValueError(f"{self._name}: nesterov=True requires momentum > 0 and "
                             f"dampening == 0, got momentum={m!r}, "
                             f"dampening={group['dampening']!r}")

    def _kept(self, first, n):
        # the params that have started one (a param not started has it hidden and starts it
        # from the grad, as torch's "buffer is None")
        return bool(self._started[first:first + n].any())

    def _loaded(self, saved):
        # the load counts a param it had no buffer for as started: one the checkpoint holds
        # no buffer for has not (its group would keep a buffer for it, shown in ``state``)
        unstarted = [i for i, st in enumerate(saved)
                     if self._started[i] and "momentum_buffer" not in st]
        if unstarted:
            self._started[unstarted] = 0
            self._dirty = True
            self._configure()

    def _reference_kwargs(self, group, v, i):
        buf = self._state[i].get("momentum_buffer")
        use = buf is not None and v["momentum"] != 0
        kwargs = dict(step=2 if self._started[i] else 1, lr=v["lr"],
                      momentum=v["momentum"] if use else 0.0, dampening=v["dampening"],
                      nesterov=group["nesterov"] and use, weight_decay=v["weight_decay"],
                      maximize=group["maximize"], momentum_buffer=buf if use else None)
        if use:
            self._started[i] = 1
        return kwargs


class _RMSpropSemantics(_KeptMomentumBuffer):
    """RMSprop's own rule: the momentum buffer (created, as torch's, by an update with
    momentum > 0 at the param's first) stays, untouched, while momentum is 0, and a step at
    momentum 0 leaves it alone (the kernels take no buffer then)."""

    def _kept(self, first, n):
        # params that hold one, in a group that has been updated: torch made it at their
        # first update (a buffer written away before that is gone, as torch makes none
        # then). At C speed: a group at momentum 0 (the default) runs this at each write
        # (the dicts first: at momentum 0 from the start none holds one)
        return any(map(operator.contains, self._state[first:first + n],
                       repeat("momentum_buffer"))) and bool(self._counts[first:first + n].any())

    def _reference_kwargs(self, group, v, i):
        kwargs = super()._reference_kwargs(group, v, i)
        if not v["momentum"]:
            kwargs["momentum_buffer"] = None
        return kwargs


#: Per-optimizer semantics that the table does not describe: mixins, by class name.
_SEMANTICS = {"SGD": _SGDSemantics, "RMSprop": _RMSpropSemantics}


def _build():
    classes = {}
    by_family = {}
    for row in _specs.OPTIMIZERS.values():
        parent = by_family.get(row.family)
        if parent is not None:
            bases = (parent,)           # AdamW is an Adam (fixed decoupled weight decay)
        else:
            extra = _SEMANTICS.get(row.cls)
            bases = ((extra,) if extra else ()) + (_TableOptimizer,)
        cls = _make_class(row, bases)
        classes[row.cls] = cls
        by_family.setdefault(row.family, cls)
    return classes


#: Every optimizer class, by name, in table order.
CLASSES: Dict[str, Type[Optimizer]] = _build()


def class_for(name: str) -> Type[Optimizer]:
    """The optimizer class named ``name`` (a row of the table).

    Parameters
    ----------
    name : str
        The class name, a row of the table (``fastlr._specs``).

    Returns
    -------
    type
        The optimizer class, a subclass of :class:`fastlr.Optimizer`.

    Raises
    ------
    ValueError
        If ``name`` names no row of the table.

    Examples
    --------
    >>> from fastlr.optim.families import class_for
    >>> class_for("Adam") is fastlr.Adam
    True
    """
    return CLASSES[_specs.optimizer(name).cls]


# SGD, RMSprop, Adam, AdamW, Adagrad, Adadelta, Adamax, NAdam, RAdam, Lion: module attributes
globals().update(CLASSES)

__all__ = [*CLASSES, "CLASSES", "class_for"]
