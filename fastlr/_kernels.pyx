# fastlr/_kernels.pyx -- optimizer update kernels, in place on float32/float64 buffers.
#
# Design notes
# ------------
# a) C level. One `noexcept nogil` function per (optimizer, dtype) on raw pointers, a length
#    and a hyperparameter struct (declared in _kernels.pxd: the C API other Cython code
#    cimports). It turns the hyperparameters into per-step coefficients once (bias
#    corrections in double, as torch does), then runs a fused-type core loop that reads every
#    buffer once and writes it once: no second pass, no temporaries, no OpenMP inside. The
#    coefficients and core loops are inline code in _core.pxd, shared with the optimizers.
# b) Threaded loop. `parallel_spans` splits [0, n) into at most n_threads cache-line aligned
#    spans, one OpenMP thread each, and stays serial below PARALLEL_MIN_SIZE elements. Updates
#    are element-wise, so the split never changes a bit of the result.
# c) Arithmetic. The cores follow torch.optim's single-tensor path operation by operation in
#    the buffers' dtype (lerp for the first moments, `v*b2 + (1-b2)*g*g`, eps outside the
#    square root), so float32 results track torch to the last bits. One deliberate
#    difference: Adam multiplies sqrt(v) by 1/sqrt(1 - beta2^t) instead of dividing by
#    sqrt(1 - beta2^t), which saves a division per element (the divider bounds Adam in
#    cache) and moves results by about an ulp. Build flags: -O3 -fno-math-errno
#    -ffp-contract=off, never -ffast-math (setup.py).
# d) Python layer. `sgd`, `rmsprop`, `adam`, `adamw` validate everything (types, dtypes,
#    shapes, layout, writeability, overlap, missing or superfluous state, hyperparameter
#    ranges) before any buffer is touched, in compiled code through NumPy's C API, then
#    release the GIL for the update. `fastlr.kernels` re-exports them.
#
# Argument directions on the kernels: param and state buffers are IN/OUT, grad is IN only
# (read-only gradient arrays are accepted).

cimport cython
cimport numpy as cnp

from fastlr._core.arrays cimport layout_name, real_arg, same_shape

from cpython.pycapsule cimport PyCapsule_GetPointer

from fastlr._core.loops cimport (AdadeltaCoef, AdagradCoef, AdamaxCoef, AdamCoef, CoreTable,
                           LionCoef, NAdamCoef, RAdamCoef, RMSpropCoef, SGDCoef, adadelta_coef,
                           adagrad_coef, adam_coef, adamax_coef, core_fn, lion_coef, nadam_coef,
                           nadam_mu_of, radam_coef, rmsprop_coef, sgd_coef)
from cython.parallel cimport prange
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport int64_t

import operator

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
    from fastlr._core import dispatch as _dispatch, engine as _optim

    capsule = _dispatch.table(target)
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
# The public C API: serial per-dtype functions
# ---------------------------------------------------------------------------------------
cdef void sgd_f32(float* param, const float* grad, float* momentum_buffer,
                  Py_ssize_t n, const SGDHyper* h) noexcept nogil:
    cdef SGDCoef c
    sgd_coef(h, &c)
    run_job(CORES.sgd[0], &c, 4, param, grad, momentum_buffer, NULL, NULL, n, 1)

cdef void sgd_f64(double* param, const double* grad, double* momentum_buffer,
                  Py_ssize_t n, const SGDHyper* h) noexcept nogil:
    cdef SGDCoef c
    sgd_coef(h, &c)
    run_job(CORES.sgd[1], &c, 8, param, grad, momentum_buffer, NULL, NULL, n, 1)

cdef void rmsprop_f32(float* param, const float* grad, float* square_avg,
                      float* momentum_buffer, float* grad_avg,
                      Py_ssize_t n, const RMSpropHyper* h) noexcept nogil:
    cdef RMSpropCoef c
    rmsprop_coef(h, &c)
    run_job(CORES.rmsprop[0], &c, 4, param, grad, square_avg, momentum_buffer, grad_avg, n, 1)

