# fastlr/_core/mixed.pyx -- Adam / AdamW on 16-bit params (float16 or bfloat16), with or
# without a float32 master copy (issue #19): the fused per-element loops, in C, and the
# validated Python kernel fastlr.kernels.adam_mixed.
#
# Design notes
# ------------
# a) Formats. A 16-bit param is IEEE float16 (``np.float16``) or bfloat16. bfloat16 arrays
#    are either ``ml_dtypes.bfloat16`` arrays (the optional ml_dtypes package: JAX's and
#    TensorFlow's NumPy dtype) or ``np.uint16`` arrays of bfloat16 bit patterns (always
#    accepted, as the bfloat16 optimizer state is kept): the kernel reads both as bits. The
#    grad is in the param's format or float32; the moments are float32 or bfloat16 (both
#    alike); the master copy is float32 or absent.
# b) One pass, per element, every operation in float32 in the order of the float32 Adam
#    core (loops.pxd: adam_core): the param's float32 value pi (the master's, else the
#    16-bit param widened exactly), the grad widened exactly,
#        g  = sign * grad (+ wd * pi for L2)
#        m1 = lerp(m, g, 1 - beta1);   v1 = v * beta2 + (1 - beta2) * g * g
#        p1 = pi * decay - step_size * (m1 / (sqrt(v1) * inv_bc2s + eps))
#    With a master: master = p1 and param = p1 rounded to nearest even (so master's bits
#    are those of fastlr.kernels.adam on float32 arrays holding the same values). Without
#    one: param = p1 rounded stochastically (below). bfloat16 moments are widened and
#    stored as adam_core_bf16 stores them (stochastically, the random bits of stream 0),
#    so with a master and bfloat16 moments the master and moments are the bits of
#    fastlr.kernels.adam_bf16_state.
# c) Stochastic rounding of the param (no master): up to the next 16-bit value with
#    probability (the dropped part) / (the gap), so the expected stored value is p1. The
#    random bits are bfloat.pxd's: random_bits(key, step_salt(step, 2)) with key = bits(pi)
#    ^ bits(grad) * 0x2C1B3C6D (the element's widened value before the update and its
#    widened grad: a 16-bit param alone takes few distinct values, and elements sharing a
#    key share their random bits; stream 2, as streams 0 and 1 salt the moments, which use
#    the same key here): no random state, the same bits for any thread count and chunking,
#    reproducible from (param, grad, step). With a master the key is the master's bits, as
#    in adam_core_bf16. bfloat16 takes the high 16 bits (bf16_round_stochastic);
#    float16 the low 13 bits for normal results, and for subnormal results (below 2^-14)
#    the low s bits for s dropped bits (s <= 31; a result below 2^-38 first drops its bits
#    past 31 by truncation, so its probability of rounding up is exact to 2^-31 of an ulp).
# d) float16 rounding is written out on the bits (fastlr/_core/half.pxd): nearest even,
#    overflow (|x| >= 65520) to Inf, subnormal results rounded at 2^-24, NaN kept as a quiet
#    NaN with its sign and top payload bits; widening is exact. Integer operations and
#    selects only, so the loops vectorize.
# e) Threads: element-wise, through the kernels' threaded loop (parallel_spans): the same
#    bits for any thread count. Validation: everything (types, dtypes, shapes, layouts,
#    writeability, alignment, byte order, overlap, hyperparameters) is checked before the
#    GIL is released and before any buffer is written.
# The NumPy twin is fastlr.reference.adam_mixed (fastlr/reference/mixed.py), bit for bit.

cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from fastlr._core.args cimport step_arg, threads_arg
from fastlr._core.arrays cimport (check_buffer, check_like_param, check_ndarray,
                                  check_overlap, check_param_layout)
from fastlr._core.bfloat cimport (bf16_round, bf16_round_stochastic, bf16_widen, random_bits,
                                  step_salt)
from fastlr._core.half cimport (FMT_BF16, FMT_F16, PARAM_STREAM, f16_round, f16_round_stochastic,
                               f16_widen, round_key, widen16)
from fastlr._core.int8core cimport (BLOCK_, Coef, check_scales, coef_from, hyper_args,
                                    int8_block)
from fastlr._core.loops cimport AdamCoef, adam_coef, fsqrt, lerp
from cpython.pycapsule cimport PyCapsule_New
from fastlr._kernels cimport AdamHyper, Param16, parallel_spans

import sys

import numpy as np

cnp.import_array()

__all__ = ["adam_mixed", "adam_mixed_int8_state"]

cdef enum:
    # The GIL is released for params at least this long (as in _kernels).
    NOGIL_MIN_SIZE = 4096


# ---------------------------------------------------------------------------------------
# The fused loops
# ---------------------------------------------------------------------------------------
ctypedef fused grad_t:
    uint16_t
    float

