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
# c) Mixed dtypes. MLPRegressor on float32 X keeps float64 targets, so its grads are float64
#    while its weights are float32; sklearn's arithmetic then makes the state float64 from
#    the first update on (`momentum * velocity - lr * grad` is float64) and `param += update`
#    rounds a float64 update into the float32 param. The loops have that case too: MODE_MIX
#    (float32 param, float64 grad and state, in place) and MODE_LIFT (the first such update:
#    the float32 state is read, with sklearn's float32 products, and written as float64 to
#    new buffers, which the list entry points put in the caller's state lists, as sklearn
#    rebinds its lists). See sklearn_loops.pxd. No other mix is accepted.
# d) Layout. The loops live in sklearn_loops.pxd and are compiled per instruction-set level
#    with the other core loops (cores.pxi: baseline and x86-64-v3, chosen at import by
#    fastlr._core.dispatch through fastlr._kernels._set_cores, which hands this module a
#    SklearnCores capsule). Single-pass, no temporaries, every buffer read once and written
#    once. Large spans are split across OpenMP threads by fastlr._kernels' `parallel_spans`
#    (serial below its PARALLEL_MIN_SIZE); updates are element-wise, so every thread count
#    gives the same bits.
# e) Python layer. `sgd_sklearn` / `adam_sklearn` validate everything (types, dtypes, shapes,
#    layout, writeability, overlap, hyperparameter ranges) before any buffer is touched, then
#    release the GIL for large updates. `ListStep` (private, for fastlr.compat.sklearn) does
#    the same for aligned lists of arrays, every array checked before any is written, in one
#    C call per step. It caches what cannot change between steps: the written arrays (params
#    and state) are validated, with their pairwise overlap, when first seen, and kept; per
#    step it checks in C, without formatting a string, that the same array objects were
#    passed and that their pointer, dtype, shape, layout and writeability still hold, then
#    checks each grad (dtype, shape, layout, no overlap with a written array: a binary search
#    over the cached sorted spans). Anything unexpected goes to the slow path, which names
#    the argument in its error.
#
# Argument directions: param and the state buffers (velocity, m, v) are IN/OUT; grad is IN
# only (read-only gradient arrays are accepted).

cimport numpy as cnp
from libc.math cimport pow, sqrt
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer

from fastlr._core.args cimport (CLOSED_UNIT, NONNEG, UNIT, checked_real, flag_arg,
                                layout_hint, ndarray_hint, step_arg, threads_arg)
from fastlr._core.arrays cimport layout_name, same_shape
from fastlr._core.sklearn_loops cimport (AdamC, MODE_F32, MODE_F64, MODE_LIFT, MODE_MIX,
                                         SkJob, SklearnCores, sk_span_fn)
from fastlr._kernels cimport parallel_spans, span_fn


import numpy as np


cnp.import_array()

cdef enum:
    # The GIL is released for updates at least this long (as in fastlr._kernels).
    NOGIL_MIN_SIZE = 4096
    OP_SGD = 0
    OP_ADAM = 1

# The core loops in use, set by fastlr._kernels._set_cores (the CPU dispatch).
cdef const SklearnCores* CORES = NULL
_CAPSULE = None


def _set_cores(capsule):
    global CORES, _CAPSULE
    CORES = <const SklearnCores*>PyCapsule_GetPointer(capsule, b"fastlr.SklearnCores")
    _CAPSULE = capsule


cdef void run_jobs(int op, SkJob* jobs, Py_ssize_t n_jobs, int n_threads) noexcept nogil:
    cdef Py_ssize_t k
    cdef sk_span_fn fn
    for k in range(n_jobs):
        fn = CORES.sgd[jobs[k].mode] if op == OP_SGD else CORES.adam[jobs[k].mode]
        parallel_spans(<span_fn>fn, &jobs[k], jobs[k].n, n_threads)


cdef int _run(int op, SkJob* jobs, Py_ssize_t n_jobs, Py_ssize_t total, int nt) except -1:
    if CORES == NULL:
        raise RuntimeError("fastlr._core.sklearn_kernels: no core loops set (import fastlr "
                           "first)")
    if total >= NOGIL_MIN_SIZE:
        with nogil:
            run_jobs(op, jobs, n_jobs, nt)
    else:
        run_jobs(op, jobs, n_jobs, nt)
    return 0


