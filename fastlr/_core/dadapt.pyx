# fastlr/_core/dadapt.pyx -- the D-Adaptation optimizers' steps (dadaptation 3.2: DAdaptAdam,
# DAdaptSGD, DAdaptAdaGrad), every param of every group in one call each.
#
# Design notes
# ------------
# a) What: `dadapt_adam_step`, `dadapt_sgd_step` and `dadapt_adagrad_step` run one step of the
#    dadaptation package's optimizer over all params: the per-element state, the global sums
#    the step-size estimate `d` needs (inner products, L1 and squared norms), the scalar
#    update of `d` in double, and the param update. fastlr.Prodigy's kernel
#    (fastlr/_core/lrfree.pyx) is the model: same pieces/blocks/passes scheme.
# b) Passes: two per step. The package returns before touching any param when its norm sum
#    is 0 (all grads zero), after the state is updated, so the state and the sums come first
#    (pass 1: one read of p and g, one read and write of each buffer), then the scalars, then
#    (unless the sum is 0) pass 2: the param update (it uses the step's dlr, not the new d).
#    DAdaptSGD's first step adds a pass 0: the first grads' squared norm, which its dlr
#    divides by.
# c) Sums: fixed 16K-element blocks of the concatenation of all params (the engine's
#    REDUCE_BLOCK), element j adding into lane j % 8 of its block in double; blocks are added
#    in block order. The threaded loop's chunks start on block boundaries and each block is
#    computed by exactly one thread, so the sums have the same bits for any thread count.
#    Element-wise work runs in the params' dtype, operation by operation as the package's
#    torch calls (mul_ then add_ with alpha, addcmul_, sqrt().add_, addcdiv_); coefficients
#    are derived once per step in double.
# d) Validation: everything (types, dtypes, shapes, layouts, overlap, hyperparameters, the lr
#    rule) is checked before any buffer is written; then the GIL is released (from 4096
#    elements in all). Argument directions are marked # IN / # OUT.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport fabs, sqrt
from libc.stdlib cimport calloc, free

from fastlr._core.args cimport (NONNEG, POSITIVE, UNIT, checked_real, flag_arg, int_arg,
                                ndarray_hint, threads_arg)
from fastlr._core.arrays cimport check_like, layout_name
from fastlr._kernels cimport parallel_spans

import math

import numpy as np

cnp.import_array()

cdef enum:
    BLOCK = 16384           # the reduction block (the engine's REDUCE_BLOCK)
    NOGIL_MIN_SIZE = 4096   # elements in all from which the step releases the GIL
    NSUM = 5                # sums per block (AdaGrad needs five)

cdef enum Kind:
    ADAM = 0
    SGD = 1
    ADAGRAD = 2
    GNORM = 3               # DAdaptSGD's first step: sum g^2


ctypedef struct Coef:
    double decay            # weight decay added to the grad (0: none)
    double num_fac          # Adam: r * dlr; SGD: dlr (the inner product's factor)
    double r                # Adam: layer_scale (the L1 sum's factor)
    double m_fac            # Adam: r * dlr * (1 - beta1)
    double s_fac            # Adam: dlr * (1 - sqrt(beta2)); SGD, AdaGrad: dlr
    double beta1, beta2, sqrt_beta2
    double eps
    double wd_fac           # Adam: -decay * dlr (decoupled decay, pass 2)
    double keep             # SGD, AdaGrad: 1 - ck (the param's share in pass 2)
    double ck               # SGD, AdaGrad: 1 - momentum
    int active              # the group's lr > 0 (Adam, SGD)
    int decoupled           # Adam: decoupled weight decay in pass 2
    int mix                 # AdaGrad: momentum != 0


ctypedef struct Piece:
    char* p                 # IN/OUT param
    const char* g           # IN grad
    char* a                 # IN/OUT Adam: exp_avg; SGD: s; AdaGrad: alphak
    char* b                 # IN/OUT Adam: exp_avg_sq; SGD: x0 (IN); AdaGrad: sk
    char* c                 # IN/OUT Adam: s; AdaGrad: x0 (IN); SGD: unused
    Py_ssize_t n, start
    int f64
    const Coef* cf


ctypedef struct Job:
    const Piece* pieces
    Py_ssize_t n_pieces, total
    int kind
    double* sums            # OUT NSUM per block


cdef inline Py_ssize_t first_piece(const Job* job, Py_ssize_t lo) noexcept nogil:
    """The piece that holds element lo of the concatenation (binary search on start)."""
    cdef Py_ssize_t a = 0, b = job.n_pieces, mid
    while b - a > 1:
        mid = (a + b) // 2
        if job.pieces[mid].start <= lo:
            a = mid
        else:
            b = mid
    return a


