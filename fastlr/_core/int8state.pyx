# fastlr/_core/int8state.pyx -- Adam / AdamW with 8-bit block-wise quantized state
# (issue #19, state_dtype="int8"): the per-block core, in C, and the validated kernel.
#
# Design notes
# ------------
# a) Blocks. The moments of one param are cut, in memory order, into blocks of BLOCK = 256
#    elements (the last one shorter); a block never straddles params. Each block has one
#    float32 scale per moment: its absolute maximum (absmax) after the last update. Every
#    element keeps one byte per moment: a code for (its value / the block's scale).
# b) The code: a small float in the bits of a byte, closed form both ways (no table, no
#    search), so encoding and decoding are a few integer and float operations that vectorize.
#      exp_avg (signed):     bit 7 the sign, bits 0-6 the magnitude code c: E = 4 exponent
#                            bits, M = 3 mantissa bits, EMAX = 15;
#      exp_avg_sq (unsigned): bits 0-7 the code c: E = 5, M = 3, EMAX = 31.
#    Value of c (relative to the scale): c >= 8: 2**(c // 8 - EMAX) * (1 + (c % 8) / 8);
#    c < 8 (subnormal): c * 2**(-2 - EMAX). So 1.0 (the absmax) is code 8 * EMAX, the
#    smallest nonzero magnitude is 2**-17 (exp_avg) and 2**-33 (exp_avg_sq) of the scale,
#    and every code has 3 significant bits. Decoding multiplies by the scale (one float32
#    multiply, so the result is the twin's).
# c) Encoding, per element of the block, y = |x| * (1 / absmax) (float32; 1 / 0 taken as 0)
#    in the normal range is the float32 y's bits with the low 20 mantissa bits dropped after
#    adding 20 random bits (stochastic rounding: up with probability (dropped bits) / 2**20,
#    so the expected stored value is x; nearest rounding would freeze the second moment,
#    whose per-step change is far below half a code step, docs/lowprecision.rst), minus the
#    bias (127 - EMAX) * 8: the carry out of the mantissa moves to the next exponent, as it
#    should. Below 2**(1 - EMAX) the same bit operation runs on y + 2**(1 - EMAX) (the
#    mantissa of that sum is y's linear subnormal code) and 8 is subtracted. The random bits:
#    `random_bits` (fastlr/_core/bfloat.pxd) of the element's param bits before the update
#    XOR its index in the param, salted by `step_salt(step, 0)`; the low 16 bits (shifted
#    to 20) round exp_avg, the high 16 bits exp_avg_sq. No random state: the same bits for
#    any thread count, and the twin reproduces them.
# d) One pass per block: decode, update m and v in float32 with the float32 Adam core's
#    operations in its order (loops.pxd adam_core), drive this step's param update with the
#    UNROUNDED new moments, keep them in two stack buffers of BLOCK floats, take the new
#    absmax (as the maximum of |x|'s bits as unsigned integers: for non-negative floats the
#    order is the same, NaN sorts above Inf so a NaN propagates into the scale, and an
#    integer maximum vectorizes), then encode the block. A non-finite moment makes its
#    block's scale non-finite: all 256 moments of the block decode to NaN/Inf from then on
#    (float32 state loses only that element; guard with the classes' skip_nonfinite or
#    check the grads first).
# e) Bytes per element moved by a step: param 4 + 4, grad 4, codes 1 + 1 per moment, and
#    2 * 2 * 4 / 256 for the scales: 16.0625 (float32 state: 28).
# f) Threads: parallel_spans (fastlr._kernels) cuts [0, n) into chunks that are multiples
#    of SPAN_CHUNK = 16384 elements, a multiple of BLOCK, so every span starts on a block
#    boundary and a block is never split; the bits do not depend on the thread count.
# g) AMSGrad is not offered (refused with a clear error): its running maximum would be a
#    third quantized buffer and is left for later.
# h) Validation: `adam_int8_state` checks every argument (types, dtypes, shapes, layouts,
#    scales' length, read-only buffers, overlap, hyperparameter ranges) before any buffer
#    is touched, with fastlr._core.args' messages. The NumPy twin is
#    fastlr.reference.adam_int8_state (fastlr/reference/int8state.py), bit for bit.

cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint32_t

from fastlr._core.args cimport threads_arg
from fastlr._core.arrays cimport (check_buffer, check_like_param, check_ndarray,
                                  check_overlap, check_param_layout)
from fastlr._core.int8core cimport (BLOCK_, Coef, check_scales, coef_from, hyper_args,
                                    int8_block)
from cpython.pycapsule cimport PyCapsule_New
from fastlr._kernels cimport AdamHyper, parallel_spans

