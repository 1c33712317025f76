"""fastlr's Cython C API (fastlr/_kernels.pxd, fastlr/_schedules.pxd), proven by a consumer.

The consumer is examples/cython_backend: a separate extension module that `cimport`s fastlr
and is built against `fastlr.get_include()`, exactly as another library would. The test
copies it outside the source tree, builds it with `python setup.py build_ext --inplace` in a
subprocess (PYTHONPATH pointing at the fastlr under test), imports the built module and
checks that its Adam updates and schedule values are fastlr's, bit for bit.

Skipped, with the reason, when fastlr's .pxd files are not where the imported fastlr lives,
when the example is not beside the tests, or when Cython/setuptools/a C compiler is missing.
A failed build is a failure (the C API broke), not a skip.
"""

import importlib.util
import os
import pathlib
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import fastlr
from fastlr import kernels, schedules

PACKAGE_DIR = pathlib.Path(fastlr.__file__).resolve().parent
FASTLR_ROOT = PACKAGE_DIR.parent             # what fastlr.get_include() returns
EXAMPLE_DIR = pathlib.Path(__file__).resolve().parents[2] / "examples" / "cython_backend"
MODULE = "fastlr_backend_demo"
C_API_FILES = ("_kernels.pxd", "_schedules.pxd")
MISSING_PXD = [name for name in C_API_FILES if not (PACKAGE_DIR / name).is_file()]

pytestmark = [
    pytest.mark.skipif(bool(MISSING_PXD), reason=(
        f"fastlr was imported from {PACKAGE_DIR}, which lacks {', '.join(MISSING_PXD)}: a copy "
        f"installed without its Cython API files cannot be cimported")),
    pytest.mark.skipif(not (EXAMPLE_DIR / "setup.py").is_file(), reason=(
        f"{EXAMPLE_DIR} is missing: the consumer example ships with a source checkout only")),
]


def missing_build_tools():
    """Why the example cannot be built here, or None."""
    try:
        import Cython
    except ImportError:
        return "Cython is not installed (pip install 'Cython>=3.1')"
    version = tuple(int(x) for x in Cython.__version__.split(".")[:2] if x.isdigit())
    if version < (3, 1):
        return f"Cython {Cython.__version__} is too old to read fastlr's .pxd (needs >= 3.1)"
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return "setuptools is not installed (the example builds with setup.py)"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"  # CC wins, as in setuptools
    if shutil.which(shlex.split(cc)[0]) is None:
        return f"no C compiler: {cc!r} is not on PATH"
    return None