# ---------------------------------------------------------------------------------------
# pass 1 cores: the state and the sums over elements [s0, e0) of one piece
# acc[k * 8 + lane] is sum k, lane (start + j) & 7
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void adam_core(const floating* p, const floating* g, floating* m, floating* v,
                    floating* s,                             # IN, IN, IN/OUT x3
                    Py_ssize_t s0, Py_ssize_t e0, Py_ssize_t start, const Coef* cf,
                    double* acc) noexcept nogil:             # OUT 0: <g, s/denom>, 1: |s|
    cdef Py_ssize_t j, lane
    cdef floating gj, sj, den, wd = <floating>cf.decay, eps = <floating>cf.eps
    cdef floating b1 = <floating>cf.beta1, b2 = <floating>cf.beta2
    cdef floating sb2 = <floating>cf.sqrt_beta2, mf = <floating>cf.m_fac
    cdef floating vf = <floating>(1.0 - cf.beta2), sf = <floating>cf.s_fac
    cdef double nf = cf.num_fac, r = cf.r
    for j in range(s0, e0):
        lane = (start + j) & 7
        gj = g[j]
        if wd != 0:
            gj = gj + wd * p[j]
        den = <floating>sqrt(v[j])
        den = den + eps
        acc[lane] += nf * <double>(gj * (s[j] / den))
        m[j] = m[j] * b1 + mf * gj
        v[j] = v[j] * b2 + vf * gj * gj
        sj = s[j] * sb2 + sf * gj
        s[j] = sj
        acc[8 + lane] += r * fabs(<double>sj)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void sgd_core(const floating* p, const floating* g, floating* s,   # IN, IN, IN/OUT
                   Py_ssize_t s0, Py_ssize_t e0, Py_ssize_t start, const Coef* cf,
                   double* acc) noexcept nogil:              # OUT 0: <g, s>, 1: s^2
    cdef Py_ssize_t j, lane
    cdef floating gj, sj, wd = <floating>cf.decay, sf = <floating>cf.s_fac
    cdef double nf = cf.num_fac
    for j in range(s0, e0):
        lane = (start + j) & 7
        gj = g[j]
        if wd != 0:
            gj = gj + wd * p[j]
        acc[lane] += nf * <double>(gj * s[j])
        sj = s[j] + sf * gj
        s[j] = sj
        acc[8 + lane] += <double>(sj * sj)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void gnorm_core(const floating* g, Py_ssize_t s0, Py_ssize_t e0,    # IN
                     Py_ssize_t start, double* acc) noexcept nogil:      # OUT 0: g^2
    cdef Py_ssize_t j
    for j in range(s0, e0):
        acc[(start + j) & 7] += <double>(g[j] * g[j])


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void adagrad_core(const floating* p, const floating* g, floating* alpha,
                       floating* sk,                         # IN, IN, IN/OUT, IN/OUT
                       Py_ssize_t s0, Py_ssize_t e0, Py_ssize_t start, const Coef* cf,
                       double* acc) noexcept nogil:
    # OUT 0: old sk^2/den, 1: old |sk|, 2: g^2/den, 3: new sk^2/den, 4: new |sk|
    cdef Py_ssize_t j, lane
    cdef floating gj, sj, aj, den, den0, wd = <floating>cf.decay, eps = <floating>cf.eps
    cdef floating sf = <floating>cf.s_fac
    for j in range(s0, e0):
        lane = (start + j) & 7
        gj = g[j]
        if wd != 0:
            gj = gj + wd * p[j]
        sj = sk[j]
        aj = alpha[j]
        den0 = <floating>sqrt(aj)
        den0 = den0 + eps
        acc[lane] += <double>((sj * sj) / den0)
        acc[8 + lane] += fabs(<double>sj)
        aj = aj + gj * gj
        alpha[j] = aj
        den = <floating>sqrt(aj)
        den = den + eps
        acc[16 + lane] += <double>((gj * gj) / den)
        sj = sj + sf * gj
        sk[j] = sj
        acc[24 + lane] += <double>((sj * sj) / den)
        acc[32 + lane] += fabs(<double>sj)


