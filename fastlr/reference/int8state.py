"""NumPy twin of the 8-bit block-wise quantized Adam state (``state_dtype="int8"``).

Pure NumPy, sharing no code with the compiled kernel (``fastlr/_core/int8state.pyx``): the
codes are decoded and encoded with the float32 bit operations written out below, blocks of
256 elements are rows of a padded 2-D view, and the update is the bfloat16-state twin's
float32 Adam arithmetic (``fastlr.reference.lowprecision._adam_f32``: the compiled loop's
float32 operations in the same order, each a float32 NumPy operation, rounded as the C one
is), so the twin and the kernel agree bit for bit. The random bits are the bfloat16-state
twin's hash (:func:`fastlr.reference.lowprecision.random_bits`) of the param's bits XOR
the element's index.

The codes (relative to the block's scale, its absolute maximum): ``exp_avg`` a sign bit
(bit 7) and a 7-bit small float of 4 exponent and 3 mantissa bits (largest exponent 15);
``exp_avg_sq`` an 8-bit small float of 5 exponent and 3 mantissa bits (largest exponent
31). Code ``c >= 8`` is ``2**(c // 8 - emax) * (1 + (c % 8) / 8)``; ``c < 8`` is
``c * 2**(-2 - emax)``.
"""

import numpy as np

from fastlr.reference.lowprecision import _adam_f32, random_bits, step_salt

__all__ = ["adam_int8_state", "int8_decode", "int8_decode_signed", "int8_encode", "BLOCK"]

#: Elements per block.
BLOCK = 256
_M = (15, 127)      # exp_avg: the largest exponent, the largest magnitude code
_V = (31, 255)      # exp_avg_sq


def int8_decode(codes, emax):
    """The magnitudes of the codes (``uint8``, the sign bit already removed) relative to
    the scale, as float32 (exact).

    Parameters
    ----------
    codes : ndarray of integers
        In ``[0, 256)``.
    emax : int
        The code's largest exponent (15 for exp_avg, 31 for exp_avg_sq).

    Returns
    -------
    ndarray of float32
    """
    c = np.asarray(codes).astype(np.uint32)
    normal = ((c + np.uint32((127 - emax) * 8)) << np.uint32(20)).view(np.float32)
    sub = c.astype(np.float32) * np.float32(2.0 ** (-2 - emax))
    return np.where(c >= 8, normal, sub).astype(np.float32)


def int8_decode_signed(codes, emax):
    """The values of signed codes (``exp_avg``'s: bit 7 the sign, bits 0-6 the magnitude
    code) relative to the scale, as float32 (exact): the magnitude
    ``int8_decode(c & 127, emax)`` with the sign bit moved to the float32 sign bit,
    ``bits(value) = bits(int8_decode(c & 127, emax)) | (c & 128) << 24`` (code 128 is
    ``-0.0``).

    Parameters
    ----------
    codes : ndarray of integers
        In ``[0, 256)``.
    emax : int
        The magnitude code's largest exponent (15 for exp_avg).

    Returns
    -------
    ndarray of float32
    """
    c = np.asarray(codes).astype(np.uint32)
    mag = int8_decode(c & np.uint32(127), emax)
    return (mag.view(np.uint32) | ((c & np.uint32(128)) << np.uint32(24))).view(np.float32)


def int8_encode(y, r20, emax, cmax):
    """Codes of ``y >= 0`` (float32, relative to the scale), rounded up with probability the
    dropped bits / 2**20 for uniform 20-bit ``r20``; NaN clamped to ``cmax``.

    Parameters
    ----------
    y : ndarray of float32
    r20 : ndarray of uint32
        In ``[0, 2**20)``.
    emax : int
        The code's largest exponent.
    cmax : int
        The largest code (127 or 255).

    Returns
    -------
    ndarray of uint32
    """
    y = np.asarray(y, dtype=np.float32)
    min_normal = np.float32(2.0 ** (1 - emax))
    sub = y < min_normal
    ys = np.where(sub, y + min_normal, y).astype(np.float32)
    with np.errstate(over="ignore"):
        c = ((ys.view(np.uint32) + r20) >> np.uint32(20)) - np.uint32((127 - emax) * 8)
        c = c - np.where(sub, np.uint32(8), np.uint32(0))
    return np.minimum(c, np.uint32(cmax))


