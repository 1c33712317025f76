# fastlr/_core/args.pxd -- the argument policy, once, for every public callable (private).
#
# Compiled modules `from fastlr._core.args cimport ...`; Python layers import the same
# functions (they are cpdef: one implementation, callable from C and from Python).
#
# The policy:
# * wrong kind -> TypeError, wrong value -> ValueError;
# * every message starts with the public callable's name `fn` ("fastlr.Adam: lr must ...");
# * a real number is a Python/NumPy real (int, float, np.integer, np.floating, any other
#   numbers.Real such as Fraction), never a bool or np.bool_, never an array of 1 or more
#   dimensions; where a finite value is required, NaN, +-inf and ints beyond the double
#   range are a ValueError;
# * an integer is an int or np.integer (anything with __index__), never a bool and never a
#   float, even an integral one (2.0 is a TypeError);
# * a flag is a bool or np.bool_, or the integer 0 or 1 (the kernels' C convention); other
#   integers are a ValueError, other kinds (a float, a str, None) a TypeError;
# * a 0-d NumPy array is its element everywhere above (np.array(0.1) is a real,
#   np.array(3) an integer, np.array(True) a flag and, like True, not a number); only
#   checked once the fast paths (a Python float or int) have failed;
# * a thread count is an int in [1, MAX_THREADS] or None (None: fastlr.get_num_threads()).

from libc.stdint cimport int64_t

# Range rules of checked_real (also Python-visible: fastlr._core.args.NONNEG, ...; RULES maps
# the names fastlr._specs.CHECKS uses to these codes).
cpdef enum Rule:
    FINITE = 0          # any finite number
    NONNEG = 1          # >= 0
    POSITIVE = 2        # > 0
    UNIT = 3            # [0, 1)
    CLOSED_UNIT = 4     # [0, 1]
    OPEN_UNIT = 5       # (0, 1)
    ABOVE_ONE = 6       # > 1

cpdef enum Limit:
    MAX_THREADS = 4096  # the most threads a call may ask for

# The thread count for n_threads=None; fastlr._kernels may register its C function here (until
# then threads_arg asks fastlr._kernels.get_num_threads at call time: no import cycle).
ctypedef int (*threads_default_fn)() noexcept nogil
cdef int set_threads_default(threads_default_fn fn) noexcept

# A finite real number, as a double.
cpdef double real_arg(str fn, str name, object value) except? -1.0
# A finite real number obeying `rule` (a Rule code), as a double.
cpdef double checked_real(str fn, str name, object value, int rule) except? -1.0
# An integer in [low, high] (high = INT64_MAX: no upper limit besides 2**63).
cpdef int64_t int_arg(str fn, str name, object value, int64_t low, int64_t high) except? -1
# A bool, np.bool_ or the integer 0 or 1, as a C int 0/1.
cpdef bint flag_arg(str fn, str name, object value) except -1
# The 1-based update number of a kernel: an integer in [1, 2**63).
cpdef int64_t step_arg(str fn, object step) except -1
# n_threads: an int in [1, MAX_THREADS], or None for the default thread count.
cpdef int threads_arg(str fn, object n_threads) except -1
# One of `choices` (a tuple): TypeError when value's type is none of the choices' types,
# ValueError when it is not among them; returns its index.
cpdef Py_ssize_t choice_arg(str fn, str name, object value, tuple choices) except -1

# Hints (text starting "; ", or "") for the array checks' messages: a torch tensor where an
# ndarray is expected; a non-contiguous array, or one not in its param's layout (fortran: the
# param is F-ordered; written: the array is updated in place).
cpdef str ndarray_hint(object value)
cpdef str layout_hint(str name, bint fortran=*, bint written=*)

# The messages of the per-array checks of the validated kernels (fastlr._core.arrays: each
# inline test there calls one of these, out of line, only when it fails, so the success
# path stays a few flag tests). Each raises (TypeError or ValueError) and returns -1.
# not an ndarray: "{name} must be a numpy.ndarray[ of {what}], got ..." (what: "" for none)
cdef int raise_not_ndarray(str fn, object name, object obj, str what) except -1
# the param is neither C- nor F-contiguous
cdef int raise_param_layout(str fn, object param) except -1
# `a` has another shape, or another contiguous layout, than the param
cdef int raise_unlike_param(str fn, object name, object a, object param, bint written) except -1
# `a` is byte-swapped, misaligned, or (written: updated in place) read-only
cdef int raise_bad_buffer(str fn, object name, object a, bint written) except -1
# two buffers of one update share memory
cdef int raise_overlap(str fn, object name_a, object name_b) except -1
