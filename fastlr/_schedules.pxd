# fastlr/_schedules.pxd -- the C API of fastlr's learning-rate schedules.
#
# A schedule is C data (a kind, its parameters, nested schedules for compositions) owned by
# a Python `fastlr.schedules.Schedule` object. Other Cython code evaluates it through an
# opaque handle, so the layout can change without breaking consumers:
#
#     from fastlr._schedules cimport schedule_handle, schedule_value
#     cdef const void* h = schedule_handle(s)     # s: a fastlr Schedule; keep s alive
#     with nogil:
#         lr = schedule_value(h, t)               # t: completed steps, >= 0
#
# schedule_value is a pure function of t (closed form), never fails for t >= 0 and holds the
# final value after a schedule's end. A schedule built from a Python callable
# (`Schedule.is_compiled` is False) takes the GIL to call it; on an exception it returns NaN
# and the Python-level caller re-raises it (`check_schedule_error`).
#
# This file is a versioned interface: within a minor release series it only grows.

from libc.stdint cimport int64_t

# The handle of a Schedule object (raises TypeError for anything else). The pointer is
# valid while the object is alive.
cdef const void* schedule_handle(object schedule) except NULL

# The schedule's value after t completed steps (t >= 0).
cdef double schedule_value(const void* handle, int64_t t) noexcept nogil

# Values for n steps ts[0..n) into out[0..n).
cdef void schedule_values(const void* handle, const int64_t* ts, double* out,
                          Py_ssize_t n) noexcept nogil

# 1 when evaluating the schedule needs the GIL (it contains a Python callable), else 0.
cdef int schedule_needs_gil(const void* handle) noexcept nogil

# Re-raise (and clear) an exception that a Python callable inside `schedule` raised during
# the last evaluation; returns 0 when there was none.
cdef int check_schedule_error(object schedule) except -1
