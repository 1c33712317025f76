# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""A library that embeds fastlr as its optimizer backend, through fastlr's Cython C API.

It calls fastlr's compiled Adam kernels (``fastlr/_kernels.pxd``) and evaluates fastlr
schedules (``fastlr/_schedules.pxd``) from its own compiled code, the GIL released:

* ``adam_step``: one Adam/AdamW update on 1-D contiguous float32 or float64 NumPy buffers,
  the same update as ``fastlr.kernels.adam`` (same compiled loops: the same bits).
* ``adam_run``: many updates in one call, the learning rate of update ``t + 1`` being
  ``schedule(t)``, all without the GIL (a training loop's inner part, as a backend has it).
* ``schedule_at``: a schedule's values at the given steps, as a float64 array.

The pattern: validate everything while holding the GIL (fastlr's C functions check
nothing), fill a hyperparameter struct, pass NULL for state that is not used, then call the
per-dtype function in a ``with nogil`` block.
"""

import numpy as np

from cython cimport floating
from libc.stdint cimport int64_t, uint8_t, uint16_t

from fastlr._kernels cimport (
    INT8_BLOCK,
    AdamHyper,
    Param16,
    adam_16_bf16state,
    adam_16_f32state,
    adam_16_int8state,
    adam_f32,
    adam_f32_bf16state,
    adam_f32_int8state,
    adam_f32_parallel,
    adam_f64,
    adam_f64_parallel,
    max_threads,
)
from fastlr._schedules cimport (
    check_schedule_error,
    schedule_handle,
    schedule_needs_gil,
    schedule_value,
)

__all__ = ["adam_step", "adam_bf16_state_step", "adam_int8_state_step", "adam_bf16_params_step",
           "adam_run", "schedule_at", "default_threads"]


def default_threads():
    """fastlr's OpenMP maximum thread count (1 when fastlr was built without OpenMP)."""
    return max_threads()


# ---------------------------------------------------------------------------------------
# Validation: everything the C level does not check, done once, before any buffer is written
# ---------------------------------------------------------------------------------------
cdef AdamHyper _adam_hyper(double lr, double beta1, double beta2, double eps,
                           double weight_decay, bint decoupled_weight_decay,
                           bint maximize) except *:
    # torch.optim.Adam's checks (`not x >= 0` also refuses NaN).
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    cdef AdamHyper h
    h.lr = lr
    h.beta1 = beta1
    h.beta2 = beta2
    h.eps = eps
    h.weight_decay = weight_decay
    h.step = 1                      # set per update by the caller
    h.decoupled_weight_decay = 1 if decoupled_weight_decay else 0
    h.maximize = 1 if maximize else 0
    return h


cdef int _threads(object n_threads) except -1:
    if n_threads is None:
        return max_threads()
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be >= 1 or None, got {n_threads!r}")
    return int(n_threads)


cdef object _dtype_of(object param):
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be a numpy.ndarray, got {type(param).__name__}")
    if param.dtype != np.float32 and param.dtype != np.float64:
        raise TypeError(f"param must have dtype float32 or float64, got {param.dtype}")
    return param.dtype


cdef int _check_array(str name, object a, object dtype, tuple shape, bint written) except -1:
    # Checked here, with the argument's name, before NumPy's buffer protocol sees the array.
    if a is None:
        raise TypeError(f"{name} must be a numpy.ndarray, got None")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (no silent copy: an update applied "
                         f"to a copy would be lost)")
    if written and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    return 0


cdef int _check_no_overlap(list arrays) except -1:
    # fastlr's loops read element i of every buffer and write it back: two buffers that
    # overlap (the gradient included) would give an undefined result.
    cdef Py_ssize_t i, j
    spans = [(name, a.__array_interface__["data"][0], a.nbytes) for name, a in arrays
             if a is not None]
    for i in range(len(spans)):
        for j in range(i + 1, len(spans)):
            (ni, si, bi), (nj, sj, bj) = spans[i], spans[j]
            if bi and bj and si < sj + bj and sj < si + bi:
                raise ValueError(f"{ni} and {nj} overlap in memory; every buffer must be "
                                 f"separate")
    return 0


cdef int _check_buffers(object param, object grad, object exp_avg, object exp_avg_sq,
                        object max_exp_avg_sq, bint one_grad_per_step) except -1:
    dtype = _dtype_of(param)
    if param.ndim != 1:
        raise ValueError(f"param must be 1-D, got shape {param.shape} (pass a contiguous "
                         f"array's .reshape(-1), a view)")
    n = param.shape[0]
    _check_array("param", param, dtype, (n,), True)
    if one_grad_per_step:
        if not isinstance(grad, np.ndarray) or grad.ndim != 2:
            raise ValueError("grads must be a 2-D numpy.ndarray, one row per update")
        _check_array("grads", grad, dtype, (grad.shape[0], n), False)
    else:
        _check_array("grad", grad, dtype, (n,), False)       # may be read-only
    _check_array("exp_avg", exp_avg, dtype, (n,), True)
    _check_array("exp_avg_sq", exp_avg_sq, dtype, (n,), True)
    if max_exp_avg_sq is not None:
        _check_array("max_exp_avg_sq", max_exp_avg_sq, dtype, (n,), True)
    _check_no_overlap([("param", param), ("grads" if one_grad_per_step else "grad", grad),
                       ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq),
                       ("max_exp_avg_sq", max_exp_avg_sq)])
    return 0


