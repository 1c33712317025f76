# fastlr/_tools/roofline.pyx -- memory-bandwidth probes with the optimizers' access patterns.
#
# What "% of roofline" in `fastlr bench` and the asv suite is measured against. Each pattern
# reads and writes the same streams as an optimizer step, in place, with trivial arithmetic
# (a few multiplies and adds per element, no division or square root), so out of cache it
# runs at the memory bandwidth the machine gives that number of streams:
#
#   pattern    streams                               bytes/elem (f32 / f64)   optimizers
#   sgd        read p, g;       write p              12 / 24                  SGD
#   momentum   read p, g, b;    write p, b           20 / 40                  SGD+momentum,
#                                                                             Nesterov, RMSprop
#   adam       read p, g, m, v; write p, m, v        28 / 56                  Adam, AdamW
#
# Bytes count what is read plus what is written; every written line was just read (read-
# modify-write), so there is no write-allocate (RFO) traffic to add.
#
# Threads: [0, n) is split by the kernels' own threaded loop (fastlr._kernels.parallel_spans:
# the same spans, the same serial threshold, one OpenMP thread per span). One call runs
# `passes` passes and opens one parallel region: each thread sweeps its own span `passes`
# times, so no barrier or region cost is paid per pass (this is the machine's limit, not a
# kernel's).
#
# Layout: buffers come from `stream_arrays`, which places the streams in one block at a
# distance of n*itemsize (rounded up to 64 B) + STAGGER bytes from each other. Separate
# same-size allocations are mmap'ed back to back, so their streams sit a multiple of a large
# power of two (plus or minus 4 KiB) apart; on some machines (a 2-core Zen 4 VM: Adam f32 16M
# at 21 instead of 50 GB/s on one core, f64 at 8-12) that conflicts in the memory system
# and halves the bandwidth of every kernel that streams them. `fastlr bench` lays out every
# implementation's buffers the same way (layout="staggered"), so the roofline and all
# implementations see the same, conflict-free placement.
#
# The loops are plain C with restrict pointers, compiled with the package's flags (-O3, no
# FMA contraction) and, on x86-64, once more for AVX2 (chosen at run time, like fastlr's own
# core loops), so that in cache the pattern loop is not held back by SSE2.

cimport cython
cimport numpy as cnp


import time

import numpy as np

cnp.import_array()

# OpenMP facts come from the kernels module (its #ifdef _OPENMP shim; same build flags).
from fastlr._kernels cimport max_threads, parallel_spans

from fastlr._kernels import HAVE_OPENMP


cdef enum Kind:
    SGD = 0
    MOMENTUM = 1
    ADAM = 2

#: Pattern name -> (streams read, streams written).
PATTERNS = {"sgd": (2, 1), "momentum": (3, 2), "adam": (4, 3)}
#: Optimizer names -> the pattern with their access streams.
PATTERN_OF = {"sgd": "sgd", "momentum": "momentum", "nesterov": "momentum",
              "rmsprop": "momentum", "adam": "adam", "adamw": "adam"}
_KIND = {"sgd": SGD, "momentum": MOMENTUM, "adam": ADAM}
_N_ARRAYS = {"sgd": 2, "momentum": 3, "adam": 4}



