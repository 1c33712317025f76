# fastlr/_core/lrfree.pyx -- the learning-rate-free optimizers' step: Prodigy
# (prodigyopt 1.1.2), every param of every group in one call.
#
# Design notes
# ------------
# a) What: `prodigy_step` runs one step of prodigyopt.Prodigy over all params: the Adam
#    moments, Prodigy's `s` statistic, the two global sums its step-size estimate `d` needs
#    (numerator  sum_i (d/d0_g) * dlr * <g_i[::slice_p], p0_i - p_i[::slice_p]>  and
#    denominator  sum_i sum|s_i|), the scalar update of `d`, and the param update.
# b) Passes: two per step. The estimate `d` that the update uses (through `d * eps` in the
#    denominator, and `dlr * d` without a first moment) is computed from the sums over ALL
#    params of the new `s`, so no element can be updated before every element's moments are
#    in: pass 1 = moments + s + both sums (one read of p, g, p0 and each buffer, one write of
#    each buffer), then the scalar `d` update in double, then pass 2 = the param update (one
#    read of p, the second moment and the first moment (or g), one write of p). When the
#    denominator is 0 (all grads zero) pass 2 does not run, as in prodigyopt.
# c) Sums: fixed 16K-element blocks of the concatenation of all params (the engine's
#    REDUCE_BLOCK, clip_grad_norm's scheme), element j of the concatenation adding into lane
#    j % 8 of its block in double; blocks are summed in block order. The threaded loop's
#    chunks start on block boundaries and each block is computed by exactly one thread, so the
#    sums have the same bits for any thread count. Element-wise work runs in the buffers'
#    dtype, operation by operation as prodigyopt's torch calls (mul_ then add_ with alpha,
#    addcmul_, sqrt().add_, addcdiv_), coefficients derived once per step in double.
# d) slice_p: `s` and `p0` hold every slice_p-th element of the param in C order (prodigyopt's
#    p.flatten()[::slice_p]); the loops walk memory order, so with slice_p > 1 a param of more
#    than one dimension must be C-contiguous (checked). With slice_p = 1 any contiguous
#    layout works (`s`, `p0` follow the param's memory order).
# e) Validation: everything (types, dtypes, shapes, layouts, overlap, hyperparameters, the
#    lr rule) is checked before any buffer is written; then the GIL is released (from 4096
#    elements in all). Argument directions are marked # IN / # OUT.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport fabs, sqrt, isfinite
from libc.stdlib cimport calloc, free

from fastlr._core.args cimport (CLOSED_UNIT, NONNEG, POSITIVE, UNIT, checked_real, flag_arg,
                                int_arg, ndarray_hint, threads_arg)
from fastlr._core.arrays cimport check_like, layout_name
from fastlr._kernels cimport parallel_spans

import math

import numpy as np

cnp.import_array()

cdef enum:
    BLOCK = 16384           # the reduction block (the engine's REDUCE_BLOCK)
    NOGIL_MIN_SIZE = 4096   # elements in all from which the step releases the GIL


ctypedef struct GroupCoef:
    double decay            # weight_decay
    double num_fac          # (d / d0) * dlr: the numerator's factor
    double s_fac            # (d / d0) * dlr, or (d / d0) * d with safeguard_warmup
    int active              # lr > 0: pass 1 runs (moments, s, sums)


ctypedef struct StepCoef:
    double beta1, beta2, beta3
    double m_fac            # d * (1 - beta1)
    double v_fac            # d * d * (1 - beta2)
    double eps_d            # d_new * eps (pass 2; per group: eps)
    double step_fac         # -dlr (first moment) or -dlr * d_new (none)
    double wd_fac           # -decay * dlr (decoupled decay, pass 2)
    int coupled             # weight decay added to the grad (decouple=False)
    int decoupled           # weight decay applied to the param (decouple=True)
    int has_m               # beta1 > 0


