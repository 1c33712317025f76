# fastlr/_core/adafactor.pyx -- Adafactor (torch.optim.Adafactor 2.13, its single-tensor
# path): the per-param kernels, in C, and the validated Python kernel.
#
# Design notes
# ------------
# a) Why not a row of the table. The table's families are element-wise: every buffer has
#    the param's shape and one pass updates each element from its own values. Adafactor is
#    not: for a param of >= 2 dims its second moment is factored into a row statistic
#    (shape ``(..., m, 1)``) and a column statistic (``(..., 1, n)``), reduced from the
#    whole gradient, and the step needs two more reductions (the param's RMS, the update's
#    RMS). So it has its own module, as fastlr.LBFGS does; the class is
#    fastlr.optim.adafactor.Adafactor.
# b) Memory. The state of an m x n param (leading dims are a batch) is m + n values, not
#    m * n: the update is never materialised. The factored kernel makes one pass over the
#    param (its RMS) and three over the grad (row and column sums of g^2; the update's
#    squared norm; the update applied), recomputing the update element by element in the
#    last two (the same expression, so the same bits); its scratch is one double per state
#    value (the sums), allocated per call before the GIL is released.
# c) Speed. Every reduction sums into 8 double lanes (`_lanes`, element j of a row into lane
#    j % 8, the lanes added pairwise at the end): a single accumulator is a serial chain that
#    no compiler may vectorize without reassociating (and we never pass -ffast-math), so the
#    lanes are what lets the sqrt/divide-bound passes run in SIMD registers. C-ordered
#    params go row by row (contiguous j); F-ordered ones through `_walk_f` in memory order.
# d) Arithmetic, torch's operation order in the param's dtype T: with w = step**beta2_decay,
#    rho = min(lr, 1/step**0.5), alpha = max(eps2, RMS(param)) * rho (RMS before the weight
#    decay; sqrt(sum p^2) rounded to T, as torch's norm().item());
#        row = lerp(row, T(T(sqrt(sum_j g^2))^2) / n, w)     (torch's norm().square_().div_(n))
#        col = lerp(col, T(T(sqrt(sum_i g^2))^2) / m, w)
#        rbar = max(mean_i row, eps1)                        (per batch entry)
#        u = g * rsqrt(max(T(row * col) / rbar, eps1^2))     (vectors: max(variance, eps1^2),
#                                                             variance = lerp(variance, g*g, w))
#        p = p * T(1 - lr * weight_decay)                    (only when weight_decay != 0)
#        p = p + T(-alpha / max(1, RMS(u) / d)) * u
#    The sums are accumulated in double (torch accumulates in its own order), so results
#    agree with torch to rounding, not bit for bit; lerp is torch's two-branch lerp.
#    maximize negates the grad, which only flips u's sign: it is folded into the factor.
# e) Layout. C- and F-contiguous params; the state has the param's layout, so for both the
#    flat index of element (b, i, j) of param, row and col is (b*m + i)*n + j, b*m + i,
#    b*n + j (C) or b + B*(i + m*j), b + B*i, b + B*j (F, b the F-order batch index), and
#    the loops walk memory in order in both.
# f) Validation. `adafactor` checks every argument (types, dtypes, shapes, layouts,
#    overlap, hyperparameter ranges) before any buffer is touched, with the messages of
#    fastlr._core.args. `_apply` is the unchecked entry the optimizer class uses after
#    validating at construction and per step; it never sees an unchecked array.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport pow, sqrt, sqrtf
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free

from fastlr._core.args cimport (FINITE, NONNEG, checked_real, flag_arg, layout_hint,
                                ndarray_hint, step_arg)
from fastlr._core.arrays cimport layout_name
from fastlr._core.loops cimport lerp

import numpy as np

cnp.import_array()

__all__ = ["adafactor", "state_shapes"]

cdef enum:
    # The GIL is released for params at least this long (as in _kernels).
    NOGIL_MIN_SIZE = 4096


ctypedef struct Coef:
    double step             # the 1-based update number, as a double (torch's step.item())
    double lr, beta2_decay, eps1, eps2, d, weight_decay
    bint maximize


