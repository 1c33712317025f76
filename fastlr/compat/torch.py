"""``torch.optim`` optimizers whose update runs in fastlr's kernels (needs PyTorch).

``SGD``, ``RMSprop``, ``Adam``, ``AdamW``, ``Adagrad``, ``Adadelta``, ``Adamax``, ``NAdam``,
``RAdam``, ``Rprop`` and ``ASGD`` (every row of fastlr's optimizer table that names a torch class) are subclasses of
the ``torch.optim`` classes of the same names: the same constructor (plus an optional
``n_threads``), defaults, argument checks, ``param_groups``, ``state``, ``state_dict()`` /
``load_state_dict()``, hooks and LR schedulers. Only ``step()`` differs: it updates each CPU
float32 / float64 parameter and its state tensors in place with fastlr's kernel for the row
(``sgd``, ``rmsprop``, ``adam``, ``adamw``, ...: torch's single-tensor arithmetic).

Two paths, the same bits. The compiled step (``fastlr._core.torch_step``) does the whole
step in one call: it reads every tensor's data pointer, dtype, shape and layout and the
scalar ``step`` afresh (nothing is kept between steps, so ``p.data = ...`` or a replaced
state tensor is simply used), checks them all in C and then runs the C kernels over every
tensor, without the GIL for large totals. It takes C-contiguous plain tensors whose state
exists; anything else (F-ordered or 0-element tensors, tensor subclasses, neg-bit views,
state still to create, ...) and every error go through the Python path, which hands
zero-copy NumPy views to the validated ``fastlr.kernels`` function per tensor and raises
the precise errors below. Either way nothing is written unless every tensor passed.

    import torch
    from fastlr.compat.torch import AdamW

    model = torch.nn.Linear(10, 1)
    opt = AdamW(model.parameters(), lr=1e-3)        # torch's signature and defaults
    loss = model(torch.randn(4, 10)).square().mean()
    loss.backward()
    opt.step()                                      # fastlr.kernels.adamw on each tensor

State has torch's names and types (``step`` a scalar tensor, ``exp_avg`` ..., tensors of the
parameter's shape, dtype and layout; Adagrad's ``sum``, NAdam's ``mu_product`` a scalar
tensor; ASGD's ``eta`` and ``mu`` scalar tensors), so a state dict saved by
``torch.optim.Adam`` loads into ``fastlr.compat.torch.Adam`` and back. ASGD steps through
the Python path, which also writes torch's ``mu`` after each update; its kernel derives
``mu`` from the step and ``t0`` in double and starts ``eta`` at ``lr``, where torch rounds
both to its default dtype: with a float32 default and float64 parameters they differ by
that rounding (about 1e-8 relative). Hyperparameters given as float32 tensors are read as
numbers (``.item()``) and used in double, where torch forms some coefficients from them in
float32 (AdamW's ``1 - lr * weight_decay``): with float64 parameters the results differ by
float32 roundings (up to 4e-7 after 10 AdamW steps); pass floats or float64 tensors for
float64 parity. Like torch, ``load_state_dict`` keeps (does not copy)
loaded state tensors that already have the parameter's dtype and device; ones whose memory
layout differs from the parameter's are copied into its layout.

Refused (``TypeError`` / ``ValueError`` naming the group or parameter, raised by ``step()``
before any tensor is written, after validating every parameter of every group): tensors not
on the CPU, dtypes other than float32/float64 (float16, bfloat16, complex, integers), sparse
gradients, non-contiguous parameters or gradients (C or F order is fine; gradient and state
must share the parameter's layout), gradients whose dtype or shape differ from the
parameter's, state buffers sharing memory with the parameter, its gradient or one another,
inference tensors (made in ``torch.inference_mode()``) as a parameter or in its state when
stepping outside inference mode (torch refuses those in-place updates too; inside inference
mode both update them; a tensor put into ``optimizer.state`` by hand is seen at the next step,
unless written through a parameter's state dict kept from before the last step),
out-of-range hyperparameters set in ``param_groups`` after construction (and ones that are
not a number or a one-element tensor, or a pair such as ``betas`` that is not a pair), and
``foreach=True``, ``fused=True``, ``capturable=True``, ``differentiable=True`` (refused at
construction and in ``add_param_group``).
"""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastlr.compat.torch needs PyTorch, which is not installed. Install it the way you "
        "normally do (e.g. `pip install torch`; on a CPU-only machine `pip install "
        "torch==2.13.0` gives the CPU build); fastlr itself does not depend on it."
    ) from exc

import inspect
import math
import textwrap
import weakref
from collections import defaultdict
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from fastlr import _specs
from fastlr._core.args import threads_arg
from fastlr import kernels as _kernels
from fastlr._core import torch_step as _torch_step

_torch_step.setup(torch.Tensor, torch.nn.Parameter, torch.float32, torch.float64, torch.strided)

#: The bridged classes: every row of the table with a torch class, in table order.
TORCH_CLASSES: Tuple[str, ...] = tuple(o.cls for o in _specs.OPTIMIZERS.values()
                      if o.torch and hasattr(torch.optim, o.torch))

