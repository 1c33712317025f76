"""Optimizer kernels: fastlr's compiled kernels against the pure-NumPy reference, in-place
NumPy and torch.

The ``Time*`` classes time one in-place step of SGD, SGD+momentum, Nesterov, RMSprop, Adam
and AdamW; each is parametrized over the implementation first, so ``asv show`` /
``asv compare`` / the HTML pages list the implementations side by side. ``TrackStepMemory``
and ``PeakmemStep`` measure what 1000 steps allocate. ``TrackAdamSpeedup`` times fastlr
and the reference interleaved in one process and reports the ratio, which holds up on a
noisy or shared machine far better than two absolute timings taken minutes apart (``fastlr
bench`` does the same for every implementation; the rooflines are in bench_roofline.py).

Threads: "-2t" implementations run fastlr with ``n_threads=2`` / torch with
``torch.set_num_threads(2)``, the others 1 thread. Each benchmark process runs one
implementation only, so OMP_WAIT_POLICY is left alone here.

Timing notes (seen with asv 0.6.6 / asv_runner 0.3.2): with a ``setup`` method present, asv times one call per
sample and re-runs ``setup`` before every sample. ``setup`` therefore builds the arrays
once per process (module cache) and only rebinds them afterwards; the kernels update
their inputs in place at a fixed step, which is a steady state (m -> g, v -> g*g), so
reusing the buffers does not change the workload.

Every parameter combination runs in a fresh (forked) process, where glibc malloc has not
yet raised its mmap/trim thresholds; the reference's temporaries would then be mmap'ed or
trimmed on every call, by accident of heap history. Every ``setup`` first calls
``common.steady_state_malloc()``, which pins the thresholds at a long-running process's
values (see there).
"""

import time
import tracemalloc

import numpy as np

from .common import (
    DTYPES,
    IMPLS,
    LR,
    SIZES,
    STEP,
    STEP_IMPLS,
    adam_data,
    copy_data,
    per_call_time,
    steady_state_malloc,
    stepper,
    n_samples,
)

class _TimeStep:
    """Seconds per in-place step of one optimizer, per implementation, size and dtype.

    impl: fastlr (the compiled kernel, 1 thread), fastlr-2t (n_threads=2), reference
    (fastlr.reference), numpy (in-place out= ufuncs, fastlr._tools.bench.numpy_inplace_*); the
    torch classes: torch-fused, torch-fused-2t (torch.set_num_threads(2)), torch-foreach,
    torch-forloop (``opt.step()``; skipped without torch).
    """

    optimizer = None
    param_names = ["impl", "n", "dtype"]
    # One call per sample (asv forces number=1 when setup exists). 5..100 samples per
    # round, at most ~2 s of sampling per round, 2 rounds (separate processes).
    rounds = 2
    repeat = (5, 100, 2.0)
    warmup_time = 0.1
    timeout = 120

    def setup(self, impl, n, dtype):
        steady_state_malloc()
        self.step = stepper(impl, self.optimizer, n, dtype)


# The grid is trimmed so that `asv run --quick` of the whole suite stays within about two
# minutes: asv spawns a process per parameter combination (~0.25 s; a torch one costs ~3 s:
# its import plus the first optimizer step). Adam gets every size and both dtypes; the
# other optimizers float32 at an in-cache (64K) and a memory-bound (16M) size; torch gets
# Adam fused at 1K / 64K / 16M and RMSprop's for-loop at 16M, 1 thread. `fastlr bench`
# covers torch for every optimizer at 1 and 2 threads, and bench_roofline.py the float64
# rooflines of every optimizer.
_TRIMMED = [STEP_IMPLS, [65536, 16777216], ["float32"]]


class TimeAdam(_TimeStep):
    """Adam (no weight decay, no AMSGrad), seconds per step."""

    optimizer = "adam"
    params = [STEP_IMPLS, SIZES, DTYPES]

    def time_adam(self, impl, n, dtype):
        self.step()


class TimeAdamTorch(_TimeStep):
    """torch.optim.Adam(fused=True).step(), float32, 1 thread, seconds per step."""

    optimizer = "adam"
    params = [["torch-fused"], [1024, 65536, 16777216], ["float32"]]

    def time_adam(self, impl, n, dtype):
        self.step()


class TimeAdamW(_TimeStep):
    """AdamW (weight decay 1e-2), seconds per step."""

    optimizer = "adamw"
    params = _TRIMMED

    def time_adamw(self, impl, n, dtype):
        self.step()


class TimeSGD(_TimeStep):
    """Plain SGD, seconds per step."""

    optimizer = "sgd"
    params = _TRIMMED

    def time_sgd(self, impl, n, dtype):
        self.step()


class TimeMomentum(_TimeStep):
    """SGD with momentum 0.9, seconds per step."""

    optimizer = "momentum"
    params = _TRIMMED

    def time_momentum(self, impl, n, dtype):
        self.step()


