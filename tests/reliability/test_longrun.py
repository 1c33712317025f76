"""Long runs (docs/design.md, Numerics: counting; nothing is allocated per step).

* Counters are 64-bit integers: past 2**24 (where a float32 count stops counting) and
  2**31 / 2**32 (where an int32 wraps), set through load_state_dict, one step gives what
  fastlr.reference gives at that step, the counts become exactly T+1, checkpoints keep them,
  and schedules are evaluated at exactly t = T (values that change at T+1 tell).
* 100k steps of small optimizers grow neither traced Python memory (tracemalloc) nor the
  process's resident set.
* Checkpoints: save is atomic (a process killed at random points of a loop of saves, and at
  forced points mid-write and just before the rename, leaves the target absent or a complete,
  loadable checkpoint), a normal or failed save leaves no temporary file, and a truncated or
  corrupted file is refused with ValueError without changing the optimizer.
"""

import glob
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastlr
from fastlr import kernels, reference, schedules

from _reliability_helpers import KERNEL_CALLS, NO_STEP, ROOT, TESTS, call_kernel, kernel_buffers

BIG_T = [2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**32 + 3, 2**40 + 7]


# ---- counters -------------------------------------------------------------------------------
def _at_step(opt, T, rng):
    """Load a state at step T (random consistent buffers) into ``opt``."""
    sd = opt.state_dict()
    sd["steps"] = T
    for i, st in sd["state"].items():
        st["step"] = T
        for key, value in st.items():
            if isinstance(value, np.ndarray):
                fill = np.abs(rng.standard_normal(value.shape)) * 1e-2
                if "sq" in key or "square" in key or key in ("state_sum", "exp_inf"):
                    fill = fill + 1e-3
                value[...] = fill
        if "mu_product" in st:
            st["mu_product"] = 0.3
    opt.load_state_dict(sd)
    return sd


OPTIMIZERS = [
    (fastlr.Adam, dict(amsgrad=True, weight_decay=0.01)),
    (fastlr.AdamW, {}),
    (fastlr.SGD, dict(momentum=0.9, nesterov=True)),
    (fastlr.RMSprop, dict(momentum=0.5, centered=True)),
    (fastlr.Adagrad, dict(lr_decay=1e-9)),      # lr / (1 + (step - 1) * lr_decay): exact step
    (fastlr.Adadelta, {}),
    (fastlr.Adamax, {}),
    (fastlr.NAdam, {}),
    (fastlr.RAdam, {}),
    (fastlr.Lion, {}),
]


@pytest.mark.parametrize("T", BIG_T)
@pytest.mark.parametrize("cls,options", OPTIMIZERS, ids=[c.__name__ for c, _ in OPTIMIZERS])
def test_counters_past_float32_and_int32_limits(cls, options, T, tmp_path):
    rng = np.random.default_rng(T % 1000)
    p0 = [rng.standard_normal(300), rng.standard_normal((7, 5)).astype(np.float32)]
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in p0]
    lr = schedules.cosine_restarts(1e-2, 7)        # position T % 7, found with integers
    fast = cls([p.copy() for p in p0], lr=lr, **options)
    slow = cls([p.copy() for p in p0], lr=lr, **options)
    sd = _at_step(fast, T, rng)
    slow.load_state_dict(sd)
    assert fast.steps == T and all(st["step"] == T for st in fast.state.values())

    fast.step(grads)
    slow.step_reference(grads)         # fastlr.reference, with step = T + 1
    for a, b in zip(fast.params, slow.params):
        tol = 1e-4 if a.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 1e-2)
    assert fast.steps == T + 1 and type(fast.steps) is int
    assert [st["step"] for st in fast.state.values()] == [T + 1, T + 1]
    assert fast.last_lr == [lr(T)] and fast.next_lr == [lr(T + 1)]

    # the counts survive a checkpoint exactly, and keep counting
    fast.save(tmp_path / "ckpt.npz")
    again = cls([p.copy() for p in p0], lr=lr, **options)
    again.load(tmp_path / "ckpt.npz")
    assert again.steps == T + 1
    assert [st["step"] for st in again.state.values()] == [T + 1, T + 1]
    again.step(grads)
    assert again.steps == T + 2 and again.state[1]["step"] == T + 2