# The loops: one pass over [0, n) of already offset pointers. Multiply/add only. Plain C
# (restrict pointers, so no alias checks), compiled twice on x86-64 with GCC or clang: the
# package's baseline flags, and an AVX2 clone (target attribute) chosen at run time when the
# CPU has AVX2 -- the level fastlr's own core loops are dispatched to -- so that in L1/L2
# the pattern loop is not held back by 128-bit SSE2 (out of cache both are memory bound).
# ---------------------------------------------------------------------------------------
cdef extern from *:
    """
    #include <stddef.h>
    #if defined(_MSC_VER)
    #define FRL_RESTRICT __restrict
    #else
    #define FRL_RESTRICT restrict
    #endif
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define FRL_HAVE_V3_CLONE 1
    #define FRL_V3_ATTR __attribute__((target("avx2,fma")))
    #else
    #define FRL_HAVE_V3_CLONE 0
    #endif

    #define FRL_DEFINE_LOOPS(SUF, ATTR, T)                                                 \
    ATTR static void frl_sgd_##SUF(T* FRL_RESTRICT p, const T* FRL_RESTRICT g,           \
                                   ptrdiff_t n) {                                        \
        const T a = (T)1e-7;                                                             \
        for (ptrdiff_t i = 0; i < n; i++) p[i] = p[i] - a * g[i];                        \
    }                                                                                    \
    ATTR static void frl_momentum_##SUF(T* FRL_RESTRICT p, const T* FRL_RESTRICT g,      \
                                        T* FRL_RESTRICT b, ptrdiff_t n) {                \
        const T a = (T)1e-7, c = (T)0.5;                                                 \
        for (ptrdiff_t i = 0; i < n; i++) {                                              \
            T x = c * b[i] + g[i];                                                       \
            b[i] = x;                                                                    \
            p[i] = p[i] - a * x;                                                         \
        }                                                                                \
    }                                                                                    \
    ATTR static void frl_adam_##SUF(T* FRL_RESTRICT p, const T* FRL_RESTRICT g,          \
                                    T* FRL_RESTRICT m, T* FRL_RESTRICT v, ptrdiff_t n) { \
        const T a = (T)1e-7, c1 = (T)0.9, d1 = (T)0.1, c2 = (T)0.999, d2 = (T)0.001;     \
        for (ptrdiff_t i = 0; i < n; i++) {                                              \
            T gi = g[i];                                                                 \
            T mi = c1 * m[i] + d1 * gi;                                                  \
            T vi = c2 * v[i] + d2 * gi * gi;                                             \
            m[i] = mi;                                                                   \
            v[i] = vi;                                                                   \
            p[i] = p[i] - a * (mi + vi);                                                 \
        }                                                                                \
    }

    FRL_DEFINE_LOOPS(f32, , float)
    FRL_DEFINE_LOOPS(f64, , double)
    #if FRL_HAVE_V3_CLONE
    FRL_DEFINE_LOOPS(f32_v3, FRL_V3_ATTR, float)
    FRL_DEFINE_LOOPS(f64_v3, FRL_V3_ATTR, double)
    #endif

    static int frl_cpu_has_v3(void) {
    #if FRL_HAVE_V3_CLONE
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }

    /* One pass of pattern `kind` (0 sgd, 1 momentum, 2 adam) over n elements. */
    static void frl_pass(int kind, int dbl, int v3, char** q, ptrdiff_t n) {
    #if FRL_HAVE_V3_CLONE
        if (v3) {
            if (dbl) {
                if (kind == 0) frl_sgd_f64_v3((double*)q[0], (const double*)q[1], n);
                else if (kind == 1) frl_momentum_f64_v3((double*)q[0], (const double*)q[1],
                                                        (double*)q[2], n);
                else frl_adam_f64_v3((double*)q[0], (const double*)q[1], (double*)q[2],
                                     (double*)q[3], n);
            } else {
                if (kind == 0) frl_sgd_f32_v3((float*)q[0], (const float*)q[1], n);
                else if (kind == 1) frl_momentum_f32_v3((float*)q[0], (const float*)q[1],
                                                        (float*)q[2], n);
                else frl_adam_f32_v3((float*)q[0], (const float*)q[1], (float*)q[2],
                                     (float*)q[3], n);
            }
            return;
        }
    #endif
        if (dbl) {
            if (kind == 0) frl_sgd_f64((double*)q[0], (const double*)q[1], n);
            else if (kind == 1) frl_momentum_f64((double*)q[0], (const double*)q[1],
                                                 (double*)q[2], n);
            else frl_adam_f64((double*)q[0], (const double*)q[1], (double*)q[2],
                              (double*)q[3], n);
        } else {
            if (kind == 0) frl_sgd_f32((float*)q[0], (const float*)q[1], n);
            else if (kind == 1) frl_momentum_f32((float*)q[0], (const float*)q[1],
                                                 (float*)q[2], n);
            else frl_adam_f32((float*)q[0], (const float*)q[1], (float*)q[2],
                              (float*)q[3], n);
        }
    }
    """
    int FRL_HAVE_V3_CLONE
    int frl_cpu_has_v3() noexcept nogil
    void frl_pass(int kind, int dbl, int v3, char** q, Py_ssize_t n) noexcept nogil


cdef int _use_v3 = frl_cpu_has_v3()


ctypedef struct Job:
    int kind
    int dbl               # 1: double, 0: float
    int v3                # use the AVX2 clone
    char* ptrs[4]
    Py_ssize_t itemsize
    Py_ssize_t passes


