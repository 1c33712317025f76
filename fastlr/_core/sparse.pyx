# fastlr/_core/sparse.pyx -- row-sparse gradients: coalescing and the lazy updates that
# touch only the rows a gradient names (torch's SparseAdam, sparse Adagrad, sparse SGD).
#
# Design notes
# ------------
# a) The gradient of a 2-D param (an embedding table, n_rows x n_cols) is given as
#    (indices, rows): int64 row numbers and a (len(indices), n_cols) block of values, the
#    layout of torch's sparse COO grads with one sparse dimension (nn.Embedding(sparse=True)).
#    A row may be named more than once; the entries of one row add up.
# b) Coalescing (Adam, Adagrad: the update is non-linear in the grad, so each row must be
#    summed first) is torch's `coalesce()`: rows in increasing index order, duplicates summed
#    one after another in the param's dtype. The entries are sorted by (index, position)
#    with an LSD radix sort (11-bit digits: two O(nnz) passes below 4M rows), a stable
#    order; torch's CPU sort is stable for up to 16 entries and not beyond, so where
#    more than two duplicates of a row come in a long list the sum's rounding may differ by an
#    ulp from torch's. Already strictly increasing indices (the common case after
#    torch's own coalesce, or a unique sorted batch) skip the sort and the scratch copy.
# c) Arithmetic, per touched element, in the param's dtype with the scalars rounded to it, as
#    torch's single-tensor code does (torch/optim/_functional.py sparse_adam, adagrad.py's
#    sparse branch):
#      SparseAdam:  dm = (g - m) * (1 - b1);  m += dm;  dv = (g*g - v) * (1 - b2);  v += dv
#                   p += -step_size * (m / (sqrt(v) + eps))
#                   step_size = lr * sqrt(1 - b2**t) / (1 - b1**t)   (double)
#      Adagrad:     s += g*g;  p += -clr * (g / (sqrt(s) + eps)),  clr = lr / (1 + (t-1) lr_decay)
#      SGD:         p += -lr * g, entry by entry in the given order (torch adds an uncoalesced
#                   sparse grad to the param without coalescing it).
#    Rows not named are not read or written: the moments of untouched rows stay as they are
#    (torch's "lazy" semantics), which is why it is not Adam.
# d) Validation. Everything -- types, dtypes, shapes, layouts, writeability, overlap of the
#    written buffers, and every index in [0, n_rows) -- is checked before the first write;
#    the loops then run without the GIL (released on every call; ~0.1 us). `check_rows`
#    is the grad check alone, so that an optimizer can check every param's grad before
#    updating any.
# e) Cost: O(nnz * n_cols) plus the sort, O(nnz) per 11-bit digit of the largest index;
#    nothing proportional to n_rows. The touched rows are scattered over a large table, so
#    the loop is bound by memory latency: the rows of the entry PREFETCH_AHEAD ahead are
#    prefetched (param and state), and the element loop has no branch (maximize is a
#    multiplication by -1, exact) so that it vectorizes.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport pow, sqrt, sqrtf
from libc.stdint cimport INT64_MAX, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from fastlr._core.args cimport (CLOSED_UNIT, NONNEG, POSITIVE, UNIT, checked_real, flag_arg,
                                ndarray_hint, step_arg)
from fastlr._core.arrays cimport check_like

import numpy as np

cnp.import_array()