cdef void rmsprop_f64(double* param, const double* grad, double* square_avg,
                      double* momentum_buffer, double* grad_avg,
                      Py_ssize_t n, const RMSpropHyper* h) noexcept nogil:
    cdef RMSpropCoef c
    rmsprop_coef(h, &c)
    run_job(CORES.rmsprop[1], &c, 8, param, grad, square_avg, momentum_buffer, grad_avg, n, 1)

cdef void adam_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                   float* max_exp_avg_sq, Py_ssize_t n, const AdamHyper* h) noexcept nogil:
    cdef AdamCoef c
    adam_coef(h, &c)
    run_job(CORES.adam[0], &c, 4, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, 1)

cdef void adam_f64(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
                   double* max_exp_avg_sq, Py_ssize_t n, const AdamHyper* h) noexcept nogil:
    cdef AdamCoef c
    adam_coef(h, &c)
    run_job(CORES.adam[1], &c, 8, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, 1)


# ---------------------------------------------------------------------------------------
# Jobs: one update over one span of buffers, run through parallel_spans
# ---------------------------------------------------------------------------------------
ctypedef struct Job:
    core_fn core          # the per-dtype core, called on [start, stop)
    const void* coef      # its coefficients (SGDCoef / RMSpropCoef / AdamCoef)
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


# ---- the public C API: threaded per-dtype functions ----
cdef void sgd_f32_parallel(float* param, const float* grad, float* momentum_buffer,
                           Py_ssize_t n, const SGDHyper* h, int n_threads) noexcept nogil:
    cdef SGDCoef c
    sgd_coef(h, &c)
    run_job(CORES.sgd[0], &c, 4, param, grad, momentum_buffer, NULL, NULL, n, n_threads)

cdef void sgd_f64_parallel(double* param, const double* grad, double* momentum_buffer,
                           Py_ssize_t n, const SGDHyper* h, int n_threads) noexcept nogil:
    cdef SGDCoef c
    sgd_coef(h, &c)
    run_job(CORES.sgd[1], &c, 8, param, grad, momentum_buffer, NULL, NULL, n, n_threads)

cdef void rmsprop_f32_parallel(float* param, const float* grad, float* square_avg,
                               float* momentum_buffer, float* grad_avg,
                               Py_ssize_t n, const RMSpropHyper* h, int n_threads) noexcept nogil:
    cdef RMSpropCoef c
    rmsprop_coef(h, &c)
    run_job(CORES.rmsprop[0], &c, 4, param, grad, square_avg, momentum_buffer, grad_avg,
            n, n_threads)

cdef void rmsprop_f64_parallel(double* param, const double* grad, double* square_avg,
                               double* momentum_buffer, double* grad_avg,
                               Py_ssize_t n, const RMSpropHyper* h, int n_threads) noexcept nogil:
    cdef RMSpropCoef c
    rmsprop_coef(h, &c)
    run_job(CORES.rmsprop[1], &c, 8, param, grad, square_avg, momentum_buffer, grad_avg,
            n, n_threads)

cdef void adam_f32_parallel(float* param, const float* grad, float* exp_avg,
                            float* exp_avg_sq, float* max_exp_avg_sq, Py_ssize_t n,
                            const AdamHyper* h, int n_threads) noexcept nogil:
    cdef AdamCoef c
    adam_coef(h, &c)
    run_job(CORES.adam[0], &c, 4, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
            n, n_threads)

cdef void adam_f64_parallel(double* param, const double* grad, double* exp_avg,
                            double* exp_avg_sq, double* max_exp_avg_sq, Py_ssize_t n,
                            const AdamHyper* h, int n_threads) noexcept nogil:
    cdef AdamCoef c
    adam_coef(h, &c)
    run_job(CORES.adam[1], &c, 8, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
            n, n_threads)


# ---- the public C API: Adagrad, Adadelta, Adamax, NAdam, RAdam, Lion ----
cdef double nadam_mu(double beta1, double momentum_decay, int64_t step) noexcept nogil:
    return nadam_mu_of(beta1, momentum_decay, step)

cdef void adagrad_f32(float* param, const float* grad, float* state_sum,
        Py_ssize_t n, const AdagradHyper* h) noexcept nogil:
    cdef AdagradCoef c
    adagrad_coef(h, &c)
    run_job(CORES.adagrad[0], &c, 4, param, grad, state_sum, NULL, NULL, n, 1)

