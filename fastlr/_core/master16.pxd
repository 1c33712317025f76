# fastlr/_core/master16.pxd -- the step engine's 16-bit params (issue #19), kept with float32
# master weights or without, as inline C (private; no module): one pass per piece, block by
# block.
#
# Design notes
# ------------
# a) A param of the engine that is the float32 master of a 16-bit param (float16 or
#    bfloat16: fastlr/optim/master.py) runs through master16_run instead of its family's
#    core alone. Per block of MASTER16_BLOCK elements: a 16-bit grad is widened (exactly)
#    into a stack buffer (a float32 grad is read in place), the family's float32 core
#    updates the master and the state from it, and the block of masters is rounded to
#    nearest even into the 16-bit param, while the block is in L1. The same operations as
#    the passes they replace (widen every grad, step the masters, round every master into
#    its param), so the same bits; the 16-bit grads need no float32 copy.
# b) The grad reductions over 16-bit grads (clipping's norm, the non-finite scan) widen the
#    same way; sumsq_core adds element i into lane (start + i) % 8 in index order whatever
#    the split, so the norm has the bits of the widened grads' norm. A 16-bit value is
#    NaN or Inf exactly when its widened value is.
# c) Without masters (master_weights=False), the engine's param is the 16-bit array and its
#    state is float32: direct16_run widens a block of the param (and of a 16-bit grad) into
#    stack buffers, the family's float32 core updates them and the state, and the block is
#    stored rounded stochastically with the random bits of fastlr.kernels.adam_mixed's
#    param without master (half.pxd round_key: the element's value before the update and
#    the grad as the step applies it, times the clipping factor when there is one; salt
#    step_salt(the param's update number, PARAM_STREAM)): the bits of the chunked passes of
#    fastlr/optim/direct16.py (widen, the float32 kernel, round_stochastic_into).
# d) The pointers are the engine's piece's: [param or master, grad, state...] (2 + 3), the
#    grad's elements 2 bytes (16-bit) or 4; a NULL state pointer stays NULL (a slot the
#    step leaves out). The format comes in as a constant (one straight-line loop per
#    format). block16_ptrs sets a block's grad and state pointers for both runs.

cimport cython
from libc.stdint cimport uint16_t, uint32_t

from fastlr._core.bfloat cimport bf16_round, random_bits
from fastlr._core.half cimport FMT_BF16, FMT_F16, f16_round, round16_stochastic, round_key, widen16
from fastlr._core.loops cimport core_fn, sumsq_core

cdef enum:
    MASTER16_BLOCK = 512      # elements per block: three float32 blocks stay in L1
    PIECE_PTRS = 5            # master, grad, up to 3 state buffers

ctypedef void (*master16_fn)(core_fn core, char** ptrs, Py_ssize_t n, const void* coef,
                             uint16_t* user, bint grad16,
                             Py_ssize_t state_itemsize) noexcept nogil
ctypedef void (*direct16_fn)(core_fn core, char** ptrs, Py_ssize_t n, const void* coef,
                             bint grad16, Py_ssize_t state_itemsize, uint32_t salt,
                             float grad_scale) noexcept nogil


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline const float* block16_ptrs(char** b, char** ptrs, Py_ssize_t a,       # OUT, IN, IN
                                      Py_ssize_t nb, float* gb, bint grad16,    # IN, OUT, IN
                                      Py_ssize_t state_itemsize,                # IN
                                      int fmt) noexcept nogil:                  # IN
    """Block [a, a + nb) of a piece (note d): b[1] = its grad as float32 (a 16-bit grad
    widened into gb, a float32 grad in place), b[2:] = its state (NULL stays NULL); returns
    b[1]. b[0] is the caller's."""
    cdef const uint16_t* g16 = <const uint16_t*>ptrs[1]
    cdef Py_ssize_t j, k
    if grad16:
        for j in range(nb):
            gb[j] = widen16(g16[a + j], fmt)
        b[1] = <char*>gb
    else:
        b[1] = ptrs[1] + a * 4
    for k in range(2, PIECE_PTRS):
        b[k] = NULL if ptrs[k] == NULL else ptrs[k] + a * state_itemsize
    return <const float*>b[1]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void master16_run(core_fn core, char** ptrs, Py_ssize_t n,        # IN
                              const void* coef, uint16_t* user, bint grad16,   # IN, OUT, IN
                              Py_ssize_t state_itemsize, int fmt) noexcept nogil:
    """Elements [0, n) of a piece (note a): ptrs = [master, grad, state...], user = the
    16-bit param's bits."""
    cdef float gb[MASTER16_BLOCK]
    cdef char* b[PIECE_PTRS]
    cdef const float* m
    cdef Py_ssize_t a = 0, nb, j
    while a < n:
        nb = n - a if n - a < MASTER16_BLOCK else MASTER16_BLOCK
        b[0] = ptrs[0] + a * 4
        block16_ptrs(b, ptrs, a, nb, gb, grad16, state_itemsize, fmt)
        core(b, nb, coef)
        m = <const float*>b[0]
        if fmt == FMT_BF16:
            for j in range(nb):
                user[a + j] = bf16_round(m[j])
        else:
            for j in range(nb):
                user[a + j] = f16_round(m[j])
        a += nb


