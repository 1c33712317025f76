"""The optimizer classes: SGD, RMSprop, Adam, AdamW, Adagrad, Adadelta, Adamax, NAdam, RAdam
(torch.optim) and Lion (optax)."""

import numbers

import numpy as np

from fastlr.optim.base import Optimizer


def _pair(betas):
    return tuple(betas) if isinstance(betas, (list, tuple)) else betas


_NONNEG = (0.0, None, "a finite number >= 0")
_UNIT = (0.0, 1.0, "in [0, 1)")


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (torch.optim.SGD)."""

    _kernel = "sgd"
    _schedulable = ("lr", "momentum", "weight_decay")
    _flags = ("nesterov", "maximize")
    _ranges = {"lr": _NONNEG, "momentum": _NONNEG, "dampening": (-np.inf, None, "finite"),
               "weight_decay": _NONNEG}

    def __init__(self, params, lr=1e-3, *, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False, n_threads=None,
                 max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), n_threads,
                         max_grad_norm, skip_nonfinite)

    _slots = ("momentum_buffer",)
    _optional_state = ("momentum_buffer",)

    def _validate_group(self, group):
        m = group["momentum"]
        if group["nesterov"] and (group["dampening"] != 0 or
                                  (isinstance(m, numbers.Real) and m <= 0)):
            raise ValueError(f"{self._name}: nesterov=True requires momentum > 0 and "
                             f"dampening == 0, got momentum={m!r}, "
                             f"dampening={group['dampening']!r}")

    def _state_names(self, group):
        m = group["momentum"]
        return ("momentum_buffer",) if not isinstance(m, numbers.Real) or m != 0 else ()

    def _live_state(self, i):
        # torch: the momentum buffer is None until momentum is first applied
        st = self._state[i]
        return st if self._started[i] else {k: v for k, v in st.items()
                                            if k != "momentum_buffer"}

    def _reference_kwargs(self, group, v, i):
        buf = self._state[i].get("momentum_buffer")
        use = buf is not None and v["momentum"] != 0
        kwargs = dict(step=2 if self._started[i] else 1, lr=v["lr"],
                      momentum=v["momentum"] if use else 0.0, dampening=group["dampening"],
                      nesterov=group["nesterov"] and use, weight_decay=v["weight_decay"],
                      maximize=group["maximize"], momentum_buffer=buf if use else None)
        if use:
            self._started[i] = 1
        return kwargs


class RMSprop(Optimizer):
    """RMSprop, optionally centered and with momentum (torch.optim.RMSprop)."""

    _kernel = "rmsprop"
    _schedulable = ("lr", "momentum", "weight_decay")
    _flags = ("centered", "maximize")
    _ranges = {"lr": _NONNEG, "alpha": _NONNEG, "eps": _NONNEG, "weight_decay": _NONNEG,
               "momentum": _NONNEG}

    def __init__(self, params, lr=1e-2, *, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, maximize=False, n_threads=None,
                 max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      maximize=maximize), n_threads, max_grad_norm,
                         skip_nonfinite)

    _slots = ("square_avg", "momentum_buffer", "grad_avg")

    def _state_names(self, group):
        m = group["momentum"]
        names = ("square_avg",)
        if not isinstance(m, numbers.Real) or m > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names

    def _reference_kwargs(self, group, v, i):
        st = self._state[i]
        use = "momentum_buffer" in st and v["momentum"] > 0
        return dict(lr=v["lr"], alpha=group["alpha"], eps=group["eps"],
                    weight_decay=v["weight_decay"], momentum=v["momentum"] if use else 0.0,
                    maximize=group["maximize"], square_avg=st["square_avg"],
                    momentum_buffer=st["momentum_buffer"] if use else None,
                    grad_avg=st.get("grad_avg"))


class Adam(Optimizer):
    """Adam with AMSGrad and L2 or decoupled weight decay (torch.optim.Adam)."""

    _kernel = "adam"
    _schedulable = ("lr", "beta1", "weight_decay")
    _flags = ("amsgrad", "maximize", "decoupled_weight_decay")
    _ranges = {"lr": _NONNEG, "beta1": _UNIT, "beta2": _UNIT, "eps": _NONNEG,
               "weight_decay": _NONNEG, "betas": None}

    def __init__(self, params, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, decoupled_weight_decay=False, n_threads=None,
                 max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         n_threads, max_grad_norm, skip_nonfinite)

    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _reference_kwargs(self, group, v, i):
        return dict(step=int(self._counts[i]) + 1, lr=v["lr"], beta1=v["beta1"],
                    beta2=group["betas"][1], eps=group["eps"], weight_decay=v["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"], **self._state[i])


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, ``weight_decay=1e-2`` (torch.optim.AdamW)."""

    def __init__(self, params, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False, n_threads=None, max_grad_norm=None,
                 skip_nonfinite=False):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         n_threads=n_threads, max_grad_norm=max_grad_norm,
                         skip_nonfinite=skip_nonfinite)


