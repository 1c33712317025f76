"""Pure-NumPy twin of the learning-rate-free step (:func:`fastlr._core.lrfree.prodigy_step`).

prodigyopt 1.1.2's ``Prodigy.step`` written out in NumPy, param by param as prodigyopt
loops over them: its per-param dot products and ``sum|s|`` are NumPy's (pairwise) sums,
accumulated into Python floats in param order, where the kernel sums fixed blocks in double;
so the two agree to rounding, not bit for bit. Shares no code with the kernel. Minimal
validation (an oracle, not the public API); ``n_threads`` is accepted and ignored.
"""

import math

import numpy as np

__all__ = ["prodigy_step"]


def prodigy_step(params, grads, exp_avg, exp_avg_sq, s, p0, *, group_sizes, lr, weight_decay,
                 eps, d0, safeguard_warmup, slice_p, betas=(0.9, 0.999), beta3=None, d, d_max,
                 d_numerator, d_coef=1.0, growth_rate=math.inf, decouple=True,
                 use_bias_correction=False, k, n_threads=None):
    """One Prodigy step (prodigyopt 1.1.2) in place, in NumPy; returns the new estimate.

    With ``dlr = d * max(lr) * bc`` (``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))``
    with ``use_bias_correction``, else 1), for each param of a group with ``lr > 0`` (``g``
    plus ``weight_decay * p`` when not ``decouple``): ``num += (d / d0) dlr <g, p0 - p>``,
    ``m = beta1 m + d (1 - beta1) g``, ``v = beta2 v + d^2 (1 - beta2) g^2``,
    ``s = beta3 s + (d / d0) dlr g`` (``(d / d0) d g`` with ``safeguard_warmup``),
    ``den += sum|s|``; then ``N = beta3 d_numerator + num``, ``d_hat = d_coef N / den``,
    ``d = max(d, d_hat)`` while ``d`` equals the last group's ``d0``,
    ``d_max = max(d_max, d_hat)``, ``d = min(d_max, d growth_rate)``; then
    ``p -= weight_decay dlr p`` (``decouple``) and ``p -= dlr m / (sqrt(v) + d eps)``
    (``beta1 = 0``: ``dlr d g / (sqrt(v) + d eps)``). Nothing after the sums runs when
    ``den == 0``.

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, group 0's params first.
    exp_avg : list of numpy.ndarray or None
        First moments (None when ``beta1 == 0``), updated in place.
    exp_avg_sq : list of numpy.ndarray
        Second moments, updated in place.
    s, p0 : list of numpy.ndarray
        Flat arrays of every ``slice_p``-th element of each param in its memory order:
        ``s`` (updated in place) and the params' values at the first step.
    group_sizes : list of int
        Params per group.
    lr, weight_decay, eps, d0, safeguard_warmup, slice_p : list
        Per group: the lr multiplier (each the largest or 0), the weight decay, eps, d0,
        the flag and the stride.
    betas : (float, float)
        ``beta1``, ``beta2``.
    beta3 : float or None
        The decay of ``s`` and the numerator; None: ``sqrt(beta2)``.
    d, d_max, d_numerator : float
        The estimate, its running maximum and the numerator before the step.
    d_coef, growth_rate : float
        The estimate's factor and its largest growth per step.
    decouple, use_bias_correction : bool
        Decoupled weight decay; Adam's bias correction in ``dlr``.
    k : int
        Steps taken before this one.
    n_threads : int, optional
        Ignored (serial).

    Returns
    -------
    dict
        ``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k`` and ``stepped``
        (False, with the old values, when ``den == 0``).
    """
    beta1, beta2 = betas
    if beta3 is None:
        beta3 = math.sqrt(beta2)
    lr_max = max(lr)
    for g, v in enumerate(lr):
        if v not in (lr_max, 0.0):
            raise ValueError(f"lr[{g}] is {v} but the largest is {lr_max}")
    if use_bias_correction:
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
    else:
        bias_correction = 1
    dlr = d * lr_max * bias_correction

    bounds = np.cumsum([0, *group_sizes])
    groups = [range(bounds[g], bounds[g + 1]) for g in range(len(group_sizes))]

    def flat(a):
        return a.ravel(order="K")      # a view of a contiguous array

    # prodigyopt modifies p.grad in place for the coupled decay; the twin works on copies
    g_eff = [np.array(gr, copy=True) for gr in grads]
    delta_numerator = 0.0
    d_denom = 0.0
    for g, members in enumerate(groups):
        decay = weight_decay[g]
        for i in members:
            p = params[i]
            grad = g_eff[i]
            if decay != 0 and not decouple:
                grad += p * p.dtype.type(decay)
            if lr[g] > 0.0:
                sliced = flat(grad)[::slice_p[g]]
                pf = flat(p)[::slice_p[g]]
                dot = float(np.dot(sliced.astype(np.float64), (p0[i] - pf).astype(np.float64)))
                delta_numerator += (d / d0[g]) * dlr * dot
                t = p.dtype.type
                if beta1 > 0:
                    exp_avg[i] *= t(beta1)
                    exp_avg[i] += t(d * (1 - beta1)) * grad
                exp_avg_sq[i] *= t(beta2)
                exp_avg_sq[i] += t(d * d * (1 - beta2)) * grad * grad
                factor = (d / d0[g]) * d if safeguard_warmup[g] else (d / d0[g]) * dlr
                s[i] *= t(beta3)
                s[i] += t(factor) * sliced
                d_denom += float(np.abs(s[i]).astype(np.float64).sum())

    out = {"d": d, "d_max": d_max, "d_numerator": d_numerator, "d_denom": d_denom, "d_hat": d,
           "k": k, "stepped": False}
    if d_denom == 0:
        return out
    global_numerator = d_numerator * beta3 + delta_numerator
    d_hat = d_coef * global_numerator / d_denom
    if d == d0[-1]:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)

    for g, members in enumerate(groups):
        decay = weight_decay[g]
        for i in members:
            p = params[i]
            t = p.dtype.type
            denom = np.sqrt(exp_avg_sq[i]) + t(d * eps[g])
            if decay != 0 and decouple:
                p += t(-decay * dlr) * p
            if beta1 > 0:
                p += t(-dlr) * (exp_avg[i] / denom)
            else:
                p += t(-dlr * d) * (g_eff[i] / denom)
    out.update(d=d, d_max=d_max, d_numerator=global_numerator, d_hat=d_hat, k=k + 1,
               stepped=True)
    return out
