"""``fastlr.compat.torch.Muon``: ``torch.optim.Muon`` whose ``step`` runs fastlr's kernel.

Imported by :mod:`fastlr.compat.torch` (needs PyTorch). The class is a subclass of
``torch.optim.Muon``: the same constructor, defaults, checks, ``param_groups``, ``state``
(``momentum_buffer``), ``state_dict()`` / ``load_state_dict()``, hooks and LR schedulers.
Only ``step()`` differs: each CPU float32 / float64 2-D parameter and its momentum buffer
are updated in place by ``fastlr.kernels.muon`` on zero-copy NumPy views (the momentum and
the update in fused compiled passes, the Newton-Schulz products through NumPy's BLAS, in
bfloat16 as torch).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

from fastlr._core import muon as _muon
from fastlr.compat._torch_adafactor import _bridge_module

__all__ = ["Muon"]


def _number(value: Any) -> Any:
    """A 1-element tensor hyperparameter (torch allows a Tensor lr) as its Python number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _layout_ok(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.t().is_contiguous()


class Muon(torch.optim.Muon):
    __doc__ = (
        "torch.optim.Muon whose step runs fastlr.kernels.muon (fastlr.compat.torch).\n\n"
        "Same constructor, defaults, checks, state (``momentum_buffer``) and state dicts as\n"
        "``torch.optim.Muon``; ``step`` validates every parameter of every group (CPU,\n"
        "float32/float64, dense, C- or F-contiguous, grad and buffer of the parameter's\n"
        "dtype, shape and layout, no shared memory, the group's hyperparameters) before it\n"
        "writes anything, then updates each in place with :func:`fastlr.kernels.muon`.\n"
        "Agrees with torch's step as :class:`fastlr.Muon` does: the momentum buffers bit for\n"
        "bit, the parameters up to the bfloat16 rounding of the update (see docs/muon.rst).\n\n"
        "Parameters\n----------\n"
        "params, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, "
        "adjust_lr_fn\n"
        "    As ``torch.optim.Muon``.\n\n"
        "Raises\n------\n"
        "TypeError, ValueError\n"
        "    From ``step``, naming the group and parameter: a tensor not on the CPU, of\n"
        "    another dtype, sparse or non-contiguous, a grad or buffer that does not match,\n"
        "    shared memory, an out-of-range hyperparameter set after construction, or,\n"
        "    outside ``torch.inference_mode()``, an inference tensor as the parameter or its\n"
        "    buffer (torch refuses to update those in place too).\n")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One Muon step over every parameter with a grad, by fastlr's kernel.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with grad enabled first).

        Returns
        -------
        object
            The closure's loss, or None.

        Raises
        ------
        TypeError
            If a tensor has an unsupported dtype or is sparse, a hyperparameter has the
            wrong type, or (outside ``torch.inference_mode()``) the parameter or its buffer
            is an inference tensor.
        ValueError
            If a tensor is not on the CPU, not contiguous, does not match its parameter,
            shares memory with another, or a hyperparameter is out of range.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fn = "fastlr.compat.torch.Muon.step"
        plan: List[Tuple[torch.Tensor, np.ndarray, np.ndarray, Optional[np.ndarray], tuple]] = []
        outside = not torch.is_inference_mode_enabled()    # inference tensors are refused
        for g, group in enumerate(self.param_groups):
            hypers = _muon.check_hypers(
                fn, f"param_groups[{g}]", _number(group["lr"]), group["weight_decay"],
                group["momentum"], group["nesterov"], group["ns_coefficients"], group["eps"],
                group["ns_steps"], group["adjust_lr_fn"])
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                plan.append(self._checked(fn, f"param_groups[{g}]['params'][{j}]", p, hypers,
                                          outside))
        # everything checked: create the missing buffers (torch's zeros_like of the grad),
        # then update
        updated: List[torch.Tensor] = []
        for p, pv, gv, bv, hypers in plan:
            st = self.state[p]
            if bv is None:
                st["momentum_buffer"] = torch.zeros_like(p.grad,
                                                         memory_format=torch.preserve_format)
                bv = st["momentum_buffer"].detach().numpy()
            _muon.run(pv, gv, bv, *hypers)
            updated += (p, st["momentum_buffer"])
        if updated:
            # the update went through NumPy views: tell autograd the parameters and buffers
            # changed, as torch's in-place ops do (a graph that saved one then refuses to
            # backward)
            torch.autograd.graph.increment_version(updated)
        return loss

    def _checked(self, fn: str, at: str, p: torch.Tensor, hypers: tuple,
                 outside: bool = False):
        grad = p.grad
        for what, t in (("parameter", p), ("grad", grad)):
            if t.device.type != "cpu":
                raise ValueError(f"{fn}: {at}: the {what} is on {t.device}; fastlr runs on "
                                 f"CPU tensors only")
            if t.is_sparse:
                raise TypeError(f"{fn}: {at}: sparse {what}s are not supported (as torch)")
            if t.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"{fn}: {at}: the {what} has dtype {t.dtype}, expected "
                                f"torch.float32 or torch.float64")
        if p.dim() != 2:
            raise ValueError(f"{fn}: {at} has shape {tuple(p.shape)}; Muon only supports "
                             f"2-D params")
        if grad.dtype != p.dtype or grad.shape != p.shape:
            raise ValueError(f"{fn}: {at}: the grad is {grad.dtype} {tuple(grad.shape)}, "
                             f"the parameter {p.dtype} {tuple(p.shape)}; they must match")
        if not _layout_ok(p):
            raise ValueError(f"{fn}: {at}: the parameter is not contiguous (strides "
                             f"{p.stride()}); an update applied to a copy is lost")
        st = self.state.get(p)
        if outside:     # (not in torch.inference_mode(): an inference tensor is refused)
            _bridge_module()._refuse_inference("{}: {}".format, (fn, at), p, st)
        pv = p.detach().numpy()
        gv = grad.detach().numpy()
        buf = (st or {}).get("momentum_buffer")
        bv = None
        if buf is not None:
            if not isinstance(buf, torch.Tensor) or buf.device.type != "cpu" or \
                    buf.dtype != p.dtype or buf.shape != p.shape:
                raise ValueError(f"{fn}: {at}: state['momentum_buffer'] must be a CPU tensor "
                                 f"of the parameter's dtype and shape")
            bv = buf.detach().numpy()
        same = (lambda a: a.flags.c_contiguous) if pv.flags.c_contiguous else \
            (lambda a: a.flags.f_contiguous)
        for what, v in (("grad", gv), ("state['momentum_buffer']", bv)):
            if v is not None and not same(v):
                raise ValueError(f"{fn}: {at}: the {what} must share the parameter's "
                                 f"contiguous layout (strides {v.strides} vs {pv.strides})")
        arrays = [pv, gv] + ([bv] if bv is not None else [])
        for a in range(len(arrays)):
            for b in range(a + 1, len(arrays)):
                if np.may_share_memory(arrays[a], arrays[b]):
                    raise ValueError(f"{fn}: {at}: the parameter, its grad and its momentum "
                                     f"buffer must not share memory")
        if not pv.flags.writeable:
            raise ValueError(f"{fn}: {at}: the parameter is read-only")
        return p, pv, gv, bv, hypers
