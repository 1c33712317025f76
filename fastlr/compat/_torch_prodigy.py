"""``fastlr.compat.torch.Prodigy``: ``prodigyopt.Prodigy`` (1.1.2) whose ``step`` runs
fastlr's two-pass compiled Prodigy step (:func:`fastlr._core.lrfree.prodigy_step`).

Imported by :mod:`fastlr.compat.torch` when ``prodigyopt`` is installed (the name is absent
otherwise). A subclass of ``prodigyopt.Prodigy``: the constructor (plus ``n_threads``),
defaults, ``param_groups`` (with the package's ``d``, ``d_max``, ``d_numerator``,
``d_denom``, ``d_hat``, ``k`` in every group), ``state`` (``step``, ``s``, ``p0``,
``exp_avg``, ``exp_avg_sq``, laid out as the package lays them out), ``state_dict()`` /
``load_state_dict()``, hooks and LR schedulers are the package's, so checkpoints of either
class load into the other. Only ``step()`` differs: every parameter of every group is
checked, then one call of the compiled step updates them all over zero-copy NumPy views.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import prodigyopt as _prodigyopt
import torch

from fastlr._core.args import (CLOSED_UNIT, FINITE, INT_MAX, NONNEG, POSITIVE, UNIT,
                               checked_real, flag_arg, int_arg, threads_arg)
from fastlr.optim.lrfree import prodigy_step  # this CPU's build (fastlr._core.dispatch)
from fastlr.compat._torch_adafactor import _bridge_module

__all__ = ["Prodigy"]

_CLS = "fastlr.compat.torch.Prodigy"


def _number(value: Any) -> Any:
    """A 1-element tensor hyperparameter (a Tensor lr) as its Python number."""
    return _bridge_module()._number(value)


class Prodigy(_prodigyopt.Prodigy):
    """``prodigyopt.Prodigy`` (1.1.2) whose ``step`` runs fastlr's compiled two-pass Prodigy
    step (:mod:`fastlr.compat.torch`; present when ``prodigyopt`` is installed).

    A subclass of ``prodigyopt.Prodigy``: the same constructor, defaults, checks,
    ``param_groups`` (``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat`` and ``k``
    kept in every group as the package keeps them), ``state`` (``step`` an int, ``s`` and
    ``p0`` flat tensors of every ``slice_p``-th element in C order, ``p0`` a 0-d zero when
    the param started all zero, ``exp_avg`` when ``beta1 > 0``, ``exp_avg_sq``),
    ``state_dict()`` / ``load_state_dict()`` (a state dict of ``prodigyopt.Prodigy`` loads
    here and back), hooks and LR schedulers; swap the import to use it. ``step`` is one call
    of :func:`fastlr._core.lrfree.prodigy_step` over every parameter with a grad: two fused
    passes (moments, ``s`` and both sums; then the update), the sums in double.

    Parameters
    ----------
    params, lr, betas, beta3, eps, weight_decay, decouple, use_bias_correction, \