# ---------------------------------------------------------------------------------------
# C level
# ---------------------------------------------------------------------------------------
ctypedef struct Entry:
    int64_t row         # the param row
    int64_t pos         # the entry's position in the grad


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTLR_PREFETCH_W(p) __builtin_prefetch((p), 1, 0)
    #else
    #define FASTLR_PREFETCH_W(p) ((void)0)
    #endif
    """
    void prefetch_w "FASTLR_PREFETCH_W"(const void* p) noexcept nogil

cdef enum:
    RADIX_BITS = 11             # 2048 buckets per pass: rows below 2**22 sort in 2 passes
    PREFETCH_AHEAD = 6          # entries ahead whose rows are prefetched


cdef void order_entries(const int64_t* idx, Py_ssize_t nnz,   # IN
                        Entry* e, Entry* tmp) noexcept nogil: # OUT, scratch (nnz each)
    """The entries sorted by (row, position), torch's coalesced order: an LSD radix sort on
    the row (stable, so the positions of one row stay in the given order), O(nnz) per
    11-bit digit of the largest row. Already strictly increasing indices are kept as
    they are."""
    cdef Py_ssize_t k, b, total
    cdef Py_ssize_t counts[1 << RADIX_BITS]
    cdef bint ordered = True
    cdef int64_t top = 0
    cdef int shift = 0
    cdef Entry* src = e
    cdef Entry* dst = tmp
    cdef Entry* swap
    for k in range(nnz):
        e[k].row = idx[k]
        e[k].pos = k
        if idx[k] > top:
            top = idx[k]
        if k and idx[k] <= idx[k - 1]:
            ordered = False
    if ordered:
        return
    while shift == 0 or (top >> shift) > 0:
        for b in range(1 << RADIX_BITS):
            counts[b] = 0
        for k in range(nnz):
            counts[(src[k].row >> shift) & ((1 << RADIX_BITS) - 1)] += 1
        total = 0
        for b in range(1 << RADIX_BITS):      # counts -> first slot of each bucket
            total, counts[b] = total + counts[b], total
        for k in range(nnz):
            b = (src[k].row >> shift) & ((1 << RADIX_BITS) - 1)
            dst[counts[b]] = src[k]
            counts[b] += 1
        swap = src
        src = dst
        dst = swap
        shift += RADIX_BITS
    if src != e:
        memcpy(e, src, nnz * sizeof(Entry))


cdef inline void prefetch_row(floating* a, Py_ssize_t n_cols) noexcept nogil:
    cdef Py_ssize_t c = 0, line = 64 // sizeof(floating)    # elements per cache line
    while c < n_cols:
        prefetch_w(a + c)
        c += line


cdef inline floating root(floating x) noexcept nogil:
    """sqrt in the value's own precision (sqrtf for float32: vectorizable, and the same
    correctly rounded result as sqrt in double rounded to float)."""
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef Py_ssize_t summed_row(const floating* rows, Py_ssize_t n_cols,   # IN
                           const Entry* e, Py_ssize_t k, Py_ssize_t nnz,  # IN
                           floating* scratch,                         # OUT (scratch)
                           const floating** out) noexcept nogil:      # OUT
    """The summed grad of entry k's row (``*out``: the grad's own row when it is named once,
    else ``scratch``); returns the index of the next row's first entry."""
    cdef Py_ssize_t j = k + 1, c
    cdef const floating* src
    if j >= nnz or e[j].row != e[k].row:
        out[0] = rows + e[k].pos * n_cols
        return j
    memcpy(scratch, rows + e[k].pos * n_cols, n_cols * sizeof(floating))
    while j < nnz and e[j].row == e[k].row:
        src = rows + e[j].pos * n_cols
        for c in range(n_cols):
            scratch[c] = scratch[c] + src[c]
        j += 1
    out[0] = scratch
    return j