@pytest.mark.parametrize("T", BIG_T)
def test_adam_at_a_huge_step_matches_the_reference_directly(T):
    """Independently of step_reference: kernels.adam and Adam.step against
    reference.adam called with step=T+1 and the schedule's value at T."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal(1000)
    g = rng.standard_normal(1000)
    m, v = rng.standard_normal(1000) * 1e-2, np.abs(rng.standard_normal(1000)) * 1e-3
    lr = schedules.step_decay(1e-2, step_size=T, gamma=0.5)   # halves exactly at t = T
    assert lr(T - 1) == 1e-2 and lr(T) == 5e-3

    want = [p.copy(), m.copy(), v.copy()]
    reference.adam(want[0], g, want[1], want[2], step=T + 1, lr=5e-3)
    got = [p.copy(), m.copy(), v.copy()]
    kernels.adam(got[0], g, got[1], got[2], step=T + 1, lr=5e-3)
    opt_p = p.copy()
    opt = fastlr.Adam([opt_p], lr=lr)
    opt.load_state_dict({"steps": T, "state": {0: {"step": T, "exp_avg": m, "exp_avg_sq": v}},
                         "param_groups": opt.state_dict()["param_groups"]})
    opt.step([g])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(opt_p, got[0])       # the optimizer and the kernel agree
    assert opt.last_lr == [5e-3]


@pytest.mark.parametrize("T", BIG_T)
@pytest.mark.parametrize("name", [k for k in KERNEL_CALLS if k not in NO_STEP])
def test_kernels_take_huge_steps(name, T):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(100)
    g = rng.standard_normal(100)
    a, b = p.copy(), p.copy()
    sa, sb = kernel_buffers(name, a), kernel_buffers(name, b)
    for sx in (sa, sb):
        for key, buf in sx.items():
            buf[...] = np.abs(np.arange(100)) * 1e-3 + 1e-3
    over = {"lr_decay": 1e-9} if name == "adagrad" else {}
    ra = call_kernel(kernels, name, a, g, sa, T + 1, mu_product=0.3, **over)
    rb = call_kernel(reference, name, b, g, sb, T + 1, mu_product=0.3, **over)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    if name == "nadam":
        assert ra == pytest.approx(rb, rel=1e-14)


def test_adagrad_lr_decay_counts_every_step_past_2_to_the_24():
    """A float32 count would read 2**24 + 1 as 2**24: Adagrad's decayed lr tells them apart."""
    outs = []
    for step in (2**24 + 1, 2**24 + 2):
        p = np.zeros(1)
        kernels.adagrad(p, np.ones(1), np.ones(1), step=step, lr=1.0, lr_decay=1.0)
        outs.append(p[0])
    assert outs[0] != outs[1]
    assert outs[0] == pytest.approx(-1.0 / (1 + 2**24) / math.sqrt(2.0), rel=1e-15)


@pytest.mark.parametrize("T", BIG_T)
def test_schedules_evaluated_at_exactly_t(T):
    """SGD (p -= lr * g exactly) stepped once from t = T with schedules whose values differ
    between T and T + 1, or depend on T modulo small numbers."""
    cases = [
        (schedules.piecewise_constant([T + 1], [0.25, 0.125]), 0.25, 0.125),
        (schedules.multistep(0.25, [T + 1, 5], gamma=0.5), 0.125, 0.0625),
        (schedules.step_decay(0.25, step_size=T + 1, gamma=0.5), 0.25, 0.125),
        (schedules.piecewise_linear([0, 2 * T], [0.0, 2.0]), 1.0, (T + 1) / T),
        (schedules.join([schedules.constant(0.5), schedules.constant(0.25)], [T + 1]),
         0.5, 0.25),
        (schedules.cosine_restarts(1.0, 7), (1 + math.cos(math.pi * (T % 7) / 7)) / 2,
         (1 + math.cos(math.pi * ((T + 1) % 7) / 7)) / 2),
        (lambda t: (t % 1000) / 1000, (T % 1000) / 1000, ((T + 1) % 1000) / 1000),
    ]
    for sched, at_t, at_next in cases:
        assert sched(T) == pytest.approx(at_t, rel=1e-15, abs=1e-300)
        assert sched(T + 1) == pytest.approx(at_next, rel=1e-15, abs=1e-300)
        p = np.ones(4)
        g = np.full(4, 0.5)
        opt = fastlr.SGD([p], lr=sched)
        opt.load_state_dict(dict(opt.state_dict(), steps=T,
                                 state={0: {"step": T}}))
        assert opt.next_lr == [sched(T)]
        opt.step([g])
        assert opt.last_lr == [sched(T)] and opt.next_lr == [sched(T + 1)]
        np.testing.assert_array_equal(p, 1.0 - sched(T) * 0.5)


