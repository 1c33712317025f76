"""Pure-NumPy twins of the layer-wise kernels (:mod:`fastlr._core.layerwise`): LAMB and
LARS as optax 0.2.8 defines them (``optax.lamb``, ``optax.lars``), written from optax's
transformations (``scale_by_adam``, ``add_decayed_weights``, ``scale_by_trust_ratio``,
``scale_by_learning_rate``, ``trace``) in their order, in the arrays' dtype, with NumPy's
norms. No code is shared with the kernels; the tests hold the kernels to these.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lamb", "lars"]


def _trust_ratio(param, update, trust_coefficient, eps):
    """optax's ``scale_by_trust_ratio`` factor (min_norm 0): ``trust_coefficient * |p| /
    (|u| + eps)``, or 1 where either norm is 0; in the param's dtype. The norms are
    ``sqrt(sum(x * x))`` as XLA computes ``jnp.linalg.norm`` (NumPy's pairwise sum; no
    BLAS call, whose threads would only add noise to the benchmarks)."""
    param_norm = np.sqrt(np.sum(param * param))
    update_norm = np.sqrt(np.sum(update * update))
    if param_norm == 0.0 or update_norm == 0.0:
        return param.dtype.type(1.0)
    return param.dtype.type(trust_coefficient * param_norm / (update_norm + eps))


def lamb(param, grad, exp_avg, exp_avg_sq, *, lr, beta1=0.9, beta2=0.999, eps=1e-6,
         eps_root=0.0, weight_decay=0.0, step):
    """One LAMB update in place (``optax.lamb``); returns the trust ratio used.

    ``m = (1 - b1) g + b1 m``; ``v = (1 - b2) g^2 + b2 v``; ``u = (m / (1 - b1^k)) /
    (sqrt(v / (1 - b2^k) + eps_root) + eps) + wd p``; ``r = |p| / |u|`` (1 when either
    norm is 0); ``p += -lr * (u * r)``.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : numpy.ndarray
        Arrays of one dtype and shape; all but ``grad`` updated in place.
    lr, beta1, beta2, eps, eps_root, weight_decay : float
        As :class:`fastlr.LAMB` (``weight_decay`` 0 when the group's mask is off).
    step : int
        This update's count ``k`` (from 1).

    Returns
    -------
    float
        The trust ratio.
    """
    dt = param.dtype.type
    g = grad
    exp_avg[...] = dt(1 - beta1) * g + dt(beta1) * exp_avg
    exp_avg_sq[...] = dt(1 - beta2) * (g * g) + dt(beta2) * exp_avg_sq
    m_hat = exp_avg / dt(1 - beta1 ** step)
    v_hat = exp_avg_sq / dt(1 - beta2 ** step)
    update = m_hat / (np.sqrt(v_hat + dt(eps_root)) + dt(eps))
    if weight_decay != 0.0:
        update = update + dt(weight_decay) * param
    ratio = _trust_ratio(param, update, 1.0, 0.0)
    update = update * ratio
    param += dt(-lr) * update
    return float(ratio)


def lars(param, grad, momentum_buffer, *, lr, momentum=0.9, weight_decay=0.0,
         trust_coefficient=0.001, eps=0.0, nesterov=False, trust_ratio=True):
    """One LARS update in place (``optax.lars``); returns the trust ratio used.

    ``u = g + wd p``; ``u = u * r`` with ``r = trust_coefficient |p| / (|u| + eps)`` (1
    when either norm is 0, or ``trust_ratio`` is False); ``u = -lr u``;
    ``trace = u + momentum trace``; ``p += trace`` (nesterov: ``p += u + momentum trace``).
    ``momentum_buffer`` holds ``-trace`` (fastlr's sign convention; the negation is exact).

    Parameters
    ----------
    param, grad, momentum_buffer : numpy.ndarray
        Arrays of one dtype and shape; ``param`` and ``momentum_buffer`` updated in place.
    lr, momentum, weight_decay, trust_coefficient, eps : float
        As :class:`fastlr.LARS` (``weight_decay`` 0 when the group's mask is off).
    nesterov, trust_ratio : bool
        Nesterov momentum; whether the trust ratio applies (the group's
        ``trust_ratio_mask``).

    Returns
    -------
    float
        The trust ratio (1.0 when not applied).
    """
    dt = param.dtype.type
    update = grad.copy()
    if weight_decay != 0.0:
        update = update + dt(weight_decay) * param
    ratio = _trust_ratio(param, update, trust_coefficient, eps) if trust_ratio else dt(1.0)
    update = update * ratio
    update = dt(-lr) * update
    trace = update + dt(momentum) * -momentum_buffer
    step = update + dt(momentum) * trace if nesterov else trace
    momentum_buffer[...] = -trace
    param += step
    return float(ratio)
