# fastlr/_core/loops.pxd -- the update maths shared by fastlr's compiled modules (private).
#
# The hand-written part of every optimizer family, and the only one: per family `x` (the
# table's row in fastlr/_specs.py),
# * `XCoef` and `x_coef(const XHyper* h, XCoef* c)`: the per-step coefficients, derived once
#   per call from the C API's hyperparameter struct (in double, as torch does). Every XCoef
#   has a `double sign` (+-1 for maximize) that the core multiplies each grad by: clipping
#   scales it;
# * `x_core(param, grad, <state buffers in table order>, n, const XCoef*)`: the fused-type
#   core loop that reads every buffer once and writes it once, loop-invariant branches
#   hoisted so each loop body is straight-line code GCC vectorizes (-ffp-contract=off: the
#   same bits in every instruction-set variant).
# Plus the gradient reductions (sum of squares, non-finite scan).
#
# Everything around these is generated from the table (setup.py renders the templates):
# the per-dtype adapters with one signature (`core_fn`) and the CoreTable
# (families.pxd), the C API functions and Python kernels (_kernels_api.pxi), the engine's
# per-family dispatch (engine_families.pxi). Not part of the stable C API (_kernels.pxd
# is); it may change in any release.

cimport cython
from cython cimport floating
from libc.math cimport fabs, pow, sqrt, sqrtf
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastlr._core.bfloat cimport bf16_round_stochastic, bf16_widen, random_bits, step_salt

from fastlr._kernels cimport (AdadeltaHyper, AdagradHyper, AdamaxHyper, AdamHyper, ASGDHyper,
                             LionHyper, NAdamHyper, RAdamHyper, RMSpropHyper, RpropHyper,
                             SGDHyper)

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
    uint32_t salt[2]        # bfloat16 state: the stochastic rounding's salts (m and v,
                            # AMSGrad's vmax)


ctypedef struct AdagradCoef:
    double clr, eps, weight_decay, sign

ctypedef struct AdadeltaCoef:
    double lr, rho, one_minus_rho, eps, weight_decay, sign

ctypedef struct AdamaxCoef:
    double one_minus_beta1, beta2, eps, weight_decay, neg_clr, sign

ctypedef struct NAdamCoef:
    double one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bias_correction2
    double grad_coef, avg_coef, decay, sign
    double mu_product       # after this update
    int l2

ctypedef struct RAdamCoef:
    double one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bias_correction1
    double lr, sqrt_bias_correction2, rect, decay, sign
    int l2, rectified

ctypedef struct LionCoef:
    double neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay, sign

ctypedef struct RpropCoef:
    double etaminus, etaplus, step_size_min, step_size_max, sign

ctypedef struct ASGDCoef:
    double weight_decay, decay, neg_eta, mu, sign
    double eta              # the next update's eta (the caller keeps it)
    int l2, average


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
    c.salt[0] = step_salt(h.step, 0)
    c.salt[1] = step_salt(h.step, 1)


cdef inline void adagrad_coef(const AdagradHyper* h, AdagradCoef* c) noexcept nogil:
    c.clr = h.lr / (1.0 + <double>(h.step - 1) * h.lr_decay)
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.sign = -1.0 if h.maximize else 1.0


cdef inline void adadelta_coef(const AdadeltaHyper* h, AdadeltaCoef* c) noexcept nogil:
    c.lr = h.lr
    c.rho = h.rho
    c.one_minus_rho = 1.0 - h.rho
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.sign = -1.0 if h.maximize else 1.0


cdef inline void adamax_coef(const AdamaxHyper* h, AdamaxCoef* c) noexcept nogil:
    c.one_minus_beta1 = 1.0 - h.beta1
    c.beta2 = h.beta2
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.neg_clr = -(h.lr / (1.0 - pow(h.beta1, <double>h.step)))
    c.sign = -1.0 if h.maximize else 1.0


