"""Shared helpers for the fastlr asv suite: implementations, sizes and test data.

Nothing here runs a kernel at import time. asv imports the suite once in a fork server
and forks one child per benchmark run; an OpenMP parallel region in the parent before
fork() could leave the children with a broken libgomp thread pool. torch is imported only by
the torch benchmarks (asv spawns a process per parameter combination, and importing torch
costs about 1.5 s).

The optimizer-step benchmarks (bench_kernels.Time*) share their implementations with
``fastlr bench`` (fastlr/_tools/bench.py): the in-place NumPy baselines, the torch setups and the
staggered buffer layout all come from there, so asv and ``fastlr bench`` time the same code.
"""

import importlib
import os
import timeit

import numpy as np

from fastlr import kernels, reference
from fastlr._tools import bench

def optional(*packages):
    """Import a benchmark's optional ``packages`` (torch set to 1 thread): the module, or a
    tuple of them. A missing one raises NotImplementedError, which asv reports as a skip."""
    try:
        modules = tuple(importlib.import_module(name) for name in packages)
    except ImportError:
        raise NotImplementedError(f"{' or '.join(packages)} is not installed") from None
    for module in modules:
        if module.__name__ == "torch":
            module.set_num_threads(1)
    return modules[0] if len(modules) == 1 else modules


#: The implementations compared side by side (an asv parameter).
IMPLS = {"fastlr": kernels, "reference": reference}

#: Array sizes: 1K (call overhead), 64K (L2), 1M (LLC-ish), 16M (memory bound).
SIZES = [1024, 65536, 1048576, 16777216]

DTYPES = ["float32", "float64"]

#: Fixed step for the timed calls: the step number only changes the bias corrections.
STEP = 10
LR = 1e-3
SEED = 20240611




def steady_state_malloc():
    """Pin glibc malloc's mmap/trim thresholds at the values a long-running process reaches.

    glibc starts with a 128 KiB mmap threshold and raises it (up to 32 MiB, trim threshold
    twice that) each time it frees an mmap'ed block. A fresh benchmark process therefore
    times the reference's NumPy temporaries (256 KiB .. 32 MiB) either mmap'ed and
    page-faulted, or trimmed and re-grown, on every call, depending on incidental heap
    history (setup order): 5x swings for the same code at 64K float32. Fixing the
    thresholds at glibc's own ceiling measures the steady state of a training process and
    makes every run see the same allocator. It only helps the reference (the kernels do
    not allocate), so the reported speedups are the conservative ones. Idempotent; a no-op
    off Linux/glibc or when MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ are set.
    """
    from fastlr._tools.bench import _pin_malloc

    _pin_malloc()


def adam_data(n, dtype, seed=SEED):
    """Realistic, non-degenerate Adam inputs for an ``n``-element ``dtype`` parameter.

    Returns a dict with ``param``, ``grad``, ``exp_avg`` and ``exp_avg_sq`` (all fresh,
    C-contiguous, ``dtype``). The state looks like Adam's after ``STEP - 1`` steps of
    N(0, 1e-2) gradients: no zero buffers, nothing near the subnormal range (a zero
    ``exp_avg_sq`` at step 10 would be a different, slower, workload for float32 on
    some CPUs, and all-zero buffers make every element identical).
    """
    dtype = np.dtype(dtype)
    rng = np.random.default_rng([seed, n, dtype.itemsize])
    t = STEP - 1
    param = rng.standard_normal(n, dtype=np.float64)
    grad = rng.normal(0.0, 1e-2, n)
    exp_avg = (1.0 - 0.9**t) * rng.normal(0.0, 1e-2, n)
    exp_avg_sq = (1.0 - 0.999**t) * rng.normal(0.0, 1e-2, n) ** 2 + 1e-12
    return {
        "param": param.astype(dtype),
        "grad": grad.astype(dtype),
        "exp_avg": exp_avg.astype(dtype),
        "exp_avg_sq": exp_avg_sq.astype(dtype),
    }


def copy_data(data):
    return {k: v.copy() for k, v in data.items()}


#: ``FASTLR_ASV_SMOKE=1`` (CI's "every benchmark runs once" check): one sample per
#: measurement and no batch calibration, so the suite runs fast; the numbers mean nothing.
SMOKE = os.environ.get("FASTLR_ASV_SMOKE") == "1"


