"""16-bit params (issue #19): AdamW on bfloat16 params and grads through
``fastlr.kernels.adam_mixed``, with or without a float32 master copy, with float32 or
bfloat16 moments, 1 thread, against ``torch.optim.AdamW(fused=True)`` on float32 params
(the baseline of the issue's targets) and, as a peer, on bfloat16 params and grads (torch's
own 16-bit path: no master, nearest rounding, bfloat16 moments).

Shapes: those of bench_lowprecision (``16M``: 8 tensors of 2M elements; ``gpt2-small``:
GPT-2 small's 148 tensors, 124M elements). Every variant steps its own copy of the same
data; the samples are interleaved in one process and the best of each is kept, so the
ratios hold up on a shared machine better than absolute times.

Bytes a step moves per element (reads + writes): param 2 + 2, grad 2, master 4 + 4 (when
kept), each moment 2 + 2 (bfloat16) or 4 + 4 (float32):

=====================  =====  ==========================
mode                   bytes  optimizer-owned bytes/param
=====================  =====  ==========================
master, float32 state  30     12
master, bf16 state     22     8
no master, f32 state   22     8
no master, bf16 state  14     4
torch fused float32    28     8
=====================  =====  ==========================

``TrackMixedRooflineFraction``: a mode's time against a roofline that moves its bytes at
the bandwidth of the plain C loop with Adam's float32 streams (``fastlr._tools.roofline``,
pattern "adam", 16M elements, 1 thread; its passes sampled alternately with the steps):
100 x (bytes x elements / that bandwidth) / the step's time. (The roofline loops stream
float32 or float64 arrays only, so the bandwidth is that loop's, applied to the mode's
bytes.)

``TrackMixedClassSpeedup``: the same modes through :class:`fastlr.AdamW` (16-bit params
with ``master_weights`` True or False), against torch.

    asv run --python=same --bench "TrackMixed"
"""

import time

import numpy as np

from .bench_lowprecision import SIZES, _data
from .common import n_samples, per_call_time, steady_state_malloc

#: mode -> (master kept, moments' dtype)
MODES = {"master-f32state": (True, "float32"), "master-bf16state": (True, "bfloat16"),
         "nomaster-f32state": (False, "float32"), "nomaster-bf16state": (False, "bfloat16")}
#: the class's modes: those, and int8 state (fastlr.kernels.adam_int8_state; with masters
#: on them, without masters per chunk of the widened param: fastlr/optim/direct16.py)
CLASS_MODES = dict(MODES, **{"master-int8state": (True, "int8"),
                             "nomaster-int8state": (False, "int8")})
VERSUS = ["torch-fused", "torch-fused-bf16"]
_CACHE = {}


def bytes_moved(mode):
    """Bytes one element's step reads and writes in ``mode``."""
    master, state = MODES[mode]
    return 6 + (8 if master else 0) + (8 if state == "bfloat16" else 16)


def owned_bytes(mode):
    """Optimizer-owned bytes per param element in ``mode`` (master and moments)."""
    master, state = MODES[mode]
    return (4 if master else 0) + (4 if state == "bfloat16" else 8)


def _bf16_bits(x):
    return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)      # (truncated)


def step_fn(impl, size):
    """One AdamW step (lr 1e-3, weight_decay 0.01), 1 thread, of ``impl``: a key of
    :data:`MODES` (fastlr.kernels.adam_mixed on bfloat16 params and grads, per param by
    hand), ``"class-" + mode`` (:class:`fastlr.AdamW` in a mode of :data:`CLASS_MODES` on
    ``ml_dtypes`` bfloat16 params and grads), "torch-fused" (float32) or
    "torch-fused-bf16" (cached per process)."""
    key = (impl, size)
    if key in _CACHE:
        return _CACHE[key]
    params, grads = _data(size)
    if impl.startswith("torch"):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        torch.set_num_threads(1)
        dtype = torch.bfloat16 if impl == "torch-fused-bf16" else torch.float32
        tensors = [torch.nn.Parameter(torch.from_numpy(p).to(dtype)) for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g).to(dtype)
        fn = torch.optim.AdamW(tensors, lr=1e-3, weight_decay=0.01, fused=True).step
    elif impl.startswith("class-"):
        # fastlr.AdamW on ml_dtypes.bfloat16 params and grads (its fused pass per param)
        import fastlr

        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("ml_dtypes is not installed") from None
        master, state = CLASS_MODES[impl[len("class-"):]]
        p16 = [p.astype(ml_dtypes.bfloat16) for p in params]
        g16 = [g.astype(ml_dtypes.bfloat16) for g in grads]
        del params, grads
        opt = fastlr.AdamW(p16, lr=1e-3, weight_decay=0.01, n_threads=1, state_dtype=state,
                           master_weights=master)

        def fn():
            opt.step(g16)
    else:
        from fastlr import kernels

        master, state = MODES[impl]
        sdt = np.uint16 if state == "bfloat16" else np.float32
        bufs = [(_bf16_bits(p), _bf16_bits(g), np.zeros(p.shape, sdt), np.zeros(p.shape, sdt),
                 p if master else None) for p, g in zip(params, grads)]
        del params, grads
        count = [0]

        def fn():
            count[0] += 1
            for p, g, m, v, w in bufs:
                kernels.adam_mixed(p, g, m, v, w, step=count[0], lr=1e-3, weight_decay=0.01,
                                   decoupled_weight_decay=True, n_threads=1)
    fn()
    _CACHE[key] = fn
    return fn


