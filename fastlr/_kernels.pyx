# fastlr/_kernels.pyx -- optimizer update kernels, in place on float32/float64 buffers.
#
# Design notes
# ------------
# a) What is generated. The optimizer table (fastlr/_specs.py) drives, through the Tempita
#    templates setup.py renders before cythonize: the C API's hyperparameter structs and
#    declarations (_kernels.pxd from _kernels.pxd.tp); the C API's functions and the
#    validated Python kernels (_kernels_api.pxi from _kernels_api.pxi.tp, included at the
#    end of this file); the family numbers, per-dtype adapters and CoreTable
#    (fastlr/_core/families.pxd from families.pxd.tp). This file holds what is written once
#    for all families: OpenMP, the threaded loop, jobs, argument checks.
# b) What is hand-written per family: the maths only. Its coefficient struct and function
#    (hyperparameters -> per-step coefficients, in double, bias corrections as torch) and
#    its fused-type core loop, in fastlr/_core/loops.pxd, which reads every buffer once and
#    writes it once: no second pass, no temporaries, no OpenMP inside.
# c) C level. One `noexcept nogil` function per (optimizer, dtype) on raw pointers, a length
#    and a hyperparameter struct (declared in _kernels.pxd: the C API other Cython code
#    cimports): coefficients once, then the core loop of the CPU's instruction-set variant.
# d) Threaded loop. `parallel_spans` splits [0, n) into at most n_threads cache-line aligned
#    spans, one OpenMP thread each, and stays serial below PARALLEL_MIN_SIZE elements. Updates
#    are element-wise, so the split never changes a bit of the result.
# e) Arithmetic. The cores follow torch.optim's single-tensor path operation by operation in
#    the buffers' dtype (lerp for the first moments, `v*b2 + (1-b2)*g*g`, eps outside the
#    square root), so float32 results track torch to the last bits. One deliberate
#    difference: Adam multiplies sqrt(v) by 1/sqrt(1 - beta2^t) instead of dividing by
#    sqrt(1 - beta2^t), which saves a division per element (the divider bounds Adam in
#    cache) and moves results by about an ulp. Build flags: -O3 -fno-math-errno
#    -ffp-contract=off, never -ffast-math (setup.py).
# f) Python layer. The kernels (`sgd`, ..., `adamw`, ...) validate everything (types,
#    dtypes, shapes, layout, writeability, overlap, missing or superfluous state,
#    hyperparameter ranges) before any buffer is touched, in compiled code through NumPy's
#    C API, then release the GIL for the update. `fastlr.kernels` re-exports them.
#
# Argument directions on the kernels: param and state buffers are IN/OUT, grad is IN only
# (read-only gradient arrays are accepted).

cimport cython
cimport numpy as cnp

from fastlr._core.arrays cimport layout_name, same_shape
from fastlr._core.args cimport (CLOSED_UNIT, FINITE, NONNEG, UNIT, checked_real, flag_arg,
                                set_threads_default, step_arg, threads_arg)

from cpython.pycapsule cimport PyCapsule_GetPointer

from fastlr._core.families cimport CoreTable
from fastlr._core.loops cimport core_fn, nadam_mu_of
from cython.parallel cimport prange
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport int64_t


import numpy as np

cnp.import_array()