_CLOSED_UNIT = (0.0, float(np.nextafter(1.0, 2.0)), "in [0, 1]")   # 1.0 included


class Adagrad(Optimizer):
    """Adagrad with lr decay and L2 weight decay (torch.optim.Adagrad)."""

    _kernel = "adagrad"
    _schedulable = ("lr", "weight_decay")
    _flags = ("maximize",)
    _ranges = {"lr": _NONNEG, "lr_decay": _NONNEG, "weight_decay": _NONNEG,
               "initial_accumulator_value": _NONNEG, "eps": _NONNEG}
    _slots = ("state_sum",)

    def __init__(self, params, lr=1e-2, *, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False, n_threads=None,
                 max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize),
                         n_threads, max_grad_norm, skip_nonfinite)

    def _state_names(self, group):
        return ("state_sum",)

    def _state_fill(self, group):
        return {"state_sum": float(group["initial_accumulator_value"])}

    def _reference_kwargs(self, group, v, i):
        return dict(step=int(self._counts[i]) + 1, lr=v["lr"], lr_decay=group["lr_decay"],
                    weight_decay=v["weight_decay"], eps=group["eps"],
                    maximize=group["maximize"], **self._state[i])


class Adadelta(Optimizer):
    """Adadelta with L2 weight decay (torch.optim.Adadelta)."""

    _kernel = "adadelta"
    _schedulable = ("lr", "weight_decay")
    _flags = ("maximize",)
    _ranges = {"lr": _NONNEG, "rho": _CLOSED_UNIT, "eps": _NONNEG, "weight_decay": _NONNEG}
    _slots = ("square_avg", "acc_delta")

    def __init__(self, params, lr=1.0, *, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False,
                 n_threads=None, max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         n_threads, max_grad_norm, skip_nonfinite)

    def _state_names(self, group):
        return ("square_avg", "acc_delta")

    def _reference_kwargs(self, group, v, i):
        return dict(lr=v["lr"], rho=group["rho"], eps=group["eps"],
                    weight_decay=v["weight_decay"], maximize=group["maximize"],
                    **self._state[i])


class Adamax(Optimizer):
    """Adamax, Adam with an infinity norm (torch.optim.Adamax)."""

    _kernel = "adamax"
    _schedulable = ("lr", "beta1", "weight_decay")
    _flags = ("maximize",)
    _ranges = {"lr": _NONNEG, "beta1": _UNIT, "beta2": _UNIT, "eps": _NONNEG,
               "weight_decay": _NONNEG, "betas": None}
    _slots = ("exp_avg", "exp_inf")

    def __init__(self, params, lr=2e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 maximize=False, n_threads=None, max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay, maximize=maximize),
                         n_threads, max_grad_norm, skip_nonfinite)

    def _state_names(self, group):
        return ("exp_avg", "exp_inf")

    def _reference_kwargs(self, group, v, i):
        return dict(step=int(self._counts[i]) + 1, lr=v["lr"], beta1=v["beta1"],
                    beta2=group["betas"][1], eps=group["eps"], weight_decay=v["weight_decay"],
                    maximize=group["maximize"], **self._state[i])


