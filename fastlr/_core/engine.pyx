# fastlr/_core/engine.pyx -- the optimizer step: every array of every group in one C call.
#
# Design notes
# ------------
# a) fastlr/optim/__init__.py owns the Python side (param groups, state allocation, coalescing of
#    adjacent views into spans, checkpoints) and hands the engine a fixed layout with
#    `configure`: one SpanC per contiguous run of params (same group, dtype and count), raw
#    pointers to param and state memory, and per group the source of every hyperparameter
#    (a constant or a schedule handle). Nothing in the layout changes per step.
# b) `step(grads, t)` is the hot path, all compiled: check the grads (count, dtype, shape,
#    layout; an error names the index and nothing is touched), evaluate each group's
#    schedules at t and check the values, derive per-span coefficients (bias corrections
#    from each span's own update count), then release the GIL and run every piece in one
#    pass -- serial below PARALLEL_MIN_SIZE elements in total, else one OpenMP region that
#    splits the concatenated elements evenly across threads. Element-wise updates make the
#    result independent of the split. Nothing is allocated per step.
# c) Grads that are adjacent views of one buffer (or one flat grad array) let a coalesced
#    span run as one piece; otherwise the span runs param by param, with the same bits.

from libc.math cimport isfinite, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

cimport numpy as cnp

from fastlr._core.arrays cimport real_arg, same_shape

from cpython.pycapsule cimport PyCapsule_GetPointer

from fastlr._core.loops cimport (AdadeltaCoef, AdagradCoef, AdamaxCoef, AdamCoef, CoreTable,
                           LionCoef, NAdamCoef, RAdamCoef, RMSpropCoef, SGDCoef, adadelta_coef,
                           adagrad_coef, adam_coef, adamax_coef, core_fn, lion_coef, nadam_coef,
                           radam_coef, rmsprop_coef, sgd_coef)
from fastlr._kernels cimport (AdadeltaHyper, AdagradHyper, AdamaxHyper, AdamHyper, LionHyper,
                              NAdamHyper, PARALLEL_MIN_SIZE, RAdamHyper, RMSpropHyper, SGDHyper,
                              parallel_spans, usable_threads)
from cython.parallel cimport prange
from fastlr._schedules cimport (check_schedule_error, schedule_handle, schedule_needs_gil,
                                schedule_value)

import numpy as np

from fastlr._schedules import Schedule

cnp.import_array()

# The core loops in use, set by fastlr._kernels._set_cores (the CPU dispatch).
cdef const CoreTable* CORES = NULL
_CAPSULE = None


def _set_cores(capsule):
    global CORES, _CAPSULE
    CORES = <const CoreTable*>PyCapsule_GetPointer(capsule, b"fastlr.CoreTable")
    _CAPSULE = capsule


cdef enum:
    K_SGD = 0
    K_RMSPROP = 1
    K_ADAM = 2
    K_ADAGRAD = 3
    K_ADADELTA = 4
    K_ADAMAX = 5
    K_NADAM = 6
    K_RADAM = 7
    K_LION = 8
    MAX_STATE = 3
    # Gradient reductions (norm, non-finite scan) work in blocks of this many elements of
    # the concatenated grads: the unit handed to a thread, and the unit of the fixed-order
    # final sum, so the norm has the same bits for any thread count.
    REDUCE_BLOCK = 16384

KINDS = {"sgd": K_SGD, "rmsprop": K_RMSPROP, "adam": K_ADAM, "adagrad": K_ADAGRAD,
         "adadelta": K_ADADELTA, "adamax": K_ADAMAX, "nadam": K_NADAM, "radam": K_RADAM,
         "lion": K_LION}

ctypedef struct HyperSrc:
    double value              # the value this step (lr: times the group's lr scale)
    double constant           # the constant (when schedule is NULL)
    const void* schedule      # NULL for a constant

ctypedef struct GroupC:
    HyperSrc lr, momentum, beta1, weight_decay      # the schedulable ones
    double dampening, alpha, eps, beta2, lr_decay, rho, momentum_decay
    int nesterov, maximize, decoupled

ctypedef union CoefU:
    SGDCoef sgd
    RMSpropCoef rmsprop
    AdamCoef adam
    AdagradCoef adagrad
    AdadeltaCoef adadelta
    AdamaxCoef adamax
    NAdamCoef nadam
    RAdamCoef radam
    LionCoef lion

ctypedef struct SpanC:
    char* param
    char* state[MAX_STATE]    # NULL when unused
    Py_ssize_t n              # elements
    Py_ssize_t itemsize
    Py_ssize_t first          # index of its first param
    Py_ssize_t n_params
    int group
    core_fn core

ctypedef struct ParamC:
    char* data
    Py_ssize_t nbytes
    Py_ssize_t offset         # bytes from its span's start
    int span
    int type_num
    int ndim
    int f_order               # 1 when only F-contiguous (multi-dimensional F layout)

