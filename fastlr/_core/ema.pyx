# fastlr/_core/ema.pyx -- weight-EMA kernels: a fused in-place lerp and an in-place swap.
#
# Design notes
# ------------
# a) Arithmetic. `ema_update` computes torch's lerp exactly, as
#    `torch._foreach_lerp_(ema, param, 1 - decay)` does (torch.optim.swa_utils
#    get_ema_multi_avg_fn, timm ModelEmaV3): with w = 1 - decay (in double, then rounded to
#    the arrays' dtype, as torch converts the scalar weight to the tensor's opmath type)
#        ema = ema + w * (param - ema)          if w < 0.5
#        ema = param - (param - ema) * (1 - w)  otherwise
#    one read of each buffer and one write of `ema`; the loop is `lerp` of _core.pxd with the
#    branch hoisted. (torch's vectorized CPU lerp may fuse the multiply-add; our build never
#    contracts, so float32 results can differ from torch's by an ulp, never from
#    fastlr.reference.ema.)
# b) Swap. Two buffers exchange their contents in one pass, as 32- or 64-bit integers: the
#    bits move unchanged (NaN payloads included); swapping twice restores them exactly.
# c) Threads. Every array goes through the kernels' threaded loop (`parallel_spans`): serial
#    below PARALLEL_MIN_SIZE elements, split into aligned spans above. Element-wise, so the
#    result has the same bits for every thread count.
# d) Validation. `_Pairs` validates a list of (a[i], b[i]) array pairs once -- types, dtypes,
#    shapes, layout, writeability, alignment, byte order, overlap across every buffer of the
#    list -- and keeps their data pointers (and references to the arrays), so the EMA class
#    pays for validation at construction only and each update is one compiled call over all
#    its arrays. The `def` kernels build a `_Pairs` per call: everything is checked before
#    any buffer is touched.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy

from fastlr._core.args cimport CLOSED_UNIT, checked_real, layout_hint, ndarray_hint, threads_arg
from fastlr._core.arrays cimport check_like, layout_name, same_shape
from fastlr._core.loops cimport lerp
from fastlr._kernels cimport parallel_spans, span_fn

import numpy as np

cnp.import_array()

cdef enum:
    # The GIL is released for updates at least this long in total (as in _kernels).
    NOGIL_MIN_SIZE = 4096

cdef enum JobKind:
    LERP_F32 = 0
    LERP_F64 = 1
    SWAP_32 = 2
    SWAP_64 = 3


# ---------------------------------------------------------------------------------------
# C level
# ---------------------------------------------------------------------------------------
ctypedef struct LerpCoef:
    float w32, wm1_32           # w = 1 - decay and -(1 - w), in float32
    double w64, wm1_64          # the same in float64
    bint small32, small64       # w < 0.5: torch's first branch