safeguard_warmup, d0, d_coef, growth_rate, fsdp_in_use, slice_p
        As ``prodigyopt.Prodigy`` (defaults 1.0, (0.9, 0.999), None, 1e-8, 0, True, False,
        False, 1e-6, 1.0, inf, False, 1). ``fsdp_in_use=True`` is refused by ``step``
        (fastlr's step is single-process).
    n_threads : int, optional
        Threads for the two passes (None: :func:`fastlr.get_num_threads`); the sums have
        the same bits for any count.

    Notes
    -----
    Agreement: float64 agrees with the package to about 1e-14 relative over 100 steps
    (the package sums ``<g, p0 - p>`` and ``sum|s|`` in the params' dtype, fastlr in
    double; in float32 that difference is amplified by the jumps of ``d``, see
    docs/lrfree.rst). Differences from the package: ``step`` leaves ``p.grad`` as it is
    (the package adds ``weight_decay * p`` to it when ``decouple`` is False); the lr rule
    (every group's lr is the largest or 0) raises ``RuntimeError`` as in the package, but
    before anything is written. Refused before anything is written, naming the group and
    parameter: tensors not on the CPU, dtypes other than float32/float64, sparse grads,
    non-contiguous parameters, grads or state not matching the parameter, state sharing
    memory, FSDP-flattened parameters or ``fsdp_in_use``, group scalars out of range, and
    outside ``torch.inference_mode()`` inference tensors as parameters or as state the step
    writes (all but ``p0``; the package writes inference parameters through ``.data``).
    A parameter of more than one dimension that is not C-contiguous (e.g. a transposed
    weight) is stepped on C-ordered copies written back (``s`` and ``p0`` are in C order).
    """

    def __init__(self, params: Any, lr: Any = 1.0, betas: Tuple[float, float] = (0.9, 0.999),
                 beta3: Optional[float] = None, eps: float = 1e-8, weight_decay: float = 0,
                 decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float = float("inf"), fsdp_in_use: bool = False,
                 slice_p: int = 1, *, n_threads: Optional[int] = None) -> None:
        self.n_threads = None if n_threads is None else threads_arg(_CLS, n_threads)
        super().__init__(params, lr=lr, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, decouple=decouple,
                         use_bias_correction=use_bias_correction,
                         safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                         growth_rate=growth_rate, fsdp_in_use=fsdp_in_use, slice_p=slice_p)

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["n_threads"] = getattr(self, "n_threads", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("n_threads", None)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One Prodigy step over every parameter with a grad (the package's ``step``), by
        fastlr's compiled step.

        Every parameter of every group and every group scalar is checked first; on an error
        nothing is written (not even new state).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called as the package calls it).

        Returns
        -------
        object
            The closure's loss, or None without a closure.

        Raises
        ------
        TypeError, ValueError
            A tensor the kernel cannot update in place or a group scalar out of range,
            naming the group and parameter.
        RuntimeError
            If a group's lr is neither the largest group lr nor 0 (as the package).
        """
        loss = None
        if closure is not None:
            loss = closure()
        with torch.no_grad():
            self._run(*self._plan())
        return loss

    # -- checks ---------------------------------------------------------------------------
    def _where(self, gi: int, k: int, index: int) -> str:
        return f"{_CLS}: parameter {index} (param_groups[{gi}]['params'][{k}])"

    def _scalars(self, fn: str) -> Dict[str, Any]:
        """Group 0's scalars (the package reads the shared ones from group 0), checked."""
        g0 = self.param_groups[0]
        betas = g0["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{fn}: param_groups[0]['betas'] must be a pair (beta1, beta2), "
                            f"got {betas!r}")
        if flag_arg(fn, "param_groups[0]['fsdp_in_use']", g0["fsdp_in_use"]):
            raise ValueError(f"{fn}: param_groups[0]['fsdp_in_use'] is True; fastlr's "
                             f"Prodigy step is single-process (use prodigyopt.Prodigy with "
                             f"FSDP)")
        growth = g0["growth_rate"]
        out = dict(
            betas=(checked_real(fn, "param_groups[0]['betas'][0]", betas[0], UNIT),
                   checked_real(fn, "param_groups[0]['betas'][1]", betas[1], UNIT)),
            beta3=None if g0["beta3"] is None else
            checked_real(fn, "param_groups[0]['beta3']", g0["beta3"], CLOSED_UNIT),
            d=checked_real(fn, "param_groups[0]['d']", g0["d"], POSITIVE),
            d_max=checked_real(fn, "param_groups[0]['d_max']", g0["d_max"], POSITIVE),
            d_numerator=checked_real(fn, "param_groups[0]['d_numerator']",
                                     _number(g0["d_numerator"]), FINITE),
            d_coef=checked_real(fn, "param_groups[0]['d_coef']", g0["d_coef"], POSITIVE),
            growth_rate=math.inf if isinstance(growth, (int, float)) and growth == math.inf
            else checked_real(fn, "param_groups[0]['growth_rate']", growth, POSITIVE),
            decouple=flag_arg(fn, "param_groups[0]['decouple']", g0["decouple"]),
            use_bias_correction=flag_arg(fn, "param_groups[0]['use_bias_correction']",
                                         g0["use_bias_correction"]),
            k=int_arg(fn, "param_groups[0]['k']", g0["k"], 0, INT_MAX),
        )
        return out

    def _group_scalars(self, fn: str) -> Dict[str, List[Any]]:
        per: Dict[str, List[Any]] = {key: [] for key in
                                     ("lr", "weight_decay", "eps", "d0", "safeguard_warmup",
                                      "slice_p", "k")}
        for gi, group in enumerate(self.param_groups):
            at = f"param_groups[{gi}]"
            per["lr"].append(checked_real(fn, f"{at}['lr']", _number(group["lr"]), NONNEG))
            per["weight_decay"].append(checked_real(fn, f"{at}['weight_decay']",
                                                    group["weight_decay"], NONNEG))
            per["eps"].append(checked_real(fn, f"{at}['eps']", group["eps"], POSITIVE))
            per["d0"].append(checked_real(fn, f"{at}['d0']", group["d0"], POSITIVE))
            per["safeguard_warmup"].append(flag_arg(fn, f"{at}['safeguard_warmup']",
                                                    group["safeguard_warmup"]))
            per["slice_p"].append(int_arg(fn, f"{at}['slice_p']", group["slice_p"], 1,
                                          INT_MAX))
            per["k"].append(int_arg(fn, f"{at}['k']", group["k"], 0, INT_MAX))
        top = max(per["lr"])
        for gi, v in enumerate(per["lr"]):
            if v not in (top, 0.0):
                raise RuntimeError(f"{fn}: param_groups[{gi}]['lr'] is {v!r} but the largest "
                                   f"group lr is {top!r}; setting different lr values in "
                                   f"different parameter groups is only supported for "
                                   f"values of 0 (as in prodigyopt). Nothing was updated")
        return per

    @staticmethod
    def _flat(where: str, key: str, t: Any, pv: np.ndarray, size: int) -> np.ndarray:
        """``s`` / ``p0``: a flat CPU tensor of ``size`` elements of the param's dtype
        (``p0`` may be the package's 0-d zero: expanded here), as a NumPy array."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: state[{key!r}] is a {type(t).__name__}, not a tensor")
        if t.device.type != "cpu" or t.layout != torch.strided or t.is_neg() or \
                t.requires_grad or t.dtype not in (torch.float32, torch.float64) or \
                t.numpy().dtype != pv.dtype:
            raise TypeError(f"{where}: state[{key!r}] must be a plain CPU tensor of the "
                            f"parameter's dtype ({pv.dtype}), got {t.dtype} on {t.device}")
        if key == "p0" and t.dim() == 0:
            return np.full(size, t.item(), dtype=pv.dtype)
        tv = t.numpy()
        if tv.shape != (size,) or not tv.flags.c_contiguous:
            raise ValueError(f"{where}: state[{key!r}] must be a contiguous flat tensor of "
                             f"{size} elements (every slice_p-th element of the parameter), "
                             f"got shape {tuple(t.shape)} with strides {tuple(t.stride())}")
        return tv

    def _plan(self) -> Tuple[Dict[str, Any], Dict[str, List[Any]], List[Tuple[Any, ...]]]:
        bridge = _bridge_module()
        fn = f"{_CLS}.step"
        sc = self._scalars(fn)
        per = self._group_scalars(fn)
        has_m = sc["betas"][0] > 0
        work, index = [], -1
        outside = not torch.is_inference_mode_enabled()    # inference tensors are refused
        for gi, group in enumerate(self.param_groups):
            sp = per["slice_p"][gi]
            for k, p in enumerate(group["params"]):
                index += 1
                if p.grad is None:
                    continue
                where = self._where(gi, k, index)
                if hasattr(p, "_fsdp_flattened"):
                    raise ValueError(f"{where} is FSDP-flattened; fastlr's Prodigy step is "
                                     f"single-process (use prodigyopt.Prodigy with FSDP)")
                pv, gv = bridge._FastlrStep._diagnose(where, p, p.grad)
                size = (pv.size + sp - 1) // sp
                st = self.state.get(p)
                if outside:     # (p0 is only read, as by the package)
                    bridge._refuse_inference(str, (where,), p, st, ("p0",))
                if st and "step" in st:
                    step = st["step"]
                    if isinstance(step, torch.Tensor) and step.numel() == 1:
                        step = step.item()
                    step = int_arg(fn, f"{where.partition(': ')[2]}: state['step']", step, 0,
                                   INT_MAX)
                    bufs = {"exp_avg": None, "exp_avg_sq": None}
                    for key in (("exp_avg", "exp_avg_sq") if has_m else ("exp_avg_sq",)):
                        bufs[key] = bridge._FastlrStep._check_buffer(lambda *a: where, (), key,
                                                                     st.get(key), pv)
                    bufs["s"] = self._flat(where, "s", st.get("s"), pv, size)
                    bufs["p0"] = self._flat(where, "p0", st.get("p0"), pv, size)
                    bridge._check_disjoint(lambda *a: where, (), pv, gv, bufs,
                                           {b: b for b in bufs})
                    new = None
                else:
                    step, new = 0, self._new_state(p, pv, sp, has_m)
                    bufs = {key: (None if t is None else
                                  np.full(size, t.item(), dtype=pv.dtype) if t.dim() == 0
                                  else t.numpy()) for key, t in new.items()}
                work.append((p, pv, gv, bufs, new, step, gi))
        return sc, per, work

    @staticmethod
    def _new_state(p: torch.Tensor, pv: np.ndarray, sp: int, has_m: bool
                   ) -> Dict[str, Optional[torch.Tensor]]:
        """The package's initial state of a parameter (stored only after the step ran)."""
        flat = p.detach().flatten()[::sp]
        return {
            "s": torch.zeros_like(flat),
            "p0": flat.clone() if pv.any() else torch.tensor(0, dtype=p.dtype),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format).detach()
            if has_m else None,
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format).detach(),
        }

    # -- the step -------------------------------------------------------------------------
    def _run(self, sc: Dict[str, Any], per: Dict[str, List[Any]],
             work: List[Tuple[Any, ...]]) -> None:
        has_m = sc["betas"][0] > 0
        sizes = [0] * len(self.param_groups)
        ps, gs, ms, vs, ss, p0s, back = [], [], [], [], [], [], []
        for p, pv, gv, bufs, new, step, gi in work:
            sizes[gi] += 1
            m, v = bufs["exp_avg"], bufs["exp_avg_sq"]
            if pv.ndim > 1 and not pv.flags.c_contiguous:
                # s and p0 hold C-order elements: step C-ordered copies, written back below
                copies = [np.ascontiguousarray(a) for a in (pv, m, v) if a is not None]
                back.append(([a for a in (pv, m, v) if a is not None], copies))
                pv, gv = copies[0], np.ascontiguousarray(gv)
                m, v = (copies[1], copies[2]) if m is not None else (None, copies[1])
            ps.append(pv)
            gs.append(gv)
            ms.append(m)
            vs.append(v)
            ss.append(bufs["s"])
            p0s.append(bufs["p0"])
        try:
            out = prodigy_step(
                ps, gs, ms if has_m else None, vs, ss, p0s, group_sizes=sizes, lr=per["lr"],
                weight_decay=per["weight_decay"], eps=per["eps"], d0=per["d0"],
                safeguard_warmup=per["safeguard_warmup"], slice_p=per["slice_p"],
                betas=sc["betas"], beta3=sc["beta3"], d=sc["d"], d_max=sc["d_max"],
                d_numerator=sc["d_numerator"], d_coef=sc["d_coef"],
                growth_rate=sc["growth_rate"], decouple=sc["decouple"],
                use_bias_correction=sc["use_bias_correction"], k=sc["k"],
                n_threads=self.n_threads)
        except (TypeError, ValueError) as exc:     # checked above: not expected
            raise type(exc)(str(exc).replace("fastlr._core.lrfree.prodigy_step",
                                             f"{_CLS}.step")) from None
        for originals, copies in back:
            for a, c in zip(originals, copies):
                a[...] = c
        for p, pv, gv, bufs, new, step, gi in work:
            if new is not None:
                st = self.state[p]
                st["step"] = 0
                for key, t in new.items():
                    if t is not None:
                        st[key] = t
        if not out["stepped"]:
            return      # all grads zero: as the package, only the moments and s moved
        for gi, group in enumerate(self.param_groups):
            group["d_numerator"] = out["d_numerator"]
            group["d_denom"] = out["d_denom"]
            group["d"] = out["d"]
            group["d_max"] = out["d_max"]
            group["d_hat"] = out["d_hat"]
            group["k"] = per["k"][gi] + 1
        for p, *_ in work:
            self.state[p]["step"] += 1
        if work:
            torch.autograd.graph.increment_version([w[0] for w in work])