class NAdam(Optimizer):
    """NAdam, Adam with Nesterov momentum and momentum decay (torch.optim.NAdam).

    Each param's ``mu_product`` (the product of its momentum coefficients so far) is part of
    its state, as in torch: ``opt.state[i]["mu_product"]`` and the state dict.
    """

    _kernel = "nadam"
    _schedulable = ("lr", "beta1", "weight_decay")
    _flags = ("maximize", "decoupled_weight_decay")
    _ranges = {"lr": _NONNEG, "beta1": _UNIT, "beta2": _UNIT, "eps": _NONNEG,
               "weight_decay": _NONNEG, "momentum_decay": _NONNEG, "betas": None}
    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=2e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False,
                 n_threads=None, max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay, momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize),
                         n_threads, max_grad_norm, skip_nonfinite)

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    @property
    def state(self):
        """Per-param state as :attr:`Optimizer.state`, plus its ``mu_product`` (a float)."""
        state = super().state
        for i, st in state.items():
            st["mu_product"] = float(self._mu_product[i])
        return state

    def _reference_kwargs(self, group, v, i):
        return dict(step=int(self._counts[i]) + 1, mu_product=float(self._mu_product[i]),
                    lr=v["lr"], beta1=v["beta1"], beta2=group["betas"][1], eps=group["eps"],
                    weight_decay=v["weight_decay"], momentum_decay=group["momentum_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"], **self._state[i])


class RAdam(Optimizer):
    """RAdam, rectified Adam (torch.optim.RAdam)."""

    _kernel = "radam"
    _schedulable = ("lr", "beta1", "weight_decay")
    _flags = ("maximize", "decoupled_weight_decay")
    _ranges = {"lr": _NONNEG, "beta1": _UNIT, "beta2": _UNIT, "eps": _NONNEG,
               "weight_decay": _NONNEG, "betas": None}
    _slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, maximize=False, n_threads=None,
                 max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, betas=_pair(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize),
                         n_threads, max_grad_norm, skip_nonfinite)

    def _state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _reference_kwargs(self, group, v, i):
        return dict(step=int(self._counts[i]) + 1, lr=v["lr"], beta1=v["beta1"],
                    beta2=group["betas"][1], eps=group["eps"], weight_decay=v["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"], **self._state[i])


class Lion(Optimizer):
    """Lion, the sign of interpolated momentum, as optax.lion defines it (torch has none).

    ``u = sign((1 - b1) g + b1 m)``, ``m = (1 - b2) g + b2 m``,
    ``p = p - lr (u + weight_decay p)``. Defaults as optax (``betas=(0.9, 0.99)``,
    ``weight_decay=1e-3``); ``lr=1e-4`` (Lion wants a 3-10x smaller lr than AdamW).
    """

    _kernel = "lion"
    _schedulable = ("lr", "beta1", "weight_decay")
    _flags = ("maximize",)
    _ranges = {"lr": _NONNEG, "beta1": _CLOSED_UNIT, "beta2": _CLOSED_UNIT,
               "weight_decay": _NONNEG, "betas": None}
    _slots = ("exp_avg",)

    def __init__(self, params, lr=1e-4, *, betas=(0.9, 0.99), weight_decay=1e-3,
                 maximize=False, n_threads=None, max_grad_norm=None, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, betas=_pair(betas), weight_decay=weight_decay,
                                      maximize=maximize),
                         n_threads, max_grad_norm, skip_nonfinite)

    def _state_names(self, group):
        return ("exp_avg",)

    def _reference_kwargs(self, group, v, i):
        return dict(lr=v["lr"], beta1=v["beta1"], beta2=group["betas"][1],
                    weight_decay=v["weight_decay"], maximize=group["maximize"],
                    **self._state[i])