cdef inline double nadam_mu_of(double beta1, double momentum_decay, int64_t step) noexcept nogil:
    return beta1 * (1.0 - 0.5 * pow(0.96, <double>step * momentum_decay))


cdef inline void nadam_coef(const NAdamHyper* h, NAdamCoef* c) noexcept nogil:
    cdef double mu = nadam_mu_of(h.beta1, h.momentum_decay, h.step)
    cdef double mu_next = nadam_mu_of(h.beta1, h.momentum_decay, h.step + 1)
    cdef double prod = h.mu_product * mu
    c.one_minus_beta1 = 1.0 - h.beta1
    c.beta2 = h.beta2
    c.one_minus_beta2 = 1.0 - h.beta2
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.bias_correction2 = 1.0 - pow(h.beta2, <double>h.step)
    c.grad_coef = -h.lr * (1.0 - mu) / (1.0 - prod)
    c.avg_coef = (-h.lr * mu_next) / (1.0 - prod * mu_next)
    c.mu_product = prod
    c.sign = -1.0 if h.maximize else 1.0
    c.l2 = h.weight_decay != 0.0 and not h.decoupled_weight_decay
    c.decay = 1.0 - h.lr * h.weight_decay if h.decoupled_weight_decay else 1.0


cdef inline void radam_coef(const RAdamHyper* h, RAdamCoef* c) noexcept nogil:
    cdef double t = <double>h.step
    cdef double bc2 = 1.0 - pow(h.beta2, t)
    cdef double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0
    cdef double rho_t = rho_inf - 2.0 * t * pow(h.beta2, t) / bc2
    c.one_minus_beta1 = 1.0 - h.beta1
    c.beta2 = h.beta2
    c.one_minus_beta2 = 1.0 - h.beta2
    c.eps = h.eps
    c.weight_decay = h.weight_decay
    c.bias_correction1 = 1.0 - pow(h.beta1, t)
    c.lr = h.lr
    # torch writes these square roots as x ** 0.5 (C's pow), which can differ from sqrt
    c.sqrt_bias_correction2 = pow(bc2, 0.5)
    c.rectified = rho_t > 5.0
    c.rect = pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                 / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5) if c.rectified else 1.0
    c.sign = -1.0 if h.maximize else 1.0
    c.l2 = h.weight_decay != 0.0 and not h.decoupled_weight_decay
    c.decay = 1.0 - h.lr * h.weight_decay if h.decoupled_weight_decay else 1.0


cdef inline void rprop_coef(const RpropHyper* h, RpropCoef* c) noexcept nogil:
    c.etaminus = h.etaminus
    c.etaplus = h.etaplus
    c.step_size_min = h.step_size_min
    c.step_size_max = h.step_size_max
    c.sign = -1.0 if h.maximize else 1.0

cdef inline double asgd_next_eta(const ASGDHyper* h) noexcept nogil:
    """torch's ``lr / ((1 + lambd * lr * step) ** alpha)``, after update ``step``."""
    return h.lr / pow(1.0 + h.lambd * h.lr * <double>h.step, h.alpha)

cdef inline void asgd_coef(const ASGDHyper* h, ASGDCoef* c) noexcept nogil:
    # torch's state: eta starts at lr and mu at 1 (its first update); after update t it
    # stores eta = lr / (1 + lambd lr t)^alpha and mu = 1 / max(1, t - t0)
    cdef double eta = h.lr if h.step <= 1 else h.eta
    cdef double d = <double>(h.step - 1) - h.t0
    c.mu = 1.0 if h.step <= 1 else 1.0 / (d if d > 1.0 else 1.0)
    c.weight_decay = h.weight_decay
    c.l2 = h.weight_decay != 0.0
    c.average = c.mu != 1.0
    c.decay = 1.0 - h.lambd * eta
    c.neg_eta = -eta
    c.eta = asgd_next_eta(h)
    c.sign = -1.0 if h.maximize else 1.0

