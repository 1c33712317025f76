"""fastlr.DAdaptAdam / DAdaptSGD / DAdaptAdaGrad against the dadaptation package (3.2): one
``step``.

Params of the shapes of a small MLP (two weight matrices and their biases) at two sizes,
about 10K and 1M elements in all, float32 and float64; the same data on both sides (torch
tensors of the same arrays, grads fixed; no weight decay, which the package would add into
the grads). Both optimizers are warmed up past their first step (state created, ``d``
moved); each step then updates the params and the estimate in place, so successive samples
continue one run. 1 thread (``torch.set_num_threads(1)``, ``n_threads=1``).

``TimeDAdaptStep``: absolute time per impl. ``TrackDAdaptSpeedupVsPackage``: package time /
fastlr time, interleaved in one process (best of several samples each). Everything is
skipped (``NotImplementedError`` in ``setup``) when torch or dadaptation is not installed.
"""

import time

import numpy as np

from .bench_prodigy import DTYPES, WIDTHS, _shapes
from .common import n_samples, optional

OPTIMIZERS = ["DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad"]


def step_fn(impl, name, size, dtype):
    """A zero-argument callable running one step of optimizer ``name`` (state created)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in _shapes(size)]
    grads = [rng.standard_normal(s).astype(dtype) for s in _shapes(size)]
    if impl == "fastlr":
        import fastlr

        opt = getattr(fastlr, name)(params, n_threads=1)

        def step():
            opt.step(grads)
    else:
        torch, dadaptation = optional("torch", "dadaptation")
        tp = [torch.from_numpy(p) for p in params]
        for p, g in zip(tp, grads):
            p.grad = torch.from_numpy(g)
        topt = getattr(dadaptation, name)(tp)

        def step():
            with torch.no_grad():
                topt.step()
    for _ in range(3):
        step()
    return step


class TimeDAdaptStep:
    params = (["fastlr", "dadaptation"], OPTIMIZERS, list(WIDTHS), DTYPES)
    param_names = ["impl", "optimizer", "size", "dtype"]
    timeout = 300

    def setup(self, impl, optimizer, size, dtype):
        optional("torch", "dadaptation")
        self.step = step_fn(impl, optimizer, size, dtype)

    def time_step(self, impl, optimizer, size, dtype):
        self.step()


def speedup(optimizer, size, dtype, samples=20):
    """package time / fastlr time for one step: best of ``samples`` interleaved samples."""
    steps = {impl: step_fn(impl, optimizer, size, dtype) for impl in ("fastlr", "dadaptation")}
    best = {impl: float("inf") for impl in steps}
    for _ in range(n_samples(samples)):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - start)
    return round(best["dadaptation"] / best["fastlr"], 2), best


class TrackDAdaptSpeedupVsPackage:
    params = (OPTIMIZERS, list(WIDTHS), DTYPES)
    param_names = ["optimizer", "size", "dtype"]
    unit = "dadaptation time / fastlr time"
    timeout = 300

    def setup(self, optimizer, size, dtype):
        optional("torch", "dadaptation")

    def track_speedup(self, optimizer, size, dtype):
        return speedup(optimizer, size, dtype)[0]
