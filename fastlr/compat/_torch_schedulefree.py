"""``fastlr.compat.torch.SGDScheduleFree``, ``AdamWScheduleFree``, ``RAdamScheduleFree``:
the ``schedulefree`` package's optimizers (1.4.1) whose ``step``, ``train`` and ``eval`` run
fastlr's fused schedule-free kernels (:mod:`fastlr._core.schedulefree`).

Imported by :mod:`fastlr.compat.torch` when ``schedulefree`` is installed (the names are
absent otherwise). Each class is a subclass of the package's class of the same name: the
constructor, defaults, ``param_groups`` (with the package's ``k``, ``train_mode``,
``weight_sum``, ``lr_max``, ``scheduled_lr``), ``state`` (``z``, and ``exp_avg_sq`` for the
Adam kinds, tensors of the parameter's shape, dtype and layout), ``state_dict()`` /
``load_state_dict()``, hooks and LR schedulers are the package's; a user of the package
swaps the import and gets the same numbers. Only ``step()``, ``train()`` and ``eval()``
differ: they hand zero-copy NumPy views of the tensors to the compiled kernels after
checking every parameter of every group.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import schedulefree as _sf

from fastlr.optim.schedulefree import _kernels  # this CPU's build (fastlr._core.dispatch)
from fastlr.compat._torch_adafactor import _bridge_module
from fastlr._core.args import FINITE, INT_MAX, NONNEG, OPEN_UNIT, UNIT, checked_real, int_arg

__all__ = ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree"]


def _number(value: Any) -> Any:
    """A 1-element tensor hyperparameter (the package allows a Tensor lr) as a number."""
    return _bridge_module()._number(value)


def _param_view(where: str, p: Any) -> np.ndarray:
    """The checked NumPy view of a parameter (for the mode switch, which needs no grad)."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{where} is a {type(p).__name__}, not a torch.Tensor")
    if p.device.type != "cpu":
        raise TypeError(f"{where} is on device {p.device}; fastlr.compat.torch updates CPU "
                        f"tensors only (use the schedulefree package for other devices)")
    if p.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where} has dtype {p.dtype}; fastlr.compat.torch updates float32 "
                        f"and float64 tensors only")
    if p.layout != torch.strided or p.is_neg():
        raise TypeError(f"{where} is not a plain dense tensor (layout {p.layout}"
                        f"{', a negative view' if p.is_neg() else ''})")
    pv = p.detach().numpy()
    if not (pv.flags.c_contiguous or pv.flags.f_contiguous):
        raise ValueError(f"{where} is not contiguous (shape {tuple(p.shape)}, strides "
                         f"{tuple(p.stride())}); an in-place update needs a contiguous "
                         f"tensor (p.data = p.data.contiguous() makes one)")
    return pv


