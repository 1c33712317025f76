"""``fastlr.compat.torch.Adafactor``: ``torch.optim.Adafactor`` whose step runs fastlr's
Adafactor kernel (:mod:`fastlr._core.adafactor`).

Imported by :mod:`fastlr.compat.torch` (import it from there). Not a row of the optimizer
table (Adafactor is not element-wise), so it is written out here rather than made by
``fastlr.compat.torch._bridge``; it uses that module's checks of tensors and options.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from fastlr.optim.adafactor import _apply, check_hypers, state_shapes  # this CPU's build
from fastlr._core.args import threads_arg

__all__ = ["Adafactor"]


def _bridge_module():
    # fastlr.compat.torch imports this module at its end; look it up when used
    from fastlr.compat import torch as bridge
    return bridge


class Adafactor(torch.optim.Adafactor):
    """``torch.optim.Adafactor`` (factored second moment; torch 2.13's single-tensor
    arithmetic) whose update runs in fastlr's compiled Adafactor kernel.

    The constructor, defaults, argument checks, ``param_groups``, ``state`` (``step``,
    ``row_var`` / ``col_var`` of shapes ``(..., m, 1)`` / ``(..., 1, n)`` for params of
    >= 2 dims, ``variance`` otherwise), ``state_dict()`` / ``load_state_dict()`` (so a
    state dict of ``torch.optim.Adafactor`` loads here and back), hooks and LR schedulers
    are torch's; only ``step()`` differs.

    Parameters
    ----------
    params : iterable of torch.Tensor, of dict or of (str, torch.Tensor)
        The parameters to optimize, or parameter groups (dicts), as torch takes them.
    lr : float, default 0.01
        ``>= 0``: the cap of the relative step size and the weight decay's factor.
    beta2_decay : float, default -0.8
        ``<= 0``: the exponent of the statistics' weight ``step ** beta2_decay``.
    eps : (float or None, float), default (None, 0.001)
        ``(eps1, eps2)``, each ``>= 0`` (None: the dtype's machine epsilon).
    d : float, default 1.0
        ``>= 1``: the update clipping threshold.
    weight_decay : float, default 0.0
        ``>= 0``: decoupled weight decay, ``p *= 1 - lr * weight_decay``.
    foreach : bool or None, default None
        Accepted only as None or False (fastlr runs the single-tensor arithmetic); any
        other value raises ValueError.
    maximize : bool, default False
        Ascend instead of descend.
    n_threads : int, optional
        Accepted for the bridges' common signature; the kernel is serial.

    Raises
    ------
    ValueError
        From ``step()``: a tensor or a state tensor that the kernel cannot update in place
        (see :mod:`fastlr.compat.torch`), a hyperparameter set in ``param_groups`` out of
        range, ``foreach=True``; nothing is written then.
    TypeError
        From ``step()``: a tensor that is not a dense float32/float64 CPU tensor, or,
        outside ``torch.inference_mode()``, an inference tensor as the parameter or in its
        state (torch refuses to update those in place too); nothing is written then.
    """

    def __init__(self, params: Any, lr: Any = 1e-2, beta2_decay: float = -0.8,
                 eps: Any = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: Optional[bool] = None, maximize: bool = False,
                 n_threads: Optional[int] = None) -> None:
        _bridge_module()._check_options("fastlr.compat.torch.Adafactor",
                                        {"foreach": foreach})
        self.n_threads = None if n_threads is None else threads_arg(
            "fastlr.compat.torch.Adafactor", n_threads)
        super().__init__(params, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                         weight_decay=weight_decay, foreach=foreach, maximize=maximize)

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict):
            _bridge_module()._check_options(
                "fastlr.compat.torch.Adafactor.add_param_group",
                {**getattr(self, "defaults", {}), **param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform a single optimization step, as ``torch.optim.Adafactor.step``.

        Every parameter of every group is validated first; on error nothing is written.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients enabled).

        Returns
        -------
        object
            The closure's loss, or None without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._run(self._plan())
        return loss

    def _plan(self):
        bridge = _bridge_module()
        cls = "fastlr.compat.torch.Adafactor"
        plan, index = [], -1
        outside = not torch.is_inference_mode_enabled()    # inference tensors are refused
        for gi, group in enumerate(self.param_groups):
            where = f"{cls}: param_groups[{gi}]"
            bridge._check_options(where, group)
            eps1, eps2 = group["eps"]
            hyper = list(check_hypers(cls, f"param_groups[{gi}]: ", bridge._number(group["lr"]),
                                      group["beta2_decay"], eps1, eps2, group["d"],
                                      group["weight_decay"], group["maximize"],
                                      ("eps[0]", "eps[1]")))
            work = []
            for k, p in enumerate(group["params"]):
                index += 1
                if p.grad is None:
                    continue
                at = (gi, k, index)
                where = bridge._FastlrStep._where(self, *at)
                pv, gv = bridge._FastlrStep._diagnose(where, p, p.grad)
                if hyper[2] is None:        # torch: the first param's machine epsilon
                    hyper[2] = float(np.finfo(pv.dtype).eps)
                st = self.state.get(p)
                if outside:
                    bridge._refuse_inference(str, (where,), p, st)
                step, bufs = 0, {}
                if st:
                    step = self._read_step(at, st)
                    for key, shape in state_shapes(pv.shape).items():
                        bufs[key] = self._buffer(at, st, key, shape, pv)
                work.append((p, pv, gv, st, step, bufs))
            plan.append((tuple(hyper), work))
        return plan

    def _read_step(self, at, st):
        bridge = _bridge_module()
        value, _ = bridge._scalar_state(lambda *a: bridge._FastlrStep._where(self, *a), at,
                                        st, "step")
        if not (value >= 0 and value == int(value) and value < 2.0 ** 62):
            raise ValueError(f"{bridge._FastlrStep._where(self, *at)}: state['step'] must "
                             f"be a whole number >= 0, got {value}")
        return int(value)

    def _buffer(self, at, st, key, shape, pv):
        """State tensor ``key`` as a NumPy view, checked (dtype, shape, CPU, dense);
        ``(view, copy)`` where ``copy`` is a buffer in the param's layout when the tensor's
        layout differs (written back after the update), else None."""
        where = _bridge_module()._FastlrStep._where(self, *at)
        t = st.get(key)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{where}: state[{key!r}] is missing or not a tensor (a param "
                             f"of shape {pv.shape} has {', '.join(state_shapes(pv.shape))})")
        if t.device.type != "cpu" or t.layout != torch.strided or t.is_neg() or \
                t.requires_grad or t.numpy().dtype != pv.dtype:
            raise TypeError(f"{where}: state[{key!r}] must be a plain CPU tensor of the "
                            f"parameter's dtype, got {t.dtype} on {t.device}")
        tv = t.numpy()
        if tv.shape != shape:
            raise ValueError(f"{where}: state[{key!r}] has shape {tv.shape}, expected "
                             f"{shape} for a parameter of shape {pv.shape}")
        if np.may_share_memory(tv, pv) or np.may_share_memory(tv, self._grad_view(at)):
            raise ValueError(f"{where}: state[{key!r}] shares memory with the parameter or "
                             f"its gradient")
        order = "C" if pv.flags.c_contiguous else "F"
        fits = tv.flags.c_contiguous if order == "C" else tv.flags.f_contiguous
        return tv, None if fits else np.array(tv, order=order)

    def _grad_view(self, at):
        gi, k, _ = at
        return self.param_groups[gi]["params"][k].grad.detach().numpy()

    def _run(self, plan):
        updated = []
        for hyper, work in plan:
            for p, pv, gv, st, step, bufs in work:
                if not bufs:
                    st = self.state[p]
                    order = "C" if pv.flags.c_contiguous else "F"
                    for key, shape in state_shapes(pv.shape).items():
                        # torch makes them with new_zeros (C order); a 3-D+ F-ordered param
                        # gets them in its own order, which torch's step reads as well
                        t = torch.from_numpy(np.zeros(shape, dtype=pv.dtype, order=order))
                        st[key] = t
                        bufs[key] = (t.numpy(), None)
                    st["step"] = torch.tensor(0.0, dtype=_bridge_module()._scalar_dtype())
                views = {key: (copy if copy is not None else view)
                         for key, (view, copy) in bufs.items()}
                _apply(pv, gv, views.get("row_var"), views.get("col_var"),
                       views.get("variance"), step + 1, *hyper)
                for key, (view, copy) in bufs.items():
                    if copy is not None:
                        view[...] = copy
                st["step"] += 1
                updated.append(p)
        if updated:
            torch.autograd.graph.increment_version(updated)
