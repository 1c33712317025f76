# fastlr/_core/sklearn_kernels.pyx -- scikit-learn-convention optimizer kernels, in place.
#
# Design notes
# ------------
# a) What. The update rules of sklearn.neural_network._stochastic_optimizers (the optimizers
#    of MLPClassifier/MLPRegressor), which differ from torch's: SGD keeps the learning rate
#    inside the velocity (v = momentum*v - lr*g; p += v, or p += momentum*v - lr*g with
#    Nesterov), Adam uses the "epsilon-hat" form (lr_t = lr*sqrt(1-b2^t)/(1-b1^t);
#    p -= lr_t*m/(sqrt(v)+eps)). fastlr.compat.sklearn builds its classes on these.
# b) Same numbers. Every loop performs sklearn's NumPy expressions operation by operation, in
#    the same order, with the same operand precisions (-ffp-contract=off, no fast-math), so
#    results are bit-identical to sklearn's. Precisions follow NumPy >= 2 (NEP 50): Python
#    floats (momentum, lr, beta_1, eps, 1-beta_1...) are rounded to the arrays' dtype, but
#    Adam's lr_t is a float64 NumPy scalar, so for float32 arrays the term
#    -lr_t*m/(sqrt(v)+eps) is computed in float64 and param is updated in float64 and rounded
#    to float32 once (what `param += update` does with a float64 update). Under NumPy 1.x's
#    value-based casting sklearn stays in float32 there; results then differ by rounding.
# c) Layout. Fused-type (`floating`) single-pass loops, `noexcept nogil`, no temporaries,
#    every buffer read once and written once. Large spans are split across OpenMP threads by
#    fastlr._kernels' `parallel_spans` (serial below its PARALLEL_MIN_SIZE); updates are
#    element-wise, so every thread count gives the same bits. The module is compiled once,
#    for the baseline ISA (SSE2 vectors; not dispatched to x86-64-v3 as _core's loops are),
#    and float32 Adam divides in float64 (note b): in cache it is divider-bound at about
#    2-3x the time of fastlr.kernels.adam, still 2-5x faster than sklearn's NumPy.
# d) Python layer. `sgd_sklearn` / `adam_sklearn` validate everything (types, dtype match,
#    shapes, layout, writeability, overlap, hyperparameter ranges) before any buffer is
#    touched, then release the GIL for large updates. `_sgd_sklearn_list` /
#    `_adam_sklearn_list` (private, for fastlr.compat.sklearn) do the same for lists of
#    arrays: everything is checked first, then every array is updated in one C call.
#
# Argument directions: param and the state buffers (velocity, m, v) are IN/OUT; grad is IN
# only (read-only gradient arrays are accepted).

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport pow, sqrt, sqrtf
from libc.stdlib cimport free, malloc

from fastlr._core.args cimport (CLOSED_UNIT, NONNEG, UNIT, checked_real, flag_arg, step_arg,
                                threads_arg)
from fastlr._core.arrays cimport check_like, layout_name, same_shape
from fastlr._kernels cimport parallel_spans, span_fn


import numpy as np


cnp.import_array()

cdef enum:
    # The GIL is released for updates at least this long (as in fastlr._kernels).
    NOGIL_MIN_SIZE = 4096


# ---------------------------------------------------------------------------------------
# Core loops (sklearn's expressions, same operations, same order)
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sgd_core(floating* p, const floating* g, floating* vel,  # IN/OUT, IN, IN/OUT
                          Py_ssize_t n, double lr_d, double mom_d, bint nesterov) noexcept nogil:
    # sklearn: v = momentum * v - lr * g;  p += (momentum * v - lr * g) if nesterov else v
    cdef floating lr = <floating>lr_d
    cdef floating mom = <floating>mom_d
    cdef floating u
    cdef Py_ssize_t i
    if nesterov:
        for i in range(n):
            u = mom * vel[i] - lr * g[i]
            vel[i] = u
            p[i] = p[i] + (mom * u - lr * g[i])
    else:
        for i in range(n):
            u = mom * vel[i] - lr * g[i]
            vel[i] = u
            p[i] = p[i] + u