class _ScheduleFreeStep:
    """What the three bridges share (mixed in before the package's class)."""

    #: the state buffers the package keeps per parameter, in the kernel's order
    _BUFFERS: Tuple[str, ...] = ("z",)

    @property
    def _cls(self) -> str:
        return f"fastlr.compat.torch.{type(self).__name__}"

    def _where(self, gi: int, k: int, index: int) -> str:
        return f"{self._cls}: parameter {index} (param_groups[{gi}]['params'][{k}])"

    def _check_foreach(self, where: str, value: Any) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{where}: foreach must be None, True or False, got {value!r}")

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict) and "foreach" in param_group:
            self._check_foreach(f"{self._cls}.add_param_group", param_group["foreach"])
        super().add_param_group(param_group)    # type: ignore[misc]

    # -- checkpoints ----------------------------------------------------------------------
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict of this class or of the package's class (the package's
        ``load_state_dict``), then copy any loaded ``z`` / ``exp_avg_sq`` whose memory
        layout differs from its parameter's into the parameter's layout (the kernels need
        it); anything else unusual is left for ``step()`` / ``train()`` to refuse."""
        super().load_state_dict(state_dict)     # type: ignore[misc]
        for group in self.param_groups:         # type: ignore[attr-defined]
            for p in group["params"]:
                st = self.state.get(p)          # type: ignore[attr-defined]
                if not st or p.device.type != "cpu" or p.layout != torch.strided or \
                        p.dtype not in (torch.float32, torch.float64) or p.is_neg():
                    continue
                pv = p.detach().numpy()
                for key in self._BUFFERS:
                    t = st.get(key)
                    if not isinstance(t, torch.Tensor) or t.shape != p.shape or \
                            t.dtype != p.dtype or t.device.type != "cpu" or \
                            t.layout != torch.strided or t.is_neg() or t.requires_grad:
                        continue
                    tv = t.numpy()
                    if not _bridge_module()._same_layout(tv, pv):
                        with torch.no_grad():
                            st[key] = torch.empty_like(p, memory_format=torch.preserve_format,
                                                       requires_grad=False).copy_(t)

    # -- hyperparameters ------------------------------------------------------------------
    def _beta1(self, fn: str, gi: int, group: Dict[str, Any]) -> float:
        raise NotImplementedError

    def _common(self, fn: str, gi: int, group: Dict[str, Any]) -> Dict[str, Any]:
        """The group's scalars the step reads, checked (the package checks none of them
        after construction)."""
        where = f"param_groups[{gi}]"
        return dict(
            lr=checked_real(fn, f"{where}['lr']", _number(group["lr"]), NONNEG),
            k=int_arg(fn, f"{where}['k']", group["k"], 0, INT_MAX),
            r=checked_real(fn, f"{where}['r']", group["r"], FINITE),
            weight_lr_power=checked_real(fn, f"{where}['weight_lr_power']",
                                         group["weight_lr_power"], NONNEG),
            weight_decay=checked_real(fn, f"{where}['weight_decay']",
                                      group["weight_decay"], NONNEG),
            weight_sum=checked_real(fn, f"{where}['weight_sum']", group["weight_sum"],
                                    NONNEG),
            lr_max=checked_real(fn, f"{where}['lr_max']", group["lr_max"], FINITE),
        )

    def _coefficients(self, fn: str, gi: int, group: Dict[str, Any]) -> Tuple[Any, ...]:
        """(lr for scheduled_lr, lr_max, weight_sum, the kernel's keywords) of the group's
        next update, computed as the package computes them."""
        raise NotImplementedError

    @staticmethod
    def _warmed_up(fn: str, gi: int, group: Dict[str, Any], h: Dict[str, Any]) -> float:
        """The lr of update ``k + 1`` after the package's linear warmup (SGD, AdamW)."""
        k = h["k"]
        warmup = int_arg(fn, f"param_groups[{gi}]['warmup_steps']", group["warmup_steps"],
                         0, INT_MAX)
        return h["lr"] * ((k + 1) / warmup if k < warmup else 1.0)

    def _finish(self, fn: str, gi: int, h: Dict[str, Any], lr: float, beta1: float,
                **kernel: Any) -> Tuple[Any, ...]:
        """(lr, lr_max, weight_sum, the kernel's keywords) of update ``k + 1`` at ``lr``."""
        lr_max, weight_sum, ckp1 = self._average(fn, gi, h, lr, h["k"] + 1)
        return lr, lr_max, weight_sum, dict(
            ckp1=ckp1, lr=lr, y_coef=lr * (beta1 * (1 - ckp1) - 1),
            weight_decay=h["weight_decay"], **kernel)

    @staticmethod
    def _average(fn: str, gi: int, h: Dict[str, Any], lr: float, step: int
                 ) -> Tuple[float, float, float]:
        """The package's lr_max, weight_sum and ckp1 for update ``step`` at lr ``lr``."""
        lr_max = max(lr, h["lr_max"])
        try:
            weight = (step ** h["r"]) * (lr_max ** h["weight_lr_power"])
        except OverflowError:
            raise ValueError(f"{fn}: param_groups[{gi}]: the averaging weight "
                             f"k**r * lr_max**weight_lr_power overflows at k = {step}; "
                             f"nothing was updated") from None
        weight_sum = h["weight_sum"] + weight
        if not math.isfinite(weight_sum):
            raise ValueError(f"{fn}: param_groups[{gi}]: the averaging weights' sum is "
                             f"{weight_sum} at k = {step}; nothing was updated")
        ckp1 = weight / weight_sum if weight_sum != 0 else 0
        return lr_max, weight_sum, ckp1

    # -- the step -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One schedule-free step over every parameter with a grad, by fastlr's fused
        kernel (the package's ``step``).

        Every parameter of every group is checked first (a dense float32/float64 CPU
        tensor, contiguous, its grad and state of its dtype, shape and layout, no shared
        memory) and the group's scalars; on an error nothing is written. Unlike the package
        the grads are left as they are (the package's step overwrites them with the
        normalized grad).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients enabled).

        Returns
        -------
        object
            The closure's loss, or None without a closure.

        Raises
        ------
        RuntimeError
            If the optimizer is in eval mode (``param_groups[0]['train_mode']`` False; the
            package raises a plain ``Exception``).
        TypeError, ValueError
            A tensor the kernel cannot update in place (an inference tensor outside
            ``torch.inference_mode()`` too), or a scalar of a group out of range, naming the
            group and parameter.
        """
        if not self.param_groups[0]["train_mode"]:      # type: ignore[attr-defined]
            raise RuntimeError(f"{self._cls}.step: the optimizer is in eval mode; call "
                               f"optimizer.train() before the training steps and "
                               f"optimizer.eval() before evaluating (as with schedulefree)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._run(self._plan())
        return loss

    def _plan(self) -> List[Tuple[Any, ...]]:
        bridge = _bridge_module()
        fn = f"{self._cls}.step"
        plan, index = [], -1
        outside = not torch.is_inference_mode_enabled()    # inference tensors are refused
        for gi, group in enumerate(self.param_groups):      # type: ignore[attr-defined]
            coef = self._coefficients(fn, gi, group)
            work = []
            for k, p in enumerate(group["params"]):
                index += 1
                if p.grad is None:
                    continue
                where = self._where(gi, k, index)
                pv, gv = bridge._FastlrStep._diagnose(where, p, p.grad)
                st = self.state.get(p)                      # type: ignore[attr-defined]
                if outside:
                    bridge._refuse_inference(str, (where,), p, st)
                bufs = None
                if st and "z" in st:
                    bufs = [bridge._FastlrStep._check_buffer(lambda *a: where, (), key,
                                                             st.get(key), pv)
                            for key in self._BUFFERS]
                    bridge._check_disjoint(lambda *a: where, (), pv, gv,
                                           dict(zip(self._BUFFERS, bufs)),
                                           {b: b for b in self._BUFFERS})
                work.append((p, pv, gv, bufs))
            plan.append((group, coef, work))
        return plan

    def _run(self, plan: List[Tuple[Any, ...]]) -> None:
        updated = []
        for group, (lr, lr_max, weight_sum, kwargs), work in plan:
            ys, gs, bufs = [], [], [[] for _ in self._BUFFERS]
            for p, pv, gv, b in work:
                if b is None:       # the package's state, made at the first update
                    st = self.state[p]                      # type: ignore[attr-defined]
                    st["z"] = torch.clone(p, memory_format=torch.preserve_format).detach()
                    b = [st["z"].numpy()]
                    if "exp_avg_sq" in self._BUFFERS:
                        st["exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format).detach()
                        b.append(st["exp_avg_sq"].numpy())
                ys.append(pv)
                gs.append(gv)
                for lst, a in zip(bufs, b):
                    lst.append(a)
                updated.append(p)
            group["scheduled_lr"] = lr
            group["lr_max"] = lr_max
            group["weight_sum"] = weight_sum
            if ys:
                if len(bufs) == 1:
                    _kernels.sgd_step(ys, gs, bufs[0], **kwargs)
                else:
                    _kernels.adam_step(ys, gs, bufs[0], bufs[1], **kwargs)
            group["k"] = group["k"] + 1
        if updated:
            torch.autograd.graph.increment_version(updated)

    # -- the mode switch ------------------------------------------------------------------
    @torch.no_grad()
    def train(self) -> None:
        """Move the parameters to the training point y (the package's ``train``), by
        fastlr's fused switch kernel: ``p = lerp(p, z, 1 - beta1)`` for each parameter
        with state, in every group not in train mode. Everything is checked first."""
        self._switch(True)

    @torch.no_grad()
    def eval(self) -> None:
        """Move the parameters to the averaged point x (the package's ``eval``), by
        fastlr's fused switch kernel: ``p = lerp(p, z, 1 - 1/beta1)`` for each parameter
        with state, in every group in train mode. Everything is checked first."""
        self._switch(False)

    def _switch(self, to_train: bool) -> None:
        fn = f"{self._cls}.{'train' if to_train else 'eval'}"
        bridge = _bridge_module()
        jobs, updated, index = [], [], -1
        # outside inference mode an inference parameter is refused (the package's p.lerp_
        # refuses it); z is only read, as by the package
        outside = not torch.is_inference_mode_enabled()
        for gi, group in enumerate(self.param_groups):      # type: ignore[attr-defined]
            if bool(group["train_mode"]) == to_train:
                index += len(group["params"])
                continue
            beta1 = self._beta1(fn, gi, group)
            ys, zs = [], []
            for k, p in enumerate(group["params"]):
                index += 1
                st = self.state.get(p)                      # type: ignore[attr-defined]
                if not st or "z" not in st:
                    continue
                where = self._where(gi, k, index).replace(self._cls, fn, 1)
                pv = _param_view(where, p)
                if outside:
                    bridge._refuse_inference(str, (where,), p, None)
                zv = bridge._FastlrStep._check_buffer(lambda *a: where, (), "z", st["z"], pv)
                if pv.size and np.may_share_memory(pv, zv):
                    raise ValueError(f"{where}: state['z'] shares memory with the parameter")
                ys.append(pv)
                zs.append(zv)
                updated.append(p)
            jobs.append((group, ys, zs, 1 - beta1 if to_train else 1 - 1 / beta1))
        for group, ys, zs, weight in jobs:
            if ys:
                _kernels.switch(ys, zs, weight)
            group["train_mode"] = to_train
        if updated:
            torch.autograd.graph.increment_version(updated)


_DOC = """{package} (schedulefree 1.4.1) whose ``step``, ``train`` and ``eval`` run
    fastlr's fused schedule-free kernels (:mod:`fastlr.compat.torch`; present when the
    ``schedulefree`` package is installed).

    A subclass of ``schedulefree.{name}``: the same constructor, defaults, ``param_groups``
    (``k``, ``train_mode``, ``weight_sum``, ``lr_max``, ``scheduled_lr`` as the package
    keeps them), ``state`` ({state}, tensors of the parameter's shape, dtype and layout),
    ``state_dict()`` / ``load_state_dict()`` (a state dict of the package's class loads
    here and back), hooks and LR schedulers; swap the import to use it. Each step is one
    fused pass per parameter (``fastlr._core.schedulefree``), the mode switch one pass;
    the arithmetic is the package's per-tensor path, operation by operation, so float64
    agrees with the package (``foreach`` True or False, whose results on CPU are the same)
    to about 1e-15 relative per step, float32 to rounding.

    Parameters
    ----------
    params, {args}
        As ``schedulefree.{name}`` ({defaults}).
    foreach : bool or None, default True
        Accepted and kept in ``param_groups`` as the package does; it does not change the
        update (the fused kernel replaces both of the package's paths).

    Notes
    -----
    Differences from the package: ``step`` leaves ``p.grad`` as it is (the package
    overwrites it with the normalized grad plus weight decay), raises ``RuntimeError``
    (the package: ``Exception``) in eval mode, and refuses, naming the group and
    parameter, before anything is written: tensors not on the CPU, dtypes other than
    float32/float64, sparse grads, non-contiguous parameters, grads or state not of the
    parameter's dtype, shape and layout, state sharing memory with the parameter or its
    grad, group scalars out of range (``lr``, ``weight_decay``, ``eps``,
    ``weight_lr_power``, ``weight_sum`` ``< 0``; ``beta1`` / ``momentum`` outside (0, 1),
    ``beta2`` outside [0, 1)), and outside ``torch.inference_mode()`` inference tensors as
    parameters or state (``train`` / ``eval``: as parameters; the package refuses to update
    those in place too).
    """


_SGD_ARGS = ("lr, momentum, weight_decay, warmup_steps, r, weight_lr_power",
             "defaults 1.0, 0.9, 0, 0, 0.0, 2")
_ADAMW_ARGS = ("lr, betas, eps, weight_decay, warmup_steps, r, weight_lr_power",
               "defaults 0.0025, (0.9, 0.999), 1e-8, 0, 0, 0.0, 2.0")
_RADAM_ARGS = ("lr, betas, eps, weight_decay, r, weight_lr_power, silent_sgd_phase",
               "defaults 0.0025, (0.9, 0.999), 1e-8, 0, 0.0, 2.0, True")


class SGDScheduleFree(_ScheduleFreeStep, _sf.SGDScheduleFree):
    __doc__ = _DOC.format(package="Schedule-free SGD", name="SGDScheduleFree",
                          state="``z``", args=_SGD_ARGS[0], defaults=_SGD_ARGS[1])

    def __init__(self, params: Any, lr: Any = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2, foreach: Optional[bool] = True) -> None:
        self._check_foreach(self._cls, foreach)
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                         foreach=foreach)

    def _beta1(self, fn, gi, group):
        return checked_real(fn, f"param_groups[{gi}]['momentum']", group["momentum"],
                            OPEN_UNIT)

    def _coefficients(self, fn, gi, group):
        h = self._common(fn, gi, group)
        return self._finish(fn, gi, h, self._warmed_up(fn, gi, group, h),
                            self._beta1(fn, gi, group))


class _AdamKind(_ScheduleFreeStep):
    _BUFFERS = ("z", "exp_avg_sq")

    def _betas(self, fn, gi, group):
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{fn}: param_groups[{gi}]['betas'] must be a pair (beta1, "
                            f"beta2), got {betas!r}")
        return (checked_real(fn, f"param_groups[{gi}]['betas'][0]", betas[0], OPEN_UNIT),
                checked_real(fn, f"param_groups[{gi}]['betas'][1]", betas[1], UNIT))

    def _beta1(self, fn, gi, group):
        return self._betas(fn, gi, group)[0]

    def _adam(self, fn, gi, group):
        """(the common scalars, beta1, beta2, eps) of an Adam kind's group, checked."""
        return (self._common(fn, gi, group), *self._betas(fn, gi, group),
                checked_real(fn, f"param_groups[{gi}]['eps']", group["eps"], NONNEG))


class AdamWScheduleFree(_AdamKind, _sf.AdamWScheduleFree):
    __doc__ = _DOC.format(package="Schedule-free AdamW", name="AdamWScheduleFree",
                          state="``z``, ``exp_avg_sq``", args=_ADAMW_ARGS[0],
                          defaults=_ADAMW_ARGS[1])

    def __init__(self, params: Any, lr: Any = 0.0025,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: Optional[bool] = True) -> None:
        self._check_foreach(self._cls, foreach)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                         foreach=foreach)

    def _coefficients(self, fn, gi, group):
        h, beta1, beta2, eps = self._adam(fn, gi, group)
        return self._finish(fn, gi, h, self._warmed_up(fn, gi, group, h), beta1,
                            beta2=beta2, bias_correction2=1 - beta2 ** (h["k"] + 1), eps=eps,
                            adaptive=True)


class RAdamScheduleFree(_AdamKind, _sf.RAdamScheduleFree):
    __doc__ = _DOC.format(package="Schedule-free RAdam", name="RAdamScheduleFree",
                          state="``z``, ``exp_avg_sq``", args=_RADAM_ARGS[0],
                          defaults=_RADAM_ARGS[1])

    def __init__(self, params: Any, lr: Any = 0.0025,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 foreach: Optional[bool] = True, silent_sgd_phase: bool = True) -> None:
        self._check_foreach(self._cls, foreach)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         r=r, weight_lr_power=weight_lr_power, foreach=foreach,
                         silent_sgd_phase=silent_sgd_phase)

    def _coefficients(self, fn, gi, group):
        h, beta1, beta2, eps = self._adam(fn, gi, group)
        silent = group["silent_sgd_phase"]
        if not isinstance(silent, (bool, np.bool_)):
            raise TypeError(f"{fn}: param_groups[{gi}]['silent_sgd_phase'] must be a bool, "
                            f"got {type(silent).__name__}")
        step = h["k"] + 1
        beta2_t = beta2 ** step
        bias_correction2 = 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2_t / bias_correction2
        if rho_t > 4.0:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        else:
            rect = float(not silent)
        return self._finish(fn, gi, h, h["lr"] * rect, beta1, beta2=beta2,
                            bias_correction2=bias_correction2, eps=eps, adaptive=rho_t > 4.0)
