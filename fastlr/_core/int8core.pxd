# fastlr/_core/int8core.pxd -- the C level of the 8-bit block-wise state (issue #19),
# as inline C (private; no module): the codes, one element's update and one block's pass.
#
# The design notes are fastlr/_core/int8state.pyx's (the blocks, the code, the encoding
# and its random bits, the one pass per block). Shared by fastlr/_core/int8state.pyx
# (float32 params: adam_int8_state) and fastlr/_core/mixed.pyx (16-bit params:
# adam_mixed_int8_state), so that both run the same operations and give the same bits.

cimport cython
cimport numpy as cnp
from libc.math cimport pow, sqrt, sqrtf
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcpy

from fastlr._core.args cimport NONNEG, UNIT, checked_real, flag_arg, layout_hint, step_arg
from fastlr._core.bfloat cimport random_bits, step_salt
from fastlr._core.loops cimport lerp
from fastlr._kernels cimport AdamHyper

cdef enum:
    BLOCK_ = 256
    # the codes: (127 - EMAX) * 8 is the float32 bits' (exponent, 3 mantissa bits) of 2**0
    # minus the code of 1.0
    M_EMAX = 15
    V_EMAX = 31
    M_BIAS = (127 - 15) * 8
    V_BIAS = (127 - 31) * 8

cdef extern from *:
    """
    /* 2**(-2 - EMAX) (the subnormal step) and 2**(1 - EMAX) (the smallest normal), exact */
    #define FASTLR_I8_M_SUB 0x1p-17f
    #define FASTLR_I8_V_SUB 0x1p-33f
    #define FASTLR_I8_M_MIN 0x1p-14f
    #define FASTLR_I8_V_MIN 0x1p-30f
    """
    const float M_SUB "FASTLR_I8_M_SUB"
    const float V_SUB "FASTLR_I8_V_SUB"
    const float M_MIN "FASTLR_I8_M_MIN"
    const float V_MIN "FASTLR_I8_V_MIN"

ctypedef struct Coef:
    float omb1, omb1_m1, b2, omb2, eps, wd, step_size, inv_bc2s, decay, sign
    bint small, l2
    uint32_t salt


cdef inline float f_of(uint32_t u) noexcept nogil:
    cdef float x
    memcpy(&x, &u, 4)
    return x


cdef inline uint32_t bits_of(float x) noexcept nogil:
    cdef uint32_t u
    memcpy(&u, &x, 4)
    return u


# The selects below are bit masks (mask = 0 - condition), not conditional expressions:
# Cython writes those as if/else, and GCC does not if-convert a branch holding a float
# operation that may trap (-ftrapping-math), which keeps the loops scalar.
cdef inline float decode(uint32_t c, uint32_t bias, float sub_step) noexcept nogil:
    """The magnitude of code c relative to the scale (see note b)."""
    cdef uint32_t normal = bits_of(f_of((c + bias) << 20))
    cdef uint32_t sub = bits_of(<float>(<int>c) * sub_step)
    cdef uint32_t mask = <uint32_t>0 - <uint32_t>(c >= 8)
    return f_of((normal & mask) | (sub & ~mask))


cdef inline uint32_t encode(float y, uint32_t r20, uint32_t bias, float min_normal,
                            uint32_t cmax) noexcept nogil:
    """The code of y >= 0 (relative to the scale), rounded up with probability the dropped
    bits / 2**20 for uniform 20-bit r20 (see note c); clamped to cmax (NaN)."""
    cdef uint32_t sub = <uint32_t>(y < min_normal)
    cdef uint32_t mask = <uint32_t>0 - sub
    # y + 0 is y for y >= 0 and NaN
    cdef float ys = y + f_of(bits_of(min_normal) & mask)
    cdef uint32_t c = ((bits_of(ys) + r20) >> 20) - bias - (sub << 3)
    # an unsigned minimum (integers only: GCC makes it one vpminud), not a select on a
    # mask: with the mask, GCC narrowed the codes and the masks to bytes separately (about
    # 20% of the kernel's time, same bits)
    return c if c < cmax else cmax


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void int8_update(float* p, const float* grad, const uint8_t* m, const uint8_t* v,
                             float* mb, float* vb, uint32_t* rb, Py_ssize_t j,
                             Py_ssize_t first, float scale_m, float scale_v, Coef c,
                             bint l2, bint small) noexcept nogil:
    # One element's update (the flags come in as constants: each loop below is
    # straight-line code after inlining, which GCC vectorizes; c by value: no store to p
    # may change it).
    cdef float pi = p[j], g, mi, vi, mo
    cdef uint32_t cm = m[j]
    rb[j] = random_bits(bits_of(pi) ^ <uint32_t>(first + j), c.salt)
    g = c.sign * grad[j]
    if l2:
        g = g + c.wd * pi
    mo = f_of(bits_of(decode(cm & 127, M_BIAS, M_SUB)) | ((cm & 128) << 24)) * scale_m
    mi = lerp(mo, g, c.omb1, c.omb1_m1, small)
    vi = decode(v[j], V_BIAS, V_SUB) * scale_v * c.b2 + c.omb2 * g * g
    p[j] = pi * c.decay - c.step_size * (mi / (sqrtf(vi) * c.inv_bc2s + c.eps))
    mb[j] = mi
    vb[j] = vi


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef inline void int8_block(float* p, const float* grad, uint8_t* m, uint8_t* v,
                            float* sm, float* sv, Py_ssize_t first, Py_ssize_t nb,
                            const Coef* c) noexcept nogil:
    # One block: first = its first element's index in the param, nb <= BLOCK elements.
    cdef float mb[BLOCK_]
    cdef float vb[BLOCK_]
    cdef uint32_t rb[BLOCK_]
    cdef float scale_m = sm[0], scale_v = sv[0]
    cdef Coef cc = c[0]
    cdef uint32_t am = 0, av = 0, t
    cdef float amf, avf, inv_m, inv_v
    cdef Py_ssize_t j
    if c.small and not c.l2:
        for j in range(nb):
            int8_update(p, grad, m, v, mb, vb, rb, j, first, scale_m, scale_v, cc, False, True)
    elif c.small and c.l2:
        for j in range(nb):
            int8_update(p, grad, m, v, mb, vb, rb, j, first, scale_m, scale_v, cc, True, True)
    elif not c.l2:
        for j in range(nb):
            int8_update(p, grad, m, v, mb, vb, rb, j, first, scale_m, scale_v, cc, False, False)
    else:
        for j in range(nb):
            int8_update(p, grad, m, v, mb, vb, rb, j, first, scale_m, scale_v, cc, True, False)
    # the new absmax: the largest |x| bits as unsigned integers (note d)
    for j in range(nb):
        t = bits_of(mb[j]) & 0x7FFFFFFFu
        am = t if t > am else am
        t = bits_of(vb[j]) & 0x7FFFFFFFu
        av = t if t > av else av
    amf = f_of(am)
    avf = f_of(av)
    inv_m = <float>1 / amf if amf > 0 else <float>0
    inv_v = <float>1 / avf if avf > 0 else <float>0
    sm[0] = amf
    sv[0] = avf
    for j in range(nb):
        m[j] = <uint8_t>(encode(f_of(bits_of(mb[j]) & 0x7FFFFFFFu) * inv_m,
                                (rb[j] & 0xFFFFu) << 4, M_BIAS, M_MIN, 127)
                         | ((bits_of(mb[j]) >> 24) & 128))
        v[j] = <uint8_t>encode(f_of(bits_of(vb[j]) & 0x7FFFFFFFu) * inv_v,
                               (rb[j] >> 16) << 4, V_BIAS, V_MIN, 255)


