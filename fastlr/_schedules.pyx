# fastlr/_schedules.pyx -- learning-rate schedules as C data, evaluated without Python.
#
# Design notes
# ------------
# a) A schedule is a `Node`: a kind, a few double and int64 parameters, optional arrays
#    (milestones, boundaries, values) and child nodes for compositions (join, warmup,
#    scaling). `node_value(node, t)` is a pure function of the step t in closed form: no
#    state, so resuming training is setting t, and every way of evaluating a schedule --
#    `s(t)`, `s.values(ts)`, an optimizer's C step -- runs this one function and gives the
#    same double.
# b) The Python `Schedule` object owns its node, the arrays the node points into and its
#    children. Constructors and all validation live in fastlr/schedules.py; this module
#    trusts what it is given.
# c) Arithmetic follows the anchors' closed forms operation by operation in double
#    (torch's `_get_closed_form_lr`, optax, Keras), so values agree with them to the last
#    bit or to rounding. Integer arithmetic where the anchor counts (cycles of SGDR, steps).
# d) Python callables are a node kind too: evaluating one takes the GIL; an exception is
#    stored on its Schedule object and re-raised by the Python-level caller.

from cpython.pythread cimport (WAIT_LOCK, PyThread_acquire_lock, PyThread_allocate_lock,
                               PyThread_free_lock, PyThread_release_lock, PyThread_type_lock)
from cpython.ref cimport PyObject
from libc.math cimport M_PI, NAN, cos, floor, pow, sqrt
from libc.stdint cimport INT64_MAX, int64_t
from libc.stdlib cimport free, malloc

import numpy as np

cimport numpy as cnp

from fastlr._core.args cimport int_arg

cnp.import_array()

cdef enum Kind:
    CONSTANT = 0
    STEP_DECAY
    MULTISTEP
    EXPONENTIAL
    EXPONENTIAL_DECAY
    INVERSE_TIME
    POLYNOMIAL
    LINEAR
    COSINE
    COSINE_RESTARTS
    CYCLIC
    ONE_CYCLE
    PIECEWISE_CONSTANT
    PIECEWISE_LINEAR
    WARMUP_COSINE
    WARMUP
    JOIN
    SCALE
    CALLBACK
    SUM                 # children[0] + children[1] + ...
    PRODUCT             # children[0] * children[1] * ...
    DIFFERENCE          # children[0] - children[1]
    QUOTIENT            # children[0] / children[1]
    NEGATE              # -children[0]
    MINIMUM             # the smallest of the children
    MAXIMUM             # the largest of the children
    MULTIPLICATIVE      # torch MultiplicativeLR: init * f(1) * f(2) * ... * f(t)
    WSD                 # warmup, stable, decay
    INVERSE_SQRT        # linear warmup, then peak * sqrt(W / t)
    NOAM                # scale * min((t+1)^-0.5, (t+1) W^-1.5)
    REX                 # end + (init - end) (1 - z) / (1 - z/2), z = min(t, T) / T

cdef enum:
    N_DOUBLE = 6
    N_INT = 4

ctypedef struct ProductCache:
    # The last running product init * f(1) * ... * f(t) and its t, so that stepping on from
    # it costs one factor evaluation. Continuing from it multiplies the same factors in the
    # same order as starting from 0, so the value stays a pure function of t, bit for bit.
    # The lock makes it safe for threads evaluating one schedule without the GIL.
    PyThread_type_lock lock
    int64_t t
    double v


ctypedef struct Node:
    int kind
    int needs_gil           # this node or one below it is a Python callable
    double p[N_DOUBLE]      # double parameters (meaning per kind: see the constructors)
    int64_t k[N_INT]        # integer parameters
    Py_ssize_t n_items      # length of ivals (boundaries, milestones)
    const int64_t* ivals
    const double* dvals     # values (piecewise schedules)
    const Node** children
    Py_ssize_t n_children
    PyObject* owner         # the Schedule object (borrowed), for CALLBACK
    ProductCache* cache     # MULTIPLICATIVE with a compiled factor: the last product


