"""NumPy twins of the low-precision modes (``state_dtype="bfloat16"``).

Pure NumPy, sharing no code with the compiled loops they check: bfloat16 is handled as
``uint16`` bits (the top half of a float32), rounded to nearest even or stochastically with
the integer tricks written out below, and the update repeats the compiled float32 loop's
operations in the same order (each a float32 NumPy operation, so each rounds as the C one
does), which makes the twin and the kernel agree bit for bit.
"""

import math

import numpy as np

__all__ = ["adam_bf16_state", "bf16_round", "bf16_round_stochastic", "bf16_widen",
           "random_bits", "step_salt"]

_M64 = (1 << 64) - 1


def bf16_widen(bits):
    """float32 values of bfloat16 bits (``uint16``): exact.

    Parameters
    ----------
    bits : ndarray of uint16
        bfloat16 bit patterns.

    Returns
    -------
    ndarray of float32
        ``bits << 16`` read as float32.
    """
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16_round(x):
    """The bfloat16 nearest each float32 of ``x`` (ties to even), as ``uint16`` bits.

    NaN stays a quiet NaN with its sign (its top 16 bits with the quiet bit set); values
    past bfloat16's range round to +-Inf.

    Parameters
    ----------
    x : ndarray of float32

    Returns
    -------
    ndarray of uint16
    """
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    high = u >> np.uint32(16)
    r = (u + np.uint32(0x7FFF) + (high & np.uint32(1))) >> np.uint32(16)
    r = np.where(np.isnan(x), high | np.uint32(0x0040), r)      # quiet, sign kept
    return r.astype(np.uint16)