cdef void adagrad_f32_parallel(float* param, const float* grad, float* state_sum,
        Py_ssize_t n, const AdagradHyper* h, int n_threads) noexcept nogil:
    cdef AdagradCoef c
    adagrad_coef(h, &c)
    run_job(CORES.adagrad[0], &c, 4, param, grad, state_sum, NULL, NULL, n, n_threads)

cdef void adagrad_f64(double* param, const double* grad, double* state_sum,
        Py_ssize_t n, const AdagradHyper* h) noexcept nogil:
    cdef AdagradCoef c
    adagrad_coef(h, &c)
    run_job(CORES.adagrad[1], &c, 8, param, grad, state_sum, NULL, NULL, n, 1)

cdef void adagrad_f64_parallel(double* param, const double* grad, double* state_sum,
        Py_ssize_t n, const AdagradHyper* h, int n_threads) noexcept nogil:
    cdef AdagradCoef c
    adagrad_coef(h, &c)
    run_job(CORES.adagrad[1], &c, 8, param, grad, state_sum, NULL, NULL, n, n_threads)

cdef void adadelta_f32(float* param, const float* grad, float* square_avg, float* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h) noexcept nogil:
    cdef AdadeltaCoef c
    adadelta_coef(h, &c)
    run_job(CORES.adadelta[0], &c, 4, param, grad, square_avg, acc_delta, NULL, n, 1)

cdef void adadelta_f32_parallel(float* param, const float* grad, float* square_avg, float* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h, int n_threads) noexcept nogil:
    cdef AdadeltaCoef c
    adadelta_coef(h, &c)
    run_job(CORES.adadelta[0], &c, 4, param, grad, square_avg, acc_delta, NULL, n, n_threads)

cdef void adadelta_f64(double* param, const double* grad, double* square_avg, double* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h) noexcept nogil:
    cdef AdadeltaCoef c
    adadelta_coef(h, &c)
    run_job(CORES.adadelta[1], &c, 8, param, grad, square_avg, acc_delta, NULL, n, 1)

cdef void adadelta_f64_parallel(double* param, const double* grad, double* square_avg, double* acc_delta,
        Py_ssize_t n, const AdadeltaHyper* h, int n_threads) noexcept nogil:
    cdef AdadeltaCoef c
    adadelta_coef(h, &c)
    run_job(CORES.adadelta[1], &c, 8, param, grad, square_avg, acc_delta, NULL, n, n_threads)

cdef void adamax_f32(float* param, const float* grad, float* exp_avg, float* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h) noexcept nogil:
    cdef AdamaxCoef c
    adamax_coef(h, &c)
    run_job(CORES.adamax[0], &c, 4, param, grad, exp_avg, exp_inf, NULL, n, 1)

cdef void adamax_f32_parallel(float* param, const float* grad, float* exp_avg, float* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h, int n_threads) noexcept nogil:
    cdef AdamaxCoef c
    adamax_coef(h, &c)
    run_job(CORES.adamax[0], &c, 4, param, grad, exp_avg, exp_inf, NULL, n, n_threads)

cdef void adamax_f64(double* param, const double* grad, double* exp_avg, double* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h) noexcept nogil:
    cdef AdamaxCoef c
    adamax_coef(h, &c)
    run_job(CORES.adamax[1], &c, 8, param, grad, exp_avg, exp_inf, NULL, n, 1)

cdef void adamax_f64_parallel(double* param, const double* grad, double* exp_avg, double* exp_inf,
        Py_ssize_t n, const AdamaxHyper* h, int n_threads) noexcept nogil:
    cdef AdamaxCoef c
    adamax_coef(h, &c)
    run_job(CORES.adamax[1], &c, 8, param, grad, exp_avg, exp_inf, NULL, n, n_threads)

cdef void nadam_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h) noexcept nogil:
    cdef NAdamCoef c
    nadam_coef(h, &c)
    run_job(CORES.nadam[0], &c, 4, param, grad, exp_avg, exp_avg_sq, NULL, n, 1)