cdef inline Py_ssize_t count_le(const int64_t* a, Py_ssize_t n, int64_t t) noexcept nogil:
    """How many of the sorted a[0..n) are <= t (bisect_right)."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline double cosine_between(double start, double end, int64_t t, double T) noexcept nogil:
    # torch CosineAnnealingLR's closed form: end + (start - end) * (1 + cos(pi t / T)) / 2
    return end + (start - end) * (1.0 + cos(M_PI * <double>t / T)) / 2.0


cdef double call_python(PyObject* owner, int64_t t) noexcept with gil:
    cdef Schedule s = <Schedule>owner
    try:
        value = s._fn(t)
    except BaseException as error:
        if s._error is None:
            s._error = error
        return NAN
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError, OverflowError) as bad:
        if s._error is None:
            kind = TypeError if isinstance(bad, TypeError) else ValueError
            s._error = kind(f"a from_callable schedule: its callable returned "
                            f"{type(value).__name__} {value!r:.80} at step {t}; expected a "
                            f"finite real number")
        return NAN
    except BaseException as error:
        if s._error is None:
            s._error = error
        return NAN


cdef double node_value(const Node* s, int64_t t) noexcept nogil:
    cdef int kind = s.kind
    cdef Py_ssize_t i
    cdef int64_t c, T, cycle_len, b0
    cdef double x, p, v, total, ratio, scale, start_step, end_step, pct
    if kind == CONSTANT:
        return s.p[0]
    if kind == STEP_DECAY:                  # init * gamma^(t // step_size)
        return s.p[0] * pow(s.p[1], <double>(t // s.k[0]))
    if kind == MULTISTEP:                   # init * gamma^(#milestones <= t)
        return s.p[0] * pow(s.p[1], <double>count_le(s.ivals, s.n_items, t))
    if kind == EXPONENTIAL:                 # init * gamma^t
        return s.p[0] * pow(s.p[1], <double>t)
    if kind == EXPONENTIAL_DECAY:           # optax exponential_decay
        c = t - s.k[1]
        if c <= 0:
            v = s.p[0]
        else:
            p = <double>c / <double>s.k[0]
            if s.k[2]:
                p = floor(p)
            v = s.p[0] * pow(s.p[1], p)
        if s.k[3]:                          # optax: a floor when rate < 1, else a cap
            if s.p[1] < 1.0:
                v = v if v > s.p[2] else s.p[2]
            else:
                v = v if v < s.p[2] else s.p[2]
        return v
    if kind == INVERSE_TIME:                # Keras InverseTimeDecay
        p = <double>t / <double>s.k[0]
        if s.k[1]:
            p = floor(p)
        return s.p[0] / (1.0 + s.p[1] * p)
    if kind == POLYNOMIAL:                  # (init - end)(1 - c/T)^power + end
        T = s.k[0]
        c = t - s.k[1] if t > s.k[1] else 0     # c = clip(t - transition_begin, 0, T)
        if s.k[2] > 1:                          # staircase: c down to a multiple of k[2]
            c = c - c % s.k[2]
        c = c if c < T else T
        return (s.p[0] - s.p[1]) * pow(1.0 - <double>c / <double>T, s.p[2]) + s.p[1]
    if kind == LINEAR:                      # torch LinearLR: init (s + (e - s) c / T)
        T = s.k[0]
        c = t - s.k[1] if t > s.k[1] else 0     # c = clip(t - transition_begin, 0, T)
        if s.k[2] > 1:                          # staircase: c down to a multiple of k[2]
            c = c - c % s.k[2]
        c = c if c < T else T
        return s.p[0] * (s.p[1] + (s.p[2] - s.p[1]) * <double>c / <double>T)
    if kind == COSINE:                      # holds `end` after T
        T = s.k[0]
        if s.p[2] == 1.0:
            return cosine_between(s.p[0], s.p[1], t if t < T else T, <double>T)
        # optax cosine_decay_schedule's exponent: the half cosine's factor to a power
        x = (1.0 + cos(M_PI * <double>(t if t < T else T) / <double>T)) / 2.0
        return s.p[1] + (s.p[0] - s.p[1]) * pow(x, s.p[2])
    if kind == COSINE_RESTARTS:             # SGDR: cycle i of length period * mult^i
        cycle_len = s.k[0]
        x = <double>cycle_len               # the current cycle's length
        i = 0
        if s.k[1] == 1:
            i = t // cycle_len
            t = t % cycle_len
        else:
            while t >= cycle_len:
                t -= cycle_len
                i += 1
                if cycle_len > INT64_MAX // s.k[1]:
                    # this cycle is longer than any int64 step: it is the last one reached
                    x = <double>cycle_len * <double>s.k[1]
                    break
                cycle_len *= s.k[1]
                x = <double>cycle_len
        # Keras m_mul: `decay` scales each restart's amplitude above `end`
        return s.p[1] + (s.p[0] - s.p[1]) * pow(s.p[2], <double>i) * (
            1.0 + cos(M_PI * <double>t / x)) / 2.0
    if kind == CYCLIC:                      # torch CyclicLR, operation by operation
        total = <double>s.k[0] + <double>s.k[1]     # (no int64 overflow for huge steps)
        ratio = <double>s.k[0] / total
        x = floor(1.0 + <double>t / total)          # the cycle, 1-based
        p = 1.0 + <double>t / total - x             # position within the cycle
        if p <= ratio:
            scale = p / ratio
        else:
            scale = (p - 1.0) / (ratio - 1.0)
        v = (s.p[1] - s.p[0]) * scale
        if s.k[2] == 1:                     # triangular2
            v = v * (1.0 / pow(2.0, x - 1.0))
        elif s.k[2] == 2:                   # exp_range
            v = v * pow(s.p[2], <double>t)
        return s.p[0] + v
    if kind == ONE_CYCLE:                   # torch OneCycleLR; holds its last value
        if t > s.k[0] - 1:
            t = s.k[0] - 1
        start_step = 0.0
        for i in range(3 if s.k[2] else 2):
            end_step = s.p[3 + i]
            if <double>t <= end_step or i == (2 if s.k[2] else 1):
                pct = (<double>t - start_step) / (end_step - start_step)
                if i == 0:
                    v, x = s.p[0], s.p[1]           # initial -> max
                elif i == 1 and s.k[2]:
                    v, x = s.p[1], s.p[0]           # max -> initial (three-phase)
                elif i == 1:
                    v, x = s.p[1], s.p[2]           # max -> min
                else:
                    v, x = s.p[0], s.p[2]           # initial -> min
                if s.k[1] == 0:
                    return x + (v - x) / 2.0 * (cos(M_PI * pct) + 1.0)
                return (x - v) * pct + v
            start_step = end_step
        return s.p[2]
    if kind == PIECEWISE_CONSTANT:          # values[#boundaries <= t]
        return s.dvals[count_le(s.ivals, s.n_items, t)]
    if kind == PIECEWISE_LINEAR:            # linear between knots (b_i, v_i), held outside
        i = count_le(s.ivals, s.n_items, t)
        if i == 0:
            return s.dvals[0]
        if i == s.n_items:
            return s.dvals[s.n_items - 1]
        b0 = s.ivals[i - 1]
        return s.dvals[i - 1] + (s.dvals[i] - s.dvals[i - 1]) * (
            <double>(t - b0) / <double>(s.ivals[i] - b0))
    if kind == WARMUP_COSINE:               # linear init -> peak, then cosine peak -> end
        if t < s.k[0]:
            return s.p[1] + (s.p[0] - s.p[1]) * (<double>t / <double>s.k[0])
        T = s.k[1] - s.k[0]
        t -= s.k[0]
        if s.p[3] == 1.0:
            return cosine_between(s.p[0], s.p[2], t if t < T else T, <double>T)
        x = (1.0 + cos(M_PI * <double>(t if t < T else T) / <double>T)) / 2.0
        return s.p[2] + (s.p[0] - s.p[2]) * pow(x, s.p[3])   # optax's exponent
    if kind == WARMUP:                      # ramp start_factor * s(0) -> s(0), then s(t - W)
        if t < s.k[0]:
            v = node_value(s.children[0], 0)
            return v * (s.p[0] + (1.0 - s.p[0]) * (<double>t / <double>s.k[0]))
        return node_value(s.children[0], t - s.k[0])
    if kind == JOIN:                        # schedules[i](t - boundaries[i-1])
        i = count_le(s.ivals, s.n_items, t)
        if i > 0:
            t -= s.ivals[i - 1]
        return node_value(s.children[i], t)
    if kind == SCALE:
        return s.p[0] * node_value(s.children[0], t)
    if kind == CALLBACK:
        return call_python(s.owner, t)
    if kind == SUM:
        v = node_value(s.children[0], t)
        for i in range(1, s.n_children):
            v = v + node_value(s.children[i], t)
        return v
    if kind == PRODUCT:
        v = node_value(s.children[0], t)
        for i in range(1, s.n_children):
            v = v * node_value(s.children[i], t)
        return v
    if kind == DIFFERENCE:
        return node_value(s.children[0], t) - node_value(s.children[1], t)
    if kind == QUOTIENT:
        return node_value(s.children[0], t) / node_value(s.children[1], t)
    if kind == NEGATE:
        return -node_value(s.children[0], t)
    if kind == MINIMUM or kind == MAXIMUM:  # the first of equal values; NaN propagates
        v = node_value(s.children[0], t)
        for i in range(1, s.n_children):
            x = node_value(s.children[i], t)
            if x != x or (x < v if kind == MINIMUM else x > v):
                v = x
        return v
    if kind == MULTIPLICATIVE:
        return running_product(s, t)
    if kind == WSD:                         # k: warmup W, total T, decay D, shape
        if t < s.k[0]:
            return s.p[0] * (<double>t / <double>s.k[0])
        b0 = s.k[1] - s.k[2]                # the cooldown starts here
        if t < b0:
            return s.p[0]
        c = t - b0
        x = <double>(c if c < s.k[2] else s.k[2]) / <double>s.k[2]
        if s.k[3] == 0:
            x = 1.0 - x                     # linear
        elif s.k[3] == 1:
            x = (1.0 + cos(M_PI * x)) / 2.0  # cosine
        else:
            x = 1.0 - sqrt(x)               # 1 - sqrt
        return s.p[1] + (s.p[0] - s.p[1]) * x
    if kind == INVERSE_SQRT:                # p: peak, init; k: W
        if t < s.k[0]:
            return s.p[1] + (s.p[0] - s.p[1]) * (<double>t / <double>s.k[0])
        return s.p[0] * sqrt(<double>s.k[0] / <double>t)
    if kind == NOAM:                        # p: scale; k: W; n = t + 1 counts from 1
        x = <double>t + 1.0
        v = pow(x, -0.5)
        p = x * pow(<double>s.k[0], -1.5)
        return s.p[0] * (v if v < p else p)
    if kind == REX:                         # p: init, end; k: T
        T = s.k[0]
        x = <double>(t if t < T else T) / <double>T
        return s.p[1] + (s.p[0] - s.p[1]) * ((1.0 - x) / (1.0 - x / 2.0))
    return NAN


cdef double running_product(const Node* s, int64_t t) noexcept nogil:
    """init * f(1) * f(2) * ... * f(t), multiplied left to right (torch MultiplicativeLR's
    recursion lr_t = lr_{t-1} * f(t)), from the cached product when it is at or before t."""
    cdef ProductCache* cache = s.cache
    cdef int64_t i = 0
    cdef double v = s.p[0]
    if cache != NULL:
        PyThread_acquire_lock(cache.lock, WAIT_LOCK)
        if cache.t <= t:
            i = cache.t
            v = cache.v
    while i < t:
        i += 1
        v = v * node_value(s.children[0], i)
    if cache != NULL:
        cache.t = t
        cache.v = v
        PyThread_release_lock(cache.lock)
    return v


# ---- the C API (see _schedules.pxd) ----
cdef const void* schedule_handle(object schedule) except NULL:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"expected a fastlr.schedules.Schedule, got {type(schedule).__name__}")
    return <const void*>&(<Schedule>schedule).node


cdef double schedule_value(const void* handle, int64_t t) noexcept nogil:
    return node_value(<const Node*>handle, t)


cdef void schedule_values(const void* handle, const int64_t* ts, double* out,
                          Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef const Node* node = <const Node*>handle
    for i in range(n):
        out[i] = node_value(node, ts[i])


cdef int schedule_needs_gil(const void* handle) noexcept nogil:
    return (<const Node*>handle).needs_gil


cdef int check_schedule_error(object schedule) except -1:
    cdef Schedule s = <Schedule>schedule
    cdef Schedule child
    if not s.node.needs_gil:
        return 0
    if s._error is not None:
        error, s._error = s._error, None
        raise error
    for child in s._children:
        check_schedule_error(child)
    return 0


cdef str _VALUES = "fastlr.schedules.Schedule.values"


cdef inline int64_t _step_arg(object t) except -1:
    """A schedule's step: completed steps, an int in [0, 2**63)."""
    return int_arg("fastlr.schedules.Schedule", "step", t, 0, INT64_MAX)