# ---------------------------------------------------------------------------------------
# The calls into fastlr: one explicit function per dtype, NULL for unused state, no GIL
# ---------------------------------------------------------------------------------------
cdef inline void _adam(floating* p, const floating* g, floating* m, floating* v,
                       floating* vmax, Py_ssize_t n, const AdamHyper* h,
                       int n_threads) noexcept nogil:
    if floating is float:
        if n_threads == 1:
            adam_f32(p, g, m, v, vmax, n, h)                      # serial, no OpenMP region
        else:
            adam_f32_parallel(p, g, m, v, vmax, n, h, n_threads)  # split when n is large
    else:
        if n_threads == 1:
            adam_f64(p, g, m, v, vmax, n, h)
        else:
            adam_f64_parallel(p, g, m, v, vmax, n, h, n_threads)


cdef int _adam_step(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
                    floating[::1] vmax, AdamHyper h, int n_threads) except -1:
    cdef Py_ssize_t n = p.shape[0]
    if n == 0:
        return 0
    cdef floating* vmax_ptr = NULL if vmax is None else &vmax[0]   # NULL: plain Adam
    with nogil:
        _adam(&p[0], &g[0], &m[0], &v[0], vmax_ptr, n, &h, n_threads)
    return 0


cdef int _adam_run(floating[::1] p, const floating[:, ::1] grads, floating[::1] m,
                   floating[::1] v, floating[::1] vmax, AdamHyper h, object schedule,
                   int64_t first_step, int n_threads) except -1:
    cdef Py_ssize_t n = p.shape[0], k = grads.shape[0], i
    cdef const void* sched = schedule_handle(schedule)   # keep `schedule` alive: we hold it
    if schedule_needs_gil(sched):
        raise TypeError("adam_run needs a compiled schedule (a fastlr built-in, not a Python "
                        "callable): it evaluates the schedule without the GIL")
    if n == 0 or k == 0:
        return 0
    cdef floating* vmax_ptr = NULL if vmax is None else &vmax[0]
    with nogil:
        for i in range(k):
            # Update number first_step + i uses the schedule after first_step - 1 + i
            # completed steps: the first update uses schedule(0).
            h.step = first_step + i
            h.lr = schedule_value(sched, first_step - 1 + i)
            _adam(&p[0], &grads[i, 0], &m[0], &v[0], vmax_ptr, n, &h, n_threads)
    return 0


