"""fastlr.compat.sklearn.AdamOptimizer against scikit-learn's own AdamOptimizer.

One ``update_params`` call on one array of 64K (L2) or 1M (LLC-ish) elements, float32 and
float64. fastlr runs 1 thread (``n_threads=1``; sklearn's NumPy expressions are serial) and 2
threads (``fastlr-2t``). Both start from the same realistic state (``common.adam_data``,
``t = STEP - 1``). sklearn allocates a few temporaries per step and rebinds ``ms``/``vs``;
fastlr updates its buffers in place. Cases that need sklearn are skipped
(``NotImplementedError``) when it is not installed.
"""

import time

from .common import STEP, adam_data, per_call_time, steady_state_malloc

SIZES = [65536, 1048576]
DTYPES = ["float32", "float64"]
LR = 1e-3


def _stepper(impl, n, dtype):
    """A zero-argument callable doing one Adam update_params with ``impl``."""
    data = adam_data(n, dtype)
    params, grads = [data["param"]], [data["grad"]]
    if impl.startswith("fastlr"):
        from fastlr.compat.sklearn import AdamOptimizer

        opt = AdamOptimizer(params, LR, n_threads=2 if impl == "fastlr-2t" else 1)
        opt.ms[0][...] = data["exp_avg"]
        opt.vs[0][...] = data["exp_avg_sq"]
    else:
        try:
            from sklearn.neural_network._stochastic_optimizers import AdamOptimizer
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        opt = AdamOptimizer(params, LR)
        opt.ms = [data["exp_avg"].copy()]
        opt.vs = [data["exp_avg_sq"].copy()]
    opt.t = STEP - 1

    def step():
        opt.update_params(params, grads)

    step()          # warm up: allocator, OpenMP threads
    return step


class TimeAdamUpdateParams:
    """Seconds per AdamOptimizer.update_params over one array."""

    params = [["fastlr", "fastlr-2t", "sklearn"], SIZES, DTYPES]
    param_names = ["impl", "n", "dtype"]
    timeout = 120

    def setup(self, impl, n, dtype):
        steady_state_malloc()
        self.step = _stepper(impl, n, dtype)

    def time_update_params(self, impl, n, dtype):
        self.step()


class TrackAdamSpeedupVsSklearn:
    """sklearn time / fastlr time (1 thread) per update_params, interleaved in one process,
    best of up to 7 samples each."""

    params = [SIZES, DTYPES]
    param_names = ["n", "dtype"]
    unit = "x"
    timeout = 120

    def setup(self, n, dtype):
        steady_state_malloc()
        self.samplers = {impl: per_call_time(_stepper(impl, n, dtype))[1]
                         for impl in ("sklearn", "fastlr")}

    def track_speedup(self, n, dtype):
        best = {k: float("inf") for k in self.samplers}
        start = time.perf_counter()
        for i in range(7):
            if i >= 3 and time.perf_counter() - start > 4.0:
                break
            for k, sample in self.samplers.items():
                best[k] = min(best[k], sample())
        return round(best["sklearn"] / best["fastlr"], 2)
