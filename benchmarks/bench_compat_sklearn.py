"""fastlr.compat.sklearn's optimizers against scikit-learn's own.

``TimeMLPUpdateParams`` / ``TrackMLPSpeedupVsSklearn``: one ``update_params`` over a
64-128-10 MLP's four arrays (what MLPClassifier hands its optimizer per batch; per-call
overhead shows), Adam and SGD, float64, float32 and mixed (float32 weights, float64 grads).

``TimeAdamUpdateParams`` / ``TrackAdamSpeedupVsSklearn``: one Adam ``update_params`` call on
one array of 64K (L2) or 1M (LLC-ish) elements, float32 and float64. fastlr runs 1 thread (``n_threads=1``; sklearn's NumPy expressions are serial) and 2
threads (``fastlr-2t``). Both start from the same realistic state (``common.adam_data``,
``t = STEP - 1``). sklearn allocates a few temporaries per step and rebinds ``ms``/``vs``;
fastlr updates its buffers in place. Cases that need sklearn are skipped
(``NotImplementedError``) when it is not installed.
"""

import time

from .common import STEP, adam_data, per_call_time, steady_state_malloc, n_samples

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


def _speedup(samplers):
    """sklearn time / fastlr time: best of up to 7 interleaved samples each (at least 3)."""
    best = {k: float("inf") for k in samplers}
    start = time.perf_counter()
    for i in range(n_samples(7)):
        if i >= 3 and time.perf_counter() - start > 4.0:
            break
        for k, sample in samplers.items():
            best[k] = min(best[k], sample())
    return round(best["sklearn"] / best["fastlr"], 2)


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
        return _speedup(self.samplers)


# ---------------------------------------------------------------------------------------
# MLP-shaped lists: what MLPClassifier / MLPRegressor hand their optimizer every batch
# ---------------------------------------------------------------------------------------
#: coefs_ + intercepts_ of a 64-128-10 MLP (64x128, 128x10, 128, 10: 9,738 params)
MLP_SHAPES = [(64, 128), (128, 10), (128,), (10,)]
#: param dtype / grad dtype: "mixed" is float32 weights with float64 grads (MLPRegressor on
#: float32 X keeps float64 targets; the state becomes float64 after the first update)
MLP_DTYPES = {"float64": ("float64", "float64"), "float32": ("float32", "float32"),
              "mixed": ("float32", "float64")}
MLP_OPTIMIZERS = ["adam", "sgd"]
SEED_MLP = 20261202


def _mlp_stepper(impl, optimizer, dtypes):
    """A zero-argument callable doing one ``update_params`` over the MLP's four arrays."""
    import numpy as np

    p_dtype, g_dtype = MLP_DTYPES[dtypes]
    rng = np.random.default_rng(SEED_MLP)
    params = [rng.standard_normal(s).astype(p_dtype) for s in MLP_SHAPES]
    grads = [(1e-2 * rng.standard_normal(s)).astype(g_dtype) for s in MLP_SHAPES]
    name = {"adam": "AdamOptimizer", "sgd": "SGDOptimizer"}[optimizer]
    if impl == "fastlr":
        import fastlr.compat.sklearn as mod

        opt = getattr(mod, name)(params, n_threads=1)
    else:
        try:
            from sklearn.neural_network import _stochastic_optimizers as mod
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        opt = getattr(mod, name)(params)

    def step():
        opt.update_params(params, grads)

    for _ in range(3):      # warm up; state promoted to float64 in the mixed case
        step()
    return step


class TimeMLPUpdateParams:
    """Seconds per update_params over a 64-128-10 MLP's four arrays, 1 thread."""

    params = [["fastlr", "sklearn"], MLP_OPTIMIZERS, list(MLP_DTYPES)]
    param_names = ["impl", "optimizer", "dtypes"]
    timeout = 120

    def setup(self, impl, optimizer, dtypes):
        steady_state_malloc()
        self.step = _mlp_stepper(impl, optimizer, dtypes)

    def time_update_params(self, impl, optimizer, dtypes):
        self.step()


class TrackMLPSpeedupVsSklearn:
    """sklearn time / fastlr time (1 thread) per update_params over a 64-128-10 MLP's
    arrays, interleaved in one process, best of up to 7 samples each (issue target: >= 3)."""

    params = [MLP_OPTIMIZERS, list(MLP_DTYPES)]
    param_names = ["optimizer", "dtypes"]
    unit = "x"
    timeout = 120

    def setup(self, optimizer, dtypes):
        steady_state_malloc()
        self.samplers = {impl: per_call_time(_mlp_stepper(impl, optimizer, dtypes))[1]
                         for impl in ("sklearn", "fastlr")}

    def track_speedup(self, optimizer, dtypes):
        return _speedup(self.samplers)