cdef inline void lerp_coef(double decay, LerpCoef* c) noexcept nogil:
    c.w64 = 1.0 - decay
    c.wm1_64 = -(1.0 - c.w64)
    c.small64 = c.w64 < 0.5
    c.w32 = <float>c.w64
    c.wm1_32 = -(<float>1.0 - c.w32)
    c.small32 = c.w32 < <float>0.5


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void ema_core(floating* ema, const floating* param, Py_ssize_t n,  # IN/OUT, IN
                          floating w, floating wm1, bint small) noexcept nogil:
    cdef Py_ssize_t i
    if small:
        for i in range(n):
            ema[i] = lerp(ema[i], param[i], w, wm1, True)
    else:
        for i in range(n):
            ema[i] = lerp(ema[i], param[i], w, wm1, False)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void swap_u32(uint32_t* a, uint32_t* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t t
    for i in range(n):
        t = a[i]
        a[i] = b[i]
        b[i] = t


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void swap_u64(uint64_t* a, uint64_t* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t t
    for i in range(n):
        t = a[i]
        a[i] = b[i]
        b[i] = t


ctypedef struct Job:
    int kind
    char* a                 # ema (lerp) or the first buffer (swap)
    char* b                 # param (lerp, read only) or the second buffer (swap)
    const LerpCoef* coef


cdef void job_span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Job* job = <Job*>ctx
    cdef Py_ssize_t n = stop - start
    cdef const LerpCoef* c = job.coef
    if job.kind == LERP_F32:
        ema_core((<float*>job.a) + start, (<const float*>job.b) + start, n,
                 c.w32, c.wm1_32, c.small32)
    elif job.kind == LERP_F64:
        ema_core((<double*>job.a) + start, (<const double*>job.b) + start, n,
                 c.w64, c.wm1_64, c.small64)
    elif job.kind == SWAP_32:
        swap_u32((<uint32_t*>job.a) + start, (<uint32_t*>job.b) + start, n)
    else:
        swap_u64((<uint64_t*>job.a) + start, (<uint64_t*>job.b) + start, n)


# ---------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------
cdef inline str _layout(cnp.ndarray a):
    return layout_name(a)


cdef cnp.ndarray _check_one(str fn, str name, object obj, bint written):
    """One float32/float64, contiguous, aligned, native-order array (writeable if
    `written`); raises TypeError/ValueError naming `name` otherwise."""
    cdef cnp.ndarray a
    cdef int type_num
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray of float32 or float64, got "
                        f"{type(obj).__name__}{ndarray_hint(obj)}")
    a = <cnp.ndarray>obj
    type_num = cnp.PyArray_TYPE(a)
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {a.dtype}")
    if cnp.PyArray_ISBYTESWAPPED(a):
        raise TypeError(f"{fn}: {name} has non-native byte order ({a.dtype.str}); use "
                        f"{name}.astype({name}.dtype.newbyteorder('='))")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a)):
        raise ValueError(f"{fn}: {name} must be contiguous (C or F order), got strides "
                         f"{(<object>a).strides} for shape {(<object>a).shape}; an in-place "
                         f"update cannot be applied to a copy{layout_hint(name, False, written)}")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{fn}: {name} is not aligned in memory; an in-place update needs "
                         f"an aligned buffer")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{fn}: {name} is read-only (flags.writeable=False) but is written "
                         f"in place")
    return a


ctypedef struct Span:
    char* lo
    char* hi
    Py_ssize_t index        # 2*i for a[i], 2*i + 1 for b[i]


cdef int _span_cmp(const void* x, const void* y) noexcept nogil:
    cdef const Span* s = <const Span*>x
    cdef const Span* t = <const Span*>y
    if s.lo < t.lo:
        return -1
    if s.lo > t.lo:
        return 1
    return (s.index > t.index) - (s.index < t.index)


