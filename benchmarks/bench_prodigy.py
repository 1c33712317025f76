"""fastlr.Prodigy against prodigyopt.Prodigy (1.1.2): one ``step``.

Params of the shapes of a small MLP (two weight matrices and their biases, one of each
per layer) at two sizes, about 10K and 1M elements in all, float32 and float64; the same
data on both sides (torch tensors of the same arrays, grads fixed). Both optimizers are
warmed up past their first step (state created, ``d`` moved); each step then updates the
params and the estimate in place, so successive samples continue one run. 1 thread
(``torch.set_num_threads(1)``, ``fastlr.Prodigy(..., n_threads=1)``).

``TimeProdigyStep``: absolute time per impl. ``TrackProdigySpeedupVsProdigyopt``:
prodigyopt time / fastlr time, interleaved in one process (best of several samples each).
Everything is skipped (``NotImplementedError`` in ``setup``) when torch or prodigyopt is not
installed.
"""

import time

import numpy as np

from .common import n_samples, optional

#: hidden width -> shapes of (W1, b1, W2, b2) for 64 inputs and 10 outputs
WIDTHS = {"10K": 128, "1M": 14000}
DTYPES = ["float32", "float64"]


def _shapes(size):
    h = WIDTHS[size]
    return [(h, 64), (h,), (10, h), (10,)]


def step_fn(impl, size, dtype):
    """A zero-argument callable running one step (state already created)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in _shapes(size)]
    grads = [rng.standard_normal(s).astype(dtype) for s in _shapes(size)]
    if impl == "fastlr":
        import fastlr

        opt = fastlr.Prodigy(params, weight_decay=0.01, n_threads=1)

        def step():
            opt.step(grads)
    else:
        torch, prodigyopt = optional("torch", "prodigyopt")
        tp = [torch.from_numpy(p) for p in params]
        for p, g in zip(tp, grads):
            p.grad = torch.from_numpy(g)
        topt = prodigyopt.Prodigy(tp, weight_decay=0.01)

        def step():
            with torch.no_grad():
                topt.step()
    for _ in range(3):
        step()
    return step


class TimeProdigyStep:
    params = (["fastlr", "prodigyopt"], list(WIDTHS), DTYPES)
    param_names = ["impl", "size", "dtype"]
    timeout = 300

    def setup(self, impl, size, dtype):
        optional("torch", "prodigyopt")
        self.step = step_fn(impl, size, dtype)

    def time_step(self, impl, size, dtype):
        self.step()


def speedup(size, dtype, samples=20):
    """prodigyopt time / fastlr time for one step: best of ``samples`` interleaved samples."""
    steps = {impl: step_fn(impl, size, dtype) for impl in ("fastlr", "prodigyopt")}
    best = {impl: float("inf") for impl in steps}
    for _ in range(n_samples(samples)):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - start)
    return round(best["prodigyopt"] / best["fastlr"], 2), best


class TrackProdigySpeedupVsProdigyopt:
    params = (list(WIDTHS), DTYPES)
    param_names = ["size", "dtype"]
    unit = "prodigyopt time / fastlr time"
    timeout = 300

    def setup(self, size, dtype):
        optional("torch", "prodigyopt")

    def track_speedup(self, size, dtype):
        return speedup(size, dtype)[0]