cdef inline void lion_coef(const LionHyper* h, LionCoef* c) noexcept nogil:
    c.neg_lr = -h.lr
    c.beta1 = h.beta1
    c.one_minus_beta1 = 1.0 - h.beta1
    c.beta2 = h.beta2
    c.one_minus_beta2 = 1.0 - h.beta2
    c.weight_decay = h.weight_decay
    c.sign = -1.0 if h.maximize else 1.0


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



# ---------------------------------------------------------------------------------------
# bfloat16 optimizer state (state_dtype="bfloat16"): float32 params and grads, the state
# buffers kept as bfloat16 bits (fastlr/_core/bfloat.pxd). Each element's state is widened
# (exactly), updated in float32 with the float32 core's operations in the same order, used
# unrounded for this step's param update, and stored rounded stochastically (bfloat.pxd:
# bf16_round_stochastic, salted per step and buffer; nearest rounding would freeze the
# second moment, whose per-step change is below half a bfloat16 ulp): 20 bytes moved per
# element instead of 28 (Adam). The NumPy twin (fastlr.reference.adam_bf16_state) repeats
# these operations and the hash, so the two agree bit for bit.
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adam_bf16_element(float* p, const float* grad, uint16_t* m, uint16_t* v,
                                   uint16_t* vmax, Py_ssize_t i, float omb1, float omb1_m1,
                                   float b2, float omb2, float eps, float wd, float step_size,
                                   float inv_bc2s, float decay, float sign, uint32_t salt,
                                   uint32_t salt_vmax, bint l2,
                                   bint omb1_small, bint amsgrad) noexcept nogil:
    # One element of adam_core_bf16. The flags come in as constants where the loops below
    # are unswitched by hand, so after inlining each loop body is straight-line code that
    # GCC vectorizes (its own unswitching gives up on a body this long).
    cdef float g, mi, vi, vh, pi = p[i]
    cdef uint32_t key, r    # the param's bits (the element's key), its random bits
    memcpy(&key, &pi, 4)
    r = random_bits(key, salt)          # low half rounds m, high half v
    g = sign * grad[i]
    if l2:
        g = g + wd * pi
    mi = lerp(bf16_widen(m[i]), g, omb1, omb1_m1, omb1_small)
    m[i] = bf16_round_stochastic(mi, r & 0xFFFF)
    vi = bf16_widen(v[i]) * b2 + omb2 * g * g
    v[i] = bf16_round_stochastic(vi, r >> 16)
    vh = vi
    if amsgrad:
        # torch.maximum: NaN in either operand gives NaN (against the stored maximum)
        vh = bf16_widen(vmax[i])
        vh = vi if (vi > vh) | (vi != vi) else vh     # (| : no branch, so it vectorizes)
        vmax[i] = bf16_round_stochastic(vh, random_bits(key, salt_vmax) >> 16)
    p[i] = pi * decay - step_size * (mi / (fsqrt(vh) * inv_bc2s + eps))


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adam_core_bf16(float* p, const float* grad,                 # IN/OUT, IN
                                uint16_t* m, uint16_t* v, uint16_t* vmax,    # IN/OUT (bf16)
                                Py_ssize_t n, const AdamCoef* c) noexcept nogil:
    cdef float omb1 = <float>c.one_minus_beta1
    cdef float omb1_m1 = -(<float>1 - omb1)
    cdef float b2 = <float>c.beta2
    cdef float omb2 = <float>c.one_minus_beta2
    cdef float eps = <float>c.eps
    cdef float wd = <float>c.weight_decay
    cdef float step_size = <float>c.step_size
    cdef float inv_bc2s = <float>c.inv_bias_correction2_sqrt
    cdef float decay = <float>c.decay
    cdef float sign = <float>c.sign
    cdef bint small = omb1 < <float>0.5
    cdef bint l2 = c.l2
    cdef bint ams = vmax != NULL
    cdef uint32_t sm = c.salt[0], sx = c.salt[1]
    cdef Py_ssize_t i
    # (the common cases with constant flags; every other combination in the last loop)
    if small and not l2 and not ams:
        for i in range(n):
            adam_bf16_element(p, grad, m, v, vmax, i, omb1, omb1_m1, b2, omb2, eps, wd,
                              step_size, inv_bc2s, decay, sign, sm, sx, False, True, False)
    elif small and l2 and not ams:
        for i in range(n):
            adam_bf16_element(p, grad, m, v, vmax, i, omb1, omb1_m1, b2, omb2, eps, wd,
                              step_size, inv_bc2s, decay, sign, sm, sx, True, True, False)
    elif small and not l2 and ams:
        for i in range(n):
            adam_bf16_element(p, grad, m, v, vmax, i, omb1, omb1_m1, b2, omb2, eps, wd,
                              step_size, inv_bc2s, decay, sign, sm, sx, False, True, True)
    else:
        for i in range(n):
            adam_bf16_element(p, grad, m, v, vmax, i, omb1, omb1_m1, b2, omb2, eps, wd,
                              step_size, inv_bc2s, decay, sign, sm, sx, l2, small, ams)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adagrad_core(floating* p, const floating* grad, floating* ssum,  # IN/OUT, IN, IN/OUT
                              Py_ssize_t n, const AdagradCoef* c) noexcept nogil:
    cdef floating neg_clr = -<floating>c.clr
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating sign = <floating>c.sign
    cdef bint l2 = c.weight_decay != 0.0
    cdef floating g, s
    cdef Py_ssize_t i
    for i in range(n):
        g = sign * grad[i]
        if l2:
            g = g + wd * p[i]
        s = ssum[i] + g * g
        ssum[i] = s
        # torch: param.addcdiv_(grad, sqrt(sum) + eps, value=-clr) = p + (-clr * g) / std
        p[i] = p[i] + (neg_clr * g) / (fsqrt(s) + eps)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adadelta_core(floating* p, const floating* grad,            # IN/OUT, IN
                               floating* sq, floating* acc,                  # IN/OUT
                               Py_ssize_t n, const AdadeltaCoef* c) noexcept nogil:
    cdef floating neg_lr = -<floating>c.lr
    cdef floating rho = <floating>c.rho
    cdef floating omr = <floating>c.one_minus_rho
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating sign = <floating>c.sign
    cdef bint l2 = c.weight_decay != 0.0
    cdef floating g, s, d, a
    cdef Py_ssize_t i
    for i in range(n):
        g = sign * grad[i]
        if l2:
            g = g + wd * p[i]
        s = sq[i] * rho + omr * g * g
        sq[i] = s
        d = fsqrt(acc[i] + eps) / fsqrt(s + eps)
        d = d * g
        a = acc[i] * rho + omr * d * d
        acc[i] = a
        p[i] = p[i] + neg_lr * d


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void adamax_core(floating* p, const floating* grad,               # IN/OUT, IN
                             floating* m, floating* u,                        # IN/OUT
                             Py_ssize_t n, const AdamaxCoef* c) noexcept nogil:
    cdef floating omb1 = <floating>c.one_minus_beta1
    cdef floating omb1_m1 = -(<floating>1 - omb1)
    cdef bint omb1_small = omb1 < <floating>0.5
    cdef floating b2 = <floating>c.beta2
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating neg_clr = <floating>c.neg_clr
    cdef floating sign = <floating>c.sign
    cdef bint l2 = c.weight_decay != 0.0
    cdef floating g, mi, a, b, ui
    cdef Py_ssize_t i
    for i in range(n):
        g = sign * grad[i]
        if l2:
            g = g + wd * p[i]
        mi = lerp(m[i], g, omb1, omb1_m1, omb1_small)
        m[i] = mi
        # torch.maximum(exp_inf * beta2, |g| + eps): NaN in either gives NaN
        a = u[i] * b2
        b = (g if g >= 0 else -g) + eps
        ui = a
        if b > a or b != b:
            ui = b
        u[i] = ui
        p[i] = p[i] + (neg_clr * mi) / ui


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void nadam_core(floating* p, const floating* grad,                # IN/OUT, IN
                            floating* m, floating* v,                         # IN/OUT
                            Py_ssize_t n, const NAdamCoef* c) noexcept nogil:
    cdef floating omb1 = <floating>c.one_minus_beta1
    cdef floating omb1_m1 = -(<floating>1 - omb1)
    cdef bint omb1_small = omb1 < <floating>0.5
    cdef floating b2 = <floating>c.beta2
    cdef floating omb2 = <floating>c.one_minus_beta2
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating bc2 = <floating>c.bias_correction2
    cdef floating gc = <floating>c.grad_coef
    cdef floating ac = <floating>c.avg_coef
    cdef floating decay = <floating>c.decay
    cdef floating sign = <floating>c.sign
    cdef bint l2 = c.l2
    cdef floating g, pi, mi, vi, denom
    cdef Py_ssize_t i
    for i in range(n):
        pi = p[i] * decay
        g = sign * grad[i]
        if l2:
            g = g + wd * pi
        mi = lerp(m[i], g, omb1, omb1_m1, omb1_small)
        m[i] = mi
        vi = v[i] * b2 + omb2 * g * g
        v[i] = vi
        denom = fsqrt(vi / bc2) + eps
        pi = pi + (gc * g) / denom
        p[i] = pi + (ac * mi) / denom


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void radam_core(floating* p, const floating* grad,                # IN/OUT, IN
                            floating* m, floating* v,                         # IN/OUT
                            Py_ssize_t n, const RAdamCoef* c) noexcept nogil:
    cdef floating omb1 = <floating>c.one_minus_beta1
    cdef floating omb1_m1 = -(<floating>1 - omb1)
    cdef bint omb1_small = omb1 < <floating>0.5
    cdef floating b2 = <floating>c.beta2
    cdef floating omb2 = <floating>c.one_minus_beta2
    cdef floating eps = <floating>c.eps
    cdef floating wd = <floating>c.weight_decay
    cdef floating bc1 = <floating>c.bias_correction1
    cdef floating lr = <floating>c.lr
    cdef floating sbc2 = <floating>c.sqrt_bias_correction2
    cdef floating rect = <floating>c.rect
    cdef floating decay = <floating>c.decay
    cdef floating sign = <floating>c.sign
    cdef bint l2 = c.l2
    cdef floating g, pi, mi, vi
    cdef Py_ssize_t i
    if c.rectified:
        for i in range(n):
            pi = p[i] * decay
            g = sign * grad[i]
            if l2:
                g = g + wd * pi
            mi = lerp(m[i], g, omb1, omb1_m1, omb1_small)
            m[i] = mi
            vi = v[i] * b2 + omb2 * g * g
            v[i] = vi
            # torch: (m / bc1) * lr * (sqrt(bc2) / (sqrt(v) + eps)) * rect
            p[i] = pi - (mi / bc1 * lr) * (sbc2 / (fsqrt(vi) + eps)) * rect
    else:
        for i in range(n):
            pi = p[i] * decay
            g = sign * grad[i]
            if l2:
                g = g + wd * pi
            mi = lerp(m[i], g, omb1, omb1_m1, omb1_small)
            m[i] = mi
            v[i] = v[i] * b2 + omb2 * g * g
            p[i] = pi - mi / bc1 * lr


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void lion_core(floating* p, const floating* grad, floating* m,   # IN/OUT, IN, IN/OUT
                           Py_ssize_t n, const LionCoef* c) noexcept nogil:
    cdef floating neg_lr = <floating>c.neg_lr
    cdef floating b1 = <floating>c.beta1
    cdef floating omb1 = <floating>c.one_minus_beta1
    cdef floating b2 = <floating>c.beta2
    cdef floating omb2 = <floating>c.one_minus_beta2
    cdef floating wd = <floating>c.weight_decay
    cdef floating sign = <floating>c.sign
    cdef floating g, x, u, mi
    cdef Py_ssize_t i
    for i in range(n):
        g = sign * grad[i]
        mi = m[i]
        x = omb1 * g + b1 * mi
        # sign(x), keeping 0 and NaN (jnp.sign)
        u = x
        if x > 0:
            u = 1
        elif x < 0:
            u = -1
        m[i] = omb2 * g + b2 * mi
        p[i] = p[i] + neg_lr * (u + wd * p[i])