cdef void run_span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef const Job* job = <const Job*>ctx
    cdef Py_ssize_t off = start * job.itemsize, r
    cdef char* q[4]
    cdef int k
    for k in range(4):
        q[k] = NULL if job.ptrs[k] == NULL else job.ptrs[k] + off
    for r in range(job.passes):
        frl_pass(job.kind, job.dbl, job.v3, q, stop - start)


cdef void run_job(const Job* job, Py_ssize_t n, int n_threads) noexcept nogil:
    # the kernels' own threaded loop: the same split, so the same threading as the kernels
    parallel_spans(run_span, <void*>job, n, n_threads)


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------
def _pattern(pattern):
    name = PATTERN_OF.get(pattern, pattern)
    if name not in PATTERNS:
        raise ValueError(f"fastlr._tools.roofline: unknown pattern {pattern!r}; expected one of "
                         f"{', '.join(PATTERNS)} (or an optimizer name: "
                         f"{', '.join(PATTERN_OF)})")
    return name


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"fastlr._tools.roofline: dtype must be float32 or float64, got {dt}")
    return dt


def _threads(n_threads):
    if n_threads is None:
        return max(1, max_threads())
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) \
            or n_threads < 1:
        raise ValueError(f"fastlr._tools.roofline: n_threads must be an int >= 1 or None, got "
                         f"{n_threads!r}")
    return int(n_threads)


def bytes_per_element(pattern, dtype="float32"):
    """Bytes one element of ``pattern`` moves per pass (reads + writes, no RFO).

    >>> bytes_per_element("adam", "float32"), bytes_per_element("momentum", "float64")
    (28, 40)
    """
    r, w = PATTERNS[_pattern(pattern)]
    return (r + w) * _dtype(dtype).itemsize


#: Bytes added to the distance between two streams of `stream_arrays` (64 KiB + one line).
STAGGER = 65536 + 64
#: What `make_buffers` fills p, g and the state buffers with.
FILL_VALUES = (1.0, 1e-3, 0.5, 1e-6)


def stream_arrays(Py_ssize_t n, dtype="float32", int count=1, layout="staggered"):
    """``count`` zero-filled, C-contiguous ``n``-element arrays for streaming kernels.

    ``layout="staggered"`` (default): views into one block, each 4096-byte aligned
    start plus k x (n*itemsize rounded up to 64 + STAGGER) bytes, so no two streams sit a
    multiple of a large power of two apart (see the module notes). ``"natural"``: separate
    ``np.zeros`` allocations, i.e. whatever the allocator gives (back to back for large n).
    """
    dt = _dtype(dtype)
    if n < 0 or count < 0:
        raise ValueError(f"fastlr._tools.roofline.stream_arrays: n and count must be >= 0, got "
                         f"n={n}, count={count}")
    if layout == "natural":
        return [np.zeros(n, dtype=dt) for _ in range(count)]
    if layout != "staggered":
        raise ValueError(f"fastlr._tools.roofline.stream_arrays: layout must be 'staggered' or "
                         f"'natural', got {layout!r}")
    cdef Py_ssize_t size = n * dt.itemsize
    cdef Py_ssize_t dist = (size + 63) // 64 * 64 + STAGGER
    block = np.zeros(count * dist + 4096, dtype=np.uint8)
    cdef Py_ssize_t start = (-block.ctypes.data) % 4096
    return [block[start + k * dist:start + k * dist + size].view(dt) for k in range(count)]


def make_buffers(pattern, Py_ssize_t n, dtype="float32", layout="staggered"):
    """Fresh, initialized buffers for ``pattern`` (p, g, then its state), ``n`` elements,
    laid out by :func:`stream_arrays`.

    The values stay bounded and normal (never subnormal) however many passes run.
    """
    name = _pattern(pattern)
    if n < 1:
        raise ValueError(f"fastlr._tools.roofline: n must be >= 1, got {n}")
    bufs = stream_arrays(n, dtype, _N_ARRAYS[name], layout)
    for k in range(len(bufs)):
        bufs[k][...] = FILL_VALUES[k]
    return tuple(bufs)


_VARIANTS = {None: -1, "baseline": 0, "x86-64-v3": 1}


def cpu_variant():
    """The loops in use: 'x86-64-v3' (the AVX2 clone) or 'baseline'."""
    return "x86-64-v3" if _use_v3 else "baseline"


