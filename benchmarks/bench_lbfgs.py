"""fastlr.LBFGS against torch.optim.LBFGS: one ``step`` of 20 iterations.

The problem is least squares with a diagonal design, ``0.5 * sum(a * (x - b)**2)`` with
``a`` log-spaced over [1, 1e3] (ill-conditioned enough that all 20 iterations run:
``tolerance_grad = tolerance_change = 0``), on n = 10K and 1M parameters, float32 and
float64, without and with the strong Wolfe line search, ``history_size=10``. The closure
costs O(n) in both (NumPy for fastlr, torch ops for torch), so the optimizers' own work (the
two-loop recursion: about ``4 * history`` dot products and axpys per iteration) shows. Each
sample builds both optimizers afresh and starts from the same point. 1 thread
(``torch.set_num_threads(1)``; NumPy's BLAS as configured).

``TimeLBFGSStep``: absolute times per impl. ``TrackLBFGSSpeedupVsTorch``: torch time /
fastlr time, interleaved in one process (best of several samples each). Everything is
skipped (``NotImplementedError`` in ``setup``) when torch is not installed.
"""

import time

import numpy as np

from .common import n_samples, optional

SIZES = [10_000, 1_000_000]
DTYPES = ["float32", "float64"]
LINE_SEARCH = [None, "strong_wolfe"]
OPTIONS = {"max_iter": 20, "history_size": 10, "tolerance_grad": 0.0,
           "tolerance_change": 0.0}


def _problem(n, dtype):
    rng = np.random.default_rng(0)
    a = np.logspace(0, 3, n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return a, b


def step_fn(impl, n, dtype, line_search_fn):
    """A zero-argument callable: build the optimizer at the start point, run one step."""
    a, b = _problem(n, dtype)
    if impl == "fastlr":
        import fastlr

        x = np.zeros(n, dtype=dtype)

        def closure():
            r = x - b
            g = a * r
            return 0.5 * float(g @ r), [g]

        def step():
            x[...] = 0
            fastlr.LBFGS([x], line_search_fn=line_search_fn, **OPTIONS).step(closure)
        return step
    torch = optional("torch")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tx = torch.zeros(n, dtype=getattr(torch, dtype), requires_grad=True)

    def tclosure():
        with torch.no_grad():
            r = tx - tb
            g = ta * r
            tx.grad = g
            return float(g @ r) * 0.5

    def tstep():
        with torch.no_grad():
            tx.zero_()
        torch.optim.LBFGS([tx], line_search_fn=line_search_fn, **OPTIONS).step(tclosure)
    return tstep


class TimeLBFGSStep:
    params = (["fastlr", "torch"], SIZES, DTYPES, LINE_SEARCH)
    param_names = ["impl", "n", "dtype", "line_search_fn"]
    timeout = 300

    def setup(self, impl, n, dtype, line_search_fn):
        optional("torch")
        self.step = step_fn(impl, n, dtype, line_search_fn)
        self.step()         # warm up

    def time_step(self, impl, n, dtype, line_search_fn):
        self.step()


def speedup(n, dtype, line_search_fn, samples=5):
    """torch time / fastlr time for one step: best of ``samples`` interleaved samples."""
    steps = {impl: step_fn(impl, n, dtype, line_search_fn) for impl in ("fastlr", "torch")}
    best = {impl: float("inf") for impl in steps}
    for _ in range(n_samples(samples)):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - start)
    return round(best["torch"] / best["fastlr"], 2), best


class TrackLBFGSSpeedupVsTorch:
    params = (SIZES, DTYPES, LINE_SEARCH)
    param_names = ["n", "dtype", "line_search_fn"]
    unit = "torch time / fastlr time"
    timeout = 300

    def setup(self, n, dtype, line_search_fn):
        optional("torch")

    def track_speedup(self, n, dtype, line_search_fn):
        return speedup(n, dtype, line_search_fn)[0]
