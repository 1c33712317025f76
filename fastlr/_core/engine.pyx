# fastlr/_core/engine.pyx -- the optimizer step: every array of every group in one C call.
#
# Design notes
# ------------
# a) fastlr/optim owns the Python side (param groups, state allocation, coalescing of
#    adjacent views into spans, checkpoints) and hands the engine a fixed layout with
#    `configure`: one SpanC per contiguous run of params (same group, dtype and count), raw
#    pointers to param and state memory, and per group the source of every hyperparameter
#    (a constant or a schedule handle). Nothing in the layout changes per step.
# b) `step(grads, t)` is the hot path, all compiled: check the grads (count, dtype, shape,
#    layout; an error names the index and nothing is touched), evaluate each group's
#    schedules at t and check the values, derive per-span coefficients (bias corrections
#    from each span's own update count), then release the GIL and run every piece in one
#    pass -- serial below PARALLEL_MIN_SIZE elements in total, else the kernels'
#    parallel_spans shares chunks of the concatenated elements between this thread and pool
#    threads. Element-wise updates make the result independent of the split. Nothing is
#    allocated per step.
# c) Grads that are adjacent views of one buffer (or one flat grad array) let a coalesced
#    span run as one piece; otherwise the span runs param by param, with the same bits.
#    One grad array (not a list) is the one param's grad when there is one param and it
#    has its shape (checked as the list [grads] is); else it is a flat grad buffer, which
#    must be 1-D (as fastlr.flat_buffer makes it): any other shape is refused
#    (bare_grad_error; fastlr/optim/front.py's bare_grad is the Python fronts' rule).
# d) Nothing here is written per optimizer family. What differs per family comes from the
#    optimizer table (fastlr/_specs.py) through engine_families.pxi (generated from
#    engine_families.pxi.tp by setup.py): a FamilyOps per family number with the function
#    that fills its hyperparameter struct from a group's values and calls its coefficient
#    function, the clipping scale, NAdam-style per-param scalars, the state buffers a step
#    leaves out, the step source and the schedulable hyperparameters' range checks. A group's
#    values are an array of HyperSrc in the family's hyperparameter order. The maths
#    (coefficients, core loops) is hand-written in loops.pxd; the CPU variant's core loops
#    arrive as a CoreTable (families.pxd) indexed by family number.
# e) 16-bit params kept with float32 masters (fastlr/optim/master.py): the masters are the
#    engine's float32 params, and `set_users` gives each its 16-bit param (the caller's
#    array). Its grad may then be 16-bit (or float32); a step widens the grad, updates the
#    master and rounds it into the 16-bit param block by block in one pass (master16.pxd),
#    and the 16-bit params count among the memory a step writes (a grad may not overlap
#    them). The flat grad buffer stays float32.
# f) 16-bit params without masters (master_weights=False, float32 state): the engine's param
#    is the 16-bit array; its grad is 16-bit or float32 (a flat grad buffer: all 16-bit of
#    one dtype, or float32). A step widens a block of the param (and grad), runs the
#    family's float32 core on it and stores it rounded stochastically (master16.pxd), with
#    the random bits of fastlr/optim/direct16.py's chunked passes (its NumPy twin).
# g) Files: this one (the Engine class), pieces.pxi (the piece runner and the gradient
#    reductions), clip.pxi (clip_grad_norm, grad_stats), engine_families.pxi (generated).

cimport cython
from libc.math cimport isfinite, sqrt
from libc.stdint cimport int64_t, uint16_t, uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

cimport numpy as cnp

from fastlr._core.arrays cimport same_shape
from fastlr._core.args cimport (POSITIVE, checked_real, flag_arg, layout_hint, ndarray_hint,
                                threads_arg)

from cpython.pycapsule cimport PyCapsule_GetPointer

from fastlr._core.families cimport CoefU, CoreTable, MAX_HYPERS, MAX_STATE, N_FAMILIES, K_SGD
from fastlr._core.bfloat cimport step_salt
from fastlr._core.half cimport FMT_BF16, FMT_F16, PARAM_STREAM
from fastlr._core.loops cimport core_fn
from fastlr._kernels cimport PARALLEL_MIN_SIZE, parallel_spans
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


