"""Pure-NumPy twins of the row-sparse kernels (fastlr._core.sparse): the oracle the tests
hold them to. Clear NumPy, temporaries allowed; no code shared with the kernels.

A row-sparse grad of a 2-D param is ``(indices, rows)``: int64 row numbers and a
``(len(indices), n_cols)`` block. ``coalesce`` is torch's ``coalesce()``: the distinct
indices in increasing order, each row's entries summed in the order given (a stable sort).
The updates touch only the named rows (torch's lazy semantics), with torch's single-tensor
operations in the param's dtype (NEP 50 keeps float32 float32).
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np
from numpy.typing import NDArray

__all__ = ["coalesce", "sparse_adam", "sparse_adagrad", "sparse_sgd"]


def _checked(param: NDArray[Any], indices: NDArray[Any], rows: NDArray[Any]) -> None:
    if param.ndim != 2 or rows.shape != (len(indices), param.shape[1]):
        raise ValueError(f"rows of shape {rows.shape} do not fit a param of shape "
                         f"{param.shape} with {len(indices)} indices")
    if len(indices) and (np.min(indices) < 0 or np.max(indices) >= param.shape[0]):
        raise ValueError(f"an index is out of range for {param.shape[0]} rows")


def coalesce(indices: NDArray[Any],
             rows: NDArray[Any]) -> Tuple[NDArray[np.int64], NDArray[Any]]:
    """torch's ``coalesce()``: distinct indices ascending, duplicates summed in the given order.

    Parameters
    ----------
    indices : numpy.ndarray
        1-D integers >= 0.
    rows : numpy.ndarray
        Shape ``(len(indices), n_cols)``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The distinct indices (int64, ascending) and their summed rows (rows' dtype).
    """
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    uniq = []
    summed = []
    for k in order:
        if uniq and uniq[-1] == indices[k]:
            summed[-1] = summed[-1] + rows[k]
        else:
            uniq.append(int(indices[k]))
            summed.append(rows[k].copy())
    out = np.array(summed, dtype=rows.dtype).reshape(len(uniq), rows.shape[1])
    return np.array(uniq, dtype=np.int64), out


def sparse_adam(param: NDArray[Any], indices: NDArray[Any], rows: NDArray[Any],
                exp_avg: NDArray[Any], exp_avg_sq: NDArray[Any], *, lr: float,
                beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, step: int,
                maximize: bool = False) -> None:
    """torch.optim.SparseAdam (``torch.optim._functional.sparse_adam``) on the named rows::

        g = coalesced grad (negated when maximize);  at its rows r:
        dm = (g - m[r]) * (1 - beta1);   m[r] += dm
        dv = (g**2 - v[r]) * (1 - beta2);  v[r] += dv
        p[r] += -(lr * sqrt(1 - beta2**step) / (1 - beta1**step)) * ((dm + m_old) / (sqrt(dv + v_old) + eps))
    """
    _checked(param, indices, rows)
    dt = param.dtype.type
    g_idx, g = coalesce(indices, -rows if maximize else rows)
    if g.size == 0:
        return
    old_m = exp_avg[g_idx]
    dm = (g - old_m) * dt(1 - beta1)
    exp_avg[g_idx] = old_m + dm
    old_v = exp_avg_sq[g_idx]
    dv = (g ** 2 - old_v) * dt(1 - beta2)
    exp_avg_sq[g_idx] = old_v + dv
    numer = dm + old_m
    denom = np.sqrt(dv + old_v) + dt(eps)
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    param[g_idx] = param[g_idx] + dt(-step_size) * (numer / denom)


def sparse_adagrad(param: NDArray[Any], indices: NDArray[Any], rows: NDArray[Any],
                   state_sum: NDArray[Any], *, lr: float, lr_decay: float = 0.0,
                   eps: float = 1e-10, step: int, maximize: bool = False) -> None:
    """torch.optim.Adagrad's sparse branch (``_single_tensor_adagrad``) on the named rows::

        g = coalesced grad (negated when maximize);  clr = lr / (1 + (step - 1) * lr_decay)
        s[r] += g**2;   p[r] += -clr * (g / (sqrt(s[r]) + eps))
    """
    _checked(param, indices, rows)
    dt = param.dtype.type
    g_idx, g = coalesce(indices, -rows if maximize else rows)
    if g.size == 0:
        return
    clr = lr / (1 + (step - 1) * lr_decay)
    s = state_sum[g_idx] + g ** 2
    state_sum[g_idx] = s
    param[g_idx] = param[g_idx] + dt(-clr) * (g / (np.sqrt(s) + dt(eps)))


def sparse_sgd(param: NDArray[Any], indices: NDArray[Any], rows: NDArray[Any], *, lr: float,
               maximize: bool = False) -> None:
    """torch.optim.SGD with a sparse grad (no momentum, no weight decay): the uncoalesced
    grad added entry by entry, in the given order::

        p[indices[k]] += (-lr) * rows[k]        (+lr when maximize)
    """
    _checked(param, indices, rows)
    alpha = param.dtype.type(lr if maximize else -lr)
    for k, r in enumerate(np.asarray(indices, dtype=np.int64)):
        param[r] = param[r] + alpha * rows[k]