# =======================================================================================
# Validation, with messages (the single-array kernels, and the lists' slow path)
# =======================================================================================
cdef inline bint _float_type(int t) noexcept:
    return t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE


cdef inline bint _same_layout(cnp.ndarray a, cnp.ndarray ref) noexcept:
    """``a`` is contiguous in ``ref``'s order (C when ``ref`` is C-contiguous, else F)."""
    return (cnp.PyArray_IS_C_CONTIGUOUS(a) if cnp.PyArray_IS_C_CONTIGUOUS(ref)
            else cnp.PyArray_IS_F_CONTIGUOUS(a))


cdef int _mode(int p_type, int g_type, int s_type) noexcept:
    """The loop for these dtypes (MODE_*), or -1 when the combination is not sklearn's."""
    if p_type == g_type:
        if s_type == p_type:
            return MODE_F32 if p_type == cnp.NPY_FLOAT else MODE_F64
        return -1
    if p_type == cnp.NPY_FLOAT and g_type == cnp.NPY_DOUBLE:
        if s_type == cnp.NPY_DOUBLE:
            return MODE_MIX
        if s_type == cnp.NPY_FLOAT:
            return MODE_LIFT
    return -1


cdef int _check_array(str fn, str name, object obj, bint written) except -1:
    """One array's own facts: an aligned, native-order float32/float64 ndarray; writeable
    when ``written``."""
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray of float32 or float64, got "
                        f"{type(obj).__name__}{ndarray_hint(obj)}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if not _float_type(cnp.PyArray_TYPE(a)):
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {a.dtype}")
    if cnp.PyArray_ISBYTESWAPPED(a):
        raise TypeError(f"{fn}: {name} has non-native byte order ({a.dtype.str})")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{fn}: {name} is not aligned in memory")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{fn}: {name} is read-only (flags.writeable=False) but is "
                         f"updated in place")
    return 0


cdef int _check_fits(str fn, str name, cnp.ndarray a, str ref_name,
                     cnp.ndarray ref) except -1:
    """``a`` has ``ref``'s shape and contiguous layout; else a ValueError naming both."""
    if not same_shape(a, ref):
        raise ValueError(f"{fn}: {name} has shape {(<object>a).shape} but {ref_name} has "
                         f"shape {(<object>ref).shape}; they must be equal")
    if not _same_layout(a, ref):
        raise ValueError(f"{fn}: {name} is {layout_name(a)} but {ref_name} is "
                         f"{layout_name(ref)}; they must share one contiguous layout")
    return 0


