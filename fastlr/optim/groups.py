"""Param groups and hyperparameters: the optimizer's construction, its groups (dicts like
torch's whose writes are checked), the type and range checks of every hyperparameter, and
the one-thread-at-a-time guard."""

from __future__ import annotations

import contextlib
import numbers
import operator
from typing import (TYPE_CHECKING, Any, Callable, ContextManager, Dict, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import numpy as np

from fastlr._core.args import (INT_MAX, POSITIVE, checked_real, flag_arg, int_arg,
                               layout_hint, ndarray_hint)
from fastlr.optim.master import MasterWeightsMixin, is_16bit
from fastlr.schedules import Schedule


class ParamList(list):
    """A param group's ``params`` (or ``param_names``): a list that cannot be changed.

    It reads like the list torch keeps (indexing, slicing, iteration, ``len``, equality
    with a list, ``isinstance(..., list)``), but the optimizer's arrays are fixed when the
    group is added, so an edit in place raises ``TypeError`` instead of being ignored: add
    params with ``add_param_group``, or build a new optimizer over other arrays. A copy
    (``list(...)``, a slice, ``copy.copy``, pickling) is a plain list.
    """

    __slots__ = ("_where",)

    def __init__(self, items: Any = (), where: str = "a param group's 'params'") -> None:
        list.__init__(self, items)
        self._where = where

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        where = getattr(self, "_where", "a param group's 'params'")
        what = "names the params" if where.endswith("['param_names']") else \
            "lists the arrays"
        raise TypeError(f"{where} cannot be changed in place: it {what} the optimizer "
                        f"steps, fixed when the group was added; add params with "
                        f"add_param_group, or build a new optimizer over other arrays")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self):
        return (list, (list(self),))

    def __copy__(self) -> List[Any]:
        return list(self)