ctypedef struct Region:        # memory a step writes: a param or a state block
    char* lo
    char* hi
    Py_ssize_t tag            # param index, or -1 for an optimizer state buffer

ctypedef struct Piece:
    char* ptrs[5]             # param, grad, state...
    Py_ssize_t n
    Py_ssize_t itemsize
    Py_ssize_t start          # first element in the concatenation of all pieces
    core_fn core
    const void* coef


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
            for k in range(5):
                ptrs[k] = _off(pc.ptrs[k], s * pc.itemsize)
            pc.core(ptrs, e - s, pc.coef)
        i += 1


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
            x = pc.ptrs[1] + s * pc.itemsize
            if want_norm:
                CORES.sumsq[f64](x, e - s, pc.start + s, acc)
            if want_scan and not flag:
                flag = CORES.nonfinite[f64](x, e - s)
        i += 1
    block_sum[0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    block_flag[0] = flag


cdef void reduce_pieces(const Piece* pieces, Py_ssize_t n_pieces, Py_ssize_t total,
                        int want_norm, int want_scan, double* block_sums,   # OUT (scratch)
                        unsigned char* block_flags, int n_threads,           # OUT (scratch)
                        double* sumsq, int* nonfinite) noexcept nogil:      # OUT
    """Sum of squares (in double) and the non-finite flag of all grads. block_sums and
    block_flags hold ceil(total / REDUCE_BLOCK) entries."""
    cdef Py_ssize_t n_blocks = (total + REDUCE_BLOCK - 1) // REDUCE_BLOCK, blk
    cdef int nt = usable_threads(n_threads)
    cdef double sq = 0.0
    cdef int flag = 0
    if nt > n_blocks:
        nt = <int>n_blocks
    if nt > 1 and total >= PARALLEL_MIN_SIZE:
        for blk in prange(n_blocks, schedule="static", num_threads=nt):
            reduce_block(pieces, n_pieces, blk * REDUCE_BLOCK,
                         min(blk * REDUCE_BLOCK + REDUCE_BLOCK, total), want_norm, want_scan,
                         &block_sums[blk], &block_flags[blk])
    else:
        for blk in range(n_blocks):
            reduce_block(pieces, n_pieces, blk * REDUCE_BLOCK,
                         min(blk * REDUCE_BLOCK + REDUCE_BLOCK, total), want_norm, want_scan,
                         &block_sums[blk], &block_flags[blk])
    for blk in range(n_blocks):              # in block order: the same bits for any split
        sq = sq + block_sums[blk]
        flag = flag | block_flags[blk]
    sumsq[0] = sq
    nonfinite[0] = flag


cdef inline double clip_scale(double max_norm, double norm) noexcept nogil:
    """torch.nn.utils.clip_grad_norm_'s factor: min(max_norm / (norm + 1e-6), 1), NaN kept."""
    cdef double coef = max_norm / (norm + 1e-6)
    return 1.0 if coef >= 1.0 else coef


cdef class Engine:
    """The compiled step of one optimizer (see the design notes). For fastlr.optim only."""

    cdef int kind
    cdef str name                 # e.g. "fastlr.Adam", for messages
    cdef Py_ssize_t n_params, n_spans, n_groups
    cdef ParamC* params
    cdef SpanC* spans
    cdef GroupC* groups
    cdef CoefU* coefs             # per span
    cdef Piece* pieces            # up to n_params
    cdef char** grad_ptrs         # per param, this step
    cdef object _keep             # arrays and schedules the pointers refer to
    cdef object _param_arrays     # list of param ndarrays (for shape checks)
    cdef int64_t[::1] counts      # per-param update counts (owned by optim.py)
    cdef unsigned char[::1] started   # SGD: the param's momentum buffer is in use (torch:
                                      # "buffer is not None"); owned by optim.py
    cdef double[:, ::1] used      # per group: lr, momentum, beta1, weight_decay of the last
                                  # step (owned by optim.py)
    cdef double[::1] mu_product   # NAdam: per param, the product of its mu_t (optim.py's)
    cdef double[::1] lr_scale     # per group: factor on the lr (ReduceLROnPlateau's)
    cdef double* block_sums       # reduction scratch, one per REDUCE_BLOCK of grads
    cdef unsigned char* block_flags
    cdef int needs_gil            # a group has a Python-callable schedule
    cdef Region* written          # every region a step writes, sorted by address
    cdef Py_ssize_t n_written
    cdef readonly Py_ssize_t total_size
    cdef readonly double last_grad_norm   # of the last step that computed it (else NaN)

    def __dealloc__(self):
        self._free()

    cdef void _free(self):
        free(self.params)
        free(self.spans)
        free(self.groups)
        free(self.coefs)
        free(self.pieces)
        free(self.grad_ptrs)
        free(self.block_sums)
        free(self.block_flags)
        free(self.written)
        self.written = NULL
        self.n_written = 0
        self.block_sums = NULL
        self.block_flags = NULL
        self.params = NULL
        self.spans = NULL
        self.groups = NULL
        self.coefs = NULL
        self.pieces = NULL
        self.grad_ptrs = NULL

    def __init__(self, str kind, str name):
        self.kind = KINDS[kind]
        self.name = name
        self.n_params = self.n_spans = self.n_groups = 0
        self.last_grad_norm = float("nan")

    def configure(self, list params, list spans, list groups, counts, started, used,
                  mu_product, lr_scale):
        """params: ndarrays in order; spans: (first, n_params, group, state slots) where the
        slots follow the kernel's state arguments (None when unused) and each array's
        memory covers the span; groups: dicts of resolved hyperparameters (schedulable ones
        as float or Schedule); counts (int64), started (uint8), mu_product (float64): per
        param; used: float64 (n_groups, 4), written by each step; lr_scale: float64 per
        group, read by each step."""
        cdef Py_ssize_t i, j, first, nparams
        cdef cnp.ndarray a, st
        cdef SpanC* sp
        cdef ParamC* pp
        cdef GroupC* g
        if CORES == NULL:
            raise RuntimeError("fastlr's core loops are not initialised (import fastlr)")
        self._free()
        keep = []
        self.n_params = len(params)
        self.n_spans = len(spans)
        self.n_groups = len(groups)
        self.params = <ParamC*>calloc(max(self.n_params, 1), sizeof(ParamC))
        self.spans = <SpanC*>calloc(max(self.n_spans, 1), sizeof(SpanC))
        self.groups = <GroupC*>calloc(max(self.n_groups, 1), sizeof(GroupC))
        self.coefs = <CoefU*>calloc(max(self.n_spans, 1), sizeof(CoefU))
        self.pieces = <Piece*>calloc(max(self.n_params, 1), sizeof(Piece))
        self.grad_ptrs = <char**>calloc(max(self.n_params, 1), sizeof(char*))
        if (self.params == NULL or self.spans == NULL or self.groups == NULL
                or self.coefs == NULL or self.pieces == NULL or self.grad_ptrs == NULL):
            self._free()
            raise MemoryError()
        self._param_arrays = list(params)
        self.counts = counts
        self.started = started
        self.used = used
        self.mu_product = mu_product
        self.lr_scale = lr_scale
        self.total_size = 0
        for i in range(self.n_params):
            a = <cnp.ndarray>params[i]
            pp = &self.params[i]
            pp.data = <char*>cnp.PyArray_DATA(a)
            pp.nbytes = cnp.PyArray_NBYTES(a)
            pp.type_num = cnp.PyArray_TYPE(a)
            pp.ndim = cnp.PyArray_NDIM(a)
            pp.f_order = not cnp.PyArray_IS_C_CONTIGUOUS(a)
            self.total_size += cnp.PyArray_SIZE(a)
        n_blocks = max(1, (self.total_size + REDUCE_BLOCK - 1) // REDUCE_BLOCK)
        self.block_sums = <double*>calloc(n_blocks, sizeof(double))
        self.block_flags = <unsigned char*>calloc(n_blocks, sizeof(unsigned char))
        if self.block_sums == NULL or self.block_flags == NULL:
            self._free()
            raise MemoryError()
        for i in range(self.n_spans):
            first, nparams, group, states = spans[i]
            sp = &self.spans[i]
            sp.first = first
            sp.n_params = nparams
            sp.group = group
            a = <cnp.ndarray>params[first]
            sp.param = <char*>cnp.PyArray_DATA(a)
            sp.itemsize = cnp.PyArray_ITEMSIZE(a)
            sp.n = 0
            for j in range(first, first + nparams):
                self.params[j].span = i
                self.params[j].offset = self.params[j].data - sp.param
                sp.n += self.params[j].nbytes // sp.itemsize
            for j in range(MAX_STATE):
                sp.state[j] = NULL
            for j in range(len(states)):
                if states[j] is not None:
                    st = <cnp.ndarray>states[j]
                    keep.append(st)
                    sp.state[j] = <char*>cnp.PyArray_DATA(st)
            f64 = cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
            sp.core = self._core(f64)
        self._keep = keep
        self._set_written()
        self._set_groups(groups)

    cdef int _set_written(self) except -1:
        """The sorted table of written regions, so a grad overlapping any of them (another
        param, a state buffer) is refused in O(log n) per grad."""
        cdef Py_ssize_t i, k
        regions = [(<Py_ssize_t>self.params[i].data, self.params[i].nbytes, i)
                   for i in range(self.n_params) if self.params[i].nbytes]
        for i in range(self.n_spans):
            for k in range(MAX_STATE):
                if self.spans[i].state[k] != NULL and self.spans[i].n:
                    regions.append((<Py_ssize_t>self.spans[i].state[k],
                                    self.spans[i].n * self.spans[i].itemsize, -1))
        regions.sort()
        self.written = <Region*>calloc(max(len(regions), 1), sizeof(Region))
        if self.written == NULL:
            raise MemoryError()
        for i, (lo, nbytes, tag) in enumerate(regions):
            self.written[i].lo = <char*><Py_ssize_t>lo
            self.written[i].hi = self.written[i].lo + <Py_ssize_t>nbytes
            self.written[i].tag = tag
        self.n_written = len(regions)
        return 0

    cdef Py_ssize_t _written_hit(self, char* lo, char* hi) noexcept:
        """Index of a written region overlapping [lo, hi), or -1 (regions are disjoint and
        sorted, so the last one starting below hi is the only candidate)."""
        cdef Py_ssize_t a = 0, b = self.n_written, mid
        if lo >= hi:
            return -1
        while a < b:
            mid = (a + b) // 2
            if self.written[mid].lo < hi:
                a = mid + 1
            else:
                b = mid
        if a > 0 and self.written[a - 1].hi > lo:
            return a - 1
        return -1

    cdef int _refuse_overlap(self, str what, Py_ssize_t hit) except -1:
        cdef Py_ssize_t tag = self.written[hit].tag
        target = f"params[{tag}]" if tag >= 0 else "an optimizer state buffer"
        raise ValueError(f"{self.name}.step: {what} overlaps {target} in memory, which the "
                         f"step writes; pass grads in their own arrays")

    cdef core_fn _core(self, int f64):
        if self.kind == K_SGD:
            return CORES.sgd[f64]
        if self.kind == K_RMSPROP:
            return CORES.rmsprop[f64]
        if self.kind == K_ADAM:
            return CORES.adam[f64]
        if self.kind == K_ADAGRAD:
            return CORES.adagrad[f64]
        if self.kind == K_ADADELTA:
            return CORES.adadelta[f64]
        if self.kind == K_ADAMAX:
            return CORES.adamax[f64]
        if self.kind == K_NADAM:
            return CORES.nadam[f64]
        if self.kind == K_RADAM:
            return CORES.radam[f64]
        return CORES.lion[f64]

    def set_groups(self, list groups):
        """New hyperparameters for the same groups (a param_groups write): no reallocation."""
        if len(groups) != self.n_groups:
            raise ValueError("set_groups needs the configured number of groups")
        self._set_groups(groups)

    cdef int _set_groups(self, list groups) except -1:
        cdef Py_ssize_t i
        cdef GroupC* g
        keep = [obj for obj in self._keep if not isinstance(obj, Schedule)]
        self.needs_gil = 0
        for i in range(self.n_groups):
            gd = groups[i]
            g = &self.groups[i]
            self._source(&g.lr, gd.get("lr", 0.0), keep)
            self._source(&g.momentum, gd.get("momentum", 0.0), keep)
            self._source(&g.beta1, gd.get("beta1", 0.0), keep)
            self._source(&g.weight_decay, gd.get("weight_decay", 0.0), keep)
            g.dampening = gd.get("dampening", 0.0)
            g.alpha = gd.get("alpha", 0.0)
            g.eps = gd.get("eps", 0.0)
            g.beta2 = gd.get("beta2", 0.0)
            g.lr_decay = gd.get("lr_decay", 0.0)
            g.rho = gd.get("rho", 0.0)
            g.momentum_decay = gd.get("momentum_decay", 0.0)
            g.nesterov = gd.get("nesterov", False)
            g.maximize = gd.get("maximize", False)
            g.decoupled = gd.get("decoupled_weight_decay", False)
        self._keep = keep
        return 0

    cdef int _source(self, HyperSrc* src, object value, list keep) except -1:
        if isinstance(value, Schedule):
            keep.append(value)
            src.schedule = schedule_handle(value)
            src.value = 0.0
            if schedule_needs_gil(src.schedule):
                self.needs_gil = 1
        else:
            src.schedule = NULL
            src.value = src.constant = value
        return 0

    def group_values(self, int64_t t):
        """The schedulable hyperparameters of every group at step t (for next lr and the
        reference step)."""
        self._evaluate(t)
        return [{"lr": self.groups[i].lr.value, "momentum": self.groups[i].momentum.value,
                 "beta1": self.groups[i].beta1.value,
                 "weight_decay": self.groups[i].weight_decay.value}
                for i in range(self.n_groups)]

    cdef int _evaluate(self, int64_t t) except -1:
        cdef Py_ssize_t i
        cdef GroupC* g
        for i in range(self.n_groups):
            g = &self.groups[i]
            g.lr.value = (schedule_value(g.lr.schedule, t) if g.lr.schedule != NULL
                          else g.lr.constant) * self.lr_scale[i]
            if g.momentum.schedule != NULL:
                g.momentum.value = schedule_value(g.momentum.schedule, t)
            if g.beta1.schedule != NULL:
                g.beta1.value = schedule_value(g.beta1.schedule, t)
            if g.weight_decay.schedule != NULL:
                g.weight_decay.value = schedule_value(g.weight_decay.schedule, t)
        if self.needs_gil:
            for obj in self._keep:
                if isinstance(obj, Schedule):
                    check_schedule_error(obj)
        return 0

    cdef int _check_values(self, int64_t t) except -1:
        cdef Py_ssize_t i
        cdef GroupC* g
        for i in range(self.n_groups):
            g = &self.groups[i]
            if not (isfinite(g.lr.value) and g.lr.value >= 0.0):
                self._bad_value(i, "lr", &g.lr, t, "a finite number >= 0")
            if not (isfinite(g.weight_decay.value) and g.weight_decay.value >= 0.0):
                self._bad_value(i, "weight_decay", &g.weight_decay, t, "a finite number >= 0")
            if self.kind == K_LION:
                if not (0.0 <= g.beta1.value <= 1.0):
                    self._bad_value(i, "betas[0]", &g.beta1, t, "in [0, 1]")
            elif self.kind in (K_ADAM, K_ADAMAX, K_NADAM, K_RADAM):
                if not (0.0 <= g.beta1.value < 1.0):
                    self._bad_value(i, "betas[0]", &g.beta1, t, "in [0, 1)")
            elif self.kind == K_SGD or self.kind == K_RMSPROP:
                if not (isfinite(g.momentum.value) and g.momentum.value >= 0.0):
                    self._bad_value(i, "momentum", &g.momentum, t, "a finite number >= 0")
                if g.nesterov and not g.momentum.value > 0.0:
                    self._bad_value(i, "momentum", &g.momentum, t, "> 0 (nesterov=True)")
        return 0

    cdef int _bad_value(self, Py_ssize_t group, str name, HyperSrc* src, int64_t t,
                        str expected) except -1:
        origin = " (from its schedule)" if src.schedule != NULL else ""
        raise ValueError(f"{self.name}.step: param_groups[{group}]['{name}'] is "
                         f"{src.value!r} at step {t}{origin}; expected {expected}. Nothing "
                         f"was updated")

    cdef int _check_grads(self, object grads) except -1:
        cdef Py_ssize_t i, n = self.n_params
        cdef cnp.ndarray g, p
        cdef ParamC* pp
        cdef char* base
        cdef char* gp
        cdef Py_ssize_t expected_bytes = 0, hit
        for i in range(n):
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self._param_arrays[i]):
                raise ValueError(f"{self.name}.step: params[{i}] is read-only "
                                 f"(flags.writeable=False) but is updated in place")
        if cnp.PyArray_Check(grads):
            # one flat gradient buffer covering every param, in param order
            g = <cnp.ndarray>grads
            if n and (cnp.PyArray_TYPE(g) != self.params[0].type_num):
                raise TypeError(f"{self.name}.step: the flat grad buffer has dtype {g.dtype} "
                                f"but the params are {(<object>self._param_arrays[0]).dtype}")
            for i in range(n):
                if self.params[i].type_num != self.params[0].type_num:
                    raise TypeError(f"{self.name}.step: a single grad array needs params of "
                                    f"one dtype; pass a list of grads instead")
                expected_bytes += self.params[i].nbytes
            if cnp.PyArray_NBYTES(g) != expected_bytes:
                raise ValueError(f"{self.name}.step: the flat grad buffer has "
                                 f"{cnp.PyArray_SIZE(g)} elements but the params have "
                                 f"{self.total_size} in all")
            if not cnp.PyArray_IS_C_CONTIGUOUS(g) or not cnp.PyArray_ISALIGNED(g) or \
                    cnp.PyArray_ISBYTESWAPPED(g):
                raise ValueError(f"{self.name}.step: the flat grad buffer must be C-contiguous, "
                                 f"aligned and in native byte order")
            base = <char*>cnp.PyArray_DATA(g)
            for i in range(n):
                self.grad_ptrs[i] = base
                base += self.params[i].nbytes
            return self._check_grad_overlap(<char*>cnp.PyArray_DATA(g), expected_bytes)
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"{self.name}.step: grads must be a list of arrays (one per param) "
                            f"or one flat array, got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"{self.name}.step: got {len(grads)} grads for {n} params")
        for i in range(n):
            obj = grads[i]
            pp = &self.params[i]
            if not cnp.PyArray_Check(obj):
                raise TypeError(f"{self.name}.step: grads[{i}] must be a numpy.ndarray, got "
                                f"{type(obj).__name__}")
            g = <cnp.ndarray>obj
            if cnp.PyArray_TYPE(g) != pp.type_num:
                raise TypeError(f"{self.name}.step: grads[{i}] has dtype {g.dtype} but "
                                f"params[{i}] has dtype "
                                f"{(<object>self._param_arrays[i]).dtype}")
            p = <cnp.ndarray>self._param_arrays[i]
            if cnp.PyArray_NBYTES(g) != pp.nbytes or not same_shape(g, p):
                raise ValueError(f"{self.name}.step: grads[{i}] has shape {(<object>g).shape} "
                                 f"but params[{i}] has shape {(<object>p).shape}")
            if not (cnp.PyArray_IS_F_CONTIGUOUS(g) if pp.f_order
                    else cnp.PyArray_IS_C_CONTIGUOUS(g)):
                raise ValueError(f"{self.name}.step: grads[{i}] must be "
                                 f"{'F' if pp.f_order else 'C'}-contiguous like params[{i}], "
                                 f"got strides {(<object>g).strides}")
            if not cnp.PyArray_ISALIGNED(g) or cnp.PyArray_ISBYTESWAPPED(g):
                raise ValueError(f"{self.name}.step: grads[{i}] must be aligned and in native "
                                 f"byte order")
            gp = <char*>cnp.PyArray_DATA(g)
            if pp.nbytes and gp < pp.data + pp.nbytes and pp.data < gp + pp.nbytes:
                raise ValueError(f"{self.name}.step: grads[{i}] overlaps params[{i}] in memory")
            hit = self._written_hit(gp, gp + pp.nbytes)
            if hit >= 0:
                self._refuse_overlap(f"grads[{i}]", hit)
            self.grad_ptrs[i] = gp
        return 0

    cdef int _check_grad_overlap(self, char* lo, Py_ssize_t nbytes) except -1:
        cdef Py_ssize_t i
        cdef ParamC* pp
        for i in range(self.n_params):
            pp = &self.params[i]
            if pp.nbytes and lo < pp.data + pp.nbytes and pp.data < lo + nbytes:
                raise ValueError(f"{self.name}.step: the flat grad buffer overlaps "
                                 f"params[{i}] in memory")
        i = self._written_hit(lo, lo + nbytes)
        if i >= 0:
            self._refuse_overlap("the flat grad buffer", i)
        return 0

    cdef void _coefs(self, int64_t t) noexcept:
        cdef Py_ssize_t i
        cdef SpanC* sp
        cdef GroupC* g
        cdef int64_t count
        cdef SGDHyper sh
        cdef RMSpropHyper rh
        cdef AdamHyper ah
        cdef AdagradHyper gh
        cdef AdadeltaHyper dh
        cdef AdamaxHyper xh
        cdef NAdamHyper nh
        cdef RAdamHyper qh
        cdef LionHyper lh
        for i in range(self.n_spans):
            sp = &self.spans[i]
            g = &self.groups[sp.group]
            count = self.counts[sp.first] + 1          # this update's 1-based number
            if self.kind == K_SGD:
                sh.lr = g.lr.value
                sh.momentum = g.momentum.value
                sh.dampening = g.dampening
                sh.weight_decay = g.weight_decay.value
                sh.step = 2 if self.started[sp.first] else 1     # torch: buffer is None
                sh.nesterov = g.nesterov
                sh.maximize = g.maximize
                sgd_coef(&sh, &self.coefs[i].sgd)
            elif self.kind == K_RMSPROP:
                rh.lr = g.lr.value
                rh.alpha = g.alpha
                rh.eps = g.eps
                rh.weight_decay = g.weight_decay.value
                rh.momentum = g.momentum.value
                rh.maximize = g.maximize
                rmsprop_coef(&rh, &self.coefs[i].rmsprop)
            elif self.kind == K_ADAGRAD:
                gh.lr = g.lr.value
                gh.lr_decay = g.lr_decay
                gh.weight_decay = g.weight_decay.value
                gh.eps = g.eps
                gh.step = count
                gh.maximize = g.maximize
                adagrad_coef(&gh, &self.coefs[i].adagrad)
            elif self.kind == K_ADADELTA:
                dh.lr = g.lr.value
                dh.rho = g.rho
                dh.eps = g.eps
                dh.weight_decay = g.weight_decay.value
                dh.maximize = g.maximize
                adadelta_coef(&dh, &self.coefs[i].adadelta)
            elif self.kind == K_ADAMAX:
                xh.lr = g.lr.value
                xh.beta1 = g.beta1.value
                xh.beta2 = g.beta2
                xh.eps = g.eps
                xh.weight_decay = g.weight_decay.value
                xh.step = count
                xh.maximize = g.maximize
                adamax_coef(&xh, &self.coefs[i].adamax)
            elif self.kind == K_NADAM:
                nh.lr = g.lr.value
                nh.beta1 = g.beta1.value
                nh.beta2 = g.beta2
                nh.eps = g.eps
                nh.weight_decay = g.weight_decay.value
                nh.momentum_decay = g.momentum_decay
                nh.mu_product = self.mu_product[sp.first]
                nh.step = count
                nh.decoupled_weight_decay = g.decoupled
                nh.maximize = g.maximize
                nadam_coef(&nh, &self.coefs[i].nadam)
            elif self.kind == K_RADAM:
                qh.lr = g.lr.value
                qh.beta1 = g.beta1.value
                qh.beta2 = g.beta2
                qh.eps = g.eps
                qh.weight_decay = g.weight_decay.value
                qh.step = count
                qh.decoupled_weight_decay = g.decoupled
                qh.maximize = g.maximize
                radam_coef(&qh, &self.coefs[i].radam)
            elif self.kind == K_LION:
                lh.lr = g.lr.value
                lh.beta1 = g.beta1.value
                lh.beta2 = g.beta2
                lh.weight_decay = g.weight_decay.value
                lh.maximize = g.maximize
                lion_coef(&lh, &self.coefs[i].lion)
            else:
                if i > 0 and sp.group == self.spans[i - 1].group and \
                        count == self.counts[self.spans[i - 1].first] + 1:
                    self.coefs[i] = self.coefs[i - 1]      # same group and count: reuse
                    continue
                ah.lr = g.lr.value
                ah.beta1 = g.beta1.value
                ah.beta2 = g.beta2
                ah.eps = g.eps
                ah.weight_decay = g.weight_decay.value
                ah.step = count
                ah.decoupled_weight_decay = g.decoupled
                ah.maximize = g.maximize
                adam_coef(&ah, &self.coefs[i].adam)

    cdef void _scale_grads(self, double scale) noexcept:
        """Fold a factor on every grad into the coefficients: the cores read grad[i] as
        sign * grad[i], so scaling sign (+-1) applies clipping exactly as
        ``grad *= scale`` (in the grads' dtype) before the step would."""
        cdef Py_ssize_t i
        cdef CoefU* c
        for i in range(self.n_spans):
            c = &self.coefs[i]
            if self.kind == K_SGD:
                c.sgd.sign *= scale
            elif self.kind == K_RMSPROP:
                c.rmsprop.sign *= scale
            elif self.kind == K_ADAM:
                c.adam.sign *= scale
            elif self.kind == K_ADAGRAD:
                c.adagrad.sign *= scale
            elif self.kind == K_ADADELTA:
                c.adadelta.sign *= scale
            elif self.kind == K_ADAMAX:
                c.adamax.sign *= scale
            elif self.kind == K_NADAM:
                c.nadam.sign *= scale
            elif self.kind == K_RADAM:
                c.radam.sign *= scale
            else:
                c.lion.sign *= scale

    cdef Py_ssize_t _pieces(self) noexcept:
        cdef Py_ssize_t i, j, k, n_pieces = 0, start = 0
        cdef SpanC* sp
        cdef Piece* pc
        cdef bint adjacent
        cdef int no_momentum
        cdef int buf_slot = 0 if self.kind == K_SGD else 1
        for i in range(self.n_spans):
            sp = &self.spans[i]
            # torch runs the momentum branch only while momentum != 0 (SGD) / > 0 (RMSprop)
            no_momentum = (self.kind == K_SGD or self.kind == K_RMSPROP) and \
                self.groups[sp.group].momentum.value == 0.0
            adjacent = True
            for j in range(sp.first + 1, sp.first + sp.n_params):
                if self.grad_ptrs[j] != self.grad_ptrs[j - 1] + self.params[j - 1].nbytes:
                    adjacent = False
                    break
            if adjacent:
                pc = &self.pieces[n_pieces]
                n_pieces += 1
                pc.ptrs[0] = sp.param
                pc.ptrs[1] = self.grad_ptrs[sp.first]
                for k in range(MAX_STATE):
                    pc.ptrs[2 + k] = NULL if (no_momentum and k == buf_slot) else sp.state[k]
                pc.n = sp.n
                pc.itemsize = sp.itemsize
                pc.core = sp.core
                pc.coef = &self.coefs[i]
                pc.start = start
                start += pc.n
            else:
                for j in range(sp.first, sp.first + sp.n_params):
                    pc = &self.pieces[n_pieces]
                    n_pieces += 1
                    pc.ptrs[0] = self.params[j].data
                    pc.ptrs[1] = self.grad_ptrs[j]
                    for k in range(MAX_STATE):
                        pc.ptrs[2 + k] = NULL if (no_momentum and k == buf_slot) else \
                            _off(sp.state[k], self.params[j].offset)
                    pc.n = self.params[j].nbytes // sp.itemsize
                    pc.itemsize = sp.itemsize
                    pc.core = sp.core
                    pc.coef = &self.coefs[i]
                    pc.start = start
                    start += pc.n
        return n_pieces

    def step(self, grads, int64_t t, int n_threads, double max_grad_norm=0.0,
             bint skip_nonfinite=False):
        """Check grads, evaluate schedules at t, update every param in one pass; then count.
        max_grad_norm > 0 clips by the global norm (fused: one reduction pass over the grads,
        the factor applied inside the update). skip_nonfinite: when a grad element is NaN or
        Inf, nothing is written and False is returned. Returns True when the update ran."""
        cdef Py_ssize_t i, j, n_pieces
        cdef SpanC* sp
        cdef GroupC* g
        cdef double sumsq = 0.0, scale = 1.0
        cdef int nonfinite = 0
        cdef int want_norm = max_grad_norm > 0.0
        self._check_grads(grads)
        self._evaluate(t)
        self._check_values(t)
        n_pieces = self._pieces()
        if want_norm or skip_nonfinite:
            if self.total_size >= 4096:
                with nogil:
                    reduce_pieces(self.pieces, n_pieces, self.total_size, want_norm,
                                  skip_nonfinite, self.block_sums, self.block_flags, n_threads,
                                  &sumsq, &nonfinite)
            else:
                reduce_pieces(self.pieces, n_pieces, self.total_size, want_norm,
                              skip_nonfinite, self.block_sums, self.block_flags, n_threads,
                              &sumsq, &nonfinite)
            if want_norm:
                self.last_grad_norm = sqrt(sumsq)
            if nonfinite:
                return False
            if want_norm:
                scale = clip_scale(max_grad_norm, self.last_grad_norm)
        self._coefs(t)
        if scale != 1.0:
            self._scale_grads(scale)
        if self.total_size >= 4096:
            with nogil:
                run_pieces(self.pieces, n_pieces, self.total_size, n_threads)
        else:
            run_pieces(self.pieces, n_pieces, self.total_size, n_threads)
        for i in range(self.n_groups):
            g = &self.groups[i]
            self.used[i, 0] = g.lr.value
            self.used[i, 1] = g.momentum.value
            self.used[i, 2] = g.beta1.value
            self.used[i, 3] = g.weight_decay.value
        for i in range(self.n_params):
            self.counts[i] += 1
        if self.kind == K_NADAM:
            for i in range(self.n_spans):
                sp = &self.spans[i]
                for j in range(sp.first, sp.first + sp.n_params):
                    self.mu_product[j] = self.coefs[i].nadam.mu_product
        if self.kind == K_SGD:
            for i in range(self.n_spans):
                sp = &self.spans[i]
                if sp.state[0] != NULL and self.groups[sp.group].momentum.value != 0.0:
                    for j in range(sp.first, sp.first + sp.n_params):
                        self.started[j] = 1
        return True


# ---------------------------------------------------------------------------------------
# The functional global-norm clip
# ---------------------------------------------------------------------------------------
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
                            f"{type(obj).__name__}")
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


