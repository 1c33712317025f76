"""Pure-NumPy twin of the Adafactor kernel (:func:`fastlr.kernels.adafactor`).

torch.optim.Adafactor 2.13's single-tensor path (``_single_tensor_adafactor``) written
out in NumPy, operation by operation in the param's dtype, sharing no code with the
compiled kernel (:mod:`fastlr._core.adafactor`). The reductions are NumPy's (pairwise
sums in the dtype), so the twin agrees with the kernel (double accumulators) and with
torch to rounding, not bit for bit.
"""

import numpy as np

__all__ = ["adafactor"]


def _lerp(start, end, weight):
    """torch's lerp with a scalar weight, in ``start``'s dtype, written into ``start``."""
    w = start.dtype.type(weight)
    if w < 0.5:
        start += w * (end - start)
    else:
        start[...] = end - (end - start) * (start.dtype.type(1) - w)


def adafactor(param, grad, row_var=None, col_var=None, variance=None, *, step, lr=1e-2,
              beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0, weight_decay=0.0,
              maximize=False):
    """One Adafactor update of ``param`` in place; the twin of
    :func:`fastlr.kernels.adafactor` (same arguments and formula), in NumPy.

    Parameters
    ----------
    param : numpy.ndarray
        float32 or float64; updated in place.
    grad : numpy.ndarray
        The gradient, of the param's dtype and shape.
    row_var, col_var : numpy.ndarray, optional
        For a param of >= 2 dims: shapes ``(..., m, 1)`` and ``(..., 1, n)``; updated in
        place.
    variance : numpy.ndarray, optional
        For a param of 0 or 1 dims: the param's shape; updated in place.
    step : int
        The 1-based update number, ``>= 1``.
    lr : float, default 1e-2
        The cap of the relative step size and the weight decay's factor.
    beta2_decay : float, default -0.8
        The exponent of the statistics' weight ``step ** beta2_decay``.
    eps1 : float, optional
        The floor of the row mean and of ``sqrt(V)``; None: the dtype's machine epsilon.
    eps2 : float, default 1e-3
        The floor of the param's RMS.
    d : float, default 1
        The update clipping threshold.
    weight_decay : float, default 0
        Decoupled weight decay, ``param *= 1 - lr * weight_decay``.
    maximize : bool, default False
        Ascend instead of descend.

    Returns
    -------
    None
        ``param`` and its state are updated in place.

    Raises
    ------
    ValueError
        If ``step < 1`` or the state the param's dims need is missing (only these are
        checked: an oracle, not the public API).

    Examples
    --------
    >>> p, v = np.ones(2), np.zeros(2)
    >>> fastlr.reference.adafactor(p, np.ones(2), variance=v, step=1, lr=0.01)
    >>> p
    array([0.99, 0.99])
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    dt = param.dtype.type
    grad = -grad if maximize else grad
    if eps1 is None:
        eps1 = float(np.finfo(param.dtype).eps)
    if param.size == 0:
        return
    one_minus_beta2_t = float(step) ** beta2_decay
    rho_t = min(lr, 1 / (float(step) ** 0.5))
    rms = float(np.sqrt(np.sum(param * param))) / (param.size ** 0.5)
    alpha = max(eps2, rms) * rho_t
    if weight_decay != 0:
        param *= dt(1 - lr * weight_decay)
    if grad.ndim > 1:
        if row_var is None or col_var is None:
            raise ValueError("row_var and col_var are required for a param of >= 2 dims")
        n, m = grad.shape[-1], grad.shape[-2]
        row_mean = np.sqrt(np.sum(grad * grad, axis=-1, keepdims=True))
        row_mean = row_mean * row_mean / dt(n)
        _lerp(row_var, row_mean, one_minus_beta2_t)
        col_mean = np.sqrt(np.sum(grad * grad, axis=-2, keepdims=True))
        col_mean = col_mean * col_mean / dt(m)
        _lerp(col_var, col_mean, one_minus_beta2_t)
        var_estimate = row_var * col_var        # (..., m, 1) * (..., 1, n): the outer product
        row_mean_of_row = np.sum(row_var, axis=-2, keepdims=True) / dt(m)
        var_estimate = var_estimate / np.maximum(row_mean_of_row, dt(eps1))
    else:
        if variance is None:
            raise ValueError("variance is required for a param of 0 or 1 dims")
        _lerp(variance, grad * grad, one_minus_beta2_t)
        var_estimate = variance.copy()
    update = dt(1) / np.sqrt(np.maximum(var_estimate, dt(eps1 * eps1))) * grad
    update_rms = float(np.sqrt(np.sum(update * update))) / ((update.size ** 0.5) * d)
    denom = max(1.0, update_rms)
    param += dt(-alpha / denom) * update
