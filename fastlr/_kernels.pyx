# fastlr/_kernels.pyx -- optimizer update kernels, in place on float32/float64 buffers.
#
# Design notes
# ------------
# a) What is generated. The optimizer table (fastlr/_specs.py) drives, through the Tempita
#    templates setup.py renders before cythonize: the C API's hyperparameter structs and
#    declarations (_kernels.pxd from _kernels.pxd.tp); the C API's functions and the
#    validated Python kernels (_kernels_api.pxi from _kernels_api.pxi.tp, included at the
#    end of this file); the family numbers, per-dtype adapters and CoreTable
#    (fastlr/_core/families.pxd from families.pxd.tp). This file holds what is written once
#    for all families: the thread pool, the threaded loop, jobs, argument checks.
# b) What is hand-written per family: the maths only. Its coefficient struct and function
#    (hyperparameters -> per-step coefficients, in double, bias corrections as torch) and
#    its fused-type core loop, in fastlr/_core/loops.pxd, which reads every buffer once and
#    writes it once: no second pass, no temporaries, no OpenMP inside.
# c) C level. One `noexcept nogil` function per (optimizer, dtype) on raw pointers, a length
#    and a hyperparameter struct (declared in _kernels.pxd: the C API other Cython code
#    cimports): coefficients once, then the core loop of the CPU's instruction-set variant.
# d) Threaded loop. `parallel_spans` cuts [0, n) into chunks (multiples of SPAN_CHUNK
#    elements, about 64 per thread) and stays serial below PARALLEL_MIN_SIZE elements.
#    Chunks are claimed dynamically from a persistent pool (the C block below), not handed
#    out statically: the calling thread starts on them at once and never waits for a thread
#    that has not started, so a core taken by another process costs little, where an OpenMP
#    region's end barrier waited for the thread sharing that core (5-17x slower with one of
#    two cores busy). The caller takes chunks from the front, workers from the back.
#    Safeguards: workers are SCHED_BATCH (a woken worker never preempts the caller), and
#    one that finds itself on the caller's CPU leaves the work to the caller; a caller that waited long for a descheduled worker's chunk (a
#    "stall") runs serial for a back-off period (2 ms, doubled per further stall, up to
#    0.25 s, shrinking with clean threaded calls); a sleeping pool is woken only for calls of
#    at least 256K elements. Updates are element-wise (and the engine's reductions are per
#    fixed block), so no split or claiming order changes a bit of the result. One job slot:
#    a call that finds it taken (another Python thread's call) runs on its own thread. The
#    serial build (no OpenMP) has no pool and no threads; without Linux and GCC-style
#    atomics the chunks go through an OpenMP loop instead.
# e) Arithmetic. The cores follow torch.optim's single-tensor path operation by operation in
#    the buffers' dtype (lerp for the first moments, `v*b2 + (1-b2)*g*g`, eps outside the
#    square root), so float32 results track torch to the last bits. One deliberate
#    difference: Adam multiplies sqrt(v) by 1/sqrt(1 - beta2^t) instead of dividing by
#    sqrt(1 - beta2^t), which saves a division per element (the divider bounds Adam in
#    cache) and moves results by about an ulp. Build flags: -O3 -fno-math-errno
#    -ffp-contract=off, never -ffast-math (setup.py).
# f) Python layer. The kernels (`sgd`, ..., `adamw`, ...) validate everything (types,
#    dtypes, shapes, layout, writeability, overlap, missing or superfluous state,
#    hyperparameter ranges) before any buffer is touched, in compiled code through NumPy's
#    C API, then release the GIL for the update. `fastlr.kernels` re-exports them.
#
# Argument directions on the kernels: param and state buffers are IN/OUT, grad is IN only
# (read-only gradient arrays are accepted).

cimport cython
cimport numpy as cnp

from fastlr._core.arrays cimport (check_buffer, check_like_param, check_ndarray,
                                  check_overlap, check_param_layout)
from fastlr._core.args cimport (ABOVE_ONE, CLOSED_UNIT, FINITE, NONNEG, OPEN_UNIT, UNIT,
                                checked_real, flag_arg, set_threads_default, step_arg,
                                threads_arg)

from cpython.pycapsule cimport PyCapsule_GetPointer

from fastlr._core.families cimport CoreTable
from fastlr._core.loops cimport core_fn, nadam_mu_of
from cython.parallel cimport prange
from libc.math cimport INFINITY, isfinite
from libc.stdint cimport int64_t


import numpy as np

cnp.import_array()

