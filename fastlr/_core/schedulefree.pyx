# fastlr/_core/schedulefree.pyx -- the fused loops of the schedule-free optimizers
# (fastlr.ScheduleFreeSGD, ScheduleFreeAdamW, ScheduleFreeRAdam).
#
# Design notes
# ------------
# a) What: schedule-free training (Defazio et al. 2024, the `schedulefree` package) keeps
#    the params at the training point y and a state buffer z; the averaged point x (the one
#    to evaluate) is implied: y = (1 - beta1) z + beta1 x. One step, per element:
#        v  = v * beta2 + (1 - beta2) * g * g                 (Adam kinds)
#        gn = g / (sqrt(v / bias_correction2) + eps)          (Adam kinds, when adaptive)
#        gn = gn + weight_decay * y                           (decay at y, when != 0)
#        y  = lerp(y, z, ckp1) + y_coef * gn                  y_coef = lr (beta1 (1-ckp1) - 1)
#        z  = z - lr * gn
#    read once and written once per element (`sgd_step`, `adam_step`), where the reference
#    makes five to seven passes. The mode switch (train: y from x, eval: x from y) is one
#    lerp per element, y = lerp(y, z, w) (`switch`).
# b) Numerics: the per-step coefficients (ckp1, lr, y_coef, bias_correction2) are doubles
#    the caller derives exactly as the reference does (fastlr/optim/schedulefree.py); here
#    they are rounded once to the buffers' dtype, as torch rounds a Python scalar for a
#    float32 tensor, and each operation is torch's single-tensor one in its order: lerp with
#    its two branches (|w| < 0.5: a + w (b - a), else b - (b - a) (1 - w)), addcmul as
#    (value * g) * g, add/sub with alpha as a + alpha * b. Built with -ffp-contract=off (no
#    fused multiply-adds), so a float64 step agrees with torch's to an ulp or so per step.
# c) Arguments: lists of arrays, the params (float32 or float64, C- or F-contiguous) and,
#    per param, its grad and state with its dtype, shape and layout, so that every buffer
#    of a param is walked in one memory order; y, z, v writeable; a grad may be read-only
#    but may not overlap the buffers written. Every array of every list is checked first
#    (NumPy's C API: no Python attribute lookups); only then do the loops run (without the
#    GIL from NOGIL_MIN_SIZE elements in all). Nothing is written when a check fails. The
#    buffers of one param may not overlap (checked); different params' buffers are the
#    caller's to keep apart (the optimizer checks its params once and owns the state).
#    `first_bad_grad` is the optimizer's check of the user's grads against all its params,
#    in C; the optimizer words the message on the error path only.
# d) Argument directions are marked # IN / # OUT on the functions below.

cimport cython
from cython cimport floating
from libc.math cimport sqrt
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport malloc, free

cimport numpy as cnp
import numpy as np

from fastlr._core.arrays cimport check_like, same_shape

cnp.import_array()

cdef enum:
    NOGIL_MIN_SIZE = 4096   # elements in all from which the loops release the GIL


ctypedef struct Arrays:
    char* y
    char* g
    char* z
    char* v
    Py_ssize_t n
    int f64


cdef inline floating _lerp(floating a, floating b, floating w, floating one_minus_w,
                           bint small) noexcept nogil:
    # torch's lerp with a scalar weight: the branch is chosen by |w| < 0.5
    if small:
        return a + w * (b - a)
    return b - (b - a) * one_minus_w


cdef void _sgd_loop(floating* y, const floating* g, floating* z, Py_ssize_t n,
                    double ckp1, double lr, double y_coef, double decay) noexcept nogil:
    cdef floating w = <floating>ckp1
    cdef floating omw = <floating>1 - w
    cdef bint small = (ckp1 if ckp1 >= 0 else -ckp1) < 0.5
    cdef floating c = <floating>y_coef
    cdef floating mlr = <floating>(-lr)
    cdef floating wd = <floating>decay
    cdef bint has_decay = decay != 0
    cdef Py_ssize_t i
    cdef floating gn, yi
    for i in range(n):
        gn = g[i]
        yi = y[i]
        if has_decay:
            gn = gn + wd * yi
        y[i] = _lerp(yi, z[i], w, omw, small) + c * gn
        z[i] = z[i] + mlr * gn


