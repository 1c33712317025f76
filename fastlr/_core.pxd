# fastlr/_core.pxd -- the update loops shared by fastlr's compiled modules (private).
#
# Inline definitions, compiled into every module that cimports them (_kernels, _optim):
# per-step coefficients derived once from the hyperparameters (in double, as torch does),
# fused-type core loops that read every buffer once and write it once, and per-dtype
# adapters with one signature (`core_fn`) so a caller can hold them as function pointers.
# Not part of the stable C API (_kernels.pxd is); it may change in any release.

cimport cython
from cython cimport floating
from libc.math cimport pow, sqrt, sqrtf
from libc.stdint cimport int64_t

from fastlr._kernels cimport AdamHyper, RMSpropHyper, SGDHyper

ctypedef void (*core_fn)(char** ptrs, Py_ssize_t n, const void* coef) noexcept nogil


# ---------------------------------------------------------------------------------------
# Per-step coefficients (derived once per call from the hyperparameters, in double)
# ---------------------------------------------------------------------------------------
ctypedef struct SGDCoef:
    double lr, momentum, one_minus_dampening, weight_decay, sign
    int first, nesterov

ctypedef struct RMSpropCoef:
    double lr, alpha, one_minus_alpha, eps, weight_decay, momentum, sign

ctypedef struct AdamCoef:
    double beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay
    double step_size, inv_bias_correction2_sqrt, decay, sign
    int l2


cdef inline void sgd_coef(const SGDHyper* h, SGDCoef* c) noexcept nogil:
    c.lr = h.lr
    c.momentum = h.momentum
    c.one_minus_dampening = 1.0 - h.dampening
    c.weight_decay = h.weight_decay
    c.sign = -1.0 if h.maximize else 1.0
    c.first = h.step <= 1
    c.nesterov = h.nesterov


cdef inline void rmsprop_coef(const RMSpropHyper* h, RMSpropCoef* c) noexcept nogil:
    c.lr = h.lr
    c.alpha = h.alpha
    c.one_minus_alpha = 1.0 - h.alpha
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.momentum = h.momentum
    c.sign = -1.0 if h.maximize else 1.0


cdef inline void adam_coef(const AdamHyper* h, AdamCoef* c) noexcept nogil:
    cdef double t = <double>h.step
    c.beta1 = h.beta1
    c.one_minus_beta1 = 1.0 - h.beta1
    c.beta2 = h.beta2
    c.one_minus_beta2 = 1.0 - h.beta2
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.step_size = h.lr / (1.0 - pow(h.beta1, t))
    c.inv_bias_correction2_sqrt = 1.0 / sqrt(1.0 - pow(h.beta2, t))
    c.sign = -1.0 if h.maximize else 1.0
    c.l2 = h.weight_decay != 0.0 and not h.decoupled_weight_decay
    # p *= 1 - lr*wd before the update (AdamW); multiplying by exactly 1.0 is a no-op.
    c.decay = 1.0 - h.lr * h.weight_decay if h.decoupled_weight_decay else 1.0


# ---------------------------------------------------------------------------------------
# Core loops. Loop-invariant branches are hoisted so every loop body is straight-line code
# that GCC vectorizes. `sign * g` applies maximize exactly (a multiplication by +-1).
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sgd_core(floating* p, const floating* grad, floating* buf,  # IN/OUT, IN, IN/OUT
                          Py_ssize_t n, const SGDCoef* c) noexcept nogil:
    cdef floating lr = <floating>c.lr
    cdef floating mom = <floating>c.momentum
    cdef floating omd = <floating>c.one_minus_dampening
    cdef floating wd = <floating>c.weight_decay
    cdef floating sign = <floating>c.sign
    cdef floating g, b
    cdef Py_ssize_t i
    cdef bint l2 = c.weight_decay != 0.0
    if buf == NULL:
        if l2:
            for i in range(n):
                g = sign * grad[i] + wd * p[i]
                p[i] = p[i] - lr * g
        else:
            for i in range(n):
                p[i] = p[i] - lr * (sign * grad[i])
        return
    if c.first:
        # torch: the buffer is None on its first use and becomes a copy of the gradient.
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            buf[i] = g
            if c.nesterov:
                g = g + mom * g
            p[i] = p[i] - lr * g
        return
    if c.nesterov:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            b = buf[i] * mom + omd * g
            buf[i] = b
            p[i] = p[i] - lr * (g + mom * b)
    else:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            b = buf[i] * mom + omd * g
            buf[i] = b
            p[i] = p[i] - lr * b