# ---------------------------------------------------------------------------------------
# C level
# ---------------------------------------------------------------------------------------
# Reductions sum into LANES independent double accumulators (element k into lane k % LANES
# within a row), added pairwise at the end: without reassociation (never -ffast-math) a
# single accumulator is one serial chain of adds that no compiler may vectorize; eight
# lanes let the loops run in SIMD registers, with the same bits on every build.
cdef enum:
    LANES = 8


cdef inline double _sum_lanes(const double* acc) noexcept nogil:
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline floating _sqrt(floating x) noexcept nogil:
    # correctly rounded in both dtypes (sqrtf for float: no trip through double)
    if floating is float:
        return sqrtf(x)
    return sqrt(x)


cdef inline floating _u(floating g, floating v, floating eps1sq) noexcept nogil:
    # torch: var.clamp_(min=eps1*eps1).rsqrt_().mul_(grad); NaN propagates through clamp
    if v < eps1sq:
        v = eps1sq
    return (<floating>1 / _sqrt(v)) * g


cdef inline double _alpha(const floating* p, Py_ssize_t size, const Coef* c) noexcept nogil:
    # torch: rho = min(lr, 1 / step ** 0.5); RMS = param.norm(2).item() / numel ** 0.5;
    # alpha = max(eps2, RMS) * rho
    cdef double rho_max = 1.0 / pow(c.step, 0.5)
    cdef double rho = rho_max if rho_max < c.lr else c.lr
    cdef double ss = _lanes(SQ, p, NULL, NULL, NULL, 0, 1, 0, 0, 0, False, size)
    cdef double rms = <double><floating>sqrt(ss) / pow(<double>size, 0.5)
    return (rms if rms > c.eps2 else c.eps2) * rho


cdef inline floating _coef(const floating* p, double alpha, double su, Py_ssize_t size,
                           const Coef* c) noexcept nogil:
    # torch: param.add_(update, alpha=-alpha / max(1, RMS(u) / d)), the factor in T; the
    # sign also carries maximize (u of -grad is -u of grad, exactly). (p: for the dtype)
    cdef double ratio = <double><floating>sqrt(su) / (pow(<double>size, 0.5) * c.d)
    cdef double coef = -alpha / (ratio if ratio > 1.0 else 1.0)
    return <floating>(-coef if c.maximize else coef)


# -- sums over n contiguous elements, in lanes --------------------------------------------
cdef enum Term:
    SQ = 0          # g_j^2
    SQ_COLS = 1     # g_j^2, also added to cs[j] (the column sums)
    U_SQ = 2        # u_j^2 of a row of a matrix: u_j = g_j / sqrt(max(r col_j / rbar, eps1^2))
    U_SQ_VAR = 3    # u_j^2 of a vector, after var_j = lerp(var_j, g_j^2, w)


cdef inline double _term(int what, const floating* g, floating* var, double* cs,
                         const floating* col, floating r, floating rbar, floating eps1sq,
                         floating wt, floating wm1, bint small, Py_ssize_t j) noexcept nogil:
    cdef floating u
    cdef double g2
    if what == U_SQ:
        u = _u(g[j], <floating>(r * col[j]) / rbar, eps1sq)
        return <double>u * <double>u
    if what == U_SQ_VAR:
        var[j] = lerp(var[j], g[j] * g[j], wt, wm1, small)
        u = _u(g[j], var[j], eps1sq)
        return <double>u * <double>u
    g2 = <double>g[j] * <double>g[j]
    if what == SQ_COLS:
        cs[j] += g2
    return g2


