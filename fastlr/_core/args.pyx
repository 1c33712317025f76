# fastlr/_core/args.pyx -- the argument policy (see args.pxd): scalar arguments of every
# public callable are checked here, by compiled and Python code alike.

import numbers
import operator

import numpy as np

cimport numpy as cnp
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.math cimport isfinite
from libc.stdint cimport INT64_MAX, int64_t

from fastlr._core.arrays cimport layout_name, same_shape

cnp.import_array()

__all__ = ["FINITE", "NONNEG", "POSITIVE", "UNIT", "CLOSED_UNIT", "OPEN_UNIT", "ABOVE_ONE",
           "RULES", "INT_MAX",
           "MAX_THREADS", "real_arg", "checked_real", "int_arg", "flag_arg", "step_arg",
           "threads_arg", "choice_arg", "ndarray_hint", "layout_hint"]

# The codes as plain module constants for Python callers (args.NONNEG, args.MAX_THREADS, ...).
globals().update({m.name: int(m) for m in Rule}, MAX_THREADS=int(MAX_THREADS))

#: Rule names (those of fastlr._specs.CHECKS) -> the codes checked_real takes.
RULES = {"finite": FINITE, "nonneg": NONNEG, "positive": POSITIVE, "unit": UNIT,
         "closed_unit": CLOSED_UNIT, "open_unit": OPEN_UNIT, "above_one": ABOVE_ONE}
#: int_arg's "no upper limit" (the largest int64).
INT_MAX = INT64_MAX

cdef tuple _RULE_TEXT = ("", ">= 0", "> 0", "in [0, 1)", "in [0, 1]", "in (0, 1)", "> 1")

cdef threads_default_fn _threads_default = NULL
cdef object _py_get_num_threads = None


cdef int set_threads_default(threads_default_fn fn) noexcept:
    global _threads_default
    _threads_default = fn
    return 0


cdef int _default_threads() except -1:
    global _py_get_num_threads
    if _threads_default != NULL:
        return _threads_default()
    if _py_get_num_threads is None:
        from fastlr._kernels import get_num_threads     # at call time: no import cycle
        _py_get_num_threads = get_num_threads
    return _py_get_num_threads()


cdef inline str _kind(object value):
    s = repr(value)
    if len(s) > 80:
        s = s[:77] + "..."
    return f"{type(value).__name__} {s}"


cdef inline bint _is_bool(object value):
    return isinstance(value, (bool, np.bool_))


cdef object _item_0d(object value):
    """A 0-d array's element (a NumPy scalar, or the object an object array holds), else
    None: a 0-d array is a number like its element (``lr=np.array(0.1)``). Only called after
    the fast paths failed, so Python floats and ints never pay for it."""
    if isinstance(value, np.ndarray) and (<object>value).ndim == 0:
        item = value[()]
        if not isinstance(item, np.ndarray):
            return item
    return None


cpdef double real_arg(str fn, str name, object value) except? -1.0:
    """``value`` as a finite float: TypeError for a bool, an array or a non-number,
    ValueError for NaN, an infinity or an int beyond the double range."""
    cdef double v
    if type(value) is float:            # the common case, without isinstance calls
        v = <double>value
    elif type(value) is int:
        try:
            v = value
        except OverflowError:           # an int beyond the double range
            raise ValueError(f"{fn}: {name} must be a finite number, got an int too large "
                             f"for a float") from None
    else:
        number = value
        if _is_bool(value) or not isinstance(value, numbers.Real):
            number = _item_0d(value)    # a 0-d array: its element, checked as such
            if number is None or _is_bool(number) or not isinstance(number, numbers.Real):
                raise TypeError(f"{fn}: {name} must be a real number, got {_kind(value)}")
        try:
            v = float(number)
        except OverflowError:           # an int beyond the double range
            raise ValueError(f"{fn}: {name} must be a finite number, got an int too large "
                             f"for a float") from None
    if not isfinite(v):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")
    return v


