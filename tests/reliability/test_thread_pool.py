"""The chunk pool behind every threaded call (fastlr/_kernels.pyx, design note d;
docs/threads_and_processes.md).

A threaded call publishes its chunks; the calling thread claims them itself and pool
threads help when they are running. No timing is asserted here (benchmarks/
bench_threads_busy.py measures); these tests check what must hold on any machine, loaded
or not:

* the same bits for every thread count (so for every split and every claiming order):
  every kernel, both dtypes, sizes around the serial threshold and the chunk boundaries,
  optimizers with clipping and the non-finite scan (the fixed-block reductions), and
  clip_grad_norm;
* many Python threads calling threaded kernels at once, with different thread counts:
  each call completes with the sequential result (the pool has one job slot; a caller that
  finds it taken runs on its own thread);
* fork after threaded calls, and fork while other threads are inside threaded calls: the
  child runs serial (no hang), and after set_num_threads it builds a fresh pool and runs
  threaded with the same bits;
* a stress run of tiny and large calls, changing thread counts, from several threads,
  bounded by a subprocess timeout (a hang fails instead of hanging the suite);
* set_num_threads and OMP_NUM_THREADS decide how many pool threads a call may use.
"""

import json
import sys
import threading

import numpy as np
import pytest

import fastlr
from fastlr import kernels

from _reliability_helpers import (KERNEL_CALLS, call_kernel, digest_every_kernel,
                                  kernel_buffers, run_script)

HAVE_POOL = kernels.HAVE_OPENMP and sys.platform == "linux"
CHUNK = 16384                 # SPAN_CHUNK: chunks start on multiples of this many elements
THREADS = [1, 2, 3, 4, 7]
SIZES = [32767, 32768, 32769, 2 * CHUNK + 1, 5 * CHUNK - 3, (1 << 20) + 4099]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_every_kernel_same_bits_for_every_thread_count(dtype, n):
    want = digest_every_kernel(kernels, dtype, n, 1, steps=2, seed=n)
    for nt in THREADS[1:]:
        assert digest_every_kernel(kernels, dtype, n, nt, steps=2, seed=n) == want, nt


def test_many_chunks_same_bits():
    """3M elements: the chunk size depends on the thread count (about 64 chunks per
    thread), so every count splits differently."""
    n = 3 * (1 << 20) + 12345
    want = digest_every_kernel(kernels, np.float32, n, 1, steps=1)
    for nt in (2, 5, 8):
        assert digest_every_kernel(kernels, np.float32, n, nt, steps=1) == want, nt


def _optimizer_run(cls, n_threads, dtype, **options):
    rng = np.random.default_rng(5)
    shapes = [(70001,), (300, 211), (17,), (CHUNK + 1,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(s) * 3).astype(dtype) for s in shapes] for _ in range(4)]
    grads[2][1][5, 7] = np.nan           # skipped by skip_nonfinite, else propagated
    opt = cls(params, n_threads=n_threads, **options)
    norms = []
    for g in grads:
        opt.step(g)
        norms.append(opt.last_grad_norm)
    return [p.tobytes() for p in opt.params], np.array(norms).tobytes(), opt.steps


