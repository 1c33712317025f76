"""Pure-NumPy twins of the D-Adaptation steps (:mod:`fastlr._core.dadapt`).

dadaptation 3.2's ``DAdaptAdam.step``, ``DAdaptSGD.step`` and ``DAdaptAdaGrad.step`` (dense
grads) written out in NumPy, param by param as the package loops over them: its per-param
dot products and norms are NumPy's (pairwise) sums, accumulated into Python floats in param
order, where the kernel sums fixed blocks in double; so the two agree to rounding, not bit
for bit. Shares no code with the kernel. Minimal validation (an oracle, not the public API);
``n_threads`` is accepted and ignored. The package adds the weight decay into ``p.grad``;
the twins work on copies of the grads.
"""

import math

import numpy as np

__all__ = ["dadapt_adam_step", "dadapt_sgd_step", "dadapt_adagrad_step"]


def _members(group_sizes):
    bounds = np.cumsum([0, *group_sizes])
    return [range(bounds[g], bounds[g + 1]) for g in range(len(group_sizes))]


def _f64sum(a):
    return float(np.sum(a, dtype=np.float64))


def _shared_lr(lr):
    top = max(lr)
    for g, v in enumerate(lr):
        if v not in (top, 0.0):
            raise ValueError(f"lr[{g}] is {v} but the largest is {top}")
    return top


