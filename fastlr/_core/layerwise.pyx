# fastlr/_core/layerwise.pyx -- the layer-wise optimizers' kernels: LAMB and LARS (optax's
# definitions), the per-array norms fused into the step.
#
# Design notes
# ------------
# a) Arithmetic (optax 0.2.8: optax.lamb, optax.lars). Per param array, with g the grad and
#    p the param; coefficients in double, rounded to the arrays' dtype where optax has a
#    Python scalar meeting an array (NEP 50 / JAX weak types):
#      LAMB (k = the param's update count, from 1):
#        m = (1 - b1) g + b1 m;   v = (1 - b2) g*g + b2 v
#        u = (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k) + eps_root) + eps)  [+ wd p]
#          (the bias corrections as factors 1/(1 - b^k), derived in double: one division
#          and one square root an element instead of three divisions, each pass; an ulp
#          or so from optax's divisions, as fastlr's Adam)
#        r = |p| / |u|  (1 when either norm is 0);   p = p - (lr r) u
#      LARS:
#        u = g [+ wd p];  r = tc |p| / (|u| + eps)  (1 when either norm is 0, or the
#        group's trust_ratio_mask is off);  s = (lr r) u
#        buf = s + momentum buf;  p = p - buf  (nesterov: p - (s + momentum buf))
#    optax's trace holds -buf (its updates carry the sign): the negation is exact, so the
#    values are optax's. `[+ wd p]` is skipped when the group's weight decay is 0 or its
#    weight_decay_mask is off (as optax's constant-0 weight decay and its masks: the grad
#    passes unchanged, so an Inf param does not turn the update into NaN).
# b) Norms. |p| and |u| are sums of squares in double over fixed 16K-element blocks of each
#    array, each block in 8 lanes keyed by the element index (fastlr's clip_grad_norm
#    scheme, _core/loops.pxd sumsq_core), the lanes added pairwise and the blocks in block
#    order: the same bits for any thread count.
# c) Passes and memory traffic. LAMB needs |u| before it can write p, so two passes:
#      pass 1 reads g, m, v, p and writes m, v (accumulating |p|^2 and |u|^2; in pieces
#        of 1024 elements whose updates sit in a stack buffer, in L1, for the sums);
#      pass 2 reads m, v, p, recomputes u (bit for bit the same expression) and writes p.
#    That is 10 streams an element, as many as keeping u in a scratch buffer (pass 1 +u
#    written, pass 2 reads u, p and writes p), without the scratch memory (one more
#    param-sized buffer), at the price of a second sqrt and division per element (which
#    only matters in cache). LARS: pass 1 reads g and p (the norms; skipped when the trust
#    ratio is masked off), pass 2 reads g, p, buf and writes buf, p: 7 streams (5 masked).
# d) Threads. Each pass goes through the kernels' threaded loop (`parallel_spans`, chunks
#    of multiples of 16K elements): a span handles the blocks that start in it, so every
#    element is updated exactly once and every block's sums land in its own slot for any
#    split. Serial below PARALLEL_MIN_SIZE elements; the GIL is released from 4096 elements
#    on (all arrays of a step together).
# e) Validation. `Layerwise` (the optimizers' engine) is built over validated params and
#    their state (fastlr.optim.layerwise checks the params and allocates the state) and
#    keeps their pointers; each step checks the grads in compiled code (type, dtype, shape,
#    layout, alignment, overlap with any written buffer) before anything is written. The
#    hyperparameters arrive as a checked table (one row per group, see the H_* columns).
#    The validated one-array kernels `lamb` and `lars` check everything themselves and run
#    the same engine. Their pure-NumPy twins: fastlr.reference.layerwise.

cimport cython
cimport numpy as cnp
from cython cimport floating
from libc.math cimport sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, qsort

from fastlr._core.args cimport (NONNEG, UNIT, checked_real, flag_arg, ndarray_hint, step_arg,
                                threads_arg)
from fastlr._core.arrays cimport check_like
from fastlr._core.loops cimport fsqrt, sumsq_core
from fastlr._kernels cimport parallel_spans