cdef void nadam_f32_parallel(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h, int n_threads) noexcept nogil:
    cdef NAdamCoef c
    nadam_coef(h, &c)
    run_job(CORES.nadam[0], &c, 4, param, grad, exp_avg, exp_avg_sq, NULL, n, n_threads)

cdef void nadam_f64(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h) noexcept nogil:
    cdef NAdamCoef c
    nadam_coef(h, &c)
    run_job(CORES.nadam[1], &c, 8, param, grad, exp_avg, exp_avg_sq, NULL, n, 1)

cdef void nadam_f64_parallel(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const NAdamHyper* h, int n_threads) noexcept nogil:
    cdef NAdamCoef c
    nadam_coef(h, &c)
    run_job(CORES.nadam[1], &c, 8, param, grad, exp_avg, exp_avg_sq, NULL, n, n_threads)

cdef void radam_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h) noexcept nogil:
    cdef RAdamCoef c
    radam_coef(h, &c)
    run_job(CORES.radam[0], &c, 4, param, grad, exp_avg, exp_avg_sq, NULL, n, 1)

cdef void radam_f32_parallel(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h, int n_threads) noexcept nogil:
    cdef RAdamCoef c
    radam_coef(h, &c)
    run_job(CORES.radam[0], &c, 4, param, grad, exp_avg, exp_avg_sq, NULL, n, n_threads)

cdef void radam_f64(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h) noexcept nogil:
    cdef RAdamCoef c
    radam_coef(h, &c)
    run_job(CORES.radam[1], &c, 8, param, grad, exp_avg, exp_avg_sq, NULL, n, 1)

cdef void radam_f64_parallel(double* param, const double* grad, double* exp_avg, double* exp_avg_sq,
        Py_ssize_t n, const RAdamHyper* h, int n_threads) noexcept nogil:
    cdef RAdamCoef c
    radam_coef(h, &c)
    run_job(CORES.radam[1], &c, 8, param, grad, exp_avg, exp_avg_sq, NULL, n, n_threads)

cdef void lion_f32(float* param, const float* grad, float* exp_avg,
        Py_ssize_t n, const LionHyper* h) noexcept nogil:
    cdef LionCoef c
    lion_coef(h, &c)
    run_job(CORES.lion[0], &c, 4, param, grad, exp_avg, NULL, NULL, n, 1)

cdef void lion_f32_parallel(float* param, const float* grad, float* exp_avg,
        Py_ssize_t n, const LionHyper* h, int n_threads) noexcept nogil:
    cdef LionCoef c
    lion_coef(h, &c)
    run_job(CORES.lion[0], &c, 4, param, grad, exp_avg, NULL, NULL, n, n_threads)

cdef void lion_f64(double* param, const double* grad, double* exp_avg,
        Py_ssize_t n, const LionHyper* h) noexcept nogil:
    cdef LionCoef c
    lion_coef(h, &c)
    run_job(CORES.lion[1], &c, 8, param, grad, exp_avg, NULL, NULL, n, 1)

cdef void lion_f64_parallel(double* param, const double* grad, double* exp_avg,
        Py_ssize_t n, const LionHyper* h, int n_threads) noexcept nogil:
    cdef LionCoef c
    lion_coef(h, &c)
    run_job(CORES.lion[1], &c, 8, param, grad, exp_avg, NULL, NULL, n, n_threads)


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
    value = 0 if n_threads is None else _threads_arg("fastlr.set_num_threads", n_threads)
    fastlr_forked_child = 0
    _n_threads_setting = value


def in_forked_child():
    """True in a forked child where fastlr runs serial (see :func:`set_num_threads`)."""
    return bool(fastlr_forked_child)


cdef int _threads_arg(str fn, object n_threads) except -1:
    if n_threads is None:
        if fastlr_forked_child:
            return 1
        if _n_threads_setting > 0:
            return _n_threads_setting
        return max(1, fastlr_omp_max_threads())
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"{fn}: n_threads must be an int >= 1 or None, got "
                        f"{type(n_threads).__name__} {n_threads!r}")
    if n_threads < 1 or n_threads > 4096:
        raise ValueError(f"{fn}: n_threads must be between 1 and 4096 or None, got {n_threads}")
    return <int>n_threads