ctypedef struct AdamC:
    double beta1, one_minus_beta1, beta2, one_minus_beta2, eps
    double neg_lr_t          # -(lr * sqrt(1 - beta2**t) / (1 - beta1**t)), a float64


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adam_core(floating* p, const floating* g,        # IN/OUT, IN
                           floating* m, floating* v,              # IN/OUT, IN/OUT
                           Py_ssize_t n, const AdamC* c) noexcept nogil:
    # sklearn: m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g**2);
    #          p += -lr_t * m / (sqrt(v) + eps)     (lr_t a float64 scalar: see note b)
    cdef floating b1 = <floating>c.beta1
    cdef floating omb1 = <floating>c.one_minus_beta1
    cdef floating b2 = <floating>c.beta2
    cdef floating omb2 = <floating>c.one_minus_beta2
    cdef floating eps = <floating>c.eps
    cdef double neg_lr = c.neg_lr_t
    cdef floating gi, mi, vi
    cdef Py_ssize_t i
    for i in range(n):
        gi = g[i]
        mi = b1 * m[i] + omb1 * gi
        m[i] = mi
        vi = b2 * v[i] + omb2 * (gi * gi)
        v[i] = vi
        if floating is double:
            p[i] = p[i] + (neg_lr * mi) / (sqrt(vi) + eps)
        else:
            p[i] = <float>(<double>p[i] + (neg_lr * <double>mi) / <double>(sqrtf(vi) + eps))


# ---- span functions for parallel_spans: one update of one array ----
ctypedef struct Job:
    char* p
    char* g
    char* s1                 # velocity (SGD) or m (Adam)
    char* s2                 # v (Adam); NULL for SGD
    Py_ssize_t n
    int type_num             # NPY_FLOAT or NPY_DOUBLE
    double lr, momentum      # SGD
    int nesterov             # SGD
    AdamC adam               # Adam


cdef void sgd_span(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Job* j = <Job*>ctx
    if j.type_num == cnp.NPY_DOUBLE:
        sgd_core((<double*>j.p) + a, (<const double*>j.g) + a, (<double*>j.s1) + a, b - a,
                 j.lr, j.momentum, j.nesterov)
    else:
        sgd_core((<float*>j.p) + a, (<const float*>j.g) + a, (<float*>j.s1) + a, b - a,
                 j.lr, j.momentum, j.nesterov)


cdef void adam_span(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Job* j = <Job*>ctx
    if j.type_num == cnp.NPY_DOUBLE:
        adam_core((<double*>j.p) + a, (<const double*>j.g) + a, (<double*>j.s1) + a,
                  (<double*>j.s2) + a, b - a, &j.adam)
    else:
        adam_core((<float*>j.p) + a, (<const float*>j.g) + a, (<float*>j.s1) + a,
                  (<float*>j.s2) + a, b - a, &j.adam)


cdef void run_jobs(span_fn fn, Job* jobs, Py_ssize_t n_jobs, int n_threads) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n_jobs):
        parallel_spans(fn, &jobs[k], jobs[k].n, n_threads)


# =======================================================================================
# Validation (adapted from fastlr._kernels: checks everything before any write; scalar
# arguments: fastlr._core.args)
# =======================================================================================
cdef inline str _layout(cnp.ndarray a):
    return layout_name(a)


cdef int _check(str fn, tuple names, tuple arrays, Job* job) except -1:
    """Validate param (arrays[0]), grad (arrays[1]) and the state buffers (the rest) for an
    in-place update and fill job's pointers, size and dtype. Raises before any write."""
    cdef int k, i, n = len(arrays)
    cdef cnp.ndarray p = None, a
    cdef char* lo[4]
    cdef char* hi[4]
    cdef Py_ssize_t nbytes = 0
    for k in range(n):
        obj = arrays[k]
        name = names[k]
        if not cnp.PyArray_Check(obj):
            raise TypeError(f"{fn}: {name} must be a numpy.ndarray of float32 or float64, got "
                            f"{type(obj).__name__}")
        a = <cnp.ndarray>obj
        if k == 0:
            p = a
            job.type_num = cnp.PyArray_TYPE(a)
            if job.type_num != cnp.NPY_FLOAT and job.type_num != cnp.NPY_DOUBLE:
                raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got "
                                f"{a.dtype}")
            if not (cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a)):
                raise ValueError(f"{fn}: {name} must be contiguous (C or F order), got strides "
                                 f"{(<object>a).strides} for shape {(<object>a).shape}; an "
                                 f"in-place update cannot be applied to a copy")
            job.n = cnp.PyArray_SIZE(a)
            nbytes = job.n * cnp.PyArray_ITEMSIZE(a)
        else:
            check_like(fn, name, a, names[0], p)
        if cnp.PyArray_ISBYTESWAPPED(a):
            raise TypeError(f"{fn}: {name} has non-native byte order ({a.dtype.str})")
        if not cnp.PyArray_ISALIGNED(a):
            raise ValueError(f"{fn}: {name} is not aligned in memory")
        if k != 1 and not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError(f"{fn}: {name} is read-only (flags.writeable=False) but is "
                             f"updated in place")
        lo[k] = <char*>cnp.PyArray_DATA(a)
        hi[k] = lo[k] + nbytes
    if nbytes > 0:
        for k in range(n):
            for i in range(k + 1, n):
                if lo[k] < hi[i] and lo[i] < hi[k]:
                    raise ValueError(f"{fn}: {names[k]} and {names[i]} overlap in memory; "
                                     f"every buffer of an update must be a separate array")
    job.p = lo[0]
    job.g = lo[1]
    job.s1 = lo[2]
    job.s2 = lo[3] if n > 3 else NULL
    return 0