@pytest.mark.parametrize("cls,options", [
    (fastlr.Adam, dict(lr=1e-3, max_grad_norm=1.0)),
    (fastlr.AdamW, dict(lr=1e-3, max_grad_norm=0.5, skip_nonfinite=True)),
    (fastlr.SGD, dict(lr=0.1, momentum=0.9, skip_nonfinite=True)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_reductions_same_bits_for_every_thread_count(cls, options, dtype):
    want = _optimizer_run(cls, 1, dtype, **options)
    for nt in THREADS[1:]:
        assert _optimizer_run(cls, nt, dtype, **options) == want, nt


def test_clip_grad_norm_same_bits_for_every_thread_count():
    rng = np.random.default_rng(9)
    base = [rng.standard_normal(s) for s in [(1 << 20) + 5, (33, 1000), (3,)]]
    base += [x.astype(np.float32) for x in base]
    want = None
    for nt in THREADS:
        g = [x.copy() for x in base]
        norm = fastlr.clip_grad_norm(g, 1.0, n_threads=nt)
        got = (np.float64(norm).tobytes(), [x.tobytes() for x in g])
        want = got if want is None else want
        assert got == want, nt


def _sequential(name, n, dtype, seed, steps):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 0.1).astype(dtype)
    state = kernel_buffers(name, p)
    return p, g, state


def test_many_python_threads_calling_threaded_kernels():
    """8 Python threads, each its own buffers and thread count (1 to 4), 12 calls each, all
    released together: the same bits as the calls one after another."""
    n, steps, names = 200_003, 12, list(KERNEL_CALLS)
    jobs = [(names[k % len(names)], np.float32 if k % 2 else np.float64, k, 1 + k % 4)
            for k in range(8)]

    def run(name, dtype, seed, nt, barrier=None):
        p, g, state = _sequential(name, n, dtype, seed, steps)
        mu = 1.0
        for t in range(1, steps + 1):
            if barrier is not None:
                barrier.wait(timeout=60)
            r = call_kernel(kernels, name, p, g, state, t, n_threads=nt, mu_product=mu)
            if name == "nadam":
                mu = r
        return [p.tobytes()] + [b.tobytes() for b in state.values()]

    want = [run(*job) for job in jobs]
    barrier = threading.Barrier(len(jobs))
    got, errors = [None] * len(jobs), []

    def worker(k):
        try:
            got[k] = run(*jobs[k], barrier=barrier)
        except BaseException as error:      # pragma: no cover - reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a kernel call hung"
    assert not errors, errors
    assert got == want


STRESS_SCRIPT = r"""
import json, threading
import numpy as np
import fastlr
from fastlr import kernels

SIZES = [1, 100, 4095, 4096, 32767, 32768, 65536 + 7, 1 << 20]

def run(seed, out, rounds=40):
    rng = np.random.default_rng(seed)
    bufs = {}
    for n in SIZES:
        p = rng.standard_normal(n).astype(np.float32)
        bufs[n] = (p, (rng.standard_normal(n) * 0.1).astype(np.float32),
                   np.zeros(n, np.float32), np.zeros(n, np.float32))
    for r in range(rounds):
        for i, n in enumerate(SIZES[::1 if r % 2 else -1]):
            p, g, m, v = bufs[n]
            kernels.adam(p, g, m, v, step=r + 1, lr=1e-3, n_threads=1 + (r + i + seed) % 4)
    out[seed] = [b.tobytes() for n in SIZES for b in bufs[n]]

# the sequential answer: n_threads=1 everywhere gives the same bits
want = {}
for seed in range(4):
    run(seed, want)
got = {}
for trial in range(3):
    threads = [threading.Thread(target=run, args=(seed, got)) for seed in range(4)]
    for t in threads:
        t.start()
    for seed in range(60):                  # meanwhile: changing the default thread count
        fastlr.set_num_threads(1 + seed % 3)
        x = np.ones(40000, np.float32)
        kernels.sgd(x, x.copy(), lr=0.1, step=1)
    fastlr.set_num_threads(None)
    for t in threads:
        t.join()
    assert got == want, trial
print(json.dumps({"ok": True, "pool": list(fastlr._kernels._pool_stats())}))
"""


def test_stress_tiny_and_large_calls_never_hang():
    out = run_script(STRESS_SCRIPT, timeout=240, env={"OMP_NUM_THREADS": "2"})
    assert json.loads(out.strip().splitlines()[-1])["ok"] is True


FORK_SCRIPT = r"""
import json, os
import fastlr
from fastlr import _kernels
import _reliability_helpers as H


def until_workers(nt, seconds=60):
    # threaded calls until the pool has nt - 1 workers: a call runs serial without starting
    # workers while the pool backs off after a stall (a loaded machine), so retry
    import time
    import numpy as np
    from fastlr import kernels
    x = np.ones(1 << 20, np.float32)
    deadline = time.monotonic() + (seconds if fastlr.kernels.HAVE_OPENMP else 0)
    while _kernels._pool_stats()[0] < nt - 1 and time.monotonic() < deadline:
        kernels.sgd(x, x.copy(), lr=0.0, step=1, n_threads=nt)
        time.sleep(0.01)

parent = H.fork_job()                          # threaded: the pool has a worker now
until_workers(2)
parent_pool = list(_kernels._pool_stats())
pid = os.fork()
if pid == 0:
    code = 1
    try:
        res = {"serial": H.fork_job(), "pool_serial": list(_kernels._pool_stats())}
        fastlr.set_num_threads(3)              # a fresh pool in the child
        res["threaded"] = H.fork_job()
        until_workers(3)
        res["pool_threaded"] = list(_kernels._pool_stats())
        with open(os.environ["FORK_OUT"], "w") as f:
            json.dump(res, f)
        code = 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
with open(os.environ["FORK_OUT"]) as f:
    print(json.dumps({"parent": parent, "parent_pool": parent_pool, "child": json.load(f)}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics: Linux")
def test_fork_after_threaded_calls_then_set_num_threads_in_the_child(tmp_path):
    out = run_script(FORK_SCRIPT, timeout=300,
                     env={"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1",
                          "FORK_OUT": str(tmp_path / "child.json")})
    out = json.loads(out.strip().splitlines()[-1])
    parent, child = out["parent"], out["child"]
    assert child["serial"]["forked"] is True and child["serial"]["threads"] == 1
    assert child["threaded"]["forked"] is False and child["threaded"]["threads"] == 3
    assert child["serial"]["digest"] == parent["digest"]
    assert child["threaded"]["digest"] == parent["digest"]
    if HAVE_POOL:
        assert out["parent_pool"][0] == 1                 # OMP_NUM_THREADS=2: one worker
        assert child["pool_serial"][0] == 0               # the child starts with none
        assert child["pool_threaded"][0] == 2             # ... and builds its own
    else:
        assert out["parent_pool"] == [0, 0]


FORK_BUSY_SCRIPT = r"""
import hashlib, os, threading
import numpy as np
import fastlr
from fastlr import _kernels, kernels

n = 1 << 20

def job(nt):
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t in range(1, 4):
        kernels.adam(p, g, m, v, step=t, lr=1e-3, n_threads=nt)
    return hashlib.sha256(p.tobytes() + m.tobytes() + v.tobytes()).hexdigest()

want = job(1)
stop, errors = threading.Event(), []

def busy():
    try:
        while not stop.is_set():
            assert job(2) == want
    except BaseException as error:
        errors.append(error)

threads = [threading.Thread(target=busy) for _ in range(2)]
for t in threads:
    t.start()
for k in range(20):          # fork while other threads are inside threaded calls
    pid = os.fork()
    if pid == 0:
        ok = _kernels.in_forked_child() and job(2) == want
        fastlr.set_num_threads(2)
        ok = ok and job(2) == want and job(None) == want
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (k, status)
stop.set()
for t in threads:
    t.join()
assert not errors, errors
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics: Linux")
def test_fork_while_other_threads_run_threaded_calls():
    """The forked child may have been taken mid-call (the pool busy, workers holding
    chunks): it runs serial, then set_num_threads gives it a working pool of its own."""
    out = run_script(FORK_BUSY_SCRIPT, timeout=240, env={"OMP_NUM_THREADS": "2"})
    assert out.strip().splitlines()[-1] == "ok"


THREADS_SCRIPT = r"""
import json, sys, time
import numpy as np
import fastlr
from fastlr import _kernels, kernels

POOL = kernels.HAVE_OPENMP and sys.platform == "linux"     # else no pool: skip the waits

n = 1 << 21
p, g = np.ones(n, np.float32), np.full(n, 1e-3, np.float32)
m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
out = {"default": fastlr.get_num_threads(), "start": list(_kernels._pool_stats())}
for _ in range(20):
    kernels.adam(p, g, m, v, step=1, lr=1e-3)
out["after_default"] = list(_kernels._pool_stats())
fastlr.set_num_threads(1)
for _ in range(20):
    kernels.adam(p, g, m, v, step=1, lr=1e-3)
out["after_one"] = list(_kernels._pool_stats())
fastlr.set_num_threads(4)
# the next threaded call starts three workers (retried: while the pool backs off after a
# stall on a loaded machine, calls run serial and start none)
deadline = time.monotonic() + (60 if POOL else 0)
while _kernels._pool_stats()[0] < 3 and time.monotonic() < deadline:
    kernels.adam(p, g, m, v, step=1, lr=1e-3)
    time.sleep(0.01)
out["after_four"] = list(_kernels._pool_stats())
# a worker helps sooner or later (on a loaded machine it may lose many races first)
deadline, before = time.monotonic() + (90 if POOL else 0), _kernels._pool_stats()[1]
while _kernels._pool_stats()[1] == before and time.monotonic() < deadline:
    kernels.adam(p, g, m, v, step=1, lr=1e-3)
out["helped"] = _kernels._pool_stats()[1] > before
print(json.dumps(out))
"""


@pytest.mark.parametrize("omp", ["1", "2", "3"])
def test_thread_count_settings_take_effect(omp):
    out = run_script(THREADS_SCRIPT, timeout=240, env={"OMP_NUM_THREADS": omp})
    out = json.loads(out.strip().splitlines()[-1])
    want_default = int(omp) if kernels.HAVE_OPENMP else 1
    assert out["default"] == want_default
    assert out["start"] == [0, 0]
    if not HAVE_POOL:
        assert out["after_four"] == [0, 0]
        return
    # OMP_NUM_THREADS=k: k - 1 workers, started by the first threaded call
    assert out["after_default"][0] == want_default - 1
    if want_default == 1:
        assert out["after_default"][1] == 0
    # set_num_threads(1): no worker runs a chunk
    assert out["after_one"] == out["after_default"]
    # set_num_threads(4): three workers
    assert out["after_four"][0] == 3
    assert out["helped"] is True
