"""Reliability under Python threads (docs/threads_and_processes.md).

* The kernels and the optimizer step release the GIL. Proved structurally, not by timing:
  a worker thread repeats a call that moves every element of a large array to the same new,
  smaller value, first element first; meanwhile this thread loops, counting, and reads the
  first element and then the last. Seeing the last element still at an *older* value than
  the first already had means one call was running between writing the two at both reads:
  it ran while this thread held the GIL. A control with a call below NOGIL_MIN_SIZE (which
  keeps the GIL) shows the same observer then sees exactly zero such states.
* Several optimizers (different classes, float32/float64, schedules, a Python callable,
  clipping, OpenMP threads) and every kernel stepped concurrently from Python threads give
  the same bits as sequential runs.
* One optimizer stepped from two threads at once: the second gets a RuntimeError saying
  so, forced deterministically (a Python-callable lr, evaluated inside step, blocks the
  first step on an Event); nothing is corrupted and continuing gives the sequential result.
"""

import threading

import numpy as np
import pytest

import fastlr
from fastlr import kernels, schedules

from _reliability_helpers import KERNEL_CALLS, call_kernel, kernel_buffers, run_every_kernel

N_BIG = 1 << 20          # >= NOGIL_MIN_SIZE (4096): the GIL is released; a multiple of 64
N_SMALL = 2048           # < NOGIL_MIN_SIZE: the call keeps the GIL
TORN_WANTED = 50
MAX_CALLS = 3000


def watch(p, call, stop_when, max_calls=MAX_CALLS):
    """Run ``call()`` repeatedly in a worker thread until ``stop_when(stats)`` (or
    ``max_calls`` calls) while this thread counts loop iterations and "torn" observations:
    ``p[-1]`` read after ``p[0]`` and holding a larger (older) value. The loop runs
    between two events: the worker's start and its end."""
    started, finished, enough = threading.Event(), threading.Event(), threading.Event()
    stats = {"count": 0, "torn": 0, "changes": 0, "calls": 0}
    errors = []

    def worker():
        started.set()
        try:
            while not enough.is_set() and stats["calls"] < max_calls:
                call()
                stats["calls"] += 1
        except BaseException as error:      # pragma: no cover - reported below
            errors.append(error)
        finally:
            finished.set()

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait()
    count = torn = changes = 0
    prev = p.item(0)
    while not finished.is_set():
        first = p.item(0)
        last = p.item(-1)
        count += 1
        if last > first:
            torn += 1
        if first != prev:
            changes += 1
            prev = first
        stats.update(count=count, torn=torn, changes=changes)
        if stop_when(stats):
            enough.set()
    thread.join()
    assert not errors, errors
    return stats


def _kernel_call(name, n):
    p = np.ones(n, dtype=np.float64)
    g = np.full(n, 1e-3, dtype=np.float64)      # positive: every update lowers p
    state = kernel_buffers(name, p)
    counter = {"t": 0, "mu": 1.0}

    def call():
        counter["t"] += 1
        r = call_kernel(kernels, name, p, g, state, counter["t"], n_threads=1,
                        mu_product=counter["mu"], weight_decay=0.0)
        if name == "nadam":
            counter["mu"] = r
    return p, call


@pytest.mark.parametrize("name", list(KERNEL_CALLS))
def test_kernel_releases_the_gil(name):
    p, call = _kernel_call(name, N_BIG)
    stats = watch(p, call, lambda s: s["torn"] >= TORN_WANTED)
    # the premise: every element followed the same trajectory (so "torn" means mid-call)
    assert (p == p[0]).all() and p[0] < 1.0
    assert stats["torn"] >= TORN_WANTED, stats
    assert stats["count"] >= stats["torn"]


@pytest.mark.parametrize("cls", [fastlr.SGD, fastlr.Adam])
def test_optimizer_step_releases_the_gil(cls):
    p = np.ones(N_BIG, dtype=np.float64)
    g = np.full(N_BIG, 1e-3, dtype=np.float64)
    opt = cls([p], lr=schedules.cosine(1e-2, 10**6), n_threads=1)
    stats = watch(p, lambda: opt.step([g]), lambda s: s["torn"] >= TORN_WANTED)
    assert (p == p[0]).all() and p[0] < 1.0
    assert stats["torn"] >= TORN_WANTED, stats
    assert opt.steps == stats["calls"]