cdef void _adam_loop(floating* y, const floating* g, floating* z, floating* v, Py_ssize_t n,
                     double ckp1, double lr, double y_coef, double decay, double beta2,
                     double bias_correction2, double eps, bint adaptive) noexcept nogil:
    cdef floating w = <floating>ckp1
    cdef floating omw = <floating>1 - w
    cdef bint small = (ckp1 if ckp1 >= 0 else -ckp1) < 0.5
    cdef floating c = <floating>y_coef
    cdef floating mlr = <floating>(-lr)
    cdef floating wd = <floating>decay
    cdef bint has_decay = decay != 0
    cdef floating b2 = <floating>beta2
    cdef floating omb2 = <floating>(1 - beta2)
    cdef floating bc2 = <floating>bias_correction2
    cdef floating e = <floating>eps
    cdef Py_ssize_t i
    cdef floating gi, gn, yi, vi
    for i in range(n):
        gi = g[i]
        yi = y[i]
        vi = v[i] * b2
        vi = vi + omb2 * gi * gi
        v[i] = vi
        if adaptive:
            gn = gi / (<floating>sqrt(vi / bc2) + e)
        else:
            gn = gi
        if has_decay:
            gn = gn + wd * yi
        y[i] = _lerp(yi, z[i], w, omw, small) + c * gn
        z[i] = z[i] + mlr * gn


cdef void _switch_loop(floating* y, const floating* z, Py_ssize_t n,
                       double weight) noexcept nogil:
    cdef floating w = <floating>weight
    cdef floating omw = <floating>1 - w
    cdef bint small = (weight if weight >= 0 else -weight) < 0.5
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = _lerp(y[i], z[i], w, omw, small)


cdef void _sgd_all(const Arrays* arr, Py_ssize_t k, double ckp1, double lr, double y_coef,
                   double decay) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(k):
        if arr[i].f64:
            _sgd_loop(<double*>arr[i].y, <const double*>arr[i].g, <double*>arr[i].z,
                      arr[i].n, ckp1, lr, y_coef, decay)
        else:
            _sgd_loop(<float*>arr[i].y, <const float*>arr[i].g, <float*>arr[i].z,
                      arr[i].n, ckp1, lr, y_coef, decay)


cdef void _adam_all(const Arrays* arr, Py_ssize_t k, double ckp1, double lr, double y_coef,
                    double decay, double beta2, double bias_correction2, double eps,
                    bint adaptive) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(k):
        if arr[i].f64:
            _adam_loop(<double*>arr[i].y, <const double*>arr[i].g, <double*>arr[i].z,
                       <double*>arr[i].v, arr[i].n, ckp1, lr, y_coef, decay, beta2,
                       bias_correction2, eps, adaptive)
        else:
            _adam_loop(<float*>arr[i].y, <const float*>arr[i].g, <float*>arr[i].z,
                       <float*>arr[i].v, arr[i].n, ckp1, lr, y_coef, decay, beta2,
                       bias_correction2, eps, adaptive)


cdef void _switch_all(const Arrays* arr, Py_ssize_t k, double weight) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(k):
        if arr[i].f64:
            _switch_loop(<double*>arr[i].y, <const double*>arr[i].z, arr[i].n, weight)
        else:
            _switch_loop(<float*>arr[i].y, <const float*>arr[i].z, arr[i].n, weight)


cdef inline bint _usable(cnp.ndarray a) noexcept:
    """float32 or float64 (native), C- or F-contiguous, aligned."""
    cdef int t = cnp.PyArray_TYPE(a)
    return ((t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64) and cnp.PyArray_ISNOTSWAPPED(a)
            and (cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a))
            and cnp.PyArray_ISALIGNED(a))


cdef inline bint _like(cnp.ndarray a, cnp.ndarray ref) noexcept:
    """``a`` has ``ref``'s dtype, shape and contiguous layout (and is aligned)."""
    return (cnp.PyArray_TYPE(a) == cnp.PyArray_TYPE(ref) and same_shape(a, ref)
            and (cnp.PyArray_IS_C_CONTIGUOUS(a) if cnp.PyArray_IS_C_CONTIGUOUS(ref)
                 else cnp.PyArray_IS_F_CONTIGUOUS(a))
            and cnp.PyArray_ISALIGNED(a))