def dadapt_adam_step(params, grads, exp_avg, exp_avg_sq, s, *, group_sizes, lr, weight_decay,
                     eps, layer_scale, betas=(0.9, 0.999), d, numerator_weighted,
                     growth_rate=math.inf, decouple=False, use_bias_correction=False, k,
                     n_threads=None):
    """One DAdaptAdam step (dadaptation 3.2) in place, in NumPy; returns the new estimate.

    With ``dlr = d * max(lr) * bc`` (``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))``
    with ``use_bias_correction``, else 1), for each param of a group with ``lr > 0`` (``g``
    plus ``weight_decay * p`` unless ``decouple``, ``r`` the group's ``layer_scale``):
    ``num += r dlr <g, s / (sqrt(v) + eps)>``, ``m = beta1 m + r dlr (1 - beta1) g``,
    ``v = beta2 v + (1 - beta2) g^2``, ``s = sqrt(beta2) s + dlr (1 - sqrt(beta2)) g``,
    ``l1 += r sum|s|``; ``N = sqrt(beta2) numerator_weighted + (1 - sqrt(beta2)) num``;
    nothing more when ``l1 == 0``; ``d = max(d, min(N / ((1 - sqrt(beta2)) l1),
    d growth_rate))``; then every param: ``p -= weight_decay dlr p`` (``decouple``),
    ``p -= m / (sqrt(v) + eps)``.

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, group 0's params first.
    exp_avg, exp_avg_sq, s : list of numpy.ndarray
        The state, updated in place.
    group_sizes : list of int
        Params per group.
    lr, weight_decay, eps, layer_scale : list of float
        Per group.
    betas : (float, float)
        ``beta1``, ``beta2``.
    d, numerator_weighted : float
        The estimate and the numerator's running average before the step.
    growth_rate : float
        The largest growth of ``d`` per step.
    decouple, use_bias_correction : bool
        Decoupled weight decay; Adam's bias correction in ``dlr``.
    k : int
        Steps taken before this one.
    n_threads : int, optional
        Ignored (serial).

    Returns
    -------
    dict
        ``d``, ``numerator_weighted``, ``d_hat``, ``sk_l1``, ``k`` and ``stepped`` (False,
        with the old values, when ``l1 == 0``).
    """
    beta1, beta2 = betas
    lr_max = _shared_lr(lr)
    bias_correction = (((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
                       if use_bias_correction else 1)
    dlr = d * lr_max * bias_correction
    sqrt_beta2 = beta2 ** 0.5
    numerator_acum = 0.0
    sk_l1 = 0.0
    groups = _members(group_sizes)
    for g, members in enumerate(groups):
        r = layer_scale[g]
        for i in members:
            p = params[i]
            t = p.dtype.type
            grad = np.array(grads[i], copy=True)
            if weight_decay[g] != 0 and not decouple:
                grad += t(weight_decay[g]) * p
            if lr[g] > 0.0:
                denom = np.sqrt(exp_avg_sq[i]) + t(eps[g])
                dot = _f64sum(grad * (s[i] / denom))
                numerator_acum += r * dlr * dot
                exp_avg[i] *= t(beta1)
                exp_avg[i] += t(r * dlr * (1 - beta1)) * grad
                exp_avg_sq[i] *= t(beta2)
                exp_avg_sq[i] += t(1 - beta2) * grad * grad
                s[i] *= t(sqrt_beta2)
                s[i] += t(dlr * (1 - sqrt_beta2)) * grad
                sk_l1 += r * _f64sum(np.abs(s[i]))
    out = {"d": d, "numerator_weighted": numerator_weighted, "d_hat": d, "sk_l1": sk_l1,
           "k": k, "stepped": False}
    numerator_weighted = sqrt_beta2 * numerator_weighted + (1 - sqrt_beta2) * numerator_acum
    if sk_l1 == 0:
        return out
    d_hat = d
    if lr_max > 0.0:
        d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1)
        d = max(d, min(d_hat, d * growth_rate))
    for g, members in enumerate(groups):
        for i in members:
            p = params[i]
            t = p.dtype.type
            denom = np.sqrt(exp_avg_sq[i]) + t(eps[g])
            if weight_decay[g] != 0 and decouple:
                p += t(-weight_decay[g] * dlr) * p
            p -= exp_avg[i] / denom
    out.update(d=d, numerator_weighted=numerator_weighted, d_hat=d_hat, k=k + 1, stepped=True)
    return out


def dadapt_sgd_step(params, grads, s, x0, *, group_sizes, lr, momentum=0.0, weight_decay=0.0,
                    d, numerator_weighted, g0_norm, growth_rate=math.inf, k, n_threads=None):
    """One DAdaptSGD step (dadaptation 3.2) in place, in NumPy; returns the new estimate.

    At ``k == 0``: ``g0_norm = sqrt(sum g^2)`` over groups with ``lr > 0`` (raw grads; a
    ValueError when it is 0). ``dlr = d * max(lr) / g0_norm``; each param of a group with
    ``lr > 0`` (``g`` plus ``weight_decay * p``): ``num += dlr <g, s>``, ``s += dlr g``,
    ``sq += sum s^2``; ``N = numerator_weighted + num``; nothing more when ``sq == 0``;
    ``d = max(d, min(2 N / sqrt(sq), d growth_rate))``; then every param:
    ``p = (1 - ck) p + ck (x0 - s)``, ``ck = 1 - momentum``.

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, group 0's params first.
    s, x0 : list of numpy.ndarray
        ``s`` (updated in place) and the params at the first step.
    group_sizes : list of int
        Params per group.
    lr : list of float
        Per group (each the largest or 0).
    momentum, weight_decay : float
        Shared.
    d, numerator_weighted, g0_norm : float
        The estimate, the numerator and the first grads' norm before the step.
    growth_rate : float
        The largest growth of ``d`` per step.
    k : int
        Steps taken before this one.
    n_threads : int, optional
        Ignored (serial).

    Returns
    -------
    dict
        ``d``, ``numerator_weighted``, ``g0_norm``, ``d_hat``, ``k`` and ``stepped``.
    """
    lr_max = _shared_lr(lr)
    groups = _members(group_sizes)
    if k == 0:
        g_sq = 0.0
        for g, members in enumerate(groups):
            if lr[g] > 0.0:
                for i in members:
                    g_sq += _f64sum(grads[i] * grads[i])
        g0 = math.sqrt(g_sq)
        if g0 == 0.0:
            raise ValueError("the first step's grads are all zero")
    else:
        g0 = g0_norm
    dlr = d * lr_max / g0
    ck = 1 - momentum
    num = numerator_weighted
    sk_sq = 0.0
    for g, members in enumerate(groups):
        for i in members:
            p = params[i]
            t = p.dtype.type
            grad = np.array(grads[i], copy=True)
            if weight_decay != 0:
                grad += t(weight_decay) * p
            if lr[g] > 0.0:
                num += dlr * _f64sum(grad * s[i])
                s[i] += t(dlr) * grad
                sk_sq += _f64sum(s[i] * s[i])
    out = {"d": d, "numerator_weighted": numerator_weighted, "g0_norm": g0_norm, "d_hat": d,
           "k": k, "stepped": False}
    if sk_sq == 0:
        return out
    d_hat = 2 * num / math.sqrt(sk_sq)
    d = max(d, min(d_hat, d * growth_rate))
    for members in groups:
        for i in members:
            p = params[i]
            t = p.dtype.type
            z = x0[i] - s[i]
            p *= t(1 - ck)
            p += t(ck) * z
    out.update(d=d, numerator_weighted=num, g0_norm=g0, d_hat=d_hat, k=k + 1, stepped=True)
    return out


def dadapt_adagrad_step(params, grads, alphak, sk, x0, *, group_sizes, weight_decay, eps,
                        lr=1.0, momentum=0.0, d, gsq_weighted, sksq_weighted, skl1,
                        growth_rate=math.inf, k, n_threads=None):
    """One DAdaptAdaGrad step (dadaptation 3.2, dense grads) in place, in NumPy; returns the
    new estimate.

    ``dlr = d * lr``; each param (``g`` plus its group's ``weight_decay * p``,
    ``den = sqrt(alphak) + eps``): the change of ``sum sk^2 / den`` and ``sum|sk|`` across
    ``alphak += g^2``, ``sk += dlr g``, and ``gsq += sum g^2 / den`` (new ``alphak``);
    ``sksq_weighted``, ``skl1`` move by the changes; nothing more when ``skl1 == 0``;
    ``gsq_weighted += dlr^2 gsq``; ``d = max(d, min((sksq_weighted - gsq_weighted) / skl1,
    d growth_rate))`` when ``lr > 0``; then ``p = (1 - ck) p + ck (x0 - sk / den)``
    (``ck = 1 - momentum``; ``p = x0 - sk / den`` when ``momentum == 0``).

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, group 0's params first.
    alphak, sk, x0 : list of numpy.ndarray
        The state (``alphak``, ``sk`` updated in place; ``x0`` the params at the start).
    group_sizes : list of int
        Params per group.
    weight_decay, eps : list of float
        Per group.
    lr, momentum : float
        Shared.
    d, gsq_weighted, sksq_weighted, skl1 : float
        The estimate and the running sums before the step.
    growth_rate : float
        The largest growth of ``d`` per step.
    k : int
        Steps taken before this one.
    n_threads : int, optional
        Ignored (serial).

    Returns
    -------
    dict
        ``d``, ``gsq_weighted``, ``sksq_weighted``, ``skl1``, ``d_hat``, ``k`` and
        ``stepped``.
    """
    dlr = d * lr
    ck = 1 - momentum
    g_sq = sksq_change = skl1_change = 0.0
    groups = _members(group_sizes)
    for g, members in enumerate(groups):
        for i in members:
            p = params[i]
            t = p.dtype.type
            e = t(eps[g])
            grad = np.array(grads[i], copy=True)
            if weight_decay[g] != 0:
                grad += t(weight_decay[g]) * p
            old_sksq = _f64sum((sk[i] * sk[i]) / (np.sqrt(alphak[i]) + e))
            old_l1 = _f64sum(np.abs(sk[i]))
            alphak[i] += grad * grad
            g_sq += _f64sum((grad * grad) / (np.sqrt(alphak[i]) + e))
            sk[i] += t(dlr) * grad
            sksq_change += _f64sum((sk[i] * sk[i]) / (np.sqrt(alphak[i]) + e)) - old_sksq
            skl1_change += _f64sum(np.abs(sk[i])) - old_l1
    new_sksq = sksq_weighted + sksq_change
    new_l1 = skl1 + skl1_change
    out = {"d": d, "gsq_weighted": gsq_weighted, "sksq_weighted": sksq_weighted,
           "skl1": skl1, "d_hat": d, "k": k, "stepped": False}
    if new_l1 == 0:
        return out
    new_gsq = gsq_weighted + dlr * dlr * g_sq
    d_hat = d
    if lr > 0.0:
        d_hat = (new_sksq - new_gsq) / new_l1
        d = max(d, min(d_hat, d * growth_rate))
    for g, members in enumerate(groups):
        for i in members:
            p = params[i]
            t = p.dtype.type
            z = x0[i] - sk[i] / (np.sqrt(alphak[i]) + t(eps[g]))
            if momentum != 0:
                p *= t(1 - ck)
                p += t(ck) * z
            else:
                p[...] = z
    out.update(d=d, gsq_weighted=new_gsq, sksq_weighted=new_sksq, skl1=new_l1, d_hat=d_hat,
               k=k + 1, stepped=True)
    return out