__all__ = list(TORCH_CLASSES) + ["SparseAdam"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
_STRIDED = torch.strided
_inference_mode = torch.is_inference_mode_enabled
_is_inference = torch.Tensor.is_inference
# torch options that select another implementation; only these values are accepted.
# (name, whether None is accepted too): torch's defaults are foreach=None, fused=None,
# capturable=False, differentiable=False.
_UNSUPPORTED = (("foreach", True), ("fused", True), ("capturable", False),
                ("differentiable", False))
# Empty arrays for checking a group's hyperparameters with the kernel itself (a 0-element
# update validates every argument and writes nothing).
_EMPTY = np.empty(0, dtype=np.float64)


def _scalar_dtype():
    """torch's dtype for ``state["step"]`` (float64 when the default dtype is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _number(value):
    """A hyperparameter as a Python number (torch allows 1-element tensors for some)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _layout(a):
    if a.flags.c_contiguous:
        return "C-contiguous"
    if a.flags.f_contiguous:
        return "F-contiguous"
    return f"not contiguous (strides {a.strides})"


#: ``_FastlrStep._inference_state`` once code outside the step reached into the state (see
#: _State): the next step outside inference mode first looks through the state for
#: inference tensors (``_inference_scan``, under 1 us a parameter), then goes on as the
#: Python path would have left the flag.
_TOUCHED = "touched"


class _State(defaultdict):
    """``optimizer.state`` of the bridge classes: torch's ``defaultdict(dict)`` (the compiled
    step reads it and the per-parameter dicts in it as plain dicts: they stay plain dicts),
    which notes in its optimizer's ``_inference_state`` that a tensor may have been put into
    the state by hand when code gets hold of a parameter's state dict or stores one
    (``opt.state[p]["exp_avg"] = t``, ``opt.state[p] = {...}``, ``.get``, ``.items()``,
    ``.values()``, ``.setdefault``, ``.update``, copies), so that the next step looks for
    inference tensors. Not seen: a per-parameter dict kept from before the last step and
    written into later, or copies made by ``dict(opt.state)``. Pickled and copied as a plain
    ``defaultdict`` (``__setstate__`` makes a new one watched; a copy put back as
    ``opt.state`` is looked through at every step, see ``_FastlrStep._inference_state``)."""

    _owner = None           # weakref.ref to the optimizer (set by _watch_state)

    def _touch(self):
        opt = self._owner() if self._owner is not None else None
        if opt is not None and opt._inference_state is not True:
            opt._inference_state = _TOUCHED     # (a tuple of params, too: it may be stale)

    def __reduce__(self):
        return defaultdict, (self.default_factory,), None, None, iter(dict.items(self))

    def copy(self):
        self._touch()                           # (the copy holds the same dicts)
        return defaultdict(self.default_factory, self)

    __copy__ = copy

    def __or__(self, other):
        return self.copy().__or__(other)

    def __ror__(self, other):
        return self.copy().__ror__(other)


def _reader(state):
    """``state.get``, without _State's note (the step's own reads)."""
    return super(_State, state).get if type(state) is _State else state.get


def _noting(name):
    """defaultdict's method ``name``, which first notes (_State._touch) that the state is
    reached."""
    plain = getattr(defaultdict, name)

    def method(self, *args, **kwargs):
        self._touch()
        return plain(self, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"_State.{name}"
    method.__doc__ = plain.__doc__
    return method


for _name in ("__getitem__", "__setitem__", "get", "setdefault", "update", "__ior__", "items",
              "values"):
    setattr(_State, _name, _noting(_name))


class _FastlrStep:
    """The step shared by the bridge classes (mixed in before the torch class).

    The classes are made from the table by :func:`_bridge`, which sets ``_kernel`` (a
    ``fastlr.kernels`` function), ``_hyper(group)`` (the kernel's keyword arguments) and
    ``_state_names(group)`` and the attributes below.
    """

    _kernel = None
    _positional = ()        # the kernel's state arguments, in order
    _keys: Dict[str, str] = {}      # kernel argument name -> torch's state key (Adagrad: sum)
    _fills = ()             # (kernel argument, group option): buffers that start at a value
    _lazy = ()              # buffers torch creates at the first update that uses them
    _scalar = None          # per-param scalar state (NAdam's mu_product), a 0-d tensor
    _scalar_init = 1.0
    _scalar_check = "closed_unit"   # the CHECKS rule of the scalar state
    _takes_step = True      # the kernel takes the 1-based update number
    _step_state = True      # torch keeps state["step"] (Adam, RMSprop; not SGD)
    _family_index = 0       # the family's number in fastlr._core.torch_step
    _fields = ()            # its hyperparameter struct's fields (the compiled step's row)
    _fixed: Dict[str, Any] = {}     # hyperparameters the row fixes (AdamW: decoupled_weight_decay)
    _fast_path = True       # step() tries the compiled step first (False: Python path only)
    _settings = ()          # (group key, a pair's names or (), is a flag) read by _hyper ...
    # Whether state may hold inference tensors (made in torch.inference_mode()): True after
    # a step or add_param_group in inference mode, load_state_dict and unpickling; while
    # True, a step outside inference mode takes the Python path, which checks every state
    # tensor and then sets it to False when none is one, or to the tuple of the params it
    # skipped (no grad) whose state holds one: the compiled step runs while none of those
    # has a grad. _TOUCHED after code reached into the state (``opt.state[p][key] = t``:
    # see _State), or at every step while ``opt.state`` is another object than the _State
    # made for it (replaced by hand: not watched): the next step outside inference mode
    # first finds that tuple or False (_inference_scan), without the Python path. Parameters
    # are checked at every step.
    _inference_state: Any = False

    # -- construction ---------------------------------------------------------------------
    n_threads: Optional[int]

    def _fastlr_init(self, n_threads, options):
        name = type(self).__name__
        _check_options(f"fastlr.compat.torch.{name}", options)
        self.n_threads = None if n_threads is None else threads_arg(
            f"fastlr.compat.torch.{name}", n_threads)

    def add_param_group(self, param_group):
        if isinstance(param_group, dict):
            merged = {**getattr(self, "defaults", {}), **param_group}
            _check_options(f"fastlr.compat.torch.{type(self).__name__}.add_param_group",
                           merged)
        if _inference_mode():
            self._inference_state = True        # (Adagrad makes its state here)
        super().add_param_group(param_group)

    def __getstate__(self):
        state = super().__getstate__()
        state["n_threads"] = getattr(self, "n_threads", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("n_threads", None)
        self._watch_state()
        self._inference_state = True

    def _watch_state(self):
        """Make ``self.state`` (torch's defaultdict, made at construction, by load_state_dict
        and by unpickling) a _State of this optimizer holding the same per-parameter dicts."""
        state = _State(dict, self.state)
        state._owner = weakref.ref(self)
        self.state = state

    def _inference_scan(self):
        """The params whose state holds an inference tensor, a tuple, or False when none
        does (what the Python path leaves in _inference_state), found without a step."""
        get = _reader(self.state)
        return tuple([p for group in self.param_groups for p in group["params"]
                      if _inference_key(get(p)) is not None]) or False

    # -- checkpoints ----------------------------------------------------------------------
    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._inference_state = True
        # Loaded state tensors are cast to each parameter's dtype and device by torch (and
        # kept, not copied, when they already match). A buffer whose memory layout differs
        # from the parameter's, or that shares memory with the parameter or with another
        # buffer of it, is copied into a new tensor in the parameter's layout, as the kernels
        # need. Anything else unusual is left for step() to refuse.
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if (not st or p.device.type != "cpu" or p.dtype not in _FLOAT_DTYPES
                        or p.layout != torch.strided or p.is_neg()):
                    continue
                pv = p.detach().numpy()
                kept = [pv]
                for key, value in list(st.items()):
                    if (key == "step" or key == self._scalar
                            or not isinstance(value, torch.Tensor)
                            or value.shape != p.shape or value.dtype != p.dtype
                            or value.device.type != "cpu" or value.layout != torch.strided):
                        continue
                    v = value.detach()
                    vv = None if v.is_neg() else v.numpy()
                    if (vv is None or value.requires_grad or not _same_layout(vv, pv)
                            or any(np.may_share_memory(vv, a) for a in kept)):
                        buf = torch.empty_like(p, memory_format=torch.preserve_format,
                                               requires_grad=False)
                        buf.copy_(v)
                        st[key] = buf
                        vv = buf.numpy()
                    kept.append(vv)

    # -- the step -------------------------------------------------------------------------
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform a single optimization step, as ``torch.optim``'s ``step``.

        Every parameter of every group is validated first; on error nothing is written.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss; run (with gradients enabled, as
            torch does) before the update.

        Returns
        -------
        object
            The closure's loss, or None without a closure.

        Raises
        ------
        TypeError
            A parameter, its gradient or a state tensor is not a dense float32/float64 CPU
            tensor, or their dtypes differ; the parameter or a state tensor is an inference
            tensor and the step runs outside ``torch.inference_mode()``; a group setting is not a number or a one-element
            tensor (a flag: not True or False; a pair such as ``betas``: not a sequence).
        ValueError
            Shapes or layouts differ, a tensor is not contiguous, state shares memory,
            a hyperparameter set in ``param_groups`` is out of range or missing, a pair
            has another length, or a group sets
            ``foreach``, ``fused``, ``capturable`` or ``differentiable`` to a refused value.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if _inference_mode():
            self._inference_state = True        # the state it makes is inference tensors
        elif type(self.state) is not _State and self._inference_state is not True:
            self._inference_state = _TOUCHED    # replaced by hand: looked through each step
        if not (self._fast_path and self._fast_step()):
            self._apply(self._plan())
        return loss

    def _fast_step(self):
        """The whole step in one compiled call (fastlr._core.torch_step.fast_step); False
        when it declined (a group setting to refuse, a tensor or state outside its fast
        path, lazy state still to create) before writing anything: then the Python path
        (_plan / _apply) does the step or raises the precise error."""
        positional = self._positional
        keys = self._keys
        lazy = self._lazy
        fixed = self._fixed
        fields = self._fields
        # outside inference mode torch refuses to update inference tensors in place: the
        # Python path raises that error (state: see _inference_state)
        outside = not _inference_mode()
        frozen = self._inference_state
        if outside and frozen:
            if frozen is _TOUCHED:
                frozen = self._inference_state = self._inference_scan()
            if frozen is True or (frozen and any([p.grad is not None for p in frozen])):
                return False
        try:
            groups = []
            for group in self.param_groups:
                _check_options("", group)
                if outside and any(map(_is_inference, group["params"])) and any(
                        p.grad is not None for p in group["params"] if p.is_inference()):
                    return False        # (one without a grad is skipped: no matter)
                hyper = self._hyper(group)
                names = self._state_names(group)
                self._check_hyper("", 0, hyper, names)
                if fixed:
                    hyper.update(fixed)
                row = tuple([hyper.get(name, 0.0) for name in fields])
                state_keys = tuple([keys[n] if n in names else None for n in positional]
                                   + [None] * (3 - len(positional)))
                lazy_step = 2 if any(n in names for n in lazy) else 1
                groups.append((group["params"], row, state_keys, lazy_step))
            nt = threads_arg("", self.n_threads)
            updated = _torch_step.fast_step(
                self.state, groups, self._family_index,
                "step" if self._step_state else None, self._scalar, nt)
        except Exception:       # the Python path raises it again, with the precise message
            return False
        if updated is None:
            return False
        if updated:
            torch.autograd.graph.increment_version(updated)
        return True

    def _where(self, gi, k, index):
        return (f"fastlr.compat.torch.{type(self).__name__}: parameter {index} "
                f"(param_groups[{gi}]['params'][{k}])")

    def _plan(self):
        """Validate every group and parameter and return the work; nothing is written.

        The fast path costs a few microseconds per parameter (mostly the NumPy views);
        anything unusual goes through ``_diagnose``, which raises the precise error.
        """
        cls = f"fastlr.compat.torch.{type(self).__name__}"
        positional = self._positional
        step_state = self._step_state
        keys = self._keys
        scalar = self._scalar
        lazy = self._lazy
        outside = not _inference_mode()     # inference tensors are refused (as torch does)
        frozen = []                         # skipped params whose state holds one
        get = _reader(self.state)
        plan = []
        index = -1
        for gi, group in enumerate(self.param_groups):
            _check_options(f"{cls}: param_groups[{gi}]", group)
            try:
                hyper = self._hyper(group)
                names = self._state_names(group)
                fills = None
                if self._fills:
                    fills = {name: float(_number(group[option]))
                             for name, option in self._fills}
            except Exception as exc:
                self._bad_setting(f"{cls}: param_groups[{gi}]", group, exc)
            self._check_hyper(cls, gi, hyper, names)
            work = []
            for k, p in enumerate(group["params"]):
                index += 1
                g = p.grad
                if g is None:
                    if outside and self._inference_state and \
                            _inference_key(get(p)) is not None:
                        frozen.append(p)
                    continue
                try:
                    if not (isinstance(p, torch.Tensor) and isinstance(g, torch.Tensor)
                            and p.is_cpu and g.is_cpu and p.dtype in _FLOAT_DTYPES
                            and g.dtype is p.dtype and p.layout is _STRIDED
                            and g.layout is _STRIDED
                            and not (outside and p.is_inference())):
                        raise _Unusual
                    pv = p.detach().numpy()
                    gv = g.numpy() if not g.requires_grad else g.detach().numpy()
                    if not (gv.shape == pv.shape and _contiguous(pv) and _same_layout(gv, pv)
                            and not (pv.size and np.may_share_memory(pv, gv))):
                        raise _Unusual
                except (_Unusual, TypeError, RuntimeError):
                    # a neg-bit grad is only read: a resolved copy is fine
                    if isinstance(g, torch.Tensor) and g.is_neg() and not p.is_neg():
                        g = g.resolve_neg()
                    pv, gv = self._diagnose(self._where(gi, k, index), p, g, outside)
                st = get(p)
                bufs = dict.fromkeys(positional)
                step = 0
                step_view = None
                extra = None
                if st:
                    if outside and self._inference_state:   # (else none is one)
                        key = _inference_key(st)
                        if key is not None:
                            raise _inference_state_error(self._where(gi, k, index), key)
                    for name in names:
                        t = st.get(keys[name])
                        if t is not None:
                            bufs[name] = self._check_buffer(self._where, (gi, k, index),
                                                            keys[name], t, pv)
                    if step_state:
                        step, step_view = self._read_step(self._where, (gi, k, index), st)
                    else:
                        for name in lazy:
                            if bufs[name] is not None:
                                step = 1    # SGD: the buffer exists (torch: "not None")
                    if scalar is not None:
                        extra = self._read_scalar(self._where, (gi, k, index), st)
                    _check_disjoint(self._where, (gi, k, index), pv, gv, bufs, keys)
                work.append((p, pv, gv, st, bufs, step, step_view, extra))
            plan.append((hyper, names, work, fills))
        if outside:     # every state tensor was checked (while the flag was set)
            self._inference_state = tuple(frozen) or False
        return plan

    def _apply(self, plan):
        fn = self._kernel
        takes_step = self._takes_step
        step_state = self._step_state
        keys = self._keys
        scalar = self._scalar
        updated = []
        for hyper, names, work, fills in plan:
            kw = dict(hyper, n_threads=self.n_threads)
            for p, pv, gv, st, bufs, step, step_view, extra in work:
                new = None
                for name in names:
                    if bufs[name] is None:
                        t = torch.zeros_like(p, memory_format=torch.preserve_format,
                                             requires_grad=False)
                        if fills and name in fills:
                            t.fill_(fills[name])
                        new = new or {}
                        new[keys[name]] = t
                        bufs[name] = t.numpy()
                if scalar is not None:
                    value, view = extra if extra is not None else (self._scalar_init, None)
                    kw[scalar] = self._scalar_in(
                        value, step + 1, hyper,
                        view.dtype if view is not None else _NP_SCALAR[_scalar_dtype()])
                if takes_step:
                    out = fn(pv, gv, *bufs.values(), step=step + 1, **kw)
                else:
                    out = fn(pv, gv, *bufs.values(), **kw)
                if new:
                    if st is None:
                        st = self.state[p]      # (torch's SGD without momentum has none)
                    st.update(new)
                if scalar is not None:
                    if view is not None:
                        view[()] = out                  # in place, as torch's *= mu
                    else:
                        st[scalar] = torch.tensor(out, dtype=_scalar_dtype())
                if step_state:
                    if step_view is not None:
                        step_view[()] = step + 1        # in place, as torch's step_t += 1
                    else:
                        st["step"] = torch.tensor(float(step + 1), dtype=_scalar_dtype())
                self._after_update(st, step + 1, hyper)
                updated.append(p)
        if updated:
            # the update went through NumPy views: tell autograd the tensors changed, as
            # torch's in-place ops do (a graph that saved them then refuses to backward)
            torch.autograd.graph.increment_version(updated)

    # -- checks ---------------------------------------------------------------------------
    def _check_hyper(self, cls, gi, hyper, names):
        kw = dict(hyper)
        if self._takes_step:
            kw["step"] = 1
        if self._scalar is not None:
            kw[self._scalar] = self._scalar_init
        try:
            self._kernel(_EMPTY, _EMPTY, **{name: _EMPTY for name in names},
                         n_threads=self.n_threads, **kw)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{cls}: param_groups[{gi}]: {exc}") from None

    def _bad_setting(self, where, group, exc):
        """Raise the precise error for a group setting that ``_hyper``, ``_state_names`` or
        the fills could not read (``exc``): a missing key, a pair that is not a pair, a
        value that is not a number or a one-element tensor."""
        for key, members, flag in self._settings:
            if key not in group:
                raise ValueError(f"{where}: it has no {key!r} setting") from None
            value = group[key]
            items = [(key, value)]
            if members:
                pair = f"{key} must be a pair ({', '.join(members)})"
                try:
                    values = list(value)
                except (TypeError, RuntimeError):
                    raise TypeError(f"{where}: {pair}, got {value!r}") from None
                if len(values) != len(members):
                    raise ValueError(f"{where}: {pair}, got {value!r} ({len(values)} "
                                     f"value{'s' if len(values) != 1 else ''})") from None
                items = [(f"{key}[{i}]", v) for i, v in enumerate(values)]
            for label, v in items:
                try:
                    bool(v) if flag else _number(v)
                except Exception:
                    kind = "True or False" if flag else "a number or a one-element tensor"
                    raise TypeError(f"{where}: {label} must be {kind}, got {v!r}") from None
        raise TypeError(f"{where}: its settings could not be read ({type(exc).__name__}: "
                        f"{exc})") from exc

    @staticmethod
    def _diagnose(where, p, g, outside=False):
        """The checks of the fast path one by one, raising the first that fails; returns
        the NumPy views when all pass. ``outside``: not in inference mode (an inference
        tensor is refused)."""
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{where} is a {type(p).__name__}, not a torch.Tensor")
        if p.device.type != "cpu":
            raise TypeError(f"{where} is on device {p.device}; fastlr.compat.torch updates CPU "
                            f"tensors only (use torch.optim for other devices)")
        if p.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{where} has dtype {p.dtype}; fastlr.compat.torch updates "
                            f"float32 and float64 tensors only")
        if p.layout != torch.strided:
            raise TypeError(f"{where} has layout {p.layout}; only dense (strided) tensors "
                            f"are supported")
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{where}: its grad is a {type(g).__name__}, not a torch.Tensor")
        if g.layout != torch.strided:
            raise TypeError(f"{where} has a sparse gradient (layout {g.layout}); "
                            f"fastlr.compat.torch supports dense gradients only")
        if g.device.type != "cpu":
            raise TypeError(f"{where} has its gradient on device {g.device}; expected cpu")
        if g.dtype != p.dtype:
            raise TypeError(f"{where} has dtype {p.dtype} but its gradient has dtype "
                            f"{g.dtype}; they must be equal")
        if g.shape != p.shape:
            raise ValueError(f"{where} has shape {tuple(p.shape)} but its gradient has shape "
                             f"{tuple(g.shape)}; they must be equal")
        if p.is_neg():
            raise TypeError(f"{where} is a negative view (torch._neg_view); it cannot be "
                            f"updated in place through NumPy")
        if outside and p.is_inference():
            raise _inference_param_error(where)
        try:
            pv = p.detach().numpy()
            gv = g.detach().numpy()
        except (TypeError, RuntimeError) as exc:
            raise TypeError(f"{where}: no NumPy view of the tensor ({exc})") from None
        if not _contiguous(pv):
            raise ValueError(f"{where} is not contiguous (shape {tuple(p.shape)}, strides "
                             f"{tuple(p.stride())}); an in-place update needs a contiguous "
                             f"tensor (p.data = p.data.contiguous() makes one)")
        if not _same_layout(gv, pv):
            raise ValueError(f"{where} is {_layout(pv)} but its gradient is {_layout(gv)} "
                             f"(strides {tuple(g.stride())}); the gradient must have the "
                             f"parameter's layout")
        if pv.size and np.may_share_memory(pv, gv):
            raise ValueError(f"{where} and its gradient share memory")
        return pv, gv

    @staticmethod
    def _check_buffer(where_fn, at, name, t, pv):
        try:
            if not (isinstance(t, torch.Tensor) and not t.requires_grad):
                raise _Unusual
            tv = t.numpy()
            if tv.dtype == pv.dtype and tv.shape == pv.shape and _same_layout(tv, pv):
                return tv
        except (_Unusual, TypeError, RuntimeError):
            pass
        where = where_fn(*at)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: state[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.device.type != "cpu" or t.dtype != _TORCH_DTYPE[pv.dtype.type]:
            raise TypeError(f"{where}: state[{name!r}] is a {t.dtype} tensor on {t.device}, "
                            f"but the parameter is a {_TORCH_DTYPE[pv.dtype.type]} tensor on "
                            f"the cpu")
        if tuple(t.shape) != pv.shape:
            raise ValueError(f"{where}: state[{name!r}] has shape {tuple(t.shape)} but the "
                             f"parameter has shape {pv.shape}")
        if t.layout != torch.strided or t.is_neg() or t.requires_grad:
            raise TypeError(f"{where}: state[{name!r}] is not a plain dense tensor without "
                            f"requires_grad")
        tv = t.numpy()
        raise ValueError(f"{where}: state[{name!r}] is {_layout(tv)} but the parameter is "
                         f"{_layout(pv)}; they must share one layout")

    def _read_scalar(self, where_fn, at, st):
        """(the scalar state's value, a writable 0-d NumPy view of its tensor or None)."""
        v, view = _scalar_state(where_fn, at, st, self._scalar)
        low, high, _, text, _ = _specs.CHECKS[self._scalar_check]
        if not (low <= v and (high is None or v <= high) and math.isfinite(v)):
            raise ValueError(f"{where_fn(*at)}: state[{self._scalar!r}] must be {text}, "
                             f"got {v}")
        return v, view

    @staticmethod
    def _scalar_in(value, step, hyper, dtype):
        """The scalar state handed to the kernel for update ``step`` (its stored value; a
        family may adjust it for the precision torch keeps it in, see _SCALAR_IN)."""
        return value

    @staticmethod
    def _after_update(st, step, hyper):
        """Scalar state torch keeps that the kernel does not return (ASGD's mu), after
        update ``step``; see _AFTER_UPDATE."""

    @staticmethod
    def _read_step(where_fn, at, st):
        """(update count so far, a writable 0-d NumPy view of state['step'] or None)."""
        v, view = _scalar_state(where_fn, at, st, "step")
        if not (v >= 0 and v == int(v) and v < 2.0 ** 62):
            raise ValueError(f"{where_fn(*at)}: state['step'] must be a whole number >= 0, got {v}")
        return int(v), view


def _scalar_state(where_fn, at, st, key):
    """(the value of the scalar state ``st[key]``, a writable 0-d NumPy view of its tensor or
    None when it is not a writable CPU tensor). ``where_fn(*at)`` names the parameter in an
    error (formatted only then: this runs per tensor per step)."""
    s = st.get(key)
    if s is None:
        raise ValueError(f"{where_fn(*at)}: its state has no {key!r} (state keys: "
                         f"{sorted(map(str, st))})")
    view = None
    try:
        if isinstance(s, torch.Tensor) and s.is_cpu and not s.requires_grad:
            view = s.numpy()
            if view.shape != ():
                view = view.reshape(())     # a one-element tensor (raises otherwise)
            if not view.flags.writeable:
                view = None
        v = float(view if view is not None else
                  s.detach() if isinstance(s, torch.Tensor) else s)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where_fn(*at)}: state[{key!r}] must be a number or a one-element tensor, "
                        f"got {s!r}") from None
    return v, view


def _inference_key(st, read_only=()):
    """The key of the first inference tensor in the state dict ``st`` (None if none), not
    counting the keys in ``read_only`` (state the step only reads)."""
    if st:
        for key, value in st.items():
            if isinstance(value, torch.Tensor) and value.is_inference() and \
                    key not in read_only:
                return key
    return None


def _inference_param_error(where):
    return TypeError(f"{where} is an inference tensor (made in torch.inference_mode()); "
                     f"as torch, it is not updated in place outside inference mode "
                     f"(step inside torch.inference_mode(), or optimize a clone)")


def _inference_state_error(where, key):
    return TypeError(f"{where}: state[{key!r}] is an inference tensor (made in "
                     f"torch.inference_mode()); as torch, it is not updated in place outside "
                     f"inference mode (step inside torch.inference_mode(), or replace the "
                     f"state with a clone)")


def _refuse_inference(where_fn, at, p, st, read_only=()):
    """The inference-tensor check of the bridges that step in Python (Adafactor, Muon,
    SparseAdam, the schedule-free, D-Adaptation and Prodigy bridges), for a step outside
    ``torch.inference_mode()`` (the caller asks ``torch.is_inference_mode_enabled()`` once
    per step): raise the ``TypeError`` this module raises when the parameter ``p`` or a
    tensor of its state dict ``st`` (None: no state) is an inference tensor; torch refuses
    to update those in place outside inference mode. ``read_only``: state keys the step only
    reads (torch reads inference tensors fine). ``where_fn(*at)`` names the parameter
    (formatted only for the error). About 0.5 us a parameter with three state entries; it
    checks every step (no flag as ``_FastlrStep._inference_state``: those steps cost tens of
    microseconds a tensor, and state put into ``optimizer.state`` by hand is checked too)."""
    if p.is_inference():
        raise _inference_param_error(where_fn(*at))
    if st:
        key = _inference_key(st, read_only)
        if key is not None:
            raise _inference_state_error(where_fn(*at), key)


def _check_disjoint(where_fn, at, pv, gv, bufs, keys):
    """No state buffer shares memory with the parameter, its gradient or another buffer
    (checked with the rest, before anything is written)."""
    seen = [("the parameter", pv), ("its gradient", gv)]
    for name, b in bufs.items():
        if b is None or not b.size:
            continue
        for other, a in seen:
            if np.may_share_memory(a, b):
                raise ValueError(f"{where_fn(*at)}: state[{keys[name]!r}] shares memory with "
                                 f"{other}; every state buffer must be a separate tensor")
        seen.append((f"state[{keys[name]!r}]", b))


class _Unusual(Exception):
    """Internal: the fast path of a check saw something that needs the slow path."""


def _contiguous(a):
    flags = a.flags
    return flags.c_contiguous or flags.f_contiguous


def _same_layout(a, p):
    """Whether ``a`` is contiguous in ``p``'s order (the kernels' rule)."""
    return a.flags.c_contiguous if p.flags.c_contiguous else a.flags.f_contiguous


def _check_options(where, options):
    for key, none_ok in _UNSUPPORTED:
        value = options.get(key, False)
        if value is False or (value is None and none_ok):
            continue
        shown = f"{key}=None or False" if none_ok else f"{key}=False"
        raise ValueError(f"{where}: {key}={value!r} is not supported (fastlr's kernels do the "
                         f"update on CPU tensors); pass {shown}, or use torch.optim for "
                         f"{key}")




_NP_SCALAR = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _nadam_mu_product(value, step, hyper, dtype):
    """torch keeps NAdam's mu_product in a tensor of its default dtype; in float32 the
    product an update uses is rounded: ``P = f32(f32(P_prev) * f32(mu_t))``. The kernel
    forms ``P_prev * mu_t`` in double, so it is handed ``P / mu_t``, which gives torch's
    ``P`` to the last bit of a double (at most 1: the kernel's range; at the first update
    ``f32(mu_1)`` may round up, a difference of one float32 rounding)."""
    if dtype == np.float64:
        return value
    mu = hyper["beta1"] * (1.0 - 0.5 * 0.96 ** (step * hyper["momentum_decay"]))
    if mu == 0.0:
        return value
    return min(float(np.float32(value) * np.float32(mu)) / mu, 1.0)


#: Per family: the adjustment of its scalar state for the precision torch stores it in.
_SCALAR_IN = {"nadam": _nadam_mu_product}


def _asgd_mu(st, step, hyper):
    """torch's ASGD keeps ``mu = 1 / max(1, step - t0)`` (the next update's averaging
    weight) in each parameter's state; fastlr's kernel derives it from the step and t0."""
    mu = 1.0 / max(1.0, float(step) - hyper["t0"])
    t = st.get("mu")
    if isinstance(t, torch.Tensor) and t.dim() == 0 and not t.requires_grad:
        t.fill_(mu)                             # in place, as torch's mu.copy_
    else:
        st["mu"] = torch.tensor(mu, dtype=_scalar_dtype())


#: Per family: scalar state torch keeps beside the kernel's (written after each update);
#: such a family takes the Python path (the compiled step does not write it).
_AFTER_UPDATE = {"asgd": _asgd_mu}


def _type_name(annotation, default):
    """A numpydoc type for a torch constructor argument (its default's type)."""
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, tuple):
        return "tuple of float"
    if isinstance(default, (int, float)):
        return "float"
    return "object"


