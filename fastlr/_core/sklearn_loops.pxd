# fastlr/_core/sklearn_loops.pxd -- the core loops of scikit-learn's MLP optimizers.
#
# Hand-written maths, included (through cores.pxi) by every instruction-set variant of the
# core loops, like loops.pxd: compiled once for the baseline ISA and once for x86-64-v3,
# exported as a SklearnCores table of span functions that fastlr._core.sklearn_kernels
# calls through fastlr._kernels.parallel_spans. See the design notes of sklearn_kernels.pyx
# for the rules (sklearn's NumPy expressions, operation by operation, NEP 50 precisions).
#
# Modes (the dtypes of one array's update):
#   MODE_F32   param, grad, state float32
#   MODE_F64   param, grad, state float64
#   MODE_MIX   param float32, grad float64, state float64 (in place): sklearn's state after
#              its first update with float64 grads, e.g. MLPRegressor on float32 X, whose
#              targets (hence grads) stay float64
#   MODE_LIFT  param float32, grad float64, state read as float32 and written as float64 to
#              new buffers: that first update (sklearn's `momentum * velocity` of a float32
#              velocity is a float32 product, then the float64 terms promote the result)

cimport cython
from cython cimport floating
from libc.math cimport sqrt, sqrtf

cdef enum:
    MODE_F32 = 0
    MODE_F64 = 1
    MODE_MIX = 2
    MODE_LIFT = 3
    N_MODES = 4

ctypedef struct AdamC:
    double beta1, one_minus_beta1, beta2, one_minus_beta2, eps
    double neg_lr_t          # -(lr * sqrt(1 - beta2**t) / (1 - beta1**t)), a float64

# One array's update; the span functions below read it as their context.
ctypedef struct SkJob:
    char* p                  # IN/OUT param
    const char* g            # IN     grad
    char* s1                 # OUT    velocity (SGD) or m (Adam), as written
    char* s2                 # OUT    v (Adam); NULL for SGD
    const char* s1_in        # IN     the state as read: s1, except MODE_LIFT (the float32
    const char* s2_in        #        buffers being replaced)
    Py_ssize_t n
    int mode                 # MODE_*
    double lr, momentum      # SGD
    int nesterov             # SGD
    AdamC adam               # Adam