cdef list _as_list(str fn, str name, object obj):
    if cnp.PyArray_Check(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    raise TypeError(f"{fn}: {name} must be a numpy.ndarray or a list of them, got "
                    f"{type(obj).__name__}")


cdef class _Pairs:
    """Validated pairs of arrays (a[i], b[i]) with their data pointers, for in-place updates.

    ``_Pairs(fn, a_name, b_name, a, b, b_written)``: ``a`` and ``b`` are arrays or equally
    long lists of arrays; a[i] and b[i] share dtype (float32/float64), shape and layout;
    every a[i] is writeable, every b[i] too when ``b_written``; no two non-empty buffers
    of the whole set overlap. Raises TypeError/ValueError naming the offender.
    """
    cdef Py_ssize_t n
    cdef char** a_data
    cdef char** b_data
    cdef Py_ssize_t* sizes
    cdef int* is64
    cdef readonly Py_ssize_t total          # elements over all pairs
    cdef readonly tuple a_arrays, b_arrays  # keep the buffers alive (and exposed)

    def __cinit__(self, str fn, str a_name, str b_name, a, b, bint b_written):
        self.a_data = NULL
        self.b_data = NULL
        self.sizes = NULL
        self.is64 = NULL
        cdef bint single = cnp.PyArray_Check(a) and cnp.PyArray_Check(b)
        cdef list al = _as_list(fn, a_name, a)
        cdef list bl = _as_list(fn, b_name, b)
        cdef Py_ssize_t n = len(al), i
        if cnp.PyArray_Check(a) != cnp.PyArray_Check(b):
            raise TypeError(f"{fn}: {a_name} and {b_name} must both be arrays or both be "
                            f"lists of arrays, got {type(a).__name__} and {type(b).__name__}")
        if len(bl) != n:
            raise ValueError(f"{fn}: {a_name} has {n} arrays but {b_name} has {len(bl)}; "
                             f"they pair up one to one")
        cdef cnp.ndarray x, y
        cdef str an, bn
        for i in range(n):
            an = a_name if single else f"{a_name}[{i}]"
            bn = b_name if single else f"{b_name}[{i}]"
            x = _check_one(fn, an, al[i], True)
            y = _check_one(fn, bn, bl[i], b_written)
            check_like(fn, bn, y, an, x)
        self.a_arrays = tuple(al)
        self.b_arrays = tuple(bl)
        self.n = n
        self.a_data = <char**>malloc(max(n, 1) * sizeof(char*))
        self.b_data = <char**>malloc(max(n, 1) * sizeof(char*))
        self.sizes = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
        self.is64 = <int*>malloc(max(n, 1) * sizeof(int))
        if (self.a_data == NULL or self.b_data == NULL or self.sizes == NULL
                or self.is64 == NULL):
            raise MemoryError()
        self.total = 0
        for i in range(n):
            x = <cnp.ndarray>al[i]
            self.a_data[i] = <char*>cnp.PyArray_DATA(x)
            self.b_data[i] = <char*>cnp.PyArray_DATA(<cnp.ndarray>bl[i])
            self.sizes[i] = cnp.PyArray_SIZE(x)
            self.is64[i] = cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE
            self.total += self.sizes[i]
        self._check_overlap(fn, a_name, b_name, single)

    def __dealloc__(self):
        free(self.a_data)
        free(self.b_data)
        free(self.sizes)
        free(self.is64)

    cdef int _check_overlap(self, str fn, str a_name, str b_name, bint single) except -1:
        """No two non-empty buffers share memory: sort the 2n spans by start, sweep."""
        cdef Span* spans = <Span*>malloc(max(2 * self.n, 1) * sizeof(Span))
        cdef Py_ssize_t i, m = 0, nbytes, widest = -1
        cdef char* reach = NULL
        if spans == NULL:
            raise MemoryError()
        try:
            for i in range(self.n):
                nbytes = self.sizes[i] * (8 if self.is64[i] else 4)
                if nbytes == 0:
                    continue
                spans[m].lo = self.a_data[i]
                spans[m].hi = self.a_data[i] + nbytes
                spans[m].index = 2 * i
                spans[m + 1].lo = self.b_data[i]
                spans[m + 1].hi = self.b_data[i] + nbytes
                spans[m + 1].index = 2 * i + 1
                m += 2
            qsort(spans, m, sizeof(Span), _span_cmp)
            for i in range(m):
                if widest >= 0 and spans[i].lo < reach:
                    raise ValueError(
                        f"{fn}: {self._name(spans[widest].index, a_name, b_name, single)} and "
                        f"{self._name(spans[i].index, a_name, b_name, single)} overlap in "
                        f"memory; every buffer must be a separate array")
                if widest < 0 or spans[i].hi > reach:
                    reach = spans[i].hi
                    widest = i
        finally:
            free(spans)
        return 0

    cdef str _name(self, Py_ssize_t index, str a_name, str b_name, bint single):
        name = b_name if index & 1 else a_name
        return name if single else f"{name}[{index // 2}]"

    def __len__(self):
        return self.n

    cdef void _run(self, int lerp_or_swap, const LerpCoef* coef, int n_threads) noexcept nogil:
        cdef Job job
        cdef Py_ssize_t i
        job.coef = coef
        for i in range(self.n):
            if lerp_or_swap == 0:
                job.kind = LERP_F64 if self.is64[i] else LERP_F32
            else:
                job.kind = SWAP_64 if self.is64[i] else SWAP_32
            job.a = self.a_data[i]
            job.b = self.b_data[i]
            parallel_spans(job_span, &job, self.sizes[i], n_threads)

    cpdef lerp(self, double decay, int n_threads):
        """a[i] = torch.lerp(a[i], b[i], 1 - decay) for every pair (decay checked by the
        caller: finite, in [0, 1])."""
        cdef LerpCoef coef
        lerp_coef(decay, &coef)
        if self.total >= NOGIL_MIN_SIZE:
            with nogil:
                self._run(0, &coef, n_threads)
        else:
            self._run(0, &coef, n_threads)

    cpdef swap(self, int n_threads):
        """Exchange the contents of a[i] and b[i] for every pair (needs b_written)."""
        if self.total >= NOGIL_MIN_SIZE:
            with nogil:
                self._run(1, NULL, n_threads)
        else:
            self._run(1, NULL, n_threads)

    cpdef copy(self, bint a_to_b):
        """Copy a[i] into b[i] (``a_to_b``) or b[i] into a[i], for every pair."""
        cdef Py_ssize_t i, nbytes
        with nogil:
            for i in range(self.n):
                nbytes = self.sizes[i] * (8 if self.is64[i] else 4)
                if nbytes == 0:
                    continue
                if a_to_b:
                    memcpy(self.b_data[i], self.a_data[i], nbytes)
                else:
                    memcpy(self.a_data[i], self.b_data[i], nbytes)


# ---------------------------------------------------------------------------------------
# Array arguments (scalar ones: fastlr._core.args)
# ---------------------------------------------------------------------------------------
def check_arrays(str fn, str name, object arrays, bint written=True):
    """Validate one array or a list of arrays on their own (types, dtype, layout,
    writeability) and return them as a list. Overlap is checked by `_Pairs`."""
    cdef list al = _as_list(fn, name, arrays)
    cdef bint single = cnp.PyArray_Check(arrays)
    cdef Py_ssize_t i
    for i in range(len(al)):
        _check_one(fn, name if single else f"{name}[{i}]", al[i], written)
    return al


# ---------------------------------------------------------------------------------------
# Python-callable kernels
# ---------------------------------------------------------------------------------------
def ema_update(ema, param, *, decay, n_threads=None):
    """Exponential moving average in place: ``ema = lerp(ema, param, 1 - decay)``.

    torch's definition (``torch._foreach_lerp_(ema, param, 1 - decay)`` in
    ``torch.optim.swa_utils.get_ema_multi_avg_fn`` and timm's ``ModelEmaV3``), i.e.
    ``ema = decay * ema + (1 - decay) * param`` computed as torch's lerp, with
    ``w = 1 - decay`` in the arrays' dtype::

        ema = ema + w * (param - ema)          if w < 0.5
        ema = param - (param - ema) * (1 - w)  otherwise

    Everything is validated before any buffer is written.

    Parameters
    ----------
    ema : numpy.ndarray or list of numpy.ndarray
        The averages, written in place: an array, or a list of arrays updated in one
        compiled call. Each shares dtype (float32/float64), shape and contiguous layout
        with its ``param``.
    param : numpy.ndarray or list of numpy.ndarray
        The current values, only read (they may be read-only); as many as ``ema``.
    decay : float
        Weight of the old average, a finite number in [0, 1] (0 copies ``param``, 1
        leaves ``ema`` as it is).
    n_threads : int, optional
        Threads for the update; None uses :func:`fastlr.get_num_threads`.

    Returns
    -------
    None
        ``ema`` is updated in place.

    Raises
    ------
    TypeError
        An argument is not a float32/float64 ndarray (or list of them), or a pair's
        dtypes differ.
    ValueError
        The lists differ in length, a pair's shapes or layouts differ, an ``ema`` array
        is read-only or overlaps another, or ``decay`` is not in [0, 1].

    Examples
    --------
    >>> e = np.zeros(3); p = np.ones(3)
    >>> kernels.ema_update(e, p, decay=0.75)
    >>> e
    array([0.25, 0.25, 0.25])
    """
    cdef str fn = "fastlr.kernels.ema_update"
    cdef double d = checked_real(fn, "decay", decay, CLOSED_UNIT)
    cdef int nt = threads_arg(fn, n_threads)
    cdef _Pairs pairs = _Pairs(fn, "ema", "param", ema, param, False)
    pairs.lerp(d, nt)


def swap_buffers(a, b, *, n_threads=None):
    """Exchange the contents of ``a`` and ``b`` in place, in one pass.

    The bits move unchanged; swapping twice restores both exactly.

    Parameters
    ----------
    a, b : numpy.ndarray or list of numpy.ndarray
        Two arrays, or two equally long lists of arrays; each pair shares dtype
        (float32/float64), shape and contiguous layout; all are writeable and no two
        overlap. Both are written.
    n_threads : int, optional
        Threads for the copy; None uses :func:`fastlr.get_num_threads`.

    Returns
    -------
    None
        ``a`` and ``b`` are updated in place.

    Raises
    ------
    TypeError
        An argument is not a float32/float64 ndarray (or list of them), or a pair's
        dtypes differ.
    ValueError
        The lists differ in length, a pair's shapes or layouts differ, an array is
        read-only, or two arrays overlap.

    Examples
    --------
    >>> a = np.zeros(2); b = np.ones(2)
    >>> kernels.swap_buffers(a, b)
    >>> a, b
    (array([1., 1.]), array([0., 0.]))
    """
    cdef str fn = "fastlr.kernels.swap_buffers"
    cdef int nt = threads_arg(fn, n_threads)
    cdef _Pairs pairs = _Pairs(fn, "a", "b", a, b, True)
    pairs.swap(nt)
