# fastlr/_core/muon.pyx -- Muon's compiled passes and its validated kernel.
#
# Design notes
# ------------
# a) What: torch.optim.Muon 2.13's single-tensor update of one 2-D param:
#    B <- lerp(B, g, 1 - momentum); u = lerp(g, B, momentum) (Nesterov) or B;
#    O = NS(u), torch's Newton-Schulz orthogonalization; p <- p * (1 - lr*wd) - lr' * O.
# b) Precision: torch runs NS in bfloat16, on CPU too (`grad.bfloat16()`): every matrix of
#    the iteration is rounded to bfloat16. Here a bfloat16 matrix is a float32 array holding
#    bfloat16 values; each torch operation is the float32 computation torch's CPU kernels
#    perform, then one rounding to bfloat16 (nearest even): X @ Y is NumPy's float32 matmul
#    (its BLAS; the products of two bfloat16 are exact in float32), addmm(C, A, B, beta=b,
#    alpha=c) is b*C + c*(A @ B) in float32 rounded once, X / n is float32 division. Only
#    BLAS's float32 summation order differs from MKL's (torch), which changes a rounded
#    element now and then on long rows (docs/muon.rst measures it).
# c) Passes: (1) `momentum_pass`: the buffer's lerp, Nesterov's blend, the rounding of the
#    update to bfloat16 written straight into the NS orientation (transposed when rows >
#    cols: the iteration always works on a C-contiguous r x c matrix, r <= c), and the sum
#    of squares for the Frobenius norm, serially in double (deterministic); (2)
#    `scale_pass`: X / max(norm, eps), rounded; per NS iteration the two matmuls and
#    `axpby_pass` (b*G + c*(G@G), then a*X + U@X, each rounded once); (3) `apply_pass`:
#    the decoupled decay and the param update from the orthogonalized matrix, read back
#    through the transpose.
# d) Bits: torch's vectorized CPU kernels use fused multiply-adds for lerp
#    (fma(w or w-1, end - start, start or end)) and for add(alpha=) (fma(alpha, o, p)); so
#    do these loops (fma/fmaf), which keeps float64 runs bit-identical to torch's while the
#    bfloat16 matrices agree (a one-ulp difference in a param can flip a bfloat16 rounding a
#    few steps later). Everything else is plain IEEE operations (-ffp-contract=off).
# e) All or nothing: `muon` checks every argument (types, dtypes, shapes, layouts, overlap,
#    hyperparameters) before writing; the passes run without the GIL from 4096 elements.
# f) Argument directions are marked # IN / # OUT on the passes below.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport fma, fmaf, sqrt, isnan
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

import math
import numpy as np

from fastlr._core.args cimport (NONNEG, FINITE, checked_real, flag_arg, int_arg,
                                choice_arg, ndarray_hint)
from fastlr._core.arrays cimport check_like, layout_name

cnp.import_array()

cdef enum:
    NOGIL_MIN_SIZE = 4096
    MAX_NS_STEPS = 99       # torch: "Number of steps must be less than 100"

__all__ = ["muon", "ADJUST_LR_FNS"]

#: adjust_lr_fn's values besides None (torch's)
ADJUST_LR_FNS = ("original", "match_rms_adamw")


# ---------------------------------------------------------------------------------------
# element operations
# ---------------------------------------------------------------------------------------
cdef inline float bf16(float x) noexcept nogil:
    """x rounded to bfloat16 (nearest, ties to even), as a float32; NaN stays NaN."""
    cdef uint32_t u
    if isnan(x):
        return x
    memcpy(&u, &x, 4)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u
    memcpy(&x, &u, 4)
    return x


cdef inline floating fmadd(floating a, floating b, floating c) noexcept nogil:
    if floating is float:
        return fmaf(a, b, c)
    else:
        return fma(a, b, c)