class TimeNesterov(_TimeStep):
    """SGD with Nesterov momentum 0.9, seconds per step."""

    optimizer = "nesterov"
    params = _TRIMMED

    def time_nesterov(self, impl, n, dtype):
        self.step()


class TimeRMSprop(_TimeStep):
    """RMSprop (alpha 0.99), seconds per step."""

    optimizer = "rmsprop"
    params = _TRIMMED

    def time_rmsprop(self, impl, n, dtype):
        self.step()


class TimeRMSpropTorch(_TimeStep):
    """torch.optim.RMSprop for-loop (torch's fastest CPU mode for it: there is no fused
    kernel, and foreach is slower on CPU), float32 16M, seconds per step."""

    optimizer = "rmsprop"
    params = [["torch-forloop"], [16777216], ["float32"]]

    def time_rmsprop(self, impl, n, dtype):
        self.step()


class TrackStepMemory:
    """Peak bytes allocated (tracemalloc) during 1000 steps at 64K float32, beyond the
    inputs: fastlr's kernels and the in-place NumPy step allocate no array memory (a few
    hundred bytes to a few KiB of transient Python objects), the reference allocates its
    temporaries. torch's allocator is invisible to tracemalloc: torch is not measured."""

    params = [["fastlr", "reference", "numpy"], ["sgd", "adam"]]
    param_names = ["impl", "optimizer"]
    unit = "bytes"
    timeout = 120
    N = 65536
    STEPS = 1000

    def setup(self, impl, optimizer):
        steady_state_malloc()
        self.step = stepper(impl, optimizer, self.N, "float32")

    def track_peak_alloc_1000_steps(self, impl, optimizer):
        step = self.step
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(self.STEPS):
                step()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak - base


class PeakmemStep:
    """Peak resident memory of a process that runs 1000 Adam steps at 256K float32 (the
    inputs and the interpreter included, so compare implementations, not absolutes). torch
    is left out: its import alone dwarfs the differences."""

    params = [["fastlr", "reference", "numpy"]]
    param_names = ["impl"]
    timeout = 120
    N = 262144

    def setup(self, impl):
        steady_state_malloc()
        self.step = stepper(impl, "adam", self.N, "float32")

    def peakmem_adam_1000_steps(self, impl):
        step = self.step
        for _ in range(1000):
            step()


class TrackAdamSpeedup:
    """reference time / fastlr time for one Adam step, measured interleaved in-process."""

    params = [SIZES, DTYPES]
    param_names = ["n", "dtype"]
    unit = "x"
    timeout = 120

    # Interleaved samples of each implementation: at least MIN_SAMPLES, then more until
    # MAX_SAMPLES or BUDGET seconds. Each sample is a batch of >= 5 ms (one call at 16M).
    MIN_SAMPLES = 3
    MAX_SAMPLES = 15
    BUDGET = 3.0

    def setup(self, n, dtype):
        steady_state_malloc()
        base = adam_data(n, dtype)
        self.data = {impl: copy_data(base) for impl in IMPLS}

    def _call(self, impl):
        fn = IMPLS[impl].adam
        d = self.data[impl]
        p, g, m, v = d["param"], d["grad"], d["exp_avg"], d["exp_avg_sq"]

        def call():
            fn(p, g, m, v, step=STEP, lr=LR)

        return call

    def track_adam_speedup(self, n, dtype):
        samplers = {impl: per_call_time(self._call(impl))[1] for impl in IMPLS}
        best = {impl: float("inf") for impl in IMPLS}
        start = time.perf_counter()
        for i in range(n_samples(self.MAX_SAMPLES)):
            if i >= self.MIN_SAMPLES and time.perf_counter() - start > self.BUDGET:
                break
            for impl, sample in samplers.items():
                best[impl] = min(best[impl], sample())
        return round(best["reference"] / best["fastlr"], 2)


class TrackAdamError:
    """max |param_fastlr - param_reference| after a few Adam steps from the same state."""

    params = [SIZES, DTYPES]
    param_names = ["n", "dtype"]
    unit = "abs err"
    timeout = 120
    STEPS = 5

    def setup(self, n, dtype):
        steady_state_malloc()
        base = adam_data(n, dtype)
        self.data = {impl: copy_data(base) for impl in IMPLS}

    def track_adam_max_abs_error(self, n, dtype):
        for impl, mod in IMPLS.items():
            d = self.data[impl]
            for step in range(STEP, STEP + n_samples(self.STEPS)):
                mod.adam(d["param"], d["grad"], d["exp_avg"], d["exp_avg_sq"],
                         step=step, lr=LR)
        a = self.data["fastlr"]["param"].astype(np.float64)
        b = self.data["reference"]["param"].astype(np.float64)
        return float(np.max(np.abs(a - b)))