cdef int _nt_arg(str fn, object n_threads) except -1:
    from fastlr._kernels import get_num_threads
    if n_threads is None:
        return get_num_threads()
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)) \
            or not 1 <= n_threads <= 4096:
        raise ValueError(f"{fn}: n_threads must be an int in [1, 4096] or None, got "
                         f"{n_threads!r}")
    return n_threads


cdef list _grad_list(str fn, object grads):
    if isinstance(grads, np.ndarray):
        return [grads]
    if isinstance(grads, (list, tuple)):
        return list(grads)
    raise TypeError(f"{fn}: grads must be an array or a list of arrays, got "
                    f"{type(grads).__name__}")


def grad_stats(grads, *, n_threads=None):
    """(sum of squares in double, whether any element is NaN or Inf) over all ``grads`` (an
    array or a list), with the blocks of :func:`clip_grad_norm` (same bits for any thread
    count). For code that combines norms itself, e.g. across processes."""
    cdef str fn = "fastlr.grad_stats"
    return _reduce_arrays(fn, _grad_list(fn, grads), _nt_arg(fn, n_threads), 1, 1, False)


def clip_grad_norm(grads, max_norm, *, error_if_nonfinite=False, n_threads=None):
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``;
    return the norm they had (torch.nn.utils.clip_grad_norm_).

    ``norm = sqrt(sum of g**2 over every element of every grad)``, accumulated in double
    in fixed blocks (the same bits for any thread count); then every grad is multiplied by
    ``min(max_norm / (norm + 1e-6), 1)`` in its own dtype (nothing is written when that is
    1). A NaN or Inf element makes the norm non-finite and, as in torch, the factor
    NaN or 0: ``error_if_nonfinite=True`` raises ValueError instead, before writing
    anything. ``grads``: one float32/float64 array or a list of them (dtypes may differ),
    contiguous and writeable. The optimizers' ``max_grad_norm=`` does the same inside the
    step without a separate pass over the grads for the scaling.
    """
    cdef str fn = "fastlr.clip_grad_norm"
    cdef double norm, scale
    cdef list arrays = _grad_list(fn, grads)
    cdef double limit = real_arg(fn, "max_norm", max_norm)
    if not limit > 0.0:
        raise ValueError(f"{fn}: max_norm must be a finite number > 0, got {max_norm!r}")
    sumsq, _ = _reduce_arrays(fn, arrays, _nt_arg(fn, n_threads), 1, 0, True)
    norm = sqrt(sumsq)
    if error_if_nonfinite and not isfinite(norm):
        raise ValueError(f"{fn}: the total norm of the grads is {norm!r} (a NaN or Inf "
                         f"element); nothing was scaled")
    scale = clip_scale(limit, norm)
    if scale != 1.0:
        with np.errstate(invalid="ignore"):     # inf * 0 = nan, as torch (silently)
            for obj in arrays:
                np.multiply(obj, obj.dtype.type(scale), out=obj)
    return norm
