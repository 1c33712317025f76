"""``torch.optim`` optimizers whose update runs in fastlr's kernels (needs PyTorch).

``SGD``, ``RMSprop``, ``Adam`` and ``AdamW`` are subclasses of the ``torch.optim`` classes of
the same names: the same constructor (plus an optional ``n_threads``), defaults, argument
checks, ``param_groups``, ``state``, ``state_dict()`` / ``load_state_dict()``, hooks and LR
schedulers. Only ``step()`` differs: it hands zero-copy NumPy views of each CPU float32 /
float64 parameter, its gradient and its state tensors to ``fastlr.kernels`` (``sgd``,
``rmsprop``, ``adam``, ``adamw``), which update them in place with torch's single-tensor
arithmetic.

    import torch
    from fastlr.compat.torch import AdamW

    model = torch.nn.Linear(10, 1)
    opt = AdamW(model.parameters(), lr=1e-3)        # torch's signature and defaults
    loss = model(torch.randn(4, 10)).square().mean()
    loss.backward()
    opt.step()                                      # fastlr.kernels.adamw on each tensor

State has torch's names and types (``step`` a scalar tensor, ``exp_avg`` ..., tensors of the
parameter's shape, dtype and layout), so a state dict saved by ``torch.optim.Adam`` loads into
``fastlr.compat.torch.Adam`` and back. Like torch, ``load_state_dict`` keeps (does not copy)
loaded state tensors that already have the parameter's dtype and device; ones whose memory
layout differs from the parameter's are copied into its layout.

Refused (``TypeError`` / ``ValueError`` naming the group or parameter, raised by ``step()``
before any tensor is written, after validating every parameter of every group): tensors not
on the CPU, dtypes other than float32/float64 (float16, bfloat16, complex, integers), sparse
gradients, non-contiguous parameters or gradients (C or F order is fine; gradient and state
must share the parameter's layout), gradients whose dtype or shape differ from the
parameter's, out-of-range hyperparameters set in ``param_groups`` after construction, and
``foreach=True``, ``fused=True``, ``capturable=True``, ``differentiable=True`` (refused at
construction and in ``add_param_group``).
"""

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastlr.compat.torch needs PyTorch, which is not installed. Install it the way you "
        "normally do (e.g. `pip install torch`; on a CPU-only machine `pip install "
        "torch==2.13.0` gives the CPU build); fastlr itself does not depend on it."
    ) from exc

import numpy as np

from fastlr import kernels as _kernels