import numpy as np

from fastlr._core.ema import check_arrays
from fastlr._kernels import get_num_threads

cnp.import_array()

cdef enum:
    NOGIL_MIN_SIZE = 4096       # the GIL is released from this many elements (as _kernels)
    BLOCK = 16384               # the reduction block (the engine's REDUCE_BLOCK)
    CHUNK = 1024                # pass 1's piece: its updates stay in L1 for the sums

cpdef enum Kind:
    KIND_LAMB = 0
    KIND_LARS = 1

# the columns of the hyperparameter table (one row per group)
cdef enum:
    H_LR = 0
    H_WD = 1            # the weight decay applied (0 when masked off)
    H_BETA1 = 2         # LAMB
    H_BETA2 = 3
    H_EPS = 4           # LAMB: Adam's eps; LARS: the trust ratio's eps
    H_EPS_ROOT = 5      # LAMB
    H_MOMENTUM = 2      # LARS
    H_TRUST_COEF = 3    # LARS
    H_NESTEROV = 5      # LARS (0 or 1)
    H_TRUST_RATIO = 6   # LARS: the trust_ratio_mask (0 or 1)
    N_COLUMNS = 7

#: the hyperparameter table's columns by name, per kind (for the optimizer classes)
COLUMNS = ({"lr": H_LR, "weight_decay": H_WD, "beta1": H_BETA1, "beta2": H_BETA2,
            "eps": H_EPS, "eps_root": H_EPS_ROOT},
           {"lr": H_LR, "weight_decay": H_WD, "momentum": H_MOMENTUM,
            "trust_coefficient": H_TRUST_COEF, "eps": H_EPS, "nesterov": H_NESTEROV,
            "trust_ratio_mask": H_TRUST_RATIO})
N_COLS = N_COLUMNS


# ---------------------------------------------------------------------------------------
# C level
# ---------------------------------------------------------------------------------------
ctypedef struct Coef:
    double lr, wd, b1, omb1, b2, omb2, bc1, bc2, eps, eps_root   # LAMB
    double momentum                                              # LARS
    int nesterov
    double scale        # lr * trust ratio (pass 2)


ctypedef struct Job:
    int kind
    int f64
    Py_ssize_t n        # elements of the array
    char* p             # IN/OUT
    const char* g       # IN
    char* s1            # IN/OUT: LAMB exp_avg, LARS momentum_buffer
    char* s2            # IN/OUT: LAMB exp_avg_sq (NULL for LARS)
    const Coef* c
    double* sums        # OUT: per block, |p|^2 and |u|^2 (pass 1)


cdef inline double lanes(const double* a) noexcept nogil:
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