cdef int _check_job(str fn, tuple names, tuple arrays, SkJob* job, bint lift_ok) except -1:
    """Validate param (arrays[0]), grad (arrays[1]) and the state buffers (the rest, one
    dtype) for an in-place update and fill job's pointers, size and mode. Raises before any
    write. A float32 state with a float64 grad for a float32 param (MODE_LIFT) is accepted
    only when ``lift_ok``; the caller then supplies the new float64 buffers."""
    cdef Py_ssize_t k, i, n = len(arrays)
    cdef cnp.ndarray p, g, a
    cdef char* lo[4]
    cdef char* hi[4]
    for k in range(n):
        _check_array(fn, names[k], arrays[k], k != 1)
    p = <cnp.ndarray>arrays[0]
    g = <cnp.ndarray>arrays[1]
    if not (cnp.PyArray_IS_C_CONTIGUOUS(p) or cnp.PyArray_IS_F_CONTIGUOUS(p)):
        raise ValueError(f"{fn}: {names[0]} must be contiguous (C or F order), got strides "
                         f"{(<object>p).strides} for shape {(<object>p).shape}; an in-place "
                         f"update cannot be applied to a copy")
    cdef int p_type = cnp.PyArray_TYPE(p), g_type = cnp.PyArray_TYPE(g)
    if g_type != p_type and not (p_type == cnp.NPY_FLOAT and g_type == cnp.NPY_DOUBLE):
        raise TypeError(f"{fn}: {names[1]} has dtype {g.dtype} but {names[0]} has dtype "
                        f"{p.dtype}; they must be equal (float32 or float64), or float64 "
                        f"grads with float32 params (what sklearn's MLPRegressor passes for "
                        f"float32 X)")
    cdef int s_type = cnp.PyArray_TYPE(<cnp.ndarray>arrays[2])
    for k in range(1, n):
        a = <cnp.ndarray>arrays[k]
        if k >= 2:
            if cnp.PyArray_TYPE(a) != s_type:
                raise TypeError(f"{fn}: {names[k]} has dtype {a.dtype} but {names[2]} has "
                                f"dtype {arrays[2].dtype}; the state buffers share one dtype")
            if _mode(p_type, g_type, s_type) < 0 or (
                    not lift_ok and _mode(p_type, g_type, s_type) == MODE_LIFT):
                if g_type == p_type:
                    raise TypeError(f"{fn}: {names[k]} has dtype {a.dtype} but {names[0]} "
                                    f"has dtype {p.dtype}; they must be equal (float32 or "
                                    f"float64)")
                raise TypeError(f"{fn}: {names[k]} has dtype {a.dtype}, but with a float64 "
                                f"{names[1]} for a float32 {names[0]} the state is float64 "
                                f"(sklearn's arithmetic promotes it)")
        _check_fits(fn, names[k], a, names[0], p)
    for k in range(n):
        a = <cnp.ndarray>arrays[k]
        lo[k] = <char*>cnp.PyArray_DATA(a)
        hi[k] = lo[k] + cnp.PyArray_NBYTES(a)
    if cnp.PyArray_SIZE(p) > 0:
        for k in range(n):
            for i in range(k + 1, n):
                if lo[k] < hi[i] and lo[i] < hi[k]:
                    raise ValueError(f"{fn}: {names[k]} and {names[i]} overlap in memory; "
                                     f"every buffer of an update must be a separate array")
    job.n = cnp.PyArray_SIZE(p)
    job.mode = _mode(p_type, g_type, s_type)
    job.p = lo[0]
    job.g = lo[1]
    job.s1 = lo[2]
    job.s2 = lo[3] if n > 3 else NULL
    job.s1_in = job.s1
    job.s2_in = job.s2
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


# =======================================================================================
# Python entry points: one array
# =======================================================================================
_SGD_NAMES = ("param", "grad", "velocity")
_ADAM_NAMES = ("param", "grad", "m", "v")


def sgd_sklearn(param, grad, velocity, *, lr, momentum, nesterov, n_threads=None):
    """SGD with momentum as scikit-learn's MLP does it, in place.

    sklearn's ``sklearn.neural_network._stochastic_optimizers.SGDOptimizer``::

        velocity = momentum * velocity - lr * grad
        param   += momentum * velocity - lr * grad      (nesterov)
        param   += velocity                             (otherwise)

    The learning rate sits inside the velocity (unlike torch). Bit-identical to sklearn's
    NumPy expressions.

    Parameters
    ----------
    param : numpy.ndarray
        Parameters (float32 or float64, C- or F-contiguous), updated in place.
    grad : numpy.ndarray
        Gradient, only read: ``param``'s dtype, shape and layout, except that a float32
        ``param`` may take a float64 ``grad`` with a float64 ``velocity`` (sklearn's
        MLPRegressor on float32 data: the update is float64 and param is rounded once).
    velocity : numpy.ndarray
        sklearn's velocity (starts at zeros), ``grad``'s dtype, updated in place.
    lr : float
        Learning rate (sklearn's ``learning_rate_init``), finite and ``>= 0``.
    momentum : float
        Momentum, finite, in [0, 1].
    nesterov : bool
        Nesterov's momentum (sklearn's ``nesterovs_momentum``).
    n_threads : int, optional
        Threads for the update; None uses :func:`fastlr.get_num_threads`.

    Returns
    -------
    None
        The arrays are updated in place.

    Raises
    ------
    TypeError
        An argument is not a float32/float64 ndarray, or the dtypes do not pair up as
        above.
    ValueError
        Shapes or layouts differ, an array is not contiguous, read-only or overlaps
        another, or a hyperparameter is out of range. Nothing is written then.

    Examples
    --------
    >>> p = np.ones(3); g = np.full(3, 0.5); vel = np.zeros(3)
    >>> kernels.sgd_sklearn(p, g, vel, lr=0.1, momentum=0.9, nesterov=False)
    >>> vel
    array([-0.05, -0.05, -0.05])
    >>> p
    array([0.95, 0.95, 0.95])
    """
    cdef str fn = "fastlr.kernels.sgd_sklearn"
    cdef SkJob job
    job.lr = checked_real(fn, "lr", lr, NONNEG)
    job.momentum = checked_real(fn, "momentum", momentum, CLOSED_UNIT)
    job.nesterov = flag_arg(fn, "nesterov", nesterov)
    cdef int nt = threads_arg(fn, n_threads)
    _check_job(fn, _SGD_NAMES, (param, grad, velocity), &job, False)
    _run(OP_SGD, &job, 1, job.n, nt)


