# fastlr/_core/arrays.pxd -- small array helpers shared by the compiled modules (private):
# shapes, layout names, like-array checks, the validated kernels' per-array checks. Scalar
# arguments: fastlr._core.args.

cimport numpy as cnp

from fastlr._core.args cimport (layout_hint, raise_bad_buffer, raise_not_ndarray,
                                raise_overlap, raise_param_layout, raise_unlike_param)


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


# ---- the per-array checks of the validated kernels (param, grad, state buffers) ----------
# Each is a few flag tests, inline; when one fails it calls its out-of-line raiser
# (fastlr._core.args.raise_*), which builds the message: nothing else on the success path
# (fastlr._kernels runs them on every call).

cdef inline int check_ndarray(str fn, object name, object obj, str what) except -1:
    """``obj`` is a numpy.ndarray; else TypeError "{name} must be a numpy.ndarray of {what}"
    (``what`` "": no " of ...")."""
    if not cnp.PyArray_Check(obj):
        return raise_not_ndarray(fn, name, obj, what)
    return 0


cdef inline int check_param_layout(str fn, cnp.ndarray param) except -1:
    """The param (updated in place) is C- or F-contiguous."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(param) or cnp.PyArray_IS_F_CONTIGUOUS(param)):
        return raise_param_layout(fn, param)
    return 0


cdef inline int check_like_param(str fn, object name, cnp.ndarray a, cnp.ndarray param,
                                 bint c_order, bint written) except -1:
    """``a`` has the param's shape and contiguous layout (``c_order``: the param is
    C-contiguous); ``written``: ``a`` is updated in place (the layout message's hint)."""
    if not same_shape(a, param) or not (cnp.PyArray_IS_C_CONTIGUOUS(a) if c_order
                                        else cnp.PyArray_IS_F_CONTIGUOUS(a)):
        return raise_unlike_param(fn, name, a, param, written)
    return 0


cdef inline int check_buffer(str fn, object name, cnp.ndarray a, bint written) except -1:
    """Native byte order, aligned, and writeable when ``written`` (updated in place)."""
    if (cnp.PyArray_ISBYTESWAPPED(a) or not cnp.PyArray_ISALIGNED(a)
            or (written and not cnp.PyArray_ISWRITEABLE(a))):
        return raise_bad_buffer(fn, name, a, written)
    return 0


cdef inline int check_overlap(str fn, tuple names, char** lo, char** hi, int n) except -1:
    """No two of the buffers [lo[k], hi[k]) share memory (lo[k] NULL: buffer k is absent);
    else ValueError naming both (names[k]). Call it only with non-empty buffers (an empty
    one inside another would count as overlapping)."""
    cdef int k, j
    for k in range(n):
        if lo[k] == NULL:
            continue
        for j in range(k + 1, n):
            if lo[j] != NULL and lo[k] < hi[j] and lo[j] < hi[k]:
                return raise_overlap(fn, names[k], names[j])
    return 0