def bare_grad_error(str fn, tuple shape, Py_ssize_t n, object shape0, Py_ssize_t total):
    """The ValueError for one grad array (not a list) that is neither the one param's grad
    (an array of its shape) nor a 1-D flat grad buffer (``fn``: the caller's name; ``n``
    params, the first of shape ``shape0``, ``total`` elements in all). Shared by the step
    engine and the Python fronts (fastlr/optim/front.py: bare_grad), for one wording."""
    if n == 1:
        return ValueError(f"{fn}: grads has shape {shape} but params[0] has shape "
                          f"{tuple(shape0)}; one grad array is the one param's grad (its "
                          f"shape) or a 1-D flat grad buffer of {total} elements (see "
                          f"fastlr.flat_buffer). Nothing was updated")
    return ValueError(f"{fn}: grads has shape {shape} but one grad array for {n} params "
                      f"must be a 1-D flat grad buffer of {total} elements (see "
                      f"fastlr.flat_buffer); otherwise pass a list with one grad per param. "
                      f"Nothing was updated")


cdef enum:
    # Gradient reductions (norm, non-finite scan) work in blocks of this many elements of
    # the concatenated grads: the unit handed to a thread, and the unit of the fixed-order
    # final sum, so the norm has the same bits for any thread count.
    REDUCE_BLOCK = 16384

ctypedef struct HyperSrc:
    double value              # the value this step (lr: times the group's lr scale)
    double constant           # the constant (when schedule is NULL)
    const void* schedule      # NULL for a constant

ctypedef struct GroupC:
    HyperSrc h[MAX_HYPERS]    # in the family's hyperparameter order (flags as 0.0 / 1.0)
    unsigned int dropped      # this step: state slots not passed to the core (bit k: slot k)

ctypedef struct SpanC:
    char* param
    char* state[MAX_STATE]    # NULL when unused
    Py_ssize_t n              # elements
    Py_ssize_t itemsize       # of the params (and grads)
    Py_ssize_t state_itemsize # of the state buffers: itemsize, or 2 for bfloat16 state
    Py_ssize_t first          # index of its first param
    Py_ssize_t n_params
    int group
    core_fn core
    int direct16              # 16-bit params, float32 state (note f)
    int fmt16

ctypedef struct ParamC:
    char* data
    Py_ssize_t nbytes
    Py_ssize_t offset         # bytes from its span's start
    int span
    int type_num
    int ndim
    int f_order               # 1 when only F-contiguous (multi-dimensional F layout)
    Py_ssize_t itemsize
    char* user                # a master's 16-bit param (note e), else NULL
    int direct16              # the param itself is 16-bit (note f)
    int fmt16                 # the format (FMT_F16, FMT_BF16) of user or param
    int user_type_num         # its dtype's number (a 16-bit grad has it)
    Py_ssize_t grad_itemsize  # this step's grad: the param's itemsize, or 2 (16-bit)

ctypedef struct Region:        # memory a step writes: a param or a state block
    char* lo
    char* hi
    Py_ssize_t tag            # param index, or -1 for an optimizer state buffer


cdef int _format16(cnp.ndarray a):
    """FMT_F16 or FMT_BF16 for a native float16 / bfloat16 (ml_dtypes) array, else -1."""
    dt = a.dtype
    if cnp.PyArray_ITEMSIZE(a) != 2 or not dt.isnative:
        return -1
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT16:
        return FMT_F16
    return FMT_BF16 if dt.name == "bfloat16" else -1


class WidenFirst(Exception):
    """Raised by a step (before anything is written) for a 16-bit grad of a 16-bit param
    (note e) that is not laid out as its master (the other memory order, strided,
    misaligned, byte-swapped), or whose 16-bit param is misaligned (set_users): the caller
    widens the 16-bit grads into float32 arrays laid out as the masters (its checks refuse
    a byte-swapped one) and steps again. args[0]: the grad's index."""


include "pieces.pxi"
include "engine_families.pxi"