def _class_doc(row, family, sig, switches):
    """The docstring of a bridge class: a summary, then a numpydoc ``Parameters`` section
    generated from torch's constructor signature and the row of ``fastlr._specs``."""
    hypers = {h.name: h for h in family.hypers}
    pairs = {}
    for h in family.hypers:
        if h.pair:
            pairs.setdefault(h.pair, []).append(h)
    lines = [f"``torch.optim.{row.torch}`` ({family.kernel_doc}) whose update runs in "
             f"``fastlr.kernels.{row.kernel}``.", "",
             f"The constructor, defaults, argument checks and state are torch's; only "
             f"``step()`` differs (it runs {row.doc}).", "",
             "Parameters", "----------",
             "params : iterable of torch.Tensor, of dict or of (str, torch.Tensor)",
             "    The parameters to optimize, or parameter groups (dicts), as torch takes "
             "them."]
    for name, par in list(sig.parameters.items())[1:]:
        if name == "params":
            continue
        default = par.default
        shown = "" if default is inspect.Parameter.empty else f", default {default!r}"
        if name in switches:
            none_ok = dict(_UNSUPPORTED)[name]
            accepted = "None or False" if none_ok else "False"
            lines += [f"{name} : bool{' or None' if none_ok else ''}{shown}",
                      f"    Accepted only as {accepted} (fastlr's kernels do the update on "
                      f"CPU tensors); any other value raises ValueError."]
            continue
        if name in row.fixed:
            desc = (f"Fixed to {row.fixed[name]!r} by this class "
                    f"(``fastlr.kernels.{row.kernel}``).")
        elif name in hypers:
            h = hypers[name]
            rule = "" if h.check == "flag" else f", {_specs.CHECKS[h.check][3]}"
            if any(c in h.doc for c in "=/^") and "``" not in h.doc:   # a formula
                desc = f"``{h.doc}``{rule}."
            else:
                desc = f"{h.doc[:1].upper()}{h.doc[1:]}{rule}."
        elif name in pairs:
            desc = "(" + ", ".join(h.name for h in pairs[name]) + "): " + "; ".join(
                f"{h.doc}, {_specs.CHECKS[h.check][3]}" for h in pairs[name]) + "."
        else:
            selects = [st.name for st in family.state if st.when and name in st.when.split()]
            fills = [st.name for st in family.state if st.fill == name]
            if selects:
                desc = ("Selects the variant that keeps "
                        + ", ".join(f"``{row.torch_state.get(n, n)}``" for n in selects)
                        + " in the state.")
            elif fills:
                desc = ("The starting value of "
                        + ", ".join(f"``{row.torch_state.get(n, n)}``" for n in fills) + ".")
            else:
                desc = f"As in ``torch.optim.{row.torch}``."
        lines += [f"{name} : {_type_name(par.annotation, default)}{shown}", f"    {desc}"]
    lines += ["n_threads : int, optional",
              "    The kernels' thread count for this optimizer; None uses "
              ":func:`fastlr.get_num_threads`.",
              "", "Raises", "------",
              "ValueError",
              "    ``" + "``, ``".join(switches) + "`` set to a refused value (also in "
              "``add_param_group``), ``n_threads`` is not in [1, fastlr's maximum], or an "
              "argument torch's constructor refuses.",
              "TypeError",
              "    ``n_threads`` is not an integer or None.",
              "", "Examples", "--------",
              ">>> import torch",
              f">>> from fastlr.compat.torch import {row.cls}",
              ">>> w = torch.nn.Parameter(torch.ones(3))",
              f">>> opt = {row.cls}([w], lr=0.1)",
              ">>> w.grad = torch.full((3,), 0.5)",
              ">>> opt.step()",
              ">>> bool((w < 1).all())",
              "True"]
    out = []
    for line in lines:               # descriptions wrapped at 88 columns
        out += textwrap.wrap(line, 88, subsequent_indent="    ") if line.startswith("    ") \
            else [line]
    return "\n".join(out) + "\n"