cdef void pass1_block(const Job* job, Py_ssize_t lo, Py_ssize_t hi,
                      double* out) noexcept nogil:           # OUT NSUM
    cdef Py_ssize_t i, s0, e0
    cdef double acc[NSUM * 8]
    cdef int k
    cdef const Piece* pc
    for k in range(NSUM * 8):
        acc[k] = 0.0
    i = first_piece(job, lo)
    while i < job.n_pieces and job.pieces[i].start < hi:
        pc = &job.pieces[i]
        s0 = lo - pc.start if lo > pc.start else 0
        e0 = hi - pc.start if hi - pc.start < pc.n else pc.n
        if e0 > s0:
            if job.kind == ADAM and pc.cf.active:
                if pc.f64:
                    adam_core(<const double*>pc.p, <const double*>pc.g, <double*>pc.a,
                              <double*>pc.b, <double*>pc.c, s0, e0, pc.start, pc.cf, acc)
                else:
                    adam_core(<const float*>pc.p, <const float*>pc.g, <float*>pc.a,
                              <float*>pc.b, <float*>pc.c, s0, e0, pc.start, pc.cf, acc)
            elif job.kind == SGD and pc.cf.active:
                if pc.f64:
                    sgd_core(<const double*>pc.p, <const double*>pc.g, <double*>pc.a,
                             s0, e0, pc.start, pc.cf, acc)
                else:
                    sgd_core(<const float*>pc.p, <const float*>pc.g, <float*>pc.a,
                             s0, e0, pc.start, pc.cf, acc)
            elif job.kind == GNORM and pc.cf.active:
                if pc.f64:
                    gnorm_core(<const double*>pc.g, s0, e0, pc.start, acc)
                else:
                    gnorm_core(<const float*>pc.g, s0, e0, pc.start, acc)
            elif job.kind == ADAGRAD:
                if pc.f64:
                    adagrad_core(<const double*>pc.p, <const double*>pc.g, <double*>pc.a,
                                 <double*>pc.b, s0, e0, pc.start, pc.cf, acc)
                else:
                    adagrad_core(<const float*>pc.p, <const float*>pc.g, <float*>pc.a,
                                 <float*>pc.b, s0, e0, pc.start, pc.cf, acc)
        i += 1
    for k in range(NSUM):
        out[k] = (((acc[8 * k] + acc[8 * k + 1]) + (acc[8 * k + 2] + acc[8 * k + 3]))
                  + ((acc[8 * k + 4] + acc[8 * k + 5]) + (acc[8 * k + 6] + acc[8 * k + 7])))