cdef inline double _lanes(int what, const floating* g, floating* var, double* cs,  # IN, IN/OUT, IN/OUT
                          const floating* col, floating r, floating rbar,          # IN
                          floating eps1sq, floating wt, floating wm1, bint small,
                          Py_ssize_t n) noexcept nogil:
    """sum_j term_j over j < n (``what``: a Term), in double, in lanes; ``what`` is a
    constant at every call, so each inlined copy keeps only its own term."""
    cdef double acc[LANES]
    cdef Py_ssize_t j, l, blk, full = n - n % LANES
    for l in range(LANES):
        acc[l] = 0.0
    for blk in range(full // LANES):
        j = blk * LANES
        for l in range(LANES):
            acc[l] += _term(what, g, var, cs, col, r, rbar, eps1sq, wt, wm1, small, j + l)
    for j in range(full, n):
        acc[0] += _term(what, g, var, cs, col, r, rbar, eps1sq, wt, wm1, small, j)
    return _sum_lanes(acc)


cdef inline void _apply_row(floating* p, const floating* g, const floating* col,  # OUT, IN, IN
                            floating r, floating rbar, floating eps1sq, floating coef,
                            floating decay, bint wd, Py_ssize_t n) noexcept nogil:
    """p_j = p_j * decay + coef * u_j (torch's mul_ then add_, each rounded)."""
    cdef Py_ssize_t j
    if wd:
        for j in range(n):
            p[j] = p[j] * decay + coef * _u(g[j], <floating>(r * col[j]) / rbar, eps1sq)
    else:
        for j in range(n):
            p[j] = p[j] + coef * _u(g[j], <floating>(r * col[j]) / rbar, eps1sq)


# -- F order: the batch index b runs fastest ---------------------------------------------
cdef inline double _walk_f(int what, floating* p, const floating* grad,  # IN/OUT, IN
                           const floating* row, const floating* col,     # IN
                           const floating* rbar, double* rs, double* cs,  # IN, OUT, OUT
                           Py_ssize_t B, Py_ssize_t m, Py_ssize_t n, floating eps1sq,
                           floating coef, floating decay, bint wd) noexcept nogil:
    """One pass over an F-ordered param in memory order (j, i, b): the sums of g^2
    (what 0), the update's squared norm (1, returned) or the update (2)."""
    cdef double su = 0.0
    cdef floating g, u
    cdef double g2
    cdef Py_ssize_t b, i, j, k
    for j in range(n):
        for i in range(m):
            k = B * (i + m * j)
            for b in range(B):
                g = grad[k + b]
                if what == 0:
                    g2 = <double>g * <double>g
                    rs[b + B * i] += g2
                    cs[b + B * j] += g2
                    continue
                u = _u(g, <floating>(row[b + B * i] * col[b + B * j]) / rbar[b], eps1sq)
                if what == 1:
                    su += <double>u * <double>u
                elif wd:
                    p[k + b] = p[k + b] * decay + coef * u
                else:
                    p[k + b] = p[k + b] + coef * u
    return su


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void adafactor_vector(floating* p, const floating* grad, floating* var,  # IN/OUT, IN, IN/OUT
                           Py_ssize_t size, const Coef* c) noexcept nogil:
    """A param of 0 or 1 dims (any size): the unfactored second moment ``var``."""
    if size == 0:
        return
    cdef double alpha = _alpha(p, size, c)
    cdef floating wt = <floating>pow(c.step, c.beta2_decay)
    cdef floating wm1 = -(<floating>1 - wt)
    cdef bint small = wt < <floating>0.5
    cdef floating eps1sq = <floating>(c.eps1 * c.eps1)
    cdef floating decay = <floating>(1.0 - c.lr * c.weight_decay)
    cdef floating coef
    cdef double su
    cdef Py_ssize_t k
    # 1. the variance, and the update's squared norm
    su = _lanes(U_SQ_VAR, grad, var, NULL, NULL, 0, 1, eps1sq, wt, wm1, small, size)
    coef = _coef(p, alpha, su, size, c)
    # 2. the weight decay and the update
    if c.weight_decay != 0.0:
        for k in range(size):
            p[k] = p[k] * decay + coef * _u(grad[k], var[k], eps1sq)
    else:
        for k in range(size):
            p[k] = p[k] + coef * _u(grad[k], var[k], eps1sq)


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void adafactor_factored(floating* p, const floating* grad,              # IN/OUT, IN
                             floating* row, floating* col,                   # IN/OUT, IN/OUT
                             Py_ssize_t B, Py_ssize_t m, Py_ssize_t n, bint fortran,
                             double* scratch,    # B*m + B*n + 2*B doubles, zeroed
                             const Coef* c) noexcept nogil:
    """A param of >= 2 dims, as B matrices m x n (C or F order): the factored second
    moment ``row`` (B*m values) and ``col`` (B*n)."""
    cdef Py_ssize_t size = B * m * n
    if size == 0:
        return
    cdef double alpha = _alpha(p, size, c)
    cdef floating wt = <floating>pow(c.step, c.beta2_decay)
    cdef floating wm1 = -(<floating>1 - wt)
    cdef bint small = wt < <floating>0.5
    cdef floating eps1 = <floating>c.eps1, eps1sq = <floating>(c.eps1 * c.eps1)
    cdef floating decay = <floating>(1.0 - c.lr * c.weight_decay)
    cdef bint wd = c.weight_decay != 0.0
    cdef double* rs = scratch
    cdef double* cs = scratch + B * m
    cdef double* rsum = scratch + B * m + B * n
    cdef floating* rbar = <floating*>(rsum + B)     # one T per batch entry
    cdef floating nrm, mean, coef
    cdef double su = 0.0
    cdef Py_ssize_t k, b, i
    # 1. the row and column sums of g^2
    if not fortran:
        for b in range(B):
            for i in range(m):
                rs[b * m + i] = _lanes(SQ_COLS, grad + (b * m + i) * n, NULL, cs + b * n,
                                       NULL, 0, 1, 0, 0, 0, False, n)
    else:
        _walk_f(0, p, grad, row, col, rbar, rs, cs, B, m, n, eps1sq, 0, decay, wd)
    # 2. the statistics: lerp towards the means of g^2 (torch: norm, squared, / length)
    for k in range(B * m):
        nrm = <floating>sqrt(rs[k])
        row[k] = lerp(row[k], (nrm * nrm) / <floating>n, wt, wm1, small)
    for k in range(B * n):
        nrm = <floating>sqrt(cs[k])
        col[k] = lerp(col[k], (nrm * nrm) / <floating>m, wt, wm1, small)
    # 3. per batch entry: the row statistic's mean, clamped at eps1
    for i in range(m):
        for b in range(B):
            rsum[b] += <double>(row[(b * m + i) if not fortran else (b + B * i)])
    for b in range(B):
        mean = <floating>rsum[b] / <floating>m
        rbar[b] = eps1 if mean < eps1 else mean
    # 4. the update's squared norm; 5. the weight decay and the update
    if not fortran:
        for b in range(B):
            for i in range(m):
                su += _lanes(U_SQ, grad + (b * m + i) * n, NULL, NULL, col + b * n,
                             row[b * m + i], rbar[b], eps1sq, 0, 0, False, n)
        coef = _coef(p, alpha, su, size, c)
        for b in range(B):
            for i in range(m):
                _apply_row(p + (b * m + i) * n, grad + (b * m + i) * n, col + b * n,
                           row[b * m + i], rbar[b], eps1sq, coef, decay, wd, n)
    else:
        su = _walk_f(1, p, grad, row, col, rbar, rs, cs, B, m, n, eps1sq, 0, decay, wd)
        coef = _coef(p, alpha, su, size, c)
        _walk_f(2, p, grad, row, col, rbar, rs, cs, B, m, n, eps1sq, coef, decay, wd)


# ---------------------------------------------------------------------------------------
# Python level
# ---------------------------------------------------------------------------------------
cdef inline bint _fortran(cnp.ndarray a) noexcept:
    return not cnp.PyArray_IS_C_CONTIGUOUS(a)


def state_shapes(shape):
    """The state's shapes for a param of ``shape``: ``{"row_var": ..., "col_var": ...}``
    for >= 2 dims, else ``{"variance": shape}`` (torch's names and shapes)."""
    shape = tuple(shape)
    if len(shape) > 1:
        k = len(shape)
        return {"row_var": shape[:k - 1] + (1,), "col_var": shape[:k - 2] + (1, shape[k - 1])}
    return {"variance": shape}


cdef void _dispatch(bint f32, void* p, const void* g, void* a, void* b,
                    Py_ssize_t size, Py_ssize_t B, Py_ssize_t m, Py_ssize_t n,
                    bint fortran, double* scratch, const Coef* c) noexcept nogil:
    """The kernel of the dtype: the vector one when ``scratch`` is NULL (``a`` the
    variance), else the factored one (``a``, ``b`` the row and column statistics)."""
    if scratch == NULL:
        if f32:
            adafactor_vector(<float*>p, <const float*>g, <float*>a, size, c)
        else:
            adafactor_vector(<double*>p, <const double*>g, <double*>a, size, c)
    elif f32:
        adafactor_factored(<float*>p, <const float*>g, <float*>a, <float*>b, B, m, n,
                           fortran, scratch, c)
    else:
        adafactor_factored(<double*>p, <const double*>g, <double*>a, <double*>b, B, m, n,
                           fortran, scratch, c)


cdef object _run(cnp.ndarray param, cnp.ndarray grad, object row_var, object col_var,
                 object variance, Coef* c):
    """The kernel on checked arrays (the state that the param's dims select)."""
    cdef Py_ssize_t size = cnp.PyArray_SIZE(param)
    cdef int nd = cnp.PyArray_NDIM(param)
    cdef Py_ssize_t m = 1, n = size, B = 1
    cdef bint fortran = _fortran(param)
    cdef bint f32 = cnp.PyArray_TYPE(param) == cnp.NPY_FLOAT32
    cdef double* scratch = NULL
    cdef void* a
    cdef void* b = NULL
    cdef void* p = cnp.PyArray_DATA(param)
    cdef const void* g = cnp.PyArray_DATA(grad)
    if size == 0:
        return None
    if nd <= 1:
        a = cnp.PyArray_DATA(<cnp.ndarray>variance)
    else:
        m = cnp.PyArray_DIM(param, nd - 2)
        n = cnp.PyArray_DIM(param, nd - 1)
        B = size // (m * n)
        a = cnp.PyArray_DATA(<cnp.ndarray>row_var)
        b = cnp.PyArray_DATA(<cnp.ndarray>col_var)
        scratch = <double*>calloc(<size_t>(B * m + B * n + 2 * B), sizeof(double))
        if scratch == NULL:
            raise MemoryError("fastlr Adafactor: no memory for the row and column sums")
    if size >= NOGIL_MIN_SIZE:
        with nogil:
            _dispatch(f32, p, g, a, b, size, B, m, n, fortran, scratch, c)
    else:
        _dispatch(f32, p, g, a, b, size, B, m, n, fortran, scratch, c)
    free(scratch)
    return None


def _apply(cnp.ndarray param, cnp.ndarray grad, object row_var, object col_var,
           object variance, int64_t step, double lr, double beta2_decay, double eps1,
           double eps2, double d, double weight_decay, bint maximize):
    """Unchecked: for fastlr.optim.adafactor.Adafactor, whose construction and step have
    checked every array and value (``eps1`` resolved, never None)."""
    cdef Coef c
    c.step = <double>step
    c.lr = lr
    c.beta2_decay = beta2_decay
    c.eps1 = eps1
    c.eps2 = eps2
    c.d = d
    c.weight_decay = weight_decay
    c.maximize = maximize
    _run(param, grad, row_var, col_var, variance, &c)


cdef str _FN = "fastlr.kernels.adafactor"     # also fastlr.optim.adafactor.adafactor


cdef cnp.ndarray _array(str name, object a, bint written):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{_FN}: {name} must be a numpy.ndarray, got "
                        f"{type(a).__name__}{ndarray_hint(a)}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64) or \
            not arr.dtype.isnative:
        raise TypeError(f"{_FN}: {name} must have dtype float32 or float64 (native byte "
                        f"order), got {arr.dtype}")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) or cnp.PyArray_IS_F_CONTIGUOUS(arr)):
        raise ValueError(f"{_FN}: {name} must be contiguous (C or F order), got strides "
                         f"{a.strides}{layout_hint(name, False, written)}")
    if written and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{_FN}: {name} is read-only but is updated in place")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{_FN}: {name} is not aligned in memory")
    return arr