cdef int _adam_coef(str fn, AdamC* c, object step, object lr, object beta1, object beta2,
                    object eps) except -1:
    cdef double t = <double>step_arg(fn, step)
    cdef double lr_d = checked_real(fn, "lr", lr, NONNEG)
    c.beta1 = checked_real(fn, "beta1", beta1, UNIT)
    c.beta2 = checked_real(fn, "beta2", beta2, UNIT)
    c.eps = checked_real(fn, "eps", eps, NONNEG)
    c.one_minus_beta1 = 1.0 - c.beta1
    c.one_minus_beta2 = 1.0 - c.beta2
    # sklearn: learning_rate_init * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)  (left to right)
    c.neg_lr_t = -(lr_d * sqrt(1.0 - pow(c.beta2, t)) / (1.0 - pow(c.beta1, t)))
    return 0


cdef void _run(span_fn fn, Job* jobs, Py_ssize_t n_jobs, Py_ssize_t total, int nt):
    if total >= NOGIL_MIN_SIZE:
        with nogil:
            run_jobs(fn, jobs, n_jobs, nt)
    else:
        run_jobs(fn, jobs, n_jobs, nt)


# =======================================================================================
# Python entry points
# =======================================================================================
_SGD_NAMES = ("param", "grad", "velocity")
_ADAM_NAMES = ("param", "grad", "m", "v")


def sgd_sklearn(param, grad, velocity, *, lr, momentum, nesterov, n_threads=None):
    """SGD with momentum as scikit-learn's MLP does it, in place
    (``sklearn.neural_network._stochastic_optimizers.SGDOptimizer``)::

        velocity = momentum * velocity - lr * grad
        param   += momentum * velocity - lr * grad      (nesterov)
        param   += velocity                             (otherwise)

    The learning rate sits inside the velocity (unlike torch). ``param`` and ``velocity``
    are updated in place, ``grad`` is only read; all three share dtype (float32 or float64),
    shape and contiguous layout. ``lr >= 0`` and ``momentum`` in [0, 1] are finite.
    Bit-identical to sklearn's NumPy expressions. ``n_threads=None`` uses
    :func:`fastlr.get_num_threads`. Returns None.
    """
    cdef str fn = "fastlr.kernels.sgd_sklearn"
    cdef Job job
    job.lr = checked_real(fn, "lr", lr, NONNEG)
    job.momentum = checked_real(fn, "momentum", momentum, CLOSED_UNIT)
    job.nesterov = flag_arg(fn, "nesterov", nesterov)
    cdef int nt = threads_arg(fn, n_threads)
    _check(fn, _SGD_NAMES, (param, grad, velocity), &job)
    _run(sgd_span, &job, 1, job.n, nt)


def adam_sklearn(param, grad, m, v, *, step, lr, beta1, beta2, eps, n_threads=None):
    """Adam in scikit-learn's "epsilon-hat" form, in place
    (``sklearn.neural_network._stochastic_optimizers.AdamOptimizer``), ``t = step``::

        m     = beta1 * m + (1 - beta1) * grad
        v     = beta2 * v + (1 - beta2) * grad**2
        lr_t  = lr * sqrt(1 - beta2**t) / (1 - beta1**t)        (a float64)
        param += -lr_t * m / (sqrt(v) + eps)

    eps is added to the uncorrected sqrt(v) (unlike torch). ``step`` is the 1-based update
    number (sklearn's ``t`` after its increment); ``lr`` is the base learning rate
    (``learning_rate_init``). For float32 arrays the last line runs in float64 and param is
    rounded once, as NumPy >= 2 does with sklearn's float64 ``lr_t``. ``param``, ``m``, ``v``
    are updated in place, ``grad`` is only read. Returns None.
    """
    cdef str fn = "fastlr.kernels.adam_sklearn"
    cdef Job job
    _adam_coef(fn, &job.adam, step, lr, beta1, beta2, eps)
    cdef int nt = threads_arg(fn, n_threads)
    _check(fn, _ADAM_NAMES, (param, grad, m, v), &job)
    _run(adam_span, &job, 1, job.n, nt)