cdef class Schedule:
    """A learning-rate schedule: a pure function of the step, evaluated in C.

    ``s(t)`` is the value after ``t`` completed steps (an int >= 0), so an optimizer's first
    update uses ``s(0)``. ``s.values(ts)`` evaluates an array of steps in one call.
    ``s1 + s2``, ``s - c``, ``c - s``, ``s1 * s2``, ``s * c``, ``s / c`` (``c`` a nonzero
    finite number) and ``-s`` are schedules evaluated in C too; the other operand may be a
    schedule, a finite number or a Python callable ``step -> float`` (which makes the result
    need the GIL). Schedules hold their final value after their end and never raise for a
    large ``t``. Build them with the constructors in :mod:`fastlr.schedules`.
    """

    cdef Node node
    cdef const Node** _child_nodes
    cdef readonly tuple _children       # child Schedules, kept alive
    cdef object _arrays                 # arrays the node points into, kept alive
    cdef readonly str _ctor             # how it was built, for repr and pickle
    cdef readonly tuple _args
    cdef readonly dict _kwargs
    cdef object _fn                     # CALLBACK: the Python callable
    cdef object _error                  # CALLBACK: an exception from the last evaluation

    def __cinit__(self):
        self._child_nodes = NULL
        self.node.cache = NULL
        self._children = ()

    def __dealloc__(self):
        free(self._child_nodes)
        if self.node.cache != NULL:
            PyThread_free_lock(self.node.cache.lock)
            free(self.node.cache)

    def __init__(self, *args, **kwargs):
        raise TypeError("fastlr.schedules.Schedule: build schedules with the constructors in "
                        "fastlr.schedules (e.g. schedules.cosine(0.1, 1000))")

    @property
    def is_compiled(self):
        """True when the whole schedule is C data (no Python callable inside)."""
        return not self.node.needs_gil

    def __call__(self, t):
        """The value after ``t`` completed steps.

        Parameters
        ----------
        t : int
            Completed steps, >= 0 (an optimizer's first update uses ``s(0)``).

        Returns
        -------
        float
        """
        cdef int64_t step = _step_arg(t)
        cdef double v = node_value(&self.node, step)
        check_schedule_error(self)
        return v

    def values(self, ts):
        """The values at every step of ``ts``, in one compiled loop.

        Parameters
        ----------
        ts : array_like of int
            Completed steps, integers >= 0 (a range, a list, an integer array of any shape).

        Returns
        -------
        numpy.ndarray
            float64, of the shape of ``ts``.
        """
        arr = np.asarray(ts)
        if arr.dtype.kind not in "iu":
            if arr.dtype == object or arr.dtype.kind == "b" or arr.size and arr.dtype.kind != "f":
                raise TypeError(f"{_VALUES}: ts must hold integers, got dtype {arr.dtype}")
            if arr.size and not np.all(np.isfinite(arr) & (arr == np.floor(arr))):
                raise TypeError(f"{_VALUES}: ts must hold integers (completed steps), "
                                "got non-integer values")
        if arr.size and arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and \
                np.max(arr) > INT64_MAX:
            raise ValueError(f"{_VALUES}: steps must be < 2**63")
        if arr.size and arr.dtype.kind == "f" and np.max(arr) >= 2.0 ** 63:
            raise ValueError(f"{_VALUES}: steps must be < 2**63")
        if arr.size and arr.dtype.kind in "if" and np.min(arr) < 0:
            raise ValueError(f"{_VALUES}: steps must be >= 0 (completed steps), got "
                             f"{np.min(arr)}")
        steps = arr.astype(np.int64, order="C")     # a copy, keeping 0-d shapes
        out = np.empty(steps.shape, dtype=np.float64)
        cdef int64_t* tp = <int64_t*>cnp.PyArray_DATA(steps)
        cdef double* op = <double*>cnp.PyArray_DATA(out)
        cdef Py_ssize_t n = steps.size
        if self.node.needs_gil:
            schedule_values(&self.node, tp, op, n)
            check_schedule_error(self)
        else:
            with nogil:
                schedule_values(&self.node, tp, op, n)
        return out

    # Arithmetic builds C nodes (fastlr.schedules._add and co.): the operands are
    # Schedules, finite numbers or Python callables; anything else is NotImplemented.
    def __add__(self, other):
        return _arith("_add", self, other)

    def __radd__(self, other):
        return _arith("_add", other, self)

    def __sub__(self, other):
        return _arith("_sub", self, other)

    def __rsub__(self, other):
        return _arith("_sub", other, self)

    def __mul__(self, other):
        return _arith("_mul", self, other)

    def __rmul__(self, other):
        return _arith("_mul", other, self)

    def __truediv__(self, other):
        return _arith("_div", self, other)

    def __rtruediv__(self, other):
        return _arith("_div", other, self)

    def __neg__(self):
        return _arith("_neg", self, None)

    def __repr__(self):
        if self._ctor in _INFIX:
            op, prec = _INFIX[self._ctor]
            a, b = self._args
            return f"{_operand_repr(a, prec, False)} {op} {_operand_repr(b, prec, True)}"
        if self._ctor == "_neg":
            return f"-{_operand_repr(self._args[0], _NEG, False)}"
        parts = [repr(a) for a in self._args]
        parts += [f"{k}={v!r}" for k, v in self._kwargs.items()]
        return f"{self._ctor}({', '.join(parts)})"

    def __reduce__(self):
        from fastlr import schedules
        return (schedules._rebuild, (self._ctor, self._args, self._kwargs))

    def __eq__(self, other):
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    def __hash__(self):
        return hash(repr(self))