# ---------------------------------------------------------------------------------------
# OpenMP, degrading to a serial build when the compiler has none (no bare `cimport openmp`)
# ---------------------------------------------------------------------------------------
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTLR_HAVE_OPENMP 1
    static int fastlr_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FASTLR_HAVE_OPENMP 0
    static int fastlr_omp_max_threads(void) { return 1; }
    #endif

    /* GNU OpenMP's thread pool does not survive fork(): a child that opens a parallel
       region after its parent has used one waits forever for threads that are not there.
       So a forked child runs serial until it calls fastlr.set_num_threads itself. */
    static int fastlr_forked_child = 0;
    #if defined(__unix__) || defined(__APPLE__)
    #include <pthread.h>
    static void fastlr_atfork_child(void) { fastlr_forked_child = 1; }
    static int fastlr_register_atfork(void) {
        return pthread_atfork(NULL, NULL, fastlr_atfork_child);
    }
    #else
    static int fastlr_register_atfork(void) { return 0; }
    #endif
    """
    int FASTLR_HAVE_OPENMP
    int fastlr_omp_max_threads() noexcept nogil
    int fastlr_forked_child
    int fastlr_register_atfork() noexcept nogil

cdef enum:
    # Spans handed to threads start on multiples of this many elements (256 bytes for float32).
    SPAN_ALIGN = 64
    # Limits on what one call validates: param, grad and up to three state buffers.
    MAX_ARRAYS = 5
    # The GIL is released for spans at least this long (below it, releasing costs more than
    # it lets other threads gain).
    NOGIL_MIN_SIZE = 4096


# The core loops in use: the fastest compiled variant this CPU runs (fastlr/_core/dispatch.py).
cdef const CoreTable* CORES = NULL
cdef str _cpu_target = ""


def _set_cores(str target):
    """Use the core loops compiled for ``target`` (a name of fastlr._core.dispatch.TARGETS).
    Not thread-safe: call it when no kernel is running. Optimizers built before the call
    keep the loops they were built with."""
    global CORES, _cpu_target
    from fastlr._core import dispatch as _dispatch, engine as _optim, sklearn_kernels as _sk

    capsule = _dispatch.table(target)
    _sk._set_cores(_dispatch.sklearn_table(target))
    CORES = <const CoreTable*>PyCapsule_GetPointer(capsule, b"fastlr.CoreTable")
    _CAPSULES[target] = capsule             # keep the capsule (and its module) alive
    _cpu_target = target
    _optim._set_cores(capsule)


_CAPSULES = {}


def cpu_target():
    """The instruction-set variant of the core loops in use: 'x86-64-v3' or 'baseline'."""
    return _cpu_target


cdef int max_threads() noexcept nogil:
    if fastlr_forked_child:
        return 1
    return fastlr_omp_max_threads()


cdef int usable_threads(int n_threads) noexcept nogil:
    if fastlr_forked_child:
        return 1
    return n_threads


if fastlr_register_atfork() != 0:
    raise ImportError("fastlr._kernels: pthread_atfork failed")


cdef void parallel_spans(span_fn fn, void* ctx, Py_ssize_t n, int n_threads) noexcept nogil:
    cdef Py_ssize_t n_spans, span, i, start, stop
    if n_threads <= 1 or n < PARALLEL_MIN_SIZE or fastlr_forked_child:
        fn(ctx, 0, n)
        return
    # Every span gets at least PARALLEL_MIN_SIZE / 2 elements.
    n_spans = min(<Py_ssize_t>n_threads, n // (PARALLEL_MIN_SIZE // 2))
    if n_spans <= 1:
        fn(ctx, 0, n)
        return
    span = (n + n_spans - 1) // n_spans
    span = (span + SPAN_ALIGN - 1) // SPAN_ALIGN * SPAN_ALIGN
    for i in prange(n_spans, schedule="static", num_threads=n_spans):
        start = i * span
        stop = min(start + span, n)
        if start < stop:
            fn(ctx, start, stop)


# ---------------------------------------------------------------------------------------
# Jobs: one update over one span of buffers, run through parallel_spans
# ---------------------------------------------------------------------------------------
ctypedef struct Job:
    core_fn core          # the per-dtype core, called on [start, stop)
    const void* coef      # its coefficients (the family's XCoef)
    char* ptrs[5]         # param, grad, then the state buffers (NULL when unused)
    Py_ssize_t itemsize


cdef inline char* _at(char* ptr, Py_ssize_t offset) noexcept nogil:
    return NULL if ptr == NULL else ptr + offset


cdef void job_span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Job* job = <Job*>ctx
    cdef char* ptrs[5]
    cdef Py_ssize_t offset = start * job.itemsize
    cdef int k
    for k in range(5):
        ptrs[k] = _at(job.ptrs[k], offset)
    job.core(ptrs, stop - start, job.coef)


cdef inline void run_job(core_fn core, const void* coef, Py_ssize_t itemsize,
                         void* p0, const void* p1, void* p2, void* p3, void* p4,
                         Py_ssize_t n, int n_threads) noexcept nogil:
    cdef Job job
    job.core = core
    job.coef = coef
    job.itemsize = itemsize
    job.ptrs[0] = <char*>p0
    job.ptrs[1] = <char*>p1
    job.ptrs[2] = <char*>p2
    job.ptrs[3] = <char*>p3
    job.ptrs[4] = <char*>p4
    parallel_spans(job_span, &job, n, n_threads)


# NAdam's mu_t for C callers that keep mu_product themselves.
cdef double nadam_mu(double beta1, double momentum_decay, int64_t step) noexcept nogil:
    return nadam_mu_of(beta1, momentum_decay, step)


# =======================================================================================
# Python layer: thread setting, validation, the callable kernels
# =======================================================================================

cdef int _n_threads_setting = 0      # 0: follow the OpenMP maximum, read at call time

#: True when this build has OpenMP (large spans use several threads).
HAVE_OPENMP = bool(FASTLR_HAVE_OPENMP)


def get_num_threads():
    """The thread count kernels use when called with ``n_threads=None``.

    It is the value given to :func:`set_num_threads`, or else the OpenMP maximum read now
    (so ``OMP_NUM_THREADS`` and threadpoolctl apply). A build without OpenMP returns 1.
    """
    if fastlr_forked_child:
        return 1
    if _n_threads_setting > 0:
        return _n_threads_setting
    return max(1, fastlr_omp_max_threads())


def set_num_threads(n_threads):
    """Set the thread count for ``n_threads=None``; ``None`` restores the OpenMP default.

    In a process forked from one that ran fastlr (a ``fork`` multiprocessing worker, a
    data loader), kernels run on one thread: GNU OpenMP's thread pool does not survive
    ``fork`` and a parallel region in the child would hang. Calling ``set_num_threads`` in
    the child lifts that; do it only when the parent never opened an OpenMP region (or use
    the ``spawn`` / ``forkserver`` start methods, whose workers start fresh).
    """
    global _n_threads_setting, fastlr_forked_child
    value = 0 if n_threads is None else threads_arg("fastlr.set_num_threads", n_threads)
    fastlr_forked_child = 0
    _n_threads_setting = value


cdef int _default_threads() noexcept nogil:
    """The thread count for n_threads=None (fastlr._core.args.threads_arg asks here)."""
    if fastlr_forked_child:
        return 1
    if _n_threads_setting > 0:
        return _n_threads_setting
    cdef int n = fastlr_omp_max_threads()
    return n if n > 1 else 1


set_threads_default(_default_threads)


def in_forked_child():
    """True in a forked child where fastlr runs serial (see :func:`set_num_threads`)."""
    return bool(fastlr_forked_child)


cdef str _dtype_name(cnp.ndarray a):
    return str(a.dtype)




cdef inline str _layout(cnp.ndarray a):
    return layout_name(a)


ctypedef struct Checked:
    int n_arrays
    int type_num            # NPY_FLOAT or NPY_DOUBLE
    Py_ssize_t size         # elements per array
    Py_ssize_t itemsize
    char* data[MAX_ARRAYS]  # NULL for an absent optional buffer


cdef int _check_arrays(str fn, tuple names, tuple arrays, int n_required,
                       Checked* out) except -1:
    """Validate param (arrays[0]), grad (arrays[1]) and state buffers (the rest) for an
    in-place update; the first n_required must be arrays, later ones may be None (absent).
    Raises before anything is written."""
    cdef int k, j, n = len(arrays)
    cdef cnp.ndarray p, a
    cdef int type_num
    cdef bint c_order = True
    cdef char* lo[MAX_ARRAYS]
    cdef char* hi[MAX_ARRAYS]
    out.n_arrays = n
    for k in range(n):
        obj = arrays[k]
        name = names[k]
        if obj is None and k >= n_required:
            out.data[k] = NULL
            continue
        if not cnp.PyArray_Check(obj):
            raise TypeError(f"{fn}: {name} must be a numpy.ndarray of float32 or float64, got "
                            f"{type(obj).__name__}")
        a = <cnp.ndarray>obj
        type_num = cnp.PyArray_TYPE(a)
        if k == 0:
            p = a
            if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
                raise TypeError(f"{fn}: param must have dtype float32 or float64, got "
                                f"{_dtype_name(a)}")
            out.type_num = type_num
            out.size = cnp.PyArray_SIZE(a)
            out.itemsize = cnp.PyArray_ITEMSIZE(a)
            if not (cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a)):
                raise ValueError(f"{fn}: param must be contiguous (C or F order), got strides "
                                 f"{(<object>a).strides} for shape {(<object>a).shape}; an "
                                 f"in-place update cannot be applied to a copy")
            c_order = cnp.PyArray_IS_C_CONTIGUOUS(a)
        else:
            if type_num != out.type_num:
                raise TypeError(f"{fn}: {name} has dtype {_dtype_name(a)} but param has dtype "
                                f"{_dtype_name(p)}; the arrays of one parameter share its "
                                f"dtype (float32 or float64)")
            if not same_shape(a, p):
                raise ValueError(f"{fn}: {name} has shape {(<object>a).shape} but param has "
                                 f"shape {(<object>p).shape}; they must be equal")
            if not (cnp.PyArray_IS_C_CONTIGUOUS(a) if c_order
                    else cnp.PyArray_IS_F_CONTIGUOUS(a)):
                raise ValueError(f"{fn}: {name} is {_layout(a)} but param is {_layout(p)}; the "
                                 f"arrays of one parameter must share one contiguous layout")
        if cnp.PyArray_ISBYTESWAPPED(a):
            raise TypeError(f"{fn}: {name} has non-native byte order ({a.dtype.str}); use "
                            f"{name}.astype({name}.dtype.newbyteorder('='))")
        if not cnp.PyArray_ISALIGNED(a):
            raise ValueError(f"{fn}: {name} is not aligned in memory; an in-place update needs "
                             f"an aligned buffer")
        if k != 1 and not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError(f"{fn}: {name} is read-only (flags.writeable=False) but is updated "
                             f"in place")
        out.data[k] = <char*>cnp.PyArray_DATA(a)
        lo[k] = out.data[k]
        hi[k] = lo[k] + out.size * out.itemsize
    # Overlap: no written buffer may share memory with another buffer (the grad included).
    if out.size > 0:
        for k in range(n):
            if out.data[k] == NULL:
                continue
            for j in range(k + 1, n):
                if out.data[j] != NULL and lo[k] < hi[j] and lo[j] < hi[k]:
                    raise ValueError(f"{fn}: {names[k]} and {names[j]} overlap in memory; "
                                     f"every buffer of an update must be a separate array")
    return 0


cdef int _need(str fn, bint needed, object buf, str buf_name, str why) except -1:
    if needed and buf is None:
        raise ValueError(f"{fn}: {why} needs {buf_name}, got None "
                         f"(fastlr.kernels.make_state allocates it)")
    if not needed and buf is not None:
        raise ValueError(f"{fn}: {buf_name} was given but {why} does not use it; pass None")
    return 0


cdef int _run(core_fn core, const void* coef, Checked* c, int nt) except -1:
    """Run a validated update: the GIL is released for large arrays."""
    cdef int k
    for k in range(c.n_arrays, MAX_ARRAYS):
        c.data[k] = NULL
    if c.size >= NOGIL_MIN_SIZE:
        with nogil:
            run_job(core, coef, c.itemsize, c.data[0], c.data[1], c.data[2], c.data[3],
                    c.data[4], c.size, nt)
    else:
        run_job(core, coef, c.itemsize, c.data[0], c.data[1], c.data[2], c.data[3],
                c.data[4], c.size, nt)
    return 0


# The C API and the validated kernels, per family of the table (generated).
include "_kernels_api.pxi"


def _init_cores():
    from fastlr._core import dispatch as _dispatch
    _set_cores(_dispatch.default_target())