cdef void adam_rows(floating* p, floating* m, floating* v,           # IN/OUT
                    const floating* rows, const Entry* e,            # IN
                    Py_ssize_t nnz, Py_ssize_t n_cols,               # IN
                    floating* scratch,                               # scratch (n_cols)
                    double one_m_b1, double one_m_b2, double eps,    # IN
                    double step_size, bint maximize) noexcept nogil:
    cdef Py_ssize_t k = 0, c
    cdef int64_t r
    cdef const floating* g
    cdef floating* pr
    cdef floating* mr
    cdef floating* vr
    cdef floating a1 = <floating>one_m_b1, a2 = <floating>one_m_b2
    cdef floating ep = <floating>eps, neg = <floating>(-step_size)
    cdef floating sign = -1 if maximize else 1      # -g is g * -1 exactly
    cdef floating gi, om, dm, ov, dv
    cdef int64_t ahead
    while k < nnz:
        r = e[k].row
        if k + PREFETCH_AHEAD < nnz:
            ahead = e[k + PREFETCH_AHEAD].row * n_cols
            prefetch_row(p + ahead, n_cols)
            prefetch_row(m + ahead, n_cols)
            prefetch_row(v + ahead, n_cols)
        k = summed_row(rows, n_cols, e, k, nnz, scratch, &g)
        pr = p + r * n_cols
        mr = m + r * n_cols
        vr = v + r * n_cols
        for c in range(n_cols):
            gi = g[c] * sign
            om = mr[c]
            dm = (gi - om) * a1
            mr[c] = om + dm
            ov = vr[c]
            dv = (gi * gi - ov) * a2
            vr[c] = ov + dv
            pr[c] = pr[c] + neg * ((dm + om) / (root(dv + ov) + ep))


cdef void adagrad_rows(floating* p, floating* s,                     # IN/OUT
                       const floating* rows, const Entry* e,         # IN
                       Py_ssize_t nnz, Py_ssize_t n_cols,            # IN
                       floating* scratch,                            # scratch (n_cols)
                       double clr, double eps, bint maximize) noexcept nogil:
    cdef Py_ssize_t k = 0, c
    cdef int64_t r
    cdef const floating* g
    cdef floating* pr
    cdef floating* sr
    cdef floating ep = <floating>eps, neg = <floating>(-clr)
    cdef floating sign = -1 if maximize else 1
    cdef floating gi, si
    cdef int64_t ahead
    while k < nnz:
        r = e[k].row
        if k + PREFETCH_AHEAD < nnz:
            ahead = e[k + PREFETCH_AHEAD].row * n_cols
            prefetch_row(p + ahead, n_cols)
            prefetch_row(s + ahead, n_cols)
        k = summed_row(rows, n_cols, e, k, nnz, scratch, &g)
        pr = p + r * n_cols
        sr = s + r * n_cols
        for c in range(n_cols):
            gi = g[c] * sign
            si = sr[c] + gi * gi
            sr[c] = si
            pr[c] = pr[c] + neg * (gi / (root(si) + ep))


cdef void sgd_rows(floating* p,                                      # IN/OUT
                   const floating* rows, const int64_t* idx,          # IN
                   Py_ssize_t nnz, Py_ssize_t n_cols,                 # IN
                   double lr, bint maximize) noexcept nogil:
    cdef Py_ssize_t k, c
    cdef floating* pr
    cdef const floating* g
    cdef floating neg = <floating>(lr if maximize else -lr)
    for k in range(nnz):
        pr = p + idx[k] * n_cols
        g = rows + k * n_cols
        for c in range(n_cols):
            pr[c] = pr[c] + neg * g[c]


