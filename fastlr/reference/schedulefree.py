"""Pure-NumPy twins of the schedule-free loops (``fastlr._core.schedulefree``): the oracle
the tests hold them to. Clear NumPy, one operation at a time in the order of the
``schedulefree`` package's per-tensor path (torch's ``mul_``, ``addcmul_``, ``div``,
``sqrt_``, ``add_``, ``lerp_``, ``sub_``), temporaries allowed; no code shared with the
kernels.

Scalars are Python floats, so NumPy (NEP 50) rounds them to the arrays' dtype, as torch
rounds a Python scalar for a float32 tensor.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["sgd_step", "adam_step", "switch"]


def _lerp_(a: NDArray[Any], b: NDArray[Any], w: float) -> None:
    """torch's ``a.lerp_(b, w)`` with a scalar weight, in place: ``a + w (b - a)`` when
    ``|w| < 0.5``, else ``b - (b - a) (1 - w)``."""
    wt = a.dtype.type(w)
    if abs(w) < 0.5:
        a[...] = a + wt * (b - a)
    else:
        a[...] = b - (b - a) * (a.dtype.type(1) - wt)


def _update_(y: NDArray[Any], z: NDArray[Any], gn: NDArray[Any], ckp1: float, lr: float,
             y_coef: float, weight_decay: float) -> None:
    """The common end of a step, in place: ``gn += weight_decay * y`` (decay at y),
    ``y.lerp_(z, ckp1)``, ``y += y_coef * gn``, ``z -= lr * gn``."""
    t = y.dtype.type
    if weight_decay != 0:
        gn = gn + t(weight_decay) * y
    _lerp_(y, z, ckp1)
    y += t(y_coef) * gn
    z -= t(lr) * gn


def _check(ys: Sequence[NDArray[Any]], *others: Optional[Sequence[NDArray[Any]]]) -> None:
    for other in others:
        if other is not None and len(other) != len(ys):
            raise ValueError(f"got {len(other)} arrays for {len(ys)} params")
        for y, o in zip(ys, other or ()):
            if o.dtype != y.dtype or o.shape != y.shape:
                raise ValueError(f"arrays must match their param's dtype and shape, got "
                                 f"{o.dtype}{o.shape} for {y.dtype}{y.shape}")


def sgd_step(ys: List[NDArray[Any]], grads: List[NDArray[Any]], zs: List[NDArray[Any]], *,
             ckp1: float, lr: float, y_coef: float, weight_decay: float) -> None:
    """Schedule-free SGD's step on each param (``SGDScheduleFree``'s per-tensor path).

    ``gn = g + weight_decay * y``, ``y.lerp_(z, ckp1)``, ``y += y_coef * gn``,
    ``z -= lr * gn``; ``ys`` and ``zs`` updated in place, the grads left as they were.
    """
    _check(ys, grads, zs)
    for y, g, z in zip(ys, grads, zs):
        _update_(y, z, g.copy(), ckp1, lr, y_coef, weight_decay)


def adam_step(ys: List[NDArray[Any]], grads: List[NDArray[Any]], zs: List[NDArray[Any]],
              vs: List[NDArray[Any]], *, ckp1: float, lr: float, y_coef: float,
              weight_decay: float, beta2: float, bias_correction2: float, eps: float,
              adaptive: bool) -> None:
    """Schedule-free AdamW's / RAdam's step on each param (their per-tensor path).

    ``v = v * beta2 + (1 - beta2) * g * g``; when ``adaptive``, ``gn = g / (sqrt(v /
    bias_correction2) + eps)``, else ``gn = g``; ``gn += weight_decay * y``;
    ``y.lerp_(z, ckp1)``, ``y += y_coef * gn``, ``z -= lr * gn``.
    """
    _check(ys, grads, zs, vs)
    for y, g, z, v in zip(ys, grads, zs, vs):
        t = y.dtype.type
        v *= t(beta2)
        v += (t(1 - beta2) * g) * g
        if adaptive:
            denom = np.sqrt(v / t(bias_correction2)) + t(eps)
            gn = g / denom
        else:
            gn = g.copy()
        _update_(y, z, gn, ckp1, lr, y_coef, weight_decay)


def switch(ys: List[NDArray[Any]], zs: List[NDArray[Any]], weight: float) -> None:
    """The train/eval switch: ``y.lerp_(z, weight)`` for each param, in place."""
    _check(ys, zs)
    for y, z in zip(ys, zs):
        _lerp_(y, z, weight)