cdef inline floating fsqrt(floating x) noexcept nogil:
    # sqrtf for float32: libc.math's sqrt would widen to double (correctly rounded all the
    # same, but half the vector lanes).
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline floating lerp(floating start, floating end, floating weight, floating weight_m1,
                          bint weight_small) noexcept nogil:
    # torch's lerp: start + w*(end - start) for w < 0.5, else end - (end - start)*(1 - w).
    # weight_m1 = -(1 - w), so both branches read base + k*(end - start).
    if weight_small:
        return start + weight * (end - start)
    return end + weight_m1 * (end - start)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void rmsprop_core(floating* p, const floating* grad, floating* sq,  # IN/OUT, IN, IN/OUT
                              floating* buf, floating* ga,                     # IN/OUT or NULL
                              Py_ssize_t n, const RMSpropCoef* c) noexcept nogil:
    cdef floating lr = <floating>c.lr
    cdef floating alpha = <floating>c.alpha
    cdef floating oma = <floating>c.one_minus_alpha
    cdef floating oma_m1 = -(<floating>1 - oma)
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating mom = <floating>c.momentum
    cdef floating sign = <floating>c.sign
    cdef bint oma_small = oma < <floating>0.5
    cdef bint l2 = c.weight_decay != 0.0
    cdef floating g, s, a, avg, b
    cdef Py_ssize_t i
    if ga == NULL and buf == NULL:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            s = sq[i] * alpha + oma * g * g
            sq[i] = s
            p[i] = p[i] + (-lr) * (g / (fsqrt(s) + eps))
    elif ga == NULL:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            s = sq[i] * alpha + oma * g * g
            sq[i] = s
            b = buf[i] * mom + g / (fsqrt(s) + eps)
            buf[i] = b
            p[i] = p[i] + (-lr) * b
    elif buf == NULL:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            s = sq[i] * alpha + oma * g * g
            sq[i] = s
            a = lerp(ga[i], g, oma, oma_m1, oma_small)
            ga[i] = a
            p[i] = p[i] + (-lr) * (g / (fsqrt(s - a * a) + eps))
    else:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            s = sq[i] * alpha + oma * g * g
            sq[i] = s
            a = lerp(ga[i], g, oma, oma_m1, oma_small)
            ga[i] = a
            b = buf[i] * mom + g / (fsqrt(s - a * a) + eps)
            buf[i] = b
            p[i] = p[i] + (-lr) * b


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adam_core(floating* p, const floating* grad,           # IN/OUT, IN
                           floating* m, floating* v, floating* vmax,     # IN/OUT (vmax or NULL)
                           Py_ssize_t n, const AdamCoef* c) noexcept nogil:
    cdef floating omb1 = <floating>c.one_minus_beta1
    cdef floating omb1_m1 = -(<floating>1 - omb1)
    cdef floating b2 = <floating>c.beta2
    cdef floating omb2 = <floating>c.one_minus_beta2
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating step_size = <floating>c.step_size
    cdef floating inv_bc2s = <floating>c.inv_bias_correction2_sqrt
    cdef floating decay = <floating>c.decay
    cdef floating sign = <floating>c.sign
    cdef bint omb1_small = omb1 < <floating>0.5
    cdef bint l2 = c.l2
    cdef floating g, mi, vi, vh
    cdef Py_ssize_t i
    if vmax == NULL:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            mi = lerp(m[i], g, omb1, omb1_m1, omb1_small)
            m[i] = mi
            vi = v[i] * b2 + omb2 * g * g
            v[i] = vi
            p[i] = p[i] * decay - step_size * (mi / (fsqrt(vi) * inv_bc2s + eps))
    else:
        for i in range(n):
            g = sign * grad[i]
            if l2:
                g = g + wd * p[i]
            mi = lerp(m[i], g, omb1, omb1_m1, omb1_small)
            m[i] = mi
            vi = v[i] * b2 + omb2 * g * g
            v[i] = vi
            # torch.maximum: NaN in either operand gives NaN.
            vh = vmax[i]
            if vi > vh or vi != vi:
                vh = vi
            vmax[i] = vh
            p[i] = p[i] * decay - step_size * (mi / (fsqrt(vh) * inv_bc2s + eps))



# ---- per-dtype adapters: core_fn(ptrs = [param, grad, state...], n, coef) ----
cdef inline void sgd_core_f32(char** b, Py_ssize_t n, const void* c) noexcept nogil:
    sgd_core(<float*>b[0], <const float*>b[1], <float*>b[2], n, <const SGDCoef*>c)

cdef inline void sgd_core_f64(char** b, Py_ssize_t n, const void* c) noexcept nogil:
    sgd_core(<double*>b[0], <const double*>b[1], <double*>b[2], n, <const SGDCoef*>c)

cdef inline void rmsprop_core_f32(char** b, Py_ssize_t n, const void* c) noexcept nogil:
    rmsprop_core(<float*>b[0], <const float*>b[1], <float*>b[2], <float*>b[3], <float*>b[4],
                 n, <const RMSpropCoef*>c)

cdef inline void rmsprop_core_f64(char** b, Py_ssize_t n, const void* c) noexcept nogil:
    rmsprop_core(<double*>b[0], <const double*>b[1], <double*>b[2], <double*>b[3],
                 <double*>b[4], n, <const RMSpropCoef*>c)

cdef inline void adam_core_f32(char** b, Py_ssize_t n, const void* c) noexcept nogil:
    adam_core(<float*>b[0], <const float*>b[1], <float*>b[2], <float*>b[3], <float*>b[4],
              n, <const AdamCoef*>c)

cdef inline void adam_core_f64(char** b, Py_ssize_t n, const void* c) noexcept nogil:
    adam_core(<double*>b[0], <const double*>b[1], <double*>b[2], <double*>b[3],
              <double*>b[4], n, <const AdamCoef*>c)

# ---- a table of the adapters, one per compiled instruction-set variant ----
# fastlr/_cores_baseline.pyx and _cores_x86_64_v3.pyx compile these same loops for the
# baseline ISA and for x86-64-v3 (AVX2); fastlr/_dispatch.py picks one at import.
ctypedef struct CoreTable:
    core_fn sgd[2]          # [float32, float64]
    core_fn rmsprop[2]
    core_fn adam[2]