# ---------------------------------------------------------------------------------------
# Gradient reductions (clipping by global norm, the non-finite scan). Element i of a
# segment that starts at global element `start` adds into lane (start + i) % 8 in double,
# so the sums depend only on global positions: not on how the elements are split into
# segments, blocks or threads.
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void sumsq_core(const floating* x, Py_ssize_t n, Py_ssize_t start,
                            double* acc) noexcept nogil:              # IN, OUT (8 lanes)
    cdef Py_ssize_t i = 0, lane
    cdef double a0, a1, a2, a3, a4, a5, a6, a7, t
    while i < n and (start + i) % 8 != 0:
        t = <double>x[i]
        acc[(start + i) % 8] += t * t
        i += 1
    a0 = acc[0]; a1 = acc[1]; a2 = acc[2]; a3 = acc[3]
    a4 = acc[4]; a5 = acc[5]; a6 = acc[6]; a7 = acc[7]
    while i + 8 <= n:
        a0 = a0 + <double>x[i] * <double>x[i]
        a1 = a1 + <double>x[i + 1] * <double>x[i + 1]
        a2 = a2 + <double>x[i + 2] * <double>x[i + 2]
        a3 = a3 + <double>x[i + 3] * <double>x[i + 3]
        a4 = a4 + <double>x[i + 4] * <double>x[i + 4]
        a5 = a5 + <double>x[i + 5] * <double>x[i + 5]
        a6 = a6 + <double>x[i + 6] * <double>x[i + 6]
        a7 = a7 + <double>x[i + 7] * <double>x[i + 7]
        i += 8
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3
    acc[4] = a4; acc[5] = a5; acc[6] = a6; acc[7] = a7
    while i < n:
        t = <double>x[i]
        lane = (start + i) % 8
        acc[lane] += t * t
        i += 1


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint nonfinite_core(const floating* x, Py_ssize_t n) noexcept nogil:
    """True when an element is NaN or +-Inf: an integer max over the exponent bits, which
    vectorizes (no floating-point reduction order to keep)."""
    cdef const uint32_t* b32
    cdef const uint64_t* b64
    cdef uint32_t m32 = 0
    cdef uint64_t m64 = 0
    cdef Py_ssize_t i
    if floating is float:
        b32 = <const uint32_t*>x
        for i in range(n):
            m32 = max(m32, b32[i] & 0x7f800000u)
        return m32 == 0x7f800000u
    else:
        b64 = <const uint64_t*>x
        for i in range(n):
            m64 = max(m64, b64[i] & 0x7ff0000000000000u)
        return m64 == 0x7ff0000000000000u



