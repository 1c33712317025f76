"""NumPy twin of :func:`fastlr.kernels.adam_mixed`: Adam / AdamW on 16-bit params (float16
or bfloat16), with or without a float32 master copy.

Pure NumPy, sharing no code with the compiled loop it checks: float16 is rounded to nearest
by NumPy's own cast (``astype(np.float16)``) and stochastically from the two neighbouring
halves found with ``np.nextafter``; bfloat16 (``uint16`` bits) and the random bits are the
bfloat16-state twin's (:mod:`fastlr.reference.lowprecision`). The update repeats the float32
Adam loop's operations in the same order, each a float32 NumPy operation, so twin and kernel
agree bit for bit.
"""

import numpy as np

from fastlr.reference.lowprecision import (_adam_f32, bf16_round, bf16_round_stochastic,
                                           bf16_widen, random_bits, step_salt)

__all__ = ["adam_mixed", "adam_mixed_int8_state", "f16_round", "f16_round_stochastic",
           "f16_widen", "round_stochastic_into"]

_PARAM_STREAM = 2           # the salt stream of the param's stochastic rounding


def _param_key(p, g):
    """The random bits' key of a 16-bit param without master: its widened value's bits with
    the (widened) grad's mixed in (a 16-bit param alone takes few distinct values)."""
    with np.errstate(over="ignore"):        # (wraps modulo 2**32 by design)
        return (p.view(np.uint32) ^ (g.view(np.uint32) * np.uint32(0x2C1B3C6D))).view(
            np.float32)


def _bits(a):
    """The 16-bit array's bits as uint16 (a view; float16, uint16 or ml_dtypes.bfloat16)."""
    return a.view(np.uint16)


def _widen(a, bf16):
    """float32 values of a 16-bit array (bfloat16 when ``bf16``, else float16; exact), or
    a float32 array itself."""
    if a.dtype == np.float32:
        return a
    return bf16_widen(_bits(a)) if bf16 else f16_widen(_bits(a))


def f16_widen(bits):
    """float32 values of IEEE half bit patterns: exact, NaN payloads kept as they are.

    Parameters
    ----------
    bits : ndarray of uint16
        IEEE half (float16) bit patterns.

    Returns
    -------
    ndarray of float32
    """
    b = np.asarray(bits, dtype=np.uint16).astype(np.uint32)
    sign = (b & np.uint32(0x8000)) << np.uint32(16)
    exp = (b >> np.uint32(10)) & np.uint32(0x1F)
    man = b & np.uint32(0x3FF)
    # subnormal halves: man * 2^-24 (exact in float32); the rest: the fields moved over
    sub = (man.astype(np.float32) * np.float32(2.0 ** -24)).view(np.uint32)
    normal = ((exp + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13))
    special = np.uint32(0x7F800000) | (man << np.uint32(13))
    u = np.where(exp == 0, sub, np.where(exp == 31, special, normal))
    return (u | sign).view(np.float32)