class ParamGroup(dict):
    """A param group: a dict like torch's whose writes are checked.

    Writing a hyperparameter takes effect at the next step (writing ``lr`` also resets the
    group's ReduceLROnPlateau factor: the next step uses the lr as written). ``update`` and
    ``|=`` write all their entries or none. The ``params`` entry (and ``param_names``)
    cannot be replaced or edited (use ``add_param_group``), and no entry can be removed.
    Built by the optimizer, not by the caller.

    Raises
    ------
    TypeError
        On writing, editing or removing ``params`` or ``param_names``, removing a
        hyperparameter, or writing one of the wrong type.
    ValueError
        On writing a hyperparameter out of its range, or an unknown one (the group is left
        as it was).
    """

    __slots__ = ("_owner",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        dict.__init__(self)
        if args or kwargs:
            self.update(*args, **kwargs)

    def _set_params(self, fn: str, g: int, params: Sequence[Any],
                    names: Optional[Sequence[str]] = None) -> None:
        """(The optimizer's construction.) Store ``params`` (and ``param_names`` when
        named) as read-only lists: :class:`ParamList`."""
        dict.__setitem__(self, "params", ParamList(params, f"{fn}: param_groups[{g}]['params']"))
        if names is not None:
            dict.__setitem__(self, "param_names",
                             ParamList(names, f"{fn}: param_groups[{g}]['param_names']"))

    def _index(self, owner: Any) -> Optional[int]:
        """This group's place in its optimizer's ``param_groups`` (None: not there yet)."""
        for g, group in enumerate(owner.param_groups):
            if group is self:
                return g
        return None

    def __setitem__(self, key: str, value: Any) -> None:
        self._write({key: value})

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update``, all or nothing: every entry is checked as by ``group[key] =
        value``, and the group with all of them by the optimizer's checks of a whole group,
        before any is written; on an error the group is left as it was."""
        self._write(dict(*args, **kwargs))

    def _write(self, entries: Dict[str, Any]) -> None:
        """Write ``entries`` (key -> value), all or nothing: each is checked (a fixed key
        refused, a hyperparameter's type and range), then the group with all of them
        (``_validate_group``), before the writes take effect; an error leaves the group as
        it was and is the one ``group[key] = value`` raises for the offending entry."""
        owner = getattr(self, "_owner", None)
        g = None if owner is None else self._index(owner)
        checked = {}
        for key, value in entries.items():
            if key in _FIXED_KEYS:
                where = "a param group" if owner is None else \
                    f"{owner._name}: param_groups[{g}]"
                raise TypeError(f"{where}[{key!r}] cannot be replaced; add params with "
                                f"add_param_group, or build a new optimizer over other arrays")
            checked[key] = value if owner is None else owner._check_hyper(
                key, value, where=f"param_groups[{'...' if g is None else g}]")
        if owner is None or not checked:
            dict.update(self, checked)
            return
        before = dict(self)
        dict.update(self, checked)
        try:
            owner._validate_group(self)
        except BaseException:
            # (the group as it was, its order too; _validate_group may have set an entry)
            dict.clear(self)
            dict.update(self, before)
            raise
        owner._dirty = True
        if "lr" in checked:
            # the lr as written, as in torch: the group's ReduceLROnPlateau factor starts
            # again at 1 (later cuts scale the written lr; fastlr/plateau.py)
            scales = getattr(owner, "_lr_scale", None)
            if scales is not None and g is not None and g < len(scales):
                scales[g] = 1.0
        fills = getattr(owner, "_hyper_fills", ())    # (LBFGS owns groups too, without)
        if fills and any(option in checked for _, option in fills):
            owner._refill_unstarted(self)

    def __ior__(self, other: Any) -> "ParamGroup":  # type: ignore[misc]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value of ``key``; a key the group lacks is written (and checked) as by
        ``group[key] = default``."""
        if key in self:
            return dict.__getitem__(self, key)
        self[key] = default
        return dict.__getitem__(self, key)

    def _refuse_removal(self, key: Any = None) -> TypeError:
        owner = getattr(self, "_owner", None)
        g = None if owner is None else self._index(owner)
        where = f"param_groups[{g}]" if g is not None else "a param group"
        if key is None:
            what = f"the entries of {where}"
        else:
            what = f"{where}[{key!r}]"
        how = ("write new values instead (group[key] = value), or build a new optimizer"
               if key is None else "build a new optimizer over other arrays"
               if key in _FIXED_KEYS else "write a new value instead (group[key] = value)")
        fn = f"{owner._name}: " if owner is not None else ""
        return TypeError(f"{fn}{what} cannot be removed: a group keeps its params and "
                         f"every hyperparameter; {how}")

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        raise self._refuse_removal(key)

    def pop(self, key: str, *default: Any) -> Any:
        """Refused for a key the group has (``TypeError``); else ``dict.pop``'s default
        or ``KeyError``."""
        if key in self:
            raise self._refuse_removal(key)
        return dict.pop(self, key, *default)

    def popitem(self) -> Tuple[str, Any]:
        """Refused (``TypeError``): a group's entries cannot be removed."""
        raise self._refuse_removal()

    def clear(self) -> None:
        """Refused (``TypeError``): a group's entries cannot be removed."""
        raise self._refuse_removal()

    def __reduce__(self):
        return (dict, (dict(self),))


if TYPE_CHECKING:
    class _OptimizerAttrs:
        """For the type checker only: what the mixins of :class:`Optimizer` share (set by
        ``Optimizer.__init__`` or defined by another mixin). At run time the mixins derive
        from ``object``."""

        defaults: Dict[str, Any]
        param_groups: List[ParamGroup]
        _kernel: str
        _schedulable: Tuple[str, ...]
        _pairs: Dict[str, Tuple[str, str]]
        _flags: Tuple[str, ...]
        _ranges: Dict[str, Any]
        _slots: Tuple[str, ...]
        _optional_state: Tuple[str, ...]
        _scalar: Optional[str]
        _scalar_init: float
        _n_threads: Optional[int]
        _max_grad_norm: Optional[float]
        _skip_nonfinite: bool
        _state_dtype: str
        _params: List[np.ndarray]
        _names: Optional[List[str]]
        _name_index: Dict[str, int]
        _getter: Optional[Callable[[Any], Any]]
        _counts: np.ndarray
        _started: np.ndarray
        _used: np.ndarray
        _mu_product: np.ndarray
        _lr_scale: np.ndarray
        _skipped: int
        _plateau: Any
        _pending_plateau: Optional[Dict[str, Any]]
        _state: List[Dict[str, np.ndarray]]
        _layout: Any
        _spans: List[Any]
        _t: int
        _dirty: bool
        _snapshot_id: str
        _busy: Any
        _engine: Any

        @property
        def _name(self) -> str: ...
        @property
        def last_lr(self) -> Optional[List[float]]: ...
        def _configure(self) -> None: ...
        def _exclusive(self, what: str) -> ContextManager[None]: ...
        def _busy_error(self, what: str) -> RuntimeError: ...
        def _check_hyper(self, key: str, value: Any, where: str) -> Any: ...
        def _validate_group(self, group: Any) -> None: ...
        def _refill_unstarted(self, written: Any) -> None: ...
        def _live_state(self, i: int) -> Dict[str, np.ndarray]: ...
        def _where(self, i: int) -> Tuple[int, int]: ...
        def _state_names(self, group: Any) -> Any: ...
        def _state_fill(self, group: Any) -> Dict[str, float]: ...
        def _reference_kwargs(self, group: Any, v: Any, i: int) -> Dict[str, Any]: ...
else:
    _OptimizerAttrs = object


class GroupsMixin(_OptimizerAttrs):
    """Construction, param groups and hyperparameter checks (part of :class:`Optimizer`)."""

    #: a group key taking a pair -> the hyperparameters of its two slots (the table's
    #: ``Hyper.pair``; the classes set their own)
    _pairs: Dict[str, Tuple[str, str]] = {"betas": ("beta1", "beta2")}
    #: (state buffer, hyperparameter that fills it at the param's first update)
    _hyper_fills: Tuple[Tuple[str, str], ...] = ()
    #: the CHECKS rule of the per-param scalar state (NAdam's mu_product: [0, 1])
    _scalar_check = "closed_unit"

    @property
    def max_grad_norm(self) -> Optional[float]:
        """Clip the grads to this global L2 norm inside each step (None: no clipping).

        Settable; a value that is not a positive number (or None) raises ``TypeError`` /
        ``ValueError``.
        """
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: Optional[float]) -> None:
        self._max_grad_norm = None if value is None else checked_real(
            self._name, "max_grad_norm", value, POSITIVE)

    @property
    def skip_nonfinite(self) -> bool:
        """Skip a step whose grads hold a NaN or Inf (False: propagate them, as torch).

        Settable; a value that is not a bool raises ``TypeError``.
        """
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: bool) -> None:
        self._skip_nonfinite = flag_arg(self._name, "skip_nonfinite", value)

    @property
    def _name(self):
        return f"fastlr.{type(self).__name__}"

    def _groups_arg(self, params):
        return groups_arg(self._name, params)

    def _label(self, i, names=None, group=None, j=None):
        """How messages name param ``i`` (flat index): ``params[i]`` with its place in the
        groups, ``(param_groups[g]['params'][j])``, and its name when it has one."""
        if group is None:
            group, j = self._where(i)
        names = self._names if names is None else names
        name = f", {names[i]!r}" if names else ""
        return f"params[{i}] (param_groups[{group}]['params'][{j}]{name})"

    def _where(self, i):
        """(group, index in the group) of param ``i`` (flat index)."""
        start = 0
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            if i < start + n:
                return g, i - start
            start += n
        return len(self.param_groups), i - start     # a group being added

    def _check_param(self, label, p):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{self._name}: {label} must be a numpy.ndarray, got "
                            f"{type(p).__name__}{ndarray_hint(p)}")
        direct = is_16bit(p.dtype) and getattr(self, "_master_weights", None) is False \
            and self._direct_16bit()        # (fastlr/optim/fused16.py)
        if (p.dtype not in (np.float32, np.float64) or not p.dtype.isnative) and not direct:
            # (16-bit params: the classes that keep float32 master weights, or step them)
            dtypes = "float32, float64, float16 or ml_dtypes.bfloat16" \
                if isinstance(self, MasterWeightsMixin) else "float32 or float64"
            raise TypeError(f"{self._name}: {label} must have dtype {dtypes} (native byte "
                            f"order), got {p.dtype}")
        state_dtype = getattr(self, "_state_dtype", "float32")
        if p.dtype == np.float64 and state_dtype != "float32":
            # (getattr: LBFGS borrows this check and keeps no state dtype)
            raise TypeError(f"{self._name}: {label} has dtype {p.dtype}, but "
                            f"state_dtype={state_dtype!r} needs float32 params (or 16-bit "
                            f"params)")
        if not (p.flags.c_contiguous or p.flags.f_contiguous):
            raise ValueError(f"{self._name}: {label} must be contiguous (C or F order), "
                             f"got strides {p.strides}; an update applied to a copy is lost"
                             f"{layout_hint(label.partition(' ')[0], False, True)}")
        if not p.flags.writeable:
            raise ValueError(f"{self._name}: {label} is read-only but is updated in place")
        if not p.flags.aligned:
            raise ValueError(f"{self._name}: {label} is not aligned in memory")

    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter (torch's checks), before it is used.
        Returns the value to store: a 0-d NumPy array becomes its element (a number)."""
        fn = self._name
        name = f"{where}[{key!r}]" if where else key
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if key in self._flags:
            flag_arg(fn, name, value)
            return value
        if key in self._pairs:
            first, second = self._pairs[key]
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{fn}: {name} must be a pair ({first}, {second}), got "
                                f"{value!r}")
            pair = (self._check_hyper(first, value[0], where),
                    self._check_hyper(second, value[1], where))
            if pair[0] is value[0] and pair[1] is value[1]:
                return value                # the caller's object, unchanged
            return pair if isinstance(value, tuple) else list(pair)
        if key not in self._ranges:
            if key in _FIXED_KEYS:
                return value
            raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                             f"{', '.join(sorted(self._ranges) + sorted(self._flags))}")
        if key in self._schedulable and not isinstance(value, numbers.Real):
            if isinstance(value, Schedule) or callable(value):
                return value
            raise TypeError(f"{fn}: {name} must be a number, a fastlr schedule or a callable, "
                            f"got {type(value).__name__}")
        if (isinstance(value, Schedule) or callable(value)) and \
                any(key == option for _, option in self._hyper_fills):
            raise TypeError(f"{fn}: {name} must be a number, not a schedule: it only sets "
                            f"where a state buffer starts (Rprop's step_size), got {value!r}")
        checked_real(fn, name, value, self._ranges[key])
        return value

    def _add_group(self, group):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{self._name}: a param group must be a dict with a 'params' entry")
        g = len(self.param_groups)
        params, names = split_named(self._name, group["params"],
                                    f"param_groups[{g}]['params']")
        if "param_names" in group:          # torch's spelling: names beside the arrays
            given = group["param_names"]
            if names is not None or isinstance(given, (str, bytes)) or \
                    not isinstance(given, (list, tuple)) or len(given) != len(params):
                raise ValueError(f"{self._name}: param_groups[{g}]['param_names'] must be a "
                                 f"list of {len(params)} names beside a list of arrays (or "
                                 f"name the arrays in 'params' instead), got {given!r:.100}")
            params, names = split_named(self._name, list(zip(given, params)),
                                        f"param_groups[{g}]['param_names']")
        start = len(self._params)
        if self.param_groups and (names is None) != (self._names is None):
            raise ValueError(f"{self._name}: param_groups[{g}] has "
                             f"{'no names' if names is None else 'named params'} but the "
                             f"optimizer's params are {'un' if names is not None else ''}named"
                             f"; name all params or none")
        if names is not None:
            taken = [n for n in names if n in self._name_index]
            if taken:
                raise ValueError(f"{self._name}: param_groups[{g}] names {taken[0]!r}, which "
                                 f"param_groups[{self._where(self._name_index[taken[0]])[0]}] "
                                 f"already holds; names must be unique")
        all_names = None if names is None else (self._names or []) + names
        params = self._with_masters(params, start, all_names, g)
        for j, p in enumerate(params):
            self._check_param(self._label(start + j, all_names, g, j), p)
        full = ParamGroup()
        checked = {key: self._check_hyper(key, value, where=f"param_groups[{g}]")
                   for key, value in group.items() if key != "params"}
        for key, value in self.defaults.items():
            dict.__setitem__(full, key, checked.get(key, value))
        full._set_params(self._name, g, params, names)
        self._validate_group(full)
        self._check_overlap(self._params + params, all_names)
        self._params.extend(params)
        if names is not None:
            self._names = all_names
            self._name_index.update((n, start + j) for j, n in enumerate(names))
            self._getter = operator.itemgetter(*all_names)
        full._owner = self
        self.param_groups.append(full)
        self._counts = np.concatenate([self._counts, np.zeros(len(params), dtype=np.int64)])
        self._started = np.concatenate([self._started, np.zeros(len(params), dtype=np.uint8)])
        self._used = np.concatenate([self._used, np.full((1, 4), np.nan)])
        self._mu_product = np.concatenate([self._mu_product,
                                           np.full(len(params), self._scalar_init)])
        self._lr_scale = np.concatenate([self._lr_scale, np.ones(1)])
        self._state.extend({} for _ in params)

    def _with_masters(self, params, start, names, g):
        """The params the optimizer keeps for ``params`` (an optimizer with master weights
        puts a float32 copy in place of a 16-bit array: fastlr/optim/master.py)."""
        return params

    def _validate_group(self, group):
        """Checks of a whole group's options (after a change); subclasses add theirs."""

    def _check_overlap(self, params, names):
        spans = sorted((p.__array_interface__["data"][0], p.nbytes, i)
                       for i, p in enumerate(params) if p.nbytes)
        for (a, na, i), (b, nb, j) in zip(spans, spans[1:]):
            if b < a + na:
                first, second = sorted((i, j))
                raise ValueError(f"{self._name}: {self._label(first, names)} and "
                                 f"{self._label(second, names)} overlap in memory (a param "
                                 f"may appear only once)")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group of params (torch's ``add_param_group``).

        Its params start their own update count at 1, its missing hyperparameters come
        from the optimizer's defaults.

        Parameters
        ----------
        param_group : dict
            ``{"params": arrays or named arrays, hyperparameter: value, ...}``, as a group
            of the constructor's ``params``.

        Raises
        ------
        TypeError
            If the group, a param or a hyperparameter has the wrong type.
        ValueError
            If a hyperparameter is out of range, or a param overlaps one already present.
        RuntimeError
            If another thread is stepping or changing this optimizer at the same time.

        Examples
        --------
        >>> opt = fastlr.SGD([np.ones(2)], lr=0.1)
        >>> opt.add_param_group({"params": [np.ones(3)], "lr": 0.01})
        >>> [g["lr"] for g in opt.param_groups]
        [0.1, 0.01]
        """
        with self._exclusive("add_param_group"):
            self._add_group(param_group)
            self._configure()

    def _busy_error(self, what):
        return RuntimeError(f"{self._name}.{what}: the optimizer is being stepped or "
                            f"changed by another thread; an optimizer is not shared by "
                            f"threads that step it concurrently (give each its own, or "
                            f"hold a lock around step)")

    @contextlib.contextmanager
    def _exclusive(self, what):
        """One step (or layout change) at a time: a second thread gets a clear error
        instead of racing the first (the step runs without the GIL)."""
        if not self._busy.acquire(blocking=False):
            raise self._busy_error(what)
        try:
            yield
        finally:
            self._busy.release()


#: The group entries that are not hyperparameters (set at construction, never replaced).
_FIXED_KEYS = ("params", "param_names")


def groups_arg(fn: str, params: Any) -> List[Dict[str, Any]]:
    """``params`` as a list of group dicts.

    Parameters
    ----------
    fn : str
        The caller's name, for messages (e.g. ``"fastlr.Adam"``).
    params : array, list of arrays, dict, list of (name, array) pairs or list of dicts
        An array, a list of arrays, a dict of name -> array, a list of ``(name, array)``
        pairs, one group dict or a list of group dicts.

    Returns
    -------
    list of dict
        The group dicts (the caller's own dicts when it gave group dicts).

    Raises
    ------
    TypeError
        If ``params`` is none of these, or mixes arrays and group dicts.
    ValueError
        If ``params`` is empty.
    """
    if isinstance(params, np.ndarray):
        return [{"params": [params]}]
    if isinstance(params, dict):
        return [params] if "params" in params else [{"params": params}]
    if isinstance(params, (str, bytes)):
        items = None
    else:
        try:
            items = list(params)
        except TypeError:
            items = None
    if items is None:
        raise TypeError(f"{fn}: params must be an array, a list of arrays, a dict of name -> "
                        f"array, a list of (name, array) pairs or a list of group dicts, got "
                        f"{type(params).__name__}")
    if not items:
        raise ValueError(f"{fn}: params is empty")
    if all(isinstance(p, dict) for p in items):
        return items
    if any(isinstance(p, dict) for p in items):
        raise TypeError(f"{fn}: params mixes arrays and group dicts")
    return [{"params": items}]


def _is_pair(item):
    return isinstance(item, tuple) and len(item) == 2


def split_named(fn: str, params: Any, where: str) -> Tuple[List[Any], Optional[List[str]]]:
    """A group's params as (arrays, names): the names are None when the params are unnamed.

    Names must be unique strings; the arrays are checked by the caller.

    Parameters
    ----------
    fn : str
        The caller's name, for messages.
    params : array, list of arrays, dict of str -> array or list of (str, array) pairs
        The params (torch's ``named_parameters()`` pairs are such a list).
    where : str
        What messages call ``params``, e.g. ``param_groups[1]['params']``.

    Returns
    -------
    arrays : list
        The params, in order.
    names : list of str or None
        Their names, or None for unnamed params.

    Raises
    ------
    TypeError
        If ``params`` is none of these, mixes pairs and arrays, or a name is not a string.
    ValueError
        If ``params`` is empty or a name appears twice.
    """
    if isinstance(params, np.ndarray):
        return [params], None
    if isinstance(params, dict):
        names, arrays = list(params.keys()), list(params.values())
    else:
        try:
            items = None if isinstance(params, (str, bytes)) else list(params)
        except TypeError:
            items = None
        if items is None:
            raise TypeError(f"{fn}: {where} must be an array, a list of arrays, a dict of "
                            f"name -> array or a list of (name, array) pairs, got "
                            f"{type(params).__name__}")
        pairs = [_is_pair(p) for p in items]
        if not any(pairs):
            if not items:
                raise ValueError(f"{fn}: {where} is empty (no params)")
            return items, None
        if not all(pairs):
            k = pairs.index(not pairs[0])
            raise TypeError(f"{fn}: {where} mixes (name, array) pairs and arrays (item {k}); "
                            f"name all params or none")
        names, arrays = [p[0] for p in items], [p[1] for p in items]
    if not arrays:
        raise ValueError(f"{fn}: {where} is empty (no params)")
    for k, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"{fn}: {where}: param names must be strings, got "
                            f"{type(n).__name__} {n!r} (item {k})")
    if len(set(names)) != len(names):
        dup = next(n for k, n in enumerate(names) if n in names[:k])
        raise ValueError(f"{fn}: {where} names {dup!r} twice; names must be unique")
    return arrays, names


def names_diff(mine: Sequence[str], saved: Sequence[str],
               other: str = "the checkpoint") -> str:
    """What differs between this object's names and ``other``'s (a checkpoint's), in words.

    Parameters
    ----------
    mine : sequence of str
        This object's names.
    saved : sequence of str
        The other side's names.
    other : str, default "the checkpoint"
        What messages call the other side.

    Returns
    -------
    str
        The missing and unexpected names, or that the order differs.

    Examples
    --------
    >>> from fastlr.optim.groups import names_diff
    >>> names_diff(["a", "b"], ["b", "c"])
    "missing from the checkpoint: 'a', unexpected in the checkpoint: 'c'"
    """
    missing = [n for n in mine if n not in saved]
    unknown = [n for n in saved if n not in mine]
    parts = []
    if missing:
        parts.append(f"missing from {other}: {_some(missing)}")
    if unknown:
        parts.append(f"unexpected in {other}: {_some(unknown)}")
    if not parts:
        parts.append(f"the same names in another order ({_some(saved)} vs {_some(mine)})")
    return ", ".join(parts)


def by_name(fn: str, names: Optional[Sequence[str]], mapping: Mapping[str, Any], what: str,
            tail: str, getter: Optional[Callable[[Any], Any]] = None) -> Sequence[Any]:
    """``mapping`` (name -> array) as the arrays in ``names``' order, in one pass.

    Messages are formatted only on error.

    Parameters
    ----------
    fn : str
        The caller's name, for messages.
    names : sequence of str or None
        The params' names, in order; None for unnamed params.
    mapping : dict of str -> array
        Exactly one entry per name, in any order.
    what : str
        What messages call ``mapping`` (e.g. ``"the grads"``).
    tail : str
        The end of the ``ValueError``'s message.
    getter : callable, optional
        ``operator.itemgetter(*names)``, when the caller keeps one (a C loop).

    Returns
    -------
    tuple
        The values of ``mapping`` in ``names``' order.

    Raises
    ------
    TypeError
        If ``names`` is None (the params have no names).
    ValueError
        If the keys are not exactly ``names``: naming the missing and unexpected keys.
    """
    if names is None:
        raise TypeError(f"{fn}: {what} is a dict but the params have no names; pass {what} "
                        f"as a list in param order, or name the params (a dict of name -> "
                        f"array) when building")
    try:
        out = getter(mapping) if getter is not None else tuple(map(mapping.__getitem__, names))
    except (KeyError, TypeError):
        out = None
    if out is not None and len(names) == 1 and getter is not None:
        out = (out,)                    # itemgetter of one name gives the item itself
    if out is None or len(mapping) != len(out):
        raise ValueError(f"{fn}: {names_diff(names, list(mapping), what)}; {tail}")
    return out


def named_groups(named: Union[Mapping[str, np.ndarray], Sequence[Tuple[str, np.ndarray]]],
                 groups: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]] = (), *,
                 rest: bool = True) -> List[Dict[str, Any]]:
    """Param groups picked by name, for an optimizer over named params.

    Parameters
    ----------
    named : dict of str -> numpy.ndarray or list of (str, numpy.ndarray)
        The named params (torch's ``named_parameters()`` pairs, or a dict).
    groups : dict or sequence of dict, default ()
        Group dicts whose ``"params"`` is a list of names (or one name), with their own
        hyperparameters.
    rest : bool, default True
        With True the params no group names form one more group (the optimizer's
        defaults), last; with False every param must be named by a group.

    Returns
    -------
    list of dict
        The group dicts, each group's params as a ``{name: array}`` entry.

    Raises
    ------
    TypeError
        If ``named`` is not a dict or a list of pairs, a group is not a dict with a
        ``"params"`` entry, or a group lists something other than names.
    ValueError
        If a name is unknown, in two groups or (``rest=False``) a param is in no group.

    Examples
    --------
    >>> named = {"fc.weight": np.ones((2, 2)), "fc.bias": np.zeros(2)}
    >>> groups = fastlr.optim.named_groups(named, [{"params": ["fc.bias"], "lr": 0.5}])
    >>> [sorted(g["params"]) for g in groups]
    [['fc.bias'], ['fc.weight']]
    >>> opt = fastlr.SGD(groups, lr=0.1)
    >>> opt.step({"fc.weight": np.ones((2, 2)), "fc.bias": np.ones(2)})

    Usage with AdamW::

        opt = fastlr.AdamW(named_groups(named, [{"params": ["fc.bias"], "weight_decay": 0}]),
                           lr=1e-3)
        opt.step({"fc.weight": gw, "fc.bias": gb})
    """
    fn = "fastlr.optim.named_groups"
    arrays, names = split_named(fn, named, "named")
    if names is None:
        raise TypeError(f"{fn}: named must be a dict of name -> array or a list of "
                        f"(name, array) pairs")
    table = dict(zip(names, arrays))
    if isinstance(groups, dict):
        groups = [groups]
    out: List[Dict[str, Any]] = []
    owner: Dict[str, int] = {}
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{fn}: groups[{g}] must be a dict with a 'params' entry")
        wanted = group["params"]
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        picked = {}
        for n in wanted:
            if not isinstance(n, str):
                raise TypeError(f"{fn}: groups[{g}]['params'] must list param names "
                                f"(strings), got {type(n).__name__}")
            if n not in table:
                raise ValueError(f"{fn}: groups[{g}]['params'] names {n!r}, which is not a "
                                 f"param (known: {_some(names)})")
            if n in owner:
                raise ValueError(f"{fn}: {n!r} is in groups[{owner[n]}] and groups[{g}]; a "
                                 f"param belongs to one group")
            owner[n] = g
            picked[n] = table[n]
        out.append(dict(group, params=picked))
    left = {n: a for n, a in table.items() if n not in owner}
    if left and not rest:
        raise ValueError(f"{fn}: no group names {_some(list(left))} (rest=False)")
    if left:
        out.append({"params": left})
    return out


def _some(names, k=6):
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _finite_nonneg(v):
    """Whether ``v`` is a real number (not a bool), finite and >= 0."""
    return (not isinstance(v, (bool, np.bool_)) and isinstance(v, numbers.Real)
            and _finite(v) and v >= 0)


def _finite(value):
    """Whether a real number is finite (an int beyond the double range is not)."""
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:
        return False


def _nonneg_int(name, what, value):
    return int_arg(name, what, value, 0, INT_MAX)