def test_control_a_call_that_keeps_the_gil_is_never_seen_mid_call():
    """The observer is sound: a kernel call below NOGIL_MIN_SIZE holds the GIL, and then,
    although this thread interleaves with the calls (it sees p[0] change several times,
    after switches of the GIL between calls), it never sees a call half done."""
    p, call = _kernel_call("sgd", N_SMALL)
    stats = watch(p, call, lambda s: s["changes"] >= 3, max_calls=10**6)
    assert stats["changes"] >= 3, stats        # it ran between calls
    assert stats["torn"] == 0, stats           # ... never during one


# ---- concurrent optimizers: the same bits as sequential runs ----------------------------
def _problems():
    """(name, factory(params) -> optimizer, dtype, shapes)."""
    big = [(40000,), (300, 200)]        # 100k elements: above PARALLEL_MIN_SIZE (32768)
    return [
        ("sgd-nesterov-f32", lambda ps: fastlr.SGD(
            ps, lr=schedules.step_decay(0.1, 5, 0.5), momentum=0.9, nesterov=True,
            weight_decay=1e-4, max_grad_norm=1.0, n_threads=2), np.float32, big),
        ("adam-amsgrad-f64", lambda ps: fastlr.Adam(
            ps, lr=schedules.warmup_cosine(1e-2, warmup_steps=5, total_steps=40),
            amsgrad=True, max_grad_norm=0.5, n_threads=2), np.float64, big),
        ("rmsprop-callable-f32", lambda ps: fastlr.RMSprop(
            ps, lr=lambda t: 0.01 / (1 + t), centered=True, momentum=0.9, n_threads=2),
         np.float32, big),
        ("adamw-groups-f64", lambda ps: fastlr.AdamW(
            [{"params": ps[:1], "lr": schedules.cosine(1e-2, 30)},
             {"params": ps[1:], "lr": 3e-3, "weight_decay": 0.1}], n_threads=1,
            skip_nonfinite=True), np.float64, big),
        ("lion-f32", lambda ps: fastlr.Lion(
            ps, lr=schedules.linear(1e-3, total_steps=10), max_grad_norm=2.0, n_threads=2),
         np.float32, [(5000,), (7, 13)]),
        ("nadam-f64", lambda ps: fastlr.NAdam(ps, lr=2e-3, n_threads=2), np.float64, big),
    ]


STEPS = 20


def _inputs(k, dtype, shapes):
    rng = np.random.default_rng(100 + k)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(STEPS)]
    return params, grads


def _final(opt):
    sd = opt.state_dict()
    return [p.copy() for p in opt.params], sd


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        assert x.tobytes() == y.tobytes()
    assert sa["steps"] == sb["steps"]
    for i in sa["state"]:
        for key, value in sa["state"][i].items():
            other = sb["state"][i][key]
            if isinstance(value, np.ndarray):
                assert value.tobytes() == other.tobytes(), (i, key)
            else:
                assert value == other, (i, key)