def _flat(a):
    return np.ravel(a, order="K")


def _blocks(x, nblk, fill):
    out = np.full(nblk * BLOCK, fill, dtype=x.dtype)
    out[:x.size] = x
    return out.reshape(nblk, BLOCK)


def adam_int8_state(param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, *,
                    step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False, amsgrad=False,
                    n_threads=None):
    """Twin of :func:`fastlr.kernels.adam_int8_state`: the same update, in place, bit for
    bit.

    Per block of 256 elements (memory order): decode (code value times the scale), the
    float32 Adam update :math:`m = \\beta_1 m + (1 - \\beta_1) g`,
    :math:`v = \\beta_2 v + (1 - \\beta_2) g^2`,
    :math:`p \\leftarrow p \\cdot decay - \\frac{lr}{1 - \\beta_1^t}
    \\frac{m}{\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon}` with the unrounded moments,
    then the new absmax (the scale) and the codes, rounded stochastically.

    Parameters
    ----------
    param, grad : ndarray of float32
        Contiguous; ``param`` updated in place (units: the param's).
    exp_avg, exp_avg_sq : ndarray of uint8
        The codes, param's shape; updated in place.
    exp_avg_scale, exp_avg_sq_scale : ndarray of float32
        One scale per block, ``ceil(param.size / 256)``; updated in place.
    step : int
        The 1-based update number.
    lr, beta1, beta2, eps, weight_decay : float
        As :func:`fastlr.kernels.adam_int8_state`.
    decoupled_weight_decay, maximize : bool
        AdamW's decay; ascend.
    amsgrad : bool
        Must be False (not available with 8-bit state).
    n_threads : int, optional
        Ignored (the kernel's result does not depend on it).

    Returns
    -------
    None
    """
    if amsgrad:
        raise ValueError("fastlr.reference.adam_int8_state: amsgrad=True is not available "
                         "with 8-bit (int8) state")
    f32 = np.float32
    n = param.size
    nblk = (n + BLOCK - 1) // BLOCK
    p = _flat(param)
    pi = p.copy()
    idx = np.arange(n, dtype=np.uint32)
    r = random_bits((pi.view(np.uint32) ^ idx).view(np.float32), step_salt(step, 0))
    sm = np.repeat(exp_avg_scale, BLOCK)[:n]
    sv = np.repeat(exp_avg_sq_scale, BLOCK)[:n]
    mo = int8_decode_signed(_flat(exp_avg), _M[0]) * sm
    vo = int8_decode(_flat(exp_avg_sq), _V[0]) * sv
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):     # as the kernel
        p1, mi, vi, _ = _adam_f32(pi, _flat(grad), mo, vo, step=step, lr=lr, beta1=beta1,
                                  beta2=beta2, eps=eps, weight_decay=weight_decay,
                                  decoupled_weight_decay=decoupled_weight_decay,
                                  maximize=maximize)
    p[...] = p1
    mabs = mi.view(np.uint32) & np.uint32(0x7FFFFFFF)
    vabs = vi.view(np.uint32) & np.uint32(0x7FFFFFFF)
    am = _blocks(mabs, nblk, 0).max(axis=1).view(f32)
    av = _blocks(vabs, nblk, 0).max(axis=1).view(f32)
    with np.errstate(divide="ignore"):
        inv_m = np.where(am > 0, f32(1) / am, f32(0)).astype(f32)
        inv_v = np.where(av > 0, f32(1) / av, f32(0)).astype(f32)
    exp_avg_scale[...] = am
    exp_avg_sq_scale[...] = av
    with np.errstate(invalid="ignore", over="ignore"):
        ym = mabs.view(f32) * np.repeat(inv_m, BLOCK)[:n]
        yv = vabs.view(f32) * np.repeat(inv_v, BLOCK)[:n]
    codes_m = int8_encode(ym, (r & np.uint32(0xFFFF)) << np.uint32(4), *_M)
    codes_m = codes_m | ((mi.view(np.uint32) >> np.uint32(24)) & np.uint32(128))
    _flat(exp_avg)[...] = codes_m.astype(np.uint8)
    _flat(exp_avg_sq)[...] = int8_encode(yv, (r >> np.uint32(16)) << np.uint32(4),
                                         *_V).astype(np.uint8)