__all__ = ["SGD", "RMSprop", "Adam", "AdamW"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
_STRIDED = torch.strided
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


class _FastlrStep:
    """The step shared by the bridge classes (mixed in before the torch class).

    Subclasses set ``_kernel`` (a ``fastlr.kernels`` function) and implement
    ``_hyper(group)`` (the kernel's keyword arguments) and ``_state_names(group)``.
    """

    _kernel = None
    _positional = ()        # the kernel's state arguments, in order
    _takes_step = True      # the kernel takes the 1-based update number
    _step_state = True      # torch keeps state["step"] (Adam, RMSprop; not SGD)

    # -- construction ---------------------------------------------------------------------
    def _fastlr_init(self, n_threads, options):
        name = type(self).__name__
        _check_options(f"fastlr.compat.torch.{name}", options)
        if n_threads is not None:
            # the kernels' own check (type and range), on an empty update
            try:
                _kernels.sgd(_EMPTY, _EMPTY, step=1, lr=0.0, n_threads=n_threads)
            except (TypeError, ValueError) as exc:
                raise type(exc)(str(exc).replace("fastlr.kernels.sgd",
                                                 f"fastlr.compat.torch.{name}")) from None
        self.n_threads = n_threads

    def add_param_group(self, param_group):
        if isinstance(param_group, dict):
            merged = {**getattr(self, "defaults", {}), **param_group}
            _check_options(f"fastlr.compat.torch.{type(self).__name__}.add_param_group",
                           merged)
        super().add_param_group(param_group)

    def __getstate__(self):
        state = super().__getstate__()
        state["n_threads"] = getattr(self, "n_threads", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("n_threads", None)

    # -- checkpoints ----------------------------------------------------------------------
    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
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
                    if (key == "step" or not isinstance(value, torch.Tensor)
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
    def step(self, closure=None):
        """Perform a single optimization step (``closure``: re-evaluates the model and
        returns the loss, run with gradients enabled, as torch). Returns the closure's loss.

        Every parameter of every group is validated first; on error nothing is written.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._plan()
        self._apply(plan)
        return loss

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
        plan = []
        index = -1
        for gi, group in enumerate(self.param_groups):
            _check_options(f"{cls}: param_groups[{gi}]", group)
            hyper = self._hyper(group)
            names = self._state_names(group)
            self._check_hyper(cls, gi, hyper, names)
            work = []
            for k, p in enumerate(group["params"]):
                index += 1
                g = p.grad
                if g is None:
                    continue
                try:
                    if not (isinstance(p, torch.Tensor) and isinstance(g, torch.Tensor)
                            and p.is_cpu and g.is_cpu and p.dtype in _FLOAT_DTYPES
                            and g.dtype is p.dtype and p.layout is _STRIDED
                            and g.layout is _STRIDED):
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
                    pv, gv = self._diagnose(self._where(gi, k, index), p, g)
                st = self.state.get(p)
                bufs = dict.fromkeys(positional)
                step = 0
                step_view = None
                if st:
                    for name in names:
                        t = st.get(name)
                        if t is not None:
                            bufs[name] = self._check_buffer(self._where, (gi, k, index), name,
                                                            t, pv)
                    if step_state:
                        step, step_view = self._read_step(self._where, (gi, k, index), st)
                    elif bufs.get("momentum_buffer") is not None:
                        step = 1        # SGD: the buffer exists (torch: "not None")
                work.append((p, pv, gv, st, bufs, step, step_view))
            plan.append((hyper, names, work))
        return plan

    def _apply(self, plan):
        fn = self._kernel
        takes_step = self._takes_step
        step_state = self._step_state
        updated = []
        for hyper, names, work in plan:
            kw = dict(hyper, n_threads=self.n_threads)
            for p, pv, gv, st, bufs, step, step_view in work:
                new = None
                for name in names:
                    if bufs[name] is None:
                        t = torch.zeros_like(p, memory_format=torch.preserve_format,
                                             requires_grad=False)
                        new = new or {}
                        new[name] = t
                        bufs[name] = t.numpy()
                if takes_step:
                    fn(pv, gv, *bufs.values(), step=step + 1, **kw)
                else:
                    fn(pv, gv, *bufs.values(), **kw)
                if new:
                    if st is None:
                        st = self.state[p]      # (torch's SGD without momentum has none)
                    st.update(new)
                if step_state:
                    if step_view is not None:
                        step_view[()] = step + 1        # in place, as torch's step_t += 1
                    else:
                        st["step"] = torch.tensor(float(step + 1), dtype=_scalar_dtype())
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
        try:
            self._kernel(_EMPTY, _EMPTY, **{name: _EMPTY for name in names},
                         n_threads=self.n_threads, **kw)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{cls}: param_groups[{gi}]: {exc}") from None

    @staticmethod
    def _diagnose(where, p, g):
        """The checks of the fast path one by one, raising the first that fails; returns
        the NumPy views when all pass."""
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

    @staticmethod
    def _read_step(where_fn, at, st):
        """(update count so far, a writable 0-d NumPy view of state['step'] or None)."""
        s = st.get("step")
        if s is None:
            raise ValueError(f"{where_fn(*at)}: its state has no 'step' (state keys: "
                             f"{sorted(map(str, st))})")
        view = None
        try:
            if isinstance(s, torch.Tensor) and s.is_cpu and not s.requires_grad:
                view = s.numpy()
                if view.shape != ():
                    view = view.reshape(())     # a one-element tensor (raises otherwise)
                if not view.flags.writeable:
                    view = None
            v = float(view if view is not None else s)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where_fn(*at)}: state['step'] must be a number or a one-element "
                            f"tensor, got {s!r}") from None
        if not (v >= 0 and v == int(v) and v < 2.0 ** 62):
            raise ValueError(f"{where_fn(*at)}: state['step'] must be a whole number >= 0, got {v}")
        return int(v), view


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


class SGD(_FastlrStep, torch.optim.SGD):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize) whose
    update runs in ``fastlr.kernels.sgd``. ``n_threads``: the kernels' thread count
    (None: ``fastlr.get_num_threads()``)."""

    _kernel = staticmethod(_kernels.sgd)
    _positional = ("momentum_buffer",)
    _step_state = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, n_threads=None):
        self._fastlr_init(n_threads, dict(foreach=foreach, differentiable=differentiable,
                                          fused=fused))
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused)

    @staticmethod
    def _hyper(group):
        return dict(lr=_number(group["lr"]), momentum=_number(group["momentum"]),
                    dampening=_number(group["dampening"]), nesterov=group["nesterov"],
                    weight_decay=_number(group["weight_decay"]), maximize=group["maximize"])

    @staticmethod
    def _state_names(group):
        return ("momentum_buffer",) if _number(group["momentum"]) != 0 else ()


class RMSprop(_FastlrStep, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` (centered, momentum, weight decay, maximize) whose update runs
    in ``fastlr.kernels.rmsprop``. ``n_threads`` as for :class:`SGD`."""

    _kernel = staticmethod(_kernels.rmsprop)
    _positional = ("square_avg", "momentum_buffer", "grad_avg")
    _takes_step = False

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, n_threads=None):
        self._fastlr_init(n_threads, dict(foreach=foreach, differentiable=differentiable,
                                          capturable=capturable))
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, capturable=capturable,
                         foreach=foreach, maximize=maximize, differentiable=differentiable)

    @staticmethod
    def _hyper(group):
        return dict(lr=_number(group["lr"]), alpha=_number(group["alpha"]),
                    eps=_number(group["eps"]), weight_decay=_number(group["weight_decay"]),
                    momentum=_number(group["momentum"]), maximize=group["maximize"])

    @staticmethod
    def _state_names(group):
        names = ("square_avg",)
        if _number(group["momentum"]) > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names


class Adam(_FastlrStep, torch.optim.Adam):
    """``torch.optim.Adam`` (AMSGrad, L2 or decoupled weight decay, maximize) whose update
    runs in ``fastlr.kernels.adam``. ``n_threads`` as for :class:`SGD`."""

    _kernel = staticmethod(_kernels.adam)
    _positional = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 n_threads=None):
        self._fastlr_init(n_threads, dict(foreach=foreach, differentiable=differentiable,
                                          capturable=capturable, fused=fused))
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)

    @staticmethod
    def _hyper(group):
        beta1, beta2 = group["betas"]
        return dict(lr=_number(group["lr"]), beta1=_number(beta1), beta2=_number(beta2),
                    eps=_number(group["eps"]), weight_decay=_number(group["weight_decay"]),
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"])

    @staticmethod
    def _state_names(group):
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")


class AdamW(_FastlrStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled weight decay, default ``weight_decay=1e-2``; AMSGrad,
    maximize) whose update runs in ``fastlr.kernels.adamw``. ``n_threads`` as for
    :class:`SGD`."""

    _kernel = staticmethod(_kernels.adamw)
    _positional = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, n_threads=None):
        self._fastlr_init(n_threads, dict(foreach=foreach, differentiable=differentiable,
                                          capturable=capturable, fused=fused))
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                         capturable=capturable, differentiable=differentiable, fused=fused)

    @staticmethod
    def _hyper(group):
        beta1, beta2 = group["betas"]
        return dict(lr=_number(group["lr"]), beta1=_number(beta1), beta2=_number(beta2),
                    eps=_number(group["eps"]), weight_decay=_number(group["weight_decay"]),
                    maximize=group["maximize"])

    _state_names = staticmethod(Adam._state_names)
