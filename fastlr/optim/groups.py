"""Param groups and hyperparameters: the optimizer's construction, its groups (dicts like
torch's whose writes are checked), the type and range checks of every hyperparameter, and
the one-thread-at-a-time guard."""

import contextlib
import numbers

import numpy as np

from fastlr._core.args import INT_MAX, POSITIVE, checked_real, flag_arg, int_arg
from fastlr.schedules import Schedule


class ParamGroup(dict):
    """A param group: a dict like torch's. Writing a hyperparameter takes effect at the next
    step; the ``params`` entry cannot be replaced (use ``add_param_group``)."""

    __slots__ = ("_owner",)

    def __setitem__(self, key, value):
        if key == "params":
            raise TypeError("a param group's 'params' cannot be replaced; build a new "
                            "optimizer or use add_param_group")
        owner = getattr(self, "_owner", None)
        if owner is None:
            dict.__setitem__(self, key, value)
            return
        owner._check_hyper(key, value, where="param_groups[...]")
        missing = object()
        old = self.get(key, missing)
        dict.__setitem__(self, key, value)
        try:
            owner._validate_group(self)
        except ValueError:
            if old is missing:
                dict.__delitem__(self, key)
            else:
                dict.__setitem__(self, key, old)
            raise
        owner._dirty = True

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __reduce__(self):
        return (dict, (dict(self),))


class GroupsMixin:
    """Construction, param groups and hyperparameter checks (part of :class:`Optimizer`)."""

    @property
    def max_grad_norm(self):
        """Clip the grads to this global L2 norm inside each step (None: no clipping)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._max_grad_norm = None if value is None else checked_real(
            self._name, "max_grad_norm", value, POSITIVE)

    @property
    def skip_nonfinite(self):
        """Skip a step whose grads hold a NaN or Inf (False: propagate them, as torch)."""
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value):
        self._skip_nonfinite = flag_arg(self._name, "skip_nonfinite", value)

    @property
    def _name(self):
        return f"fastlr.{type(self).__name__}"

    def _groups_arg(self, params):
        if isinstance(params, np.ndarray):
            return [{"params": [params]}]
        if isinstance(params, dict):
            return [params]
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"{self._name}: params must be an array, a list of arrays or a "
                            f"list of dicts, got {type(params).__name__}") from None
        if not items:
            raise ValueError(f"{self._name}: params is empty")
        if all(isinstance(p, dict) for p in items):
            return items
        if any(isinstance(p, dict) for p in items):
            raise TypeError(f"{self._name}: params mixes arrays and group dicts")
        return [{"params": items}]

    def _check_param(self, i, p):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{self._name}: params[{i}] must be a numpy.ndarray, got "
                            f"{type(p).__name__}")
        if p.dtype not in (np.float32, np.float64) or not p.dtype.isnative:
            raise TypeError(f"{self._name}: params[{i}] must have dtype float32 or float64 "
                            f"(native byte order), got {p.dtype}")
        if not (p.flags.c_contiguous or p.flags.f_contiguous):
            raise ValueError(f"{self._name}: params[{i}] must be contiguous (C or F order), "
                             f"got strides {p.strides}; an update applied to a copy is lost")
        if not p.flags.writeable:
            raise ValueError(f"{self._name}: params[{i}] is read-only but is updated in place")
        if not p.flags.aligned:
            raise ValueError(f"{self._name}: params[{i}] is not aligned in memory")

    def _check_hyper(self, key, value, where):
        """Type and range of one hyperparameter (torch's checks), before it is used."""
        fn = self._name
        name = f"{where}[{key!r}]" if where else key
        if key in self._flags:
            flag_arg(fn, name, value)
            return
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{fn}: {name} must be a pair (beta1, beta2), got {value!r}")
            self._check_hyper("beta1", value[0], where)
            self._check_hyper("beta2", value[1], where)
            return
        if key not in self._ranges:
            if key == "params":
                return
            raise ValueError(f"{fn}: unknown hyperparameter {key!r}; expected one of "
                             f"{', '.join(sorted(self._ranges) + sorted(self._flags))}")
        if key in self._schedulable and not isinstance(value, numbers.Real):
            if isinstance(value, Schedule) or callable(value):
                return
            raise TypeError(f"{fn}: {name} must be a number, a fastlr schedule or a callable, "
                            f"got {type(value).__name__}")
        checked_real(fn, name, value, self._ranges[key])

    def _add_group(self, group):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{self._name}: a param group must be a dict with a 'params' entry")
        params = group["params"]
        try:
            params = [params] if isinstance(params, np.ndarray) else list(params)
        except TypeError:
            raise TypeError(f"{self._name}: a param group's 'params' must be an array or a "
                            f"list of arrays, got {type(params).__name__}") from None
        if not params:
            raise ValueError(f"{self._name}: a param group has no params")
        start = len(self._params)
        for j, p in enumerate(params):
            self._check_param(start + j, p)
        full = ParamGroup()
        for key, value in group.items():
            if key != "params":
                self._check_hyper(key, value, where="param group ")
        for key, value in self.defaults.items():
            dict.__setitem__(full, key, group.get(key, value))
        dict.__setitem__(full, "params", params)
        self._validate_group(full)
        self._check_overlap(self._params + params)
        self._params.extend(params)
        full._owner = self
        self.param_groups.append(full)
        self._counts = np.concatenate([self._counts, np.zeros(len(params), dtype=np.int64)])
        self._started = np.concatenate([self._started, np.zeros(len(params), dtype=np.uint8)])
        self._used = np.concatenate([self._used, np.full((1, 4), np.nan)])
        self._mu_product = np.concatenate([self._mu_product,
                                           np.full(len(params), self._scalar_init)])
        self._lr_scale = np.concatenate([self._lr_scale, np.ones(1)])
        self._state.extend({} for _ in params)

    def _validate_group(self, group):
        """Checks of a whole group's options (after a change); subclasses add theirs."""

    def _check_overlap(self, params):
        spans = sorted((p.__array_interface__["data"][0], p.nbytes, i)
                       for i, p in enumerate(params) if p.nbytes)
        for (a, na, i), (b, nb, j) in zip(spans, spans[1:]):
            if b < a + na:
                raise ValueError(f"{self._name}: params[{min(i, j)}] and params[{max(i, j)}] "
                                 f"overlap in memory (a param may appear only once)")

    def add_param_group(self, param_group):
        """Add a group (torch's ``add_param_group``): its params start their own update count
        at 1, its missing hyperparameters come from the optimizer's defaults."""
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