def subprocess_env():
    """The environment in which a child Python imports the fastlr under test."""
    env = os.environ.copy()
    site_dirs = {pathlib.Path(p).resolve() for p in site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        site_dirs.add(pathlib.Path(site.getusersitepackages()).resolve())
    if FASTLR_ROOT not in site_dirs:           # an in-place build: point the child at it
        env["PYTHONPATH"] = os.pathsep.join(
            [str(FASTLR_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The example extension, built against this fastlr and imported."""
    reason = missing_build_tools()
    if reason:
        pytest.skip(f"cannot build the Cython consumer: {reason}")
    build_dir = tmp_path_factory.mktemp("cython_backend")
    for name in ("setup.py", f"{MODULE}.pyx"):
        shutil.copy(EXAMPLE_DIR / name, build_dir / name)
    env = subprocess_env()

    child = subprocess.run([sys.executable, "-c", "import fastlr; print(fastlr.__file__)"],
                           cwd=build_dir, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert pathlib.Path(child.stdout.strip()).resolve().parent == PACKAGE_DIR, (
        f"the build would see fastlr at {child.stdout.strip()}, not the one under test in "
        f"{PACKAGE_DIR}")

    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                           cwd=build_dir, env=env, capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        pytest.fail(f"building {MODULE} against fastlr's C API failed "
                    f"(rc={build.returncode}):\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}")
    built = build_dir / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    assert built.is_file(), f"no {built.name} after the build; found {os.listdir(build_dir)}"

    # Imported from its file, without touching sys.path; it imports the fastlr already
    # loaded here (the one it was built against).
    spec = importlib.util.spec_from_file_location(MODULE, built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DTYPES = [np.float32, np.float64]
ADAM_OPTIONS = [
    pytest.param(dict(amsgrad=False, weight_decay=0.0, decoupled_weight_decay=False),
                 id="plain"),
    pytest.param(dict(amsgrad=True, weight_decay=0.05, decoupled_weight_decay=False),
                 id="amsgrad-l2"),
    pytest.param(dict(amsgrad=True, weight_decay=0.05, decoupled_weight_decay=True),
                 id="amsgrad-adamw"),
    pytest.param(dict(amsgrad=False, weight_decay=0.05, decoupled_weight_decay=True,
                      maximize=True), id="adamw-maximize"),
]
# 7: one serial call; 40000: above PARALLEL_MIN_SIZE (32768), so *_parallel splits it.
SIZES = [7, 40000]


def adam_buffers(n, dtype, amsgrad, seed):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(n).astype(dtype)
    grads = (0.1 * rng.standard_normal((4, n))).astype(dtype)
    state = kernels.make_state("adam", param, amsgrad=amsgrad)
    return param, grads, state


def copies(param, state):
    return param.copy(), {name: buf.copy() for name, buf in state.items()}


def assert_same_bits(got_param, got_state, want_param, want_state, what):
    assert np.array_equal(got_param, want_param), f"param differs from fastlr.kernels: {what}"
    assert got_state.keys() == want_state.keys()
    for name in want_state:
        assert np.array_equal(got_state[name], want_state[name]), (
            f"{name} differs from fastlr.kernels: {what}")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("options", ADAM_OPTIONS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_adam_step_is_fastlr_kernels_adam_bit_for_bit(backend, options, dtype, n, n_threads):
    options = dict(options)
    amsgrad = options.pop("amsgrad")
    param, grads, state = adam_buffers(n, dtype, amsgrad, seed=n)
    want_param, want_state = copies(param, state)
    start = param.copy()
    for step, grad in enumerate(grads, start=1):
        backend.adam_step(param, grad, **state, step=step, lr=0.01, **options,
                          n_threads=n_threads)
        kernels.adam(want_param, grad, **want_state, step=step, lr=0.01, **options,
                     n_threads=n_threads)
    assert param.dtype == dtype
    assert not np.array_equal(param, start), "the consumer's update changed nothing"
    assert_same_bits(param, state, want_param, want_state,
                     f"{np.dtype(dtype).name} n={n} {options} amsgrad={amsgrad}")


@pytest.mark.parametrize("n_threads", [1, 2])
def test_adam_bf16_state_step_is_the_kernel_bit_for_bit(backend, n_threads):
    """The C API's adam_f32_bf16state (bfloat16 state) gives fastlr.kernels.adam_bf16_state's
    bits."""
    rng = np.random.default_rng(11)
    n = 70001
    param = rng.standard_normal(n).astype(np.float32)
    want = param.copy()
    m, v = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    wm, wv = m.copy(), v.copy()
    for step in range(1, 4):
        grad = rng.standard_normal(n).astype(np.float32)
        backend.adam_bf16_state_step(param, grad, m, v, step=step, lr=0.01, weight_decay=0.01,
                                     decoupled_weight_decay=True, n_threads=n_threads)
        kernels.adam_bf16_state(want, grad, wm, wv, step=step, lr=0.01, weight_decay=0.01,
                                decoupled_weight_decay=True, n_threads=n_threads)
    assert np.array_equal(param.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(m, wm) and np.array_equal(v, wv) and m.any()
    with pytest.raises(TypeError, match="exp_avg has dtype float32"):
        backend.adam_bf16_state_step(param, grad, np.zeros(n, np.float32), v, step=1, lr=0.1)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_adam_int8_state_step_is_the_kernel_bit_for_bit(backend, n_threads):
    """The C API's adam_f32_int8state (8-bit state) gives fastlr.kernels.adam_int8_state's
    bits."""
    rng = np.random.default_rng(12)
    n = 70001
    nblk = -(-n // 256)
    param = rng.standard_normal(n).astype(np.float32)
    want = param.copy()
    state = [np.zeros(n, np.uint8), np.zeros(nblk, np.float32)] * 2
    state = [a.copy() for a in state]
    wstate = [a.copy() for a in state]
    for step in range(1, 4):
        grad = rng.standard_normal(n).astype(np.float32)
        backend.adam_int8_state_step(param, grad, *state, step=step, lr=0.01,
                                     weight_decay=0.01, decoupled_weight_decay=True,
                                     n_threads=n_threads)
        kernels.adam_int8_state(want, grad, *wstate, step=step, lr=0.01, weight_decay=0.01,
                                decoupled_weight_decay=True, n_threads=n_threads)
    assert np.array_equal(param.view(np.uint32), want.view(np.uint32))
    for a, b in zip(state, wstate):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)) and a.any()
    with pytest.raises(ValueError, match=r"exp_avg_scale has shape \(1,\)"):
        backend.adam_int8_state_step(param, grad, state[0], state[1][:1], *state[2:], step=1,
                                     lr=0.1)


@pytest.mark.parametrize("state_kind", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
@pytest.mark.parametrize("grad32", [False, True], ids=["grad-bf16", "grad-f32"])
def test_adam_bf16_params_step_is_the_kernel_bit_for_bit(backend, state_kind, master, grad32):
    """The C API's adam_16_f32state / adam_16_bf16state / adam_16_int8state (16-bit params)
    give fastlr.kernels.adam_mixed's and adam_mixed_int8_state's bits."""
    rng = np.random.default_rng(13)
    n = 70001
    bits = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    nblk = -(-n // 256)
    if state_kind == "int8":
        state = [np.zeros(n, np.uint8), np.zeros(nblk, np.float32),
                 np.zeros(n, np.uint8), np.zeros(nblk, np.float32)]
        fn = kernels.adam_mixed_int8_state
    else:
        dt = np.float32 if state_kind == "float32" else np.uint16
        state = [np.zeros(n, dt), np.zeros(n, dt)]
        fn = kernels.adam_mixed
    w = (bits.astype(np.uint32) << 16).view(np.float32).copy() if master else None
    mine = [bits.copy(), [a.copy() for a in state], None if w is None else w.copy()]
    want = [bits.copy(), [a.copy() for a in state], None if w is None else w.copy()]
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32) * 0.1
        grad = g if grad32 else (g.view(np.uint32) >> 16).astype(np.uint16)
        backend.adam_bf16_params_step(mine[0], grad, mine[1], mine[2], step=step, lr=0.01,
                                      weight_decay=0.01, decoupled_weight_decay=True,
                                      n_threads=2)
        fn(want[0], grad, *want[1], want[2], step=step, lr=0.01, weight_decay=0.01,
           decoupled_weight_decay=True, n_threads=2)
    assert np.array_equal(mine[0], want[0]) and not np.array_equal(mine[0], bits)
    for a, b in zip(mine[1], want[1]):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    if master:
        assert np.array_equal(mine[2].view(np.uint32), want[2].view(np.uint32))


def test_adam_step_reads_a_read_only_grad_and_sizes_zero(backend):
    param, grads, state = adam_buffers(5, np.float64, True, seed=1)
    want_param, want_state = copies(param, state)
    grad = grads[0].copy()
    grad.setflags(write=False)
    backend.adam_step(param, grad, **state, step=1, lr=0.1)
    kernels.adam(want_param, grad, **want_state, step=1, lr=0.1)
    assert_same_bits(param, state, want_param, want_state, "read-only grad")
    empty = np.zeros(0, np.float32)
    backend.adam_step(empty, empty.copy(), empty.copy(), empty.copy(), step=1, lr=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_adam_run_uses_schedule_of_completed_steps(backend, dtype):
    """A resumed run of 4 updates (numbers 3..6) in one nogil call, lr of update t+1 being
    schedule(t): the same bits as the Python loop over fastlr.kernels.adam."""
    sched = schedules.warmup_cosine(0.05, warmup_steps=3, total_steps=8)
    param, grads, state = adam_buffers(40000, dtype, True, seed=3)
    want_param, want_state = copies(param, state)
    backend.adam_run(param, grads, **state, schedule=sched, first_step=3, weight_decay=0.01,
                     decoupled_weight_decay=True, n_threads=2)
    for i, grad in enumerate(grads):
        step = 3 + i
        kernels.adam(want_param, grad, **want_state, step=step, lr=sched(step - 1),
                     weight_decay=0.01, decoupled_weight_decay=True, n_threads=2)
    assert_same_bits(param, state, want_param, want_state, f"adam_run {np.dtype(dtype).name}")


SCHEDULES = [
    schedules.warmup_cosine(3e-3, warmup_steps=10, total_steps=100, end=1e-5),
    schedules.one_cycle(0.1, 50, three_phase=True),
    schedules.cosine_restarts(0.1, 7, period_mult=2, end=1e-3, decay=0.5),
    schedules.join([schedules.linear(0.1, total_steps=5), schedules.exponential(0.1, 0.97)],
                   [5]),
    schedules.piecewise_constant([10, 20], [0.1, 0.01, 0.001]) * 3.0,
    schedules.cyclic(1e-3, 1e-2, step_size_up=4, mode="exp_range", gamma=0.99),
    schedules.from_callable(lambda t: 0.1 / (1 + t) ** 0.5),   # evaluated with the GIL
]
STEPS = [0, 1, 2, 5, 9, 10, 11, 33, 49, 50, 99, 100, 101, 1000, 10**9]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: repr(s)[:40])
def test_schedule_at_is_the_schedules_value_bit_for_bit(backend, schedule):
    values = backend.schedule_at(schedule, STEPS)
    assert values.dtype == np.float64 and values.shape == (len(STEPS),)
    for t, value in zip(STEPS, values):
        assert value == schedule(t), f"{schedule!r} at step {t}: {value!r} != {schedule(t)!r}"
    assert np.array_equal(values, schedule.values(STEPS))
    assert len(set(values.tolist())) > 1, "a schedule that does not move proves nothing"


def test_schedule_handle_refuses_what_is_not_a_schedule(backend):
    with pytest.raises(TypeError, match="Schedule"):
        backend.schedule_at(lambda t: 0.1, [0])          # a bare callable, not wrapped


def test_a_python_callables_exception_reaches_the_consumers_caller(backend):
    def fails_after_two(t):
        if t >= 2:
            raise RuntimeError(f"no lr for step {t}")
        return 0.1

    with pytest.raises(RuntimeError, match="no lr for step 2"):
        backend.schedule_at(schedules.from_callable(fails_after_two), [0, 1, 2, 3])
    with pytest.raises(TypeError, match="compiled schedule"):
        param, grads, state = adam_buffers(3, np.float64, False, seed=0)
        backend.adam_run(param, grads, **state, schedule=schedules.from_callable(float))


def test_consumer_validates_before_calling_the_unchecked_c_level(backend):
    """fastlr's C functions check nothing; the consumer refuses bad input first, with the
    argument named, and leaves every buffer as it was."""
    param, grads, state = adam_buffers(6, np.float32, True, seed=2)
    before = copies(param, state)
    bad_calls = {
        "dtype": (TypeError, "grad has dtype float64",
                  lambda: backend.adam_step(param, grads[0].astype(np.float64), **state,
                                            step=1, lr=0.1)),
        "length": (ValueError, "exp_avg has shape",
                   lambda: backend.adam_step(param, grads[0], state["exp_avg"][:5],
                                             state["exp_avg_sq"], step=1, lr=0.1)),
        "overlap": (ValueError, "param and exp_avg overlap",
                    lambda: backend.adam_step(param, grads[0], param, state["exp_avg_sq"],
                                              step=1, lr=0.1)),
        "lr": (ValueError, "lr must be >= 0",
               lambda: backend.adam_step(param, grads[0], **state, step=1, lr=-1.0)),
        "beta2": (ValueError, "beta2 must be in",
                  lambda: backend.adam_step(param, grads[0], **state, step=1, lr=0.1,
                                            beta2=1.0)),
        "step": (ValueError, "step must be >= 1",
                 lambda: backend.adam_step(param, grads[0], **state, step=0, lr=0.1)),
    }
    for what, (error, message, call) in bad_calls.items():
        with pytest.raises(error, match=message):
            call()
        assert_same_bits(param, state, *before, f"after the refused {what} call")