@cython.cdivision(True)
cdef inline floating lamb_u(floating m, floating v, floating p, floating rbc1, floating rbc2,
                            floating eps_root, floating eps, floating wd,
                            bint decay) noexcept nogil:
    cdef floating u = (m * rbc1) / (fsqrt(v * rbc2 + eps_root) + eps)
    if decay:
        u = u + wd * p
    return u


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void lamb_moments(const floating* p, const floating* g, floating* m,     # IN, IN,
                       floating* v, floating* u, Py_ssize_t n,                # IN/OUT x2,
                       const Coef* c) noexcept nogil:                         # OUT
    """Pass 1's element-wise part: the moments, and the update into u (a chunk in L1)."""
    cdef floating b1 = <floating>c.b1, omb1 = <floating>c.omb1
    cdef floating b2 = <floating>c.b2, omb2 = <floating>c.omb2
    cdef floating rbc1 = <floating>(1.0 / c.bc1), rbc2 = <floating>(1.0 / c.bc2)
    cdef floating eps = <floating>c.eps, eps_root = <floating>c.eps_root, wd = <floating>c.wd
    cdef bint decay = c.wd != 0.0
    cdef floating gi, mi, vi
    cdef Py_ssize_t i
    for i in range(n):
        gi = g[i]
        mi = omb1 * gi + b1 * m[i]
        vi = omb2 * (gi * gi) + b2 * v[i]
        m[i] = mi
        v[i] = vi
        u[i] = lamb_u(mi, vi, p[i], rbc1, rbc2, eps_root, eps, wd, decay)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void lars_update(const floating* p, const floating* g, floating* u,   # IN, IN, OUT
                      Py_ssize_t n, const Coef* c) noexcept nogil:
    cdef floating wd = <floating>c.wd
    cdef Py_ssize_t i
    for i in range(n):
        u[i] = g[i] + wd * p[i]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void lamb_pass2(floating* p, const floating* m, const floating* v,   # IN/OUT, IN, IN
                     Py_ssize_t n, const Coef* c) noexcept nogil:
    cdef floating rbc1 = <floating>(1.0 / c.bc1), rbc2 = <floating>(1.0 / c.bc2)
    cdef floating eps = <floating>c.eps, eps_root = <floating>c.eps_root, wd = <floating>c.wd
    cdef floating scale = <floating>c.scale
    cdef Py_ssize_t i
    if c.wd != 0.0:             # the branch hoisted: both loops vectorize
        for i in range(n):
            p[i] = p[i] - scale * lamb_u(m[i], v[i], p[i], rbc1, rbc2, eps_root, eps, wd, True)
    else:
        for i in range(n):
            p[i] = p[i] - scale * lamb_u(m[i], v[i], p[i], rbc1, rbc2, eps_root, eps, wd, False)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void lars_pass2(floating* p, const floating* g, floating* buf,   # IN/OUT, IN, IN/OUT
                     Py_ssize_t n, const Coef* c) noexcept nogil:
    cdef floating wd = <floating>c.wd, mom = <floating>c.momentum
    cdef floating scale = <floating>c.scale
    cdef bint decay = c.wd != 0.0, nesterov = c.nesterov != 0
    cdef floating u, s, b
    cdef Py_ssize_t i
    for i in range(n):
        u = g[i]
        if decay:
            u = u + wd * p[i]
        s = scale * u
        b = s + mom * buf[i]
        buf[i] = b
        if nesterov:
            p[i] = p[i] - (s + mom * b)
        else:
            p[i] = p[i] - b


cdef inline void pass1_chunk(floating* p, const floating* g, floating* s1, floating* s2,
                             floating* u, Py_ssize_t a, Py_ssize_t n, const Job* job,
                             double* acc_p, double* acc_u) noexcept nogil:
    """Pass 1 over elements [a, a + n) of one array: the sums of squares of p and of the
    update (sumsq_core: 8 lanes keyed by the element index), LAMB's moments written."""
    cdef const floating* upd = u
    if job.kind == KIND_LAMB:
        lamb_moments(p + a, g + a, s1 + a, s2 + a, u, n, job.c)
    elif job.c.wd != 0.0:
        lars_update(p + a, g + a, u, n, job.c)
    else:
        upd = g + a             # LARS without weight decay: the update is the grad
    sumsq_core(<const floating*>(p + a), n, a, acc_p)
    sumsq_core(upd, n, a, acc_u)