# ---------------------------------------------------------------------------------------
# The Python-facing functions of this "library"
# ---------------------------------------------------------------------------------------
def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, int64_t step,
              double lr, double beta1=0.9, double beta2=0.999, double eps=1e-8,
              double weight_decay=0.0, bint decoupled_weight_decay=False,
              bint maximize=False, n_threads=1):
    """One Adam update in place, as ``fastlr.kernels.adam`` (AMSGrad when
    ``max_exp_avg_sq`` is given). Buffers: 1-D, C-contiguous, one dtype (float32 or
    float64). ``n_threads=None`` uses fastlr's OpenMP maximum."""
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based update number), got {step}")
    cdef AdamHyper h = _adam_hyper(lr, beta1, beta2, eps, weight_decay,
                                   decoupled_weight_decay, maximize)
    h.step = step
    cdef int threads = _threads(n_threads)
    _check_buffers(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, False)
    if param.dtype == np.float32:
        _adam_step[float](param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, h, threads)
    else:
        _adam_step[double](param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, h, threads)


def adam_bf16_state_step(param, grad, exp_avg, exp_avg_sq, *, int64_t step, double lr,
                         double beta1=0.9, double beta2=0.999, double eps=1e-8,
                         double weight_decay=0.0, bint decoupled_weight_decay=False,
                         n_threads=1):
    """One Adam update with bfloat16 state, in place, as
    ``fastlr.kernels.adam_bf16_state``: float32 ``param`` and ``grad``, the moments as
    ``uint16`` bfloat16 bits; 1-D, C-contiguous."""
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based update number), got {step}")
    cdef AdamHyper h = _adam_hyper(lr, beta1, beta2, eps, weight_decay,
                                   decoupled_weight_decay, False)
    h.step = step
    cdef int threads = _threads(n_threads)
    if not isinstance(param, np.ndarray) or param.dtype != np.float32:
        raise TypeError("param must be a float32 numpy.ndarray")
    shape = param.shape
    _check_array("param", param, np.dtype(np.float32), shape, True)
    _check_array("grad", grad, np.dtype(np.float32), shape, False)
    _check_array("exp_avg", exp_avg, np.dtype(np.uint16), shape, True)
    _check_array("exp_avg_sq", exp_avg_sq, np.dtype(np.uint16), shape, True)
    _check_no_overlap([("param", param), ("grad", grad), ("exp_avg", exp_avg),
                       ("exp_avg_sq", exp_avg_sq)])
    cdef float[::1] p = param.reshape(-1)
    cdef const float[::1] g = grad.reshape(-1)
    cdef uint16_t[::1] m = exp_avg.reshape(-1)
    cdef uint16_t[::1] v = exp_avg_sq.reshape(-1)
    cdef Py_ssize_t n = p.shape[0]
    if n == 0:
        return
    with nogil:
        adam_f32_bf16state(&p[0], &g[0], &m[0], &v[0], NULL, n, &h, threads)