def check_state(str fn, str pname, cnp.ndarray param, str name, object a, tuple shape):
    """A state buffer of ``param``: an array of its dtype, of ``shape``, in its layout
    (C unless the param is only F-contiguous), writeable and aligned."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, got "
                        f"{type(a).__name__}{ndarray_hint(a)}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.PyArray_TYPE(param) or not arr.dtype.isnative:
        raise TypeError(f"{fn}: {name} has dtype {arr.dtype} but {pname} has dtype "
                        f"{param.dtype}; they must be equal (float32 or float64)")
    if tuple(a.shape) != shape:
        raise ValueError(f"{fn}: {name} must have shape {shape} for {pname} of shape "
                         f"{(<object>param).shape}, got {tuple(a.shape)}")
    if not (cnp.PyArray_IS_F_CONTIGUOUS(arr) if _fortran(param)
            else cnp.PyArray_IS_C_CONTIGUOUS(arr)):
        raise ValueError(f"{fn}: {name} is {layout_name(arr)} but {pname} is "
                         f"{layout_name(param)}; the state must have the param's layout"
                         f"{layout_hint(name, _fortran(param), True)}")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{fn}: {name} is read-only but is updated in place")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{fn}: {name} is not aligned in memory")
    return arr


def check_hypers(str fn, str where, lr, beta2_decay, eps1, eps2, d, weight_decay,
                 maximize, tuple eps_names=("eps1", "eps2")):
    """torch.optim.Adafactor's checks with fastlr's messages (``where`` prefixes each
    name, ``eps_names`` names the two epsilons); returns the values as
    ``(lr, beta2_decay, eps1 or None, eps2, d, weight_decay, maximize)``."""
    out_lr = checked_real(fn, f"{where}lr", lr, NONNEG)
    out_b2 = checked_real(fn, f"{where}beta2_decay", beta2_decay, FINITE)
    if out_b2 > 0.0:
        raise ValueError(f"{fn}: {where}beta2_decay must be <= 0, got {beta2_decay!r}")
    out_eps1 = None if eps1 is None else checked_real(fn, f"{where}{eps_names[0]}", eps1,
                                                      NONNEG)
    out_eps2 = checked_real(fn, f"{where}{eps_names[1]}", eps2, NONNEG)
    out_d = checked_real(fn, f"{where}d", d, FINITE)
    if not out_d >= 1.0:
        raise ValueError(f"{fn}: {where}d must be >= 1, got {d!r}")
    out_wd = checked_real(fn, f"{where}weight_decay", weight_decay, NONNEG)
    return (out_lr, out_b2, out_eps1, out_eps2, out_d, out_wd,
            bool(flag_arg(fn, f"{where}maximize", maximize)))


def adafactor(param, grad, row_var=None, col_var=None, variance=None, *, step,
              lr=1e-2, beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0, weight_decay=0.0,
              maximize=False):
    """One Adafactor update of one param, in place (torch.optim.Adafactor 2.13's
    single-tensor arithmetic).

    With ``t = step``, ``w = t ** beta2_decay`` (the weight of the new statistic),
    ``rho = min(lr, t ** -0.5)`` and ``alpha = max(eps2, RMS(param)) * rho``: for a param
    of >= 2 dims (the last two are m x n, leading dims a batch)
    ``row_var = lerp(row_var, mean_j g^2, w)``, ``col_var = lerp(col_var, mean_i g^2, w)``
    and ``V = row_var col_var / max(mean_i row_var, eps1)``; for 0 or 1 dims
    ``V = variance = lerp(variance, g^2, w)``. Then ``u = g / sqrt(max(V, eps1^2))``,
    ``param *= 1 - lr * weight_decay`` and ``param -= alpha / max(1, RMS(u) / d) * u``
    (``g = -grad`` when ``maximize``). Everything is in the param's units except ``w``,
    ``rho`` (dimensionless) and ``V`` (the grad's units squared).

    Parameters
    ----------
    param : numpy.ndarray
        float32 or float64, C- or F-contiguous, writeable; updated in place.
    grad : numpy.ndarray
        The gradient: the param's dtype, shape and layout (may be read-only).
    row_var, col_var : numpy.ndarray, optional
        For a param of >= 2 dims (required then): shapes ``param.shape[:-1] + (1,)`` and
        ``param.shape[:-2] + (1, param.shape[-1])``, the param's dtype and layout; zeros
        before the first update. Updated in place.
    variance : numpy.ndarray, optional
        For a param of 0 or 1 dims (required then): the param's shape; updated in place.
    step : int
        The 1-based update number of this param, ``>= 1``.
    lr : float, default 1e-2
        ``>= 0``: the cap of the relative step size ``rho`` and the weight decay's factor.
    beta2_decay : float, default -0.8
        ``<= 0``: the exponent of ``w = step ** beta2_decay``.
    eps1 : float, optional
        ``>= 0``: the floor of ``mean_i row_var`` and of ``sqrt(V)`` (grad units); None:
        the machine epsilon of the param's dtype.
    eps2 : float, default 1e-3
        ``>= 0``: the floor of the param's RMS in ``alpha`` (param units).
    d : float, default 1
        ``>= 1``: the update clipping threshold on ``RMS(u)``.
    weight_decay : float, default 0
        ``>= 0``: decoupled weight decay, ``param *= 1 - lr * weight_decay``.
    maximize : bool, default False
        Ascend instead of descend.

    Raises
    ------
    TypeError
        If an array or a hyperparameter has the wrong type or dtype.
    ValueError
        If shapes, layouts or values are out of range, state the param's dims need is
        missing (or given when they do not), or written buffers overlap.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlr.kernels import adafactor
    >>> p = np.ones((2, 3)); g = np.full((2, 3), 0.5)
    >>> r, c = np.zeros((2, 1)), np.zeros((1, 3))
    >>> adafactor(p, g, r, c, step=1, lr=0.01)
    >>> r.ravel().round(12).tolist(), round(float(p[0, 0]), 6)   # mean g^2 = 0.25
    ([0.25, 0.25], 0.99)
    """
    cdef Coef c
    cdef cnp.ndarray p = _array("param", param, True)
    cdef cnp.ndarray g = _array("grad", grad, False)
    if cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(p):
        raise TypeError(f"{_FN}: grad has dtype {g.dtype} but param has dtype {p.dtype}; "
                        f"they must be equal (float32 or float64)")
    if grad.shape != param.shape:
        raise ValueError(f"{_FN}: grad has shape {grad.shape} but param has shape "
                         f"{(<object>param).shape}; they must be equal")
    if not (cnp.PyArray_IS_F_CONTIGUOUS(g) if _fortran(p) else cnp.PyArray_IS_C_CONTIGUOUS(g)):
        raise ValueError(f"{_FN}: grad is {layout_name(g)} but param is {layout_name(p)}; "
                         f"they must share one contiguous layout"
                         f"{layout_hint('grad', _fortran(p), False)}")
    shapes = state_shapes(param.shape)
    given = {"row_var": row_var, "col_var": col_var, "variance": variance}
    written = [("param", p)]
    for name, arr in given.items():
        if name in shapes:
            if arr is None:
                raise ValueError(f"{_FN}: {name} is required for a param of {p.ndim} "
                                 f"dims (shape {param.shape})")
            written.append((name, check_state(_FN, "param", p, name, arr, shapes[name])))
        elif arr is not None:
            raise ValueError(f"{_FN}: {name} must be None for a param of {p.ndim} dims "
                             f"(shape {param.shape}); "
                             f"{'row_var and col_var' if p.ndim > 1 else 'variance'} "
                             f"hold its state")
    for k, (a_name, a) in enumerate(written):
        if a.size and g.size and np.may_share_memory(a, g):
            raise ValueError(f"{_FN}: {a_name} and grad overlap in memory")
        for b_name, b in written[k + 1:]:
            if a.size and b.size and np.may_share_memory(a, b):
                raise ValueError(f"{_FN}: {a_name} and {b_name} overlap in memory")
    c.step = <double>step_arg(_FN, step)
    hyper = check_hypers(_FN, "", lr, beta2_decay, eps1, eps2, d, weight_decay, maximize)
    c.lr, c.beta2_decay, e1, c.eps2, c.d, c.weight_decay, c.maximize = hyper
    c.eps1 = float(np.finfo(param.dtype).eps) if e1 is None else e1
    _run(p, g, row_var, col_var, variance, &c)
