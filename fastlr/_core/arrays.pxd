# fastlr/_core/arrays.pxd -- small array helpers shared by the compiled modules (private):
# shapes, layout names, like-array checks. Scalar arguments: fastlr._core.args.

cimport numpy as cnp

from fastlr._core.args cimport layout_hint


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Equal ndim and dimensions."""
    cdef int k, nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(b):
        return False
    for k in range(nd):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(b, k):
            return False
    return True


cdef inline str layout_name(cnp.ndarray a):
    """'C-contiguous', 'F-contiguous' or 'not contiguous (strides ...)', for messages."""
    if cnp.PyArray_IS_C_CONTIGUOUS(a):
        return "C-contiguous"
    if cnp.PyArray_IS_F_CONTIGUOUS(a):
        return "F-contiguous"
    return f"not contiguous (strides {(<object>a).strides})"


cdef inline int check_like(str fn, str name, cnp.ndarray a, str ref_name,
                           cnp.ndarray ref, bint written=False) except -1:
    """``a`` has ``ref``'s dtype, shape and contiguous layout; else a TypeError/ValueError
    naming both (a layout error says how to fix it; ``written``: ``a`` is updated in place)."""
    if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(ref):
        raise TypeError(f"{fn}: {name} has dtype {a.dtype} but {ref_name} has dtype "
                        f"{ref.dtype}; they must be equal (float32 or float64)")
    if not same_shape(a, ref):
        raise ValueError(f"{fn}: {name} has shape {(<object>a).shape} but {ref_name} has "
                         f"shape {(<object>ref).shape}; they must be equal")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) if cnp.PyArray_IS_C_CONTIGUOUS(ref)
            else cnp.PyArray_IS_F_CONTIGUOUS(a)):
        raise ValueError(f"{fn}: {name} is {layout_name(a)} but {ref_name} is "
                         f"{layout_name(ref)}; they must share one contiguous layout"
                         f"{layout_hint(name, not cnp.PyArray_IS_C_CONTIGUOUS(ref), written)}")
    return 0