cdef void pass1_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Pass 1 over the blocks that start in [lo, hi) (a block may reach past hi), each in
    CHUNK-element pieces whose updates sit in a stack buffer (L1) between the element-wise
    loop and the sums."""
    cdef const Job* job = <const Job*>ctx
    cdef Py_ssize_t blk, a, end, n
    cdef double acc_p[8]
    cdef double acc_u[8]
    cdef double scratch[CHUNK]
    cdef int k
    for blk in range((lo + BLOCK - 1) // BLOCK, (hi + BLOCK - 1) // BLOCK):
        for k in range(8):
            acc_p[k] = 0.0
            acc_u[k] = 0.0
        a = blk * BLOCK
        end = a + BLOCK if a + BLOCK <= job.n else job.n
        while a < end:
            n = CHUNK if a + CHUNK <= end else end - a
            if job.f64:
                pass1_chunk(<double*>job.p, <const double*>job.g, <double*>job.s1,
                            <double*>job.s2, scratch, a, n, job, acc_p, acc_u)
            else:
                pass1_chunk(<float*>job.p, <const float*>job.g, <float*>job.s1,
                            <float*>job.s2, <float*>scratch, a, n, job, acc_p, acc_u)
            a += n
        job.sums[2 * blk] = lanes(acc_p)
        job.sums[2 * blk + 1] = lanes(acc_u)


cdef void pass2_span(void* ctx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef const Job* job = <const Job*>ctx
    cdef Py_ssize_t n = hi - lo
    if job.kind == KIND_LAMB:
        if job.f64:
            lamb_pass2(<double*>job.p + lo, <const double*>job.s1 + lo,
                       <const double*>job.s2 + lo, n, job.c)
        else:
            lamb_pass2(<float*>job.p + lo, <const float*>job.s1 + lo,
                       <const float*>job.s2 + lo, n, job.c)
    else:
        if job.f64:
            lars_pass2(<double*>job.p + lo, <const double*>job.g + lo, <double*>job.s1 + lo,
                       n, job.c)
        else:
            lars_pass2(<float*>job.p + lo, <const float*>job.g + lo, <float*>job.s1 + lo,
                       n, job.c)


@cython.cdivision(True)
cdef double step_array(Job* job, Coef* c, const double* row, int64_t k, int n_threads,
                       double* sums) noexcept nogil:         # OUT (scratch: block sums)
    """One update of one array (job's buffers, k its update count from 1); returns the
    trust ratio used."""
    cdef Py_ssize_t blk, n_blocks = (job.n + BLOCK - 1) // BLOCK
    cdef double pp = 0.0, uu = 0.0, pn, un, ratio = 1.0, coef = 1.0, eps = 0.0
    cdef bint norms = True
    c.lr = row[H_LR]
    c.wd = row[H_WD]
    if job.kind == KIND_LAMB:
        c.b1 = row[H_BETA1]
        c.omb1 = 1.0 - c.b1
        c.b2 = row[H_BETA2]
        c.omb2 = 1.0 - c.b2
        c.bc1 = 1.0 - c.b1 ** <double>k
        c.bc2 = 1.0 - c.b2 ** <double>k
        c.eps = row[H_EPS]
        c.eps_root = row[H_EPS_ROOT]
    else:
        c.momentum = row[H_MOMENTUM]
        c.nesterov = row[H_NESTEROV] != 0.0
        coef = row[H_TRUST_COEF]
        eps = row[H_EPS]
        norms = row[H_TRUST_RATIO] != 0.0
    job.c = c
    job.sums = sums
    if norms:
        parallel_spans(pass1_span, job, job.n, n_threads)
        for blk in range(n_blocks):             # in block order: same bits for any split
            pp = pp + sums[2 * blk]
            uu = uu + sums[2 * blk + 1]
        pn = sqrt(pp)
        un = sqrt(uu)
        if not (pn == 0.0 or un == 0.0):        # optax: 1 when either norm is 0
            ratio = coef * pn / (un + eps)
    c.scale = c.lr * ratio
    parallel_spans(pass2_span, job, job.n, n_threads)
    return ratio


# ---------------------------------------------------------------------------------------
# Validation and the engine
# ---------------------------------------------------------------------------------------
ctypedef struct Span:
    char* lo
    char* hi
    Py_ssize_t index        # 3*i + buffer (0 param, 1 first state, 2 second state)


cdef int _span_cmp(const void* x, const void* y) noexcept nogil:
    cdef const Span* s = <const Span*>x
    cdef const Span* t = <const Span*>y
    if s.lo < t.lo:
        return -1
    if s.lo > t.lo:
        return 1
    return (s.index > t.index) - (s.index < t.index)


cdef tuple STATE_NAMES = (("exp_avg", "exp_avg_sq"), ("momentum_buffer",))


@cython.auto_pickle(False)
cdef class Layerwise:
    """The layer-wise optimizers' engine: LAMB or LARS over a list of params and their
    state, one compiled call a step (design notes a-e).

    ``Layerwise(fn, kind, params, state, groups, single=False)``: ``kind`` KIND_LAMB or
    KIND_LARS; ``state`` one list of buffers per state name (LAMB: exp_avg, exp_avg_sq;
    LARS: momentum_buffer), each buffer like its param; ``groups`` the group index of each
    param. Everything is checked here (types, dtypes, shapes, layouts, writeability,
    overlap); messages start with ``fn`` and name ``params[i]`` / ``state[i]['name']`` (or
    ``param`` / ``name`` when ``single``).
    """
    cdef int kind
    cdef str fn
    cdef bint single
    cdef Py_ssize_t n, n_groups, total, n_spans
    cdef char** p
    cdef char** s1
    cdef char** s2
    cdef const char** g
    cdef Py_ssize_t* sizes
    cdef int* f64
    cdef Py_ssize_t* group
    cdef double* sums
    cdef Span* spans
    cdef readonly tuple params
    cdef readonly tuple state
    cdef readonly cnp.ndarray ratios    # the trust ratio of each param at the last step

    def __cinit__(self, str fn, int kind, params, state, groups, bint single=False):
        cdef Py_ssize_t i, j, n, max_blocks = 0, n_groups = 0
        cdef cnp.ndarray a, b
        cdef list names
        self.p = self.s1 = self.s2 = NULL
        self.g = NULL
        self.sizes = NULL
        self.f64 = NULL
        self.group = NULL
        self.sums = NULL
        self.spans = NULL
        self.fn = fn
        self.single = single
        if kind != KIND_LAMB and kind != KIND_LARS:
            raise ValueError(f"{fn}: unknown kind {kind}")
        self.kind = kind
        names = list(STATE_NAMES[kind])
        params = list(params)
        state = [list(s) for s in state]
        groups = [int(x) for x in groups]
        n = len(params)
        if len(state) != len(names) or any(len(s) != n for s in state) or len(groups) != n:
            raise ValueError(f"{fn}: expected {len(names)} state lists and {n} group "
                             f"indices for {n} params")
        for i in range(n):
            a = check_arrays(fn, self._label(i), params[i])[0]
            for j in range(len(names)):
                b = check_arrays(fn, self._state_label(i, names[j]), state[j][i])[0]
                check_like(fn, self._state_label(i, names[j]), b, self._label(i), a, True)
            if groups[i] < 0:
                raise ValueError(f"{fn}: negative group index {groups[i]}")
            n_groups = max(n_groups, groups[i] + 1)
        self.n = n
        self.n_groups = n_groups
        self.params = tuple(params)
        self.state = tuple(tuple(s) for s in state)
        self.ratios = np.ones(n, dtype=np.float64)
        self.p = <char**>malloc(max(n, 1) * sizeof(char*))
        self.s1 = <char**>malloc(max(n, 1) * sizeof(char*))
        self.s2 = <char**>malloc(max(n, 1) * sizeof(char*))
        self.g = <const char**>malloc(max(n, 1) * sizeof(char*))
        self.sizes = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
        self.f64 = <int*>malloc(max(n, 1) * sizeof(int))
        self.group = <Py_ssize_t*>malloc(max(n, 1) * sizeof(Py_ssize_t))
        self.spans = <Span*>malloc(max(3 * n, 1) * sizeof(Span))
        if (self.p == NULL or self.s1 == NULL or self.s2 == NULL or self.g == NULL or
                self.sizes == NULL or self.f64 == NULL or self.group == NULL or
                self.spans == NULL):
            raise MemoryError()
        self.total = 0
        for i in range(n):
            a = <cnp.ndarray>params[i]
            self.p[i] = <char*>cnp.PyArray_DATA(a)
            self.s1[i] = <char*>cnp.PyArray_DATA(<cnp.ndarray>state[0][i])
            self.s2[i] = (<char*>cnp.PyArray_DATA(<cnp.ndarray>state[1][i])
                          if len(names) > 1 else NULL)
            self.sizes[i] = cnp.PyArray_SIZE(a)
            self.f64[i] = cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
            self.group[i] = groups[i]
            self.total += self.sizes[i]
            max_blocks = max(max_blocks, (self.sizes[i] + BLOCK - 1) // BLOCK)
        self.sums = <double*>malloc(max(2 * max_blocks, 1) * sizeof(double))
        if self.sums == NULL:
            raise MemoryError()
        self._written_spans(names)

    def __dealloc__(self):
        free(self.p)
        free(self.s1)
        free(self.s2)
        free(self.g)
        free(self.sizes)
        free(self.f64)
        free(self.group)
        free(self.sums)
        free(self.spans)

    cdef str _label(self, Py_ssize_t i):
        return "param" if self.single else f"params[{i}]"

    cdef str _state_label(self, Py_ssize_t i, str name):
        return name if self.single else f"state[{i}][{name!r}]"

    cdef str _span_label(self, Py_ssize_t index):
        cdef Py_ssize_t i = index // 3, j = index % 3
        if j == 0:
            return self._label(i)
        return self._state_label(i, STATE_NAMES[self.kind][j - 1])

    cdef int _written_spans(self, list names) except -1:
        """Every written buffer's bytes, sorted; no two may overlap."""
        cdef Py_ssize_t i, j, m = 0, nbytes, itemsize
        cdef char* ptrs[3]
        for i in range(self.n):
            itemsize = 8 if self.f64[i] else 4
            nbytes = self.sizes[i] * itemsize
            if nbytes == 0:
                continue
            ptrs[0] = self.p[i]
            ptrs[1] = self.s1[i]
            ptrs[2] = self.s2[i]
            for j in range(1 + len(names)):
                self.spans[m].lo = ptrs[j]
                self.spans[m].hi = ptrs[j] + nbytes
                self.spans[m].index = 3 * i + j
                m += 1
        qsort(self.spans, m, sizeof(Span), _span_cmp)
        self.n_spans = m
        for i in range(m - 1):
            if self.spans[i + 1].lo < self.spans[i].hi:
                raise ValueError(f"{self.fn}: {self._span_label(self.spans[i].index)} and "
                                 f"{self._span_label(self.spans[i + 1].index)} overlap in "
                                 f"memory; every buffer written in place must be its own")
        return 0

    cdef Py_ssize_t _overlapping(self, const char* lo, const char* hi) noexcept:
        """The written span that [lo, hi) overlaps (its index), or -1 (the spans are
        disjoint and sorted, so only the last one starting below hi can reach lo)."""
        cdef Py_ssize_t a = 0, b = self.n_spans, mid
        while a < b:                            # first span with lo >= hi
            mid = (a + b) // 2
            if self.spans[mid].lo < hi:
                a = mid + 1
            else:
                b = mid
        if a > 0 and self.spans[a - 1].hi > lo:
            return self.spans[a - 1].index
        return -1

    cdef int _check_grads(self, str fn, object grads) except -1:
        cdef Py_ssize_t i, hit, nbytes
        cdef cnp.ndarray gr, p
        cdef str name
        cdef const char* lo
        if self.single and not cnp.PyArray_Check(grads):
            raise TypeError(f"{fn}: grad must be a numpy.ndarray of float32 or float64, got "
                            f"{type(grads).__name__}{ndarray_hint(grads)}")
        if not self.single and not isinstance(grads, (list, tuple)):
            raise TypeError(f"{fn}: grads must be a list of numpy.ndarray (one per param), "
                            f"got {type(grads).__name__}{ndarray_hint(grads)}")
        grads = check_arrays(fn, "grad" if self.single else "grads", grads, False)
        if len(grads) != self.n:
            raise ValueError(f"{fn}: got {len(grads)} grads for {self.n} params; one grad "
                             f"per param. Nothing was updated")
        for i in range(self.n):
            name = "grad" if self.single else f"grads[{i}]"
            p = <cnp.ndarray>self.params[i]
            gr = <cnp.ndarray>grads[i]
            check_like(fn, name, gr, self._label(i), p)
            lo = <const char*>cnp.PyArray_DATA(gr)
            nbytes = cnp.PyArray_NBYTES(gr)
            if nbytes:
                hit = self._overlapping(lo, lo + nbytes)
                if hit >= 0:
                    raise ValueError(f"{fn}: {name} overlaps {self._span_label(hit)}, which "
                                     f"the step writes; pass a grad of its own. Nothing was "
                                     f"updated")
            self.g[i] = lo
        return 0

    def step(self, grads, const double[:, ::1] hyper not None,
             const int64_t[::1] counts not None, int n_threads, str fn=None):
        """One update of every param: ``grads`` (checked here), ``hyper`` one row of
        N_COLUMNS checked values per group, ``counts`` each param's updates so far,
        ``n_threads`` >= 1. Raises (TypeError/ValueError, messages starting with ``fn``)
        before writing anything."""
        cdef Py_ssize_t i
        cdef Job job
        cdef Coef c
        cdef double* ratios = <double*>cnp.PyArray_DATA(self.ratios)
        fn = self.fn if fn is None else fn
        if hyper.shape[0] < self.n_groups or hyper.shape[1] != N_COLUMNS or \
                counts.shape[0] != self.n or n_threads < 1:
            raise ValueError(f"{fn}: internal: a hyperparameter table of {self.n_groups} x "
                             f"{N_COLUMNS}, {self.n} counts and n_threads >= 1 expected")
        for i in range(self.n):
            if counts[i] < 0 or counts[i] == 0x7fffffffffffffff:
                raise ValueError(f"{fn}: internal: bad update count {counts[i]}")
        self._check_grads(fn, grads)
        job.kind = self.kind
        if self.total >= NOGIL_MIN_SIZE:
            with nogil:
                for i in range(self.n):
                    self._fill(&job, i)
                    ratios[i] = step_array(&job, &c, &hyper[self.group[i], 0],
                                           counts[i] + 1, n_threads, self.sums)
        else:
            for i in range(self.n):
                self._fill(&job, i)
                ratios[i] = step_array(&job, &c, &hyper[self.group[i], 0], counts[i] + 1,
                                       1, self.sums)

    cdef inline void _fill(self, Job* job, Py_ssize_t i) noexcept nogil:
        job.f64 = self.f64[i]
        job.n = self.sizes[i]
        job.p = self.p[i]
        job.g = self.g[i]
        job.s1 = self.s1[i]
        job.s2 = self.s2[i]


# ---------------------------------------------------------------------------------------
# The validated one-array kernels
# ---------------------------------------------------------------------------------------
cdef double _one(str fn, int kind, param, grad, list state, dict values, int64_t count,
                 object n_threads) except? -1.0:
    """One array's update with checked hyperparameter values (by column name) and its
    update count so far; returns the trust ratio."""
    cdef int nt = get_num_threads() if n_threads is None else threads_arg(fn, n_threads)
    hyper = np.zeros((1, N_COLUMNS))
    for key, value in values.items():
        hyper[0, COLUMNS[kind][key]] = value
    engine = Layerwise(fn, kind, [param], [[s] for s in state], [0], True)
    engine.step(grad, hyper, np.array([count], dtype=np.int64), nt)
    return engine.ratios[0]


def lamb(param, grad, exp_avg, exp_avg_sq, *, lr, beta1=0.9, beta2=0.999, eps=1e-6,
         eps_root=0.0, weight_decay=0.0, step, n_threads=None):
    """One LAMB update of one param array, in place (optax.lamb's rule); returns the trust
    ratio used.

    With ``k = step``: ``m = (1 - beta1) g + beta1 m``, ``v = (1 - beta2) g^2 + beta2 v``,
    ``u = (m / (1 - beta1^k)) / (sqrt(v / (1 - beta2^k) + eps_root) + eps) + weight_decay
    p``, ``r = |p| / |u|`` (1 when either L2 norm is 0), ``p = p - lr r u``.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : numpy.ndarray
        float32/float64 arrays of one dtype, shape and contiguous layout; ``param``,
        ``exp_avg`` (the first moment) and ``exp_avg_sq`` (the second) are updated in place
        and may not overlap; ``grad`` may be read-only.
    lr : float
        Learning rate, ``>= 0`` (units of the param per unit of trust-scaled update).
    beta1, beta2 : float
        The moments' decay rates, in ``[0, 1)``.
    eps, eps_root : float
        ``>= 0``: added to the denominator outside and inside the square root.
    weight_decay : float
        ``>= 0``: decoupled weight decay added to the update before the trust ratio.
    step : int
        This update's count, ``>= 1`` (the bias corrections' exponent).
    n_threads : int, optional
        Threads; ``None``: :func:`fastlr.get_num_threads`.

    Returns
    -------
    float
        The trust ratio ``r``.
    """
    cdef str fn = "fastlr._core.layerwise.lamb"
    values = {"lr": checked_real(fn, "lr", lr, NONNEG),
              "beta1": checked_real(fn, "beta1", beta1, UNIT),
              "beta2": checked_real(fn, "beta2", beta2, UNIT),
              "eps": checked_real(fn, "eps", eps, NONNEG),
              "eps_root": checked_real(fn, "eps_root", eps_root, NONNEG),
              "weight_decay": checked_real(fn, "weight_decay", weight_decay, NONNEG)}
    return _one(fn, KIND_LAMB, param, grad, [exp_avg, exp_avg_sq], values,
                step_arg(fn, step) - 1, n_threads)


def lars(param, grad, momentum_buffer, *, lr, momentum=0.9, weight_decay=0.0,
         trust_coefficient=0.001, eps=0.0, nesterov=False, trust_ratio=True,
         n_threads=None):
    """One LARS update of one param array, in place (optax.lars's rule); returns the trust
    ratio used.

    ``u = g + weight_decay p``; ``r = trust_coefficient |p| / (|u| + eps)`` (1 when either
    L2 norm is 0 or ``trust_ratio`` is False); ``s = lr r u``; ``buf = s + momentum buf``;
    ``p = p - buf`` (nesterov: ``p = p - (s + momentum buf)``).

    Parameters
    ----------
    param, grad, momentum_buffer : numpy.ndarray
        float32/float64 arrays of one dtype, shape and contiguous layout; ``param`` and
        ``momentum_buffer`` are updated in place and may not overlap; ``grad`` may be
        read-only. The buffer holds the lr-scaled steps (optax's trace, negated).
    lr : float
        Learning rate, ``>= 0``.
    momentum : float
        ``>= 0``: the buffer's decay.
    weight_decay : float
        ``>= 0``: weight decay added to the grad before the trust ratio.
    trust_coefficient : float
        ``>= 0``: the trust ratio's factor.
    eps : float
        ``>= 0``: added to the update's norm in the trust ratio.
    nesterov : bool
        Nesterov momentum.
    trust_ratio : bool
        False: no trust ratio (``r = 1``; optax's ``trust_ratio_mask`` off).
    n_threads : int, optional
        Threads; ``None``: :func:`fastlr.get_num_threads`.

    Returns
    -------
    float
        The trust ratio ``r``.
    """
    cdef str fn = "fastlr._core.layerwise.lars"
    values = {"lr": checked_real(fn, "lr", lr, NONNEG),
              "momentum": checked_real(fn, "momentum", momentum, NONNEG),
              "weight_decay": checked_real(fn, "weight_decay", weight_decay, NONNEG),
              "trust_coefficient": checked_real(fn, "trust_coefficient", trust_coefficient,
                                                NONNEG),
              "eps": checked_real(fn, "eps", eps, NONNEG),
              "nesterov": flag_arg(fn, "nesterov", nesterov),
              "trust_ratio_mask": flag_arg(fn, "trust_ratio", trust_ratio)}
    return _one(fn, KIND_LARS, param, grad, [momentum_buffer], values, 0, n_threads)