cdef inline floating lerp(floating start, floating end, floating w) noexcept nogil:
    # torch's vectorized lerp: fma(w, end - start, start) for w < 0.5, else
    # fma(w - 1, end - start, end)
    if w < <floating>0.5:
        return fmadd(w, end - start, start)
    return fmadd(w - <floating>1, end - start, end)


# ---------------------------------------------------------------------------------------
# the passes (no checks: `muon` validates first)
# ---------------------------------------------------------------------------------------
@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef double momentum_pass(const floating* grad,        # IN
                          floating* buf,               # IN/OUT momentum buffer
                          float* x,                    # OUT r x c, C order, bfloat16 values
                          Py_ssize_t n_outer, Py_ssize_t n_inner,
                          Py_ssize_t x_outer, Py_ssize_t x_inner,
                          floating one_minus_momentum, floating momentum,
                          bint nesterov) noexcept nogil:
    """Memory order of param: n_outer rows of n_inner elements; element (o, i) goes to
    x[o * x_outer + i * x_inner]. Returns the sum of squares of the rounded update."""
    cdef Py_ssize_t o, i, k = 0
    cdef floating g, b, u
    cdef float r
    cdef double ss = 0.0
    for o in range(n_outer):
        for i in range(n_inner):
            g = grad[k]
            b = lerp(buf[k], g, one_minus_momentum)
            buf[k] = b
            u = lerp(g, b, momentum) if nesterov else b
            r = bf16(<float>u)
            x[o * x_outer + i * x_inner] = r
            ss += <double>r * <double>r
            k += 1
    return ss


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void scale_pass(float* x, Py_ssize_t n, float norm) noexcept nogil:   # IN/OUT
    cdef Py_ssize_t k
    for k in range(n):
        x[k] = bf16(x[k] / norm)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void round_pass(float* x, Py_ssize_t n) noexcept nogil:                # IN/OUT
    cdef Py_ssize_t k
    for k in range(n):
        x[k] = bf16(x[k])


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void axpby_pass(float* out, const float* c, const float* p,   # OUT, IN, IN
                     Py_ssize_t n, float beta, float alpha) noexcept nogil:
    """out = bf16(beta * c + alpha * p), as torch's bfloat16 addmm epilogue."""
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = bf16(beta * c[k] + alpha * p[k])


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void apply_pass(floating* param,                       # IN/OUT
                     const float* x,                        # IN orthogonalized, r x c
                     Py_ssize_t n_outer, Py_ssize_t n_inner,
                     Py_ssize_t x_outer, Py_ssize_t x_inner,
                     floating decay, floating alpha) noexcept nogil:
    """param = fma(alpha, O, param * decay): torch's mul_ then add_(alpha=)."""
    cdef Py_ssize_t o, i, k = 0
    for o in range(n_outer):
        for i in range(n_inner):
            param[k] = fmadd(alpha, <floating>x[o * x_outer + i * x_inner],
                             param[k] * decay)
            k += 1


# ---------------------------------------------------------------------------------------
# the validated kernel
# ---------------------------------------------------------------------------------------
cdef object _check_array(str fn, str name, object a, bint written):
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, got "
                        f"{type(a).__name__}{ndarray_hint(a)}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if arr.dtype not in (np.float32, np.float64) or not arr.dtype.isnative:
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64 (native byte "
                        f"order), got {arr.dtype}")
    if written and not arr.flags.writeable:
        raise ValueError(f"{fn}: {name} is read-only but is updated in place")
    if not arr.flags.aligned:
        raise ValueError(f"{fn}: {name} is not aligned in memory")
    return arr