def adam_int8_state_step(param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, *,
                         int64_t step, double lr, double beta1=0.9, double beta2=0.999,
                         double eps=1e-8, double weight_decay=0.0,
                         bint decoupled_weight_decay=False, n_threads=1):
    """One Adam update with 8-bit state, in place, as ``fastlr.kernels.adam_int8_state``:
    float32 ``param`` and ``grad``; per moment ``uint8`` codes (param's shape) and float32
    scales, one per block of INT8_BLOCK elements; 1-D, C-contiguous."""
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based update number), got {step}")
    cdef AdamHyper h = _adam_hyper(lr, beta1, beta2, eps, weight_decay,
                                   decoupled_weight_decay, False)
    h.step = step
    cdef int threads = _threads(n_threads)
    if not isinstance(param, np.ndarray) or param.dtype != np.float32:
        raise TypeError("param must be a float32 numpy.ndarray")
    shape = param.shape
    _check_array("param", param, np.dtype(np.float32), shape, True)
    _check_array("grad", grad, np.dtype(np.float32), shape, False)
    _check_int8_state(exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, shape, param.size)
    _check_no_overlap([("param", param), ("grad", grad), ("exp_avg", exp_avg),
                       ("exp_avg_scale", exp_avg_scale), ("exp_avg_sq", exp_avg_sq),
                       ("exp_avg_sq_scale", exp_avg_sq_scale)])
    cdef float[::1] p = param.reshape(-1)
    cdef const float[::1] g = grad.reshape(-1)
    cdef uint8_t[::1] m = exp_avg.reshape(-1)
    cdef float[::1] ms = exp_avg_scale
    cdef uint8_t[::1] v = exp_avg_sq.reshape(-1)
    cdef float[::1] vs = exp_avg_sq_scale
    cdef Py_ssize_t n = p.shape[0]
    if n == 0:
        return
    with nogil:
        adam_f32_int8state(&p[0], &g[0], &m[0], &ms[0], &v[0], &vs[0], n, &h, threads)


def _check_int8_state(exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, shape, size):
    nblk = (size + INT8_BLOCK - 1) // INT8_BLOCK
    _check_array("exp_avg", exp_avg, np.dtype(np.uint8), shape, True)
    _check_array("exp_avg_sq", exp_avg_sq, np.dtype(np.uint8), shape, True)
    _check_array("exp_avg_scale", exp_avg_scale, np.dtype(np.float32), (nblk,), True)
    _check_array("exp_avg_sq_scale", exp_avg_sq_scale, np.dtype(np.float32), (nblk,), True)


def adam_bf16_params_step(param, grad, state, master=None, *, int64_t step, double lr,
                          double beta1=0.9, double beta2=0.999, double eps=1e-8,
                          double weight_decay=0.0, bint decoupled_weight_decay=False,
                          n_threads=1):
    """One Adam update of a bfloat16 param, in place: ``param`` the ``uint16`` bfloat16 bits,
    ``grad`` bfloat16 bits or float32, ``master`` float32 or None (then the param is rounded
    stochastically), ``state`` the moments: ``(exp_avg, exp_avg_sq)`` float32 or ``uint16``
    bfloat16 bits (``fastlr.kernels.adam_mixed``), or ``(exp_avg, exp_avg_scale,
    exp_avg_sq, exp_avg_sq_scale)`` 8-bit (``fastlr.kernels.adam_mixed_int8_state``);
    1-D, C-contiguous."""
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based update number), got {step}")
    cdef AdamHyper h = _adam_hyper(lr, beta1, beta2, eps, weight_decay,
                                   decoupled_weight_decay, False)
    h.step = step
    cdef int threads = _threads(n_threads)
    if not isinstance(param, np.ndarray) or param.dtype != np.uint16:
        raise TypeError("param must be a uint16 numpy.ndarray (bfloat16 bits)")
    shape = param.shape
    _check_array("param", param, np.dtype(np.uint16), shape, True)
    gdt = grad.dtype if isinstance(grad, np.ndarray) else None
    _check_array("grad", grad, np.dtype(np.float32 if gdt == np.float32 else np.uint16),
                 shape, False)
    named = [("param", param), ("grad", grad)]
    if master is not None:
        _check_array("master", master, np.dtype(np.float32), shape, True)
        named.append(("master", master))
    state = tuple(state)
    if len(state) == 4:
        _check_int8_state(*state, shape, param.size)
        names = ("exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale")
    elif len(state) == 2:
        sdt = state[0].dtype if isinstance(state[0], np.ndarray) else None
        sdt = np.dtype(np.uint16 if sdt == np.uint16 else np.float32)
        _check_array("exp_avg", state[0], sdt, shape, True)
        _check_array("exp_avg_sq", state[1], sdt, shape, True)
        names = ("exp_avg", "exp_avg_sq")
    else:
        raise ValueError(f"state must hold 2 (float32 or bfloat16) or 4 (8-bit) arrays, got "
                         f"{len(state)}")
    _check_no_overlap(named + list(zip(names, state)))
    if param.size == 0:
        return
    cdef Param16 q
    cdef uint16_t[::1] p = param.reshape(-1)
    cdef float[::1] w
    q.param = &p[0]
    q.bfloat16 = 1
    q.grad_f32 = gdt == np.float32
    cdef const float[::1] g32
    cdef const uint16_t[::1] g16
    if q.grad_f32:
        g32 = grad.reshape(-1)
        q.grad = &g32[0]
    else:
        g16 = grad.reshape(-1)
        q.grad = &g16[0]
    q.master = NULL
    if master is not None:
        w = master.reshape(-1)
        q.master = &w[0]
    cdef Py_ssize_t n = p.shape[0]
    cdef uint8_t[::1] m8, v8
    cdef float[::1] ms, vs, m32, v32
    cdef uint16_t[::1] m16, v16
    if len(state) == 4:
        m8, ms, v8, vs = state[0].reshape(-1), state[1], state[2].reshape(-1), state[3]
        with nogil:
            adam_16_int8state(&q, &m8[0], &ms[0], &v8[0], &vs[0], n, &h, threads)
    elif state[0].dtype == np.uint16:
        m16, v16 = state[0].reshape(-1), state[1].reshape(-1)
        with nogil:
            adam_16_bf16state(&q, &m16[0], &v16[0], n, &h, threads)
    else:
        m32, v32 = state[0].reshape(-1), state[1].reshape(-1)
        with nogil:
            adam_16_f32state(&q, &m32[0], &v32[0], n, &h, threads)


