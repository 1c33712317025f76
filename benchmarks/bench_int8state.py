"""8-bit block-wise quantized optimizer state (``fastlr.kernels.adam_int8_state``): float32
AdamW over a model's parameter shapes, 1 thread, against float32 state and against
``torch.optim.AdamW(fused=True)``.

The shapes, data and the float32 / torch steps are bench_lowprecision's (``16M``: 8 tensors of
2M elements; ``gpt2-small``: GPT-2 small's 148 tensors, 124M elements). The int8 step calls
the kernel once per tensor, as ``fastlr.AdamW(state_dtype="int8")`` does after checking the
whole step. Samples are interleaved in one process and the best of each kept.

``python -m benchmarks.bench_int8state [16M|gpt2-small]`` prints the table of the state
dtypes (the class with float32, bfloat16 and int8 state, and the kernel looped by hand)
against torch fused float32.

Bytes moved per element: param r/w 8, grad 4, two 1-byte codes r/w 4, the two float32
scales per 256-element block r/w 2 * 2 * 4 / 256: 16.0625 (float32 state: 28). The roofline
is that many bytes at the bandwidth this machine gives Adam's float32 access pattern
(``fastlr._tools.roofline``, the ``adam`` pattern: 28 bytes per element).
"""

import time

import numpy as np

from .bench_lowprecision import SIZES, _data, step_fn
from .common import n_samples, per_call_time, steady_state_malloc

#: Bytes one AdamW step with int8 state moves per element (see the module docstring).
INT8_BYTES = 8 + 4 + 4 + 2 * 2 * 4 / 256
_CACHE = {}


def int8_step_fn(size):
    """One AdamW step (lr 1e-3, weight_decay 0.01) with int8 state over ``size``'s tensors
    (cached per process); returns (step, elements)."""
    if size in _CACHE:
        return _CACHE[size]
    from fastlr import kernels

    params, grads = _data(size)
    state = []
    for p in params:
        nb = (p.size + 255) // 256
        state.append((np.zeros(p.shape, np.uint8), np.zeros(nb, np.float32),
                      np.zeros(p.shape, np.uint8), np.zeros(nb, np.float32)))
    count = [0]

    def fn():
        count[0] += 1
        for p, g, st in zip(params, grads, state):
            kernels.adam_int8_state(p, g, *st, step=count[0], lr=1e-3, weight_decay=0.01,
                                    decoupled_weight_decay=True, n_threads=1)
    fn()
    _CACHE[size] = fn, sum(p.size for p in params)
    return _CACHE[size]


def _best(samplers, budget=20.0):
    best = {k: float("inf") for k in samplers}
    start = time.perf_counter()
    for i in range(n_samples(7)):
        if i >= 3 and time.perf_counter() - start > budget:
            break
        for k, sample in samplers.items():
            best[k] = min(best[k], sample())
    return best


class TrackInt8Speedup:
    """``versus`` time / int8-state time per AdamW step (interleaved samples, best of up
    to 7)."""

    params = [["torch-fused", "fastlr-float32", "fastlr-bfloat16"], list(SIZES)]
    param_names = ["versus", "size"]
    unit = "x"
    timeout = 600

    def setup(self, versus, size):
        steady_state_malloc()
        self.samplers = {"int8": per_call_time(int8_step_fn(size)[0], min_sample=0.05)[1],
                         versus: per_call_time(step_fn(versus, size), min_sample=0.05)[1]}

    def track_speedup(self, versus, size):
        best = _best(self.samplers)
        return round(best[versus] / best["int8"], 2)


class TrackInt8RooflineFraction:
    """The int8-state step's share of its roofline, in percent: INT8_BYTES per element at
    the bandwidth of the float32 ``adam`` pattern (1 thread, measured alongside)."""

    params = [list(SIZES)]
    param_names = ["size"]
    unit = "%"
    timeout = 600

    def setup(self, size):
        from fastlr._tools import roofline

        steady_state_malloc()
        fn, self.n = int8_step_fn(size)
        bufs = roofline.make_buffers("adam", self.n)
        self.samplers = {"int8": per_call_time(fn, min_sample=0.05)[1],
                         "adam": lambda: roofline.time_passes("adam", bufs, 1, 1)}

    def track_roofline_percent(self, size):
        from fastlr._tools import roofline

        best = _best(self.samplers)
        bandwidth = roofline.bytes_per_element("adam") * self.n / best["adam"]
        return round(100 * INT8_BYTES * self.n / bandwidth / best["int8"], 1)


class TrackInt8StateBytesPerParam:
    """Bytes of AdamW state per param element with int8 state (codes + block scales)."""

    unit = "bytes"

    def track_state_bytes(self):
        p = np.zeros((64, 1024), np.float32)
        nb = (p.size + 255) // 256
        return (2 * p.size * np.dtype(np.uint8).itemsize + 2 * nb * 4) / p.size


if __name__ == "__main__":  # python -m benchmarks.bench_int8state [16M|gpt2-small]
    import sys

    size = sys.argv[1] if len(sys.argv) > 1 else "16M"
    # the state dtypes through fastlr.AdamW (float32 params and grads), the int8 kernel
    # looped by hand, and torch fused float32: samples interleaved, best of each
    impls = ["torch-fused", "fastlr-float32", "fastlr-bfloat16", "fastlr-int8"]
    samplers = {k: per_call_time(step_fn(k, size), min_sample=0.05)[1] for k in impls}
    samplers["kernel-int8"] = per_call_time(int8_step_fn(size)[0], min_sample=0.05)[1]
    best = _best(samplers, budget=60.0)
    print(f"AdamW, float32 params and grads, {size}, 1 thread: torch fused float32 time / "
          f"this time (best of interleaved samples)")
    for k in samplers:
        print(f"  {k:16s} {best[k] * 1e3:8.1f} ms  {best['torch-fused'] / best[k]:5.2f}x")
