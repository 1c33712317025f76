# fastlr/_core/pieces.pxi -- included by engine.pyx: the piece runner and the gradient
# reductions. A piece is one contiguous run of elements of one span (param, grad, state
# pointers, its core loop and coefficients); a step concatenates its pieces and splits the
# concatenation across threads, so any split gives the same bits.

ctypedef struct Piece:
    char* ptrs[5]             # param, grad, state...
    Py_ssize_t n
    Py_ssize_t itemsize       # of the param
    Py_ssize_t grad_itemsize  # of the grad: itemsize; 2 for a 16-bit grad of a master; 4
                              # for a float32 grad of a 16-bit param
    Py_ssize_t state_itemsize # of the state buffers: itemsize; 2 for bfloat16 state; 4
                              # for a 16-bit param's (float32)
    Py_ssize_t start          # first element in the concatenation of all pieces
    core_fn core
    const void* coef
    char* user                # the param is the float32 master of these 16-bit bits (or NULL)
    int direct16              # the param is 16-bit itself, its state float32
    int fmt16                 # the 16-bit format (FMT_F16, FMT_BF16) of user or param
    uint32_t salt             # direct16: the stochastic rounding's salt this step
    float grad_scale          # direct16: the clipping factor folded into coef (else 1)


cdef inline char* _off(char* p, Py_ssize_t nbytes) noexcept nogil:
    return NULL if p == NULL else p + nbytes


cdef void run_piece_range(const Piece* pieces, Py_ssize_t n_pieces, Py_ssize_t lo,
                          Py_ssize_t hi) noexcept nogil:
    """Update global elements [lo, hi) of the concatenated pieces."""
    cdef Py_ssize_t a = 0, b = n_pieces, mid, i, k, s, e
    cdef char* ptrs[5]
    cdef const Piece* pc
    while b - a > 1:                        # the piece that holds element lo
        mid = (a + b) // 2
        if pieces[mid].start <= lo:
            a = mid
        else:
            b = mid
    i = a
    while i < n_pieces and pieces[i].start < hi:
        pc = &pieces[i]
        s = lo - pc.start if lo > pc.start else 0
        e = hi - pc.start if hi - pc.start < pc.n else pc.n
        if e > s:
            ptrs[0] = _off(pc.ptrs[0], s * pc.itemsize)
            ptrs[1] = _off(pc.ptrs[1], s * pc.grad_itemsize)
            for k in range(2, 5):
                ptrs[k] = _off(pc.ptrs[k], s * pc.state_itemsize)
            if pc.user != NULL:     # the master, then its 16-bit param, block by block
                CORES.master16[pc.fmt16](pc.core, ptrs, e - s, pc.coef,
                                         <uint16_t*>pc.user + s, pc.grad_itemsize == 2,
                                         pc.state_itemsize)
            elif pc.direct16:       # the 16-bit param widened, updated, rounded, by block
                CORES.direct16[pc.fmt16](pc.core, ptrs, e - s, pc.coef, pc.grad_itemsize == 2,
                                         pc.state_itemsize, pc.salt, pc.grad_scale)
            else:
                pc.core(ptrs, e - s, pc.coef)
        i += 1


ctypedef struct Window:
    const Piece* pieces
    Py_ssize_t n_pieces
    Py_ssize_t offset         # the window's first element in the concatenation


cdef void window_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const Window* w = <const Window*>ctx
    run_piece_range(w.pieces, w.n_pieces, w.offset + lo, w.offset + hi)


ctypedef struct PieceList:
    const Piece* pieces
    Py_ssize_t n_pieces


cdef void piece_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const PieceList* lst = <const PieceList*>ctx
    run_piece_range(lst.pieces, lst.n_pieces, lo, hi)


cdef void run_pieces(const Piece* pieces, Py_ssize_t n_pieces, Py_ssize_t total,
                     int n_threads) noexcept nogil:
    # the kernels' threaded loop over the concatenated elements of all pieces
    cdef PieceList lst
    lst.pieces = pieces
    lst.n_pieces = n_pieces
    parallel_spans(piece_span, &lst, total, n_threads)