ctypedef fused state_t:
    uint16_t
    float


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _elem(uint16_t* p, grad_t* grad, state_t* m, state_t* v, float* master,
                       Py_ssize_t i, float omb1, float omb1_m1, float b2, float omb2,
                       float eps, float wd, float step_size, float inv_bc2s, float decay,
                       float sign, uint32_t salt_state, uint32_t salt_param, int fmt,
                       bint has_master, bint l2, bint small) noexcept nogil:
    # One element. fmt, has_master, l2 and small come in as constants: _loop and _by_flags
    # unswitch on them by calling the one inline loop (_run) with constant flags, so each
    # inlined loop body is straight-line code.
    cdef float pi, g, mo, vo, mi, vi, pn
    cdef uint32_t key, r = 0
    if has_master:
        pi = master[i]
    else:
        pi = widen16(p[i], fmt)
    if grad_t is float:
        g = grad[i]
    else:
        g = widen16(grad[i], fmt)
    if has_master:
        memcpy(&key, &pi, 4)
    else:
        key = round_key(pi, g)
    if state_t is uint16_t:
        r = random_bits(key, salt_state)           # low half rounds m, high half v
        mo = bf16_widen(m[i])
        vo = bf16_widen(v[i])
    else:
        mo = m[i]
        vo = v[i]
    g = sign * g
    if l2:
        g = g + wd * pi
    mi = lerp(mo, g, omb1, omb1_m1, small)
    vi = vo * b2 + omb2 * g * g
    if state_t is uint16_t:
        m[i] = bf16_round_stochastic(mi, r & 0xFFFF)
        v[i] = bf16_round_stochastic(vi, r >> 16)
    else:
        m[i] = mi
        v[i] = vi
    pn = pi * decay - step_size * (mi / (fsqrt(vi) * inv_bc2s + eps))
    if has_master:
        master[i] = pn
        p[i] = bf16_round(pn) if fmt == FMT_BF16 else f16_round(pn)
    else:
        r = random_bits(key, salt_param)
        p[i] = (bf16_round_stochastic(pn, r >> 16) if fmt == FMT_BF16
                else f16_round_stochastic(pn, r))


ctypedef struct MixedCoef:
    AdamCoef adam
    uint32_t salt_param
    int fmt


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _run(uint16_t* p, grad_t* grad, state_t* m, state_t* v, float* master,
                      Py_ssize_t n, const MixedCoef* mc, int fmt, bint has_master, bint l2,
                      bint small) noexcept nogil:
    # One loop; fmt, has_master, l2 and small are constants at every call (_by_flags), so
    # with the module's inlining budget (setup.py) each call is its own straight-line loop.
    cdef const AdamCoef* c = &mc.adam
    cdef float omb1 = <float>c.one_minus_beta1
    cdef float omb1_m1 = -(<float>1 - omb1)
    cdef float b2 = <float>c.beta2
    cdef float omb2 = <float>c.one_minus_beta2
    cdef float eps = <float>c.eps
    cdef float wd = <float>c.weight_decay
    cdef float step_size = <float>c.step_size
    cdef float inv_bc2s = <float>c.inv_bias_correction2_sqrt
    cdef float decay = <float>c.decay
    cdef float sign = <float>c.sign
    cdef uint32_t ss = c.salt[0], sp = mc.salt_param
    cdef Py_ssize_t i
    for i in range(n):
        _elem(p, grad, m, v, master, i, omb1, omb1_m1, b2, omb2, eps, wd, step_size,
              inv_bc2s, decay, sign, ss, sp, fmt, has_master, l2, small)


cdef inline void _by_flags(uint16_t* p, grad_t* grad, state_t* m, state_t* v, float* master,
                           Py_ssize_t n, const MixedCoef* mc, int fmt,
                           bint has_master) noexcept nogil:
    # unswitched on L2 and on a small beta1 (one_minus_beta1 < 0.5: lerp's two forms)
    cdef bint small = <float>mc.adam.one_minus_beta1 < <float>0.5
    if small and not mc.adam.l2:         # AdamW, plain Adam: the common loop
        _run(p, grad, m, v, master, n, mc, fmt, has_master, False, True)
    elif small:
        _run(p, grad, m, v, master, n, mc, fmt, has_master, True, True)
    elif mc.adam.l2:
        _run(p, grad, m, v, master, n, mc, fmt, has_master, True, False)
    else:
        _run(p, grad, m, v, master, n, mc, fmt, has_master, False, False)