# ---- no memory growth -----------------------------------------------------------------------
def _small_optimizers():
    ps = [np.zeros(1), np.zeros(1, np.float32), np.zeros(3), np.zeros((2, 2))]
    return [
        fastlr.Adam([ps[0]], lr=schedules.warmup_cosine(1e-3, warmup_steps=10,
                                                        total_steps=1000), max_grad_norm=1.0),
        fastlr.SGD([ps[1]], lr=lambda t: 1e-3 / (1 + t), momentum=0.9),
        fastlr.RMSprop([ps[2]], lr=1e-3, centered=True, skip_nonfinite=True),
        fastlr.NAdam([ps[3]], lr=schedules.cosine(1e-3, 500)),
    ], [[np.full(p.shape, 1e-3, p.dtype)] for p in ps]


def _steps(opts, grads, n):
    """n steps of the first optimizer, n // 10 of each other one."""
    for k, (opt, g) in enumerate(zip(opts, grads)):
        for _ in range(n if k == 0 else n // 10):
            opt.step(g)


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


N_LONG = 100_000


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.skipif(os.environ.get("FASTLR_SANITIZE") == "1", reason="valgrind: too slow")
def test_no_memory_growth_over_100k_steps():
    opts, grads = _small_optimizers()
    a = np.zeros(1)
    adam_state = kernel_buffers("adam", a)
    _steps(opts, grads, 2000)                      # warm-up: caches, free lists
    rss0 = _rss()
    start = time.perf_counter()
    _steps(opts, grads, N_LONG)
    for t in range(1, N_LONG + 1):                 # the functional kernel too
        call_kernel(kernels, "adam", a, grads[0][0], adam_state, t)
    elapsed = time.perf_counter() - start
    grown = _rss() - rss0
    print(f"\n{N_LONG} Adam steps, {N_LONG // 10} of 3 others, {N_LONG} kernel calls: "
          f"{elapsed:.2f} s, RSS growth {grown} bytes")
    assert grown < 2 * 2**20, grown
    assert opts[0].steps == N_LONG + 2000 and opts[1].steps == (N_LONG + 2000) // 10


@pytest.mark.skipif(os.environ.get("FASTLR_SANITIZE") == "1", reason="valgrind: too slow")
def test_no_traced_allocation_growth_over_100k_steps():
    opts, grads = _small_optimizers()
    _steps(opts, grads, 2000)
    tracemalloc.start()
    try:
        _steps(opts, grads, 1000)                  # warm-up under tracing
        before, _ = tracemalloc.get_traced_memory()
        snap0 = tracemalloc.take_snapshot()
        _steps(opts, grads, N_LONG)
        after, _ = tracemalloc.get_traced_memory()
        snap1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    top = snap1.compare_to(snap0, "lineno")[:5]
    print(f"\ntraced memory growth over {N_LONG} Adam steps, {N_LONG // 10} of 3 others: "
          f"{after - before} bytes")
    assert after - before < 4096, "\n".join(map(str, top))
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    assert growth < 4096, "\n".join(map(str, top))


# ---- atomic checkpoints ---------------------------------------------------------------------
SAVER = r"""
import os, sys, time
import numpy as np
import fastlr

path, mode = sys.argv[1], sys.argv[2]
p = np.zeros(1 << 19, np.float32)          # 2 MiB per buffer: a save takes a while
opt = fastlr.Adam([p], lr=0.1)

def stall(what):
    print(what, flush=True)
    time.sleep(600)                        # killed here

if mode == "mid-write":                    # stall inside np.savez, after the first array
    import numpy.lib.format as fmt
    real = fmt.write_array
    calls = [0]
    def write_array(*args, **kwargs):
        real(*args, **kwargs)
        if saves[0] == 2:
            calls[0] += 1
            if calls[0] == 3:
                stall("STALLED")
    fmt.write_array = write_array
elif mode == "before-rename":              # stall after writing, before the rename
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if saves[0] == 2:
            stall("STALLED")
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace

saves = [0]
print("READY", flush=True)
while True:
    saves[0] += 1
    i = saves[0]
    sd = opt.state_dict()
    sd["steps"] = i
    sd["state"][0]["step"] = i
    sd["state"][0]["exp_avg"][...] = i
    sd["state"][0]["exp_avg_sq"][...] = i
    opt.load_state_dict(sd)
    opt.save(path)
"""


def _saver(path, mode):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    return subprocess.Popen([sys.executable, "-c", SAVER, str(path), mode], cwd="/",
                            stdout=subprocess.PIPE, text=True, env=env)


def _wait_line(proc, want, timeout=120):
    """The next line the saver prints (a hang is killed and fails)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        line = proc.stdout.readline().strip()
    finally:
        timer.cancel()
    if line != want:
        _kill(proc)
        raise AssertionError(f"the saver printed {line!r}, expected {want!r}")


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def _check_checkpoint(path):
    """The target is absent or a complete checkpoint; returns its save number (0: absent)."""
    if not os.path.exists(path):
        return 0
    opt = fastlr.Adam([np.zeros(1 << 19, np.float32)], lr=0.1)
    opt.load(path)                         # raises on a partial file
    st = opt.state[0]
    i = opt.steps
    assert i >= 1 and st["step"] == i
    assert (st["exp_avg"] == i).all() and (st["exp_avg_sq"] == i).all()
    return i


def test_save_is_atomic_under_kill(tmp_path):
    path = tmp_path / "ckpt.npz"
    rnd = random.Random(1234)
    seen, temps = [], 0
    # forced: killed inside np.savez, and between the write and the rename, of save #2
    for mode in ("mid-write", "before-rename"):
        if path.exists():
            path.unlink()
        proc = _saver(path, mode)
        _wait_line(proc, "READY")
        _wait_line(proc, "STALLED")
        _kill(proc)
        leftovers = glob.glob(str(tmp_path / ".fastlr-*"))
        assert leftovers, "the kill should have interrupted a save"
        assert _check_checkpoint(path) == 1           # the previous save, complete
        for f in leftovers:
            os.unlink(f)
    # random: killed at arbitrary points of a loop of saves
    for k in range(8):
        if k % 3 == 0 and path.exists():
            path.unlink()
        proc = _saver(path, "loop")
        _wait_line(proc, "READY")
        time.sleep(rnd.uniform(0.0, 0.4))
        _kill(proc)
        seen.append(_check_checkpoint(path))
        for f in glob.glob(str(tmp_path / ".fastlr-*")):
            temps += 1
            os.unlink(f)
        assert sorted(os.listdir(tmp_path)) in ([], ["ckpt.npz"])
    print(f"\nsave numbers found after random kills: {seen}; kills mid-save: {temps}")


def test_save_leaves_no_temporary_file(tmp_path):
    opt = fastlr.AdamW([np.zeros(1000), np.zeros((3, 4), np.float32)], lr=1e-3)
    for k in range(3):
        opt.step([np.ones(1000), np.ones((3, 4), np.float32)])
        opt.save(tmp_path / "a.npz")
        assert os.listdir(tmp_path) == ["a.npz"]
    os.mkdir(tmp_path / "dir.npz")                 # a failing save (cannot replace a dir)
    with pytest.raises(OSError):
        opt.save(tmp_path / "dir.npz")
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "dir.npz"]
    assert os.listdir(tmp_path / "dir.npz") == []


def test_truncated_or_corrupted_checkpoint_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    opt = fastlr.Adam([rng.standard_normal(5000), rng.standard_normal(7)], lr=1e-3,
                      amsgrad=True)
    opt.step([rng.standard_normal(5000), rng.standard_normal(7)])
    good = tmp_path / "good.npz"
    opt.save(good)
    data = good.read_bytes()

    other = fastlr.Adam([rng.standard_normal(5000), rng.standard_normal(7)], lr=1e-3,
                        amsgrad=True)
    for _ in range(3):
        other.step([rng.standard_normal(5000), rng.standard_normal(7)])
    before = other.state_dict()
    bad = tmp_path / "bad.npz"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for content in [data[:n] for n in (0, 1, 30, len(data) // 3, len(data) // 2,
                                       len(data) - 22, len(data) - 1)] + [bytes(flipped)]:
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="checkpoint"):
            other.load(bad)
        after = other.state_dict()
        assert after["steps"] == before["steps"] == 3
        for i in before["state"]:
            for key, value in before["state"][i].items():
                np.testing.assert_array_equal(after["state"][i][key], value)
    other.load(good)                               # and the complete one loads
    assert other.steps == 1
