"""Memory rooflines: what this machine gives each optimizer's access pattern, every run.

``fastlr._tools.roofline`` runs plain C loops with the streams of an optimizer step (SGD: read p, g,
write p = 12 B/elem f32; momentum/Nesterov/RMSprop: 20 B; Adam/AdamW: 28 B) and trivial
arithmetic, so out of cache they run at the memory bandwidth those streams get. GB/s counts
bytes read + written (every write follows a read of the same line: no RFO).

``TrackRoofline`` records the bandwidth of each pattern at 16 M float32 elements (far beyond
any cache), 1 and 2 threads, so every stored run knows its rooflines; ``TrackRooflineFraction``
times the fastlr kernel and the pattern loop interleaved in one process (float32 and
float64, 1 and 2 threads) and reports the kernel's share of the roofline in percent (the
"% of roofline" of notes/perf.md section 7; AdamW and Nesterov share Adam's and momentum's
patterns and loops).
Both use the staggered buffer layout of ``fastlr bench`` (see ``fastlr._tools.roofline``).
"""

import time

from fastlr._tools import roofline as _roofline
from fastlr._tools.bench import fastlr_stepper, make_inputs

from .common import steady_state_malloc, n_samples

N = 1 << 24
PATTERNS = ["sgd", "momentum", "adam"]
THREADS = [1, 2]


def _gbps(pattern, n, dtype, seconds):
    return _roofline.bytes_per_element(pattern, dtype) * n / seconds / 1e9


class TrackRoofline:
    """Best GB/s of the pattern loop, 16 M float32 elements (5 one-pass samples)."""

    params = [PATTERNS, THREADS]
    param_names = ["pattern", "threads"]
    unit = "GB/s"
    timeout = 120
    SAMPLES = 5

    def setup(self, pattern, threads):
        self.bufs = _roofline.make_buffers(pattern, N, "float32")
        _roofline.run(pattern, self.bufs, threads, 1)        # warm up: threads, TLB

    def track_bandwidth(self, pattern, threads):
        best = min(_roofline.time_passes(pattern, self.bufs, threads, 1)
                   for _ in range(n_samples(self.SAMPLES)))
        return round(_gbps(pattern, N, "float32", best), 2)


class TrackRooflineFraction:
    """100 x (pattern loop time / fastlr kernel time), 16 M elements, best of 4 interleaved
    one-step samples each: the kernel's GB/s as a percentage of the roofline."""

    params = [["sgd", "momentum", "rmsprop", "adam"], ["float32", "float64"], THREADS]
    param_names = ["optimizer", "dtype", "threads"]
    unit = "%"
    timeout = 120
    SAMPLES = 4

    def setup(self, optimizer, dtype, threads):
        steady_state_malloc()
        self.pattern = _roofline.PATTERN_OF[optimizer]
        self.bufs = _roofline.make_buffers(self.pattern, N, dtype)
        self.step = fastlr_stepper(optimizer, make_inputs(optimizer, N, dtype), threads)

    def track_percent_of_roofline(self, optimizer, dtype, threads):
        kernel, loop = [], []
        self.step()
        _roofline.run(self.pattern, self.bufs, threads, 1)
        for _ in range(n_samples(self.SAMPLES)):
            t0 = time.perf_counter()
            self.step()
            kernel.append(time.perf_counter() - t0)
            loop.append(_roofline.time_passes(self.pattern, self.bufs, threads, 1))
        return round(100.0 * min(loop) / min(kernel), 1)