# ---------------------------------------------------------------------------------------
# Gradient reductions over the concatenated grads of all pieces (ptrs[1]): the sum of
# squares (clipping by global norm) and the non-finite scan, in fixed blocks
# ---------------------------------------------------------------------------------------
cdef void reduce_block(const Piece* pieces, Py_ssize_t n_pieces, Py_ssize_t lo, Py_ssize_t hi,
                       int want_norm, int want_scan, double* block_sum,
                       unsigned char* block_flag) noexcept nogil:
    cdef Py_ssize_t a = 0, b = n_pieces, mid, i, s, e
    cdef double acc[8]
    cdef int k, f64
    cdef unsigned char flag = 0
    cdef const Piece* pc
    cdef const char* x
    for k in range(8):
        acc[k] = 0.0
    while b - a > 1:                        # the piece that holds element lo
        mid = (a + b) // 2
        if pieces[mid].start <= lo:
            a = mid
        else:
            b = mid
    i = a
    while i < n_pieces and pieces[i].start < hi:
        pc = &pieces[i]
        s = lo - pc.start if lo > pc.start else 0
        e = hi - pc.start if hi - pc.start < pc.n else pc.n
        if e > s:
            f64 = pc.itemsize == 8
            x = pc.ptrs[1] + s * pc.grad_itemsize
            if pc.grad_itemsize == 2:       # a 16-bit param's 16-bit grad (master16.pxd)
                if want_norm:
                    CORES.sumsq16[pc.fmt16](x, e - s, pc.start + s, acc)
                if want_scan and not flag:
                    flag = CORES.nonfinite16[pc.fmt16](x, e - s)
            else:
                if want_norm:
                    CORES.sumsq[f64](x, e - s, pc.start + s, acc)
                if want_scan and not flag:
                    flag = CORES.nonfinite[f64](x, e - s)
        i += 1
    block_sum[0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    block_flag[0] = flag


ctypedef struct ReduceJob:
    const Piece* pieces
    Py_ssize_t n_pieces
    Py_ssize_t total
    int want_norm
    int want_scan
    double* block_sums
    unsigned char* block_flags


cdef void reduce_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The blocks of a ReduceJob that start in [lo, hi), each into its own slot (a block
    may reach past hi: every block is computed exactly once for any split of [0, total))."""
    cdef const ReduceJob* job = <const ReduceJob*>ctx
    cdef Py_ssize_t blk
    for blk in range((lo + REDUCE_BLOCK - 1) // REDUCE_BLOCK,
                     (hi + REDUCE_BLOCK - 1) // REDUCE_BLOCK):
        reduce_block(job.pieces, job.n_pieces, blk * REDUCE_BLOCK,
                     min(blk * REDUCE_BLOCK + REDUCE_BLOCK, job.total), job.want_norm,
                     job.want_scan, &job.block_sums[blk], &job.block_flags[blk])


cdef void reduce_pieces(const Piece* pieces, Py_ssize_t n_pieces, Py_ssize_t total,
                        int want_norm, int want_scan, double* block_sums,   # OUT (scratch)
                        unsigned char* block_flags, int n_threads,           # OUT (scratch)
                        double* sumsq, int* nonfinite) noexcept nogil:      # OUT
    """Sum of squares (in double) and the non-finite flag of all grads. block_sums and
    block_flags hold ceil(total / REDUCE_BLOCK) entries. The grads are shared out like an
    update (the kernels' parallel_spans, whose chunks start on block boundaries); each
    block's sum lands in its own slot and the slots are summed in block order, so the
    result has the same bits for any split."""
    cdef Py_ssize_t n_blocks = (total + REDUCE_BLOCK - 1) // REDUCE_BLOCK, blk
    cdef double sq = 0.0
    cdef int flag = 0
    cdef ReduceJob job
    job.pieces = pieces
    job.n_pieces = n_pieces
    job.total = total
    job.want_norm = want_norm
    job.want_scan = want_scan
    job.block_sums = block_sums
    job.block_flags = block_flags
    parallel_spans(reduce_span, &job, total, n_threads)
    for blk in range(n_blocks):              # in block order: the same bits for any split
        sq = sq + block_sums[blk]
        flag = flag | block_flags[blk]
    sumsq[0] = sq
    nonfinite[0] = flag


cdef inline double clip_scale(double max_norm, double norm) noexcept nogil:
    """torch.nn.utils.clip_grad_norm_'s factor: min(max_norm / (norm + 1e-6), 1), NaN kept."""
    cdef double coef = max_norm / (norm + 1e-6)
    return 1.0 if coef >= 1.0 else coef