cdef inline double _real(str fn, str name, object value) except? -1.0:
    return real_arg(fn, name, value)


cdef double _nonneg(str fn, str name, object value) except? -1.0:
    cdef double v = _real(fn, name, value)
    if v < 0.0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {value!r}")
    return v


cdef double _unit(str fn, str name, object value) except? -1.0:
    """A decay rate in [0, 1)."""
    cdef double v = _real(fn, name, value)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{fn}: {name} must be in [0, 1), got {value!r}")
    return v


cdef int64_t _step(str fn, object step) except -1:
    if type(step) is int and 1 <= step < 2 ** 63:     # the common case
        return <int64_t>step
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"{fn}: step must be an int >= 1, got {step!r}")
    try:
        s = operator.index(step)
    except TypeError:
        raise TypeError(f"{fn}: step must be an int >= 1 (the 1-based update number), got "
                        f"{type(step).__name__} {step!r}") from None
    if s < 1:
        raise ValueError(f"{fn}: step must be >= 1 (the 1-based update number), got {s}")
    if s >= 2 ** 63:
        raise ValueError(f"{fn}: step must be < 2**63, got {s}")
    return <int64_t>s


cdef bint _flag(str fn, str name, object value) except -1:
    if value is True or value is False:
        return value is True
    if not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


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