cdef void _loop(uint16_t* p, grad_t* grad, state_t* m, state_t* v, float* master,
                Py_ssize_t n, const MixedCoef* mc) noexcept nogil:
    if mc.fmt == FMT_BF16 and master != NULL:
        _by_flags(p, grad, m, v, master, n, mc, FMT_BF16, True)
    elif mc.fmt == FMT_BF16:
        _by_flags(p, grad, m, v, master, n, mc, FMT_BF16, False)
    elif master != NULL:
        _by_flags(p, grad, m, v, master, n, mc, FMT_F16, True)
    else:
        _by_flags(p, grad, m, v, master, n, mc, FMT_F16, False)


ctypedef struct Job:
    char* p
    char* grad
    char* m
    char* v
    char* master            # NULL: no master
    int grad32, state32     # grad / moments float32 (else 16-bit)
    const MixedCoef* coef


cdef inline char* _at(char* ptr, Py_ssize_t offset) noexcept nogil:
    return NULL if ptr == NULL else ptr + offset


cdef void _span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Job* job = <Job*>ctx
    cdef Py_ssize_t n = stop - start
    cdef uint16_t* p = <uint16_t*>job.p + start
    cdef float* master = <float*>_at(job.master, start * 4)
    cdef Py_ssize_t gs = 4 if job.grad32 else 2, ss = 4 if job.state32 else 2
    cdef char* g = job.grad + start * gs
    cdef char* m = job.m + start * ss
    cdef char* v = job.v + start * ss
    if job.grad32 and job.state32:
        _loop(p, <float*>g, <float*>m, <float*>v, master, n, job.coef)
    elif job.grad32:
        _loop(p, <float*>g, <uint16_t*>m, <uint16_t*>v, master, n, job.coef)
    elif job.state32:
        _loop(p, <uint16_t*>g, <float*>m, <float*>v, master, n, job.coef)
    else:
        _loop(p, <uint16_t*>g, <uint16_t*>m, <uint16_t*>v, master, n, job.coef)


cdef void _adam_16(const Param16* q, char* m, char* v, bint state32, Py_ssize_t n,
                   const AdamHyper* h, int n_threads) noexcept nogil:
    cdef MixedCoef mc
    cdef Job job
    adam_coef(h, &mc.adam)
    mc.salt_param = step_salt(h.step, PARAM_STREAM)
    mc.fmt = FMT_BF16 if q.bfloat16 else FMT_F16
    job.p = <char*>q.param
    job.grad = <char*>q.grad
    job.m = m
    job.v = v
    job.master = <char*>q.master
    job.grad32 = q.grad_f32
    job.state32 = state32
    job.coef = &mc
    parallel_spans(_span, &job, n, n_threads)


# The C API's adam_16_f32state and adam_16_bf16state (fastlr/_kernels.pxd) of this build:
# fastlr._kernels calls them through the pointers _c_api gives.
cdef void c_adam_16_f32state(const Param16* q, float* exp_avg, float* exp_avg_sq, Py_ssize_t n,
                             const AdamHyper* h, int n_threads) noexcept nogil:
    _adam_16(q, <char*>exp_avg, <char*>exp_avg_sq, True, n, h, n_threads)


cdef void c_adam_16_bf16state(const Param16* q, uint16_t* exp_avg, uint16_t* exp_avg_sq,
                              Py_ssize_t n, const AdamHyper* h, int n_threads) noexcept nogil:
    _adam_16(q, <char*>exp_avg, <char*>exp_avg_sq, False, n, h, n_threads)


# ---------------------------------------------------------------------------------------
# Validation and the Python kernel
# ---------------------------------------------------------------------------------------
cdef object _BF16_TYPE = None       # type(np.dtype(ml_dtypes.bfloat16)), once ml_dtypes is in


cdef str _format(cnp.ndarray a):
    """'float16', 'bfloat16' (uint16 bits or ml_dtypes.bfloat16), 'float32' or ''."""
    global _BF16_TYPE
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT16:
        return "float16"
    if t == cnp.NPY_UINT16:
        return "bfloat16"
    if t == cnp.NPY_FLOAT:
        return "float32"
    if _BF16_TYPE is None:
        ml = sys.modules.get("ml_dtypes")       # an ml_dtypes array: ml_dtypes is imported
        if ml is None:
            return ""
        _BF16_TYPE = type(np.dtype(ml.bfloat16))
    return "bfloat16" if type(a.dtype) is _BF16_TYPE else ""


cdef str _got(cnp.ndarray a):
    s = str(a.dtype)
    return s if cnp.PyArray_TYPE(a) != cnp.NPY_UINT16 else "uint16 (bfloat16 bits)"


_BF16_ARRAYS = "bfloat16 (ml_dtypes.bfloat16, or uint16 holding bfloat16 bits)"