def n_samples(n):
    """``n`` samples of a best-of loop, or 1 in a smoke run (:data:`SMOKE`)."""
    return 1 if SMOKE else n


def per_call_time(fn, min_sample=5e-3):
    """Calibrate a batch size for ``fn`` and return ``(batch, sample)``.

    Warms up, then calibrates a batch size such that one batch of ``fn()`` takes at
    least ``min_sample`` seconds; ``sample()`` times one fresh batch and returns the
    time per call.
    """
    timer = timeit.Timer(fn)
    timer.timeit(2)  # warm up first: page faults, OpenMP thread start, allocator growth
    batch = 1
    while not SMOKE:
        t = timer.timeit(batch)
        if t >= min_sample or batch >= 1 << 20:
            break
        batch = max(batch + 1, int(batch * min(10.0, 1.2 * min_sample / max(t, 1e-9))))

    def sample():
        return timer.timeit(batch) / batch

    return batch, sample


# ---------------------------------------------------------------------------------------
# Optimizer steps over fastlr, the reference, in-place NumPy and torch (bench_kernels.Time*)
# ---------------------------------------------------------------------------------------
#: Implementations of one optimizer step, 1 thread unless the name ends in "-<k>t" (k
#: threads: fastlr's n_threads, torch.set_num_threads). "numpy": fastlr._tools.bench.numpy_inplace_*
#: (out= ufuncs, preallocated scratch); "torch-fused" / "torch-foreach" / "torch-forloop":
#: torch.optim with fused=True / foreach=True / foreach=False. The thread count is part of
#: the implementation's name rather than a separate parameter because asv spawns a process
#: per parameter combination (~0.25 s, ~1.8 s with torch's import) and reference / numpy
#: are single-threaded: a threads parameter would only add skipped combinations.
STEP_IMPLS = ["fastlr", "fastlr-2t", "reference", "numpy"]
TORCH_IMPLS = ["torch-fused", "torch-fused-2t", "torch-foreach", "torch-forloop"]
_TORCH_MODE = {"torch-fused": "fused", "torch-foreach": "foreach", "torch-forloop": "for-loop"}

# (optimizer, n, dtype) -> base inputs, and (impl, optimizer, n, dtype) -> stepper. asv
# runs every parameter combination in its own process, so each holds one entry; they only
# spare setup() (re-run before every sample) the rebuilding.
_INPUTS = {}
_STEPPERS = {}


def inputs(optimizer, n, dtype):
    """Param, grad and state for ``optimizer`` (fastlr._tools.bench.make_inputs, staggered layout),
    cached for the process (one size at a time)."""
    key = (optimizer, n, dtype)
    data = _INPUTS.get(key)
    if data is None:
        _INPUTS.clear()
        data = _INPUTS[key] = bench.make_inputs(optimizer, n, dtype)
    return data


def split_impl(impl):
    """'fastlr-2t' -> ('fastlr', 2); 'numpy' -> ('numpy', 1)."""
    base, sep, tail = impl.rpartition("-")
    if sep and tail.endswith("t") and tail[:-1].isdigit():
        return base, int(tail[:-1])
    return impl, 1


def stepper(impl, optimizer, n, dtype):
    """A zero-argument callable doing one in-place step of ``optimizer`` with ``impl``.

    Raises NotImplementedError (asv: skipped) when torch is not installed or has no such
    mode (fused RMSprop).
    """
    base, threads = split_impl(impl)
    if base == "torch-fused" and not bench.SPECS[optimizer].torch_fused:
        raise NotImplementedError(f"torch has no fused CPU {optimizer}")
    torch = None
    if base.startswith("torch"):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
    key = (impl, optimizer, n, dtype)
    step = _STEPPERS.get(key)
    if step is not None:
        return step
    _STEPPERS.clear()
    data = bench.clone_inputs(inputs(optimizer, n, dtype))
    if base == "fastlr":
        step = bench.fastlr_stepper(optimizer, data, threads)
    elif base == "reference":
        step = bench.reference_stepper(optimizer, data)
    elif base == "numpy":
        step = bench.numpy_stepper(optimizer, data)
    else:
        torch.set_num_threads(threads)
        step = bench.torch_stepper(optimizer, data, _TORCH_MODE[base])
    if base in ("fastlr", "torch-fused", "torch-foreach", "torch-forloop"):
        step()                  # warm up: thread pools, torch's lazy initialization
    _STEPPERS[key] = step
    return step