cpdef double checked_real(str fn, str name, object value, int rule) except? -1.0:
    """:func:`real_arg` and then ``rule`` (FINITE, NONNEG, POSITIVE, UNIT, CLOSED_UNIT,
    OPEN_UNIT, ABOVE_ONE):
    ValueError outside it."""
    cdef double v = real_arg(fn, name, value)
    cdef bint ok
    if rule == NONNEG:
        ok = v >= 0.0
    elif rule == POSITIVE:
        ok = v > 0.0
    elif rule == UNIT:
        ok = 0.0 <= v < 1.0
    elif rule == CLOSED_UNIT:
        ok = 0.0 <= v <= 1.0
    elif rule == OPEN_UNIT:
        ok = 0.0 < v < 1.0
    elif rule == ABOVE_ONE:
        ok = v > 1.0
    elif rule == FINITE:
        ok = True
    else:
        raise SystemError(f"fastlr._core.args.checked_real: unknown rule {rule}")
    if not ok:
        raise ValueError(f"{fn}: {name} must be {_RULE_TEXT[rule]}, got {value!r}")
    return v


cdef object _integer(str fn, str name, object value, str what):
    """``value`` as a Python int (TypeError for anything that is not an integer; a 0-d
    array is its element)."""
    if type(value) is int:
        return value
    number = value
    if isinstance(value, np.ndarray):
        number = _item_0d(value)
    if number is None or _is_bool(number):
        raise TypeError(f"{fn}: {name} must be {what}, got {_kind(value)}")
    try:
        return operator.index(number)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be {what}, got {_kind(value)}") from None


cpdef int64_t int_arg(str fn, str name, object value, int64_t low, int64_t high) except? -1:
    """An integer in ``[low, high]`` (``high == INT_MAX``: below 2**63): TypeError for a
    bool, a float (even 2.0), an array or a non-number; ValueError outside the range."""
    cdef int overflow = 0
    cdef long long c
    if type(value) is int:              # the common case, in C
        c = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow == 0 and low <= c <= high:
            return <int64_t>c
    v = _integer(fn, name, value, f"an int >= {low}" if high == INT64_MAX else "an int")
    if v < low:
        raise ValueError(f"{fn}: {name} must be >= {low}, got {v}")
    if v > high:
        if high == INT64_MAX:
            raise ValueError(f"{fn}: {name} must be < 2**63, got {v}")
        raise ValueError(f"{fn}: {name} must be <= {high}, got {v}")
    return <int64_t>v


cpdef bint flag_arg(str fn, str name, object value) except -1:
    """A bool or np.bool_, or the integers 0 and 1 (a 0-d array: its element): TypeError for
    any other kind (a float, a str, None), ValueError for any other integer."""
    if value is True:
        return True
    if value is False:
        return False
    flag = value
    if isinstance(value, np.ndarray):
        flag = _item_0d(value)
    if isinstance(flag, np.bool_):
        return bool(flag)
    if isinstance(flag, (int, np.integer)):     # (a bool held by an object array too)
        if flag == 0 or flag == 1:
            return flag == 1
        raise ValueError(f"{fn}: {name} must be a bool (or 0 or 1), got {value!r}")
    raise TypeError(f"{fn}: {name} must be a bool, got {_kind(value)}")


cpdef int64_t step_arg(str fn, object step) except -1:
    """The 1-based update number: an integer in [1, 2**63)."""
    cdef int overflow = 0
    cdef long long c
    if type(step) is int:               # the common case, in C
        c = PyLong_AsLongLongAndOverflow(step, &overflow)
        if overflow == 0 and c >= 1:
            return <int64_t>c
    s = _integer(fn, "step", step, "an int >= 1 (the 1-based update number)")
    if s < 1:
        raise ValueError(f"{fn}: step must be >= 1 (the 1-based update number), got {s}")
    if s > INT64_MAX:
        raise ValueError(f"{fn}: step must be < 2**63, got {s}")
    return <int64_t>s


cpdef int threads_arg(str fn, object n_threads) except -1:
    """An int in [1, MAX_THREADS]; None gives the default (fastlr.get_num_threads(), read
    now)."""
    if n_threads is None:
        return _default_threads()
    cdef int overflow = 0
    cdef long long c
    if type(n_threads) is int:          # the common case, in C
        c = PyLong_AsLongLongAndOverflow(n_threads, &overflow)
        if overflow == 0 and 1 <= c <= MAX_THREADS:
            return <int>c
    n = _integer(fn, "n_threads", n_threads, "an int >= 1 or None")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{fn}: n_threads must be between 1 and {MAX_THREADS} or None, got "
                         f"{n}")
    return <int>n


