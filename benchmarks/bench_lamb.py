"""fastlr.LAMB / fastlr.LARS: one step over a few layer shapes, 1 thread.

Three implementations on the same arrays (float32 and float64):

- ``fastlr``: the optimizer's compiled step (two passes per array, the norms fused in);
- ``reference``: ``step_reference``, the plain-NumPy transcription
  (fastlr.reference.layerwise, the kernels' twin);
- ``elementwise``: the element-wise optimizer each one scales -- fastlr.AdamW for LAMB,
  fastlr.SGD with momentum for LARS -- so the ratio shows the cost of the trust ratio's
  extra pass and reductions.

The layer sets: ``mlp`` (4 small arrays, 34K elements: the per-call cost), ``block`` (a
transformer block of width 768: 12 arrays, 7.1M elements: memory traffic), ``wide`` (one
2048 x 2048 matrix and its bias).

``TimeLayerwiseStep``: absolute time per step and implementation.
``TrackLayerwiseRatios``: in one process, interleaved, best of several samples each:
``track_speedup_vs_reference`` (reference time / fastlr time) and
``track_cost_vs_elementwise`` (fastlr time / element-wise optimizer time).
"""

import numpy as np

from .common import per_call_time, n_samples

LAYERS = {"mlp": [(256, 128), (128,), (128, 10), (10,)],
          "block": [(768, 768)] * 4 + [(768, 3072), (3072, 768), (3072,)] + [(768,)] * 5,
          "wide": [(2048, 2048), (2048,)]}
OPTIMIZERS = ["lamb", "lars"]
DTYPES = ["float32", "float64"]
IMPLS = ["fastlr", "reference", "elementwise"]
SAMPLES = 5


def stepper(impl, optimizer, layers, dtype):
    """A zero-argument callable running one step of ``impl`` (fresh arrays, 1 thread)."""
    import fastlr

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in LAYERS[layers]]
    grads = [rng.standard_normal(s).astype(dtype) * 1e-3 for s in LAYERS[layers]]
    if impl == "elementwise":
        opt = (fastlr.AdamW(params, lr=1e-3, weight_decay=1e-2, n_threads=1)
               if optimizer == "lamb" else
               fastlr.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, n_threads=1))
        return lambda: opt.step(grads)
    cls = fastlr.LAMB if optimizer == "lamb" else fastlr.LARS
    kw = dict(weight_decay=1e-2) if optimizer == "lamb" else dict(weight_decay=1e-4)
    opt = cls(params, lr=1e-3, n_threads=1, **kw)
    if impl == "reference":
        return lambda: opt.step_reference(grads)
    return lambda: opt.step(grads)


class TimeLayerwiseStep:
    params = (OPTIMIZERS, IMPLS, list(LAYERS), DTYPES)
    param_names = ["optimizer", "impl", "layers", "dtype"]
    timeout = 300

    def setup(self, optimizer, impl, layers, dtype):
        self.step = stepper(impl, optimizer, layers, dtype)
        self.step()         # warm up (state pages, the engine)

    def time_step(self, optimizer, impl, layers, dtype):
        self.step()


def best_times(optimizer, layers, dtype, samples=SAMPLES):
    """{impl: best per-step time} over ``samples`` interleaved samples."""
    timers = {impl: per_call_time(stepper(impl, optimizer, layers, dtype))[1]
              for impl in IMPLS}
    best = {impl: float("inf") for impl in IMPLS}
    for _ in range(n_samples(samples)):
        for impl, sample in timers.items():
            best[impl] = min(best[impl], sample())
    return best


class TrackLayerwiseRatios:
    params = (OPTIMIZERS, list(LAYERS), DTYPES)
    param_names = ["optimizer", "layers", "dtype"]
    timeout = 300

    def setup(self, optimizer, layers, dtype):
        self.best = best_times(optimizer, layers, dtype)

    def track_speedup_vs_reference(self, optimizer, layers, dtype):
        return round(self.best["reference"] / self.best["fastlr"], 2)
    track_speedup_vs_reference.unit = "reference time / fastlr time"

    def track_cost_vs_elementwise(self, optimizer, layers, dtype):
        return round(self.best["fastlr"] / self.best["elementwise"], 2)
    track_cost_vs_elementwise.unit = "fastlr time / AdamW (LAMB) or SGD (LARS) time"