cdef inline void master16_bf16(core_fn core, char** ptrs, Py_ssize_t n, const void* coef,
                               uint16_t* user, bint grad16,
                               Py_ssize_t state_itemsize) noexcept nogil:
    master16_run(core, ptrs, n, coef, user, grad16, state_itemsize, FMT_BF16)


cdef inline void master16_f16(core_fn core, char** ptrs, Py_ssize_t n, const void* coef,
                              uint16_t* user, bint grad16,
                              Py_ssize_t state_itemsize) noexcept nogil:
    master16_run(core, ptrs, n, coef, user, grad16, state_itemsize, FMT_F16)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void direct16_run(core_fn core, char** ptrs, Py_ssize_t n,         # IN
                              const void* coef, bint grad16,                   # IN
                              Py_ssize_t state_itemsize, uint32_t salt,        # IN
                              float grad_scale, int fmt) noexcept nogil:       # IN
    """Elements [0, n) of a piece whose param is 16-bit (note c): ptrs = [param bits, grad,
    state...]; grad_scale: the clipping factor folded into the coefficients (1: none)."""
    cdef float pb[MASTER16_BLOCK]
    cdef float gb[MASTER16_BLOCK]
    cdef char* b[PIECE_PTRS]
    cdef uint16_t* p16 = <uint16_t*>ptrs[0]
    cdef const float* g
    cdef Py_ssize_t a = 0, nb, j
    while a < n:
        nb = n - a if n - a < MASTER16_BLOCK else MASTER16_BLOCK
        for j in range(nb):
            pb[j] = widen16(p16[a + j], fmt)
        b[0] = <char*>pb
        g = block16_ptrs(b, ptrs, a, nb, gb, grad16, state_itemsize, fmt)
        core(b, nb, coef)
        # (the key reads the param's old bits before they are overwritten, element by
        # element; the grad as the step applied it)
        if grad_scale == 1:
            for j in range(nb):
                p16[a + j] = round16_stochastic(
                    pb[j], random_bits(round_key(widen16(p16[a + j], fmt), g[j]), salt), fmt)
        else:
            for j in range(nb):
                p16[a + j] = round16_stochastic(
                    pb[j], random_bits(round_key(widen16(p16[a + j], fmt), g[j] * grad_scale),
                                       salt), fmt)
        a += nb


cdef inline void direct16_bf16(core_fn core, char** ptrs, Py_ssize_t n, const void* coef,
                               bint grad16, Py_ssize_t state_itemsize, uint32_t salt,
                               float grad_scale) noexcept nogil:
    direct16_run(core, ptrs, n, coef, grad16, state_itemsize, salt, grad_scale, FMT_BF16)


cdef inline void direct16_f16(core_fn core, char** ptrs, Py_ssize_t n, const void* coef,
                              bint grad16, Py_ssize_t state_itemsize, uint32_t salt,
                              float grad_scale) noexcept nogil:
    direct16_run(core, ptrs, n, coef, grad16, state_itemsize, salt, grad_scale, FMT_F16)


# ---- the grad reductions over 16-bit grads (note b); the signatures of loops.pxd's ----
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sumsq16(const char* x, Py_ssize_t n, Py_ssize_t start, double* acc,
                         int fmt) noexcept nogil:
    cdef float gb[MASTER16_BLOCK]
    cdef const uint16_t* h = <const uint16_t*>x
    cdef Py_ssize_t a = 0, nb, j
    while a < n:
        nb = n - a if n - a < MASTER16_BLOCK else MASTER16_BLOCK
        for j in range(nb):
            gb[j] = widen16(h[a + j], fmt)
        sumsq_core(gb, nb, start + a, acc)
        a += nb


cdef inline void sumsq_bf16(const char* x, Py_ssize_t n, Py_ssize_t start,
                            double* acc) noexcept nogil:
    sumsq16(x, n, start, acc, FMT_BF16)


cdef inline void sumsq_f16(const char* x, Py_ssize_t n, Py_ssize_t start,
                           double* acc) noexcept nogil:
    sumsq16(x, n, start, acc, FMT_F16)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint nonfinite16(const char* x, Py_ssize_t n, uint32_t exponent) noexcept nogil:
    """True when an element's exponent bits are all ones (NaN or +-Inf): an integer max."""
    cdef const uint16_t* h = <const uint16_t*>x
    cdef uint32_t m = 0, e
    cdef Py_ssize_t i
    for i in range(n):
        e = h[i] & exponent
        m = e if e > m else m
    return m == exponent


cdef inline bint nonfinite_bf16(const char* x, Py_ssize_t n) noexcept nogil:
    return nonfinite16(x, n, 0x7F80u)


cdef inline bint nonfinite_f16(const char* x, Py_ssize_t n) noexcept nogil:
    return nonfinite16(x, n, 0x7C00u)