def run(pattern, buffers, n_threads=1, Py_ssize_t passes=1, variant=None):
    """Run ``passes`` passes of ``pattern`` over ``buffers`` (from :func:`make_buffers`),
    with up to ``n_threads`` threads, in one call without the GIL. ``variant``: None (the
    best this CPU runs, :func:`cpu_variant`), 'baseline' or 'x86-64-v3'."""
    name = _pattern(pattern)
    cdef int v3 = _VARIANTS.get(variant, -2)
    if v3 == -2:
        raise ValueError(f"fastlr._tools.roofline.run: variant must be None, 'baseline' or "
                         f"'x86-64-v3', got {variant!r}")
    if v3 == -1:
        v3 = _use_v3
    elif v3 == 1 and not _use_v3:
        raise ValueError("fastlr._tools.roofline.run: the x86-64-v3 loops are not built or this "
                         "CPU lacks AVX2")
    cdef int nt = _threads(n_threads)
    cdef Job job
    cdef Py_ssize_t n, k
    cdef cnp.ndarray a
    bufs = tuple(buffers)
    if len(bufs) != _N_ARRAYS[name]:
        raise ValueError(f"fastlr._tools.roofline.run: pattern {name!r} takes "
                         f"{_N_ARRAYS[name]} buffers, got {len(bufs)}")
    first = bufs[0]
    if not isinstance(first, np.ndarray):
        raise TypeError("fastlr._tools.roofline.run: buffers must be numpy arrays")
    dt = _dtype(first.dtype)
    n = first.size
    job.kind = _KIND[name]
    job.dbl = dt == np.float64
    job.itemsize = dt.itemsize
    job.v3 = v3
    job.passes = max(passes, 0)
    for k in range(4):
        job.ptrs[k] = NULL
    for k in range(len(bufs)):
        if (not isinstance(bufs[k], np.ndarray) or bufs[k].dtype != dt or bufs[k].size != n
                or not bufs[k].flags.c_contiguous or not bufs[k].flags.writeable):
            raise ValueError("fastlr._tools.roofline.run: buffers must be writeable C-contiguous "
                             "arrays of one dtype and size")
        a = <cnp.ndarray>bufs[k]
        job.ptrs[k] = <char*>cnp.PyArray_DATA(a)
    if n == 0 or job.passes == 0:
        return
    with nogil:
        run_job(&job, n, nt)


def time_passes(pattern, buffers, n_threads=1, Py_ssize_t passes=1):
    """Seconds per pass of ``passes`` passes run in one call (see :func:`run`)."""
    t0 = time.perf_counter()
    run(pattern, buffers, n_threads, passes)
    return (time.perf_counter() - t0) / max(passes, 1)


def calibrate(pattern, buffers, n_threads=1, double min_time=0.01):
    """The number of passes per call that takes at least ``min_time`` seconds (after one
    warm-up pass)."""
    cdef Py_ssize_t passes = 1
    run(pattern, buffers, n_threads, 1)
    while True:
        t = time_passes(pattern, buffers, n_threads, passes) * passes
        if t >= min_time or passes >= (1 << 30):
            return passes
        passes = max(passes + 1, int(passes * min(10.0, 1.2 * min_time / max(t, 1e-9))))


def bandwidth(pattern="adam", Py_ssize_t n=1 << 24, dtype="float32", n_threads=1,
              int repeats=5, double min_time=0.01, layout="staggered"):
    """Best bandwidth, in GB/s (1e9 bytes per second), of ``pattern`` over ``n``-element
    ``dtype`` buffers with up to ``n_threads`` threads: bytes read + written per pass
    (:func:`bytes_per_element` x n) over the fastest of ``repeats`` samples, each sample
    at least ``min_time`` seconds of passes.

    ``pattern`` is "sgd", "momentum" or "adam" (or an optimizer name: "rmsprop" and
    "nesterov" use "momentum", "adamw" uses "adam"). Out of cache (the default n = 16 M)
    this is the memory roofline of that optimizer on this machine, now. ``layout`` as in
    :func:`stream_arrays`.
    """
    name = _pattern(pattern)
    if repeats < 1:
        raise ValueError(f"fastlr._tools.roofline.bandwidth: repeats must be >= 1, got {repeats}")
    bufs = make_buffers(name, n, dtype, layout)
    passes = calibrate(name, bufs, n_threads, min_time)
    best = min(time_passes(name, bufs, n_threads, passes) for _ in range(repeats))
    return bytes_per_element(name, dtype) * n / best / 1e9