cdef inline void coef_of(double lr, double beta1, double beta2, double eps, double weight_decay,
                         int64_t step, bint decoupled, bint maximize,
                         Coef* c) noexcept nogil:
    # as loops.pxd adam_coef, then cast to float32 as adam_core does
    cdef double t = <double>step
    cdef double omb1 = 1.0 - beta1
    c.omb1 = <float>omb1
    c.omb1_m1 = -(<float>1 - c.omb1)
    c.small = c.omb1 < <float>0.5
    c.b2 = <float>beta2
    c.omb2 = <float>(1.0 - beta2)
    c.eps = <float>eps
    c.wd = <float>weight_decay
    c.step_size = <float>(lr / (1.0 - pow(beta1, t)))
    c.inv_bc2s = <float>(1.0 / sqrt(1.0 - pow(beta2, t)))
    c.sign = <float>(-1.0 if maximize else 1.0)
    c.l2 = weight_decay != 0.0 and not decoupled
    c.decay = <float>(1.0 - lr * weight_decay if decoupled else 1.0)
    c.salt = step_salt(step, 0)


# ---- the validated kernels' shared checks (Python level) --------------------------------
cdef inline void coef_from(const AdamHyper* h, Coef* c) noexcept nogil:
    coef_of(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step, h.decoupled_weight_decay,
            h.maximize, c)


# ---- the validated kernels' shared checks (Python level) --------------------------------
cdef inline int hyper_args(str fn, object step, object lr, object beta1, object beta2,
                           object eps, object weight_decay, object decoupled_weight_decay,
                           object maximize, object amsgrad, str amsgrad_hint,
                           AdamHyper* h) except -1:
    """Check Adam's hyperparameters by the argument policy into h (the C API's struct);
    amsgrad=True raises ValueError, ending with amsgrad_hint."""
    h.step = step_arg(fn, step)
    h.lr = checked_real(fn, "lr", lr, NONNEG)
    h.beta1 = checked_real(fn, "beta1", beta1, UNIT)
    h.beta2 = checked_real(fn, "beta2", beta2, UNIT)
    h.eps = checked_real(fn, "eps", eps, NONNEG)
    h.weight_decay = checked_real(fn, "weight_decay", weight_decay, NONNEG)
    h.decoupled_weight_decay = flag_arg(fn, "decoupled_weight_decay", decoupled_weight_decay)
    h.maximize = flag_arg(fn, "maximize", maximize)
    if flag_arg(fn, "amsgrad", amsgrad):
        raise ValueError(f"{fn}: amsgrad=True is not available with 8-bit (int8) state; "
                         f"{amsgrad_hint}")
    return 0


cdef inline int check_scales(str fn, str name, cnp.ndarray a, Py_ssize_t n) except -1:
    """A moment's scales of an n-element param: float32, contiguous, one per block (the
    buffer checks, check_buffer, are the caller's)."""
    cdef Py_ssize_t nblk = (n + BLOCK_ - 1) // BLOCK_
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT:
        raise TypeError(f"{fn}: {name} must have dtype float32 (one scale per block), got "
                        f"{a.dtype}")
    if cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0) != nblk:
        raise ValueError(f"{fn}: {name} must have shape ({nblk},) (one scale per block of "
                         f"{BLOCK_} elements of param's {n}), got shape {(<object>a).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{fn}: {name} must be contiguous, got strides "
                         f"{(<object>a).strides}; the scales are written in place"
                         f"{layout_hint(name, False, True)}")
    return 0