def adam_sklearn(param, grad, m, v, *, step, lr, beta1, beta2, eps, n_threads=None):
    """Adam in scikit-learn's "epsilon-hat" form, in place.

    sklearn's ``sklearn.neural_network._stochastic_optimizers.AdamOptimizer``, with
    ``t = step``::

        m     = beta1 * m + (1 - beta1) * grad
        v     = beta2 * v + (1 - beta2) * grad**2
        lr_t  = lr * sqrt(1 - beta2**t) / (1 - beta1**t)        (a float64)
        param += -lr_t * m / (sqrt(v) + eps)

    eps is added to the uncorrected sqrt(v) (unlike torch). For float32 arrays the last
    line runs in float64 and param is rounded once, as NumPy >= 2 does with sklearn's
    float64 ``lr_t``.

    Parameters
    ----------
    param : numpy.ndarray
        Parameters (float32 or float64, C- or F-contiguous), updated in place.
    grad : numpy.ndarray
        Gradient, only read: ``param``'s dtype, shape and layout, except that a float32
        ``param`` may take a float64 ``grad`` with float64 ``m`` and ``v`` (sklearn's
        MLPRegressor on float32 data).
    m : numpy.ndarray
        First moment estimate (starts at zeros), ``grad``'s dtype, updated in place.
    v : numpy.ndarray
        Second moment estimate (starts at zeros), ``grad``'s dtype, updated in place.
    step : int
        The 1-based update number (sklearn's ``t`` after its increment), ``>= 1``.
    lr : float
        Base learning rate (sklearn's ``learning_rate_init``).
    beta1, beta2 : float
        Decay rates of the moment estimates, in [0, 1).
    eps : float
        Added to ``sqrt(v)`` in the denominator.
    n_threads : int, optional
        Threads for the update; None uses :func:`fastlr.get_num_threads`.

    Returns
    -------
    None
        The arrays are updated in place.

    Raises
    ------
    TypeError
        An argument is not a float32/float64 ndarray, or the dtypes do not pair up as
        above.
    ValueError
        Shapes or layouts differ, an array is not contiguous, read-only or overlaps
        another, ``step < 1`` or a hyperparameter is out of range. Nothing is written then.

    Examples
    --------
    >>> p = np.ones(2); g = np.full(2, 0.5); m1 = np.zeros(2); v1 = np.zeros(2)
    >>> kernels.adam_sklearn(p, g, m1, v1, step=1, lr=0.1, beta1=0.9, beta2=0.999,
    ...                      eps=1e-8)
    >>> p.round(6)
    array([0.9, 0.9])
    """
    cdef str fn = "fastlr.kernels.adam_sklearn"
    cdef SkJob job
    _adam_coef(fn, &job.adam, step, lr, beta1, beta2, eps)
    cdef int nt = threads_arg(fn, n_threads)
    _check_job(fn, _ADAM_NAMES, (param, grad, m, v), &job, False)
    _run(OP_ADAM, &job, 1, job.n, nt)


# =======================================================================================
# Lists of arrays, one call per step (fastlr.compat.sklearn)
# =======================================================================================
ctypedef struct Span:
    char* lo
    char* hi


cdef int _span_cmp(const void* a, const void* b) noexcept nogil:
    cdef char* x = (<const Span*>a).lo
    cdef char* y = (<const Span*>b).lo
    return -1 if x < y else (1 if x > y else 0)