# ---------------------------------------------------------------------------------------
# Checks (everything before the first write)
# ---------------------------------------------------------------------------------------
cdef int _check_written(str fn, str name, object a) except -1:
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, got {type(a).__name__}"
                        f"{ndarray_hint(a)}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT64:
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {arr.dtype}")
    if cnp.PyArray_NDIM(arr) != 2:
        raise ValueError(f"{fn}: {name} must be 2-D (rows x columns) for a row-sparse "
                         f"grad, got shape {(<object>arr).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{fn}: {name} must be C-contiguous (its rows contiguous) for a "
                         f"row-sparse grad, got strides {(<object>arr).strides}; an update "
                         f"applied to a copy is lost")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{fn}: {name} is read-only but is updated in place")
    if not cnp.PyArray_ISALIGNED(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise ValueError(f"{fn}: {name} must be aligned and in native byte order")
    return 0


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(a), nb = cnp.PyArray_NBYTES(b)
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


cdef int _check_indices(str fn, str grad_name, object indices, int64_t n_rows,
                        str param_name="") except -1:
    """``indices``: a contiguous 1-D int64 array, every value >= 0 and (n_rows >= 0) below
    n_rows."""
    cdef cnp.ndarray ix
    cdef Py_ssize_t k, nnz, at = 0
    cdef int64_t bad = 0, value = 0, top = n_rows if n_rows >= 0 else INT64_MAX
    cdef const int64_t* ip
    if not cnp.PyArray_Check(indices) or \
            cnp.PyArray_TYPE(<cnp.ndarray>indices) != cnp.NPY_INT64:
        raise TypeError(f"{fn}: {grad_name} indices must be an int64 numpy.ndarray, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    ix = <cnp.ndarray>indices
    if cnp.PyArray_NDIM(ix) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(ix) or \
            not cnp.PyArray_ISALIGNED(ix) or not cnp.PyArray_ISNOTSWAPPED(ix):
        raise ValueError(f"{fn}: {grad_name} indices must be a contiguous 1-D array, got "
                         f"shape {(<object>ix).shape}")
    nnz = cnp.PyArray_DIM(ix, 0)
    ip = <const int64_t*>cnp.PyArray_DATA(ix)
    with nogil:
        for k in range(nnz):
            if ip[k] < 0 or ip[k] >= top:
                bad = 1
                at = k
                value = ip[k]
                break
    if bad and n_rows < 0:
        raise ValueError(f"{fn}: {grad_name} indices[{at}] is {value}; indices must be >= 0")
    if bad:
        raise ValueError(f"{fn}: {grad_name} indices[{at}] is {value}, out of range for "
                         f"{param_name} with {n_rows} rows (expected 0 <= index < {n_rows}); "
                         f"nothing was updated")
    return 0


cpdef int check_rows(str fn, str param_name, str grad_name, object param, object indices,
                     object rows) except -1:
    """Check a row-sparse grad ``(indices, rows)`` against its 2-D ``param`` (a
    float32/float64 C-contiguous writeable array): ``indices`` a 1-D int64 array with every
    value in ``[0, param.shape[0])``; ``rows`` C-contiguous of the param's dtype and shape
    ``(len(indices), param.shape[1])``, not overlapping the param. Raises TypeError /
    ValueError naming ``fn``, the grad and the param; returns 0."""
    cdef cnp.ndarray p, ix, rw
    cdef Py_ssize_t nnz
    _check_written(fn, param_name, param)
    p = <cnp.ndarray>param
    _check_indices(fn, grad_name, indices, cnp.PyArray_DIM(p, 0), param_name)
    ix = <cnp.ndarray>indices
    if not cnp.PyArray_Check(rows):
        raise TypeError(f"{fn}: {grad_name} rows must be a numpy.ndarray, got "
                        f"{type(rows).__name__}{ndarray_hint(rows)}")
    rw = <cnp.ndarray>rows
    if cnp.PyArray_TYPE(rw) != cnp.PyArray_TYPE(p):
        raise TypeError(f"{fn}: {grad_name} rows have dtype {rw.dtype} but {param_name} has "
                        f"dtype {p.dtype}; they must be equal")
    nnz = cnp.PyArray_DIM(ix, 0)
    if cnp.PyArray_NDIM(rw) != 2 or cnp.PyArray_DIM(rw, 0) != nnz or \
            cnp.PyArray_DIM(rw, 1) != cnp.PyArray_DIM(p, 1):
        raise ValueError(f"{fn}: {grad_name} rows have shape {(<object>rw).shape} but "
                         f"{param_name} has shape {(<object>p).shape} and the grad has {nnz} "
                         f"indices; expected ({nnz}, {cnp.PyArray_DIM(p, 1)})")
    if not cnp.PyArray_IS_C_CONTIGUOUS(rw) or not cnp.PyArray_ISALIGNED(rw) or \
            not cnp.PyArray_ISNOTSWAPPED(rw):
        raise ValueError(f"{fn}: {grad_name} rows must be C-contiguous, aligned and in native "
                         f"byte order")
    if _overlap(rw, p):
        raise ValueError(f"{fn}: {grad_name} rows share memory with {param_name}, which is "
                         f"written")
    return 0


cdef int _check_state(str fn, str name, object a, str pname, cnp.ndarray p,
                      list written) except -1:
    _check_written(fn, name, a)
    check_like(fn, name, <cnp.ndarray>a, pname, p, True)
    for other_name, other in written:
        if _overlap(<cnp.ndarray>a, <cnp.ndarray>other):
            raise ValueError(f"{fn}: {name} and {other_name} share memory; the buffers "
                             f"written must be distinct")
    written.append((name, a))
    return 0


cdef inline double _hyper(str fn, str name, object value, int rule) except? -1.0:
    return checked_real(fn, name, value, rule)


# ---------------------------------------------------------------------------------------
# Python-callable kernels
# ---------------------------------------------------------------------------------------
cdef int _run(int kind, cnp.ndarray p, cnp.ndarray ix, cnp.ndarray rw, cnp.ndarray s1,
              cnp.ndarray s2, double a, double b, double c, double d, bint maximize) except -1:
    """kind 0: Adam (a=1-b1, b=1-b2, c=eps, d=step_size); 1: Adagrad (a=clr, c=eps);
    2: SGD (a=lr)."""
    cdef Py_ssize_t nnz = cnp.PyArray_DIM(ix, 0), n_cols = cnp.PyArray_DIM(p, 1)
    cdef bint f32 = cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT32
    cdef const int64_t* ip = <const int64_t*>cnp.PyArray_DATA(ix)
    cdef Entry* e = NULL
    cdef void* scratch = NULL
    if nnz == 0:
        return 0
    if kind == 2:
        with nogil:
            if f32:
                sgd_rows(<float*>cnp.PyArray_DATA(p), <const float*>cnp.PyArray_DATA(rw),
                         ip, nnz, n_cols, a, maximize)
            else:
                sgd_rows(<double*>cnp.PyArray_DATA(p), <const double*>cnp.PyArray_DATA(rw),
                         ip, nnz, n_cols, a, maximize)
        return 0
    e = <Entry*>malloc(2 * nnz * sizeof(Entry))       # the entries, then the sort's scratch
    scratch = malloc(max(n_cols, 1) * sizeof(double))
    if e == NULL or scratch == NULL:
        free(e)
        free(scratch)
        raise MemoryError()
    with nogil:
        order_entries(ip, nnz, e, e + nnz)
        if kind == 0 and f32:
            adam_rows(<float*>cnp.PyArray_DATA(p), <float*>cnp.PyArray_DATA(s1),
                      <float*>cnp.PyArray_DATA(s2), <const float*>cnp.PyArray_DATA(rw), e,
                      nnz, n_cols, <float*>scratch, a, b, c, d, maximize)
        elif kind == 0:
            adam_rows(<double*>cnp.PyArray_DATA(p), <double*>cnp.PyArray_DATA(s1),
                      <double*>cnp.PyArray_DATA(s2), <const double*>cnp.PyArray_DATA(rw), e,
                      nnz, n_cols, <double*>scratch, a, b, c, d, maximize)
        elif f32:
            adagrad_rows(<float*>cnp.PyArray_DATA(p), <float*>cnp.PyArray_DATA(s1),
                         <const float*>cnp.PyArray_DATA(rw), e, nnz, n_cols,
                         <float*>scratch, a, c, maximize)
        else:
            adagrad_rows(<double*>cnp.PyArray_DATA(p), <double*>cnp.PyArray_DATA(s1),
                         <const double*>cnp.PyArray_DATA(rw), e, nnz, n_cols,
                         <double*>scratch, a, c, maximize)
    free(e)
    free(scratch)
    return 0


def sparse_adam(param, indices, rows, exp_avg, exp_avg_sq, *, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, step, maximize=False):
    """SparseAdam's update of the rows a row-sparse grad names (torch.optim.SparseAdam).

    With ``g`` the coalesced grad of row ``r`` (its entries summed; negated when
    ``maximize``) and ``t = step``, per element of the row, in the param's dtype::

        dm = (g - m) * (1 - beta1);  m = m + dm
        dv = (g * g - v) * (1 - beta2);  v = v + dv
        p = p - step_size * (m / (sqrt(v) + eps))
        step_size = lr * sqrt(1 - beta2**t) / (1 - beta1**t)

    Rows the grad does not name are left as they are (params and moments): torch's lazy
    semantics. Everything is checked before any buffer is written.

    Parameters
    ----------
    param : numpy.ndarray
        The 2-D (n_rows, n_cols) float32/float64 C-contiguous param, updated in place.
    indices : numpy.ndarray
        int64, 1-D: the rows the grad names, each in ``[0, n_rows)``, repeats allowed.
    rows : numpy.ndarray
        The grad's values, shape ``(len(indices), n_cols)``, the param's dtype, C-contiguous.
    exp_avg, exp_avg_sq : numpy.ndarray
        The moments, like ``param``; updated in place at the named rows.
    lr : float
        Learning rate, > 0 (parameter units per gradient unit).
    beta1, beta2 : float, default 0.9, 0.999
        Moment decays, in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, > 0 (gradient units).
    step : int
        The param's 1-based update number (drives the bias corrections).
    maximize : bool, default False
        Ascend instead of descend.

    Raises
    ------
    TypeError
        If an array has the wrong type or dtype, or a hyperparameter the wrong kind.
    ValueError
        If a shape, layout or index is wrong, buffers overlap, or a hyperparameter is out
        of range.

    Examples
    --------
    >>> p = np.zeros((3, 2)); m = np.zeros_like(p); v = np.zeros_like(p)
    >>> fastlr.sparse.sparse_adam(p, np.array([2]), np.ones((1, 2)), m, v, lr=0.1, step=1)
    >>> p.round(4)
    array([[ 0. ,  0. ],
           [ 0. ,  0. ],
           [-0.1, -0.1]])
    """
    fn = "fastlr.sparse.sparse_adam"
    _check_written(fn, "param", param)
    written = [("param", param)]
    _check_state(fn, "exp_avg", exp_avg, "param", <cnp.ndarray>param, written)
    _check_state(fn, "exp_avg_sq", exp_avg_sq, "param", <cnp.ndarray>param, written)
    check_rows(fn, "param", "grad", param, indices, rows)
    for name, other in written[1:]:
        if _overlap(<cnp.ndarray>rows, <cnp.ndarray>other):
            raise ValueError(f"{fn}: grad rows share memory with {name}, which is written")
    cdef double vlr = _hyper(fn, "lr", lr, POSITIVE)
    cdef double b1 = _hyper(fn, "beta1", beta1, UNIT)
    cdef double b2 = _hyper(fn, "beta2", beta2, UNIT)
    cdef double veps = _hyper(fn, "eps", eps, POSITIVE)
    cdef int64_t t = step_arg(fn, step)
    cdef bint mx = flag_arg(fn, "maximize", maximize)
    cdef double bc1 = 1.0 - pow(b1, <double>t), bc2 = 1.0 - pow(b2, <double>t)
    _run(0, <cnp.ndarray>param, <cnp.ndarray>indices, <cnp.ndarray>rows,
         <cnp.ndarray>exp_avg, <cnp.ndarray>exp_avg_sq, 1.0 - b1, 1.0 - b2, veps,
         vlr * sqrt(bc2) / bc1, mx)


def sparse_adagrad(param, indices, rows, state_sum, *, lr, lr_decay=0.0, eps=1e-10, step,
                   maximize=False):
    """Adagrad's update of the rows a row-sparse grad names (torch.optim.Adagrad's sparse
    path).

    With ``g`` the coalesced grad of row ``r`` (negated when ``maximize``) and ``t = step``,
    per element of the row, in the param's dtype::

        s = s + g * g
        p = p - clr * (g / (sqrt(s) + eps)),   clr = lr / (1 + (t - 1) * lr_decay)

    Rows the grad does not name are left as they are. torch refuses weight decay with sparse
    grads, so there is none. Everything is checked before any buffer is written.

    Parameters
    ----------
    param : numpy.ndarray
        The 2-D float32/float64 C-contiguous param, updated in place.
    indices : numpy.ndarray
        int64, 1-D: the rows the grad names, each in ``[0, n_rows)``, repeats allowed.
    rows : numpy.ndarray
        The grad's values, shape ``(len(indices), n_cols)``, the param's dtype.
    state_sum : numpy.ndarray
        The sum of squared grads, like ``param``; updated at the named rows.
    lr : float
        Learning rate, >= 0.
    lr_decay : float, default 0
        ``lr / (1 + (step - 1) * lr_decay)``, >= 0.
    eps : float, default 1e-10
        Added to the denominator, >= 0.
    step : int
        The param's 1-based update number.
    maximize : bool, default False
        Ascend instead of descend.

    Raises
    ------
    TypeError
        If an array has the wrong type or dtype, or a hyperparameter the wrong kind.
    ValueError
        If a shape, layout or index is wrong, buffers overlap, or a hyperparameter is out
        of range.

    Examples
    --------
    >>> p = np.zeros((2, 1)); s = np.zeros_like(p)
    >>> fastlr.sparse.sparse_adagrad(p, np.array([1]), np.array([[2.0]]), s, lr=0.5, step=1)
    >>> p
    array([[ 0. ],
           [-0.5]])
    """
    fn = "fastlr.sparse.sparse_adagrad"
    _check_written(fn, "param", param)
    written = [("param", param)]
    _check_state(fn, "state_sum", state_sum, "param", <cnp.ndarray>param, written)
    check_rows(fn, "param", "grad", param, indices, rows)
    if _overlap(<cnp.ndarray>rows, <cnp.ndarray>state_sum):
        raise ValueError(f"{fn}: grad rows share memory with state_sum, which is written")
    cdef double vlr = _hyper(fn, "lr", lr, NONNEG)
    cdef double decay = _hyper(fn, "lr_decay", lr_decay, NONNEG)
    cdef double veps = _hyper(fn, "eps", eps, NONNEG)
    cdef int64_t t = step_arg(fn, step)
    cdef bint mx = flag_arg(fn, "maximize", maximize)
    _run(1, <cnp.ndarray>param, <cnp.ndarray>indices, <cnp.ndarray>rows,
         <cnp.ndarray>state_sum, None, vlr / (1.0 + <double>(t - 1) * decay), 0.0, veps, 0.0,
         mx)


def sparse_sgd(param, indices, rows, *, lr, maximize=False):
    """Plain SGD's update with a row-sparse grad (torch.optim.SGD with a sparse grad, no
    momentum, no weight decay).

    Each entry ``k`` in the given order (duplicates are not summed first; torch adds the
    uncoalesced grad to the param the same way), in the param's dtype::

        p[indices[k]] = p[indices[k]] + (-lr) * rows[k]      (+lr when maximize)

    Parameters
    ----------
    param : numpy.ndarray
        The 2-D float32/float64 C-contiguous param, updated in place.
    indices : numpy.ndarray
        int64, 1-D: the rows the grad names, each in ``[0, n_rows)``, repeats allowed.
    rows : numpy.ndarray
        The grad's values, shape ``(len(indices), n_cols)``, the param's dtype.
    lr : float
        Learning rate, >= 0.
    maximize : bool, default False
        Ascend instead of descend.

    Raises
    ------
    TypeError
        If an array has the wrong type or dtype, or a hyperparameter the wrong kind.
    ValueError
        If a shape, layout or index is wrong, or a hyperparameter is out of range.

    Examples
    --------
    >>> p = np.zeros((2, 1))
    >>> fastlr.sparse.sparse_sgd(p, np.array([0, 0]), np.array([[1.0], [2.0]]), lr=0.5)
    >>> p
    array([[-1.5],
           [ 0. ]])
    """
    fn = "fastlr.sparse.sparse_sgd"
    _check_written(fn, "param", param)
    check_rows(fn, "param", "grad", param, indices, rows)
    cdef double vlr = _hyper(fn, "lr", lr, NONNEG)
    cdef bint mx = flag_arg(fn, "maximize", maximize)
    _run(2, <cnp.ndarray>param, <cnp.ndarray>indices, <cnp.ndarray>rows, None, None, vlr,
         0.0, 0.0, 0.0, mx)


def check_param(str fn, str name, object param):
    """Check a param that takes row-sparse grads: a 2-D float32/float64 C-contiguous,
    writeable, aligned array. Raises TypeError / ValueError naming ``fn`` and ``name``."""
    _check_written(fn, name, param)


def coalesce(indices, rows):
    """torch's ``coalesce()`` of a row-sparse grad: the distinct indices in increasing order
    and, for each, the sum of its rows in the order they were given (in the rows' dtype).

    Parameters
    ----------
    indices : numpy.ndarray
        int64, 1-D, each >= 0.
    rows : numpy.ndarray
        float32/float64, C-contiguous, shape ``(len(indices), n_cols)``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The distinct indices (int64) and the summed rows (new arrays).

    Raises
    ------
    TypeError
        If an argument has the wrong type or dtype.
    ValueError
        If a shape or layout is wrong, or an index is negative.

    Examples
    --------
    >>> i, r = fastlr.sparse.coalesce(np.array([3, 1, 3]), np.array([[1.0], [2.0], [4.0]]))
    >>> i, r
    (array([1, 3]), array([[2.],
           [5.]]))
    """
    fn = "fastlr.sparse.coalesce"
    if not cnp.PyArray_Check(rows):
        raise TypeError(f"{fn}: rows must be a numpy.ndarray, got {type(rows).__name__}")
    cdef cnp.ndarray rw = <cnp.ndarray>rows
    if cnp.PyArray_TYPE(rw) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(rw) != cnp.NPY_FLOAT64:
        raise TypeError(f"{fn}: rows must be float32 or float64, got {rw.dtype}")
    if cnp.PyArray_NDIM(rw) != 2:
        raise ValueError(f"{fn}: rows must be 2-D, got shape {rows.shape}")
    _check_indices(fn, "grad", indices, -1)
    cdef cnp.ndarray ix = <cnp.ndarray>indices
    cdef Py_ssize_t nnz = cnp.PyArray_DIM(ix, 0), n_cols = cnp.PyArray_DIM(rw, 1)
    if cnp.PyArray_DIM(rw, 0) != nnz:
        raise ValueError(f"{fn}: rows have shape {rows.shape} for {nnz} indices; expected "
                         f"({nnz}, n_cols)")
    cdef Py_ssize_t k = 0, j, u = 0
    cdef Entry* e = <Entry*>malloc(max(2 * nnz, 1) * sizeof(Entry))
    if e == NULL:
        raise MemoryError()
    uniq = np.empty(nnz, dtype=np.int64)
    summed = np.empty((nnz, n_cols), dtype=rw.dtype)
    try:
        order_entries(<const int64_t*>cnp.PyArray_DATA(ix), nnz, e, e + nnz)
        while k < nnz:
            uniq[u] = e[k].row
            summed[u] = rows[e[k].pos]
            j = k + 1
            while j < nnz and e[j].row == e[k].row:
                summed[u] += rows[e[j].pos]
                j += 1
            u += 1
            k = j
    finally:
        free(e)
    return uniq[:u].copy(), summed[:u].copy()