ctypedef void (*sk_span_fn)(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil

ctypedef struct SklearnCores:
    sk_span_fn sgd[N_MODES]
    sk_span_fn adam[N_MODES]


ctypedef fused state_in_t:
    float
    double


# ---- same dtype: sklearn's expressions with Python floats rounded to the arrays' dtype ----
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sk_sgd_same(floating* p, const floating* g, floating* vel,
                             Py_ssize_t n, double lr_d, double mom_d,
                             bint nesterov) noexcept nogil:
    # v = momentum * v - lr * g;  p += (momentum * v - lr * g) if nesterov else v
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


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef inline void sk_adam_same(floating* p, const floating* g, floating* m, floating* v,
                              Py_ssize_t n, const AdamC* c) noexcept nogil:
    # m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g**2);  p += -lr_t * m / (sqrt(v) + eps)
    # (lr_t a float64 NumPy scalar: for float32 arrays the update is float64, p rounded once)
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


# ---- float32 params, float64 grads, float64 state written (read as state_in_t) ----
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sk_sgd_mixed(float* p, const double* g, const state_in_t* vel_in,
                              double* vel, Py_ssize_t n, double lr, double mom,
                              bint nesterov) noexcept nogil:
    # `momentum * velocity`: a float32 product for a float32 velocity (the first update),
    # float64 otherwise; `- lr * grad` is float64; `param += update` adds in float64 and
    # rounds to float32 once.
    cdef float mom_f = <float>mom
    cdef double u
    cdef Py_ssize_t i
    for i in range(n):
        if state_in_t is float:
            u = <double>(mom_f * vel_in[i]) - lr * g[i]
        else:
            u = mom * vel_in[i] - lr * g[i]
        vel[i] = u
        if nesterov:
            p[i] = <float>(<double>p[i] + (mom * u - lr * g[i]))
        else:
            p[i] = <float>(<double>p[i] + u)


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef inline void sk_adam_mixed(float* p, const double* g, const state_in_t* m_in,
                               const state_in_t* v_in, double* m, double* v, Py_ssize_t n,
                               const AdamC* c) noexcept nogil:
    # `beta_1 * m` is a float32 product for a float32 m (the first update); `(1 - beta_1) *
    # grad` and everything after are float64; param rounds to float32 once.
    cdef float b1_f = <float>c.beta1
    cdef float b2_f = <float>c.beta2
    cdef double b1 = c.beta1, omb1 = c.one_minus_beta1
    cdef double b2 = c.beta2, omb2 = c.one_minus_beta2
    cdef double eps = c.eps, neg_lr = c.neg_lr_t
    cdef double gi, mi, vi
    cdef Py_ssize_t i
    for i in range(n):
        gi = g[i]
        if state_in_t is float:
            mi = <double>(b1_f * m_in[i]) + omb1 * gi
            vi = <double>(b2_f * v_in[i]) + omb2 * (gi * gi)
        else:
            mi = b1 * m_in[i] + omb1 * gi
            vi = b2 * v_in[i] + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = <float>(<double>p[i] + (neg_lr * mi) / (sqrt(vi) + eps))


# ---- span functions: elements [a, b) of one job ----
cdef inline void sk_sgd_f32(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_sgd_same((<float*>j.p) + a, (<const float*>j.g) + a, (<float*>j.s1) + a, b - a,
                j.lr, j.momentum, j.nesterov)


cdef inline void sk_sgd_f64(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_sgd_same((<double*>j.p) + a, (<const double*>j.g) + a, (<double*>j.s1) + a, b - a,
                j.lr, j.momentum, j.nesterov)


cdef inline void sk_sgd_mix(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_sgd_mixed((<float*>j.p) + a, (<const double*>j.g) + a, (<const double*>j.s1_in) + a,
                 (<double*>j.s1) + a, b - a, j.lr, j.momentum, j.nesterov)


cdef inline void sk_sgd_lift(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_sgd_mixed((<float*>j.p) + a, (<const double*>j.g) + a, (<const float*>j.s1_in) + a,
                 (<double*>j.s1) + a, b - a, j.lr, j.momentum, j.nesterov)


cdef inline void sk_adam_f32(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_adam_same((<float*>j.p) + a, (<const float*>j.g) + a, (<float*>j.s1) + a,
                 (<float*>j.s2) + a, b - a, &j.adam)


cdef inline void sk_adam_f64(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_adam_same((<double*>j.p) + a, (<const double*>j.g) + a, (<double*>j.s1) + a,
                 (<double*>j.s2) + a, b - a, &j.adam)


cdef inline void sk_adam_mix(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_adam_mixed((<float*>j.p) + a, (<const double*>j.g) + a,
                  (<const double*>j.s1_in) + a, (<const double*>j.s2_in) + a,
                  (<double*>j.s1) + a, (<double*>j.s2) + a, b - a, &j.adam)


cdef inline void sk_adam_lift(void* ctx, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef SkJob* j = <SkJob*>ctx
    sk_adam_mixed((<float*>j.p) + a, (<const double*>j.g) + a,
                  (<const float*>j.s1_in) + a, (<const float*>j.s2_in) + a,
                  (<double*>j.s1) + a, (<double*>j.s2) + a, b - a, &j.adam)


cdef inline void fill_sklearn_cores(SklearnCores* t) noexcept nogil:
    t.sgd[MODE_F32] = sk_sgd_f32
    t.sgd[MODE_F64] = sk_sgd_f64
    t.sgd[MODE_MIX] = sk_sgd_mix
    t.sgd[MODE_LIFT] = sk_sgd_lift
    t.adam[MODE_F32] = sk_adam_f32
    t.adam[MODE_F64] = sk_adam_f64
    t.adam[MODE_MIX] = sk_adam_mix
    t.adam[MODE_LIFT] = sk_adam_lift
