# fastlr/_arrays.pxd -- small argument helpers shared by the compiled modules (private).

cimport numpy as cnp
from libc.math cimport INFINITY, isfinite

import numpy as np


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Equal ndim and dimensions."""
    cdef int k, nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(b):
        return False
    for k in range(nd):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(b, k):
            return False
    return True


cdef inline double real_arg(str fn, str name, object value) except? -1.0:
    """``value`` as a finite double: TypeError for a bool or a non-number, ValueError for
    NaN, an infinity or an int beyond the double range; the message names ``name``."""
    cdef double v
    if type(value) is float:            # the common case, without isinstance calls
        v = <double>value
    elif isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a real number, got "
                        f"{type(value).__name__} {value!r}")
    else:
        try:
            v = value
        except OverflowError:           # an int beyond the double range
            v = INFINITY
    if not isfinite(v):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")
    return v