def adam_run(param, grads, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, schedule,
             int64_t first_step=1, double beta1=0.9, double beta2=0.999, double eps=1e-8,
             double weight_decay=0.0, bint decoupled_weight_decay=False,
             bint maximize=False, n_threads=1):
    """``len(grads)`` Adam updates in one call without the GIL: update ``first_step + i``
    uses the gradient ``grads[i]`` (``grads``: 2-D, C-contiguous, one row per update) and
    the learning rate ``schedule(first_step - 1 + i)`` (a compiled fastlr schedule)."""
    if first_step < 1:
        raise ValueError(f"first_step must be >= 1, got {first_step}")
    cdef AdamHyper h = _adam_hyper(0.0, beta1, beta2, eps, weight_decay,
                                   decoupled_weight_decay, maximize)
    cdef int threads = _threads(n_threads)
    _check_buffers(param, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, True)
    if param.dtype == np.float32:
        _adam_run[float](param, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, h, schedule,
                         first_step, threads)
    else:
        _adam_run[double](param, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, h, schedule,
                          first_step, threads)


def schedule_at(schedule, steps):
    """The values of a fastlr schedule after each of ``steps`` completed steps (integers
    >= 0), as a 1-D float64 array. Compiled schedules are evaluated without the GIL; one
    built from a Python callable is called with it, and its exception is re-raised."""
    cdef const void* sched = schedule_handle(schedule)   # TypeError for a non-Schedule
    arr = np.asarray(steps)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise TypeError(f"steps must be a 1-D sequence of integers, got {arr.dtype} with "
                        f"shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"steps must be >= 0, got {arr.min()}")
    cdef const int64_t[::1] ts = np.ascontiguousarray(arr, dtype=np.int64)
    out = np.empty(ts.shape[0], dtype=np.float64)
    cdef double[::1] values = out
    cdef Py_ssize_t i
    if schedule_needs_gil(sched):
        for i in range(ts.shape[0]):
            values[i] = schedule_value(sched, ts[i])
            check_schedule_error(schedule)          # raises what the callable raised
    else:
        with nogil:
            for i in range(ts.shape[0]):
                values[i] = schedule_value(sched, ts[i])
    return out