def _best(samplers, seconds=20.0):
    best = {k: float("inf") for k in samplers}
    start = time.perf_counter()
    for i in range(n_samples(7)):
        if i >= 3 and time.perf_counter() - start > seconds:
            break
        for k, sample in samplers.items():
            best[k] = min(best[k], sample())
    return best


class TrackMixedSpeedup:
    """``versus`` time / adam_mixed time per step, bfloat16 params and grads (interleaved
    samples, best of up to 7)."""

    params = [VERSUS, list(MODES), list(SIZES)]
    param_names = ["versus", "mode", "size"]
    unit = "x"
    timeout = 900

    def setup(self, versus, mode, size):
        steady_state_malloc()
        self.samplers = {k: per_call_time(step_fn(k, size), min_sample=0.05)[1]
                         for k in (mode, versus)}

    def track_speedup(self, versus, mode, size):
        best = _best(self.samplers)
        return round(best[versus] / best[mode], 2)


class TrackMixedClassSpeedup:
    """:class:`fastlr.AdamW` on bfloat16 params and grads (``master_weights`` True or
    False: one fused pass per param; int8 state: in passes): torch fused float32 time / the
    class's time
    (``versus="kernel-loop"``: the kernel looped by hand / the class, its overhead; not in
    the default set, to keep the run short), interleaved samples, best of up to 7."""

    params = [["torch-fused"], ["master-f32state", "nomaster-f32state", "nomaster-bf16state",
                                "master-int8state", "nomaster-int8state"], list(SIZES)]
    param_names = ["versus", "mode", "size"]
    unit = "x"
    timeout = 900

    def setup(self, versus, mode, size):
        steady_state_malloc()
        other = mode if versus == "kernel-loop" else versus
        self.samplers = {k: per_call_time(step_fn(k, size), min_sample=0.05)[1]
                         for k in ("class-" + mode, other)}
        self.other = other

    def track_speedup(self, versus, mode, size):
        best = _best(self.samplers)
        return round(best[self.other] / best["class-" + mode], 2)


class TrackMixedRooflineFraction:
    """100 x (the mode's bytes at the float32 Adam roofline loop's bandwidth) / the step's
    time: the mode's share of the memory roofline, 1 thread. The loop's passes (16M
    elements) and the steps are sampled alternately in one process, best of each."""

    params = [list(MODES), list(SIZES)]
    param_names = ["mode", "size"]
    unit = "%"
    timeout = 900
    N = 1 << 24

    def setup(self, mode, size):
        from fastlr._tools import roofline

        steady_state_malloc()
        self.bufs = roofline.make_buffers("adam", self.N, "float32")
        self.loop = lambda: roofline.time_passes("adam", self.bufs, 1, 1)
        self.loop()                                                 # warm up
        self.sample = per_call_time(step_fn(mode, size), min_sample=0.05)[1]
        self.elements = sum(int(np.prod(s)) for s in SIZES[size])

    def track_roofline_percent(self, mode, size):
        from fastlr._tools import roofline

        best = _best({"step": self.sample, "loop": self.loop})
        gbps = roofline.bytes_per_element("adam") * self.N / best["loop"]
        floor = bytes_moved(mode) * self.elements / gbps
        return round(100 * floor / best["step"], 1)