cdef str _param_format(str fn, cnp.ndarray a):
    """The 16-bit param's format ('float16' or 'bfloat16'), after its dtype and layout
    checks."""
    cdef str fmt = _format(a)
    if fmt not in ("float16", "bfloat16"):
        raise TypeError(f"{fn}: param must have dtype float16 or {_BF16_ARRAYS}, got "
                        f"{_got(a)}")
    check_param_layout(fn, a)
    return fmt


cdef int _check_grad_or_master(str fn, str name, cnp.ndarray a, str pfmt) except -1:
    """The grad: the param's format or float32; the master: float32."""
    cdef str fmt = _format(a)
    if name == "grad" and fmt != pfmt and fmt != "float32":
        raise TypeError(f"{fn}: grad must have the param's dtype ({pfmt}) or float32, got "
                        f"{_got(a)}")
    if name == "master" and fmt != "float32":
        raise TypeError(f"{fn}: master must have dtype float32 (or be None), got {_got(a)}")
    return 0


cdef int _no_overlap(str fn, tuple names, list arrays) except -1:
    """No two of the (non-empty) arrays share memory, the grad included."""
    cdef char* lo[8]
    cdef char* hi[8]
    cdef int k
    for k in range(len(arrays)):
        lo[k] = <char*>cnp.PyArray_DATA(arrays[k])
        hi[k] = lo[k] + cnp.PyArray_NBYTES(arrays[k])
    return check_overlap(fn, names, lo, hi, len(arrays))


def adam_mixed(param, grad, exp_avg, exp_avg_sq, master=None, *, step, lr, beta1=0.9,
               beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
               maximize=False, n_threads=None):
    """Adam / AdamW on a 16-bit param (float16 or bfloat16), in place, in one pass.

    Per element, in float32 (the param's value ``p`` is ``master``'s when given, else the
    16-bit param widened exactly; the grad is widened exactly)::

        g  = -grad if maximize else grad;  g = g + wd * p   (L2: not decoupled)
        m  = lerp(m, g, 1 - beta1)
        v  = v * beta2 + (1 - beta2) * g * g
        p1 = p * (1 - lr * wd) - step_size * (m / (sqrt(v) * c2 + eps))

    with ``step_size = lr / (1 - beta1**t)``, ``c2 = 1 / sqrt(1 - beta2**t)`` (in double,
    rounded to float32) and ``1 - lr * wd`` only when decoupled (AdamW). With ``master``:
    ``master = p1`` (the bits of :func:`adam` on float32 copies of the same values) and
    ``param = p1`` rounded to nearest even. Without: ``param = p1`` rounded
    stochastically, up with probability (the dropped part) / (the gap between the two
    neighbouring 16-bit values), so the expected stored value is ``p1``; the random bits
    are murmur3's finalizer of ``key * 0x9E3779B1 ^ salt``, ``key = bits(p) ^ bits(grad) *
    0x2C1B3C6D`` (float32 bits of the widened values), ``salt`` splitmix64's of
    ``3 * step + 2`` (the same bits for any thread count; reproducible from the param, the
    grad and ``step``). bfloat16 moments are stored as :func:`adam_bf16_state` stores them
    (keyed by the master's bits, or by ``key`` without a master). Its NumPy
    twin is :func:`fastlr.reference.adam_mixed` (bit for bit). Returns None.

    Parameters
    ----------
    param : numpy.ndarray
        float16, or bfloat16: an ``ml_dtypes.bfloat16`` array or a ``uint16`` array of
        bfloat16 bit patterns (the top half of a float32); C- or F-contiguous, writeable;
        updated in place.
    grad : numpy.ndarray
        The param's format (float16; bfloat16 as either array kind) or float32, the param's
        shape and layout; only read.
    exp_avg, exp_avg_sq : numpy.ndarray
        float32, or both bfloat16 (``uint16`` bits or ``ml_dtypes.bfloat16``); the param's
        shape and layout; updated in place; start at zeros.
    master : numpy.ndarray, optional
        float32 master weights (the param's shape and layout), updated in place; start as
        the param's float32 values. None: update the 16-bit param directly.
    step : int
        The 1-based update number, >= 1.
    lr : float
        learning rate (parameter units per gradient unit), a finite number >= 0.
    beta1, beta2 : float, default 0.9, 0.999
        moment decays, in [0, 1).
    eps : float, default 1e-8
        added to the denominator (gradient units), a finite number >= 0.
    weight_decay : float, default 0.0
        a finite number >= 0 (L2, or decoupled with ``decoupled_weight_decay``).
    decoupled_weight_decay : bool, default False
        ``p *= 1 - lr * wd`` (AdamW) instead of L2.
    maximize : bool, default False
        ascend instead of descend.
    n_threads : int, optional
        threads to use (None: :func:`get_num_threads`); the result does not depend on it.

    Raises
    ------
    TypeError
        If an argument has the wrong type or dtype.
    ValueError
        If shapes or layouts differ, a written buffer is read-only, buffers overlap, or a
        hyperparameter is out of range (nothing is written).

    Examples
    --------
    >>> p = np.ones(3, np.float16); g = np.full(3, 0.5, np.float16)
    >>> m = np.zeros(3, np.float32); v = np.zeros(3, np.float32)
    >>> w = p.astype(np.float32)
    >>> kernels.adam_mixed(p, g, m, v, w, step=1, lr=0.1)
    >>> p, w
    (array([0.9, 0.9, 0.9], dtype=float16), array([0.9, 0.9, 0.9], dtype=float32))
    """
    cdef str fn = "fastlr.kernels.adam_mixed"
    cdef AdamHyper h
    hyper_args(fn, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize,
               False, "", &h)
    cdef int nt = threads_arg(fn, n_threads)

    names = ("param", "grad", "exp_avg", "exp_avg_sq", "master")
    objs = (param, grad, exp_avg, exp_avg_sq, master)
    cdef list arrays = []
    cdef cnp.ndarray a, p = None
    cdef str fmt, pfmt = "", sfmt = ""
    cdef bint c_order = True
    cdef int k
    for k in range(5):
        obj = objs[k]
        name = names[k]
        if obj is None and k == 4:
            break
        check_ndarray(fn, name, obj, "")
        a = <cnp.ndarray>obj
        fmt = _format(a)
        if k == 0:
            p = a
            pfmt = _param_format(fn, a)
            c_order = cnp.PyArray_IS_C_CONTIGUOUS(a)
        else:
            if k == 1 or k == 4:
                _check_grad_or_master(fn, name, a, pfmt)
            if k == 2 and fmt not in ("float32", "bfloat16"):
                raise TypeError(f"{fn}: exp_avg must have dtype float32 or {_BF16_ARRAYS}, "
                                f"got {_got(a)}")
            if k == 2:
                sfmt = fmt
            if k == 3 and fmt != sfmt:
                raise TypeError(f"{fn}: exp_avg_sq must have exp_avg's dtype ({sfmt}), got "
                                f"{_got(a)}")
            check_like_param(fn, name, a, p, c_order, k != 1)
        check_buffer(fn, name, a, k != 1)
        arrays.append(a)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(p)
    if size == 0:
        return None
    _no_overlap(fn, names, arrays)

    cdef Param16 q
    q.param = <uint16_t*>cnp.PyArray_DATA(arrays[0])
    q.grad = <const void*>cnp.PyArray_DATA(arrays[1])
    q.master = <float*>cnp.PyArray_DATA(arrays[4]) if len(arrays) == 5 else NULL
    q.bfloat16 = pfmt == "bfloat16"
    q.grad_f32 = cnp.PyArray_TYPE(arrays[1]) == cnp.NPY_FLOAT
    cdef char* mp = <char*>cnp.PyArray_DATA(arrays[2])
    cdef char* vp = <char*>cnp.PyArray_DATA(arrays[3])
    cdef bint state32 = sfmt == "float32"
    if size >= NOGIL_MIN_SIZE:
        with nogil:
            _adam_16(&q, mp, vp, state32, size, &h, nt)
    else:
        _adam_16(&q, mp, vp, state32, size, &h, nt)