cdef char* _buffer(str fn, str label, object a, object ref, bint written) except NULL:
    """The data pointer of one checked array: float32/float64, contiguous, aligned (the
    param, ``ref`` None), or with its param ``ref``'s dtype, shape and layout."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {label} must be a numpy.ndarray, got {type(a).__name__}")
    if ref is None:
        if not _usable(a):
            raise ValueError(f"{fn}: {label} must be a float32 or float64 array (native, "
                             f"aligned, C- or F-contiguous), got {a.dtype} with strides "
                             f"{a.strides}")
    elif not _like(a, ref):
        check_like(fn, label, a, f"ys[{label.partition('[')[2]}", ref, written)
        raise ValueError(f"{fn}: {label} is not aligned in memory")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{fn}: {label} is read-only but is updated in place")
    return <char*>cnp.PyArray_DATA(a)


cdef bint _overlap(char* a, char* b, Py_ssize_t nbytes):
    return nbytes > 0 and a < b + nbytes and b < a + nbytes


cdef Arrays* _gather(str fn, list ys, list grads, list zs, list vs, Py_ssize_t* total) except NULL:
    """Check every array of the lists and return their pointers (malloc'ed; the caller frees).
    ``vs`` is None for SGD and the mode switch; ``grads`` is None for the switch."""
    cdef Py_ssize_t k = len(ys), i, nbytes
    cdef Arrays* arr
    cdef str which
    cdef cnp.ndarray y
    for which, lst in (("grads", grads), ("zs", zs), ("vs", vs)):
        if lst is not None and len(lst) != k:
            raise ValueError(f"{fn}: {which} has {len(lst)} arrays for {k} params (ys)")
    arr = <Arrays*>malloc(max(k, 1) * sizeof(Arrays))
    if arr == NULL:
        raise MemoryError()
    total[0] = 0
    try:
        for i in range(k):
            arr[i].y = _buffer(fn, f"ys[{i}]", ys[i], None, True)
            y = ys[i]
            arr[i].n = cnp.PyArray_SIZE(y)
            arr[i].f64 = cnp.PyArray_TYPE(y) == cnp.NPY_FLOAT64
            nbytes = cnp.PyArray_NBYTES(y)
            arr[i].z = _buffer(fn, f"zs[{i}]", zs[i], y, True)
            arr[i].g = NULL if grads is None else _buffer(fn, f"grads[{i}]", grads[i], y, False)
            arr[i].v = NULL if vs is None else _buffer(fn, f"vs[{i}]", vs[i], y, True)
            if _overlap(arr[i].y, arr[i].z, nbytes) or \
                    (arr[i].v != NULL and (_overlap(arr[i].y, arr[i].v, nbytes) or
                                           _overlap(arr[i].z, arr[i].v, nbytes))):
                raise ValueError(f"{fn}: the buffers of param {i} (ys, zs, vs) overlap in "
                                 f"memory")
            if arr[i].g != NULL and (_overlap(arr[i].g, arr[i].y, nbytes) or
                                     _overlap(arr[i].g, arr[i].z, nbytes) or
                                     (arr[i].v != NULL and _overlap(arr[i].g, arr[i].v, nbytes))):
                raise ValueError(f"{fn}: grads[{i}] overlaps a buffer the step writes (its "
                                 f"param or state)")
            total[0] += arr[i].n
    except BaseException:
        free(arr)
        raise
    return arr


def first_bad_grad(list ys, list grads, const uint64_t[::1] starts,
                   const uint64_t[::1] ends):
    """The index of the first grad that cannot be used, or -1 (all checks in C).

    A grad is usable when it is an ndarray with its param's dtype, shape and contiguous
    layout, aligned, and overlaps none of the params (``starts`` / ``ends``: the params'
    byte spans, sorted and disjoint). The optimizer formats the message for the index
    returned (its error path only).

    Parameters
    ----------
    ys : list of numpy.ndarray
        # IN: the params (checked when the optimizer was built).
    grads : list
        # IN: the grads, as many as ``ys``.
    starts, ends : numpy.ndarray of uint64
        # IN: the start and end addresses of the params' nonempty buffers, sorted.
    """
    cdef Py_ssize_t i, k = len(ys), lo, hi, mid, m = starts.shape[0]
    cdef uint64_t a, b
    cdef object g
    if len(grads) != k or ends.shape[0] != m:
        raise ValueError(f"fastlr._core.schedulefree.first_bad_grad: got {len(grads)} grads "
                         f"for {k} params and {ends.shape[0]} ends for {m} starts")
    for i in range(k):
        g = grads[i]
        if not isinstance(g, np.ndarray) or not _like(g, ys[i]):
            return i
        a = <uint64_t><uintptr_t>cnp.PyArray_DATA(g)
        b = a + <uint64_t>cnp.PyArray_NBYTES(g)
        if a == b:
            continue
        # the first span ending after a: the only one that can overlap [a, b)
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) // 2
            if ends[mid] <= a:
                lo = mid + 1
            else:
                hi = mid
        if lo < m and starts[lo] < b:
            return i
    return -1


def _coef(str fn, str label, object value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{fn}: {label} must be a real number, got {type(value).__name__}")
    return float(value)


def sgd_step(list ys, list grads, list zs, *, ckp1, lr, y_coef, weight_decay):
    """One schedule-free SGD step over a group's params, in place (the fused loop).

    Per element: ``gn = g + weight_decay * y``; ``y = lerp(y, z, ckp1) + y_coef * gn``;
    ``z = z - lr * gn``.

    Parameters
    ----------
    ys : list of numpy.ndarray
        # IN/OUT: the params (the training point y), float32 or float64, C or F order.
    grads : list of numpy.ndarray
        # IN: the grads, each of its param's dtype, shape and layout (may be read-only).
    zs : list of numpy.ndarray
        # IN/OUT: the state z of each param.
    ckp1, lr, y_coef, weight_decay : float
        # IN: the step's coefficients: the averaging weight, the (warmed-up, scheduled) lr,
        ``lr * (momentum * (1 - ckp1) - 1)`` and the decay (1/lr units: per step, ``lr *
        weight_decay`` of y is subtracted).
    """
    fn = "fastlr._core.schedulefree.sgd_step"
    cdef double c_ckp1 = _coef(fn, "ckp1", ckp1), c_lr = _coef(fn, "lr", lr)
    cdef double c_y = _coef(fn, "y_coef", y_coef), c_wd = _coef(fn, "weight_decay", weight_decay)
    cdef Py_ssize_t total = 0, k = len(ys)
    cdef Arrays* arr = _gather(fn, ys, grads, zs, None, &total)
    try:
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                _sgd_all(arr, k, c_ckp1, c_lr, c_y, c_wd)
        else:
            _sgd_all(arr, k, c_ckp1, c_lr, c_y, c_wd)
    finally:
        free(arr)


def adam_step(list ys, list grads, list zs, list vs, *, ckp1, lr, y_coef, weight_decay,
              beta2, bias_correction2, eps, adaptive):
    """One schedule-free AdamW / RAdam step over a group's params, in place (the fused loop).

    Per element: ``v = v * beta2 + (1 - beta2) * g * g``; ``gn = g / (sqrt(v /
    bias_correction2) + eps)`` when ``adaptive`` (else ``gn = g``: RAdam's SGD phase);
    ``gn = gn + weight_decay * y``; ``y = lerp(y, z, ckp1) + y_coef * gn``;
    ``z = z - lr * gn``.

    Parameters
    ----------
    ys : list of numpy.ndarray
        # IN/OUT: the params (the training point y), float32 or float64, C or F order.
    grads : list of numpy.ndarray
        # IN: the grads, each of its param's dtype, shape and layout (may be read-only).
    zs, vs : list of numpy.ndarray
        # IN/OUT: the state z and exp_avg_sq of each param.
    ckp1, lr, y_coef, weight_decay, beta2, bias_correction2, eps : float
        # IN: the step's coefficients (``y_coef = lr * (beta1 * (1 - ckp1) - 1)``,
        ``bias_correction2 = 1 - beta2 ** k``).
    adaptive : bool
        # IN: divide by the second-moment denominator (False: RAdam's rectification off).
    """
    fn = "fastlr._core.schedulefree.adam_step"
    cdef double c_ckp1 = _coef(fn, "ckp1", ckp1), c_lr = _coef(fn, "lr", lr)
    cdef double c_y = _coef(fn, "y_coef", y_coef), c_wd = _coef(fn, "weight_decay", weight_decay)
    cdef double c_b2 = _coef(fn, "beta2", beta2), c_eps = _coef(fn, "eps", eps)
    cdef double c_bc2 = _coef(fn, "bias_correction2", bias_correction2)
    if adaptive not in (True, False):
        raise TypeError(f"{fn}: adaptive must be a bool, got {type(adaptive).__name__}")
    cdef bint c_adaptive = adaptive
    cdef Py_ssize_t total = 0, k = len(ys)
    cdef Arrays* arr = _gather(fn, ys, grads, zs, vs, &total)
    try:
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                _adam_all(arr, k, c_ckp1, c_lr, c_y, c_wd, c_b2, c_bc2, c_eps, c_adaptive)
        else:
            _adam_all(arr, k, c_ckp1, c_lr, c_y, c_wd, c_b2, c_bc2, c_eps, c_adaptive)
    finally:
        free(arr)


def switch(list ys, list zs, weight):
    """The train/eval switch, in place: ``y = lerp(y, z, weight)`` for every param.

    ``weight = 1 - beta1`` moves the params from x to y (``train``), ``weight = 1 - 1 /
    beta1`` from y to x (``eval``).

    Parameters
    ----------
    ys : list of numpy.ndarray
        # IN/OUT: the params, float32 or float64, C- or F-contiguous.
    zs : list of numpy.ndarray
        # IN: the state z of each param, of its param's dtype, shape and layout.
    weight : float
        # IN: the lerp weight.
    """
    fn = "fastlr._core.schedulefree.switch"
    cdef double w = _coef(fn, "weight", weight)
    cdef Py_ssize_t total = 0, k = len(ys)
    cdef Arrays* arr = _gather(fn, ys, None, zs, None, &total)
    try:
        if total >= NOGIL_MIN_SIZE:
            with nogil:
                _switch_all(arr, k, w)
        else:
            _switch_all(arr, k, w)
    finally:
        free(arr)
