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
    """One Prodigy step in place; returns the new estimate (see the kernel's docstring).

    ``s[i]`` and ``p0[i]`` are flat arrays of every ``slice_p``-th element of param ``i``
    in its memory order (C order for the params the kernel accepts with ``slice_p > 1``).
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