cdef void pass1_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The blocks that start in [lo, hi), each into its own slots (a block may reach past
    hi: every block is computed exactly once for any split of [0, total))."""
    cdef const Job* job = <const Job*>ctx
    cdef Py_ssize_t blk
    for blk in range((lo + BLOCK - 1) // BLOCK, (hi + BLOCK - 1) // BLOCK):
        pass1_block(job, blk * BLOCK, min(blk * BLOCK + BLOCK, job.total),
                    &job.sums[blk * NSUM])


# ---------------------------------------------------------------------------------------
# pass 2: the param update over elements [s0, e0) of one piece
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void adam_update(floating* p, const floating* m, const floating* v,  # IN/OUT, IN, IN
                      Py_ssize_t s0, Py_ssize_t e0, const Coef* cf) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating pj, den, eps = <floating>cf.eps, wdf = <floating>cf.wd_fac
    cdef int decoupled = cf.decoupled
    for j in range(s0, e0):
        pj = p[j]
        if decoupled:
            pj = pj + wdf * pj
        den = <floating>sqrt(v[j])
        den = den + eps
        p[j] = pj - m[j] / den


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void sgd_update(floating* p, const floating* s, const floating* x0,  # IN/OUT, IN, IN
                     Py_ssize_t s0, Py_ssize_t e0, const Coef* cf) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating keep = <floating>cf.keep, ck = <floating>cf.ck
    for j in range(s0, e0):
        p[j] = p[j] * keep + ck * (x0[j] - s[j])


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void adagrad_update(floating* p, const floating* alpha, const floating* sk,
                         const floating* x0,                  # IN/OUT, IN, IN, IN
                         Py_ssize_t s0, Py_ssize_t e0, const Coef* cf) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating z, den, eps = <floating>cf.eps, keep = <floating>cf.keep
    cdef floating ck = <floating>cf.ck
    cdef int mix = cf.mix
    for j in range(s0, e0):
        den = <floating>sqrt(alpha[j])
        den = den + eps
        z = x0[j] - sk[j] / den
        if mix:
            p[j] = p[j] * keep + ck * z
        else:
            p[j] = z


cdef void pass2_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const Job* job = <const Job*>ctx
    cdef Py_ssize_t i, s0, e0
    cdef const Piece* pc
    i = first_piece(job, lo)
    while i < job.n_pieces and job.pieces[i].start < hi:
        pc = &job.pieces[i]
        s0 = lo - pc.start if lo > pc.start else 0
        e0 = hi - pc.start if hi - pc.start < pc.n else pc.n
        if e0 > s0:
            if job.kind == ADAM:
                if pc.f64:
                    adam_update(<double*>pc.p, <const double*>pc.a, <const double*>pc.b,
                                s0, e0, pc.cf)
                else:
                    adam_update(<float*>pc.p, <const float*>pc.a, <const float*>pc.b,
                                s0, e0, pc.cf)
            elif job.kind == SGD:
                if pc.f64:
                    sgd_update(<double*>pc.p, <const double*>pc.a, <const double*>pc.b,
                               s0, e0, pc.cf)
                else:
                    sgd_update(<float*>pc.p, <const float*>pc.a, <const float*>pc.b,
                               s0, e0, pc.cf)
            else:
                if pc.f64:
                    adagrad_update(<double*>pc.p, <const double*>pc.a, <const double*>pc.b,
                                   <const double*>pc.c, s0, e0, pc.cf)
                else:
                    adagrad_update(<float*>pc.p, <const float*>pc.a, <const float*>pc.b,
                                   <const float*>pc.c, s0, e0, pc.cf)
        i += 1


# ---------------------------------------------------------------------------------------
# validation and the shared driver
# ---------------------------------------------------------------------------------------
cdef list _array_list(str fn, str name, object arrays, Py_ssize_t n):
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{fn}: {name} must be a list of arrays, got {type(arrays).__name__}")
    if len(arrays) != n:
        raise ValueError(f"{fn}: {name} has {len(arrays)} arrays, expected {n} (one per param)")
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}: {name}[{i}] must be a numpy.ndarray, got "
                            f"{type(a).__name__}{ndarray_hint(a)}")
    return list(arrays)


cdef _check_array(str fn, str label, cnp.ndarray a, bint written):
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT and cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE:
        raise TypeError(f"{fn}: {label} must have dtype float32 or float64, got {a.dtype}")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a)) or \
            not cnp.PyArray_ISALIGNED(a) or cnp.PyArray_ISBYTESWAPPED(a):
        raise ValueError(f"{fn}: {label} must be contiguous, aligned and in native byte "
                         f"order, got {layout_name(a)}")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{fn}: {label} is read-only but is updated in place")


cdef list _groups(str fn, object group_sizes):
    if not isinstance(group_sizes, (list, tuple)) or not group_sizes:
        raise TypeError(f"{fn}: group_sizes must be a non-empty list of ints")
    return [int_arg(fn, f"group_sizes[{g}]", v, 0, 2 ** 62) for g, v in enumerate(group_sizes)]


cdef list _per_group(str fn, str key, object values, Py_ssize_t ng, int rule):
    if not isinstance(values, (list, tuple)) or len(values) != ng:
        raise ValueError(f"{fn}: {key} must be a list of {ng} values (one per group), got "
                         f"{values!r:.100}")
    return [checked_real(fn, f"{key}[{g}]", v, rule) for g, v in enumerate(values)]


cdef double _growth(str fn, object growth_rate) except? -1.0:
    if isinstance(growth_rate, float) and growth_rate == math.inf:
        return math.inf             # the package's default: unrestricted
    return checked_real(fn, "growth_rate", growth_rate, POSITIVE)


cdef list _checked_arrays(str fn, list sizes, object params, object grads, tuple buffers):
    """Check params, grads and the named buffers (name, list, written); the lists, params
    first, and the group of each param."""
    cdef Py_ssize_t n = sum(sizes), i
    cdef cnp.ndarray pa
    ps = _array_list(fn, "params", params, n)
    gs = _array_list(fn, "grads", grads, n)
    bufs = [_array_list(fn, name, arrs, n) for name, arrs, _ in buffers]
    spans = []
    for i in range(n):
        pa = <cnp.ndarray>ps[i]
        _check_array(fn, f"params[{i}]", pa, True)
        check_like(fn, f"grads[{i}]", <cnp.ndarray>gs[i], f"params[{i}]", pa, False)
        _check_array(fn, f"grads[{i}]", <cnp.ndarray>gs[i], False)
        labelled = [(f"params[{i}]", pa), (f"grads[{i}]", gs[i])]
        for (name, _, written), arrs in zip(buffers, bufs):
            check_like(fn, f"{name}[{i}]", <cnp.ndarray>arrs[i], f"params[{i}]", pa, written)
            _check_array(fn, f"{name}[{i}]", <cnp.ndarray>arrs[i], written)
            labelled.append((f"{name}[{i}]", arrs[i]))
        for label, arr in labelled:
            if (<cnp.ndarray>arr).nbytes:
                spans.append((<Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>arr),
                              cnp.PyArray_NBYTES(<cnp.ndarray>arr), label))
    spans.sort()
    for (lo_a, n_a, l_a), (lo_b, n_b, l_b) in zip(spans, spans[1:]):
        if lo_b < lo_a + n_a:
            raise ValueError(f"{fn}: {l_a} and {l_b} overlap in memory (every buffer must be "
                             f"its own)")
    return [ps, gs] + bufs


cdef object _run(int kind, list sizes, list arrays, Coef* coefs, int nt, bint update,
                 object stop):
    """Pass 1 (kind) over every param, the NSUM sums; then, unless stop(sums) is true, pass 2
    (update). ``arrays``: params, grads and up to three buffers (a, b, c)."""
    cdef Py_ssize_t n = len(arrays[0]), i, gi = 0, left = sizes[0] if sizes else 0
    cdef Py_ssize_t total = 0, n_blocks, blk
    cdef Piece* pieces = NULL
    cdef double* sums = NULL
    cdef Job job
    cdef int k
    out = [0.0] * NSUM
    try:
        pieces = <Piece*>calloc(max(n, 1), sizeof(Piece))
        for i in range(n):
            total += cnp.PyArray_SIZE(<cnp.ndarray>arrays[0][i])
        n_blocks = max(1, (total + BLOCK - 1) // BLOCK)
        sums = <double*>calloc(n_blocks * NSUM, sizeof(double))
        if pieces == NULL or sums == NULL:
            raise MemoryError()
        total = 0
        for i in range(n):
            while left == 0:
                gi += 1
                left = sizes[gi]
            left -= 1
            pieces[i].p = <char*>cnp.PyArray_DATA(<cnp.ndarray>arrays[0][i])
            pieces[i].g = <const char*>cnp.PyArray_DATA(<cnp.ndarray>arrays[1][i])
            pieces[i].a = <char*>cnp.PyArray_DATA(<cnp.ndarray>arrays[2][i])
            pieces[i].b = <char*>cnp.PyArray_DATA(<cnp.ndarray>arrays[3][i]) \
                if len(arrays) > 3 else NULL
            pieces[i].c = <char*>cnp.PyArray_DATA(<cnp.ndarray>arrays[4][i]) \
                if len(arrays) > 4 else NULL
            pieces[i].n = cnp.PyArray_SIZE(<cnp.ndarray>arrays[0][i])
            pieces[i].start = total
            pieces[i].f64 = cnp.PyArray_TYPE(<cnp.ndarray>arrays[0][i]) == cnp.NPY_DOUBLE
            pieces[i].cf = &coefs[gi]
            total += pieces[i].n
        job.pieces = pieces
        job.n_pieces = n
        job.total = total
        job.kind = kind
        job.sums = sums
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                parallel_spans(pass1_span, &job, total, nt)
        elif total:
            pass1_span(&job, 0, total)
        for blk in range((total + BLOCK - 1) // BLOCK):     # in block order: same bits
            for k in range(NSUM):
                out[k] = out[k] + sums[blk * NSUM + k]
        if not update or stop(out):
            return out
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                parallel_spans(pass2_span, &job, total, nt)
        else:
            pass2_span(&job, 0, total)
        return out
    finally:
        free(pieces)
        free(sums)


cdef double _lr_rule(str fn, list lrs) except? -1.0:
    cdef double top = max(lrs)
    for g, v in enumerate(lrs):
        if v != top and v != 0.0:
            raise ValueError(f"{fn}: lr[{g}] is {v!r} but the largest group lr is {top!r}; "
                             f"the groups share one lr, or have lr 0 (as in dadaptation)")
    return top


def dadapt_adam_step(params, grads, exp_avg, exp_avg_sq, s, *, group_sizes, lr, weight_decay,
                     eps, layer_scale, betas=(0.9, 0.999), d, numerator_weighted,
                     growth_rate=math.inf, decouple=False, use_bias_correction=False, k,
                     n_threads=None):
    """One step of DAdaptAdam (dadaptation 3.2) over every param, in place; the new estimate.

    With ``lr`` the largest group lr (a unitless multiplier), ``bc`` =
    ``sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with ``use_bias_correction`` (else 1) and
    ``dlr = d * lr * bc``, pass 1 over each param of a group with ``lr > 0`` (``g`` plus
    ``weight_decay * p`` unless ``decouple``; ``r``: the group's ``layer_scale``):

    - ``num += r * dlr * <g, s / (sqrt(v) + eps)>`` (the old ``s``, ``v``);
    - ``m = beta1 m + r dlr (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2``;
    - ``s = sqrt(beta2) s + dlr (1 - sqrt(beta2)) g``; ``l1 += r * sum|s|``.

    Then ``N = sqrt(beta2) * numerator_weighted + (1 - sqrt(beta2)) * num``; when ``l1 == 0``
    nothing else changes (the package returns); else
    ``d = max(d, min(N / ((1 - sqrt(beta2)) l1), d * growth_rate))`` (when ``lr > 0``), and
    pass 2 over every param: ``p -= weight_decay * dlr * p`` when ``decouple``,
    ``p -= m / (sqrt(v) + eps)``.

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, float32 or float64, contiguous, the
        params of group 0 first.
    exp_avg, exp_avg_sq, s : list of numpy.ndarray
        The package's state like the params (updated in place).
    group_sizes : sequence of int
        Params per group.
    lr, weight_decay, eps, layer_scale : sequence of float
        Per group: the lr multiplier (``>= 0``; the largest or 0), weight decay
        (``>= 0``), eps (``> 0``), layer scale (``>= 0``).
    betas : (float, float)
        ``beta1``, ``beta2`` in [0, 1).
    d : float
        The estimate (``> 0``).
    numerator_weighted : float
        The numerator's running average.
    growth_rate : float
        The largest factor ``d`` may grow by per step (``> 0``, may be inf).
    decouple, use_bias_correction : bool
    k : int
        Steps taken (``>= 0``).
    n_threads : int, optional
        Threads to use; None: :func:`fastlr.get_num_threads`.

    Returns
    -------
    dict
        ``d``, ``numerator_weighted``, ``d_hat``, ``sk_l1``, ``k`` (the new values; the old
        ones when ``stepped`` is False) and ``stepped`` (False when ``l1 == 0``).

    Raises
    ------
    TypeError
        If an array or argument has the wrong type or dtype.
    ValueError
        If an array has the wrong shape or layout, buffers overlap, an argument is out of
        range, or groups' lrs differ other than by being 0.
    """
    cdef str fn = "fastlr._core.dadapt.dadapt_adam_step"
    cdef int nt = threads_arg(fn, n_threads)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}")
    cdef double beta1 = checked_real(fn, "betas[0]", betas[0], UNIT)
    cdef double beta2 = checked_real(fn, "betas[1]", betas[1], UNIT)
    cdef double cd = checked_real(fn, "d", d, POSITIVE)
    cdef double cnum = checked_real(fn, "numerator_weighted", numerator_weighted, 0)
    cdef double growth = _growth(fn, growth_rate)
    cdef bint dec = flag_arg(fn, "decouple", decouple)
    cdef bint bias = flag_arg(fn, "use_bias_correction", use_bias_correction)
    cdef long long kk = int_arg(fn, "k", k, 0, 2 ** 62)
    sizes = _groups(fn, group_sizes)
    cdef Py_ssize_t ng = len(sizes), gi
    lrs = _per_group(fn, "lr", lr, ng, NONNEG)
    wds = _per_group(fn, "weight_decay", weight_decay, ng, NONNEG)
    epss = _per_group(fn, "eps", eps, ng, POSITIVE)
    rs = _per_group(fn, "layer_scale", layer_scale, ng, NONNEG)
    cdef double lr_max = _lr_rule(fn, lrs)
    arrays = _checked_arrays(fn, sizes, params, grads,
                             (("exp_avg", exp_avg, True), ("exp_avg_sq", exp_avg_sq, True),
                              ("s", s, True)))
    cdef double bc = (1.0 - beta2 ** (kk + 1)) ** 0.5 / (1.0 - beta1 ** (kk + 1)) if bias else 1.0
    cdef double dlr = cd * lr_max * bc
    cdef double sb2 = beta2 ** 0.5
    cdef Coef* coefs = <Coef*>calloc(ng, sizeof(Coef))
    if coefs == NULL:
        raise MemoryError()
    try:
        for gi in range(ng):
            coefs[gi].decay = 0.0 if dec else wds[gi]
            coefs[gi].r = rs[gi]
            coefs[gi].num_fac = rs[gi] * dlr
            coefs[gi].m_fac = rs[gi] * dlr * (1.0 - beta1)
            coefs[gi].s_fac = dlr * (1.0 - sb2)
            coefs[gi].beta1 = beta1
            coefs[gi].beta2 = beta2
            coefs[gi].sqrt_beta2 = sb2
            coefs[gi].eps = epss[gi]
            coefs[gi].wd_fac = -wds[gi] * dlr
            coefs[gi].decoupled = dec and wds[gi] != 0.0
            coefs[gi].active = lrs[gi] > 0.0
        sums = _run(ADAM, sizes, arrays, coefs, nt, True, lambda out: out[1] == 0.0)
    finally:
        free(coefs)
    num, l1 = sums[0], sums[1]
    new_num = sb2 * cnum + (1.0 - sb2) * num
    out = {"d": cd, "numerator_weighted": cnum, "d_hat": cd, "sk_l1": l1, "k": int(kk),
           "stepped": False}
    if l1 == 0.0:
        return out
    d_hat = cd
    new_d = cd
    if lr_max > 0.0:
        d_hat = new_num / ((1.0 - sb2) * l1)
        new_d = max(cd, min(d_hat, cd * growth))
    out.update(d=new_d, numerator_weighted=new_num, d_hat=d_hat, k=int(kk) + 1, stepped=True)
    return out


def dadapt_sgd_step(params, grads, s, x0, *, group_sizes, lr, momentum=0.0, weight_decay=0.0,
                    d, numerator_weighted, g0_norm, growth_rate=math.inf, k, n_threads=None):
    """One step of DAdaptSGD (dadaptation 3.2) over every param, in place; the new estimate.

    On the first step (``k == 0``) ``g0_norm = sqrt(sum g^2)`` over the params of groups with
    ``lr > 0`` (the raw grads: the package's decay there is not in place). With ``lr`` the
    largest group lr and ``dlr = d * lr / g0_norm``, pass 1 over each param of a group with
    ``lr > 0`` (``g`` plus ``weight_decay * p``): ``num += dlr * <g, s>``, ``s += dlr g``,
    ``sq += sum s^2``. Then ``N = numerator_weighted + num``; when ``sq == 0`` nothing else
    changes; else ``d = max(d, min(2 N / sqrt(sq), d * growth_rate))`` and pass 2 over every
    param: ``p = (1 - ck) p + ck (x0 - s)`` with ``ck = 1 - momentum``.

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, the params of group 0 first.
    s, x0 : list of numpy.ndarray
        The package's ``s`` (updated) and the params' values at the first step.
    group_sizes : sequence of int
        Params per group.
    lr : sequence of float
        Per group lr multiplier (``>= 0``; the largest or 0).
    momentum : float
        In [0, 1) (shared, the package reads group 0's).
    weight_decay : float
        ``>= 0`` (shared).
    d : float
        The estimate (``> 0``).
    numerator_weighted : float
        The numerator's running sum.
    g0_norm : float
        The first grads' norm (``> 0``; ignored when ``k == 0``).
    growth_rate : float
        The largest factor ``d`` may grow by per step (``> 0``, may be inf).
    k : int
        Steps taken (``>= 0``).
    n_threads : int, optional
        Threads to use; None: :func:`fastlr.get_num_threads`.

    Returns
    -------
    dict
        ``d``, ``numerator_weighted``, ``g0_norm``, ``d_hat``, ``k`` and ``stepped`` (False,
        with the old values, when ``sq == 0``).

    Raises
    ------
    TypeError
        If an array or argument has the wrong type or dtype.
    ValueError
        If an array has the wrong shape or layout, buffers overlap, an argument is out of
        range, groups' lrs differ other than by being 0, or the first step's grads are all
        zero (or every lr is 0 there): ``g0_norm`` would be 0 (the package raises
        ZeroDivisionError).
    """
    cdef str fn = "fastlr._core.dadapt.dadapt_sgd_step"
    cdef int nt = threads_arg(fn, n_threads)
    cdef double mom = checked_real(fn, "momentum", momentum, UNIT)
    cdef double wd = checked_real(fn, "weight_decay", weight_decay, NONNEG)
    cdef double cd = checked_real(fn, "d", d, POSITIVE)
    cdef double cnum = checked_real(fn, "numerator_weighted", numerator_weighted, 0)
    cdef double growth = _growth(fn, growth_rate)
    cdef long long kk = int_arg(fn, "k", k, 0, 2 ** 62)
    cdef double g0 = 0.0 if kk == 0 else checked_real(fn, "g0_norm", g0_norm, POSITIVE)
    sizes = _groups(fn, group_sizes)
    cdef Py_ssize_t ng = len(sizes), gi
    lrs = _per_group(fn, "lr", lr, ng, NONNEG)
    cdef double lr_max = _lr_rule(fn, lrs)
    arrays = _checked_arrays(fn, sizes, params, grads, (("s", s, True), ("x0", x0, False)))
    cdef double ck = 1.0 - mom
    cdef Coef* coefs = <Coef*>calloc(ng, sizeof(Coef))
    if coefs == NULL:
        raise MemoryError()
    try:
        for gi in range(ng):
            coefs[gi].active = lrs[gi] > 0.0
        if kk == 0:
            g0 = math.sqrt(_run(GNORM, sizes, arrays, coefs, nt, False, None)[0])
            if g0 == 0.0:
                raise ValueError(f"{fn}: the first step's grads are all zero (or every lr is "
                                 f"0): DAdaptSGD divides by their norm (the package raises "
                                 f"ZeroDivisionError); nothing changed")
        dlr = cd * lr_max / g0
        for gi in range(ng):
            coefs[gi].decay = wd
            coefs[gi].num_fac = dlr
            coefs[gi].s_fac = dlr
            coefs[gi].keep = 1.0 - ck
            coefs[gi].ck = ck
        sums = _run(SGD, sizes, arrays, coefs, nt, True, lambda out: out[1] == 0.0)
    finally:
        free(coefs)
    new_num = cnum + sums[0]
    sq = sums[1]
    out = {"d": cd, "numerator_weighted": cnum, "g0_norm": g0_norm, "d_hat": cd,
           "k": int(kk), "stepped": False}
    if sq == 0.0:
        return out
    d_hat = 2.0 * new_num / math.sqrt(sq)
    new_d = max(cd, min(d_hat, cd * growth))
    out.update(d=new_d, numerator_weighted=new_num, g0_norm=g0, d_hat=d_hat, k=int(kk) + 1,
               stepped=True)
    return out


def dadapt_adagrad_step(params, grads, alphak, sk, x0, *, group_sizes, weight_decay, eps,
                        lr=1.0, momentum=0.0, d, gsq_weighted, sksq_weighted, skl1,
                        growth_rate=math.inf, k, n_threads=None):
    """One step of DAdaptAdaGrad (dadaptation 3.2, dense grads) over every param, in place;
    the new estimate.

    With ``dlr = d * lr``, pass 1 over every param (``g`` plus the group's
    ``weight_decay * p``; ``den = sqrt(alphak) + eps`` with the group's eps): the old
    ``sum sk^2 / den`` and ``sum|sk|``; ``alphak += g^2``; ``gsq += sum g^2 / den``;
    ``sk += dlr g``; the new ``sum sk^2 / den`` and ``sum|sk|``. Then ``sksq_weighted`` and
    ``skl1`` move by new - old; when ``skl1 == 0`` nothing else changes; else
    ``gsq_weighted += dlr^2 gsq``, ``d = max(d, min((sksq_weighted - gsq_weighted) / skl1,
    d * growth_rate))`` (when ``lr > 0``), and pass 2 over every param:
    ``z = x0 - sk / den``, ``p = (1 - ck) p + ck z`` with ``ck = 1 - momentum`` (``p = z``
    when ``momentum == 0``).

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, the params of group 0 first.
    alphak, sk, x0 : list of numpy.ndarray
        The package's state (``alphak``, ``sk`` updated; ``x0``: the params at the start).
    group_sizes : sequence of int
        Params per group.
    weight_decay, eps : sequence of float
        Per group (``>= 0``, ``> 0``).
    lr : float
        The lr multiplier (``>= 0``; the package reads group 0's).
    momentum : float
        ``>= 0`` (shared).
    d : float
        The estimate (``> 0``).
    gsq_weighted, sksq_weighted, skl1 : float
        The package's running sums.
    growth_rate : float
        The largest factor ``d`` may grow by per step (``> 0``, may be inf).
    k : int
        Steps taken (``>= 0``).
    n_threads : int, optional
        Threads to use; None: :func:`fastlr.get_num_threads`.

    Returns
    -------
    dict
        ``d``, ``gsq_weighted``, ``sksq_weighted``, ``skl1``, ``d_hat``, ``k`` and
        ``stepped`` (False, with the old values, when ``skl1 == 0``).

    Raises
    ------
    TypeError
        If an array or argument has the wrong type or dtype.
    ValueError
        If an array has the wrong shape or layout, buffers overlap or an argument is out of
        range.
    """
    cdef str fn = "fastlr._core.dadapt.dadapt_adagrad_step"
    cdef int nt = threads_arg(fn, n_threads)
    cdef double clr = checked_real(fn, "lr", lr, NONNEG)
    cdef double mom = checked_real(fn, "momentum", momentum, NONNEG)
    cdef double cd = checked_real(fn, "d", d, POSITIVE)
    cdef double gsq_w = checked_real(fn, "gsq_weighted", gsq_weighted, 0)
    cdef double sksq_w = checked_real(fn, "sksq_weighted", sksq_weighted, 0)
    cdef double l1 = checked_real(fn, "skl1", skl1, NONNEG)
    cdef double growth = _growth(fn, growth_rate)
    cdef long long kk = int_arg(fn, "k", k, 0, 2 ** 62)
    sizes = _groups(fn, group_sizes)
    cdef Py_ssize_t ng = len(sizes), gi
    wds = _per_group(fn, "weight_decay", weight_decay, ng, NONNEG)
    epss = _per_group(fn, "eps", eps, ng, POSITIVE)
    arrays = _checked_arrays(fn, sizes, params, grads,
                             (("alphak", alphak, True), ("sk", sk, True), ("x0", x0, False)))
    cdef double dlr = cd * clr
    cdef double ck = 1.0 - mom
    cdef Coef* coefs = <Coef*>calloc(ng, sizeof(Coef))
    if coefs == NULL:
        raise MemoryError()
    try:
        for gi in range(ng):
            coefs[gi].decay = wds[gi]
            coefs[gi].eps = epss[gi]
            coefs[gi].s_fac = dlr
            coefs[gi].keep = 1.0 - ck
            coefs[gi].ck = ck
            coefs[gi].mix = mom != 0.0
        sums = _run(ADAGRAD, sizes, arrays, coefs, nt, True,
                    lambda out: l1 + (out[4] - out[1]) == 0.0)
    finally:
        free(coefs)
    new_sksq = sksq_w + (sums[3] - sums[0])
    new_l1 = l1 + (sums[4] - sums[1])
    out = {"d": cd, "gsq_weighted": gsq_w, "sksq_weighted": sksq_w, "skl1": l1, "d_hat": cd,
           "k": int(kk), "stepped": False}
    if new_l1 == 0.0:
        return out
    new_gsq = gsq_w + dlr * dlr * sums[2]
    d_hat = cd
    new_d = cd
    if clr > 0.0:
        d_hat = (new_sksq - new_gsq) / new_l1
        new_d = max(cd, min(d_hat, cd * growth))
    out.update(d=new_d, gsq_weighted=new_gsq, sksq_weighted=new_sksq, skl1=new_l1,
               d_hat=d_hat, k=int(kk) + 1, stepped=True)
    return out