cdef inline bint _live_ok(cnp.ndarray a, SkJob* job, char* ptr, int type_num, cnp.ndarray p,
                          bint c_order) noexcept:
    """A cached written array still has the pointer, dtype, shape (param's), layout and
    writeability it was validated with."""
    cdef int flags = cnp.PyArray_FLAGS(a)
    return (<char*>cnp.PyArray_DATA(a) == ptr and cnp.PyArray_TYPE(a) == type_num
            and (flags & cnp.NPY_ARRAY_WRITEABLE) and (flags & cnp.NPY_ARRAY_ALIGNED)
            and (flags & (cnp.NPY_ARRAY_C_CONTIGUOUS if c_order else
                          cnp.NPY_ARRAY_F_CONTIGUOUS))
            and cnp.PyArray_SIZE(a) == job.n and (a is p or same_shape(a, p)))


cdef class ListStep:
    """The validated update of aligned lists of arrays, for one optimizer (private).

    ``sgd(params, grads, velocities, lr, momentum, nesterov, n_threads)`` and ``adam(params,
    grads, ms, vs, step, lr, beta1, beta2, eps, n_threads)`` check everything before any
    write, then update every array in one C call; ``adam`` returns sklearn's ``lr_t``.
    ``fn`` names the caller in errors. See the module's design notes (e) for what is cached.
    """
    cdef readonly str fn
    cdef tuple state_names
    cdef int n_state
    cdef list kept              # the written arrays validated: [params..., state0..., ...]
    cdef Py_ssize_t n
    cdef SkJob* jobs
    cdef int* types             # the dtype number of each kept array
    cdef Span* spans            # the written arrays' memory, sorted, pairwise disjoint
    cdef Py_ssize_t n_spans

    def __cinit__(self, str fn, tuple state_names):
        self.fn = fn
        self.state_names = state_names
        self.n_state = len(state_names)
        if not 1 <= self.n_state <= 2:
            raise ValueError("ListStep: one or two state lists")
        self.kept = None
        self.n = 0
        self.jobs = NULL
        self.types = NULL
        self.spans = NULL

    def __dealloc__(self):
        free(self.jobs)
        free(self.types)
        free(self.spans)

    def __reduce__(self):
        # a cache: a copy starts empty
        return (ListStep, (self.fn, self.state_names))

    # -- the per-step checks ------------------------------------------------------------
    cdef Py_ssize_t _lists(self, object params, object grads, tuple states) except -1:
        """Every argument a list/tuple, one common length; returns it."""
        cdef Py_ssize_t n = -1, m
        cdef int k
        for k in range(2 + self.n_state):
            obj = params if k == 0 else (grads if k == 1 else states[k - 2])
            if not isinstance(obj, (list, tuple)):
                raise TypeError(f"{self.fn}: {self._list_name(k)} must be a list of arrays, "
                                f"got {type(obj).__name__}")
            m = len(obj)
            if n < 0:
                n = m
            elif m != n:
                raise ValueError(f"{self.fn}: {self._list_name(k)} has {m} arrays but params "
                                 f"has {n}; they must be aligned")
        return n

    cdef str _list_name(self, int k):
        return "params" if k == 0 else ("grads" if k == 1 else self.state_names[k - 2])

    cdef bint _cached(self, object params, tuple states, Py_ssize_t n):
        """The same written arrays as validated last, all still as they were."""
        cdef Py_ssize_t k
        cdef int s
        cdef SkJob* job
        cdef cnp.ndarray p, a
        cdef bint c_order
        cdef list kept = self.kept
        if kept is None or n != self.n:
            return False
        for k in range(n):
            job = &self.jobs[k]
            obj = params[k]
            if obj is not kept[k]:
                return False
            p = <cnp.ndarray>obj
            c_order = cnp.PyArray_IS_C_CONTIGUOUS(p)
            if not _live_ok(p, job, job.p, self.types[k], p, c_order) or \
                    cnp.PyArray_ISBYTESWAPPED(p):
                return False
            for s in range(self.n_state):
                obj = (<object>states[s])[k]
                if obj is not kept[(s + 1) * n + k]:
                    return False
                a = <cnp.ndarray>obj
                if not _live_ok(a, job, job.s1 if s == 0 else job.s2,
                                self.types[(s + 1) * n + k], p, c_order) or \
                        cnp.PyArray_ISBYTESWAPPED(a):
                    return False
        return True

    cdef int _build(self, object params, tuple states, Py_ssize_t n) except -1:
        """Validate the written arrays (each one's facts, shapes and layouts against its
        param, no two overlapping), with named errors, and cache them."""
        cdef str fn = self.fn
        cdef Py_ssize_t k, j
        cdef int s
        cdef cnp.ndarray p, a
        self.kept = None
        cdef SkJob* jobs = <SkJob*>malloc(max(n, 1) * sizeof(SkJob))
        cdef Span* spans = <Span*>malloc(max(n, 1) * (1 + self.n_state) * sizeof(Span))
        cdef int* types = <int*>malloc(max(n, 1) * (1 + self.n_state) * sizeof(int))
        if jobs == NULL or spans == NULL or types == NULL:
            free(jobs)
            free(spans)
            free(types)
            raise MemoryError()
        free(self.jobs)
        free(self.spans)
        free(self.types)
        self.jobs, self.spans, self.types, self.n, self.n_spans = jobs, spans, types, 0, 0
        kept = [None] * (n * (1 + self.n_state))
        for k in range(n):
            _check_array(fn, f"params[{k}]", params[k], True)
            p = <cnp.ndarray>params[k]
            if not (cnp.PyArray_IS_C_CONTIGUOUS(p) or cnp.PyArray_IS_F_CONTIGUOUS(p)):
                raise ValueError(f"{fn}: params[{k}] must be contiguous (C or F order), got "
                                 f"strides {(<object>p).strides} for shape "
                                 f"{(<object>p).shape}; it is updated in place")
            kept[k] = p
            for s in range(self.n_state):
                name = f"{self.state_names[s]}[{k}]"
                obj = (<object>states[s])[k]
                _check_array(fn, name, obj, True)
                a = <cnp.ndarray>obj
                if s == 1 and cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(
                        <cnp.ndarray>kept[n + k]):
                    raise TypeError(f"{fn}: {name} has dtype {a.dtype} but "
                                    f"{self.state_names[0]}[{k}] has dtype "
                                    f"{kept[n + k].dtype}; the state buffers share one dtype")
                if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(p) and not (
                        cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT
                        and cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE):
                    raise TypeError(f"{fn}: {name} has dtype {a.dtype} but params[{k}] has "
                                    f"dtype {p.dtype}; the state has the param's dtype, or "
                                    f"float64 for a float32 param (after updates with "
                                    f"float64 grads)")
                _check_fits(fn, name, a, f"params[{k}]", p)
                kept[(s + 1) * n + k] = a
            jobs[k].n = cnp.PyArray_SIZE(p)
            jobs[k].p = <char*>cnp.PyArray_DATA(p)
            jobs[k].s1 = <char*>cnp.PyArray_DATA(<cnp.ndarray>kept[n + k])
            jobs[k].s2 = (<char*>cnp.PyArray_DATA(<cnp.ndarray>kept[2 * n + k])
                          if self.n_state == 2 else NULL)
        # overlap among the written arrays: sort their spans, compare neighbours
        cdef Py_ssize_t m = 0
        for j in range(n * (1 + self.n_state)):
            a = <cnp.ndarray>kept[j]
            types[j] = cnp.PyArray_TYPE(a)
            if cnp.PyArray_NBYTES(a):
                spans[m].lo = <char*>cnp.PyArray_DATA(a)
                spans[m].hi = spans[m].lo + cnp.PyArray_NBYTES(a)
                m += 1
        qsort(spans, m, sizeof(Span), _span_cmp)
        for j in range(1, m):
            if spans[j].lo < spans[j - 1].hi:
                self._raise_overlap(kept, n, spans[j - 1].lo, spans[j].lo)
        self.n = n
        self.n_spans = m
        self.kept = kept
        return 0

    cdef int _raise_overlap(self, list kept, Py_ssize_t n, char* x, char* y) except -1:
        """Name two written arrays that overlap (the ones starting at x and y)."""
        names = []
        for j in range(len(kept)):
            a = <cnp.ndarray>kept[j]
            if cnp.PyArray_NBYTES(a) and <char*>cnp.PyArray_DATA(a) in (x, y):
                names.append(("params" if j < n else self.state_names[j // n - 1])
                             + f"[{j % n}]")
        if len(names) < 2:
            names = names * 2
        raise ValueError(f"{self.fn}: {names[0]} and {names[1]} overlap in memory; every "
                         f"buffer of an update must be a separate array")

    cdef bint _hits_written(self, char* lo, char* hi) noexcept:
        """Whether [lo, hi) overlaps a written array (binary search over sorted spans)."""
        cdef Py_ssize_t a = 0, b = self.n_spans, mid
        if lo == hi:
            return False
        while a < b:                 # first span ending after lo
            mid = (a + b) // 2
            if self.spans[mid].hi <= lo:
                a = mid + 1
            else:
                b = mid
        return a < self.n_spans and self.spans[a].lo < hi

    cdef int _grads(self, object grads, Py_ssize_t n, Py_ssize_t* total,
                    bint* lift) except -1:
        """Check every grad against its (validated) param and state; set each job's grad
        pointer and mode. Errors name the grad."""
        cdef Py_ssize_t k
        cdef SkJob* job
        cdef cnp.ndarray p, g
        cdef int mode, p_type, g_type
        cdef char* lo
        total[0] = 0
        lift[0] = False
        for k in range(n):
            job = &self.jobs[k]
            p = <cnp.ndarray>self.kept[k]
            obj = grads[k]
            if cnp.PyArray_Check(obj):
                g = <cnp.ndarray>obj
                p_type = cnp.PyArray_TYPE(p)
                g_type = cnp.PyArray_TYPE(g)
                mode = _mode(p_type, g_type,
                             cnp.PyArray_TYPE(<cnp.ndarray>self.kept[self.n + k]))
                lo = <char*>cnp.PyArray_DATA(g)
                if (mode >= 0 and (g is p or same_shape(g, p)) and _same_layout(g, p)
                        and cnp.PyArray_ISALIGNED(g) and not cnp.PyArray_ISBYTESWAPPED(g)
                        and not self._hits_written(lo, lo + cnp.PyArray_NBYTES(g))):
                    job.g = lo
                    job.mode = mode
                    job.s1_in = job.s1
                    job.s2_in = job.s2
                    total[0] += job.n
                    if mode == MODE_LIFT:
                        lift[0] = True
                    continue
            self._grad_error(k, obj, p)
        return 0

    cdef int _grad_error(self, Py_ssize_t k, object obj, cnp.ndarray p) except -1:
        """Raise the precise error for grads[k] (the fast check failed)."""
        cdef str fn = self.fn
        name = f"grads[{k}]"
        _check_array(fn, name, obj, False)
        cdef cnp.ndarray g = <cnp.ndarray>obj
        cdef cnp.ndarray s = <cnp.ndarray>self.kept[self.n + k]
        if _mode(cnp.PyArray_TYPE(p), cnp.PyArray_TYPE(g), cnp.PyArray_TYPE(s)) < 0:
            if cnp.PyArray_TYPE(s) != cnp.PyArray_TYPE(p):
                raise TypeError(f"{fn}: {name} has dtype {g.dtype} but "
                                f"{self.state_names[0]}[{k}] is float64 (promoted by float64 "
                                f"grads) while params[{k}] is float32; keep passing float64 "
                                f"grads, or reset the state to float32")
            raise TypeError(f"{fn}: {name} has dtype {g.dtype} but params[{k}] has dtype "
                            f"{p.dtype}; they must be equal (float32 or float64), or float64 "
                            f"grads with float32 params (what sklearn's MLPRegressor passes "
                            f"for float32 X)")
        _check_fits(fn, name, g, f"params[{k}]", p)
        lo = <char*>cnp.PyArray_DATA(g)
        hi = lo + cnp.PyArray_NBYTES(g)
        for j in range(len(self.kept)):
            a = <cnp.ndarray>self.kept[j]
            if (cnp.PyArray_NBYTES(a) and <char*>cnp.PyArray_DATA(a) < hi
                    and lo < <char*>cnp.PyArray_DATA(a) + cnp.PyArray_NBYTES(a)):
                other = "params" if j < self.n else self.state_names[j // self.n - 1]
                raise ValueError(f"{fn}: {other}[{j % self.n}] and {name} overlap in memory; "
                                 f"every buffer of an update must be a separate array")
        raise AssertionError(f"{fn}: {name} failed a check that has no message")  # pragma: no cover

    cdef list _lift(self, tuple states, Py_ssize_t n):
        """MODE_LIFT jobs: new float64 state buffers (the float32 ones are read); returns
        [(state list, index, new array), ...] to store once the update has run."""
        cdef Py_ssize_t k
        cdef int s
        cdef SkJob* job
        cdef cnp.ndarray p, new
        out = []
        for s in range(self.n_state):
            if not isinstance(states[s], list):
                raise TypeError(f"{self.fn}: {self.state_names[s]} must be a list (its float32 "
                                f"buffers are replaced by float64 ones at the first update "
                                f"with float64 grads, as sklearn does), got "
                                f"{type(states[s]).__name__}")
        for k in range(n):
            job = &self.jobs[k]
            if job.mode != MODE_LIFT:
                continue
            p = <cnp.ndarray>self.kept[k]
            order = "C" if cnp.PyArray_IS_C_CONTIGUOUS(p) else "F"
            for s in range(self.n_state):
                new = <cnp.ndarray>np.empty((<object>p).shape, dtype=np.float64, order=order)
                out.append((states[s], k, new))
                if s == 0:
                    job.s1 = <char*>cnp.PyArray_DATA(new)
                else:
                    job.s2 = <char*>cnp.PyArray_DATA(new)
        return out

    cdef Py_ssize_t _prepare(self, object params, tuple states, object grads) except -1:
        """The lists' length, with the written arrays validated (cached or now)."""
        cdef Py_ssize_t n = self._lists(params, grads, states)
        if not self._cached(params, states, n):
            self._build(params, states, n)
        return n

    cdef int _finish(self, int op, object grads, tuple states, Py_ssize_t n,
                     int nt) except -1:
        """Check the grads, then update every array (the jobs' hyperparameters are set)."""
        cdef Py_ssize_t total
        cdef bint lift
        self._grads(grads, n, &total, &lift)
        if not lift:
            _run(op, self.jobs, n, total, nt)
            return 0
        stores = self._lift(states, n)
        _run(op, self.jobs, n, total, nt)
        for lst, k, new in stores:
            lst[k] = new
        self.kept = None            # the state arrays changed: validate them next step
        return 0

    def sgd(self, params, grads, velocities, lr, momentum, nesterov, n_threads):
        """One sklearn SGD update of every array (see sgd_sklearn)."""
        cdef str fn = self.fn
        cdef double lr_d = checked_real(fn, "learning_rate", lr, NONNEG)
        cdef double mom = checked_real(fn, "momentum", momentum, CLOSED_UNIT)
        cdef bint nest = flag_arg(fn, "nesterov", nesterov)
        cdef int nt = threads_arg(fn, n_threads)
        cdef Py_ssize_t k
        cdef tuple states = (velocities,)
        cdef Py_ssize_t n = self._prepare(params, states, grads)
        for k in range(n):
            self.jobs[k].lr = lr_d
            self.jobs[k].momentum = mom
            self.jobs[k].nesterov = nest
        self._finish(OP_SGD, grads, states, n, nt)

    def adam(self, params, grads, ms, vs, step, lr, beta1, beta2, eps, n_threads):
        """One sklearn Adam update of every array (see adam_sklearn); returns lr_t, the
        bias-corrected step size (a float)."""
        cdef str fn = self.fn
        cdef AdamC c
        _adam_coef(fn, &c, step, lr, beta1, beta2, eps)
        cdef int nt = threads_arg(fn, n_threads)
        cdef Py_ssize_t k
        cdef tuple states = (ms, vs)
        cdef Py_ssize_t n = self._prepare(params, states, grads)
        for k in range(n):
            self.jobs[k].adam = c
        self._finish(OP_ADAM, grads, states, n, nt)
        return -c.neg_lr_t