def adjusted_lr(double lr, object adjust_lr_fn, Py_ssize_t rows, Py_ssize_t cols):
    """torch's ``_adjust_lr``: ``lr * sqrt(max(1, rows / cols))`` (None, "original") or
    ``lr * (0.2 * sqrt(max(rows, cols)))`` ("match_rms_adamw"), in double."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, <double>rows / <double>cols))
    return lr * (0.2 * math.sqrt(max(rows, cols)))


def check_hypers(str fn, str where, lr, weight_decay, momentum, nesterov, ns_coefficients,
                 eps, ns_steps, adjust_lr_fn):
    """Every hyperparameter checked (numbers, not schedules); returns them as
    (lr, weight_decay, momentum, nesterov, (a, b, c), eps, ns_steps, adjust_lr_fn).
    Messages name an argument ``key``, or ``where[key]`` (a group: "param_groups[1]")."""
    def label(str key):
        return f"{where}[{key!r}]" if where else key
    lr_ = checked_real(fn, label("lr"), lr, NONNEG)
    wd = checked_real(fn, label("weight_decay"), weight_decay, NONNEG)
    mom = checked_real(fn, label("momentum"), momentum, NONNEG)
    nest = flag_arg(fn, label("nesterov"), nesterov)
    coefs = check_coefficients(fn, label("ns_coefficients"), ns_coefficients)
    eps_ = checked_real(fn, label("eps"), eps, NONNEG)
    steps = int(int_arg(fn, label("ns_steps"), ns_steps, 0, MAX_NS_STEPS))
    if adjust_lr_fn is not None:
        choice_arg(fn, label("adjust_lr_fn"), adjust_lr_fn, ADJUST_LR_FNS)
    return lr_, wd, mom, nest, coefs, eps_, steps, adjust_lr_fn


def check_coefficients(str fn, str name, object value):
    """ns_coefficients: a tuple or list of three finite numbers (a, b, c)."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{fn}: {name} must be a tuple of three numbers (a, b, c), got "
                        f"{type(value).__name__}")
    if len(value) != 3:
        raise ValueError(f"{fn}: {name} must hold three numbers (a, b, c), got "
                         f"{len(value)}")
    return tuple(checked_real(fn, f"{name}[{k}]", value[k], FINITE) for k in range(3))


