"""Weight EMA: one update of ``fastlr.ema.EMA`` (the fused in-place kernel, one compiled call)
against a best-effort in-place NumPy version of the same update, float32, at 64K elements
(in cache) and 16M (memory bound).

An EMA update reads the average and the param and writes the average: 12 bytes per float32
element for the fused kernel. The NumPy version needs three passes with a preallocated
scratch buffer (``np.subtract``, ``np.multiply``, ``np.add`` with ``out=``): 36 bytes.

``TrackEMASpeedup`` times both interleaved in one process and reports numpy / fastlr, which
holds up on a noisy, shared machine far better than two absolute timings.
"""

import numpy as np

from .common import SEED, per_call_time, steady_state_malloc

#: 64K (in cache) and 16M (memory bound) float32 elements.
EMA_SIZES = [65536, 16777216]
DECAY = 0.999
#: fastlr: EMA.update with n_threads=1; fastlr-2t: n_threads=2; numpy: numpy_ema_update.
EMA_IMPLS = ["fastlr", "fastlr-2t", "numpy"]

_CACHE = {}


def ema_inputs(n, dtype="float32"):
    """An average and a param of ``n`` elements (fresh arrays, C order)."""
    rng = np.random.default_rng([SEED, n])
    param = rng.standard_normal(n).astype(dtype)
    averaged = (param + rng.normal(0.0, 1e-2, n)).astype(dtype)
    return averaged, param


def numpy_ema_update(averaged, param, scratch, weight):
    """``averaged += weight * (param - averaged)`` with out= ufuncs and a preallocated
    scratch buffer (``weight = 1 - decay`` as a scalar of the arrays' dtype)."""
    np.subtract(param, averaged, out=scratch)
    np.multiply(scratch, weight, out=scratch)
    np.add(averaged, scratch, out=averaged)


def ema_stepper(impl, n, dtype="float32"):
    """A zero-argument callable doing one in-place EMA update with ``impl``."""
    key = (impl, n, dtype)
    step = _CACHE.get(key)
    if step is not None:
        return step
    _CACHE.clear()
    averaged, param = ema_inputs(n, dtype)
    if impl.startswith("fastlr"):
        from fastlr.ema import EMA

        ema = EMA(param, DECAY, n_threads=2 if impl == "fastlr-2t" else 1)
        ema.load_state_dict(dict(ema.state_dict(), averaged=[averaged]))
        step = ema.update
    elif impl == "numpy":
        scratch = np.empty_like(param)
        weight = np.dtype(dtype).type(1.0 - DECAY)

        def step():
            numpy_ema_update(averaged, param, scratch, weight)
    else:
        raise NotImplementedError(impl)
    step()                      # warm up: page faults, the OpenMP thread pool
    _CACHE[key] = step
    return step


class TimeEMAUpdate:
    """Seconds per in-place EMA update of one float32 array of ``n`` elements."""

    param_names = ["impl", "n"]
    params = [EMA_IMPLS, EMA_SIZES]
    rounds = 2
    repeat = (5, 100, 2.0)
    warmup_time = 0.1
    timeout = 120

    def setup(self, impl, n):
        steady_state_malloc()
        self.step = ema_stepper(impl, n)

    def time_update(self, impl, n):
        self.step()


class TrackEMASpeedup:
    """In-place NumPy time / fastlr time for one EMA update (1 thread each), timed
    interleaved in one process (the median of 5 paired samples)."""

    param_names = ["n"]
    params = [EMA_SIZES]
    unit = "x"
    timeout = 300

    def setup(self, n):
        steady_state_malloc()

    def track_speedup(self, n):
        # each sampler keeps its own stepper (and arrays) alive
        _, fast = per_call_time(ema_stepper("fastlr", n))
        _, slow = per_call_time(ema_stepper("numpy", n))
        ratios = [slow() / fast() for _ in range(5)]
        return float(np.median(ratios))
