# fastlr/_core/clip.pxi -- included by engine.pyx: the functional global-norm clip and
# grad_stats, on the engine's reductions (pieces.pxi).

cdef _reduce_arrays(str fn, list arrays, int nt, int want_norm, int want_scan, bint writeable):
    """Validate a list of float arrays and reduce them: (sum of squares, any non-finite)."""
    cdef Py_ssize_t i, n = len(arrays), total = 0
    cdef cnp.ndarray a
    cdef Piece* pieces
    cdef double* block_sums
    cdef unsigned char* block_flags
    cdef double sumsq = 0.0
    cdef int nonfinite = 0
    for i in range(n):
        obj = arrays[i]
        if not isinstance(obj, np.ndarray):
            raise TypeError(f"{fn}: grads[{i}] must be a numpy.ndarray, got "
                            f"{type(obj).__name__}{ndarray_hint(obj)}")
        a = <cnp.ndarray>obj
        if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT and cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE:
            raise TypeError(f"{fn}: grads[{i}] must have dtype float32 or float64, got "
                            f"{a.dtype}")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a)) or \
                not cnp.PyArray_ISALIGNED(a) or cnp.PyArray_ISBYTESWAPPED(a):
            raise ValueError(f"{fn}: grads[{i}] must be contiguous, aligned and in native "
                             f"byte order, got strides {obj.strides}")
        if writeable and not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError(f"{fn}: grads[{i}] is read-only but is scaled in place")
        total += cnp.PyArray_SIZE(a)
    if writeable and n > 1:   # each grad is scaled in place: one array twice, scaled twice
        spans = sorted((<Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>arrays[i]),
                        cnp.PyArray_NBYTES(<cnp.ndarray>arrays[i]), i)
                       for i in range(n) if cnp.PyArray_NBYTES(<cnp.ndarray>arrays[i]))
        for (lo_a, n_a, i_a), (lo_b, n_b, i_b) in zip(spans, spans[1:]):
            if lo_b < lo_a + n_a:
                raise ValueError(f"{fn}: grads[{min(i_a, i_b)}] and grads[{max(i_a, i_b)}] "
                                 f"overlap in memory (each is scaled in place once)")
    n_blocks = max(1, (total + REDUCE_BLOCK - 1) // REDUCE_BLOCK)
    pieces = <Piece*>calloc(max(n, 1), sizeof(Piece))
    block_sums = <double*>calloc(n_blocks, sizeof(double))
    block_flags = <unsigned char*>calloc(n_blocks, 1)
    try:
        if pieces == NULL or block_sums == NULL or block_flags == NULL:
            raise MemoryError()
        total = 0
        for i in range(n):
            a = <cnp.ndarray>arrays[i]
            pieces[i].ptrs[1] = <char*>cnp.PyArray_DATA(a)
            pieces[i].n = cnp.PyArray_SIZE(a)
            pieces[i].itemsize = cnp.PyArray_ITEMSIZE(a)
            pieces[i].state_itemsize = pieces[i].itemsize
            pieces[i].grad_itemsize = pieces[i].itemsize
            pieces[i].start = total
            total += pieces[i].n
        with nogil:
            reduce_pieces(pieces, n, total, want_norm, want_scan, block_sums, block_flags,
                          nt, &sumsq, &nonfinite)
    finally:
        free(pieces)
        free(block_sums)
        free(block_flags)
    return sumsq, bool(nonfinite)


cdef list _grad_list(str fn, object grads):
    if isinstance(grads, np.ndarray):
        return [grads]
    if isinstance(grads, (list, tuple)):
        return list(grads)
    raise TypeError(f"{fn}: grads must be an array or a list of arrays, got "
                    f"{type(grads).__name__}")


def grad_stats(grads, *, n_threads=None):
    """Sum of squares and non-finite flag over all elements of ``grads``.

    Accumulated in double with the blocks of :func:`clip_grad_norm` (the same bits for any
    thread count). For code that combines norms itself, e.g. across processes.

    Parameters
    ----------
    grads : numpy.ndarray or list of numpy.ndarray
        One float32/float64 array or a list of them (dtypes may differ), contiguous.
    n_threads : int, optional
        Threads to use; ``None`` uses :func:`fastlr.get_num_threads`.

    Returns
    -------
    sumsq : float
        The sum of ``g**2`` over every element of every grad, in double.
    nonfinite : bool
        Whether any element is NaN or Inf.

    Raises
    ------
    TypeError
        If ``grads`` is not an array or a list of arrays, or an array has the wrong dtype
        or layout.
    ValueError
        If ``n_threads`` is out of range.

    Examples
    --------
    >>> from fastlr._core.engine import grad_stats
    >>> grad_stats([np.array([3.0, 4.0]), np.array([12.0], dtype=np.float32)])
    (169.0, False)
    """
    cdef str fn = "fastlr.grad_stats"
    return _reduce_arrays(fn, _grad_list(fn, grads), threads_arg(fn, n_threads), 1, 1, False)


def clip_grad_norm(grads, max_norm, *, error_if_nonfinite=False, n_threads=None):
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    The same as torch's ``torch.nn.utils.clip_grad_norm_``.
    ``norm = sqrt(sum of g**2 over every element of every grad)``, accumulated in double
    in fixed blocks (the same bits for any thread count); then every grad is multiplied by
    ``min(max_norm / (norm + 1e-6), 1)`` in its own dtype (nothing is written when that is
    1). A NaN or Inf element makes the norm non-finite and, as in torch, the factor
    NaN or 0. The optimizers' ``max_grad_norm=`` does the same inside the
    step without a separate pass over the grads for the scaling.

    Parameters
    ----------
    grads : numpy.ndarray or list of numpy.ndarray
        One float32/float64 array or a list of them (dtypes may differ), contiguous and
        writeable; scaled in place.
    max_norm : float
        The largest global L2 norm allowed (> 0, in the grads' units).
    error_if_nonfinite : bool, default False
        Raise ``ValueError`` instead of scaling when the norm is NaN or Inf.
    n_threads : int, optional
        Threads to use; ``None`` uses :func:`fastlr.get_num_threads`.

    Returns
    -------
    float
        The global L2 norm the grads had before scaling.

    Raises
    ------
    TypeError
        If ``grads`` is not an array or a list of float32/float64 contiguous writeable
        arrays, or an argument has the wrong type.
    ValueError
        If ``max_norm`` is not positive, ``n_threads`` is out of range, or, with
        ``error_if_nonfinite=True``, the norm is NaN or Inf (nothing is written then).

    Examples
    --------
    >>> g = np.array([3.0, 4.0])
    >>> fastlr.clip_grad_norm([g], 1.0)
    5.0
    >>> np.round(g, 6)
    array([0.6, 0.8])
    """
    cdef str fn = "fastlr.clip_grad_norm"
    cdef double norm, scale
    cdef list arrays = _grad_list(fn, grads)
    cdef double limit = checked_real(fn, "max_norm", max_norm, POSITIVE)
    cdef bint error_if = flag_arg(fn, "error_if_nonfinite", error_if_nonfinite)
    sumsq, _ = _reduce_arrays(fn, arrays, threads_arg(fn, n_threads), 1, 0, True)
    norm = sqrt(sumsq)
    if error_if and not isfinite(norm):
        raise ValueError(f"{fn}: the total norm of the grads is {norm!r} (a NaN or Inf "
                         f"element); nothing was scaled")
    scale = clip_scale(limit, norm)
    if scale != 1.0:
        with np.errstate(invalid="ignore"):     # inf * 0 = nan, as torch (silently)
            for obj in arrays:
                np.multiply(obj, obj.dtype.type(scale), out=obj)
    return norm