def muon(param, grad, momentum_buffer, *, lr, weight_decay=0.1, momentum=0.95,
         nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5,
         adjust_lr_fn=None):
    """One Muon update of a 2-D param in place (torch.optim.Muon 2.13's single-tensor path).

    With ``g`` the grad and ``B`` the momentum buffer::

        B = lerp(B, g, 1 - momentum)
        u = lerp(g, B, momentum) if nesterov else B
        X = bf16(u) (transposed when rows > cols);  X = X / max(||X||_F, eps)
        ns_steps times:  G = X X^T;  U = b G + c G G;  X = a X + U X    (bfloat16)
        param = param * (1 - lr * weight_decay) - lr' * X (transposed back)

    where ``lr' = lr * sqrt(max(1, rows / cols))`` (``adjust_lr_fn`` None or
    ``"original"``, Keller Jordan's scaling) or ``lr * 0.2 * sqrt(max(rows, cols))``
    (``"match_rms_adamw"``, Moonshot's: the update's RMS matches AdamW's). The Newton-Schulz
    iteration runs in bfloat16 as torch's does (float32 matrix products through NumPy's
    BLAS, each result rounded to bfloat16); the momentum and the param update run in the
    param's dtype. Units: ``lr`` is in param units per unit of the orthogonalized update
    (whose singular values are about 1).

    Parameters
    ----------
    param : numpy.ndarray
        The 2-D param (float32 or float64, C- or F-contiguous), updated in place.
    grad : numpy.ndarray
        Its gradient: same dtype, shape and layout; only read.
    momentum_buffer : numpy.ndarray
        The momentum buffer (zeros before the first update), like ``param``; updated in
        place.
    lr : float
        Learning rate, ``>= 0``.
    weight_decay : float, default 0.1
        Decoupled weight decay, ``>= 0``: the param is multiplied by ``1 - lr * weight_decay``.
    momentum : float, default 0.95
        Momentum factor, ``>= 0``.
    nesterov : bool, default True
        Use Nesterov's blend ``lerp(g, B, momentum)`` instead of ``B``.
    ns_coefficients : tuple of 3 floats, default (3.4445, -4.775, 2.0315)
        The Newton-Schulz polynomial's ``(a, b, c)``, finite.
    eps : float, default 1e-7
        Lower bound of the Frobenius norm the update is divided by, ``>= 0``.
    ns_steps : int, default 5
        Newton-Schulz iterations, in [0, 99] (torch refuses 100 and more).
    adjust_lr_fn : {None, "original", "match_rms_adamw"}
        The lr scaling by the param's shape (None means ``"original"``).

    Returns
    -------
    None
        ``param`` and ``momentum_buffer`` are updated in place.

    Raises
    ------
    TypeError
        An array is not a float32/float64 ndarray, dtypes differ, or a hyperparameter has
        the wrong type.
    ValueError
        ``param`` is not 2-D, shapes or layouts differ, a written array is read-only or
        overlaps another, or a hyperparameter is out of range.

    Examples
    --------
    >>> from fastlr.kernels import muon
    >>> p = np.eye(2); g = np.array([[1.0, 0.0], [0.0, 2.0]]); buf = np.zeros((2, 2))
    >>> muon(p, g, buf, lr=0.1, weight_decay=0.0, momentum=0.0)
    >>> np.round(p, 2)
    array([[0.89, 0.  ],
           [0.  , 0.93]])
    """
    cdef str fn = "fastlr.kernels.muon"
    cdef cnp.ndarray p = _check_array(fn, "param", param, True)
    cdef cnp.ndarray g = _check_array(fn, "grad", grad, False)
    cdef cnp.ndarray b = _check_array(fn, "momentum_buffer", momentum_buffer, True)
    if cnp.PyArray_NDIM(p) != 2:
        raise ValueError(f"{fn}: param must be 2-D (Muon orthogonalizes matrices; torch "
                         f"refuses other params too), got shape {(<object>p).shape}")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(p) or cnp.PyArray_IS_F_CONTIGUOUS(p)):
        raise ValueError(f"{fn}: param must be contiguous (C or F order), got "
                         f"{layout_name(p)}; an update applied to a copy is lost")
    check_like(fn, "grad", g, "param", p)
    check_like(fn, "momentum_buffer", b, "param", p, True)
    if np.may_share_memory(p, b):
        raise ValueError(f"{fn}: param and momentum_buffer overlap in memory")
    if np.may_share_memory(p, g) or np.may_share_memory(b, g):
        raise ValueError(f"{fn}: grad overlaps a written array (param or momentum_buffer)")
    hypers = check_hypers(fn, "", lr, weight_decay, momentum, nesterov, ns_coefficients,
                          eps, ns_steps, adjust_lr_fn)
    run(p, g, b, *hypers)


ctypedef struct Passes:
    const void* grad
    void* buf
    void* param
    float* x
    Py_ssize_t n_outer, n_inner, x_outer, x_inner, n
    double momentum, eps, decay, alpha
    bint nesterov, f64


cdef void first_passes(Passes* q) noexcept nogil:
    """The momentum pass, then the division by the clamped norm (torch: X.norm() in
    bfloat16, .clamp(min=eps), X.div_(norm))."""
    cdef double ss
    cdef float norm, floor
    if q.f64:
        ss = momentum_pass(<const double*>q.grad, <double*>q.buf, q.x, q.n_outer,
                           q.n_inner, q.x_outer, q.x_inner, 1.0 - q.momentum, q.momentum,
                           q.nesterov)
    else:
        ss = momentum_pass(<const float*>q.grad, <float*>q.buf, q.x, q.n_outer, q.n_inner,
                           q.x_outer, q.x_inner, <float>(1.0 - q.momentum),
                           <float>q.momentum, q.nesterov)
    norm = bf16(<float>sqrt(ss))
    floor = bf16(<float>q.eps)
    if norm < floor:
        norm = floor
    scale_pass(q.x, q.n, norm)


