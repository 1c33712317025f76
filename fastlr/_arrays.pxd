# fastlr/_arrays.pxd -- small NumPy C-API helpers shared by _kernels and _optim (private).

cimport numpy as cnp


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Equal ndim and dimensions."""
    cdef int k, nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(b):
        return False
    for k in range(nd):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(b, k):
            return False
    return True