cdef object _lists(str fn, tuple names, tuple lists):
    """Check that every argument is a list/tuple of one common length; return it."""
    cdef Py_ssize_t n = -1
    for name, obj in zip(names, lists):
        if not isinstance(obj, (list, tuple)):
            raise TypeError(f"{fn}: {name} must be a list of arrays, got {type(obj).__name__}")
        if n < 0:
            n = len(obj)
        elif len(obj) != n:
            raise ValueError(f"{fn}: {name} has {len(obj)} arrays but {names[0]} has {n}; "
                             f"they must be aligned")
    return n


cdef int _cross_overlap(str fn, tuple names, tuple lists, Py_ssize_t n) except -1:
    """Across the aligned lists (the second one holds the grads, only read): no written
    array may share memory with another array (params[0] is params[1], a grad that views
    another param...). Sorted sweep: O(m log m) for m arrays."""
    if n < 2:
        return 0
    spans = []
    for name, lst in zip(names, lists):
        for k in range(n):
            a = lst[k]
            if a.nbytes:
                spans.append((a.__array_interface__["data"][0], a.nbytes, f"{name}[{k}]",
                              name != names[1]))
    spans.sort()
    reach_any = reach_written = None         # (end address, name) reaching furthest so far
    for lo, nbytes, name, written in spans:
        prev = reach_any if written else reach_written
        if prev is not None and prev[0] > lo:
            raise ValueError(f"{fn}: {prev[1]} and {name} overlap in memory; every buffer "
                             f"of an update must be a separate array")
        if reach_any is None or lo + nbytes > reach_any[0]:
            reach_any = (lo + nbytes, name)
        if written and (reach_written is None or lo + nbytes > reach_written[0]):
            reach_written = (lo + nbytes, name)
    return 0


def _sgd_sklearn_list(params, grads, velocities, *, lr, momentum, nesterov, n_threads=None):
    """:func:`sgd_sklearn` over aligned lists of arrays: every array is checked before any
    is written, then all are updated in one call (fastlr.compat.sklearn.SGDOptimizer)."""
    cdef str fn = "fastlr.compat.sklearn.SGDOptimizer.update_params"
    cdef double lr_d = checked_real(fn, "learning_rate", lr, NONNEG)
    cdef double mom = checked_real(fn, "momentum", momentum, CLOSED_UNIT)
    cdef bint nest = flag_arg(fn, "nesterov", nesterov)
    cdef int nt = threads_arg(fn, n_threads)
    cdef Py_ssize_t k, total = 0, n = _lists(fn, ("params", "grads", "velocities"),
                                             (params, grads, velocities))
    cdef Job* jobs = <Job*>malloc(max(n, 1) * sizeof(Job))
    if jobs == NULL:
        raise MemoryError()
    try:
        for k in range(n):
            _check(fn, (f"params[{k}]", f"grads[{k}]", f"velocities[{k}]"),
                   (params[k], grads[k], velocities[k]), &jobs[k])
            jobs[k].lr = lr_d
            jobs[k].momentum = mom
            jobs[k].nesterov = nest
            total += jobs[k].n
        _cross_overlap(fn, ("params", "grads", "velocities"), (params, grads, velocities), n)
        _run(sgd_span, jobs, n, total, nt)
    finally:
        free(jobs)


def _adam_sklearn_list(params, grads, ms, vs, *, step, lr, beta1, beta2, eps, n_threads=None):
    """:func:`adam_sklearn` over aligned lists of arrays: every array is checked before any
    is written, then all are updated in one call (fastlr.compat.sklearn.AdamOptimizer)."""
    cdef str fn = "fastlr.compat.sklearn.AdamOptimizer.update_params"
    cdef AdamC c
    _adam_coef(fn, &c, step, lr, beta1, beta2, eps)
    cdef int nt = threads_arg(fn, n_threads)
    cdef Py_ssize_t k, total = 0, n = _lists(fn, ("params", "grads", "ms", "vs"),
                                             (params, grads, ms, vs))
    cdef Job* jobs = <Job*>malloc(max(n, 1) * sizeof(Job))
    if jobs == NULL:
        raise MemoryError()
    try:
        for k in range(n):
            _check(fn, (f"params[{k}]", f"grads[{k}]", f"ms[{k}]", f"vs[{k}]"),
                   (params[k], grads[k], ms[k], vs[k]), &jobs[k])
            jobs[k].adam = c
            total += jobs[k].n
        _cross_overlap(fn, ("params", "grads", "ms", "vs"), (params, grads, ms, vs), n)
        _run(adam_span, jobs, n, total, nt)
    finally:
        free(jobs)