ctypedef struct Piece:
    char* p                 # IN/OUT param
    const char* g           # IN grad
    char* m                 # IN/OUT first moment (NULL when beta1 == 0)
    char* v                 # IN/OUT second moment
    char* s                 # IN/OUT s (slice_p-th elements)
    const char* p0          # IN initial param (slice_p-th elements)
    Py_ssize_t n, start, slice_p
    int f64
    const GroupCoef* gc
    const StepCoef* sc      # per group (eps)


ctypedef struct Job:
    const Piece* pieces
    Py_ssize_t n_pieces, total
    double* num             # OUT per block
    double* den             # OUT per block


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
# pass 1: moments, s, and the two sums over elements [s0, e0) of one piece
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void _dense1(floating* p, const floating* g, floating* m, floating* v, floating* s,
                         const floating* p0, Py_ssize_t j, int lane, double* ln, double* ld,
                         floating b1, floating b2, floating b3, floating mf, floating vf,
                         floating sf, floating wd, double nf, int coupled,
                         int has_m) noexcept nogil:
    """pass1_core's work on element j when slice_p == 1 (s and p0 indexed by j)."""
    cdef floating gj = g[j], si
    if coupled:
        gj = gj + wd * p[j]
    ln[lane] += nf * (<double>gj * <double>(p0[j] - p[j]))
    si = s[j] * b3 + sf * gj
    s[j] = si
    ld[lane] += fabs(<double>si)
    if has_m:
        m[j] = m[j] * b1 + mf * gj
    v[j] = v[j] * b2 + vf * gj * gj


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void pass1_core(floating* p, const floating* g, floating* m, floating* v, floating* s,
                     const floating* p0,                     # IN/OUT, IN, IN/OUT x3, IN
                     Py_ssize_t s0, Py_ssize_t e0, Py_ssize_t start, Py_ssize_t slice_p,
                     const GroupCoef* gc, const StepCoef* sc,
                     double* num, double* den) noexcept nogil:   # OUT (8 lanes each)
    cdef Py_ssize_t j, idx
    cdef floating gj, b1 = <floating>sc.beta1, b2 = <floating>sc.beta2
    cdef floating b3 = <floating>sc.beta3, mf = <floating>sc.m_fac, vf = <floating>sc.v_fac
    cdef floating sf = <floating>gc.s_fac, wd = <floating>gc.decay, si
    cdef double nf = gc.num_fac
    cdef int coupled = sc.coupled and gc.decay != 0.0, has_m = sc.has_m
    cdef double ln[8]
    cdef double ld[8]
    cdef int l
    if slice_p == 1:
        # every element is sampled: the same operations without the index division, in
        # runs of 8 aligned to the lanes (element j adds into lane (start + j) & 7), with
        # the lanes in locals so that the compiler can keep them in vector registers
        for l in range(8):
            ln[l] = num[l]
            ld[l] = den[l]
        j = s0
        while j < e0 and ((start + j) & 7) != 0:
            _dense1(p, g, m, v, s, p0, j, (start + j) & 7, ln, ld, b1, b2, b3, mf, vf, sf, wd,
                    nf, coupled, has_m)
            j += 1
        while j + 8 <= e0:
            for l in range(8):
                _dense1(p, g, m, v, s, p0, j + l, l, ln, ld, b1, b2, b3, mf, vf, sf, wd, nf,
                        coupled, has_m)
            j += 8
        while j < e0:
            _dense1(p, g, m, v, s, p0, j, (start + j) & 7, ln, ld, b1, b2, b3, mf, vf, sf, wd,
                    nf, coupled, has_m)
            j += 1
        for l in range(8):
            num[l] = ln[l]
            den[l] = ld[l]
        return
    for j in range(s0, e0):
        gj = g[j]
        if coupled:
            gj = gj + wd * p[j]
        if j % slice_p == 0:
            idx = j // slice_p
            num[(start + j) & 7] += nf * (<double>gj * <double>(p0[idx] - p[j]))
            si = s[idx] * b3 + sf * gj
            s[idx] = si
            den[(start + j) & 7] += fabs(<double>si)
        if has_m:
            m[j] = m[j] * b1 + mf * gj
        v[j] = v[j] * b2 + vf * gj * gj