# Infix constructors: (operator, precedence) for repr, which adds the parentheses the
# expression needs, so that evaluating a repr gives an equal schedule.
_INFIX = {"_scaled": ("*", 2), "_mul": ("*", 2), "_div": ("/", 2), "_add": ("+", 1),
          "_sub": ("-", 1)}
_NEG = 3


def _operand_repr(x, int prec, bint right):
    cdef int own = 4
    if isinstance(x, Schedule):
        ctor = (<Schedule>x)._ctor
        own = _INFIX[ctor][1] if ctor in _INFIX else (_NEG if ctor == "_neg" else 4)
    text = repr(x)
    return f"({text})" if own < prec or (right and own == prec) else text


def _arith(str ctor, a, b):
    from fastlr import schedules
    if ctor == "_neg":
        return schedules._neg(a)
    return getattr(schedules, ctor)(a, b)


def _build(int kind, str ctor, tuple args, dict kwargs, p=(), k=(), ivals=None, dvals=None,
           children=(), fn=None):
    """Make a Schedule from validated parts (for fastlr.schedules only)."""
    cdef Schedule s = Schedule.__new__(Schedule)
    cdef Py_ssize_t i
    cdef Schedule child
    if len(p) > N_DOUBLE or len(k) > N_INT:
        raise ValueError("too many schedule parameters")
    s.node.kind = kind
    for i in range(N_DOUBLE):
        s.node.p[i] = p[i] if i < len(p) else 0.0
    for i in range(N_INT):
        s.node.k[i] = k[i] if i < len(k) else 0
    arrays = []
    s.node.n_items = 0
    s.node.ivals = NULL
    s.node.dvals = NULL
    if ivals is not None:
        iarr = np.ascontiguousarray(ivals, dtype=np.int64)
        arrays.append(iarr)
        s.node.n_items = iarr.size
        s.node.ivals = <const int64_t*>cnp.PyArray_DATA(iarr)
    if dvals is not None:
        darr = np.ascontiguousarray(dvals, dtype=np.float64)
        arrays.append(darr)
        s.node.dvals = <const double*>cnp.PyArray_DATA(darr)
    s._arrays = arrays
    s._children = tuple(children)
    s.node.n_children = len(s._children)
    s.node.needs_gil = kind == CALLBACK
    if s.node.n_children:
        s._child_nodes = <const Node**>malloc(s.node.n_children * sizeof(Node*))
        if s._child_nodes == NULL:
            raise MemoryError()
        for i in range(s.node.n_children):
            child = s._children[i]
            s._child_nodes[i] = &child.node
            s.node.needs_gil = s.node.needs_gil or child.node.needs_gil
    s.node.children = s._child_nodes
    s.node.owner = <PyObject*>s
    if kind == MULTIPLICATIVE and not s.node.needs_gil:
        # (a Python factor is not cached: the lock must not be held while taking the GIL)
        s.node.cache = <ProductCache*>malloc(sizeof(ProductCache))
        if s.node.cache == NULL:
            raise MemoryError()
        s.node.cache.lock = PyThread_allocate_lock()
        if s.node.cache.lock == NULL:
            free(s.node.cache)
            s.node.cache = NULL
            raise MemoryError()
        s.node.cache.t = 0
        s.node.cache.v = s.node.p[0]
    s._fn = fn
    s._error = None
    s._ctor = ctor
    s._args = args
    s._kwargs = kwargs
    return s