def test_concurrent_optimizers_match_sequential_runs():
    problems = _problems()
    sequential = []
    for k, (_, make, dtype, shapes) in enumerate(problems):
        params, grads = _inputs(k, dtype, shapes)
        opt = make(params)
        for g in grads:
            opt.step(g)
        sequential.append(_final(opt))

    barrier = threading.Barrier(len(problems))
    results, errors = [None] * len(problems), []

    def run(k, make, dtype, shapes):
        try:
            params, grads = _inputs(k, dtype, shapes)
            opt = make(params)
            for g in grads:
                barrier.wait(timeout=60)        # every optimizer steps at the same time
                opt.step(g)
            results[k] = _final(opt)
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k, make, dtype, shapes))
               for k, (_, make, dtype, shapes) in enumerate(problems)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, *_), seq, conc in zip(problems, sequential, results):
        _same(seq, conc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_concurrent_kernels_on_separate_buffers_match_sequential_calls(dtype):
    n, n_threads = 50000, 2      # each call above PARALLEL_MIN_SIZE: OpenMP teams per thread
    want = [run_every_kernel(kernels, dtype, n, n_threads, seed=s) for s in range(4)]
    got, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def run(s):
        try:
            barrier.wait(timeout=60)
            got[s] = run_every_kernel(kernels, dtype, n, n_threads, seed=s)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for w, g in zip(want, got):
        for name in KERNEL_CALLS:
            for a, b in zip(w[name], g[name]):
                assert a.tobytes() == b.tobytes(), name


# ---- one optimizer, two threads: refused, nothing corrupted -------------------------------
def _blocking_lr():
    """A Python-callable lr (evaluated inside step, with the optimizer's lock held) that
    blocks the first time it is called from a thread that asked for it."""
    entered, release = threading.Event(), threading.Event()
    block_in = set()

    def lr(t):
        if threading.get_ident() in block_in:
            block_in.discard(threading.get_ident())
            entered.set()
            assert release.wait(60)
        return 0.01 / (1 + t)
    return lr, entered, release, block_in


@pytest.mark.parametrize("cls", [fastlr.Adam, fastlr.SGD])
def test_one_optimizer_stepped_from_two_threads_is_refused(cls):
    rng = np.random.default_rng(7)
    p0 = [rng.standard_normal(50000), rng.standard_normal((30, 40))]
    grads = [[rng.standard_normal(p.shape) for p in p0] for _ in range(6)]
    extra = {"momentum": 0.9} if cls is fastlr.SGD else {}

    want_params = [p.copy() for p in p0]
    want = cls(want_params, lr=lambda t: 0.01 / (1 + t), n_threads=2, **extra)
    for g in grads:
        want.step(g)

    lr, entered, release, block_in = _blocking_lr()
    params = [p.copy() for p in p0]
    opt = cls(params, lr=lr, n_threads=2, **extra)
    opt.step(grads[0])
    errors = []

    def first():
        block_in.add(threading.get_ident())
        try:
            opt.step(grads[1])
        except BaseException as error:      # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(60)          # the first step is inside step, holding the lock
        snapshot = [p.copy() for p in params]
        with pytest.raises(RuntimeError, match=r"\.step: the optimizer is being stepped or "
                                               r"changed by another thread"):
            opt.step(grads[1])
        with pytest.raises(RuntimeError, match="another thread"):
            opt.load_state_dict(want.state_dict())
        with pytest.raises(RuntimeError, match="another thread"):
            opt.add_param_group({"params": [np.zeros(3)]})
        # the refused calls touched nothing
        for a, b in zip(params, snapshot):
            assert a.tobytes() == b.tobytes()
        assert opt.steps == 1
    finally:
        release.set()
        thread.join()
    assert not errors, errors
    assert opt.steps == 2 and len(opt.param_groups) == 1
    for g in grads[2:]:
        opt.step(g)
    _same(_final(want), _final(opt))


class _LateLock:
    """A lock whose first non-blocking acquire fails as if another thread held it, and
    which then is free: the other thread's step ended between two checks."""

    def __init__(self):
        self._lock = threading.Lock()
        self.failed = False

    def acquire(self, blocking=True, timeout=-1):
        if not self.failed and not blocking:
            self.failed = True
            return False
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()

    def locked(self):
        return self._lock.locked()


def test_refused_step_leaves_the_lock_consistent():
    """A step refused because another thread held the optimizer, which let go just then,
    must neither run unlocked nor release a lock it does not hold."""
    p = np.ones(10)
    opt = fastlr.SGD([p], lr=0.1)
    opt._busy = lock = _LateLock()
    with pytest.raises(RuntimeError, match="another thread"):
        opt.step([np.ones(10)])
    assert not lock.locked()
    assert opt.steps == 0 and (p == 1).all()
    opt.step([np.ones(10)])
    assert opt.steps == 1 and not lock.locked()