cdef void pass1_block(const Job* job, Py_ssize_t lo, Py_ssize_t hi, double* num_out,
                      double* den_out) noexcept nogil:
    cdef Py_ssize_t i, s0, e0
    cdef double num[8]
    cdef double den[8]
    cdef int k
    cdef const Piece* pc
    for k in range(8):
        num[k] = 0.0
        den[k] = 0.0
    i = first_piece(job, lo)
    while i < job.n_pieces and job.pieces[i].start < hi:
        pc = &job.pieces[i]
        s0 = lo - pc.start if lo > pc.start else 0
        e0 = hi - pc.start if hi - pc.start < pc.n else pc.n
        if e0 > s0 and pc.gc.active:
            if pc.f64:
                pass1_core(<double*>pc.p, <const double*>pc.g, <double*>pc.m, <double*>pc.v,
                           <double*>pc.s, <const double*>pc.p0, s0, e0, pc.start, pc.slice_p,
                           pc.gc, pc.sc, num, den)
            else:
                pass1_core(<float*>pc.p, <const float*>pc.g, <float*>pc.m, <float*>pc.v,
                           <float*>pc.s, <const float*>pc.p0, s0, e0, pc.start, pc.slice_p,
                           pc.gc, pc.sc, num, den)
        i += 1
    num_out[0] = ((num[0] + num[1]) + (num[2] + num[3])) + ((num[4] + num[5]) + (num[6] + num[7]))
    den_out[0] = ((den[0] + den[1]) + (den[2] + den[3])) + ((den[4] + den[5]) + (den[6] + den[7]))