# ---- float16 conversions for the optimizers' master weights (fastlr/optim/master.py) ----
@cython.boundscheck(False)
@cython.wraparound(False)
def f16_unpack(const uint16_t[::1] bits,      # IN: IEEE half bits
               float[::1] out):               # OUT: their float32 values (exact)
    """``out[i]`` = the float32 value of the float16 bits ``bits[i]`` (exact)."""
    if bits.shape[0] != out.shape[0]:
        raise ValueError(f"fastlr._core.mixed.f16_unpack: bits and out sizes differ "
                         f"({bits.shape[0]} and {out.shape[0]})")
    cdef Py_ssize_t i, n = bits.shape[0]
    with nogil:
        for i in range(n):
            out[i] = f16_widen(bits[i])


@cython.boundscheck(False)
@cython.wraparound(False)
def f16_pack(const float[::1] x,              # IN: float32
             uint16_t[::1] out):              # OUT: IEEE half bits
    """``out[i]`` = the float16 nearest ``x[i]`` (ties to even; NaN a quiet NaN), as bits."""
    if x.shape[0] != out.shape[0]:
        raise ValueError(f"fastlr._core.mixed.f16_pack: x and out sizes differ "
                         f"({x.shape[0]} and {out.shape[0]})")
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in range(n):
            out[i] = f16_round(x[i])


