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
# torch options that select another implementation; only these values are accepted.
_UNSUPPORTED = {
    "foreach": (None, False),
    "fused": (None, False),
    "capturable": (False,),
    "differentiable": (False,),
}
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
        # Loaded state tensors are cast to each parameter's dtype and device by torch; a
        # buffer whose memory layout differs from the parameter's (or that is the parameter
        # itself) is copied into the parameter's layout, as the kernels need.
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st or p.device.type != "cpu" or p.dtype not in _FLOAT_DTYPES:
                    continue
                pv = p.detach().numpy()
                for key, value in list(st.items()):
                    if (key == "step" or not isinstance(value, torch.Tensor)
                            or value.shape != p.shape or value.dtype != p.dtype
                            or value.device.type != "cpu" or value.layout != torch.strided):
                        continue
                    v = value.detach()
                    vv = v.numpy() if not (v.is_neg() or v.is_conj()) else None
                    if (vv is None or not _same_layout(vv, pv)
                            or np.may_share_memory(vv, pv)):
                        buf = torch.empty_like(p, memory_format=torch.preserve_format,
                                               requires_grad=False)
                        buf.copy_(v)
                        st[key] = buf

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
        """Validate everything and return the work: nothing is written here."""
        cls = f"fastlr.compat.torch.{type(self).__name__}"
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
                where = self._where(gi, k, index)
                pv, gv = self._check_param(where, p, g)
                st = self.state.get(p)
                bufs = {}
                step = 0
                if st:
                    for name in names:
                        t = st.get(name)
                        if t is not None:
                            bufs[name] = self._check_buffer(where, name, t, p, pv)
                    if self._step_state:
                        step = self._read_step(where, st)
                    elif "momentum_buffer" in bufs:
                        step = 1        # SGD: the buffer exists (torch: "not None")
                work.append((p, pv, gv, bufs, step))
            plan.append((group, hyper, names, work))
        return plan

    def _apply(self, plan):
        fn = self._kernel
        n_threads = self.n_threads
        updated = []
        for group, hyper, names, work in plan:
            for p, pv, gv, bufs, step in work:
                st = self.state[p]
                new = {}
                for name in names:
                    if name not in bufs:
                        t = torch.zeros_like(p, memory_format=torch.preserve_format,
                                             requires_grad=False)
                        new[name] = t
                        bufs[name] = t.numpy()
                if self._takes_step:
                    fn(pv, gv, **bufs, step=step + 1, n_threads=n_threads, **hyper)
                else:
                    fn(pv, gv, **bufs, n_threads=n_threads, **hyper)
                st.update(new)
                if self._step_state:
                    self._write_step(st, step + 1)
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
    def _check_param(where, p, g):
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
        if g.is_neg():
            g = g.resolve_neg()          # the grad is only read: a resolved copy is fine
        pv = p.detach().numpy()
        gv = g.detach().numpy()
        if not (pv.flags.c_contiguous or pv.flags.f_contiguous):
            raise ValueError(f"{where} is not contiguous (shape {tuple(p.shape)}, strides "
                             f"{tuple(p.stride())}); an in-place update needs a contiguous "
                             f"tensor (p.data = p.data.contiguous() makes one)")
        if not _same_layout(gv, pv):
            raise ValueError(f"{where} is {_layout(pv)} but its gradient is {_layout(gv)} "
                             f"(strides {tuple(g.stride())}); the gradient must have the "
                             f"parameter's layout")
        if gv.size and np.may_share_memory(pv, gv):
            raise ValueError(f"{where} and its gradient share memory")
        return pv, gv

    @staticmethod
    def _check_buffer(where, name, t, p, pv):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: state[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.device.type != "cpu" or t.dtype != p.dtype:
            raise TypeError(f"{where}: state[{name!r}] is a {t.dtype} tensor on {t.device}, "
                            f"but the parameter is a {p.dtype} tensor on the cpu")
        if t.shape != p.shape:
            raise ValueError(f"{where}: state[{name!r}] has shape {tuple(t.shape)} but the "
                             f"parameter has shape {tuple(p.shape)}")
        if t.layout != torch.strided or t.is_neg():
            raise TypeError(f"{where}: state[{name!r}] is not a plain dense tensor")
        tv = t.detach().numpy()
        if not _same_layout(tv, pv):
            raise ValueError(f"{where}: state[{name!r}] is {_layout(tv)} but the parameter "
                             f"is {_layout(pv)}; they must share one layout")
        return tv

    @staticmethod
    def _read_step(where, st):
        s = st.get("step")
        if s is None:
            raise ValueError(f"{where}: its state has no 'step' (state keys: "
                             f"{sorted(map(str, st))})")
        try:
            v = float(s)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where}: state['step'] must be a number or a one-element "
                            f"tensor, got {type(s).__name__}") from None
        if not (v >= 0 and v == int(v) and v < 2.0 ** 62):
            raise ValueError(f"{where}: state['step'] must be a whole number >= 0, got {v}")
        return int(v)

    @staticmethod
    def _write_step(st, n):
        s = st.get("step")
        if isinstance(s, torch.Tensor) and s.device.type == "cpu" and s.numel() == 1 \
                and not s.requires_grad:
            s.detach().numpy()[...] = n          # in place, as torch's step_t += 1
        else:
            st["step"] = torch.tensor(float(n), dtype=_scalar_dtype())


def _same_layout(a, p):
    """Whether ``a`` is contiguous in ``p``'s order (the kernels' rule)."""
    return a.flags.c_contiguous if p.flags.c_contiguous else a.flags.f_contiguous


def _check_options(where, options):
    for key, allowed in _UNSUPPORTED.items():
        value = options.get(key, allowed[0])
        if not any(value is a for a in allowed):
            shown = " or ".join(repr(a) for a in allowed)
            raise ValueError(f"{where}: {key}={value!r} is not supported (fastlr's kernels do "
                             f"the update on CPU tensors); pass {key}={shown}, or use "
                             f"torch.optim for {key}")


class SGD(_FastlrStep, torch.optim.SGD):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize) whose
    update runs in ``fastlr.kernels.sgd``. ``n_threads``: the kernels' thread count
    (None: ``fastlr.get_num_threads()``)."""

    _kernel = staticmethod(_kernels.sgd)
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