def _bridge(row):
    """The ``fastlr.compat.torch`` class of a row of the table: a subclass of its torch
    class whose step runs ``fastlr.kernels.<row.kernel>``."""
    family = _specs.family(row.family)
    base = getattr(torch.optim, row.torch)
    sig = inspect.signature(base.__init__)
    switches = tuple(k for k, _ in _UNSUPPORTED if k in sig.parameters)
    hypers = []          # (kernel keyword, group key, index in a pair or None, is a flag)
    keywords = family.kernel_keywords
    for h in family.hypers:
        if h.name in row.fixed or (keywords and h.name not in keywords):
            continue                # fixed, or not the kernel's (Rprop's lr: a fill)
        index = None
        if h.pair:
            index = [x.name for x in family.hypers if x.pair == h.pair].index(h.name)
        hypers.append((h.name, h.pair or h.name, index, h.check == "flag"))
    # _hyper(group) and _state_names(group) run once per group and step: written out
    # (straight-line code from the row, as a hand-written class would have them)
    items = []
    lines = ["def _hyper(group):"]
    members = {}            # a pair's group key -> its hyperparameters, in order
    for h in family.hypers:
        if h.pair:
            members.setdefault(h.pair, []).append(h.name)
    for key in dict.fromkeys(key for _, key, index, _ in hypers if index is not None):
        # unpacked as torch does (beta1, beta2 = group["betas"]): a pair of another length
        # is refused, not cut short
        lines.append(f"    {', '.join(members[key])}, = group[{key!r}]")
    for name, key, index, flag in hypers:
        value = name if index is not None else f"group[{key!r}]"
        items.append(f"{name}={value}" if flag else f"{name}=_number({value})")
    lines += [f"    return dict({', '.join(items)})", "def _state_names(group):"]
    flags = {h.name for h in family.hypers if h.check == "flag"} | \
        {name for name, default in row.options if isinstance(default, bool)}
    # every group setting those read, for the error when one cannot be read:
    # (group key, a pair's member names or (), is a flag)
    settings = {key: (tuple(members[key]) if index is not None else (), flag)
                for _, key, index, flag in hypers}
    for n in _specs.state_options(family.name):
        settings.setdefault(n, ((), n in flags))
    for st in family.state:
        if st.fill:
            settings.setdefault(st.fill, ((), False))
    lines += [f"    {n} = group[{n!r}]" if n in flags else f"    {n} = _number(group[{n!r}])"
              for n in _specs.state_options(family.name)]
    lines.append("    names = ()")
    for st in family.state:
        add = f"names += ({st.name!r},)"
        lines.append(f"    if {st.when}:\n        {add}" if st.when else f"    {add}")
    lines.append("    return names")
    scope = {"_number": _number}
    exec(compile("\n".join(lines) + "\n", f"<fastlr.compat.torch.{row.cls}>", "exec"), scope)
    _hyper, _state_names = scope["_hyper"], scope["_state_names"]

    def __init__(self, params: Any, *args: Any, n_threads: Optional[int] = None,
                 **kwargs: Any) -> None:
        bound = sig.bind(self, params, *args, **kwargs)
        bound.apply_defaults()
        self._fastlr_init(n_threads, {k: bound.arguments[k] for k in switches})
        base.__init__(self, params, *args, **kwargs)
        self._watch_state()

    __init__.__signature__ = sig.replace(parameters=[
        *sig.parameters.values(),
        inspect.Parameter("n_threads", inspect.Parameter.KEYWORD_ONLY, default=None)])
    __init__.__qualname__ = f"{row.cls}.__init__"
    keys = {st.name: row.torch_state.get(st.name, st.name) for st in family.state}
    attrs = dict(
        __module__=__name__,
        __doc__=_class_doc(row, family, sig, switches),
        __init__=__init__,
        _kernel=staticmethod(getattr(_kernels, row.kernel)),
        _positional=tuple(st.name for st in family.state),
        _keys=keys,
        _fills=tuple((st.name, st.fill) for st in family.state if st.fill),
        _lazy=tuple(st.name for st in family.state if st.lazy),
        _scalar=family.scalar_state[0][0] if family.scalar_state else None,
        _scalar_init=float(family.scalar_state[0][1]) if family.scalar_state else 1.0,
        _scalar_check=family.scalar_check,
        _takes_step=family.uses_step,
        _family_index=_torch_step.FAMILY_INDEX[family.name],
        _fields=_torch_step.FIELDS[family.name],
        _fixed=dict(row.fixed),
        _step_state=row.torch_state.get("step", "step") == "step",
        _hyper=staticmethod(_hyper),
        _settings=tuple((key, members, flag) for key, (members, flag) in settings.items()),
        **({"_scalar_in": staticmethod(_SCALAR_IN[family.name])}
           if family.name in _SCALAR_IN else {}),
        **({"_after_update": staticmethod(_AFTER_UPDATE[family.name]), "_fast_path": False}
           if family.name in _AFTER_UPDATE else {}),
        _state_names=staticmethod(_state_names),
    )
    return type(row.cls, (_FastlrStep, base), attrs)


