"""``fastlr.compat.torch.DAdaptAdam``, ``DAdaptSGD``, ``DAdaptAdaGrad``: the ``dadaptation``
package's optimizers (3.2) whose step runs fastlr's D-Adaptation kernels
(:mod:`fastlr._core.dadapt`).

Imported by :mod:`fastlr.compat.torch` when ``dadaptation`` is installed (import them from
there). Not rows of the optimizer table (the step size needs global sums), so they are
written out here; they use that module's checks of tensors. Outside
``torch.inference_mode()`` they refuse inference tensors as parameters or as state the step
writes, as that module's classes do (the package writes inference parameters, and
DAdaptSGD's and DAdaptAdaGrad's state, through ``.data``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Optional

import dadaptation
import numpy as np
import torch

from fastlr._core.args import threads_arg
from fastlr.optim.dadapt import dadapt_adagrad_step, dadapt_adam_step, dadapt_sgd_step

__all__ = ["DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad"]

_log = logging.getLogger("fastlr.dadapt")


def _bridge_module():
    # fastlr.compat.torch imports this module at its end; look it up when used
    from fastlr.compat import torch as bridge
    return bridge


class _Bridge:
    """The step shared by the three bridges: validate every param with a grad and its
    state, create missing state as the package does, run the kernel over all of them, write
    the estimate back into every group (the package's keys)."""

    #: the kernel's buffers, in its argument order, as (state key, how a new one starts)
    _STATE: tuple = ()
    _ESTIMATE: tuple = ()
    _kernel: Callable[..., Dict[str, Any]]
    n_threads: Optional[int]

    def _init_bridge(self, n_threads):
        name = f"fastlr.compat.torch.{type(self).__name__}"
        self.n_threads = None if n_threads is None else threads_arg(name, n_threads)

    def _where(self, gi, k, index):
        return (f"fastlr.compat.torch.{type(self).__name__}: parameter {index} "
                f"(param_groups[{gi}]['params'][{k}])")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform a single optimization step, as the package's ``step``.

        Every parameter with a grad is validated first; on error nothing is written.

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
        TypeError, ValueError
            A tensor the kernel cannot update in place (an inference tensor as the
            parameter or in the state it writes, outside ``torch.inference_mode()``, too),
            or a group setting it refuses, naming the group and parameter.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        bridge = _bridge_module()
        cls = f"fastlr.compat.torch.{type(self).__name__}"
        if self.param_groups[0].get("fsdp_in_use", False):
            raise ValueError(f"{cls}: fsdp_in_use=True is not supported (fastlr has no "
                             f"sharded params); use the dadaptation package itself")
        params: List[torch.Tensor] = []
        pvs: List[np.ndarray] = []
        gvs: List[np.ndarray] = []
        sizes: List[int] = []
        index = -1
        outside = not torch.is_inference_mode_enabled()    # inference tensors are refused
        for gi, group in enumerate(self.param_groups):
            n = 0
            for k, p in enumerate(group["params"]):
                index += 1
                if p.grad is None:
                    continue
                pv, gv = bridge._FastlrStep._diagnose(self._where(gi, k, index), p, p.grad)
                if outside:     # (x0 is only read, as by the package)
                    bridge._refuse_inference(self._where, (gi, k, index), p,
                                             self.state.get(p), ("x0",))
                params.append(p)
                pvs.append(pv)
                gvs.append(gv)
                n += 1
            sizes.append(n)
        if not params:
            return loss
        # the state: checked where it exists, made (not yet stored) where it does not
        # (``index`` numbers every param across groups, as in the loop above and in the
        # other bridges' messages; ``at`` counts the params with a grad, the kernel's lists)
        bufs: List[List[np.ndarray]] = [[] for _ in self._STATE]
        fresh = []
        at = 0
        index = -1
        keys = {key: key for key, _ in self._STATE}
        for gi, group in enumerate(self.param_groups):
            for k, p in enumerate(group["params"]):
                index += 1
                if p.grad is None:
                    continue
                pv = pvs[at]
                st = self.state.get(p)
                if st and self._STATE[0][0] in st:
                    mine = {key: bridge._FastlrStep._check_buffer(
                        self._where, (gi, k, index), key, st.get(key), pv) for key in keys}
                    bridge._check_disjoint(self._where, (gi, k, index), pv, gvs[at], mine,
                                           keys)
                    for j, key in enumerate(keys):
                        bufs[j].append(mine[key])
                else:
                    made = {key: torch.from_numpy(start(pv)) for key, start in self._STATE}
                    fresh.append((p, made))
                    for j, (key, _) in enumerate(self._STATE):
                        bufs[j].append(made[key].numpy())
                at += 1
        g0 = self.param_groups[0]
        try:
            out = type(self)._kernel(pvs, gvs, *bufs, group_sizes=sizes,
                                     **self._kernel_args(g0), n_threads=self.n_threads)
        except (TypeError, ValueError) as error:
            raise type(error)(re.sub(r"fastlr\._core\.dadapt\.dadapt_\w+_step", f"{cls}.step",
                                     str(error))) from None
        for p, made in fresh:
            self.state[p].update(made)
        self._after_kernel(params, out)
        if out["stepped"]:
            if g0["log_every"] > 0 and g0["k"] % g0["log_every"] == 0:
                _log.info("%s k=%d: d_hat %r, d %r", type(self).__name__, g0["k"],
                          out["d_hat"], out["d"])
            for group in self.param_groups:
                for key in self._ESTIMATE:
                    group[key] = out[key]
            torch.autograd.graph.increment_version(params)
        return loss

    def _kernel_args(self, g0) -> Dict[str, Any]:
        raise NotImplementedError

    def _after_kernel(self, params, out) -> None:
        """Package state beyond the kernel's buffers."""


def _zeros(pv):
    return np.zeros_like(pv)


def _copy(pv):
    return pv.copy(order="K")


def _small(pv):
    return np.full_like(pv, 1e-6)


def _lrs(groups):
    return [float(_bridge_module()._number(g["lr"])) for g in groups]


class DAdaptAdam(_Bridge, dadaptation.DAdaptAdam):
    """``dadaptation.DAdaptAdam`` (3.2) whose step runs fastlr's compiled D-Adapt Adam.

    The constructor, defaults, ``param_groups`` (with the package's ``d``, ``k``,
    ``numerator_weighted``), ``state`` (``step``, ``s``, ``exp_avg``, ``exp_avg_sq``),
    ``state_dict()`` / ``load_state_dict()``, hooks and LR schedulers are the package's;
    only ``step()`` differs: grads are not modified (the package adds the coupled weight
    decay into ``p.grad``), a group's lr that is neither the largest nor 0 is a ValueError
    before anything is written, and ``fsdp_in_use=True`` is refused (ValueError).

    Parameters
    ----------
    params : iterable of torch.Tensor or of dict
        The parameters to optimize, or parameter groups (dicts), as the package takes them.
    *args, **kwargs
        The package's arguments (``lr``, ``betas``, ``eps``, ``weight_decay``,
        ``log_every``, ``decouple``, ``use_bias_correction``, ``d0``, ``growth_rate``,
        ``fsdp_in_use``).
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.
    """

    _STATE = (("exp_avg", _zeros), ("exp_avg_sq", _zeros), ("s", _zeros))
    _ESTIMATE = ("d", "numerator_weighted", "k")
    _kernel = staticmethod(dadapt_adam_step)

    def __init__(self, params: Any, *args: Any, n_threads: Optional[int] = None,
                 **kwargs: Any) -> None:
        self._init_bridge(n_threads)
        super().__init__(params, *args, **kwargs)

    def _kernel_args(self, g0):
        groups = self.param_groups
        return dict(lr=_lrs(groups), weight_decay=[g["weight_decay"] for g in groups],
                    eps=[g["eps"] for g in groups],
                    layer_scale=[g["layer_scale"] for g in groups], betas=g0["betas"],
                    d=g0["d"], numerator_weighted=g0["numerator_weighted"],
                    growth_rate=g0["growth_rate"], decouple=g0["decouple"],
                    use_bias_correction=g0["use_bias_correction"], k=g0["k"])

    def _after_kernel(self, params, out):
        for p in params:
            st = self.state[p]
            st.setdefault("step", 0)
            if out["stepped"]:
                st["step"] += 1


class DAdaptSGD(_Bridge, dadaptation.DAdaptSGD):
    """``dadaptation.DAdaptSGD`` (3.2) whose step runs fastlr's compiled D-Adapt SGD.

    The constructor, defaults, ``param_groups`` (with ``d``, ``k``, ``numerator_weighted``,
    ``g0_norm``), ``state`` (``z``, ``s``, ``x0``), ``state_dict()`` /
    ``load_state_dict()``, hooks and LR schedulers are the package's; only ``step()``
    differs: grads are not modified, all-zero first grads are a ValueError (the package
    raises ZeroDivisionError), a step with every lr 0 changes nothing (the package raises
    UnboundLocalError), ``fsdp_in_use=True`` is refused.

    Parameters
    ----------
    params : iterable of torch.Tensor or of dict
        The parameters to optimize, or parameter groups (dicts), as the package takes them.
    *args, **kwargs
        The package's arguments (``lr``, ``momentum``, ``weight_decay``, ``log_every``,
        ``d0``, ``growth_rate``, ``fsdp_in_use``).
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.
    """

    _STATE = (("s", _zeros), ("x0", _copy))
    _ESTIMATE = ("d", "numerator_weighted", "g0_norm", "k")
    _kernel = staticmethod(dadapt_sgd_step)

    def __init__(self, params: Any, *args: Any, n_threads: Optional[int] = None,
                 **kwargs: Any) -> None:
        self._init_bridge(n_threads)
        super().__init__(params, *args, **kwargs)

    def _kernel_args(self, g0):
        return dict(lr=_lrs(self.param_groups), momentum=g0["momentum"],
                    weight_decay=g0["weight_decay"], d=g0["d"],
                    numerator_weighted=g0["numerator_weighted"],
                    g0_norm=g0.get("g0_norm", 0.0), growth_rate=g0["growth_rate"], k=g0["k"])

    def _after_kernel(self, params, out):
        for p in params:
            st = self.state[p]
            if "z" not in st:
                st["z"] = p.detach().clone()
            if out["stepped"]:
                torch.sub(st["x0"], st["s"], out=st["z"])


class DAdaptAdaGrad(_Bridge, dadaptation.DAdaptAdaGrad):
    """``dadaptation.DAdaptAdaGrad`` (3.2) whose step runs fastlr's compiled D-Adapt
    AdaGrad (dense grads).

    The constructor, defaults, ``param_groups`` (with ``d``, ``k``, ``gsq_weighted``,
    ``sksq_weighted``, ``skl1``), ``state`` (``alphak``, ``sk``, ``x0``), ``state_dict()``
    / ``load_state_dict()``, hooks and LR schedulers are the package's; only ``step()``
    differs: grads are not modified, sparse grads are refused (TypeError).

    Parameters
    ----------
    params : iterable of torch.Tensor or of dict
        The parameters to optimize, or parameter groups (dicts), as the package takes them.
    *args, **kwargs
        The package's arguments (``lr``, ``momentum``, ``log_every``, ``weight_decay``,
        ``eps``, ``d0``, ``growth_rate``).
    n_threads : int, optional
        Threads per step; None: :func:`fastlr.get_num_threads`.
    """

    _STATE = (("alphak", _small), ("sk", _zeros), ("x0", _copy))
    _ESTIMATE = ("d", "gsq_weighted", "sksq_weighted", "skl1", "k")
    _kernel = staticmethod(dadapt_adagrad_step)

    def __init__(self, params: Any, *args: Any, n_threads: Optional[int] = None,
                 **kwargs: Any) -> None:
        self._init_bridge(n_threads)
        super().__init__(params, *args, **kwargs)

    def _kernel_args(self, g0):
        groups = self.param_groups
        return dict(weight_decay=[g["weight_decay"] for g in groups],
                    eps=[g["eps"] for g in groups], lr=_lrs(groups)[0],
                    momentum=g0["momentum"], d=g0["d"], gsq_weighted=g0["gsq_weighted"],
                    sksq_weighted=g0["sksq_weighted"], skl1=g0["skl1"],
                    growth_rate=g0["growth_rate"], k=g0["k"])