_SGD_NAMES = ("param", "grad", "momentum_buffer")
_RMSPROP_NAMES = ("param", "grad", "square_avg", "momentum_buffer", "grad_avg")
_ADAM_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def sgd(param, grad, momentum_buffer=None, *, step, lr, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0, maximize=False, n_threads=None):
    """SGD with momentum, dampening, Nesterov and L2 weight decay, in place (torch.optim.SGD).

    With ``g = -grad if maximize else grad``::

        g   = g + weight_decay * param                       (if weight_decay != 0)
        buf = g                                  (step == 1: the buffer starts as g)
        buf = momentum * buf + (1 - dampening) * g           (step > 1)
        g   = g + momentum * buf if nesterov else buf         (if momentum != 0)
        param = param - lr * g

    ``param`` (and ``momentum_buffer``, required exactly when ``momentum != 0``) are updated
    in place; ``grad`` is only read. ``step`` is the 1-based update number of these
    buffers. ``lr`` is in parameter units per gradient unit. ``n_threads=None`` uses
    :func:`fastlr.get_num_threads`. Returns None.
    """
    cdef str fn = "fastlr.kernels.sgd"
    cdef SGDHyper h
    cdef Checked c
    h.step = _step(fn, step)
    h.lr = _nonneg(fn, "lr", lr)
    h.momentum = _nonneg(fn, "momentum", momentum)
    h.dampening = _real(fn, "dampening", dampening)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.nesterov = _flag(fn, "nesterov", nesterov)
    h.maximize = _flag(fn, "maximize", maximize)
    if h.nesterov and (h.momentum <= 0.0 or h.dampening != 0.0):
        raise ValueError(f"{fn}: nesterov=True requires momentum > 0 and dampening == 0, got "
                         f"momentum={momentum!r}, dampening={dampening!r}")
    cdef int nt = _threads_arg(fn, n_threads)
    _need(fn, h.momentum != 0.0, momentum_buffer, "momentum_buffer",
          f"momentum={momentum!r}")
    _check_arrays(fn, _SGD_NAMES, (param, grad, momentum_buffer), 2, &c)
    cdef SGDCoef coef
    sgd_coef(&h, &coef)
    _run(CORES.sgd[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def rmsprop(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr,
            alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, maximize=False,
            n_threads=None):
    """RMSprop, optionally centered and with momentum, in place (torch.optim.RMSprop).

    With ``g = -grad if maximize else grad`` and ``g = g + weight_decay * param``::

        square_avg = alpha * square_avg + (1 - alpha) * g**2
        grad_avg   = grad_avg + (1 - alpha) * (g - grad_avg)  (centered: grad_avg given)
        avg        = sqrt(square_avg - grad_avg**2) + eps      (centered)
                   = sqrt(square_avg) + eps                    (otherwise; eps outside sqrt)
        buf   = momentum * buf + g / avg;  param = param - lr * buf   (momentum > 0)
        param = param - lr * g / avg                                  (momentum == 0)

    No bias correction. ``momentum_buffer`` is required exactly when ``momentum > 0`` (it
    starts at zeros); passing ``grad_avg`` selects the centered variant. Returns None.
    """
    cdef str fn = "fastlr.kernels.rmsprop"
    cdef RMSpropHyper h
    cdef Checked c
    h.lr = _nonneg(fn, "lr", lr)
    h.alpha = _nonneg(fn, "alpha", alpha)
    h.eps = _nonneg(fn, "eps", eps)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.momentum = _nonneg(fn, "momentum", momentum)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _need(fn, h.momentum > 0.0, momentum_buffer, "momentum_buffer", f"momentum={momentum!r}")
    _check_arrays(fn, _RMSPROP_NAMES, (param, grad, square_avg, momentum_buffer, grad_avg), 3,
                  &c)
    cdef RMSpropCoef coef
    rmsprop_coef(&h, &coef)
    _run(CORES.rmsprop[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


cdef _adam(str fn, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2,
           eps, weight_decay, bint decoupled, maximize, n_threads):
    cdef AdamHyper h
    cdef Checked c
    h.step = _step(fn, step)
    h.lr = _nonneg(fn, "lr", lr)
    h.beta1 = _unit(fn, "beta1", beta1)
    h.beta2 = _unit(fn, "beta2", beta2)
    h.eps = _nonneg(fn, "eps", eps)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.decoupled_weight_decay = decoupled
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, _ADAM_NAMES, (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq), 4,
                  &c)
    cdef AdamCoef coef
    adam_coef(&h, &coef)
    _run(CORES.adam[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr, beta1=0.9,
         beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
         maximize=False, n_threads=None):
    """Adam, with AMSGrad and L2 or decoupled weight decay, in place (torch.optim.Adam).

    With ``g = -grad if maximize else grad`` and ``t = step`` (1-based)::

        param = param * (1 - lr * weight_decay)     (decoupled_weight_decay, i.e. AdamW)
        g     = g + weight_decay * param            (otherwise, if weight_decay != 0)
        exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        v = max(max_exp_avg_sq, exp_avg_sq) -> max_exp_avg_sq   (AMSGrad: buffer given)
        v = exp_avg_sq                                            (otherwise)
        param = param - lr / (1 - beta1**t) * exp_avg / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    eps is added after the bias correction of sqrt(v), as torch does. Passing
    ``max_exp_avg_sq`` selects AMSGrad (the max is over the raw second moment). Returns None.
    """
    _adam("fastlr.kernels.adam", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr,
          beta1, beta2, eps, weight_decay,
          _flag("fastlr.kernels.adam", "decoupled_weight_decay", decoupled_weight_decay),
          maximize, n_threads)


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr, beta1=0.9,
          beta2=0.999, eps=1e-8, weight_decay=1e-2, maximize=False, n_threads=None):
    """AdamW: :func:`adam` with decoupled weight decay (torch.optim.AdamW).

    ``param = param * (1 - lr * weight_decay)`` before the Adam update; the decay uses the
    current lr, so a scheduled lr scales it too. Default ``weight_decay=1e-2``. Returns None.
    """
    _adam("fastlr.kernels.adamw", param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr,
          beta1, beta2, eps, weight_decay, True, maximize, n_threads)


# ---- Adagrad, Adadelta, Adamax, NAdam, RAdam, Lion ----------------------------------------
cdef double _closed_unit(str fn, str name, object value) except? -1.0:
    """A rate in [0, 1]."""
    cdef double v = _real(fn, name, value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{fn}: {name} must be in [0, 1], got {value!r}")
    return v


def adagrad(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False, n_threads=None):
    """Adagrad with lr decay and L2 weight decay, in place (torch.optim.Adagrad).

    With ``g = -grad if maximize else grad`` and ``t = step`` (1-based)::

        g         = g + weight_decay * param                  (if weight_decay != 0)
        clr       = lr / (1 + (t - 1) * lr_decay)
        state_sum = state_sum + g**2
        param     = param - clr * g / (sqrt(state_sum) + eps)

    ``state_sum`` starts at ``initial_accumulator_value`` (torch's default 0;
    :func:`fastlr.kernels.make_state` fills it). ``lr`` is in parameter units per
    normalised gradient. Returns None.
    """
    cdef str fn = "fastlr.kernels.adagrad"
    cdef AdagradHyper h
    cdef Checked c
    h.step = _step(fn, step)
    h.lr = _nonneg(fn, "lr", lr)
    h.lr_decay = _nonneg(fn, "lr_decay", lr_decay)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.eps = _nonneg(fn, "eps", eps)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "state_sum"), (param, grad, state_sum), 3, &c)
    cdef AdagradCoef coef
    adagrad_coef(&h, &coef)
    _run(CORES.adagrad[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def adadelta(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
             weight_decay=0.0, maximize=False, n_threads=None):
    """Adadelta with L2 weight decay, in place (torch.optim.Adadelta).

    With ``g = -grad if maximize else grad`` and ``g = g + weight_decay * param``::

        square_avg = rho * square_avg + (1 - rho) * g**2
        delta      = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta  = rho * acc_delta + (1 - rho) * delta**2
        param      = param - lr * delta

    eps sits inside both square roots; both buffers start at zeros; no step count is
    needed. Returns None.
    """
    cdef str fn = "fastlr.kernels.adadelta"
    cdef AdadeltaHyper h
    cdef Checked c
    h.lr = _nonneg(fn, "lr", lr)
    h.rho = _closed_unit(fn, "rho", rho)
    h.eps = _nonneg(fn, "eps", eps)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "square_avg", "acc_delta"),
                  (param, grad, square_avg, acc_delta), 4, &c)
    cdef AdadeltaCoef coef
    adadelta_coef(&h, &coef)
    _run(CORES.adadelta[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def adamax(param, grad, exp_avg, exp_inf, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=0.0, maximize=False, n_threads=None):
    """Adamax (Adam with an infinity norm), in place (torch.optim.Adamax).

    With ``g = -grad if maximize else grad``, ``g = g + weight_decay * param`` and
    ``t = step`` (1-based)::

        exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_inf = maximum(beta2 * exp_inf, |g| + eps)       (NaN in either gives NaN)
        param   = param - lr / (1 - beta1**t) * exp_avg / exp_inf

    Both buffers start at zeros. Returns None.
    """
    cdef str fn = "fastlr.kernels.adamax"
    cdef AdamaxHyper h
    cdef Checked c
    h.step = _step(fn, step)
    h.lr = _nonneg(fn, "lr", lr)
    h.beta1 = _unit(fn, "beta1", beta1)
    h.beta2 = _unit(fn, "beta2", beta2)
    h.eps = _nonneg(fn, "eps", eps)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "exp_avg", "exp_inf"), (param, grad, exp_avg, exp_inf),
                  4, &c)
    cdef AdamaxCoef coef
    adamax_coef(&h, &coef)
    _run(CORES.adamax[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def nadam(param, grad, exp_avg, exp_avg_sq, *, step, mu_product, lr, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False,
          maximize=False, n_threads=None):
    """NAdam (Adam with Nesterov momentum), in place (torch.optim.NAdam). Returns the new
    ``mu_product``: pass it to the next call (start with 1.0).

    With ``g = -grad if maximize else grad``, ``t = step`` (1-based) and
    ``mu(t) = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))``::

        param = param * (1 - lr * weight_decay)    (decoupled_weight_decay)
        g     = g + weight_decay * param           (otherwise, if weight_decay != 0)
        P     = mu_product * mu(t)                 (the returned mu_product)
        exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        denom = sqrt(exp_avg_sq / (1 - beta2**t)) + eps
        param = param - lr * (1 - mu(t)) / (1 - P) * g / denom
        param = param - lr * mu(t+1) / (1 - P * mu(t+1)) * exp_avg / denom

    ``mu_product`` is the product mu(1)...mu(t-1), a float in [0, 1]; torch keeps it in
    each parameter's state (as fastlr.NAdam does). Both buffers start at zeros.
    """
    cdef str fn = "fastlr.kernels.nadam"
    cdef NAdamHyper h
    cdef Checked c
    h.step = _step(fn, step)
    h.mu_product = _closed_unit(fn, "mu_product", mu_product)
    h.lr = _nonneg(fn, "lr", lr)
    h.beta1 = _unit(fn, "beta1", beta1)
    h.beta2 = _unit(fn, "beta2", beta2)
    h.eps = _nonneg(fn, "eps", eps)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.momentum_decay = _nonneg(fn, "momentum_decay", momentum_decay)
    h.decoupled_weight_decay = _flag(fn, "decoupled_weight_decay", decoupled_weight_decay)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "exp_avg", "exp_avg_sq"),
                  (param, grad, exp_avg, exp_avg_sq), 4, &c)
    cdef NAdamCoef coef
    nadam_coef(&h, &coef)
    _run(CORES.nadam[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)
    return coef.mu_product


def radam(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled_weight_decay=False, maximize=False, n_threads=None):
    """RAdam (rectified Adam), in place (torch.optim.RAdam).

    With ``g = -grad if maximize else grad``, ``t = step`` (1-based), weight decay as in
    :func:`nadam`, ``rho_inf = 2 / (1 - beta2) - 1`` and
    ``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)``::

        exp_avg    = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g**2
        m_hat = exp_avg / (1 - beta1**t)
        r     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        param = param - m_hat * lr * sqrt(1 - beta2**t) / (sqrt(exp_avg_sq) + eps) * r
                                                              (rho_t > 5)
        param = param - m_hat * lr                             (otherwise: the first steps)

    eps is added to the uncorrected sqrt(exp_avg_sq), as torch does. Returns None.
    """
    cdef str fn = "fastlr.kernels.radam"
    cdef RAdamHyper h
    cdef Checked c
    h.step = _step(fn, step)
    h.lr = _nonneg(fn, "lr", lr)
    h.beta1 = _unit(fn, "beta1", beta1)
    h.beta2 = _unit(fn, "beta2", beta2)
    h.eps = _nonneg(fn, "eps", eps)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.decoupled_weight_decay = _flag(fn, "decoupled_weight_decay", decoupled_weight_decay)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "exp_avg", "exp_avg_sq"),
                  (param, grad, exp_avg, exp_avg_sq), 4, &c)
    cdef RAdamCoef coef
    radam_coef(&h, &coef)
    _run(CORES.radam[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def lion(param, grad, exp_avg, *, lr, beta1=0.9, beta2=0.99, weight_decay=1e-3,
         maximize=False, n_threads=None):
    """Lion (evolved sign momentum), in place, as optax.lion defines it.

    With ``g = -grad if maximize else grad``::

        u       = sign((1 - beta1) * g + beta1 * exp_avg)     (sign(0) = 0, NaN stays NaN)
        exp_avg = (1 - beta2) * g + beta2 * exp_avg
        param   = param - lr * (u + weight_decay * param)

    The decay is decoupled and scaled by lr (optax's add_decayed_weights before
    scale_by_learning_rate). ``exp_avg`` (optax's ``mu``) starts at zeros. Default
    ``weight_decay=1e-3`` as optax. Returns None.
    """
    cdef str fn = "fastlr.kernels.lion"
    cdef LionHyper h
    cdef Checked c
    h.lr = _nonneg(fn, "lr", lr)
    h.beta1 = _closed_unit(fn, "beta1", beta1)
    h.beta2 = _closed_unit(fn, "beta2", beta2)
    h.weight_decay = _nonneg(fn, "weight_decay", weight_decay)
    h.maximize = _flag(fn, "maximize", maximize)
    cdef int nt = _threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "exp_avg"), (param, grad, exp_avg), 3, &c)
    cdef LionCoef coef
    lion_coef(&h, &coef)
    _run(CORES.lion[c.type_num == cnp.NPY_DOUBLE], &coef, &c, nt)


def _init_cores():
    from fastlr._core import dispatch as _dispatch
    _set_cores(_dispatch.default_target())