# ---- the stochastic rounding of 16-bit params without masters in the other optimizers ----
# (fastlr/optim/direct16.py: the optimizer's float32 kernel runs on the param's widened
# values, then this stores them; the random bits are adam_mixed's, note c: round_key)
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _round_loop(uint16_t* p, const float* x, const grad_t* grad, Py_ssize_t n,
                             uint32_t salt, int fmt) noexcept nogil:
    # fmt comes in as a constant (one straight-line loop per format)
    cdef Py_ssize_t i
    cdef float g
    cdef uint32_t r
    for i in range(n):
        if grad_t is float:
            g = grad[i]
        else:
            g = widen16(grad[i], fmt)
        r = random_bits(round_key(widen16(p[i], fmt), g), salt)
        p[i] = (bf16_round_stochastic(x[i], r >> 16) if fmt == FMT_BF16
                else f16_round_stochastic(x[i], r))


def round_stochastic_into(uint16_t[::1] param not None,  # IN/OUT: 16-bit bits (old in, new out)
                          const float[::1] value not None,  # IN: the new values, float32
                          const grad_t[::1] grad not None,  # IN: the grad (16-bit bits or float32)
                          step, bint bfloat16):
    """``param[i]`` (float16 or bfloat16 bits) = ``value[i]`` rounded stochastically, with
    the random bits adam_mixed's rounding of a param without master takes: a hash of the
    param's old value, the grad's and ``step`` (stream 2). ``bfloat16``: the bits are
    bfloat16, else float16. All three of one length."""
    cdef str fn = "fastlr._core.mixed.round_stochastic_into"
    cdef int64_t t = step_arg(fn, step)
    cdef Py_ssize_t n = param.shape[0]
    if value.shape[0] != n or grad.shape[0] != n:
        raise ValueError(f"{fn}: param, value and grad sizes differ ({n}, "
                         f"{value.shape[0]} and {grad.shape[0]})")
    cdef uint32_t salt = step_salt(t, PARAM_STREAM)
    if n == 0:
        return
    with nogil:
        if bfloat16:
            _round_loop(&param[0], &value[0], &grad[0], n, salt, FMT_BF16)
        else:
            _round_loop(&param[0], &value[0], &grad[0], n, salt, FMT_F16)


# ---------------------------------------------------------------------------------------
# 16-bit params with 8-bit block-wise state (fastlr/_core/int8core.pxd), in one pass
# ---------------------------------------------------------------------------------------
# Per block of BLOCK elements (fastlr/_core/int8state.pyx, note a), in L1-sized stack
# buffers: the grad widened (16-bit grads), the param's float32 values (the master's, or the
# 16-bit param widened), int8core's int8_block on them (decode, update, new absmax, encode:
# the bits of fastlr.kernels.adam_int8_state on float32 arrays holding the same values),
# then the param stored: rounded to nearest even from the master, or stochastically as
# round_stochastic_into rounds (the random bits of adam_mixed without master, note c).
# The codes' random bits take the element's index in the param with a master, and its
# index modulo CHUNK_16 without one: the bits of fastlr/optim/direct16.py's chunked passes
# (the widened param, adam_int8_state and round_stochastic_into per chunk of 65536
# elements), which its NumPy twin (fastlr.reference.adam_mixed_int8_state) still runs.
cdef enum:
    CHUNK_16 = 65536        # a multiple of BLOCK_


ctypedef struct Job8:
    uint16_t* p
    char* grad
    float* master           # NULL: no master
    uint8_t* m
    uint8_t* v
    float* sm
    float* sv
    Coef c
    uint32_t salt_param
    int fmt, grad32


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef inline void _blocks8(Job8* job, const grad_t* grad, Py_ssize_t start, Py_ssize_t stop,
                          int fmt, bint has_master) noexcept nogil:
    # fmt and has_master come in as constants (_span8): straight-line block loops
    cdef float pw[BLOCK_]
    cdef float gw[BLOCK_]
    cdef const float* gp
    cdef float* pp
    cdef uint16_t* p
    cdef Py_ssize_t b = start, nb, j
    cdef uint32_t r
    while b < stop:
        nb = min(<Py_ssize_t>BLOCK_, stop - b)
        p = job.p + b
        if grad_t is float:
            gp = grad + b
        else:
            for j in range(nb):
                gw[j] = widen16(grad[b + j], fmt)
            gp = gw
        if has_master:
            pp = job.master + b
        else:
            for j in range(nb):
                pw[j] = widen16(p[j], fmt)
            pp = pw
        int8_block(pp, gp, job.m + b, job.v + b, job.sm + b // BLOCK_, job.sv + b // BLOCK_,
                   b if has_master else b % CHUNK_16, nb, &job.c)
        if has_master:
            for j in range(nb):
                p[j] = bf16_round(pp[j]) if fmt == FMT_BF16 else f16_round(pp[j])
        else:
            # the key: the param's value before the update (still in p) and the grad's
            for j in range(nb):
                r = random_bits(round_key(widen16(p[j], fmt), gp[j]), job.salt_param)
                p[j] = (bf16_round_stochastic(pp[j], r >> 16) if fmt == FMT_BF16
                        else f16_round_stochastic(pp[j], r))
        b += BLOCK_