cpdef Py_ssize_t choice_arg(str fn, str name, object value, tuple choices) except -1:
    """The index of ``value`` in ``choices``: TypeError when its type is none of the
    choices' types (a number for a str option), ValueError when it is not among them."""
    cdef Py_ssize_t i
    for i in range(len(choices)):
        c = choices[i]
        if (type(c) is type(value) or (not _is_bool(value) and isinstance(value, type(c))))\
                and c == value:
            return i
    want = ", ".join([repr(c) for c in choices])
    cdef bint known_type = False
    if not _is_bool(value):
        for c in choices:
            if isinstance(value, type(c)):
                known_type = True
    if not known_type:
        raise TypeError(f"{fn}: {name} must be one of {want}, got {_kind(value)}")
    raise ValueError(f"{fn}: {name} must be one of {want}, got {value!r}")


# ---------------------------------------------------------------------------------------
# hints for the common array mistakes, appended to the messages of the array checks
# (fastlr._core.arrays and the layers that check arrays), so every layer says the same
# ---------------------------------------------------------------------------------------
cpdef str ndarray_hint(object value):
    """The end of a "must be a numpy.ndarray" message: for a torch tensor, how to pass it
    (``t.numpy()`` or fastlr.compat.torch); else ""."""
    if type(value).__module__.partition(".")[0] == "torch" and hasattr(value, "numpy"):
        return ("; for a torch tensor pass t.numpy() (t.detach().numpy() when it requires "
                "grad; on the CPU it shares the tensor's memory), or use fastlr.compat.torch, "
                "whose optimizers step tensors")
    return ""


cpdef str layout_hint(str name, bint fortran=False, bint written=False):
    """The end of a message on an array that is not contiguous, or not in its param's layout
    (``fortran``: the param is F-ordered): ``np.ascontiguousarray(name)`` (or
    ``np.asfortranarray``). ``written``: the array is updated in place, so a copy made per
    call would lose the update: make it once and keep that array."""
    fix = f"np.{'asfortranarray' if fortran else 'ascontiguousarray'}({name})"
    if written:
        return (f"; {name} is updated in place, so make it contiguous once ({fix}; a "
                f"transposed or sliced array is not) and keep training that array")
    return f"; pass {fix} (a transposed or sliced array is not contiguous)"


# ---------------------------------------------------------------------------------------
# the per-array checks' messages (declared in args.pxd; raised out of line from
# fastlr._core.arrays' inline tests, which call them only when a test fails)
# ---------------------------------------------------------------------------------------
cdef int raise_not_ndarray(str fn, object name, object obj, str what) except -1:
    of = f" of {what}" if what else ""
    raise TypeError(f"{fn}: {name} must be a numpy.ndarray{of}, got "
                    f"{type(obj).__name__}{ndarray_hint(obj)}")


cdef int raise_param_layout(str fn, object param) except -1:
    raise ValueError(f"{fn}: param must be contiguous (C or F order), got strides "
                     f"{param.strides} for shape {param.shape}; an in-place update cannot be "
                     f"applied to a copy{layout_hint('param', False, True)}")


cdef int raise_unlike_param(str fn, object name, object a, object param,
                            bint written) except -1:
    cdef cnp.ndarray x = <cnp.ndarray?>a, p = <cnp.ndarray?>param
    if not same_shape(x, p):
        raise ValueError(f"{fn}: {name} has shape {a.shape} but param has shape "
                         f"{param.shape}; they must be equal")
    raise ValueError(f"{fn}: {name} is {layout_name(x)} but param is {layout_name(p)}; the "
                     f"arrays of one parameter must share one contiguous layout"
                     f"{layout_hint(name, not cnp.PyArray_IS_C_CONTIGUOUS(p), written)}")


cdef int raise_bad_buffer(str fn, object name, object a, bint written) except -1:
    cdef cnp.ndarray x = <cnp.ndarray?>a
    if cnp.PyArray_ISBYTESWAPPED(x):
        raise TypeError(f"{fn}: {name} has non-native byte order ({a.dtype.str}); use "
                        f"{name}.astype({name}.dtype.newbyteorder('='))")
    if not cnp.PyArray_ISALIGNED(x):
        raise ValueError(f"{fn}: {name} is not aligned in memory; an in-place update needs "
                         f"an aligned buffer")
    if written and not cnp.PyArray_ISWRITEABLE(x):
        raise ValueError(f"{fn}: {name} is read-only (flags.writeable=False) but is updated "
                         f"in place")
    raise AssertionError(f"{fn}: {name}: raise_bad_buffer called on a valid buffer")


cdef int raise_overlap(str fn, object name_a, object name_b) except -1:
    raise ValueError(f"{fn}: {name_a} and {name_b} overlap in memory; every buffer of an "
                     f"update must be a separate array")