globals().update({name: _bridge(_specs.OPTIMIZERS[name]) for name in TORCH_CLASSES})

from fastlr.compat._torch_sparse import SparseAdam  # noqa: E402  (row-sparse grads)
from fastlr.compat._torch_muon import Muon  # noqa: E402  (not a table row: its own module)
__all__ += ["Muon"]
from fastlr.compat._torch_adafactor import Adafactor  # noqa: E402  (not a table row: its own module)
__all__.append("Adafactor")
try:  # present when the schedulefree package is installed (the names are absent otherwise)
    from fastlr.compat._torch_schedulefree import SGDScheduleFree, AdamWScheduleFree, RAdamScheduleFree  # noqa: E402
    __all__ += ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]
except ModuleNotFoundError as _exc:  # pragma: no cover
    if _exc.name != "schedulefree":
        raise
try:  # present when the prodigyopt package is installed (the name is absent otherwise)
    from fastlr.compat._torch_prodigy import Prodigy  # noqa: E402
    __all__.append("Prodigy")
except ModuleNotFoundError as _exc:  # pragma: no cover
    if _exc.name != "prodigyopt":
        raise
try:  # present when the dadaptation package is installed (the names are absent otherwise)
    from fastlr.compat._torch_dadapt import DAdaptAdaGrad, DAdaptAdam, DAdaptSGD  # noqa: E402
    __all__ += ["DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad"]
except ModuleNotFoundError as _exc:  # pragma: no cover
    if _exc.name != "dadaptation":
        raise
