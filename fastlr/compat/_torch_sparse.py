"""``fastlr.compat.torch.SparseAdam``: torch.optim.SparseAdam whose step runs fastlr's
row-sparse kernel (``fastlr.sparse.sparse_adam``). Imported by :mod:`fastlr.compat.torch`.

torch's constructor, defaults, checks, ``param_groups``, ``state`` (``step`` an int,
``exp_avg`` and ``exp_avg_sq`` tensors of the param's shape), ``state_dict()`` /
``load_state_dict()``, hooks and LR schedulers are torch's own; ``step()`` checks every
param and its sparse grad, then updates the touched rows of each CPU float32/float64 2-D
contiguous param and its moments in place through zero-copy NumPy views. The grads are
torch's sparse COO tensors with one sparse dimension (``nn.Embedding(sparse=True)``),
coalesced or not.

Refused before anything is written (``TypeError`` / ``ValueError`` naming the group and the
param; a dense grad is torch's ``RuntimeError``): params not on the CPU, not float32/float64,
not 2-D or not C-contiguous; grads with other than one sparse and one dense dimension, or of
another dtype; state tensors not like their param; out-of-range hyperparameters written to
``param_groups`` after construction; outside ``torch.inference_mode()``, inference tensors
as params or state (``TypeError``; torch refuses to update those in place too).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

from fastlr._core.args import POSITIVE, UNIT, checked_real
from fastlr._core.sparse import check_rows, sparse_adam
from fastlr.compat._torch_adafactor import _bridge_module

__all__ = ["SparseAdam"]

_NAME = "fastlr.compat.torch.SparseAdam"
_DTYPES = (torch.float32, torch.float64)


def _plain(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


class SparseAdam(torch.optim.SparseAdam):
    """torch.optim.SparseAdam with fastlr's row-sparse kernel in ``step()``.

    Same constructor, defaults and behaviour as ``torch.optim.SparseAdam`` (lazy Adam on the
    rows a sparse grad touches, per-param ``step`` for the bias corrections); each update is
    ``fastlr.sparse.sparse_adam`` on zero-copy NumPy views of the tensors, with torch's
    arithmetic operation by operation.

    Parameters
    ----------
    params : iterable
        The 2-D CPU float32/float64 parameters (embedding tables) or param groups.
    lr : float, default 1e-3
        Learning rate, > 0.
    betas : (float, float), default (0.9, 0.999)
        Moment decays, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, > 0.
    maximize : bool, default False
        Ascend instead of descend.

    Raises
    ------
    ValueError
        As torch's constructor.

    Examples
    --------
    >>> import torch
    >>> from fastlr.compat.torch import SparseAdam
    >>> emb = torch.nn.Embedding(10, 4, sparse=True)
    >>> opt = SparseAdam(emb.parameters(), lr=0.01)
    >>> emb(torch.tensor([1, 7, 1])).sum().backward()
    >>> opt.step()
    >>> int(opt.state[emb.weight]["step"])
    1
    """

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform a single optimization step, as ``torch.optim.SparseAdam.step``.

        Every param with a grad and its state are checked first; then the touched rows of
        each are updated by ``fastlr.sparse.sparse_adam``.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with grad enabled).

        Returns
        -------
        The closure's loss, or None.

        Raises
        ------
        RuntimeError
            If a grad is dense (torch's message).
        TypeError, ValueError
            If a param, grad, state tensor or hyperparameter cannot be handled (see the
            module's docstring); nothing was written.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._checked()
        for p, indices, rows, hyper in work:
            st = self.state[p]
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            sparse_adam(_plain(p), indices, rows, _plain(st["exp_avg"]),
                        _plain(st["exp_avg_sq"]), step=int(st["step"]), **hyper)
        return loss

    def _checked(self) -> List[Tuple[torch.Tensor, np.ndarray, np.ndarray, dict]]:
        """Every param with a grad, checked with its grad, state and hyperparameters."""
        work = []
        outside = not torch.is_inference_mode_enabled()    # inference tensors are refused
        for g, group in enumerate(self.param_groups):
            lr = group["lr"]
            lr = float(lr.item()) if isinstance(lr, torch.Tensor) else lr
            beta1, beta2 = group["betas"]
            where = f"param_groups[{g}]"
            hyper = dict(lr=checked_real(_NAME, f"{where}['lr']", lr, POSITIVE),
                         beta1=checked_real(_NAME, f"{where}['betas'][0]", beta1, UNIT),
                         beta2=checked_real(_NAME, f"{where}['betas'][1]", beta2, UNIT),
                         eps=checked_real(_NAME, f"{where}['eps']", group["eps"], POSITIVE),
                         maximize=bool(group.get("maximize", False)))
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                label = f"{where}['params'][{j}]"
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please "
                                       "consider Adam instead")
                self._check_tensor(label, p)
                st = self.state.get(p, {})  # (a defaultdict: no entry made here)
                if outside:
                    _bridge_module()._refuse_inference("{}: {}".format, (_NAME, label), p, st)
                if grad.sparse_dim() != 1 or grad.dense_dim() != 1 or \
                        grad.shape != p.shape or grad.dtype != p.dtype or \
                        grad.device.type != "cpu":
                    raise ValueError(f"{_NAME}: the grad of {label} must be a CPU sparse "
                                     f"tensor of the param's shape and dtype with one sparse "
                                     f"and one dense dimension (rows, as "
                                     f"nn.Embedding(sparse=True) gives), got sparse_dim "
                                     f"{grad.sparse_dim()}, dense_dim {grad.dense_dim()}, "
                                     f"shape {tuple(grad.shape)}, {grad.dtype} on "
                                     f"{grad.device}")
                indices = grad._indices()[0].contiguous().numpy()
                rows = grad._values().contiguous().numpy()
                check_rows(_NAME, label, f"the grad of {label}", _plain(p), indices, rows)
                for key in ("exp_avg", "exp_avg_sq"):
                    buf = st.get(key)
                    if st and (not isinstance(buf, torch.Tensor) or buf.shape != p.shape or
                               buf.dtype != p.dtype or buf.device.type != "cpu" or
                               not buf.is_contiguous() or buf.is_neg() or
                               np.may_share_memory(_plain(buf), _plain(p))):
                        raise ValueError(f"{_NAME}: state[{key!r}] of {label} must be a "
                                         f"contiguous CPU tensor like the param, apart from "
                                         f"it")
                work.append((p, indices, rows, hyper))
        return work

    @staticmethod
    def _check_tensor(label: str, p: torch.Tensor) -> None:
        if p.device.type != "cpu" or p.dtype not in _DTYPES:
            raise TypeError(f"{_NAME}: {label} must be a CPU float32 or float64 tensor, got "
                            f"{p.dtype} on {p.device}")
        if p.dim() != 2 or not p.is_contiguous() or p.is_neg():
            raise ValueError(f"{_NAME}: {label} must be a 2-D contiguous tensor (rows of "
                             f"an embedding table), got shape {tuple(p.shape)}, strides "
                             f"{p.stride()}")