# Kind codes for fastlr.schedules.
KINDS = {
    "constant": CONSTANT, "step_decay": STEP_DECAY, "multistep": MULTISTEP,
    "exponential": EXPONENTIAL, "exponential_decay": EXPONENTIAL_DECAY,
    "inverse_time": INVERSE_TIME, "polynomial": POLYNOMIAL, "linear": LINEAR,
    "cosine": COSINE, "cosine_restarts": COSINE_RESTARTS, "cyclic": CYCLIC,
    "one_cycle": ONE_CYCLE, "piecewise_constant": PIECEWISE_CONSTANT,
    "piecewise_linear": PIECEWISE_LINEAR, "warmup_cosine": WARMUP_COSINE, "warmup": WARMUP,
    "join": JOIN, "scale": SCALE, "callback": CALLBACK, "sum": SUM, "product": PRODUCT,
    "difference": DIFFERENCE, "quotient": QUOTIENT, "negate": NEGATE, "minimum": MINIMUM,
    "maximum": MAXIMUM, "multiplicative": MULTIPLICATIVE, "wsd": WSD,
    "inverse_sqrt": INVERSE_SQRT, "noam": NOAM, "rex": REX,
}


def _time_evaluations(Schedule s, Py_ssize_t n, int64_t t0=0):
    """Seconds for n evaluations at steps t0, t0+1, ... in a compiled loop (benchmarks)."""
    import time
    cdef Py_ssize_t i
    cdef double acc = 0.0
    cdef const Node* node = &s.node
    start = time.perf_counter()
    if node.needs_gil:
        for i in range(n):
            acc += node_value(node, t0 + i)
    else:
        with nogil:
            for i in range(n):
                acc += node_value(node, t0 + i)
    elapsed = time.perf_counter() - start
    check_schedule_error(s)
    return elapsed, acc