import numpy as np

cnp.import_array()

__all__ = ["adam_int8_state", "BLOCK", "n_blocks"]

cdef enum:
    # The GIL is released for params at least this long (as in _kernels).
    NOGIL_MIN_SIZE = 4096

#: Elements per block (one scale per block and moment).
BLOCK = BLOCK_


ctypedef struct Job:
    float* p
    const float* g
    uint8_t* m
    uint8_t* v
    float* sm
    float* sv
    Coef c


# ---------------------------------------------------------------------------------------
# C level
# ---------------------------------------------------------------------------------------
cdef void int8_span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    # start is a multiple of BLOCK (note f)
    cdef Job* job = <Job*>ctx
    cdef Py_ssize_t b = start
    while b < stop:
        int8_block(job.p + b, job.g + b, job.m + b, job.v + b, job.sm + b // BLOCK_,
                   job.sv + b // BLOCK_, b, min(<Py_ssize_t>BLOCK_, stop - b), &job.c)
        b += BLOCK_


cdef void c_adam_f32_int8state(float* param, const float* grad, uint8_t* exp_avg,
                               float* exp_avg_scale, uint8_t* exp_avg_sq,
                               float* exp_avg_sq_scale, Py_ssize_t n, const AdamHyper* h,
                               int n_threads) noexcept nogil:
    # the C API's adam_f32_int8state (fastlr/_kernels.pxd) of this build: fastlr._kernels
    # calls it through the pointer _c_api gives
    cdef Job job
    coef_from(h, &job.c)
    job.p = param
    job.g = grad
    job.m = exp_avg
    job.sm = exp_avg_scale
    job.v = exp_avg_sq
    job.sv = exp_avg_sq_scale
    parallel_spans(int8_span, &job, n, n_threads)


def _c_api():
    """{C API function name: a capsule of this build's implementation} (fastlr._kernels)."""
    return {"adam_f32_int8state": PyCapsule_New(<void*>c_adam_f32_int8state,
                                                b"fastlr.c_api", NULL)}


# ---------------------------------------------------------------------------------------
# Python level
# ---------------------------------------------------------------------------------------
def n_blocks(Py_ssize_t size):
    """The number of blocks (scales per moment) of a param of ``size`` elements."""
    return (size + BLOCK_ - 1) // BLOCK_


cdef str _dtype_name(cnp.ndarray a):
    return str(a.dtype)


cdef cnp.ndarray _array(str fn, str name, object obj, int type_num, str what):
    check_ndarray(fn, name, obj, what)
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if cnp.PyArray_TYPE(a) != type_num:
        raise TypeError(f"{fn}: {name} must have dtype {what}, got {_dtype_name(a)}")
    check_buffer(fn, name, a, name != "grad")
    return a


_NAMES = ("param", "grad", "exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale")


def adam_int8_state(param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, *,
                    step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False, amsgrad=False,
                    n_threads=None):
    """Adam / AdamW with 8-bit block-wise quantized moments (``state_dtype="int8"``), in place.

    float32 ``param`` and ``grad``; each moment is a ``uint8`` code per element and a
    float32 scale per block of :data:`BLOCK` = 256 elements (in memory order; the block's
    absolute maximum). Per block, in one pass: the codes are decoded (code value times
    the scale), the moments updated in float32 as :func:`fastlr.kernels.adam` updates them

    .. math::

        m = \\beta_1 m + (1 - \\beta_1) g, \\quad v = \\beta_2 v + (1 - \\beta_2) g^2,
        \\quad p \\leftarrow p - \\frac{lr}{1 - \\beta_1^t}
        \\frac{m}{\\sqrt{v} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    (the param in its units, ``lr`` in param units per unit of ``m / sqrt(v)``), the
    unrounded new moments drive this step's update, and they are stored as the new absmax
    and codes rounded stochastically (the expected stored value is the float32 value; the
    random bits a hash of the param's bits, the element's index and ``step``: the same bits
    for any thread count). The code: a sign bit and a 7-bit small float (4 exponent bits, 3
    mantissa bits) of ``|m| / absmax`` for ``exp_avg``; an 8-bit small float (5 exponent
    bits, 3 mantissa bits) of ``v / absmax`` for ``exp_avg_sq`` (docs/lowprecision.rst).
    Its NumPy twin is :func:`fastlr.reference.adam_int8_state` (bit for bit). Returns None.

    Parameters
    ----------
    param : numpy.ndarray
        float32, C- or F-contiguous and writeable; updated in place.
    grad : numpy.ndarray
        float32, param's shape and memory layout; only read.
    exp_avg, exp_avg_sq : numpy.ndarray
        uint8 codes, param's shape and layout, updated in place; start at zeros.
    exp_avg_scale, exp_avg_sq_scale : numpy.ndarray
        float32, 1-D of ``ceil(param.size / 256)`` elements (one per block), updated in
        place; start at zeros.
    step : int
        The 1-based update number of these buffers, >= 1.
    lr : float
        learning rate (parameter units per unit of ``m / sqrt(v)``), a finite number >= 0.
    beta1, beta2 : float, default 0.9, 0.999
        moment decays, in [0, 1).
    eps : float, default 1e-8
        added to the denominator (gradient units), a finite number >= 0.
    weight_decay : float, default 0.0
        a finite number >= 0 (L2, or decoupled with ``decoupled_weight_decay``), per step.
    decoupled_weight_decay : bool, default False
        ``p *= 1 - lr * wd`` (AdamW) instead of L2.
    maximize : bool, default False
        ascend instead of descend.
    amsgrad : bool, default False
        AMSGrad is not available with 8-bit state: True raises ValueError.
    n_threads : int, optional
        threads to use (None: :func:`fastlr.get_num_threads`); the result does not depend
        on it.

    Raises
    ------
    TypeError
        If an argument has the wrong type or dtype (param, grad and scales float32, codes
        uint8).
    ValueError
        If shapes, lengths or layouts differ, a buffer is read-only or buffers overlap, a
        hyperparameter is out of range, or ``amsgrad`` is True (nothing is written).

    Examples
    --------
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)
    >>> m = np.zeros(3, np.uint8); v = np.zeros(3, np.uint8)
    >>> ms = np.zeros(1, np.float32); vs = np.zeros(1, np.float32)
    >>> kernels.adam_int8_state(p, g, m, ms, v, vs, step=1, lr=0.1)
    >>> p
    array([0.9, 0.9, 0.9], dtype=float32)
    >>> ms, vs
    (array([0.05], dtype=float32), array([0.00025], dtype=float32))
    """
    cdef str fn = "fastlr.kernels.adam_int8_state"
    cdef AdamHyper h
    hyper_args(fn, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize,
               amsgrad, "use state_dtype='bfloat16' or float32 state for AMSGrad", &h)
    cdef int nt = threads_arg(fn, n_threads)
    cdef tuple objs = (param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale)
    cdef cnp.ndarray p = _array(fn, "param", param, cnp.NPY_FLOAT, "float32")
    cdef cnp.ndarray a
    cdef Py_ssize_t n = cnp.PyArray_SIZE(p)
    check_param_layout(fn, p)
    cdef bint c_order = cnp.PyArray_IS_C_CONTIGUOUS(p)
    cdef list arrs = [p]
    cdef int k
    for k in range(1, 6):
        if k == 3 or k == 5:
            a = _array(fn, _NAMES[k], objs[k], cnp.NPY_FLOAT, "float32 (one scale per block)")
            check_scales(fn, _NAMES[k], a, n)
        else:
            a = _array(fn, _NAMES[k], objs[k], cnp.NPY_FLOAT if k == 1 else cnp.NPY_UINT8,
                       "float32" if k == 1 else "uint8 (8-bit state codes)")
            check_like_param(fn, _NAMES[k], a, p, c_order, k != 1)
        arrs.append(a)
    # overlap: no buffer may share memory with another (the grad included); with n == 0
    # every buffer is empty (no blocks), else none is
    cdef char* lo[6]
    cdef char* hi[6]
    if n > 0:
        for k in range(6):
            lo[k] = <char*>cnp.PyArray_DATA(arrs[k])
            hi[k] = lo[k] + cnp.PyArray_NBYTES(arrs[k])
        check_overlap(fn, _NAMES, lo, hi, 6)
    cdef float* pp = <float*>cnp.PyArray_DATA(arrs[0])
    cdef const float* gp = <const float*>cnp.PyArray_DATA(arrs[1])
    cdef uint8_t* mp = <uint8_t*>cnp.PyArray_DATA(arrs[2])
    cdef float* smp = <float*>cnp.PyArray_DATA(arrs[3])
    cdef uint8_t* vp = <uint8_t*>cnp.PyArray_DATA(arrs[4])
    cdef float* svp = <float*>cnp.PyArray_DATA(arrs[5])
    if n >= NOGIL_MIN_SIZE:
        with nogil:
            c_adam_f32_int8state(pp, gp, mp, smp, vp, svp, n, &h, nt)
    else:
        c_adam_f32_int8state(pp, gp, mp, smp, vp, svp, n, &h, nt)