cdef inline void _span8_grad(Job8* job, const grad_t* grad, Py_ssize_t start,
                             Py_ssize_t stop) noexcept nogil:
    if job.fmt == FMT_BF16 and job.master != NULL:
        _blocks8(job, grad, start, stop, FMT_BF16, True)
    elif job.fmt == FMT_BF16:
        _blocks8(job, grad, start, stop, FMT_BF16, False)
    elif job.master != NULL:
        _blocks8(job, grad, start, stop, FMT_F16, True)
    else:
        _blocks8(job, grad, start, stop, FMT_F16, False)


cdef void _span8(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    # start is a multiple of BLOCK_ (parallel_spans' chunks are multiples of SPAN_CHUNK)
    cdef Job8* job = <Job8*>ctx
    if job.grad32:
        _span8_grad(job, <const float*>job.grad, start, stop)
    else:
        _span8_grad(job, <const uint16_t*>job.grad, start, stop)


cdef void c_adam_16_int8state(const Param16* q, uint8_t* exp_avg, float* exp_avg_scale,
                              uint8_t* exp_avg_sq, float* exp_avg_sq_scale, Py_ssize_t n,
                              const AdamHyper* h, int n_threads) noexcept nogil:
    # the C API's adam_16_int8state (fastlr/_kernels.pxd) of this build
    cdef Job8 job
    coef_from(h, &job.c)
    job.salt_param = step_salt(h.step, PARAM_STREAM)
    job.fmt = FMT_BF16 if q.bfloat16 else FMT_F16
    job.p = q.param
    job.grad = <char*>q.grad
    job.grad32 = q.grad_f32
    job.master = q.master
    job.m = exp_avg
    job.sm = exp_avg_scale
    job.v = exp_avg_sq
    job.sv = exp_avg_sq_scale
    parallel_spans(_span8, &job, n, n_threads)


def _c_api():
    """{C API function name: a capsule of this build's implementation} (fastlr._kernels)."""
    return {"adam_16_f32state": PyCapsule_New(<void*>c_adam_16_f32state, b"fastlr.c_api", NULL),
            "adam_16_bf16state": PyCapsule_New(<void*>c_adam_16_bf16state, b"fastlr.c_api",
                                               NULL),
            "adam_16_int8state": PyCapsule_New(<void*>c_adam_16_int8state, b"fastlr.c_api",
                                               NULL)}


_NAMES8 = ("param", "grad", "exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale",
           "master")


def adam_mixed_int8_state(param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale,
                          master=None, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                          weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
                          amsgrad=False, n_threads=None):
    """Adam / AdamW on a 16-bit param (float16 or bfloat16) with 8-bit block-wise quantized
    moments, in place, in one pass.

    Per block of 256 elements: the grad is widened exactly (a float32 grad is read as is),
    the param's float32 values are the master's (when given) or the 16-bit param widened
    exactly, and the block is updated as :func:`adam_int8_state` updates float32 arrays
    holding those values (the moments decoded, updated, re-encoded; the same bits)::

        m = beta1 * m + (1 - beta1) * g,  v = beta2 * v + (1 - beta2) * g * g,
        p1 = p * (1 - lr * wd) - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    (``1 - lr * wd`` only with ``decoupled_weight_decay``). With ``master``: ``master = p1``
    and ``param = p1`` rounded to nearest even. Without: ``param = p1`` rounded
    stochastically with :func:`adam_mixed`'s random bits (the expected stored value is
    ``p1``). The codes' random bits take the element's index in the param with a master,
    and its index modulo 65536 without one (the bits of ``fastlr.AdamW(...,
    state_dtype="int8", master_weights=False)``'s steps before this kernel). Optimizer-owned
    bytes per element: 2.03 without a master (codes and scales), 6.03 with one. Its NumPy
    twin is :func:`fastlr.reference.adam_mixed_int8_state` (bit for bit). Returns None.

    Parameters
    ----------
    param : numpy.ndarray
        float16, or bfloat16 (``ml_dtypes.bfloat16``, or ``uint16`` bfloat16 bits); C- or
        F-contiguous, writeable; updated in place.
    grad : numpy.ndarray
        The param's format or float32, the param's shape and layout; only read.
    exp_avg, exp_avg_sq : numpy.ndarray
        uint8 codes, the param's shape and layout, updated in place; start at zeros.
    exp_avg_scale, exp_avg_sq_scale : numpy.ndarray
        float32, 1-D of ``ceil(param.size / 256)`` elements, updated in place; start at
        zeros.
    master : numpy.ndarray, optional
        float32 master weights (the param's shape and layout), updated in place. None:
        update the 16-bit param directly.
    step : int
        The 1-based update number, >= 1.
    lr : float
        learning rate (parameter units per unit of ``m / sqrt(v)``), a finite number >= 0.
    beta1, beta2 : float, default 0.9, 0.999
        moment decays, in [0, 1).
    eps : float, default 1e-8
        added to the denominator (gradient units), a finite number >= 0.
    weight_decay : float, default 0.0
        a finite number >= 0 (L2, or decoupled with ``decoupled_weight_decay``).
    decoupled_weight_decay : bool, default False
        ``p *= 1 - lr * wd`` (AdamW) instead of L2.
    maximize : bool, default False
        ascend instead of descend.
    amsgrad : bool, default False
        not available with 8-bit state: True raises ValueError.
    n_threads : int, optional
        threads to use (None: :func:`get_num_threads`); the result does not depend on it.

    Raises
    ------
    TypeError
        If an argument has the wrong type or dtype.
    ValueError
        If shapes, lengths or layouts differ, a written buffer is read-only, buffers
        overlap, a hyperparameter is out of range, or ``amsgrad`` is True (nothing is
        written).

    Examples
    --------
    >>> p = np.ones(3, np.float16); g = np.full(3, 0.5, np.float16)
    >>> m = np.zeros(3, np.uint8); v = np.zeros(3, np.uint8)
    >>> ms = np.zeros(1, np.float32); vs = np.zeros(1, np.float32)
    >>> w = p.astype(np.float32)
    >>> kernels.adam_mixed_int8_state(p, g, m, ms, v, vs, w, step=1, lr=0.1)
    >>> p, w
    (array([0.9, 0.9, 0.9], dtype=float16), array([0.9, 0.9, 0.9], dtype=float32))
    """
    cdef str fn = "fastlr.kernels.adam_mixed_int8_state"
    cdef AdamHyper h
    hyper_args(fn, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize,
               amsgrad, "use bfloat16 or float32 state (fastlr.kernels.adam_mixed) for AMSGrad",
               &h)
    cdef int nt = threads_arg(fn, n_threads)
    objs = (param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, master)
    cdef list arrays = []
    cdef cnp.ndarray a, p = None
    cdef str pfmt = ""
    cdef bint c_order = True
    cdef Py_ssize_t n = 0
    cdef int k
    for k in range(7):
        obj = objs[k]
        name = _NAMES8[k]
        if obj is None and k == 6:
            break
        check_ndarray(fn, name, obj, "")
        a = <cnp.ndarray>obj
        if k == 0:
            p = a
            pfmt = _param_format(fn, a)
            c_order = cnp.PyArray_IS_C_CONTIGUOUS(a)
            n = cnp.PyArray_SIZE(a)
        elif k == 3 or k == 5:
            check_scales(fn, name, a, n)
        else:
            if k == 1 or k == 6:
                _check_grad_or_master(fn, name, a, pfmt)
            elif cnp.PyArray_TYPE(a) != cnp.NPY_UINT8:
                raise TypeError(f"{fn}: {name} must have dtype uint8 (8-bit state codes), got "
                                f"{_got(a)}")
            check_like_param(fn, name, a, p, c_order, k != 1)
        check_buffer(fn, name, a, k != 1)
        arrays.append(a)
    if n == 0:          # every buffer is empty
        return None
    _no_overlap(fn, _NAMES8, arrays)

    cdef Param16 q
    q.param = <uint16_t*>cnp.PyArray_DATA(arrays[0])
    q.grad = <const void*>cnp.PyArray_DATA(arrays[1])
    q.grad_f32 = cnp.PyArray_TYPE(arrays[1]) == cnp.NPY_FLOAT
    q.master = <float*>cnp.PyArray_DATA(arrays[6]) if len(arrays) == 7 else NULL
    q.bfloat16 = pfmt == "bfloat16"
    cdef uint8_t* mp = <uint8_t*>cnp.PyArray_DATA(arrays[2])
    cdef float* smp = <float*>cnp.PyArray_DATA(arrays[3])
    cdef uint8_t* vp = <uint8_t*>cnp.PyArray_DATA(arrays[4])
    cdef float* svp = <float*>cnp.PyArray_DATA(arrays[5])
    if n >= NOGIL_MIN_SIZE:
        with nogil:
            c_adam_16_int8state(&q, mp, smp, vp, svp, n, &h, nt)
    else:
        c_adam_16_int8state(&q, mp, smp, vp, svp, n, &h, nt)