def _f16_nan(x):
    """NaN as a half: a quiet NaN with x's sign and the top 10 bits of its payload."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    return (sign | np.uint32(0x7E00) | ((u >> np.uint32(13)) & np.uint32(0x3FF))).astype(
        np.uint16)


def f16_round(x):
    """The IEEE half nearest each float32 of ``x`` (ties to even), as ``uint16`` bits:
    NumPy's cast (overflow to Inf, subnormals at 2^-24); NaN a quiet NaN with its sign.

    Parameters
    ----------
    x : ndarray of float32

    Returns
    -------
    ndarray of uint16
    """
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = x.astype(np.float16).view(np.uint16)
    return np.where(np.isnan(x), _f16_nan(x), h)


def f16_round_stochastic(x, rnd):
    """Each float32 of ``x`` rounded to one of its two neighbouring halves with the 32
    random bits ``rnd``: up (away from zero) when ``(rnd mod 2^k) + D >= 2^k``, where ``D``
    is the part of ``|x|`` past the lower neighbour in units of ``2^-k`` of the gap
    (floored). ``k`` = 13 for results of 2^-14 and above; below, the bits a subnormal half
    drops (``-E`` for ``|x| = f * 2^E``, ``0.5 <= f < 1``), at most 31. So a value is
    rounded up with probability (the dropped part) / (the gap): the expected stored value is
    ``x``. Halves are kept; NaN as :func:`f16_round`; past 65504 the upper neighbour is Inf
    (gap 32); from 65536 on, Inf.

    Parameters
    ----------
    x : ndarray of float32
    rnd : ndarray of uint32
        Per element, uniform (:func:`fastlr.reference.lowprecision.random_bits`).

    Returns
    -------
    ndarray of uint16
    """
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        near = a.astype(np.float32).astype(np.float16)           # |x| to nearest
        lo = np.where(near.astype(np.float64) > a, np.nextafter(near, np.float16(0)), near)
        hi = np.nextafter(lo, np.float16(np.inf))
        gap = np.where(np.isinf(hi), 32.0, hi.astype(np.float64) - lo.astype(np.float64))
        frac = (a - lo.astype(np.float64)) / gap                 # in [0, 1), exact
    frac = np.where(a < 65504.0 + 32.0, frac, 0.0)              # (Inf and NaN: set below)
    k = np.where(a >= 2.0 ** -14, 13, np.minimum(-np.frexp(a)[1], 31)).astype(np.int64)
    d = np.floor(np.ldexp(frac, k)).astype(np.int64)
    r = np.asarray(rnd, dtype=np.uint32).astype(np.int64) & ((np.int64(1) << k) - 1)
    up = r + d >= (np.int64(1) << k)
    out = np.where(up, hi, lo).view(np.uint16)
    out = np.where(a >= 65536.0, np.uint16(0x7C00), out)
    out = out | np.where(np.signbit(x), np.uint16(0x8000), np.uint16(0))
    return np.where(np.isnan(x), _f16_nan(x), out).astype(np.uint16)


def adam_mixed(param, grad, exp_avg, exp_avg_sq, master=None, *, step, lr, beta1=0.9,
               beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
               maximize=False, n_threads=None):
    """One Adam step on a 16-bit param, with or without a float32 master copy.

    ``param`` is float16, or bfloat16 (``ml_dtypes.bfloat16`` or ``uint16`` bits); ``grad``
    in its format or float32; ``exp_avg``/``exp_avg_sq`` float32 or bfloat16; ``master``
    float32 or None. With ``p`` the master (else the param widened exactly), every
    operation in float32::

        g  = -grad if maximize else grad;  g = g + wd * p   (L2: not decoupled)
        m1 = lerp(m, g, 1 - beta1);  v1 = v * beta2 + (1 - beta2) * g * g
        p1 = p * (1 - lr * wd) - step_size * (m1 / (sqrt(v1) * c2 + eps))

    (``step_size = lr / (1 - beta1**t)``, ``c2 = 1 / sqrt(1 - beta2**t)`` in double, then
    float32; ``1 - lr * wd`` only when decoupled). The key of the random bits is ``p``
    with a master, else ``bits(p) ^ bits(grad) * 0x2C1B3C6D`` (float32 bits, the grad
    widened, before ``maximize``). bfloat16 moments are widened and stored stochastically
    with ``h = random_bits(key, step_salt(step, 0))`` (low half m, high half v). With a
    master: ``master = p1``, ``param`` = p1 to nearest even. Without: ``param`` = p1
    rounded stochastically with ``random_bits(key, step_salt(step, 2))`` (bfloat16: its
    high 16 bits; float16: :func:`f16_round_stochastic`).

    Parameters
    ----------
    param : ndarray
        float16 or bfloat16, updated in place.
    grad : ndarray
        The param's format or float32; not modified.
    exp_avg, exp_avg_sq : ndarray
        float32 or bfloat16, updated in place.
    master : ndarray of float32, optional
        Updated in place.
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
    >>> p = np.ones(2, np.float16); g = np.full(2, 0.5, np.float16)
    >>> m = np.zeros(2, np.float32); v = np.zeros(2, np.float32)
    >>> from fastlr.reference.mixed import adam_mixed
    >>> adam_mixed(p, g, m, v, p.astype(np.float32), step=1, lr=0.1)
    >>> p
    array([0.9, 0.9], dtype=float16)
    """
    bf16 = param.dtype != np.float16

    p = master.copy() if master is not None else _widen(param, bf16)
    graw = _widen(grad, bf16)
    key = p if master is not None else _param_key(p, graw)
    state16 = exp_avg.dtype != np.float32
    m = bf16_widen(_bits(exp_avg)) if state16 else exp_avg
    v = bf16_widen(_bits(exp_avg_sq)) if state16 else exp_avg_sq
    p1, m1, v1, _ = _adam_f32(p, graw, m, v, step=step, lr=lr, beta1=beta1, beta2=beta2,
                              eps=eps, weight_decay=weight_decay,
                              decoupled_weight_decay=decoupled_weight_decay,
                              maximize=maximize)
    if state16:
        h = random_bits(key, step_salt(step, 0))
        _bits(exp_avg)[...] = bf16_round_stochastic(m1, h & np.uint32(0xFFFF))
        _bits(exp_avg_sq)[...] = bf16_round_stochastic(v1, h >> np.uint32(16))
    else:
        exp_avg[...] = m1
        exp_avg_sq[...] = v1
    if master is not None:
        master[...] = p1
        _bits(param)[...] = bf16_round(p1) if bf16 else f16_round(p1)
    else:
        round_stochastic_into(_bits(param), p1, graw, step, bf16)


def round_stochastic_into(param, value, grad, step, bfloat16):
    """Twin of ``fastlr._core.mixed.round_stochastic_into``: the 16-bit bits ``param``
    (uint16, updated in place) = the float32 ``value`` rounded stochastically with the
    random bits :func:`adam_mixed` takes for a param without master (a hash of the param's
    old value, the grad's, given as 16-bit bits of the param's format or float32, and
    ``step``).

    Examples
    --------
    >>> bits = np.ones(3, np.float16).view(np.uint16)
    >>> g = np.zeros(3, np.float32)
    >>> round_stochastic_into(bits, np.full(3, 0.5, np.float32), g, 1, False)
    >>> bits.view(np.float16)
    array([0.5, 0.5, 0.5], dtype=float16)
    """
    if int(step) < 1:
        raise ValueError(f"round_stochastic_into: step must be >= 1, got {step}")
    r = random_bits(_param_key(_widen(param, bfloat16), _widen(grad, bfloat16)),
                    step_salt(step, _PARAM_STREAM))
    value = np.asarray(value, dtype=np.float32)
    param[...] = (bf16_round_stochastic(value, r >> np.uint32(16)) if bfloat16
                  else f16_round_stochastic(value, r))


#: Elements per chunk of the twin's passes without a master (the codes' random bits take
#: the element's index in its chunk; fastlr/optim/direct16.py's CHUNK)
CHUNK = 1 << 16


def adam_mixed_int8_state(param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale,
                          master=None, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                          weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
                          amsgrad=False, n_threads=None):
    """Twin of :func:`fastlr.kernels.adam_mixed_int8_state`: Adam / AdamW on a 16-bit param
    with 8-bit block-wise state, in place, bit for bit, as passes of the other twins.

    With ``master``: :func:`fastlr.reference.adam_int8_state` on the master with the grad
    widened exactly, then the param = the master rounded to nearest even. Without: per
    chunk of :data:`CHUNK` elements (memory order), the param and grad widened exactly,
    :func:`fastlr.reference.adam_int8_state` on the widened values and the chunk's codes
    and scales (so the codes' random bits take the index in the chunk), then
    :func:`round_stochastic_into`.

    Parameters
    ----------
    param : ndarray
        float16 or bfloat16 (``ml_dtypes.bfloat16`` or ``uint16`` bits), updated in place.
    grad : ndarray
        The param's format or float32; not modified.
    exp_avg, exp_avg_sq : ndarray of uint8
        The codes, updated in place.
    exp_avg_scale, exp_avg_sq_scale : ndarray of float32
        One scale per block of 256 elements, updated in place.
    master : ndarray of float32, optional
        Updated in place.
    step : int
        1-based update number.
    lr, beta1, beta2, eps, weight_decay : float
    decoupled_weight_decay, maximize, amsgrad : bool
        ``amsgrad`` must be False.
    n_threads : int, optional
        Ignored (signature compatibility).

    Returns
    -------
    None

    Examples
    --------
    >>> p = np.ones(2, np.float16); g = np.full(2, 0.5, np.float16)
    >>> m = np.zeros(2, np.uint8); v = np.zeros(2, np.uint8)
    >>> s = np.zeros(1, np.float32); t = np.zeros(1, np.float32)
    >>> from fastlr.reference.mixed import adam_mixed_int8_state
    >>> adam_mixed_int8_state(p, g, m, s, v, t, step=1, lr=0.1)
    >>> p
    array([0.9, 0.9], dtype=float16)
    """
    from fastlr.reference.int8state import BLOCK, adam_int8_state

    bf16 = param.dtype != np.float16

    kw = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
              decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
              amsgrad=amsgrad)
    order = "F" if param.flags.f_contiguous and not param.flags.c_contiguous else "C"
    if master is not None:
        adam_int8_state(master, _widen(grad, bf16), exp_avg, exp_avg_scale, exp_avg_sq,
                        exp_avg_sq_scale, **kw)
        _bits(param)[...] = bf16_round(master) if bf16 else f16_round(master)
        return
    bits = _bits(param).reshape(-1, order=order)
    g = grad.reshape(-1, order=order)
    gkey = g if g.dtype == np.float32 else _bits(g)
    codes = [c.reshape(-1, order=order) for c in (exp_avg, exp_avg_sq)]
    for a in range(0, bits.size, CHUNK):
        b = min(a + CHUNK, bits.size)
        w = _widen(bits[a:b], bf16).astype(np.float32)   # a copy (the old bits are kept)
        sa, sb = a // BLOCK, (b + BLOCK - 1) // BLOCK
        adam_int8_state(w, _widen(g[a:b], bf16), codes[0][a:b], exp_avg_scale[sa:sb],
                        codes[1][a:b], exp_avg_sq_scale[sa:sb], **kw)
        round_stochastic_into(bits[a:b], w, gkey[a:b], step, bf16)