# ---------------------------------------------------------------------------------------
# OpenMP (the default thread count only) and the chunk pool, degrading to a serial build
# when the compiler has no OpenMP (no bare `cimport openmp`)
# ---------------------------------------------------------------------------------------
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTLR_HAVE_OPENMP 1
    static int fastlr_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FASTLR_HAVE_OPENMP 0
    static int fastlr_omp_max_threads(void) { return 1; }
    #endif

    /* A forked child runs serial until it calls fastlr.set_num_threads itself (the
       parent's worker threads do not exist there; GNU OpenMP's pool, used by other code,
       does not survive fork either). The child also gets a fresh, empty chunk pool. */
    static int fastlr_forked_child = 0;
    static void fastlr_pool_after_fork(void);
    #if defined(__unix__) || defined(__APPLE__)
    #include <pthread.h>
    static void fastlr_atfork_child(void) { fastlr_forked_child = 1; fastlr_pool_after_fork(); }
    static int fastlr_register_atfork(void) {
        return pthread_atfork(NULL, NULL, fastlr_atfork_child);
    }
    #else
    static int fastlr_register_atfork(void) { return 0; }
    #endif

    /* ---- The chunk pool (design note d in this file) ----------------------------------
       Persistent worker threads that help the calling thread with chunks it publishes.
       Built with OpenMP enabled on Linux with GCC/Clang atomics; elsewhere FASTLR_HAVE_POOL
       is 0 and parallel_spans falls back to an OpenMP loop (or serial, without OpenMP).

       One job slot. A caller takes it with a CAS on `busy` (if another caller holds it,
       the call runs serial on its own thread: no waiting, no deadlock), writes the job,
       then publishes it by storing the claim word (generation, lo = 0, hi = n_chunks)
       (release) and bumping `wake_seq` (which spinning workers watch). Sleeping workers
       wait on futex words of their own, woken in a chain: the caller wakes worker 0,
       worker i wakes worker i + 1 while i + 1 < n_workers (no herd of unwanted threads
       when n_threads shrank). Chunks [lo, hi) are unclaimed. The
       caller takes chunks from the front (a CAS lo -> lo + 1), at once and without waiting
       for anybody; workers take them from the back (a CAS hi -> hi - 1), so with one worker
       each thread sweeps one contiguous part, as a static split would. Either CAS succeeds
       only while lo < hi in the word it read, so it claims a chunk of the job current at
       that moment, which cannot finish before that chunk is done: a worker reads the job's
       fields only after its CAS succeeded (through the claim word's release sequence), so
       a worker that arrives late finds nothing to claim and never touches a finished
       call's context, even if a word repeats. The caller, having found the chunks
       exhausted, waits only for chunks that running workers claimed (`done`), then frees
       the slot. Workers spin briefly after a job, then sleep on the futex. */
    #if defined(_OPENMP) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
    #define FASTLR_HAVE_POOL 1
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <signal.h>
    #include <sched.h>
    #include <stdint.h>
    #include <limits.h>
    #include <time.h>

    #define FASTLR_POOL_MAX_WORKERS 255
    /* claim word: generation (24 bits) | lo (20 bits) | hi (20 bits) */
    #define FASTLR_IDX_BITS 20
    #define FASTLR_IDX_MASK ((((uint64_t)1) << FASTLR_IDX_BITS) - 1)
    #define FASTLR_LO_ONE (((uint64_t)1) << FASTLR_IDX_BITS)
    #define FASTLR_GEN_SHIFT (2 * FASTLR_IDX_BITS)
    #define FASTLR_POOL_MAX_CHUNKS (((Py_ssize_t)1) << 19)
    #define FASTLR_WORKER_SPIN_NS 100000     /* a worker polls for the next job this long */
    #define FASTLR_CALLER_SPIN 4000          /* polls for claimed chunks before yielding */
    /* Stalls: a worker descheduled while it holds a chunk (its core is busy with another
       process) makes the caller wait for it. A wait longer than STALL_MIN_NS and than a
       quarter of the caller's own share of the job counts as a stall; after one, calls run
       serial (no pool) for a back-off period, doubled by every further stall (up to
       BACKOFF_MAX_NS) and shrunk by 1/16 by every clean threaded call. */
    #define FASTLR_STALL_MIN_NS 20000
    #define FASTLR_BACKOFF_MIN_NS 2000000
    #define FASTLR_BACKOFF_MAX_NS 250000000
    /* Waking a sleeping worker costs the caller a system call (more in a VM) and pays off
       only for calls at least this large; smaller calls share with awake workers only. */
    #define FASTLR_WAKE_MIN 262144

    #if defined(__x86_64__) || defined(__i386__)
    #define FASTLR_PAUSE() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define FASTLR_PAUSE() __asm__ __volatile__("yield")
    #else
    #define FASTLR_PAUSE() ((void)0)
    #endif
    #define FASTLR_LOAD(x, o) __atomic_load_n(&(x), o)
    #define FASTLR_STORE(x, v, o) __atomic_store_n(&(x), (v), o)
    #define RLX __ATOMIC_RELAXED

    typedef void (*fastlr_chunk_fn)(void* ctx, Py_ssize_t start, Py_ssize_t stop);

    static struct {
        /* the job of the current generation: written by the slot's owner before it
           publishes the generation */
        fastlr_chunk_fn fn;
        void* ctx;
        Py_ssize_t n, chunk;
        int n_workers;                  /* workers with index < n_workers may help */
        int caller_cpu;                 /* the CPU the caller published from */
        /* owner-only (under `busy`) */
        uint64_t gen;
        int n_started;                  /* workers created so far */
        int spawn_failed;
        /* shared, each on its own cache line */
        __attribute__((aligned(64))) uint64_t claim;      /* gen | lo | hi */
        __attribute__((aligned(64))) Py_ssize_t done;     /* chunks workers finished */
        __attribute__((aligned(64))) int busy;            /* 1 while a caller owns the slot */
        __attribute__((aligned(64))) int wake_seq;        /* bumped per job */
        __attribute__((aligned(64))) uint64_t worker_chunks;  /* statistics (tests) */
        int64_t backoff_until;          /* serial until this CLOCK_MONOTONIC time (ns) */
        int64_t backoff_ns;             /* the current back-off period */
        uint64_t stalls;                /* statistics (tests, benchmarks) */
    } fastlr_pool;

    /* one futex word per worker, each on its own cache line */
    static struct {
        int seq;                        /* bumped to wake the worker */
        int sleeping;                   /* 1 while it is (about to be) in futex_wait */
        char pad[56];
    } fastlr_slots[FASTLR_POOL_MAX_WORKERS] __attribute__((aligned(64)));

    /* Dekker with the worker: seq bump before the read of sleeping here, sleeping = 1
       before its reads of wake_seq and seq there (all sequentially consistent). */
    static void fastlr_wake_worker(int index) {
        __atomic_add_fetch(&fastlr_slots[index].seq, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&fastlr_slots[index].sleeping, __ATOMIC_SEQ_CST))
            syscall(SYS_futex, &fastlr_slots[index].seq, FUTEX_WAKE_PRIVATE, 1,
                    NULL, NULL, 0);
    }

    static inline int64_t fastlr_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }

    /* Claims and runs chunks of the current job while there are any. Returns 0 when none
       are left, 1 when this worker should not spin for the next job either: the last job
       did not want it (index >= n_workers: a smaller n_threads than the pool), or it
       found itself on the caller's CPU (it would only take turns with the caller there:
       the other cores are busy). */
    static int fastlr_pool_claims(int index) {
        for (;;) {
            uint64_t w = __atomic_load_n(&fastlr_pool.claim, __ATOMIC_ACQUIRE);
            Py_ssize_t lo = (Py_ssize_t)((w >> FASTLR_IDX_BITS) & FASTLR_IDX_MASK);
            Py_ssize_t hi = (Py_ssize_t)(w & FASTLR_IDX_MASK);
            if (index >= FASTLR_LOAD(fastlr_pool.n_workers, RLX))
                return 1;               /* not wanted (a stale view at worst: the next
                                           publish wakes us again) */
            if (lo >= hi)
                return 0;               /* nothing (left) to claim */
            if (sched_getcpu() == FASTLR_LOAD(fastlr_pool.caller_cpu, RLX))
                return 1;
            if (!__atomic_compare_exchange_n(&fastlr_pool.claim, &w, w - 1, 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                continue;               /* claimed by someone else, or a newer job */
            /* chunk hi - 1 of the current job is ours: its fields stay as they are until
               we report it done */
            fastlr_chunk_fn fn = FASTLR_LOAD(fastlr_pool.fn, RLX);
            void* ctx = FASTLR_LOAD(fastlr_pool.ctx, RLX);
            Py_ssize_t n = FASTLR_LOAD(fastlr_pool.n, RLX);
            Py_ssize_t chunk = FASTLR_LOAD(fastlr_pool.chunk, RLX);
            Py_ssize_t start = (hi - 1) * chunk;
            Py_ssize_t stop = n - start < chunk ? n : start + chunk;
            fn(ctx, start, stop);
            __atomic_fetch_add(&fastlr_pool.worker_chunks, 1, RLX);
            __atomic_fetch_add(&fastlr_pool.done, 1, __ATOMIC_RELEASE);
        }
    }

    static void* fastlr_pool_worker(void* arg) {
        int index = (int)(intptr_t)arg;
        struct sched_param param;
        /* SCHED_BATCH: a woken worker never preempts the thread running on the CPU it is
           placed on (the caller's, when the other cores are busy); it runs at once on an
           idle core, and otherwise as an ordinary thread of the same weight */
        param.sched_priority = 0;
        sched_setscheduler(0, SCHED_BATCH, &param);
        for (;;) {
            int seen = __atomic_load_n(&fastlr_pool.wake_seq, __ATOMIC_SEQ_CST);
            int k, woken = 0, no_spin = fastlr_pool_claims(index)
                || sched_getcpu() == FASTLR_LOAD(fastlr_pool.caller_cpu, RLX);
            int64_t spin_end = fastlr_now_ns() + FASTLR_WORKER_SPIN_NS;
            for (k = 1; !no_spin; k++) {         /* never spin on the caller's core */
                if (FASTLR_LOAD(fastlr_pool.wake_seq, __ATOMIC_ACQUIRE) != seen) {
                    woken = 1;
                    break;
                }
                FASTLR_PAUSE();
                if (k % 64 == 0 && fastlr_now_ns() > spin_end)
                    break;
            }
            if (!woken) {
                /* sleep until our slot is bumped (see fastlr_wake_worker); a job
                   published since `seen` (wake_seq is bumped before any slot) means
                   no sleep at all */
                int slot_seen = __atomic_load_n(&fastlr_slots[index].seq, __ATOMIC_SEQ_CST);
                __atomic_store_n(&fastlr_slots[index].sleeping, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&fastlr_pool.wake_seq, __ATOMIC_SEQ_CST) == seen
                       && __atomic_load_n(&fastlr_slots[index].seq, __ATOMIC_SEQ_CST)
                          == slot_seen)
                    syscall(SYS_futex, &fastlr_slots[index].seq, FUTEX_WAIT_PRIVATE,
                            slot_seen, NULL, NULL, 0);
                __atomic_store_n(&fastlr_slots[index].sleeping, 0, __ATOMIC_SEQ_CST);
            }
            /* the chain: wake the next worker the latest job wants */
            if (index + 1 < FASTLR_LOAD(fastlr_pool.n_workers, RLX))
                fastlr_wake_worker(index + 1);
        }
        return NULL;
    }

    static void fastlr_pool_spawn(int want) {     /* owner only */
        sigset_t all, old;
        pthread_attr_t attr;
        pthread_t tid;
        int rc;
        if (want > FASTLR_POOL_MAX_WORKERS)
            want = FASTLR_POOL_MAX_WORKERS;
        if (fastlr_pool.n_started >= want || fastlr_pool.spawn_failed)
            return;
        if (pthread_attr_init(&attr) != 0) {
            fastlr_pool.spawn_failed = 1;
            return;
        }
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        sigfillset(&all);                 /* workers never take Python's signals */
        pthread_sigmask(SIG_SETMASK, &all, &old);
        while (fastlr_pool.n_started < want) {
            rc = pthread_create(&tid, &attr, fastlr_pool_worker,
                                (void*)(intptr_t)fastlr_pool.n_started);
            if (rc != 0) {
                fastlr_pool.spawn_failed = 1;
                break;
            }
            fastlr_pool.n_started++;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }

    /* fn(ctx, start, stop) over [0, n) in chunks of `chunk`, by the caller and up to
       n_threads - 1 workers. n_threads >= 2 and n > chunk here. */
    static void fastlr_pool_run(fastlr_chunk_fn fn, void* ctx, Py_ssize_t n,
                                Py_ssize_t chunk, int n_threads) {
        Py_ssize_t n_chunks = (n + chunk - 1) / chunk, mine = 0, i, k;
        int n_workers = n_threads - 1, expected = 0;
        int64_t t_start, t_wait, t_end, backoff;
        t_start = fastlr_now_ns();
        if (t_start < FASTLR_LOAD(fastlr_pool.backoff_until, RLX)
                || (n < FASTLR_WAKE_MIN
                    && __atomic_load_n(&fastlr_slots[0].sleeping, RLX))
                || !__atomic_compare_exchange_n(&fastlr_pool.busy, &expected, 1, 0,
                                                __ATOMIC_ACQUIRE, RLX)) {
            fn(ctx, 0, n);              /* backing off after a stall, a small call and a
                                           sleeping pool, or another call holds the pool:
                                           run on this thread */
            return;
        }
        fastlr_pool_spawn(n_workers);
        if (n_workers > fastlr_pool.n_started)
            n_workers = fastlr_pool.n_started;
        if (n_workers < 1) {
            __atomic_store_n(&fastlr_pool.busy, 0, __ATOMIC_RELEASE);
            fn(ctx, 0, n);
            return;
        }
        FASTLR_STORE(fastlr_pool.fn, fn, RLX);
        FASTLR_STORE(fastlr_pool.ctx, ctx, RLX);
        FASTLR_STORE(fastlr_pool.n, n, RLX);
        FASTLR_STORE(fastlr_pool.chunk, chunk, RLX);
        FASTLR_STORE(fastlr_pool.n_workers, n_workers, RLX);
        FASTLR_STORE(fastlr_pool.caller_cpu, sched_getcpu(), RLX);
        FASTLR_STORE(fastlr_pool.done, 0, RLX);
        fastlr_pool.gen = (fastlr_pool.gen + 1) & ((((uint64_t)1) << (64 - FASTLR_GEN_SHIFT)) - 1);
        __atomic_store_n(&fastlr_pool.claim,
                         (fastlr_pool.gen << FASTLR_GEN_SHIFT) | (uint64_t)n_chunks,
                         __ATOMIC_RELEASE);
        __atomic_add_fetch(&fastlr_pool.wake_seq, 1, __ATOMIC_SEQ_CST);
        fastlr_wake_worker(0);          /* a system call only if worker 0 sleeps */
        uint64_t w = __atomic_load_n(&fastlr_pool.claim, __ATOMIC_ACQUIRE);
        for (;;) {
            i = (Py_ssize_t)((w >> FASTLR_IDX_BITS) & FASTLR_IDX_MASK);      /* lo */
            if (i >= (Py_ssize_t)(w & FASTLR_IDX_MASK))                      /* hi */
                break;
            if (!__atomic_compare_exchange_n(&fastlr_pool.claim, &w, w + FASTLR_LO_ONE, 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                continue;               /* a worker took one from the back: w reloaded */
            fn(ctx, i * chunk, n - i * chunk < chunk ? n : i * chunk + chunk);
            mine++;
            w = __atomic_load_n(&fastlr_pool.claim, __ATOMIC_ACQUIRE);
        }
        /* only chunks that running workers claimed remain */
        t_wait = fastlr_now_ns();
        for (k = 0; __atomic_load_n(&fastlr_pool.done, __ATOMIC_ACQUIRE) != n_chunks - mine; k++) {
            if (k < FASTLR_CALLER_SPIN)
                FASTLR_PAUSE();
            else
                sched_yield();
        }
        t_end = fastlr_now_ns();
        /* the back-off state is only changed by the slot's owner */
        backoff = fastlr_pool.backoff_ns;
        if (t_end - t_wait > FASTLR_STALL_MIN_NS && 4 * (t_end - t_wait) > t_wait - t_start) {
            backoff = backoff < FASTLR_BACKOFF_MIN_NS ? FASTLR_BACKOFF_MIN_NS : 2 * backoff;
            if (backoff > FASTLR_BACKOFF_MAX_NS)
                backoff = FASTLR_BACKOFF_MAX_NS;
            FASTLR_STORE(fastlr_pool.backoff_until, t_end + backoff, RLX);
            fastlr_pool.stalls++;
        } else {
            backoff -= backoff / 16;
        }
        fastlr_pool.backoff_ns = backoff;
        __atomic_store_n(&fastlr_pool.busy, 0, __ATOMIC_RELEASE);
    }

    static void fastlr_pool_after_fork(void) {
        /* the child has none of the parent's workers and no call in flight */
        fastlr_pool.backoff_until = 0;
        fastlr_pool.backoff_ns = 0;
        fastlr_pool.n_started = 0;
        fastlr_pool.spawn_failed = 0;
        for (int k = 0; k < FASTLR_POOL_MAX_WORKERS; k++)
            fastlr_slots[k].sleeping = 0;
        fastlr_pool.claim = fastlr_pool.gen << FASTLR_GEN_SHIFT;   /* nothing to claim */
        fastlr_pool.done = 0;
        fastlr_pool.busy = 0;
    }

    static int fastlr_pool_workers(void) { return fastlr_pool.n_started; }
    static long long fastlr_pool_worker_chunks(void) {
        return (long long)__atomic_load_n(&fastlr_pool.worker_chunks, RLX);
    }
    static long long fastlr_pool_stalls(void) { return (long long)fastlr_pool.stalls; }
    #undef RLX
    #else
    #define FASTLR_HAVE_POOL 0
    #define FASTLR_POOL_MAX_CHUNKS (((Py_ssize_t)1) << 19)
    typedef void (*fastlr_chunk_fn)(void* ctx, Py_ssize_t start, Py_ssize_t stop);
    static void fastlr_pool_run(fastlr_chunk_fn fn, void* ctx, Py_ssize_t n,
                                Py_ssize_t chunk, int n_threads) {
        (void)chunk; (void)n_threads;
        fn(ctx, 0, n);
    }
    static void fastlr_pool_after_fork(void) {}
    static int fastlr_pool_workers(void) { return 0; }
    static long long fastlr_pool_worker_chunks(void) { return 0; }
    static long long fastlr_pool_stalls(void) { return 0; }
    #endif
    """
    int FASTLR_HAVE_OPENMP
    int FASTLR_HAVE_POOL
    Py_ssize_t FASTLR_POOL_MAX_CHUNKS
    int fastlr_omp_max_threads() noexcept nogil
    int fastlr_forked_child
    int fastlr_register_atfork() noexcept nogil
    void fastlr_pool_run(span_fn fn, void* ctx, Py_ssize_t n, Py_ssize_t chunk,
                         int n_threads) noexcept nogil
    int fastlr_pool_workers() noexcept nogil
    long long fastlr_pool_worker_chunks() noexcept nogil
    long long fastlr_pool_stalls() noexcept nogil

cdef enum:
    # Chunks handed to threads start on multiples of this many elements (the engine's
    # REDUCE_BLOCK; about 5 us of Adam on float32 in cache): small enough that a caller never
    # waits long for a worker's last chunk.
    SPAN_CHUNK = 16384
    # Limits on what one call validates: param, grad and up to three state buffers.
    MAX_ARRAYS = 5
    # The GIL is released for spans at least this long (below it, releasing costs more than
    # it lets other threads gain).
    NOGIL_MIN_SIZE = 4096


# The core loops in use: the fastest compiled variant this CPU runs (fastlr/_core/dispatch.py).
cdef const CoreTable* CORES = NULL
cdef str _cpu_target = ""


def _set_cores(str target):
    """Use the core loops compiled for ``target`` (a name of fastlr._core.dispatch.TARGETS).
    Not thread-safe: call it when no kernel is running. Optimizers built before the call
    keep the loops they were built with."""
    global CORES, _cpu_target
    from fastlr._core import dispatch as _dispatch, engine as _optim, sklearn_kernels as _sk

    capsule = _dispatch.table(target)
    _sk._set_cores(_dispatch.sklearn_table(target))
    CORES = <const CoreTable*>PyCapsule_GetPointer(capsule, b"fastlr.CoreTable")
    _CAPSULES[target] = capsule             # keep the capsule (and its module) alive
    _cpu_target = target
    _optim._set_cores(capsule)


_CAPSULES = {}


def cpu_target():
    """The instruction-set variant of the core loops in use.

    Returns
    -------
    str
        ``'x86-64-v4'``, ``'x86-64-v3'`` or ``'baseline'``.

    Examples
    --------
    >>> fastlr._kernels.cpu_target() in ("x86-64-v4", "x86-64-v3", "baseline")
    True
    """
    return _cpu_target


cdef int max_threads() noexcept nogil:
    if fastlr_forked_child:
        return 1
    return fastlr_omp_max_threads()


cdef int usable_threads(int n_threads) noexcept nogil:
    if fastlr_forked_child:
        return 1
    return n_threads


if fastlr_register_atfork() != 0:
    raise ImportError("fastlr._kernels: pthread_atfork failed")


cdef void parallel_spans(span_fn fn, void* ctx, Py_ssize_t n, int n_threads) noexcept nogil:
    cdef Py_ssize_t chunk, n_chunks, i
    if n_threads <= 1 or n < PARALLEL_MIN_SIZE or fastlr_forked_child:
        fn(ctx, 0, n)
        return
    # about 64 chunks per thread, each a multiple of SPAN_CHUNK elements
    chunk = (n + 64 * n_threads - 1) // (64 * n_threads)
    chunk = (chunk + SPAN_CHUNK - 1) // SPAN_CHUNK * SPAN_CHUNK
    n_chunks = (n + chunk - 1) // chunk
    if n_chunks > FASTLR_POOL_MAX_CHUNKS:
        chunk = ((n + FASTLR_POOL_MAX_CHUNKS - 1) // FASTLR_POOL_MAX_CHUNKS
                 + SPAN_CHUNK - 1) // SPAN_CHUNK * SPAN_CHUNK
        n_chunks = (n + chunk - 1) // chunk
    if n_chunks <= 1:
        fn(ctx, 0, n)
    elif FASTLR_HAVE_POOL:
        fastlr_pool_run(fn, ctx, n, chunk, n_threads)
    else:
        # no pool (not Linux, or no GCC-style atomics): OpenMP, or serial without it
        for i in prange(n_chunks, schedule="dynamic", num_threads=n_threads):
            fn(ctx, i * chunk, min(i * chunk + chunk, n))


def _pool_stats():
    """(workers started, chunks run by workers so far) of this process's chunk pool; for
    tests. (0, 0) where there is no pool (a build without OpenMP, not Linux)."""
    return fastlr_pool_workers(), fastlr_pool_worker_chunks()


def _pool_stalls():
    """Threaded calls so far that waited long for a descheduled pool thread (each starts
    a serial back-off period; see design note d); for benchmarks."""
    return fastlr_pool_stalls()


# ---------------------------------------------------------------------------------------
# Jobs: one update over one span of buffers, run through parallel_spans
# ---------------------------------------------------------------------------------------
ctypedef struct Job:
    core_fn core          # the per-dtype core, called on [start, stop)
    const void* coef      # its coefficients (the family's XCoef)
    char* ptrs[5]         # param, grad, then the state buffers (NULL when unused)
    Py_ssize_t itemsize


cdef inline char* _at(char* ptr, Py_ssize_t offset) noexcept nogil:
    return NULL if ptr == NULL else ptr + offset


cdef void job_span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Job* job = <Job*>ctx
    cdef char* ptrs[5]
    cdef Py_ssize_t offset = start * job.itemsize
    cdef int k
    for k in range(5):
        ptrs[k] = _at(job.ptrs[k], offset)
    job.core(ptrs, stop - start, job.coef)


cdef inline void run_job(core_fn core, const void* coef, Py_ssize_t itemsize,
                         void* p0, const void* p1, void* p2, void* p3, void* p4,
                         Py_ssize_t n, int n_threads) noexcept nogil:
    cdef Job job
    job.core = core
    job.coef = coef
    job.itemsize = itemsize
    job.ptrs[0] = <char*>p0
    job.ptrs[1] = <char*>p1
    job.ptrs[2] = <char*>p2
    job.ptrs[3] = <char*>p3
    job.ptrs[4] = <char*>p4
    parallel_spans(job_span, &job, n, n_threads)


# NAdam's mu_t for C callers that keep mu_product themselves.
cdef double nadam_mu(double beta1, double momentum_decay, int64_t step) noexcept nogil:
    return nadam_mu_of(beta1, momentum_decay, step)


# =======================================================================================
# Python layer: thread setting, validation, the callable kernels
# =======================================================================================

cdef int _n_threads_setting = 0      # 0: follow the OpenMP maximum, read at call time

#: True when this build has OpenMP (large spans use several threads; OpenMP itself only
#: gives the default thread count on Linux, where fastlr's own pool runs the threads).
HAVE_OPENMP = bool(FASTLR_HAVE_OPENMP)


def get_num_threads():
    """The thread count kernels use when called with ``n_threads=None``.

    It is the value given to :func:`set_num_threads`, or else the OpenMP maximum read now
    (so ``OMP_NUM_THREADS`` and threadpoolctl apply). A build without OpenMP returns 1,
    and so does a forked child until it calls :func:`set_num_threads`.

    Returns
    -------
    int
        The thread count (at least 1).

    Examples
    --------
    >>> fastlr.get_num_threads() >= 1
    True
    """
    if fastlr_forked_child:
        return 1
    if _n_threads_setting > 0:
        return _n_threads_setting
    return max(1, fastlr_omp_max_threads())


def set_num_threads(n_threads):
    """Set the thread count for ``n_threads=None``; ``None`` restores the OpenMP default.

    In a process forked from one that ran fastlr (a ``fork`` multiprocessing worker, a
    data loader), kernels run on one thread until the child calls ``set_num_threads``:
    the parent's pool threads do not exist in the child. fastlr's own pool starts afresh
    there (the child's first threaded call starts its threads), so calling this in the
    child is safe for fastlr's calls; code of your own that uses GNU OpenMP in the child
    after its parent did can still hang (use the ``spawn`` / ``forkserver`` start methods
    for that).

    Parameters
    ----------
    n_threads : int or None
        The thread count (>= 1) kernels use when called with ``n_threads=None``; ``None``
        restores the OpenMP default.

    Raises
    ------
    TypeError
        If ``n_threads`` is not an int or None.
    ValueError
        If ``n_threads`` is out of range (less than 1).

    Examples
    --------
    >>> fastlr.set_num_threads(1)
    >>> fastlr.get_num_threads()
    1
    >>> fastlr.set_num_threads(None)
    """
    global _n_threads_setting, fastlr_forked_child
    value = 0 if n_threads is None else threads_arg("fastlr.set_num_threads", n_threads)
    fastlr_forked_child = 0
    _n_threads_setting = value


cdef int _default_threads() noexcept nogil:
    """The thread count for n_threads=None (fastlr._core.args.threads_arg asks here)."""
    if fastlr_forked_child:
        return 1
    if _n_threads_setting > 0:
        return _n_threads_setting
    cdef int n = fastlr_omp_max_threads()
    return n if n > 1 else 1


set_threads_default(_default_threads)


def in_forked_child():
    """Whether this is a forked child where fastlr runs serial.

    See :func:`set_num_threads`: a child forked from a process that ran fastlr runs serial
    until it calls ``set_num_threads``.

    Returns
    -------
    bool
        True in such a child (before it calls ``set_num_threads``), False otherwise.

    Examples
    --------
    >>> fastlr._kernels.in_forked_child()
    False
    """
    return bool(fastlr_forked_child)


cdef str _dtype_name(cnp.ndarray a):
    return str(a.dtype)




ctypedef struct Checked:
    int n_arrays
    int type_num            # NPY_FLOAT or NPY_DOUBLE
    Py_ssize_t size         # elements per array
    Py_ssize_t itemsize
    char* data[MAX_ARRAYS]  # NULL for an absent optional buffer


cdef int _check_arrays(str fn, tuple names, tuple arrays, int n_required,
                       Checked* out, int state_type=-1) except -1:
    """Validate param (arrays[0]), grad (arrays[1]) and state buffers (the rest) for an
    in-place update; the first n_required must be arrays, later ones may be None (absent).
    state_type >= 0: the state buffers hold that NumPy type (uint16: bfloat16 bits) and the
    param is float32. Raises before anything is written."""
    cdef int k, n = len(arrays)
    cdef cnp.ndarray p, a
    cdef int type_num
    cdef bint c_order = True
    cdef char* hi[MAX_ARRAYS]
    out.n_arrays = n
    for k in range(n):
        obj = arrays[k]
        name = names[k]
        if obj is None and k >= n_required:
            out.data[k] = NULL
            continue
        check_ndarray(fn, name, obj, "float32 or float64")
        a = <cnp.ndarray>obj
        type_num = cnp.PyArray_TYPE(a)
        if k == 0:
            p = a
            if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
                raise TypeError(f"{fn}: param must have dtype float32 or float64, got "
                                f"{_dtype_name(a)}")
            if state_type >= 0 and type_num != cnp.NPY_FLOAT:
                raise TypeError(f"{fn}: param must have dtype float32 (bfloat16 state keeps "
                                f"float32 params), got {_dtype_name(a)}")
            out.type_num = type_num
            out.size = cnp.PyArray_SIZE(a)
            out.itemsize = cnp.PyArray_ITEMSIZE(a)
            check_param_layout(fn, a)
            c_order = cnp.PyArray_IS_C_CONTIGUOUS(a)
        else:
            if k >= 2 and state_type >= 0:
                if type_num != state_type:
                    raise TypeError(f"{fn}: {name} must have dtype uint16 (the bit patterns "
                                    f"of bfloat16 state), got {_dtype_name(a)}")
            elif type_num != out.type_num:
                raise TypeError(f"{fn}: {name} has dtype {_dtype_name(a)} but param has dtype "
                                f"{_dtype_name(p)}; the arrays of one parameter share its "
                                f"dtype (float32 or float64)")
            check_like_param(fn, name, a, p, c_order, k != 1)
        check_buffer(fn, name, a, k != 1)
        out.data[k] = <char*>cnp.PyArray_DATA(a)
        hi[k] = out.data[k] + out.size * cnp.PyArray_ITEMSIZE(a)
    # Overlap: no written buffer may share memory with another buffer (the grad included).
    if out.size > 0:
        check_overlap(fn, names, out.data, hi, n)
    return 0


cdef int _need(str fn, bint needed, object buf, str buf_name, str why) except -1:
    if needed and buf is None:
        raise ValueError(f"{fn}: {why} needs {buf_name}, got None "
                         f"(fastlr.kernels.make_state allocates it)")
    if not needed and buf is not None:
        raise ValueError(f"{fn}: {buf_name} was given but {why} does not use it; pass None")
    return 0


cdef int _run(core_fn core, const void* coef, Checked* c, int nt) except -1:
    """Run a validated update: the GIL is released for large arrays."""
    cdef int k
    for k in range(c.n_arrays, MAX_ARRAYS):
        c.data[k] = NULL
    if c.size >= NOGIL_MIN_SIZE:
        with nogil:
            run_job(core, coef, c.itemsize, c.data[0], c.data[1], c.data[2], c.data[3],
                    c.data[4], c.size, nt)
    else:
        run_job(core, coef, c.itemsize, c.data[0], c.data[1], c.data[2], c.data[3],
                c.data[4], c.size, nt)
    return 0


# The C API and the validated kernels, per family of the table (generated).
include "_kernels_api.pxi"


def _init_cores():
    from fastlr._core import dispatch as _dispatch
    _set_cores(_dispatch.default_target())
    _init_low_precision()


# =======================================================================================
# The C API of the 8-bit state and 16-bit params: their loops live in fastlr._core.int8state
# and fastlr._core.mixed (built per instruction set, fastlr/_core/dispatch.py); these entry
# points call the build dispatch.module picks, through the pointers its _c_api gives
# (set once, when this module is imported; FASTLR_CPU caps the level as for fastlr.kernels).
# =======================================================================================
from libc.stdint cimport uint8_t, uint16_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort

ctypedef void (*int8_f32_fn)(float*, const float*, uint8_t*, float*, uint8_t*, float*,
                             Py_ssize_t, const AdamHyper*, int) noexcept nogil
ctypedef void (*p16_f32_fn)(const Param16*, float*, float*, Py_ssize_t, const AdamHyper*,
                            int) noexcept nogil
ctypedef void (*p16_bf16_fn)(const Param16*, uint16_t*, uint16_t*, Py_ssize_t,
                             const AdamHyper*, int) noexcept nogil
ctypedef void (*p16_int8_fn)(const Param16*, uint8_t*, float*, uint8_t*, float*, Py_ssize_t,
                             const AdamHyper*, int) noexcept nogil

cdef int8_f32_fn _ADAM_F32_INT8 = NULL
cdef p16_f32_fn _ADAM_16_F32 = NULL
cdef p16_bf16_fn _ADAM_16_BF16 = NULL
cdef p16_int8_fn _ADAM_16_INT8 = NULL
_LOW_PRECISION_API = {}         # the capsules (and so their modules), kept alive


def _init_low_precision():
    global _ADAM_F32_INT8, _ADAM_16_F32, _ADAM_16_BF16, _ADAM_16_INT8
    from fastlr._core import dispatch as _dispatch
    for name in ("int8state", "mixed"):
        _LOW_PRECISION_API.update(_dispatch.module(name)._c_api())

    _ADAM_F32_INT8 = <int8_f32_fn>_c_api_pointer("adam_f32_int8state")
    _ADAM_16_F32 = <p16_f32_fn>_c_api_pointer("adam_16_f32state")
    _ADAM_16_BF16 = <p16_bf16_fn>_c_api_pointer("adam_16_bf16state")
    _ADAM_16_INT8 = <p16_int8_fn>_c_api_pointer("adam_16_int8state")


cdef void* _c_api_pointer(str name) except NULL:
    return PyCapsule_GetPointer(_LOW_PRECISION_API[name], b"fastlr.c_api")


cdef void _unset(const char* name) noexcept nogil:
    # a call before `import fastlr` finished (it sets the pointers): say so rather than
    # jump to NULL
    fprintf(stderr, b"fastlr: %s was called before fastlr was imported (import fastlr "
            b"first)\n", name)
    abort()


cdef void adam_f32_int8state(float* param, const float* grad, uint8_t* exp_avg,
                             float* exp_avg_scale, uint8_t* exp_avg_sq,
                             float* exp_avg_sq_scale, Py_ssize_t n, const AdamHyper* h,
                             int n_threads) noexcept nogil:
    if _ADAM_F32_INT8 == NULL:
        _unset(b"adam_f32_int8state")
    _ADAM_F32_INT8(param, grad, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, n, h,
                   n_threads)


cdef void adam_16_f32state(const Param16* p, float* exp_avg, float* exp_avg_sq, Py_ssize_t n,
                           const AdamHyper* h, int n_threads) noexcept nogil:
    if _ADAM_16_F32 == NULL:
        _unset(b"adam_16_f32state")
    _ADAM_16_F32(p, exp_avg, exp_avg_sq, n, h, n_threads)


cdef void adam_16_bf16state(const Param16* p, uint16_t* exp_avg, uint16_t* exp_avg_sq,
                            Py_ssize_t n, const AdamHyper* h, int n_threads) noexcept nogil:
    if _ADAM_16_BF16 == NULL:
        _unset(b"adam_16_bf16state")
    _ADAM_16_BF16(p, exp_avg, exp_avg_sq, n, h, n_threads)


cdef void adam_16_int8state(const Param16* p, uint8_t* exp_avg, float* exp_avg_scale,
                            uint8_t* exp_avg_sq, float* exp_avg_sq_scale, Py_ssize_t n,
                            const AdamHyper* h, int n_threads) noexcept nogil:
    if _ADAM_16_INT8 == NULL:
        _unset(b"adam_16_int8state")
    _ADAM_16_INT8(p, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, n, h, n_threads)


# =======================================================================================
# Adam / AdamW with bfloat16 state: the C API function and the validated kernel
# =======================================================================================
from libc.stdint cimport uint16_t


cdef void _bf16_state_span(void* ctx, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    # param and grad are float32 (4 bytes an element), the state bfloat16 bits (2)
    cdef Job* job = <Job*>ctx
    cdef char* ptrs[5]
    cdef int k
    for k in range(5):
        ptrs[k] = _at(job.ptrs[k], start * (4 if k < 2 else 2))
    job.core(ptrs, stop - start, job.coef)


cdef void adam_f32_bf16state(float* param, const float* grad, uint16_t* exp_avg,
                             uint16_t* exp_avg_sq, uint16_t* max_exp_avg_sq, Py_ssize_t n,
                             const AdamHyper* h, int n_threads) noexcept nogil:
    cdef AdamCoef c
    cdef Job job
    adam_coef(h, &c)
    job.core = CORES.bf16_state[K_ADAM]
    job.coef = &c
    job.itemsize = 4
    job.ptrs[0] = <char*>param
    job.ptrs[1] = <char*>grad
    job.ptrs[2] = <char*>exp_avg
    job.ptrs[3] = <char*>exp_avg_sq
    job.ptrs[4] = <char*>max_exp_avg_sq
    parallel_spans(_bf16_state_span, &job, n, n_threads)


def adam_bf16_state(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr,
                    beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False, n_threads=None):
    """Adam / AdamW with the moments kept as bfloat16 (``state_dtype="bfloat16"``), in place.

    float32 ``param`` and ``grad``; ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``,
    which selects AMSGrad) are ``uint16`` arrays of bfloat16 bit patterns. Each element's
    moments are widened to float32 (exactly), updated as :func:`adam` updates them, drive
    this step's update unrounded, and are stored rounded stochastically (up with probability
    the dropped low 16 bits / 65536; the random bits a hash of the param's bits and
    ``step``: the same bits for any thread count). Its NumPy twin is
    :func:`fastlr.reference.adam_bf16_state` (bit for bit). Returns None.

    Parameters
    ----------
    param : numpy.ndarray
        float32, C- or F-contiguous and writeable; updated in place.
    grad : numpy.ndarray
        float32, param's shape and memory layout; only read.
    exp_avg, exp_avg_sq : numpy.ndarray
        uint16 (bfloat16 bits), param's shape and layout, updated in place; start at zeros.
    max_exp_avg_sq : numpy.ndarray, optional
        uint16, the same; passing it selects AMSGrad.
    step : int
        The 1-based update number of these buffers, >= 1.
    lr : float
        learning rate (parameter units per gradient unit), a finite number >= 0.
    beta1, beta2 : float, default 0.9, 0.999
        moment decays, in [0, 1).
    eps : float, default 1e-8
        added to the denominator, a finite number >= 0.
    weight_decay : float, default 0.0
        a finite number >= 0 (L2, or decoupled with ``decoupled_weight_decay``).
    decoupled_weight_decay : bool, default False
        ``p *= 1 - lr * wd`` (AdamW) instead of L2.
    maximize : bool, default False
        ascend instead of descend.
    n_threads : int, optional
        threads to use (None: :func:`get_num_threads`); the result does not depend on it.

    Raises
    ------
    TypeError
        If an argument has the wrong type or dtype (param float32, state uint16).
    ValueError
        If shapes or layouts differ, a buffer is read-only or buffers overlap, or a
        hyperparameter is out of range (nothing is written).

    Examples
    --------
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)
    >>> m = np.zeros(3, np.uint16); v = np.zeros(3, np.uint16)
    >>> kernels.adam_bf16_state(p, g, m, v, step=1, lr=0.1)
    >>> p
    array([0.9, 0.9, 0.9], dtype=float32)
    """
    cdef str fn = "fastlr.kernels.adam_bf16_state"
    cdef AdamHyper h
    cdef Checked c
    h.step = step_arg(fn, step)
    h.lr = checked_real(fn, "lr", lr, NONNEG)
    h.beta1 = checked_real(fn, "beta1", beta1, UNIT)
    h.beta2 = checked_real(fn, "beta2", beta2, UNIT)
    h.eps = checked_real(fn, "eps", eps, NONNEG)
    h.weight_decay = checked_real(fn, "weight_decay", weight_decay, NONNEG)
    h.decoupled_weight_decay = flag_arg(fn, "decoupled_weight_decay", decoupled_weight_decay)
    h.maximize = flag_arg(fn, "maximize", maximize)
    cdef int nt = threads_arg(fn, n_threads)
    _check_arrays(fn, ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                  (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq), 4, &c, cnp.NPY_UINT16)
    if c.size >= NOGIL_MIN_SIZE:
        with nogil:
            adam_f32_bf16state(<float*>c.data[0], <const float*>c.data[1],
                               <uint16_t*>c.data[2], <uint16_t*>c.data[3],
                               <uint16_t*>c.data[4], c.size, &h, nt)
    else:
        adam_f32_bf16state(<float*>c.data[0], <const float*>c.data[1], <uint16_t*>c.data[2],
                           <uint16_t*>c.data[3], <uint16_t*>c.data[4], c.size, &h, nt)