# ---- gradient reductions, per dtype: acc is 8 double lanes (see sumsq_core) ----
ctypedef void (*sumsq_fn)(const char* x, Py_ssize_t n, Py_ssize_t start, double* acc) noexcept nogil
ctypedef bint (*nonfinite_fn)(const char* x, Py_ssize_t n) noexcept nogil

cdef inline void sumsq_f32(const char* x, Py_ssize_t n, Py_ssize_t start, double* acc) noexcept nogil:
    sumsq_core(<const float*>x, n, start, acc)

cdef inline void sumsq_f64(const char* x, Py_ssize_t n, Py_ssize_t start, double* acc) noexcept nogil:
    sumsq_core(<const double*>x, n, start, acc)

cdef inline bint nonfinite_f32(const char* x, Py_ssize_t n) noexcept nogil:
    return nonfinite_core(<const float*>x, n)

cdef inline bint nonfinite_f64(const char* x, Py_ssize_t n) noexcept nogil:
    return nonfinite_core(<const double*>x, n)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void rprop_core(floating* p, const floating* grad, floating* prev,  # IN/OUT, IN, IN/OUT
                            floating* step_size, Py_ssize_t n,                    # IN/OUT
                            const RpropCoef* c) noexcept nogil:
    # torch's single-tensor Rprop, in the buffers' dtype: the factors and bounds rounded to
    # it (torch writes them into a tensor of that dtype, and clamps and compares in it)
    cdef floating em = <floating>c.etaminus
    cdef floating ep = <floating>c.etaplus
    cdef floating lo = <floating>c.step_size_min
    cdef floating hi = <floating>c.step_size_max
    cdef floating sign = <floating>c.sign
    cdef floating g, s, f, st, u
    cdef Py_ssize_t i
    cdef floating one = 1, zero = 0, minus_one = -1
    # one select per statement, each between two plain values: GCC turns them into blends
    # and vectorizes the loop (nested selects or (g > 0) - (g < 0) keep a branch, and random
    # grad signs mispredict branches)
    for i in range(n):
        g = sign * grad[i]
        s = g * prev[i]
        f = ep if s > 0 else one        # s == 0 or NaN: 1 (torch.sign(NaN) is 0)
        f = em if s < 0 else f
        st = step_size[i] * f
        st = lo if st < lo else st      # clamp_(lo, hi): min(max(st, lo), hi), NaN kept
        st = hi if st > hi else st
        step_size[i] = st
        g = zero if f == em else g      # torch: grad[sign.eq(etaminus)] = 0
        u = one if g > 0 else zero      # sign(g); 0 for 0 and NaN
        u = minus_one if g < 0 else u
        p[i] = p[i] - u * st
        prev[i] = g


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void asgd_core(floating* p, const floating* grad, floating* ax,   # IN/OUT, IN, IN/OUT
                           Py_ssize_t n, const ASGDCoef* c) noexcept nogil:
    # torch's single-tensor ASGD in the buffers' dtype: g + wd * p (if wd != 0),
    # p * (1 - lambd eta), p + (-eta) g, then ax + (p - ax) mu, or ax = p when mu == 1
    cdef floating wd = <floating>c.weight_decay
    cdef floating decay = <floating>c.decay
    cdef floating neg_eta = <floating>c.neg_eta
    cdef floating mu = <floating>c.mu
    cdef floating sign = <floating>c.sign
    cdef floating g, pi
    cdef Py_ssize_t i
    if c.l2:
        if c.average:
            for i in range(n):
                g = sign * grad[i]
                pi = p[i]
                g = g + wd * pi
                pi = pi * decay
                pi = pi + neg_eta * g
                p[i] = pi
                ax[i] = ax[i] + (pi - ax[i]) * mu
        else:
            for i in range(n):
                g = sign * grad[i]
                pi = p[i]
                g = g + wd * pi
                pi = pi * decay
                pi = pi + neg_eta * g
                p[i] = pi
                ax[i] = pi
    else:
        if c.average:
            for i in range(n):
                g = sign * grad[i]
                pi = p[i] * decay
                pi = pi + neg_eta * g
                p[i] = pi
                ax[i] = ax[i] + (pi - ax[i]) * mu
        else:
            for i in range(n):
                g = sign * grad[i]
                pi = p[i] * decay
                pi = pi + neg_eta * g
                p[i] = pi
                ax[i] = pi