def step_salt(step, stream):
    """The salt of :func:`random_bits` for update ``step`` and ``stream`` (0: the moments,
    1: AMSGrad's maximum): splitmix64's finalizer of ``3 * step + stream``, its low 32
    bits.

    Parameters
    ----------
    step : int
        The 1-based update number.
    stream : int
        The buffer's number.

    Returns
    -------
    int
        In ``[0, 2**32)``.
    """
    z = (3 * int(step) + int(stream) + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def random_bits(key, salt):
    """32 pseudo-random bits per element: murmur3's 32-bit finalizer of
    ``key_bits * 0x9E3779B1 ^ salt``.

    Parameters
    ----------
    key : ndarray of float32
        Per element (the param before the update: its bits are the key).
    salt : int
        In ``[0, 2**32)`` (:func:`step_salt`).

    Returns
    -------
    ndarray of uint32
    """
    k = np.asarray(key, dtype=np.float32).view(np.uint32)
    # the products wrap modulo 2**32 by design (NumPy warns of it for a 0-d key)
    with np.errstate(over="ignore"):
        h = (k * np.uint32(0x9E3779B1)) ^ np.uint32(salt)
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def bf16_round_stochastic(x, r16):
    """Each float32 of ``x`` rounded to one of its two neighbouring bfloat16 values, up
    with probability (its low 16 bits) / 65536 for uniform ``r16``: the expected stored
    value is ``x``.

    The low 16 bits plus ``r16``, then the low 16 bits dropped; values that are bfloat16
    already are kept, NaN as in :func:`bf16_round`, overflow to Inf.

    Parameters
    ----------
    x : ndarray of float32
    r16 : ndarray of uint32
        Per element, in ``[0, 65536)`` (half of :func:`random_bits`).

    Returns
    -------
    ndarray of uint16
    """
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    r = (u + np.asarray(r16, dtype=np.uint32)) >> np.uint32(16)
    r = np.where(np.isnan(x), (u >> np.uint32(16)) | np.uint32(0x0040), r)
    return r.astype(np.uint16)


def _lerp_f32(start, end, weight):
    # torch's lerp in float32, with the compiled loop's spelling of the second branch:
    # end + (-(1 - w)) * (end - start)
    w = np.float32(weight)
    if w < np.float32(0.5):
        return start + w * (end - start)
    return end + (-(np.float32(1) - w)) * (end - start)


def _adam_f32(p, grad, m, v, vmax=None, *, step, lr, beta1, beta2, eps, weight_decay,
              decoupled_weight_decay, maximize):
    """One Adam update of float32 values, every operation a float32 NumPy operation in the
    compiled element's order (fastlr/_core/loops.pxd: adam_core): the param ``p``, the
    grad (before ``maximize``), the moments ``m``, ``v`` and AMSGrad's maximum ``vmax``
    (None: no AMSGrad), all float32 arrays, none written. Returns ``(p1, m1, v1, vh)``:
    the new param, moments and maximum (``v1`` without AMSGrad)."""
    f = np.float32
    t = float(step)
    step_size = f(lr / (1.0 - math.pow(beta1, t)))
    inv_bc2s = f(1.0 / math.sqrt(1.0 - math.pow(beta2, t)))
    decay = f(1.0 - lr * weight_decay) if decoupled_weight_decay else f(1.0)
    g = (f(-1.0) if maximize else f(1.0)) * grad
    if weight_decay != 0.0 and not decoupled_weight_decay:
        g = g + f(weight_decay) * p
    m1 = _lerp_f32(m, g, 1.0 - beta1)
    v1 = v * f(beta2) + f(1.0 - beta2) * g * g
    vh = v1
    if vmax is not None:      # torch.maximum: NaN in either operand gives NaN
        vh = np.where((v1 > vmax) | (v1 != v1), v1, vmax)
    p1 = p * decay - step_size * (m1 / (np.sqrt(vh) * inv_bc2s + f(eps)))
    return p1, m1, v1, vh


def adam_bf16_state(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr,
                    beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False, n_threads=None):
    """One Adam step with the state kept as bfloat16 bits (``state_dtype="bfloat16"``).

    float32 ``param`` and ``grad``; ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``
    for AMSGrad) are ``uint16`` arrays of bfloat16 bits, updated in place. With
    ``W`` = widen to float32 (exact), ``R(x, r)`` = round to bfloat16 stochastically with
    the 16 random bits ``r`` (:func:`bf16_round_stochastic`), ``h = random_bits(p,
    step_salt(step, 0))`` (keyed by the param's bits before the update) and
    ``h2 = random_bits(p, step_salt(step, 1))``, every operation in float32::

        g = -grad if maximize else grad
        g = g + wd * p                           if weight_decay and not decoupled
        m1 = lerp(W(m), g, 1 - beta1);           m = R(m1, h & 0xFFFF)
        v1 = W(v) * beta2 + (1 - beta2) * g * g; v = R(v1, h >> 16)
        vh = max(W(vmax), v1) (NaN wins);        vmax = R(vh, h2 >> 16)   (AMSGrad)
        p = p * (1 - lr * wd) - step_size * (m1 / (sqrt(vh or v1) * c2 + eps))

    with ``step_size = lr / (1 - beta1**t)``, ``c2 = 1 / sqrt(1 - beta2**t)`` and
    ``1 - lr * wd`` (1 unless decoupled) computed in double and rounded to float32: the
    unrounded moments drive this step's update, the rounded ones are kept.

    Parameters
    ----------
    param : ndarray of float32
        Updated in place.
    grad : ndarray of float32
        Same shape; not modified.
    exp_avg, exp_avg_sq : ndarray of uint16
        bfloat16 bits of the moments, same shape, in place.
    max_exp_avg_sq : ndarray of uint16, optional
        AMSGrad's running maximum (bits), in place.
    step : int
        1-based update number.
    lr, beta1, beta2, eps, weight_decay : float
    decoupled_weight_decay, maximize : bool
    n_threads : int, optional
        Ignored (signature compatibility).

    Returns
    -------
    None

    Examples
    --------
    >>> p = np.ones(2, np.float32); g = np.full(2, 0.5, np.float32)
    >>> m = np.zeros(2, np.uint16); v = np.zeros(2, np.uint16)
    >>> from fastlr.reference.lowprecision import adam_bf16_state, bf16_widen
    >>> adam_bf16_state(p, g, m, v, step=1, lr=0.1)
    >>> p, bf16_widen(m)
    (array([0.9, 0.9], dtype=float32), array([0.05004883, 0.05004883], dtype=float32))
    """
    vmax = None if max_exp_avg_sq is None else bf16_widen(max_exp_avg_sq)
    p1, m1, v1, vh = _adam_f32(param, grad, bf16_widen(exp_avg), bf16_widen(exp_avg_sq), vmax,
                               step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=weight_decay,
                               decoupled_weight_decay=decoupled_weight_decay,
                               maximize=maximize)
    h = random_bits(param, step_salt(step, 0))
    exp_avg[...] = bf16_round_stochastic(m1, h & np.uint32(0xFFFF))
    exp_avg_sq[...] = bf16_round_stochastic(v1, h >> np.uint32(16))
    if max_exp_avg_sq is not None:
        h2 = random_bits(param, step_salt(step, 1))
        max_exp_avg_sq[...] = bf16_round_stochastic(vh, h2 >> np.uint32(16))
    param[...] = p1