class TrackMixedBytesPerParam:
    """Bytes of optimizer-owned memory (master and moments) per param element."""

    params = [list(MODES)]
    param_names = ["mode"]
    unit = "bytes"

    def track_owned_bytes(self, mode):
        from fastlr import kernels

        master, state = MODES[mode]
        sdt = np.uint16 if state == "bfloat16" else np.float32
        n = 4096
        bufs = [np.zeros(n, sdt), np.zeros(n, sdt)] + ([np.zeros(n, np.float32)] if master
                                                       else [])
        kernels.adam_mixed(np.zeros(n, np.uint16), np.zeros(n, np.uint16), *bufs, step=1,
                           lr=1e-3)
        return sum(b.nbytes for b in bufs) / n


#: the other optimizers of the table on 16-bit params (one pass per param in the step
#: engine: fastlr/_core/master16.pxd), by name: their hyperparameters
OTHERS = {"SGD": dict(lr=1e-3, momentum=0.9), "RMSprop": dict(lr=1e-3)}
#: their modes: float32 params and grads, or bfloat16 ones with or without masters
OTHER_MODES = {"float32": None, "master": True, "nomaster": False}


def other_step_fn(name, mode, size):
    """One step of ``fastlr.<name>`` (:data:`OTHERS`, 1 thread) over ``size``'s shapes in
    ``mode`` (:data:`OTHER_MODES`; cached per process)."""
    key = ("other", name, mode, size)
    if key in _CACHE:
        return _CACHE[key]
    import fastlr

    params, grads = _data(size)
    if mode != "float32":
        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("ml_dtypes is not installed") from None
        params = [p.astype(ml_dtypes.bfloat16) for p in params]
        grads = [g.astype(ml_dtypes.bfloat16) for g in grads]
        kw = {"master_weights": OTHER_MODES[mode]}
    else:
        kw = {}
    opt = getattr(fastlr, name)(params, n_threads=1, **OTHERS[name], **kw)

    def fn():
        opt.step(grads)
    fn()
    _CACHE[key] = fn
    return fn


class TrackOther16Speedup:
    """SGD (momentum) and RMSprop on bfloat16 params and grads, with master weights or
    without: the same optimizer's time on float32 params and grads / this time
    (interleaved samples, best of up to 7). Bytes per element, one state buffer: float32
    20 (param 4 + 4, grad 4, state 4 + 4); masters 20 (param 2 written, grad 2, master
    4 + 4, state 4 + 4; +2 for the written param's cache lines); no master 14 (param
    2 + 2, grad 2, state 4 + 4)."""

    params = [list(OTHERS), ["master", "nomaster"], list(SIZES)]
    param_names = ["optimizer", "mode", "size"]
    unit = "x"
    timeout = 900

    def setup(self, optimizer, mode, size):
        steady_state_malloc()
        self.samplers = {m: per_call_time(other_step_fn(optimizer, m, size),
                                          min_sample=0.05)[1] for m in (mode, "float32")}

    def track_speedup(self, optimizer, mode, size):
        best = _best(self.samplers)
        return round(best["float32"] / best[mode], 2)


def _others_table(size):
    impls = [(n, m) for n in OTHERS for m in OTHER_MODES]
    samplers = {k: per_call_time(other_step_fn(*k, size), min_sample=0.05)[1] for k in impls}
    best = _best(samplers, seconds=60.0)
    print(f"bfloat16 params and grads, {size}, 1 thread: the optimizer's float32 time / "
          f"this time (best of interleaved samples)")
    for n, m in impls:
        print(f"  {n:8s} {m:9s} {best[n, m] * 1e3:8.1f} ms  "
              f"{best[n, 'float32'] / best[n, m]:5.2f}x")


if __name__ == "__main__":  # python -m benchmarks.bench_mixed [16M|gpt2-small] [others]
    import sys

    size = sys.argv[1] if len(sys.argv) > 1 else "16M"
    if sys.argv[2:] == ["others"]:
        _others_table(size)
        sys.exit()
    impls = ["torch-fused", *("class-" + m for m in CLASS_MODES if m != "master-bf16state"),
             *MODES]
    samplers = {k: per_call_time(step_fn(k, size), min_sample=0.05)[1] for k in impls}
    best = _best(samplers, seconds=60.0)
    print(f"AdamW, bfloat16 params and grads, {size}, 1 thread: torch fused float32 time / "
          f"this time (best of interleaved samples)")
    for k in impls:
        print(f"  {k:28s} {best[k] * 1e3:8.1f} ms  {best['torch-fused'] / best[k]:5.2f}x")