cdef void pass1_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The blocks that start in [lo, hi), each into its own slot (a block may reach past
    hi: every block is computed exactly once for any split of [0, total))."""
    cdef const Job* job = <const Job*>ctx
    cdef Py_ssize_t blk
    for blk in range((lo + BLOCK - 1) // BLOCK, (hi + BLOCK - 1) // BLOCK):
        pass1_block(job, blk * BLOCK, min(blk * BLOCK + BLOCK, job.total), &job.num[blk],
                    &job.den[blk])


# ---------------------------------------------------------------------------------------
# pass 2: the param update over elements [s0, e0) of one piece
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
cdef void pass2_core(floating* p, const floating* g, const floating* m,
                     const floating* v,                      # IN/OUT, IN, IN, IN
                     Py_ssize_t s0, Py_ssize_t e0, const GroupCoef* gc,
                     const StepCoef* sc) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating wdf = <floating>sc.wd_fac, epsd = <floating>sc.eps_d
    cdef floating step = <floating>sc.step_fac, wd = <floating>gc.decay, denom, pj, gj
    cdef int decoupled = sc.decoupled and gc.decay != 0.0
    cdef int coupled = sc.coupled and gc.decay != 0.0
    if sc.has_m:
        for j in range(s0, e0):
            pj = p[j]
            if decoupled:
                pj = pj + wdf * pj
            denom = sqrt(v[j]) + epsd
            p[j] = pj + step * (m[j] / denom)
    else:
        for j in range(s0, e0):
            pj = p[j]
            gj = g[j]
            if coupled:
                gj = gj + wd * pj
            if decoupled:
                pj = pj + wdf * pj
            denom = sqrt(v[j]) + epsd
            p[j] = pj + step * (gj / denom)


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
            if pc.f64:
                pass2_core(<double*>pc.p, <const double*>pc.g, <const double*>pc.m,
                           <const double*>pc.v, s0, e0, pc.gc, pc.sc)
            else:
                pass2_core(<float*>pc.p, <const float*>pc.g, <const float*>pc.m,
                           <const float*>pc.v, s0, e0, pc.gc, pc.sc)
        i += 1


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
cdef list _array_list(str fn, str name, object arrays, Py_ssize_t n, bint optional):
    if optional and arrays is None:
        return [None] * n
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


cdef _check_sliced(str fn, str label, cnp.ndarray a, cnp.ndarray param, str pname,
                   Py_ssize_t slice_p, bint written):
    _check_array(fn, label, a, written)
    cdef Py_ssize_t want = (cnp.PyArray_SIZE(param) + slice_p - 1) // slice_p
    if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(param):
        raise TypeError(f"{fn}: {label} has dtype {a.dtype} but {pname} has dtype "
                        f"{param.dtype}; they must be equal")
    if cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_SIZE(a) != want:
        raise ValueError(f"{fn}: {label} must be a flat array of {want} elements (every "
                         f"{slice_p}-th element of {pname}), got shape {(<object>a).shape}")


def prodigy_step(params, grads, exp_avg, exp_avg_sq, s, p0, *, group_sizes, lr,
                 weight_decay, eps, d0, safeguard_warmup, slice_p, betas=(0.9, 0.999),
                 beta3=None, d, d_max, d_numerator, d_coef=1.0, growth_rate=math.inf,
                 decouple=True, use_bias_correction=False, k, n_threads=None):
    """One step of Prodigy (prodigyopt 1.1.2) over every param, in place; the new estimate.

    With ``dlr = d * lr * bc`` (``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with
    ``use_bias_correction``, else 1; ``lr``: the largest group lr, a unitless multiplier),
    pass 1 over each param of a group with ``lr > 0`` (``g`` plus ``weight_decay * p`` when
    ``decouple`` is False; ``s``, ``p0``: every ``slice_p``-th element):

    - ``num += (d / d0) * dlr * <g, p0 - p>``;
    - ``m = beta1 m + d (1 - beta1) g``, ``v = beta2 v + d^2 (1 - beta2) g^2``;
    - ``s = beta3 s + (d / d0) * dlr * g`` (``(d / d0) * d * g`` with ``safeguard_warmup``);
      ``den += sum|s|``.

    Then ``D = beta3 * d_numerator + num``, ``d_hat = d_coef * D / den``; if ``d`` equals
    the last group's ``d0``: ``d = max(d, d_hat)``; ``d_max = max(d_max, d_hat)``,
    ``d = min(d_max, d * growth_rate)``. Pass 2: ``p -= weight_decay * dlr * p`` when
    ``decouple``; ``p -= dlr * m / (sqrt(v) + d * eps)`` (without a first moment,
    ``beta1 = 0``: ``p -= dlr * d * g / (sqrt(v) + d * eps)``). When ``den == 0`` (zero
    grads) pass 2 is skipped and nothing but the buffers of pass 1 changes.

    Parameters
    ----------
    params, grads : list of numpy.ndarray
        The params (updated in place) and their grads, float32 or float64, contiguous, the
        params of group 0 first.
    exp_avg : list of numpy.ndarray or None
        First moments like the params (None when ``beta1 == 0``).
    exp_avg_sq : list of numpy.ndarray
        Second moments like the params.
    s, p0 : list of numpy.ndarray
        Flat arrays of ``ceil(size / slice_p)`` elements: Prodigy's ``s`` (updated) and the
        params' initial values.
    group_sizes : sequence of int
        Params per group.
    lr, weight_decay, eps, d0, safeguard_warmup, slice_p : sequence
        Per group: the lr multiplier (``>= 0``; each group's must be the largest or 0, as in
        prodigyopt), weight decay (``>= 0``), eps (``> 0``), d0 (``> 0``), the flag and
        the subsampling stride (``>= 1``).
    betas : (float, float)
        ``beta1``, ``beta2`` in [0, 1).
    beta3 : float or None
        The ``s`` and numerator decay in [0, 1]; None: ``sqrt(beta2)``.
    d, d_max, d_numerator : float
        The estimate, its running maximum (``> 0``) and the numerator (finite).
    d_coef : float
        Factor of ``d_hat`` (``> 0``).
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
        ``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k`` (the new values;
        the old ones when ``stepped`` is False) and ``stepped`` (False when the
        denominator was 0).

    Raises
    ------
    TypeError
        If an array or argument has the wrong type or dtype.
    ValueError
        If an array has the wrong shape or layout, buffers overlap, an argument is out of
        range, or groups' lrs differ other than by being 0.
    """
    cdef str fn = "fastlr._core.lrfree.prodigy_step"
    cdef Py_ssize_t n, i, gi, ng, total = 0, n_blocks, sp
    cdef cnp.ndarray pa, a
    cdef Piece* pieces = NULL
    cdef GroupCoef* gcs = NULL
    cdef StepCoef* scs = NULL
    cdef double* num = NULL
    cdef double* den = NULL
    cdef Job job
    cdef double numer = 0.0, denom = 0.0
    cdef int nt = threads_arg(fn, n_threads)
    # ---- scalars ----
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}")
    cdef double beta1 = checked_real(fn, "betas[0]", betas[0], UNIT)
    cdef double beta2 = checked_real(fn, "betas[1]", betas[1], UNIT)
    cdef double b3 = math.sqrt(beta2) if beta3 is None else \
        checked_real(fn, "beta3", beta3, CLOSED_UNIT)
    cdef double cd = checked_real(fn, "d", d, POSITIVE)
    cdef double cd_max = checked_real(fn, "d_max", d_max, POSITIVE)
    cdef double cnum = checked_real(fn, "d_numerator", d_numerator, 0)
    cdef double coef = checked_real(fn, "d_coef", d_coef, POSITIVE)
    cdef double growth
    if isinstance(growth_rate, float) and growth_rate == math.inf:
        growth = math.inf           # prodigyopt's default: unrestricted
    else:
        growth = checked_real(fn, "growth_rate", growth_rate, POSITIVE)
    cdef bint dec = flag_arg(fn, "decouple", decouple)
    cdef bint bias = flag_arg(fn, "use_bias_correction", use_bias_correction)
    cdef long long kk = int_arg(fn, "k", k, 0, 2 ** 62)
    # ---- groups ----
    if not isinstance(group_sizes, (list, tuple)) or not group_sizes:
        raise TypeError(f"{fn}: group_sizes must be a non-empty list of ints")
    ng = len(group_sizes)
    sizes = [int_arg(fn, f"group_sizes[{g}]", v, 0, 2 ** 62) for g, v in enumerate(group_sizes)]
    per = {}
    for key, val in (("lr", lr), ("weight_decay", weight_decay), ("eps", eps), ("d0", d0),
                     ("safeguard_warmup", safeguard_warmup), ("slice_p", slice_p)):
        if not isinstance(val, (list, tuple)) or len(val) != ng:
            raise ValueError(f"{fn}: {key} must be a list of {ng} values (one per group), got "
                             f"{val!r:.100}")
        per[key] = val
    lrs = [checked_real(fn, f"lr[{g}]", v, NONNEG) for g, v in enumerate(per["lr"])]
    wds = [checked_real(fn, f"weight_decay[{g}]", v, NONNEG)
           for g, v in enumerate(per["weight_decay"])]
    epss = [checked_real(fn, f"eps[{g}]", v, POSITIVE) for g, v in enumerate(per["eps"])]
    d0s = [checked_real(fn, f"d0[{g}]", v, POSITIVE) for g, v in enumerate(per["d0"])]
    safes = [flag_arg(fn, f"safeguard_warmup[{g}]", v)
             for g, v in enumerate(per["safeguard_warmup"])]
    slices = [int_arg(fn, f"slice_p[{g}]", v, 1, 2 ** 62) for g, v in enumerate(per["slice_p"])]
    cdef double lr_max = max(lrs)
    for g, v in enumerate(lrs):
        if v != lr_max and v != 0.0:
            raise ValueError(f"{fn}: lr[{g}] is {v!r} but the largest group lr is {lr_max!r}; "
                             f"Prodigy's groups share one lr, or have lr 0")
    # ---- arrays ----
    n = sum(sizes)
    ps = _array_list(fn, "params", params, n, False)
    gs = _array_list(fn, "grads", grads, n, False)
    ms = _array_list(fn, "exp_avg", exp_avg, n, True)
    vs = _array_list(fn, "exp_avg_sq", exp_avg_sq, n, False)
    ss = _array_list(fn, "s", s, n, False)
    p0s = _array_list(fn, "p0", p0, n, False)
    if beta1 > 0 and exp_avg is None:
        raise ValueError(f"{fn}: exp_avg is None but betas[0] is {beta1!r} > 0 (a first "
                         f"moment is needed)")
    group_of = []
    for gi in range(ng):
        group_of.extend([gi] * sizes[gi])
    spans = []
    for i in range(n):
        pa = <cnp.ndarray>ps[i]
        _check_array(fn, f"params[{i}]", pa, True)
        check_like(fn, f"grads[{i}]", <cnp.ndarray>gs[i], f"params[{i}]", pa, False)
        _check_array(fn, f"grads[{i}]", <cnp.ndarray>gs[i], False)
        if ms[i] is not None:
            check_like(fn, f"exp_avg[{i}]", <cnp.ndarray>ms[i], f"params[{i}]", pa, True)
            _check_array(fn, f"exp_avg[{i}]", <cnp.ndarray>ms[i], True)
        check_like(fn, f"exp_avg_sq[{i}]", <cnp.ndarray>vs[i], f"params[{i}]", pa, True)
        _check_array(fn, f"exp_avg_sq[{i}]", <cnp.ndarray>vs[i], True)
        sp = slices[group_of[i]]
        if sp > 1 and cnp.PyArray_NDIM(pa) > 1 and not cnp.PyArray_IS_C_CONTIGUOUS(pa):
            raise ValueError(f"{fn}: params[{i}] is {layout_name(pa)} but slice_p > 1 needs a "
                             f"C-contiguous param (s and p0 hold every {sp}-th element in C "
                             f"order)")
        _check_sliced(fn, f"s[{i}]", <cnp.ndarray>ss[i], pa, f"params[{i}]", sp, True)
        _check_sliced(fn, f"p0[{i}]", <cnp.ndarray>p0s[i], pa, f"params[{i}]", sp, False)
        for label, arr in ((f"params[{i}]", ps[i]), (f"grads[{i}]", gs[i]),
                           (f"exp_avg[{i}]", ms[i]), (f"exp_avg_sq[{i}]", vs[i]),
                           (f"s[{i}]", ss[i]), (f"p0[{i}]", p0s[i])):
            if arr is not None and (<cnp.ndarray>arr).nbytes:
                spans.append((<Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>arr),
                              cnp.PyArray_NBYTES(<cnp.ndarray>arr), label))
    spans.sort()
    for (lo_a, n_a, l_a), (lo_b, n_b, l_b) in zip(spans, spans[1:]):
        if lo_b < lo_a + n_a:
            raise ValueError(f"{fn}: {l_a} and {l_b} overlap in memory (every buffer must be "
                             f"its own)")
    # ---- coefficients (in double, once per step) ----
    cdef double bc = (1.0 - beta2 ** (kk + 1)) ** 0.5 / (1.0 - beta1 ** (kk + 1)) if bias else 1.0
    cdef double dlr = cd * lr_max * bc
    try:
        pieces = <Piece*>calloc(max(n, 1), sizeof(Piece))
        gcs = <GroupCoef*>calloc(ng, sizeof(GroupCoef))
        scs = <StepCoef*>calloc(ng, sizeof(StepCoef))
        for i in range(n):
            total += cnp.PyArray_SIZE(<cnp.ndarray>ps[i])
        n_blocks = max(1, (total + BLOCK - 1) // BLOCK)
        num = <double*>calloc(n_blocks, sizeof(double))
        den = <double*>calloc(n_blocks, sizeof(double))
        if pieces == NULL or gcs == NULL or scs == NULL or num == NULL or den == NULL:
            raise MemoryError()
        for gi in range(ng):
            gcs[gi].decay = wds[gi]
            gcs[gi].num_fac = (cd / d0s[gi]) * dlr
            gcs[gi].s_fac = (cd / d0s[gi]) * cd if safes[gi] else (cd / d0s[gi]) * dlr
            gcs[gi].active = lrs[gi] > 0.0
            scs[gi].beta1 = beta1
            scs[gi].beta2 = beta2
            scs[gi].beta3 = b3
            scs[gi].m_fac = cd * (1.0 - beta1)
            scs[gi].v_fac = cd * cd * (1.0 - beta2)
            scs[gi].coupled = not dec
            scs[gi].decoupled = dec
            scs[gi].has_m = beta1 > 0
            scs[gi].wd_fac = -wds[gi] * dlr
        total = 0
        for i in range(n):
            a = <cnp.ndarray>ps[i]
            gi = group_of[i]
            pieces[i].p = <char*>cnp.PyArray_DATA(a)
            pieces[i].g = <const char*>cnp.PyArray_DATA(<cnp.ndarray>gs[i])
            pieces[i].m = NULL if ms[i] is None else <char*>cnp.PyArray_DATA(<cnp.ndarray>ms[i])
            pieces[i].v = <char*>cnp.PyArray_DATA(<cnp.ndarray>vs[i])
            pieces[i].s = <char*>cnp.PyArray_DATA(<cnp.ndarray>ss[i])
            pieces[i].p0 = <const char*>cnp.PyArray_DATA(<cnp.ndarray>p0s[i])
            pieces[i].n = cnp.PyArray_SIZE(a)
            pieces[i].start = total
            pieces[i].slice_p = slices[gi]
            pieces[i].f64 = cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
            pieces[i].gc = &gcs[gi]
            pieces[i].sc = &scs[gi]
            total += pieces[i].n
        job.pieces = pieces
        job.n_pieces = n
        job.total = total
        job.num = num
        job.den = den
        # pass 1
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                parallel_spans(pass1_span, &job, total, nt)
        elif total:
            pass1_span(&job, 0, total)
        for i in range((total + BLOCK - 1) // BLOCK):     # in block order: any split, same bits
            numer = numer + num[i]
            denom = denom + den[i]
        out = {"d": cd, "d_max": cd_max, "d_numerator": cnum, "d_denom": denom, "d_hat": cd,
               "k": int(kk), "stepped": False}
        if denom == 0.0:
            return out
        # the estimate (lr_max > 0 here: some group ran pass 1)
        global_num = cnum * b3 + numer
        d_hat = coef * global_num / denom
        new_d = cd
        if cd == d0s[ng - 1]:
            new_d = max(cd, d_hat)
        new_max = max(cd_max, d_hat)
        new_d = min(new_max, new_d * growth)
        for gi in range(ng):
            scs[gi].eps_d = new_d * epss[gi]
            scs[gi].step_fac = -dlr if beta1 > 0 else -dlr * new_d
        # pass 2
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                parallel_spans(pass2_span, &job, total, nt)
        else:
            pass2_span(&job, 0, total)
        out.update(d=new_d, d_max=new_max, d_numerator=global_num, d_hat=d_hat, k=int(kk) + 1,
                   stepped=True)
        return out
    finally:
        free(pieces)
        free(gcs)
        free(scs)
        free(num)
        free(den)
