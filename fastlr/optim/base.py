"""The optimizer base class: param groups and hyperparameters, the state layout handed to
the compiled engine, the step, and checkpoints."""

import contextlib
import numbers
import operator
import threading

import numpy as np

from fastlr import reference
from fastlr._core.engine import Engine
from fastlr.kernels import zeros_like_many
from fastlr.schedules import Schedule, as_schedule

from fastlr._kernels import get_num_threads as _default_threads  # noqa: E402
from fastlr.optim.checkpoint import _FORMAT, read_checkpoint, write_checkpoint
from fastlr.optim.plateau_state import _check_plateau_state


def flat_buffer(shapes, dtype=np.float32):
    """One zero-filled contiguous buffer and C-contiguous views of it, one per shape.

    >>> flat, (w, b) = flat_buffer([(2, 3), (3,)])
    >>> flat.shape, w.shape, b.shape, np.shares_memory(flat, b)
    ((9,), (2, 3), (3,), True)

    Use it for params (the optimizer then updates all of them as one span) and for grads
    (``opt.step(flat_grad)`` or ``opt.step(grad_views)``).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"fastlr.flat_buffer: dtype must be float32 or float64, got {dtype}")
    try:
        shapes = [tuple(operator.index(d) for d in np.atleast_1d(s).tolist())
                  if not isinstance(s, tuple) or s else () for s in shapes]
    except TypeError:
        raise TypeError(f"fastlr.flat_buffer: shapes must be a list of shapes (tuples of "
                        f"ints), got {shapes!r:.80}") from None
    if any(d < 0 for s in shapes for d in s):
        raise ValueError("fastlr.flat_buffer: shapes must have non-negative dimensions")
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = np.zeros(sum(sizes), dtype=dtype)
    views, offset = [], 0
    for shape, n in zip(shapes, sizes):
        views.append(flat[offset:offset + n].reshape(shape))
        offset += n
    return flat, views


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


class Optimizer:
    """Base class: param groups, state, checkpoints and the one-call step."""

    _kernel = None          # "sgd", "rmsprop" or "adam"
    _schedulable = ()       # hyperparameters that take a schedule
    _slots = ()             # the kernel's state arguments, in order
    _optional_state = ()    # buffers torch creates on first use (absent before)
    _scalar = None          # the name of the per-param scalar state (NAdam's mu_product)
    _scalar_init = 1.0      # its value before the first update

    def __init__(self, params, defaults, n_threads=None, max_grad_norm=None,
                 skip_nonfinite=False):
        self.defaults = dict(defaults)
        for key, value in self.defaults.items():
            self._check_hyper(key, value, where="")
        self._n_threads = self._threads_arg(n_threads)
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = skip_nonfinite
        self.param_groups = []
        self._params = []
        self._counts = np.zeros(0, dtype=np.int64)     # per param: updates applied
        self._started = np.zeros(0, dtype=np.uint8)    # per param: SGD buffer in use
        self._used = np.zeros((0, 4), dtype=np.float64)  # per group: values of the last step
        self._mu_product = np.zeros(0, dtype=np.float64)  # per param: NAdam's product of mu_t
        self._lr_scale = np.zeros(0, dtype=np.float64)    # per group: factor on the lr
        self._skipped = 0               # steps skipped for non-finite grads
        self._plateau = None            # an attached ReduceLROnPlateau
        self._pending_plateau = None    # its checkpointed state, until one is attached
        self._state = []                # per param: {name: view}
        self._layout = None             # the span structure the state blocks were made for
        self._t = 0
        self._busy = threading.Lock()   # held while stepping or changing the layout
        self._engine = Engine(self._kernel, self._name)
        groups = self._groups_arg(params)
        for group in groups:
            self._add_group(group)
        self._configure()

    # ---- construction -------------------------------------------------------------------
    @property
    def max_grad_norm(self):
        """Clip the grads to this global L2 norm inside each step (None: no clipping)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        if value is not None:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"{self._name}: max_grad_norm must be a number > 0 or None, "
                                f"got {type(value).__name__}")
            if not (_finite(value) and value > 0):
                raise ValueError(f"{self._name}: max_grad_norm must be a finite number > 0 "
                                 f"or None, got {value!r}")
            value = float(value)
        self._max_grad_norm = value

    @property
    def skip_nonfinite(self):
        """Skip a step whose grads hold a NaN or Inf (False: propagate them, as torch)."""
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{self._name}: skip_nonfinite must be a bool, got {value!r}")
        self._skip_nonfinite = bool(value)

    @property
    def _name(self):
        return f"fastlr.{type(self).__name__}"

    @staticmethod
    def _threads_arg(n_threads):
        if n_threads is None:
            return None
        if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) or \
                not 1 <= n_threads <= 4096:
            raise ValueError(f"n_threads must be an int in [1, 4096] or None, got {n_threads!r}")
        return int(n_threads)

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
        name = f"{self._name}: {where}{'[' + repr(key) + ']' if where else key}"
        if key in self._flags:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {value!r}")
            return
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{name} must be a pair (beta1, beta2), got {value!r}")
            self._check_hyper("beta1", value[0], where)
            self._check_hyper("beta2", value[1], where)
            return
        if key not in self._ranges:
            if key == "params":
                return
            raise ValueError(f"{self._name}: unknown hyperparameter {key!r}; expected one of "
                             f"{', '.join(sorted(self._ranges) + sorted(self._flags))}")
        if key in self._schedulable and not isinstance(value, numbers.Real):
            if isinstance(value, Schedule) or callable(value):
                return
            raise TypeError(f"{name} must be a number, a fastlr schedule or a callable, got "
                            f"{type(value).__name__}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        low, high, text = self._ranges[key]
        try:
            v = float(value)
        except OverflowError:           # an int beyond the double range
            v = float("inf")
        if not (np.isfinite(v) and v >= low and (high is None or v < high)):
            raise ValueError(f"{name} must be {text}, got {value!r}")

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

    # ---- layout: spans of adjacent params, state buffers, the compiled engine -------------
    def _state_names(self, group):
        raise NotImplementedError

    def _resolved(self, group):
        """The group's hyperparameters as the engine wants them."""
        out = {}
        for key, value in group.items():
            if key == "params":
                continue
            if key == "betas":
                b1, b2 = value
                out["beta1"] = self._source(b1)
                out["beta2"] = float(b2)
            elif key in self._schedulable:
                out[key] = self._source(value)
            elif key in self._flags:
                out[key] = bool(value)
            else:
                out[key] = float(value)
        return out

    @staticmethod
    def _source(value):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        return as_schedule(value)

    def _configure(self):
        layout, index = [], 0
        for g, group in enumerate(self.param_groups):
            names = self._state_names(group)
            params = group["params"]
            j = 0
            while j < len(params):
                k = j + 1
                while k < len(params) and self._adjacent(params[k - 1], params[k]) and \
                        self._counts[index + k] == self._counts[index + j] and \
                        self._started[index + k] == self._started[index + j] and \
                        self._mu_product[index + k] == self._mu_product[index + j]:
                    k += 1
                layout.append((index + j, k - j, g, names))
                j = k
            index += len(params)
        groups = [self._resolved(g) for g in self.param_groups]
        if layout == self._layout:
            # same spans and buffers: new hyperparameters only, state stays where it is
            self._engine.set_groups(groups)
        else:
            spans = []
            for first, n, g, names in layout:
                blocks = self._span_state(first, self._params[first:first + n], names,
                                          self._state_fill(self.param_groups[g]))
                slots = tuple(blocks.get(name) for name in self._slots)
                spans.append((first, n, g, slots))
            self._spans = spans
            self._layout = layout
            self._engine.configure(self._params, spans, groups, self._counts, self._started,
                                   self._used, self._mu_product, self._lr_scale)
        self._dirty = False

    @staticmethod
    def _adjacent(a, b):
        return (a.dtype == b.dtype and a.size and b.size
                and a.__array_interface__["data"][0] + a.nbytes
                == b.__array_interface__["data"][0])

    def _state_fill(self, group):
        """Initial values of state buffers that do not start at zero: {name: value}."""
        return {}

    def _span_state(self, first, params, names, fill):
        """One contiguous block per state buffer for a span, viewed per param; existing
        buffers are kept (copied into the new block). Returns {name: block}."""
        blocks = {}
        sizes = [p.size for p in params]
        # one allocation for all the span's buffers, staggered when large (see
        # fastlr.kernels.STAGGER_BYTES)
        fresh = zeros_like_many(len(names), (sum(sizes),), params[0].dtype)
        for name, block in zip(names, fresh):
            offset = 0
            for j, (p, n) in enumerate(zip(params, sizes)):
                order = "F" if (p.flags.f_contiguous and not p.flags.c_contiguous) else "C"
                view = block[offset:offset + n].reshape(p.shape, order=order)
                old = self._state[first + j].get(name)
                if old is not None:
                    view[...] = old
                elif name in fill:
                    view[...] = fill[name]
                self._state[first + j][name] = view
                offset += n
            blocks[name] = block
        for j in range(len(params)):
            for name in list(self._state[first + j]):
                if name not in names:
                    del self._state[first + j][name]
        return blocks

    # ---- the step -------------------------------------------------------------------------
    def step(self, grads):
        """Apply one update to every param from ``grads`` (a list in param order, or one flat
        array when the params are views of one buffer). Raises before touching anything
        when a grad or a scheduled hyperparameter is invalid.

        With ``skip_nonfinite=True`` it returns whether the update was applied: grads that
        hold a NaN or Inf skip the whole step (nothing is written, no counter moves, the
        schedules do not advance, :attr:`skipped_steps` goes up) and it returns False;
        otherwise True. Without the option it returns None and non-finite grads propagate
        into params and state, as in torch. With
        ``max_grad_norm``, the grads are scaled by ``min(max_norm / (norm + 1e-6), 1)``
        (torch's clip_grad_norm_) inside the update; :attr:`last_grad_norm` is the norm.
        """
        if not self._busy.acquire(blocking=False):
            # raise now: trying again (the other thread may just have let go) and going on
            # would step without the lock and then release a lock this call does not hold
            raise self._busy_error("step")
        try:
            if self._dirty:
                self._configure()
            n_threads = self._n_threads if self._n_threads is not None else _default_threads()
            applied = self._engine.step(grads, self._t, n_threads, self._max_grad_norm or 0.0,
                                        self._skip_nonfinite)
            if applied:
                self._t += 1
            else:
                self._skipped += 1
        finally:
            self._busy.release()
        if applied:
            return True if self._skip_nonfinite else None
        return False

    @property
    def skipped_steps(self):
        """Steps skipped because a grad held a NaN or Inf (``skip_nonfinite=True``)."""
        return self._skipped

    @property
    def last_grad_norm(self):
        """The global L2 norm of the grads of the last step that clipped (NaN before)."""
        return self._engine.last_grad_norm

    @property
    def params(self):
        """Every param array, in order (the caller's arrays, updated in place)."""
        return list(self._params)

    @property
    def steps(self):
        """Updates applied so far (the step count ``t`` that drives the schedules)."""
        return self._t

    @property
    def state(self):
        """Per-param state, keyed by param index: ``{"step": updates applied to it, buffer
        name: the buffer (a live view)}``, plus the optimizer's scalar state (NAdam's
        ``mu_product``, a float)."""
        state = {i: dict(self._live_state(i), step=int(self._counts[i]))
                 for i in range(len(self._state))}
        if self._scalar:
            for i, st in state.items():
                st[self._scalar] = float(self._mu_product[i])
        return state

    def _live_state(self, i):
        """Param ``i``'s buffers as torch shows them: a lazily created one (torch's SGD
        momentum buffer) is absent until the param's first update that uses it."""
        st = self._state[i]
        if not self._optional_state or self._started[i]:
            return st
        return {k: v for k, v in st.items() if k not in self._optional_state}

    def _values_at(self, t):
        if self._dirty:
            self._configure()
        return self._engine.group_values(t)

    @property
    def last_lr(self):
        """The lr each group used in the last update (None before the first)."""
        if self._t == 0 or np.isnan(self._used[:, 0]).any():
            return None
        return [float(v) for v in self._used[:, 0]]

    @property
    def next_lr(self):
        """The lr each group will use in the next update."""
        return [v["lr"] for v in self._values_at(self._t)]

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self):
        """A plain dict: ``{"format", "steps", "state": {i: {"step", buffers}},
        "param_groups": [hyperparameters, "params": indices]}``, arrays copied. A scheduled
        hyperparameter is saved as ``{"schedule": repr}``: schedules are code, rebuilt by the
        code that builds the optimizer."""
        groups, index = [], 0
        for group in self.param_groups:
            g = {}
            for key, value in group.items():
                if key == "params":
                    g[key] = list(range(index, index + len(value)))
                    index += len(value)
                else:
                    g[key] = _plain(value)
            groups.append(g)
        state = {i: dict({k: np.array(v, copy=True) for k, v in self._live_state(i).items()},
                         step=int(self._counts[i])) for i in range(len(self._state))}
        if self._scalar:
            for i, st in state.items():
                st[self._scalar] = float(self._mu_product[i])
        sd = {"format": _FORMAT, "steps": self._t, "state": state, "param_groups": groups,
              "skipped_steps": self._skipped, "lr_scale": [float(v) for v in self._lr_scale],
              "last_lr": self.last_lr}
        plateau = (self._plateau.state_dict() if self._plateau is not None
                   else self._pending_plateau)
        if plateau is not None:
            sd["plateau"] = dict(plateau)
        return sd

    def load_state_dict(self, state_dict):
        """Restore a state dict. Everything is validated first; on any error nothing
        changes."""
        with self._exclusive("load_state_dict"):
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict):
        name = f"{self._name}.load_state_dict"
        sd = state_dict
        if not isinstance(sd, dict):
            raise TypeError(f"{name}: expected a dict, got {type(sd).__name__}")
        for key in ("steps", "state", "param_groups"):
            if key not in sd:
                raise ValueError(f"{name}: the state dict has no {key!r} entry")
        if sd.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{name}: unknown format {sd.get('format')!r}")
        steps = _nonneg_int(name, "steps", sd["steps"])
        skipped = _nonneg_int(name, "skipped_steps", sd.get("skipped_steps", 0))
        lr_scale = sd.get("lr_scale", [1.0] * len(self.param_groups))
        if not isinstance(lr_scale, (list, tuple, np.ndarray)) or \
                len(lr_scale) != len(self.param_groups) or \
                not all(_finite_nonneg(v) for v in lr_scale):
            raise ValueError(f"{name}: lr_scale must hold one finite number >= 0 per param "
                             f"group ({len(self.param_groups)}), got {lr_scale!r}")
        last_lr = sd.get("last_lr")
        if last_lr is not None and (
                not isinstance(last_lr, (list, tuple, np.ndarray)) or
                len(last_lr) != len(self.param_groups) or
                not all(_finite_nonneg(v) for v in last_lr)):
            raise ValueError(f"{name}: last_lr must be None or one finite lr >= 0 per param "
                             f"group, got {last_lr!r}")
        plateau = sd.get("plateau")
        if plateau is not None:
            plateau = _check_plateau_state(name, plateau)
            if self._plateau is not None:
                self._plateau._check_compatible(name, plateau)
        groups = sd["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"{name}: the state dict has "
                             f"{len(groups) if isinstance(groups, (list, tuple)) else '?'} "
                             f"param groups, this optimizer has {len(self.param_groups)}")
        new_hypers, index = [], 0
        for g, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict):
                raise TypeError(f"{name}: param_groups[{g}] must be a dict")
            n = len(group["params"])
            held = saved.get("params", [])
            if not isinstance(held, (list, tuple, np.ndarray)) or \
                    list(held) != list(range(index, index + n)):
                raise ValueError(f"{name}: param_groups[{g}] holds params "
                                 f"{saved.get('params')}, expected {list(range(index, index + n))}")
            index += n
            hyper = {}
            for key, value in saved.items():
                if key == "params":
                    continue
                if key not in group:
                    raise ValueError(f"{name}: param_groups[{g}] has an unknown "
                                     f"hyperparameter {key!r}")
                if _is_marker(value):
                    continue        # a schedule: code, rebuilt by the code that built this
                if key == "betas" and isinstance(value, (list, tuple)) and len(value) == 2 \
                        and _is_marker(value[0]):
                    value = (group["betas"][0], value[1])
                value = tuple(value) if key == "betas" else value
                self._check_hyper(key, value, where=f"param_groups[{g}]")
                hyper[key] = value
            new_hypers.append(hyper)
        state = sd["state"]
        if not isinstance(state, dict):
            raise TypeError(f"{name}: 'state' must be a dict keyed by param index")
        indices = {str(i) for i in range(len(self._params))}
        unknown = [k for k in state if not (isinstance(k, (int, np.integer, str)) and
                                            str(k) in indices)]
        if unknown:
            raise ValueError(f"{name}: 'state' has entries {unknown[:5]!r} for params this "
                             f"optimizer does not have (it has {len(self._params)})")
        new_state = {}
        for i, p in enumerate(self._params):
            st = state.get(i, state.get(str(i)))
            if not isinstance(st, dict):
                raise ValueError(f"{name}: the state dict has no state for param {i}")
            count = _nonneg_int(name, f"state[{i}]['step']", st.get("step"))
            bufs = {}
            if self._scalar:
                mp = st.get(self._scalar)
                if isinstance(mp, np.ndarray) and mp.ndim == 0:
                    mp = mp.item()
                if isinstance(mp, (bool, np.bool_)) or not isinstance(mp, numbers.Real) or \
                        not 0.0 <= mp <= 1.0:
                    raise ValueError(f"{name}: state[{i}][{self._scalar!r}] must be a number "
                                     f"in [0, 1], got {mp!r}")
                bufs[self._scalar] = float(mp)
            for buf in self._state[i]:
                if buf not in st and buf in self._optional_state:
                    continue
                if buf not in st:
                    raise ValueError(f"{name}: state[{i}] has no {buf!r} buffer, which this "
                                     f"optimizer's options need")
                arr = st[buf]
                if not isinstance(arr, np.ndarray) or arr.shape != p.shape or \
                        arr.dtype.kind != "f":
                    raise ValueError(f"{name}: state[{i}][{buf!r}] must be a float array of "
                                     f"shape {p.shape}, got "
                                     f"{getattr(arr, 'dtype', type(arr).__name__)} "
                                     f"{getattr(arr, 'shape', '')}")
                bufs[buf] = arr
            extra = set(st) - set(self._state[i]) - {"step"} - \
                ({self._scalar} if self._scalar else set())
            if extra:
                raise ValueError(f"{name}: state[{i}] has buffers {sorted(extra)} that this "
                                 f"optimizer's options do not use")
            new_state[i] = (count, bufs)
        # everything checked: apply
        for group, hyper in zip(self.param_groups, new_hypers):
            for key, value in hyper.items():
                dict.__setitem__(group, key, value)
        for i, (count, bufs) in new_state.items():
            self._counts[i] = count
            if self._scalar:
                self._mu_product[i] = bufs[self._scalar]
            for buf, view in self._state[i].items():
                if buf in bufs:
                    np.copyto(view, bufs[buf], casting="same_kind")
                else:
                    view[...] = 0
            self._started[i] = all(b in bufs for b in self._optional_state
                                   if b in self._state[i])
        self._t = steps
        self._skipped = skipped
        self._lr_scale[:] = [float(v) for v in lr_scale]
        if plateau is not None:
            if self._plateau is not None:
                self._plateau._load(plateau)
            else:
                self._pending_plateau = plateau
        self._dirty = True
        self._configure()
        self._used[...] = np.nan
        if last_lr is not None:
            self._used[:, 0] = [float(v) for v in last_lr]
        elif steps > 0:         # an older checkpoint: the lr the schedule gave last
            self._used[:, 0] = [v["lr"] for v in self._engine.group_values(steps - 1)]

    def save(self, path):
        """Write the state dict to ``path`` as ``.npz`` (no pickle), atomically: a temporary
        file in the same directory, then a rename."""
        write_checkpoint(self.state_dict(), path)

    def load(self, path):
        """Restore what :meth:`save` wrote. A truncated, corrupted or mismatched file raises
        ``ValueError`` and changes nothing."""
        self.load_state_dict(read_checkpoint(path, f"{self._name}.load"))

    # ---- pure-NumPy twin of the step, for tests and demos ---------------------------------
    def step_reference(self, grads):
        """The same update as :meth:`step`, computed by :mod:`fastlr.reference` in Python
        (slow; the oracle the tests hold :meth:`step` to)."""
        if isinstance(grads, np.ndarray):
            flat, grads, off = grads.reshape(-1), [], 0
            for p in self._params:
                grads.append(flat[off:off + p.size].reshape(p.shape))
                off += p.size
        if len(grads) != len(self._params):
            raise ValueError(f"{self._name}.step_reference: got {len(grads)} grads for "
                             f"{len(self._params)} params")
        grads = [np.asarray(g) for g in grads]
        if self._skip_nonfinite and not all(np.isfinite(g).all() for g in grads):
            self._skipped += 1
            return False
        if self._max_grad_norm is not None:
            norm = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
            coef = self._max_grad_norm / (norm + 1e-6)
            scale = 1.0 if coef >= 1.0 else coef
            if scale != 1.0:
                grads = [g * g.dtype.type(scale) for g in grads]
        values = self._values_at(self._t)
        index = 0
        fn = getattr(reference, self._kernel)
        for g, (group, v) in enumerate(zip(self.param_groups, values)):
            for p in group["params"]:
                kwargs = self._reference_kwargs(group, v, index)
                out = fn(p, grads[index], **kwargs)
                if self._scalar:
                    self._mu_product[index] = out
                index += 1
            self._used[g] = [v["lr"], v["momentum"], v["beta1"], v["weight_decay"]]
        self._counts += 1
        self._t += 1
        return True if self._skip_nonfinite else None


def _plain(value):
    if isinstance(value, Schedule) or callable(value):
        return {"schedule": repr(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _is_marker(value):
    return isinstance(value, dict) and set(value) == {"schedule"}


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
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or \
            not 0 <= value < 2 ** 63:
        raise ValueError(f"{name}: {what} must be an int in [0, 2**63), got {value!r}")
    return int(value)


