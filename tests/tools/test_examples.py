"""examples/library_optimizer.py: a library-style optimizer on fastlr.kernels.

The script runs and trains; its optimizer (TinyAdam) allocates its state once with
fastlr.kernels.make_state and then nothing per step (tracemalloc); and it computes what
fastlr.reference.adam computes, applied the same way.
(examples/cython_backend is built and checked by test_cython_api.py.)
"""

import gc
import importlib.util
import os
import pathlib
import re
import site
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastlr
from fastlr import kernels, reference, schedules

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
LIBRARY_OPTIMIZER = EXAMPLES / "library_optimizer.py"
FASTLR_ROOT = pathlib.Path(fastlr.__file__).resolve().parent.parent   # the directory holding the package

pytestmark = pytest.mark.skipif(not LIBRARY_OPTIMIZER.is_file(), reason=(
    f"{LIBRARY_OPTIMIZER} is missing: the examples ship with a source checkout only"))


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
def example():
    """examples/library_optimizer.py as a module (loaded from its file; sys.path untouched)."""
    spec = importlib.util.spec_from_file_location("library_optimizer", LIBRARY_OPTIMIZER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_trains_and_the_loss_falls(tmp_path):
    proc = subprocess.run([sys.executable, str(LIBRARY_OPTIMIZER)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"initial loss (\S+), final loss (\S+)", proc.stdout)
    assert match, f"no loss summary in the output:\n{proc.stdout}"
    initial, final = float(match.group(1)), float(match.group(2))
    assert np.isfinite(final) and final < 0.01 * initial, proc.stdout


def problem(seed, dtypes=(np.float64, np.float32)):
    """Two params of different dtypes and shapes, and a few steps' grads for them."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((60, 3)).astype(dtypes[0]),
              rng.standard_normal(17).astype(dtypes[1])]
    grads = [[(0.1 * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]
             for _ in range(30)]
    return params, grads


OPTIONS = [
    pytest.param(dict(), id="adam"),
    pytest.param(dict(amsgrad=True, weight_decay=0.01), id="amsgrad-l2"),
    pytest.param(dict(weight_decay=0.05, decoupled_weight_decay=True, betas=(0.8, 0.99)),
                 id="adamw"),
]


def schedule():
    return schedules.warmup_cosine(0.05, warmup_steps=5, total_steps=25)


@pytest.mark.parametrize("options", OPTIONS)
def test_tiny_adam_computes_what_the_reference_computes(example, options):
    """TinyAdam on fastlr.kernels against TinyAdam on fastlr.reference, the NumPy oracle.
    Adam's kernel multiplies by 1/sqrt(1 - beta2^t) where the reference divides, so the
    two agree to a few ulps (as in test_kernels.py), not bit for bit."""
    params, grads = problem(seed=1)
    ref_params = [p.copy() for p in params]
    fast = example.TinyAdam(params, lr=schedule(), **options)
    oracle = example.TinyAdam(ref_params, lr=schedule(), **options, backend=reference)
    for g in grads:
        fast.step(g)
        oracle.step(g)
    assert fast.steps == oracle.steps == len(grads)
    got_arrays = params + [buf for state in fast.state for buf in state.values()]
    want_arrays = ref_params + [buf for state in oracle.state for buf in state.values()]
    for i, (got, want) in enumerate(zip(got_arrays, want_arrays)):
        tol = 2e-6 if got.dtype == np.float32 else 1e-14
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale,
                                   err_msg=f"array {i} of params + state, {options}")
    assert not np.array_equal(params[0], problem(seed=1)[0][0]), "nothing was trained"


@pytest.mark.parametrize("options", OPTIONS)
def test_tiny_adam_is_the_kernel_loop_a_library_would_write(example, options):
    """Bit for bit the plain loop over fastlr.kernels.adam: update t+1 uses schedule(t),
    each param's step counts from 1, the state comes from make_state."""
    params, grads = problem(seed=2)
    loop_params = [p.copy() for p in params]
    opt = example.TinyAdam(params, lr=schedule(), **options)
    options = dict(options)
    amsgrad = options.pop("amsgrad", False)
    beta1, beta2 = options.pop("betas", (0.9, 0.999))
    loop_state = [kernels.make_state("adam", p, amsgrad=amsgrad) for p in loop_params]
    for t, g in enumerate(grads):
        opt.step(g)
        for p, grad, st in zip(loop_params, g, loop_state):
            kernels.adam(p, grad, **st, step=t + 1, lr=schedule()(t), beta1=beta1,
                         beta2=beta2, **options)
    for got, want in zip(params, loop_params):
        assert np.array_equal(got, want)
    for got, want in zip(opt.state, loop_state):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_tiny_adam_allocates_nothing_per_step(example, amsgrad):
    """1000 steps after a warm-up: no net traced allocation (a fixed slack of 4 KiB for the
    interpreter's bookkeeping), and no per-step temporary array either: the peak stays far
    below the 512 KiB that one temporary copy of the large param would take."""
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(65536),                          # 512 KiB, threaded span
              rng.standard_normal((3, 5)).astype(np.float32)]
    grads = [(0.1 * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]
    opt = example.TinyAdam(params, lr=schedules.cosine(1e-3, 5000), amsgrad=amsgrad,
                           weight_decay=0.01)
    not_tracemalloc = [tracemalloc.Filter(False, tracemalloc.__file__)]
    tracemalloc.start()
    try:
        for _ in range(20):                                        # warm-up
            opt.step(grads)
        gc.collect()                  # a full collection also empties the free lists
        before = tracemalloc.take_snapshot().filter_traces(not_tracemalloc)
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(1000):
            opt.step(grads)
        peak = tracemalloc.get_traced_memory()[1]
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(not_tracemalloc)
    finally:
        tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    growth = sum(stat.size_diff for stat in diff)
    assert growth < 4096, "net allocation over 1000 steps:\n" + "\n".join(
        str(stat) for stat in diff[:10])
    assert peak - baseline < 64 * 1024, (
        f"a step allocated {peak - baseline} bytes at its peak: a temporary array per step?")
    assert opt.steps == 1020
