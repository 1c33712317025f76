"""In-place NumPy baselines: the best a NumPy user can do for an optimizer step.

``out=`` ufuncs into preallocated scratch, no temporaries. They apply
:mod:`fastlr.reference`'s formulas operation by operation, in the same order and dtype, so
they give the reference's bits (``tests/tools/test_bench.py`` checks it). ``fastlr bench``
times them as its ``numpy`` column; :data:`INPLACE` maps a kernel name to its baseline
(kernels without one are absent, and the bench says so).

Like the reference, this module imports nothing but NumPy.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["numpy_scratch", "numpy_inplace_sgd", "numpy_inplace_rmsprop", "numpy_inplace_adam",
           "numpy_inplace_adamw", "INPLACE"]


def numpy_scratch(param: NDArray[Any], count: int = 2) -> List[NDArray[Any]]:
    """Scratch arrays for the ``numpy_inplace_*`` functions (two are enough for all).

    Parameters
    ----------
    param : ndarray
        The parameter array the scratch is for (its shape and dtype are used).
    count : int, optional
        How many arrays to make.

    Returns
    -------
    list of ndarray
        ``count`` uninitialized arrays like ``param``.

    Examples
    --------
    >>> from fastlr.reference.inplace import numpy_scratch
    >>> [a.shape for a in numpy_scratch(np.zeros(3))]
    [(3,), (3,)]
    """
    return [np.empty_like(param) for _ in range(count)]


def _scratch(param: NDArray[Any],
             scratch: Optional[Sequence[NDArray[Any]]]) -> Sequence[NDArray[Any]]:
    if scratch is None:
        return numpy_scratch(param)
    if len(scratch) < 2:
        raise ValueError("numpy_inplace_*: scratch must hold at least two arrays like param")
    return scratch


def _signed_grad(grad, maximize, weight_decay, param, t0, t1):
    """g = -grad if maximize; g = g + weight_decay * param: in t0 (or grad itself)."""
    g = grad
    if maximize:
        np.negative(grad, out=t0)
        g = t0
    if weight_decay != 0:
        np.multiply(param, weight_decay, out=t1)
        np.add(g, t1, out=t0)
        g = t0
    return g


def _lerp_inplace(start, end, weight, tmp):
    """start = torch.lerp(start, end, weight), in place (fastlr.reference._lerp's branches)."""
    weight = start.dtype.type(weight)          # in the arrays' dtype, as torch
    np.subtract(end, start, out=tmp)
    if abs(weight) < 0.5:
        np.multiply(tmp, weight, out=tmp)
        np.add(start, tmp, out=start)
    else:
        np.multiply(tmp, start.dtype.type(1.0) - weight, out=tmp)
        np.subtract(end, tmp, out=start)


def numpy_inplace_sgd(param: NDArray[Any], grad: NDArray[Any],
                      momentum_buffer: Optional[NDArray[Any]] = None, *, step: int, lr: float,
                      momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                      weight_decay: float = 0.0, maximize: bool = False,
                      n_threads: Optional[int] = None,
                      scratch: Optional[Sequence[NDArray[Any]]] = None) -> None:
    """:func:`fastlr.reference.sgd` with in-place ufuncs.

    Parameters
    ----------
    param, grad, momentum_buffer : ndarray
        As in :func:`fastlr.reference.sgd` (``momentum_buffer`` optional).
    step : int
        1-based update number.
    lr, momentum, dampening, weight_decay : float
        Hyperparameters as in torch.
    nesterov, maximize : bool
        Options as in torch.
    scratch : sequence of ndarray, optional
        At least two arrays like ``param`` (:func:`numpy_scratch`), overwritten; None
        allocates them on each call.
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        ``scratch`` holds fewer than two arrays, or ``momentum != 0`` without
        ``momentum_buffer``.

    Examples
    --------
    >>> from fastlr.reference.inplace import numpy_inplace_sgd
    >>> p = np.ones(2)
    >>> numpy_inplace_sgd(p, np.full(2, 0.5), step=1, lr=0.1)
    >>> p
    array([0.95, 0.95])
    """
    t0, t1 = _scratch(param, scratch)[:2]
    lr, momentum, dampening, weight_decay = (float(lr), float(momentum), float(dampening),
                                             float(weight_decay))
    g = _signed_grad(grad, maximize, weight_decay, param, t0, t1)
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum != 0 requires momentum_buffer")
        if step == 1:
            np.copyto(momentum_buffer, g)
        else:
            np.multiply(momentum_buffer, momentum, out=momentum_buffer)
            np.multiply(g, 1.0 - dampening, out=t1)
            np.add(momentum_buffer, t1, out=momentum_buffer)
        if nesterov:
            np.multiply(momentum_buffer, momentum, out=t1)
            np.add(g, t1, out=t1)
            g = t1
        else:
            g = momentum_buffer
    out = g if (g is t0 or g is t1) else t1
    np.multiply(g, lr, out=out)
    np.subtract(param, out, out=param)


def numpy_inplace_rmsprop(param: NDArray[Any], grad: NDArray[Any], square_avg: NDArray[Any],
                          momentum_buffer: Optional[NDArray[Any]] = None,
                          grad_avg: Optional[NDArray[Any]] = None, *, lr: float,
                          alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                          momentum: float = 0.0, maximize: bool = False,
                          n_threads: Optional[int] = None,
                          scratch: Optional[Sequence[NDArray[Any]]] = None) -> None:
    """:func:`fastlr.reference.rmsprop` with in-place ufuncs.

    Parameters
    ----------
    param, grad, square_avg, momentum_buffer, grad_avg : ndarray
        As in :func:`fastlr.reference.rmsprop` (the last two optional).
    lr, alpha, eps, weight_decay, momentum : float
        Hyperparameters as in torch.
    maximize : bool
        Maximize the objective (step along ``+grad``).
    scratch : sequence of ndarray, optional
        At least two arrays like ``param`` (:func:`numpy_scratch`), overwritten; None
        allocates them on each call.
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        ``scratch`` holds fewer than two arrays, or ``momentum > 0`` without
        ``momentum_buffer``.

    Examples
    --------
    >>> from fastlr.reference.inplace import numpy_inplace_rmsprop
    >>> p = np.ones(2); v = np.zeros(2)
    >>> numpy_inplace_rmsprop(p, np.ones(2), v, lr=0.01, alpha=0.75, eps=0.0)
    >>> p
    array([0.98, 0.98])
    """
    t0, t1 = _scratch(param, scratch)[:2]
    lr, alpha, eps, weight_decay, momentum = (float(lr), float(alpha), float(eps),
                                              float(weight_decay), float(momentum))
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("momentum > 0 requires momentum_buffer")
    g = _signed_grad(grad, maximize, weight_decay, param, t0, t1)
    np.multiply(square_avg, alpha, out=square_avg)
    np.multiply(g, 1.0 - alpha, out=t1)
    np.multiply(t1, g, out=t1)
    np.add(square_avg, t1, out=square_avg)
    if grad_avg is not None:
        _lerp_inplace(grad_avg, g, 1.0 - alpha, t1)
        np.multiply(grad_avg, grad_avg, out=t1)
        np.subtract(square_avg, t1, out=t1)
        np.sqrt(t1, out=t1)
    else:
        np.sqrt(square_avg, out=t1)
    np.add(t1, eps, out=t1)                       # avg
    np.divide(g, t1, out=t1)                      # g / avg
    if momentum > 0 and momentum_buffer is not None:      # (checked above)
        np.multiply(momentum_buffer, momentum, out=momentum_buffer)
        np.add(momentum_buffer, t1, out=momentum_buffer)
        np.multiply(momentum_buffer, lr, out=t1)
    else:
        np.multiply(t1, lr, out=t1)
    np.subtract(param, t1, out=param)


def numpy_inplace_adam(param: NDArray[Any], grad: NDArray[Any], exp_avg: NDArray[Any],
                       exp_avg_sq: NDArray[Any], max_exp_avg_sq: Optional[NDArray[Any]] = None,
                       *, step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                       eps: float = 1e-8, weight_decay: float = 0.0,
                       decoupled_weight_decay: bool = False, maximize: bool = False,
                       n_threads: Optional[int] = None,
                       scratch: Optional[Sequence[NDArray[Any]]] = None) -> None:
    """:func:`fastlr.reference.adam` with in-place ufuncs.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq : ndarray
        As in :func:`fastlr.reference.adam` (``max_exp_avg_sq`` optional: AMSGrad).
    step : int
        1-based update number, >= 1.
    lr, beta1, beta2, eps, weight_decay : float
        Hyperparameters as in torch.
    decoupled_weight_decay, maximize : bool
        Options as in :func:`fastlr.reference.adam`.
    scratch : sequence of ndarray, optional
        At least two arrays like ``param`` (:func:`numpy_scratch`), overwritten; None
        allocates them on each call.
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        ``step < 1``, or ``scratch`` holds fewer than two arrays.

    Examples
    --------
    >>> from fastlr.reference.inplace import numpy_inplace_adam
    >>> p = np.ones(2); m = np.zeros(2); v = np.zeros(2)
    >>> numpy_inplace_adam(p, np.full(2, 0.5), m, v, step=1, lr=0.1)
    >>> p.round(6)
    array([0.9, 0.9])
    """
    if step is None or step < 1:
        raise ValueError(f"step must be >= 1 (1-based update number), got {step!r}")
    t0, t1 = _scratch(param, scratch)[:2]
    lr, beta1, beta2, eps, weight_decay = (float(lr), float(beta1), float(beta2), float(eps),
                                           float(weight_decay))
    decoupled = weight_decay != 0 and decoupled_weight_decay
    g = _signed_grad(grad, maximize, 0.0 if decoupled else weight_decay, param, t0, t1)
    if decoupled:
        np.multiply(param, 1.0 - lr * weight_decay, out=param)
    _lerp_inplace(exp_avg, g, 1.0 - beta1, t1)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    np.multiply(g, 1.0 - beta2, out=t1)
    np.multiply(t1, g, out=t1)
    np.add(exp_avg_sq, t1, out=exp_avg_sq)
    step_size = lr / (1.0 - beta1 ** step)
    bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
    vhat = exp_avg_sq
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        vhat = max_exp_avg_sq
    np.sqrt(vhat, out=t1)
    np.divide(t1, bias_correction2_sqrt, out=t1)
    np.add(t1, eps, out=t1)                       # denom
    np.divide(exp_avg, t1, out=t1)
    np.multiply(t1, step_size, out=t1)
    np.subtract(param, t1, out=param)


def numpy_inplace_adamw(param: NDArray[Any], grad: NDArray[Any], exp_avg: NDArray[Any],
                        exp_avg_sq: NDArray[Any],
                        max_exp_avg_sq: Optional[NDArray[Any]] = None, *, step: int,
                        lr: float, beta1: float = 0.9, beta2: float = 0.999,
                        eps: float = 1e-8, weight_decay: float = 1e-2, maximize: bool = False,
                        n_threads: Optional[int] = None,
                        scratch: Optional[Sequence[NDArray[Any]]] = None) -> None:
    """:func:`fastlr.reference.adamw` with in-place ufuncs.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq : ndarray
        As in :func:`fastlr.reference.adamw` (``max_exp_avg_sq`` optional: AMSGrad).
    step : int
        1-based update number, >= 1.
    lr, beta1, beta2, eps, weight_decay : float
        Hyperparameters as in torch (decoupled weight decay).
    maximize : bool
        Maximize the objective (step along ``+grad``).
    scratch : sequence of ndarray, optional
        At least two arrays like ``param`` (:func:`numpy_scratch`), overwritten; None
        allocates them on each call.
    n_threads : int, optional
        Accepted for signature compatibility with the kernel and ignored.

    Returns
    -------
    None
        ``param`` and the state buffers are updated in place.

    Raises
    ------
    ValueError
        ``step < 1``, or ``scratch`` holds fewer than two arrays.

    Examples
    --------
    >>> from fastlr.reference.inplace import numpy_inplace_adamw
    >>> p = np.ones(2); m = np.zeros(2); v = np.zeros(2)
    >>> numpy_inplace_adamw(p, np.full(2, 0.5), m, v, step=1, lr=0.1, weight_decay=0.5)
    >>> p.round(6)
    array([0.85, 0.85])
    """
    numpy_inplace_adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr,
                       beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                       decoupled_weight_decay=True, maximize=maximize, scratch=scratch)


NUMPY_INPLACE: Dict[str, Callable[..., None]] = {
    "sgd": numpy_inplace_sgd, "rmsprop": numpy_inplace_rmsprop,
    "adam": numpy_inplace_adam, "adamw": numpy_inplace_adamw}


#: kernel name -> its in-place NumPy baseline (same signature as the kernel, plus scratch=).
INPLACE: Dict[str, Callable[..., None]] = {
    "sgd": numpy_inplace_sgd, "rmsprop": numpy_inplace_rmsprop,
    "adam": numpy_inplace_adam, "adamw": numpy_inplace_adamw}