@cython.final
cdef class Engine:
    """The compiled step of one optimizer (see the design notes). For fastlr.optim only."""

    cdef int kind                 # the family number (K_SGD, ...)
    cdef const FamilyOps* ops     # what differs per family (engine_families.pxi)
    cdef tuple hyper_keys         # the group keys, in the family's hyperparameter order
    cdef tuple schedulable        # which of them take a schedule
    cdef tuple check_text         # per OPS check: (the name a message shows, the rule's text)
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
    cdef object _users            # per param: its 16-bit param (note e) or None; or None
    cdef tuple _published         # the params whose 16-bit param a step stores (set_users)
    cdef int64_t[::1] counts      # per-param update counts (owned by optim.py)
    cdef unsigned char[::1] started   # the param's first-use state buffer is in use (SGD's
                                      # momentum: torch's "buffer is not None"); optim's
    cdef double[:, ::1] used      # per group: lr, momentum, beta1, weight_decay of the last
                                  # step (owned by optim.py)
    cdef double[::1] mu_product   # per param, the family's scalar state (NAdam's product
                                  # of its mu_t); optim's
    cdef double[::1] lr_scale     # per group: factor on the lr (ReduceLROnPlateau's)
    cdef double* block_sums       # reduction scratch, one per REDUCE_BLOCK of grads
    cdef unsigned char* block_flags
    cdef int needs_gil            # a group has a Python-callable schedule
    cdef int scheduled            # a group has a schedule for a hyperparameter other than lr
    cdef Region* written          # every region a step writes, sorted by address
    cdef Py_ssize_t n_written
    cdef readonly Py_ssize_t total_size
    cdef readonly double last_grad_norm   # of the last step that computed it (else NaN)
    cdef Py_ssize_t n_window_pieces   # pieces of a step begun in windows, else -1

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
        self.n_window_pieces = -1
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
        self.ops = &OPS[self.kind]
        self.hyper_keys = _HYPER_KEYS[self.kind]
        self.schedulable = _SCHEDULABLE[self.kind]
        self.check_text = _CHECK_TEXT[self.kind]
        self.name = name
        self.n_params = self.n_spans = self.n_groups = 0
        self.last_grad_norm = float("nan")
        self.n_window_pieces = -1
        self._published = ()

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
        self._published = ()
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
        self._users = None
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
            pp.itemsize = cnp.PyArray_ITEMSIZE(a)
            pp.fmt16 = _format16(a)
            pp.direct16 = pp.fmt16 >= 0
            pp.user_type_num = -1               # (set_users)
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
            f64 = cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
            sp.core = CORES.cores[self.kind][f64]
            sp.state_itemsize = sp.itemsize
            sp.direct16 = self.params[first].direct16
            sp.fmt16 = self.params[first].fmt16
            if sp.direct16:                 # note f: float32 state
                sp.state_itemsize = 4
            for j in range(len(states)):
                if states[j] is not None:
                    st = <cnp.ndarray>states[j]
                    if sp.direct16:
                        if cnp.PyArray_TYPE(st) != cnp.NPY_FLOAT:
                            self._free()
                            raise TypeError(f"{self.name}: 16-bit params need float32 state "
                                            f"buffers")
                    elif cnp.PyArray_TYPE(st) == cnp.NPY_UINT16:
                        # bfloat16 state (fastlr.optim checks the family and param dtype;
                        # this only refuses what would run a core on the wrong types)
                        if f64 or CORES.bf16_state[self.kind] == NULL:
                            self._free()
                            raise TypeError(f"{self.name}: bfloat16 state needs float32 "
                                            f"params and a family with a bfloat16 core")
                        sp.core = CORES.bf16_state[self.kind]
                        sp.state_itemsize = 2
                    elif cnp.PyArray_TYPE(st) != cnp.PyArray_TYPE(a):
                        self._free()
                        raise TypeError(f"{self.name}: a state buffer's dtype differs from "
                                        f"its params'")
                    keep.append(st)
                    sp.state[j] = <char*>cnp.PyArray_DATA(st)
        self._keep = keep
        self._set_written()
        self._set_groups(groups)

    def set_users(self, list users):
        """Per param, None or the 16-bit param (float16 or bfloat16, its shape) whose
        float32 master the engine's param is (note e), until the next configure. One that
        is not aligned and laid out as its master is left to the caller: a 16-bit grad of
        it raises WidenFirst, and the step does not store it (not in `published`)."""
        cdef Py_ssize_t i
        cdef cnp.ndarray u, p
        cdef ParamC* pp
        if len(users) != self.n_params:
            raise ValueError(f"{self.name}: set_users got {len(users)} arrays for "
                             f"{self.n_params} params")
        for i in range(self.n_params):
            if users[i] is None:
                continue
            u = <cnp.ndarray?>users[i]
            p = <cnp.ndarray>self._param_arrays[i]
            if (_format16(u) < 0 or cnp.PyArray_TYPE(p) != cnp.NPY_FLOAT or
                    not same_shape(u, p)):
                raise ValueError(f"{self.name}: users[{i}] must be a float16 or bfloat16 "
                                 f"array of the shape of its float32 master params[{i}]")
        for i in range(self.n_params):
            pp = &self.params[i]
            pp.user = NULL
            pp.user_type_num = -1
            if users[i] is None:
                continue
            u = <cnp.ndarray>users[i]
            pp.fmt16 = _format16(u)
            pp.user_type_num = cnp.PyArray_TYPE(u)
            if cnp.PyArray_ISALIGNED(u) and (cnp.PyArray_IS_F_CONTIGUOUS(u) if pp.f_order
                                             else cnp.PyArray_IS_C_CONTIGUOUS(u)):
                pp.user = <char*>cnp.PyArray_DATA(u)
        self._users = list(users)
        self._published = tuple(i for i in range(self.n_params) if self.params[i].user != NULL)
        free(self.written)
        self.written = NULL
        self._set_written()

    @property
    def published(self):
        """The indices of the params whose 16-bit param a step stores (set_users; () after
        configure until set_users)."""
        return self._published

    cdef int _set_written(self) except -1:
        """The sorted table of written regions, so a grad overlapping any of them (another
        param, a 16-bit param, a state buffer) is refused in O(log n) per grad."""
        cdef Py_ssize_t i, k
        regions = [(<Py_ssize_t>self.params[i].data, self.params[i].nbytes, i)
                   for i in range(self.n_params) if self.params[i].nbytes]
        regions += [(<Py_ssize_t>self.params[i].user, self.params[i].nbytes // 2, i)
                    for i in range(self.n_params)
                    if self.params[i].user != NULL and self.params[i].nbytes]
        for i in range(self.n_spans):
            for k in range(MAX_STATE):
                if self.spans[i].state[k] != NULL and self.spans[i].n:
                    regions.append((<Py_ssize_t>self.spans[i].state[k],
                                    self.spans[i].n * self.spans[i].state_itemsize, -1))
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

    def set_groups(self, list groups):
        """New hyperparameters for the same groups (a param_groups write): no reallocation."""
        if len(groups) != self.n_groups:
            raise ValueError("set_groups needs the configured number of groups")
        self._set_groups(groups)

    cdef int _set_groups(self, list groups) except -1:
        cdef Py_ssize_t i, k
        cdef GroupC* g
        keep = [obj for obj in self._keep if not isinstance(obj, Schedule)]
        self.needs_gil = 0
        self.scheduled = 0
        for i in range(self.n_groups):
            gd = groups[i]
            g = &self.groups[i]
            for k in range(self.ops.n_hypers):
                value = gd.get(self.hyper_keys[k], 0.0)
                if self.schedulable[k]:
                    self._source(&g.h[k], value, keep)
                    if k > 0 and g.h[k].schedule != NULL:
                        self.scheduled = 1
                else:                                   # a number (a flag: 0.0 or 1.0)
                    g.h[k].schedule = NULL
                    g.h[k].value = g.h[k].constant = value
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

    def group_values(self, int64_t t, bint evaluate=True):
        """The schedulable hyperparameters of every group at step t (for next lr and the
        reference step): lr, momentum, beta1, weight_decay (0.0 where the family has none)
        and every other schedulable one of the family, by its group key. With
        ``evaluate=False``, the values the last evaluation at t left (``begin_windows``
        checked them): no schedule is called again."""
        cdef Py_ssize_t i
        cdef int j, k
        if evaluate:
            self._evaluate(t)
        out = []
        for i in range(self.n_groups):
            values = {"lr": self._used_value(i, 0), "momentum": self._used_value(i, 1),
                      "beta1": self._used_value(i, 2), "weight_decay": self._used_value(i, 3)}
            for j in range(self.ops.n_sched):
                k = self.ops.sched[j]
                if k > 0:
                    values[self.hyper_keys[k]] = self.groups[i].h[k].value
            out.append(values)
        return out

    cdef inline double _used_value(self, Py_ssize_t group, int column) noexcept:
        cdef int k = self.ops.used[column]
        return self.groups[group].h[k].value if k >= 0 else 0.0

    cdef int _evaluate(self, int64_t t) except -1:
        cdef Py_ssize_t i
        cdef int j, k
        cdef GroupC* g
        cdef const FamilyOps* ops = self.ops
        for i in range(self.n_groups):
            g = &self.groups[i]
            g.h[0].value = (schedule_value(g.h[0].schedule, t) if g.h[0].schedule != NULL
                            else g.h[0].constant) * self.lr_scale[i]        # h[0] is lr
            if self.scheduled:
                for j in range(ops.n_sched):           # the other schedulable ones
                    k = ops.sched[j]
                    if k > 0 and g.h[k].schedule != NULL:
                        g.h[k].value = schedule_value(g.h[k].schedule, t)
        if self.needs_gil:
            for obj in self._keep:
                if isinstance(obj, Schedule):
                    check_schedule_error(obj)
        return 0

    cdef int _check_values(self, int64_t t) except -1:
        """The schedulable hyperparameters' table rules (CHECKS), on this step's values; the
        family's check also sets each group's state slots this step leaves out."""
        cdef Py_ssize_t i
        cdef int j
        cdef GroupC* g
        for i in range(self.n_groups):
            g = &self.groups[i]
            j = self.ops.check(g)
            if j >= 0:
                name, text = self.check_text[j]
                self._bad_value(i, name, &g.h[self.ops.sched[j]], t, text)
            # SGD: torch's nesterov rule, on the scheduled momentum and dampening too
            if self.kind == K_SGD and g.h[H_SGD_NESTEROV].value != 0.0:
                if not g.h[H_SGD_MOMENTUM].value > 0.0:
                    self._bad_value(i, "momentum", &g.h[H_SGD_MOMENTUM], t,
                                    "> 0 (nesterov=True)")
                if g.h[H_SGD_DAMPENING].value != 0.0:
                    self._bad_value(i, "dampening", &g.h[H_SGD_DAMPENING], t,
                                    "0 (nesterov=True)")
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
        cdef Py_ssize_t expected_bytes = 0, hit, gbytes
        cdef bint f32
        for i in range(n):
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self._param_arrays[i]) or (
                    self.params[i].user_type_num >= 0 and     # (stored here or by the caller)
                    not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self._users[i])):
                raise ValueError(f"{self.name}.step: params[{i}] is read-only "
                                 f"(flags.writeable=False) but is updated in place. "
                                 f"Nothing was updated")
            self.params[i].grad_itemsize = self.params[i].itemsize
        if cnp.PyArray_Check(grads) and n == 1 and same_shape(
                <cnp.ndarray>grads, <cnp.ndarray>self._param_arrays[0]):
            grads = (grads,)    # the one param's grad: checked as the list [grads] is
        elif cnp.PyArray_Check(grads):
            # one flat gradient buffer covering every param, in param order: 1-D (as
            # fastlr.flat_buffer makes it), each param's part in its memory order
            g = <cnp.ndarray>grads
            if cnp.PyArray_NDIM(g) != 1:
                raise bare_grad_error(f"{self.name}.step", (<object>g).shape, n,
                                      (<object>self._param_arrays[0]).shape if n else (),
                                      self.total_size)
            f32 = cnp.PyArray_TYPE(g) == cnp.NPY_FLOAT     # (16-bit params take it: note f)
            if n and (cnp.PyArray_TYPE(g) != self.params[0].type_num) and not (
                    f32 and self.params[0].direct16):
                raise TypeError(f"{self.name}.step: the flat grad buffer has dtype {g.dtype} "
                                f"but the params are {(<object>self._param_arrays[0]).dtype}")
            for i in range(n):
                pp = &self.params[i]
                if f32 and pp.direct16:
                    pp.grad_itemsize = 4
                elif pp.type_num != cnp.PyArray_TYPE(g):
                    raise TypeError(f"{self.name}.step: a single grad array needs params of "
                                    f"one dtype (or float32 grads for float32 and 16-bit "
                                    f"params); pass a list of grads instead")
                expected_bytes += pp.nbytes // pp.itemsize * pp.grad_itemsize
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
                base += self.params[i].nbytes // self.params[i].itemsize * \
                    self.params[i].grad_itemsize
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
                                f"{type(obj).__name__}{ndarray_hint(obj)}")
            g = <cnp.ndarray>obj
            gbytes = pp.nbytes
            if cnp.PyArray_TYPE(g) != pp.type_num:
                if pp.user_type_num >= 0 and cnp.PyArray_TYPE(g) == pp.user_type_num:
                    if pp.user == NULL:             # (a 16-bit param the caller stores)
                        raise WidenFirst(i)
                    pp.grad_itemsize = 2            # widened block by block (note e)
                    gbytes = pp.nbytes // 2
                elif pp.direct16 and cnp.PyArray_TYPE(g) == cnp.NPY_FLOAT:
                    pp.grad_itemsize = 4            # note f
                    gbytes = pp.nbytes * 2
                elif pp.direct16:
                    raise TypeError(f"{self.name}.step: grads[{i}] has dtype {g.dtype} but "
                                    f"params[{i}] has dtype "
                                    f"{(<object>self._param_arrays[i]).dtype} (its grad must be "
                                    f"{(<object>self._param_arrays[i]).dtype} or float32)")
                elif pp.user_type_num >= 0:
                    user = self._users[i]
                    raise TypeError(f"{self.name}.step: grads[{i}] has dtype {g.dtype} but "
                                    f"params[{i}] is {user.dtype} (kept with float32 master "
                                    f"weights): pass its grad in {user.dtype} or float32")
                else:
                    raise TypeError(f"{self.name}.step: grads[{i}] has dtype {g.dtype} but "
                                    f"params[{i}] has dtype "
                                    f"{(<object>self._param_arrays[i]).dtype}")
            p = <cnp.ndarray>self._param_arrays[i]
            if cnp.PyArray_NBYTES(g) != gbytes or not same_shape(g, p):
                raise ValueError(f"{self.name}.step: grads[{i}] has shape {(<object>g).shape} "
                                 f"but params[{i}] has shape {(<object>p).shape}")
            if pp.user != NULL and pp.grad_itemsize == 2 and (
                    not (cnp.PyArray_IS_F_CONTIGUOUS(g) if pp.f_order
                         else cnp.PyArray_IS_C_CONTIGUOUS(g))
                    or not cnp.PyArray_ISALIGNED(g) or cnp.PyArray_ISBYTESWAPPED(g)):
                raise WidenFirst(i)
            if not (cnp.PyArray_IS_F_CONTIGUOUS(g) if pp.f_order
                    else cnp.PyArray_IS_C_CONTIGUOUS(g)):
                raise ValueError(f"{self.name}.step: grads[{i}] must be "
                                 f"{'F' if pp.f_order else 'C'}-contiguous like params[{i}], "
                                 f"got strides {(<object>g).strides}"
                                 f"{layout_hint(f'grads[{i}]', pp.f_order)}")
            if not cnp.PyArray_ISALIGNED(g) or cnp.PyArray_ISBYTESWAPPED(g):
                raise ValueError(f"{self.name}.step: grads[{i}] must be aligned and in native "
                                 f"byte order")
            gp = <char*>cnp.PyArray_DATA(g)
            if pp.nbytes and gp < pp.data + pp.nbytes and pp.data < gp + gbytes:
                raise ValueError(f"{self.name}.step: grads[{i}] overlaps params[{i}] in memory")
            hit = self._written_hit(gp, gp + gbytes)
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
        """Each span's coefficients, from its group's values and its own step (spans of one
        group and step share them: the coefficient functions are pure)."""
        cdef Py_ssize_t i
        cdef SpanC* sp
        cdef const FamilyOps* ops = self.ops
        cdef int64_t step, prev_step = 0
        cdef int prev_group = -1
        cdef int first_use = ops.first_use_slot >= 0
        cdef int has_scalar = ops.scalar_out != NULL
        for i in range(self.n_spans):
            sp = &self.spans[i]
            if first_use:                           # torch: "buffer is None" on first use
                step = 2 if self.started[sp.first] else 1
            else:
                step = self.counts[sp.first] + 1    # this update's 1-based number
            if not has_scalar and sp.group == prev_group and step == prev_step:
                self.coefs[i] = self.coefs[i - 1]
                continue
            ops.fill(&self.groups[sp.group], step,
                     self.mu_product[sp.first] if has_scalar else 0.0, &self.coefs[i])
            prev_group = sp.group
            prev_step = step

    cdef void _scale_grads(self, double scale) noexcept:
        """Fold a factor on every grad into the coefficients: the cores read grad[i] as
        sign * grad[i], so scaling sign (+-1) applies clipping exactly as
        ``grad *= scale`` (in the grads' dtype) before the step would."""
        cdef Py_ssize_t i
        for i in range(self.n_spans):
            self.ops.scale(&self.coefs[i], scale)

    cdef Py_ssize_t _pieces(self) noexcept:
        cdef Py_ssize_t i, j, k, n_pieces = 0, start = 0
        cdef SpanC* sp
        cdef Piece* pc
        cdef bint adjacent
        cdef unsigned int dropped
        cdef uint32_t salt = 0
        for i in range(self.n_spans):
            sp = &self.spans[i]
            dropped = self.groups[sp.group].dropped
            if sp.direct16:     # the update's number, as fastlr/optim/direct16.py (note f)
                salt = step_salt(self.counts[sp.first] + 1, PARAM_STREAM)
            adjacent = self.params[sp.first].user == NULL   # masters: a piece each (note e)
            for j in range(sp.first + 1, sp.first + sp.n_params):
                if self.grad_ptrs[j] != self.grad_ptrs[j - 1] + self.params[j - 1].nbytes \
                        // self.params[j - 1].itemsize * self.params[j - 1].grad_itemsize or \
                        self.params[j].grad_itemsize != self.params[j - 1].grad_itemsize or \
                        self.params[j].user != NULL:
                    adjacent = False
                    break
            if adjacent:
                pc = &self.pieces[n_pieces]
                n_pieces += 1
                pc.ptrs[0] = sp.param
                pc.ptrs[1] = self.grad_ptrs[sp.first]
                for k in range(MAX_STATE):
                    pc.ptrs[2 + k] = NULL if (dropped >> k) & 1 else sp.state[k]
                pc.n = sp.n
                pc.itemsize = sp.itemsize
                pc.grad_itemsize = self.params[sp.first].grad_itemsize
                pc.state_itemsize = sp.state_itemsize
                pc.user = NULL
                pc.direct16 = sp.direct16
                pc.fmt16 = sp.fmt16
                pc.salt = salt
                pc.grad_scale = 1
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
                        # (the param's offset in its span, in the state's element size)
                        pc.ptrs[2 + k] = NULL if (dropped >> k) & 1 else \
                            _off(sp.state[k], self.params[j].offset // sp.itemsize
                                 * sp.state_itemsize)
                    pc.n = self.params[j].nbytes // sp.itemsize
                    pc.itemsize = sp.itemsize
                    pc.grad_itemsize = self.params[j].grad_itemsize
                    pc.state_itemsize = sp.state_itemsize
                    pc.user = self.params[j].user
                    pc.direct16 = sp.direct16
                    pc.fmt16 = self.params[j].fmt16
                    pc.salt = salt
                    pc.grad_scale = 1
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
        cdef Py_ssize_t n_pieces, i
        cdef double sumsq = 0.0, scale = 1.0
        cdef int nonfinite = 0
        cdef int want_norm = max_grad_norm > 0.0
        self.n_window_pieces = -1           # a step begun in windows is over
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
            for i in range(n_pieces):       # (the rounding's key: the clipped grad, note f)
                self.pieces[i].grad_scale = <float>scale
        if self.total_size >= 4096:
            with nogil:
                run_pieces(self.pieces, n_pieces, self.total_size, n_threads)
        else:
            run_pieces(self.pieces, n_pieces, self.total_size, n_threads)
        self._count()
        return True

    # ---- a step in windows (fastlr.distributed's overlap) ------------------------------
    # begin_windows does everything of `step` up to the element loop (no clipping, no scan);
    # run_window(lo, hi) updates elements [lo, hi) of the concatenated params, as often as
    # the caller likes, in any order, each element exactly once; end_windows counts, as
    # `step` does after its loop. Element-wise updates: any cover of [0, total_size) by
    # windows gives the bits of one `step`. The caller (Optimizer._windowed_step) holds the
    # optimizer's lock from begin to end, so the layout cannot change in between.
    def begin_windows(self, grads, int64_t t):
        """Check grads, evaluate schedules at t, derive coefficients; update nothing."""
        self.n_window_pieces = -1
        self._check_grads(grads)
        self._evaluate(t)
        self._check_values(t)
        self.n_window_pieces = self._pieces()
        self._coefs(t)

    def run_window(self, Py_ssize_t lo, Py_ssize_t hi, int n_threads):
        """Update elements [lo, hi) of the concatenated params (after begin_windows)."""
        cdef Window w
        if self.n_window_pieces < 0:
            raise RuntimeError(f"{self.name}: run_window without begin_windows")
        if not 0 <= lo <= hi <= self.total_size:
            raise ValueError(f"{self.name}: window [{lo}, {hi}) is outside [0, "
                             f"{self.total_size})")
        w.pieces = self.pieces
        w.n_pieces = self.n_window_pieces
        w.offset = lo
        if hi - lo >= 4096:
            with nogil:
                parallel_spans(window_span, &w, hi - lo, n_threads)
        else:
            window_span(&w, 0, hi - lo)

    def end_windows(self):
        """Count the step begun by begin_windows (call once every element was updated)."""
        if self.n_window_pieces < 0:
            raise RuntimeError(f"{self.name}: end_windows without begin_windows")
        self.n_window_pieces = -1
        self._count()

    def abandon_windows(self):
        """Forget a step begun in windows (its grads' pointers) without counting it."""
        self.n_window_pieces = -1

    cdef void _count(self) noexcept:
        """After an update: the groups' used values, the counts, the per-param scalar, the
        first-use flags."""
        cdef Py_ssize_t i, j
        cdef int k
        cdef SpanC* sp
        cdef double v
        for i in range(self.n_groups):
            self.used[i, 0] = self._used_value(i, 0)
            self.used[i, 1] = self._used_value(i, 1)
            self.used[i, 2] = self._used_value(i, 2)
            self.used[i, 3] = self._used_value(i, 3)
        for i in range(self.n_params):
            self.counts[i] += 1
        if self.ops.scalar_out != NULL:             # the per-param scalar after the update
            for i in range(self.n_spans):
                sp = &self.spans[i]
                v = self.ops.scalar_out(&self.coefs[i])
                for j in range(sp.first, sp.first + sp.n_params):
                    self.mu_product[j] = v
        k = self.ops.first_use_slot
        if k >= 0:                                  # the first-use buffer is now in use
            for i in range(self.n_spans):
                sp = &self.spans[i]
                if sp.state[k] != NULL and not (self.groups[sp.group].dropped >> k) & 1:
                    for j in range(sp.first, sp.first + sp.n_params):
                        self.started[j] = 1


include "clip.pxi"