cdef void last_pass(Passes* q) noexcept nogil:
    if q.f64:
        apply_pass(<double*>q.param, q.x, q.n_outer, q.n_inner, q.x_outer, q.x_inner,
                   q.decay, q.alpha)
    else:
        apply_pass(<float*>q.param, q.x, q.n_outer, q.n_inner, q.x_outer, q.x_inner,
                   <float>q.decay, <float>q.alpha)


def run(cnp.ndarray p, cnp.ndarray g, cnp.ndarray b, double lr, double weight_decay,
        double momentum, bint nesterov, tuple coefs, double eps, int ns_steps,
        object adjust_lr_fn):
    """The update on checked arguments (``muon`` and ``fastlr.Muon`` check first)."""
    cdef Py_ssize_t rows = cnp.PyArray_DIM(p, 0), cols = cnp.PyArray_DIM(p, 1)
    cdef Py_ssize_t n = rows * cols
    if n == 0:
        return
    cdef bint tall = rows > cols
    cdef Py_ssize_t r = cols if tall else rows, c = rows if tall else cols
    # param (i, j) -> x[i * ci + j * cj]; memory order: C (i outer) or F (j outer)
    cdef Py_ssize_t ci = 1 if tall else cols, cj = rows if tall else 1
    cdef bint c_order = cnp.PyArray_IS_C_CONTIGUOUS(p)
    cdef Py_ssize_t n_outer = rows if c_order else cols
    cdef Py_ssize_t n_inner = cols if c_order else rows
    cdef Py_ssize_t x_outer = ci if c_order else cj
    cdef Py_ssize_t x_inner = cj if c_order else ci
    cdef cnp.ndarray x = np.empty((r, c), dtype=np.float32)
    cdef cnp.ndarray xp = np.empty((r, c), dtype=np.float32)
    cdef cnp.ndarray gram = np.empty((r, r), dtype=np.float32)
    cdef cnp.ndarray gg = np.empty((r, r), dtype=np.float32)
    cdef bint big = n >= NOGIL_MIN_SIZE
    cdef Passes q
    q.grad = cnp.PyArray_DATA(g)
    q.buf = cnp.PyArray_DATA(b)
    q.param = cnp.PyArray_DATA(p)
    q.x = <float*>cnp.PyArray_DATA(x)
    q.n_outer, q.n_inner, q.x_outer, q.x_inner = n_outer, n_inner, x_outer, x_inner
    q.momentum, q.nesterov, q.eps = momentum, nesterov, eps
    q.f64 = cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT64
    q.decay = 1.0 - lr * weight_decay
    q.alpha = -adjusted_lr(lr, adjust_lr_fn, rows, cols)
    q.n = r * c
    cdef float* xd = q.x
    cdef float* xpd = <float*>cnp.PyArray_DATA(xp)
    cdef float* gd = <float*>cnp.PyArray_DATA(gram)
    cdef float* ggd = <float*>cnp.PyArray_DATA(gg)
    cdef float fa = <float>coefs[0], fb = <float>coefs[1], fc = <float>coefs[2]
    cdef int it
    if big:
        with nogil:
            first_passes(&q)
    else:
        first_passes(&q)
    xt = x.T
    for it in range(ns_steps):
        np.matmul(x, xt, out=gram)                       # G = X X^T
        round_pass(gd, r * r)
        np.matmul(gram, gram, out=gg)                    # G G
        axpby_pass(gd, gd, ggd, r * r, fb, fc)           # U = b G + c G G (small: r x r)
        np.matmul(gram, x, out=xp)                       # U X
        if big:
            with nogil:
                axpby_pass(xd, xd, xpd, r * c, fa, 1.0)  # X = a X + U X
        else:
            axpby_pass(xd, xd, xpd, r * c, fa, 1.0)
    if big:
        with nogil:
            last_pass(&q)
    else:
        last_pass(&q)

