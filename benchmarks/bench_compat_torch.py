"""The PyTorch bridge: one ``step()`` of ``fastlr.compat.torch.Adam`` against torch.optim.Adam
(and, in ``TimeBridgeStep``, of every bridged class against torch's for-loop).

Float32 Adam over the parameter tensors of a size: 10 tensors of about n/10 elements each
(n = 64K: per-tensor overhead shows; n = 16M: memory bound) or ResNet-18's 62 parameter
shapes (11.7M elements, hard-coded below: no torchvision needed), 1 thread (``n_threads=1``,
``torch.set_num_threads(1)``). impl: ``fastlr-bridge`` (``fastlr.compat.torch.Adam``, a
torch optimizer whose step runs fastlr's kernels over every tensor in one compiled call),
``torch-fused`` (``torch.optim.Adam(fused=True)``) and ``torch-forloop`` (torch's default
on CPU tensors: the single-tensor for-loop, ``foreach=False``). Every benchmark is skipped
(``NotImplementedError`` in ``setup``) when torch is not installed.

As in bench_kernels.py, ``setup`` (re-run by asv before every sample) builds the tensors
once per process and steps the same optimizer afterwards: Adam at a steady state. Every
implementation of a size steps the same parameter and grad tensors, and the torch-API ones
(the bridge, torch fused, torch's for-loop) the same state tensors too: the comparison is
of the steps over identical memory. On the development VMs, where a set of tensors lies
moved a ResNet-18 step by up to 25% (the set allocated last ran fastest, whichever
optimizer stepped it), more than the differences measured here. ``fastlr-numpy`` keeps
fastlr's own state (its layout: ``fastlr.kernels.zeros_like_many``).
``TrackBridgeSpeedup`` times the bridge and torch interleaved in one process and reports
the ratio (torch time / bridge time, for Adam and AdamW), which holds up on a noisy machine
better than absolute timings.
"""

import time

from .common import per_call_time, steady_state_malloc, n_samples, optional

def _resnet18_shapes():
    """torchvision's resnet18 (1000 classes) parameter shapes, in model order: conv1 and bn1,
    four stages of two BasicBlocks (conv 3x3 + bn, twice; a 1x1 conv + bn downsample in the
    first block of stages 2-4), fc. 62 tensors, 11,689,512 elements."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    c_in = 64
    for c_out, down in ((64, False), (128, True), (256, True), (512, True)):
        for block in range(2):
            first = c_in if block == 0 else c_out
            shapes += [(c_out, first, 3, 3), (c_out,), (c_out,),
                       (c_out, c_out, 3, 3), (c_out,), (c_out,)]
            if down and block == 0:
                shapes += [(c_out, first, 1, 1), (c_out,), (c_out,)]
        c_in = c_out
    return shapes + [(1000, 512), (1000,)]


RESNET18 = _resnet18_shapes()
#: size name -> the parameter shapes
SIZES = {"64K": 65536, "resnet18": RESNET18, "16M": 16777216}
N_TENSORS = 10
OPTIMIZERS = ["Adam", "AdamW"]
IMPLS = ["fastlr-bridge", "torch-fused", "torch-forloop"]

_CACHE = {}


def _shared_tensors(torch, size):
    """The parameters of ``size`` (``_tensors``), made once per process and shared by every
    implementation (see the module notes)."""
    key = ("tensors", size if isinstance(size, int) else tuple(size))
    if key not in _CACHE:
        _CACHE[key] = _tensors(torch, size)
    return _CACHE[key]


def _tensors(torch, size):
    """float32 parameters (with grads), seeded: 10 of n elements in all for an int size, else
    one per shape of the list."""
    if isinstance(size, int):
        base, extra = divmod(size, N_TENSORS)
        shapes = [(base + (k < extra),) for k in range(N_TENSORS)]
    else:
        shapes = size
    g = torch.Generator().manual_seed(20240611)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=g))
        p.grad = 1e-2 * torch.randn(shape, generator=g)
        params.append(p)
    return params


def _warmed(key, step):
    """``step`` after three calls (state allocated, thread pools and lazy init warmed up),
    cached under ``key`` for the process."""
    for _ in range(3):
        step()
    _CACHE[key] = step
    return step


def step_fn(impl, size, optimizer="Adam"):
    """A zero-argument callable doing one optimizer step (cached for the process)."""
    key = (impl, size, optimizer)
    if key in _CACHE:
        return _CACHE[key]
    torch = optional("torch")
    params = _shared_tensors(torch, SIZES[size])
    if impl == "fastlr-bridge":
        import fastlr.compat.torch as ft

        opt = getattr(ft, optimizer)(params, lr=1e-3, n_threads=1)
    elif impl == "torch-fused":
        opt = getattr(torch.optim, optimizer)(params, lr=1e-3, fused=True)
    elif impl == "torch-forloop":
        opt = getattr(torch.optim, optimizer)(params, lr=1e-3, foreach=False)
    elif impl == "fastlr-numpy":
        # fastlr's own optimizer over NumPy views of the same tensors: the bridge's element
        # loops without reading torch objects, but over fastlr's own state (placed elsewhere)
        import fastlr

        views = [p.detach().numpy() for p in params]
        grads = [p.grad.numpy() for p in params]
        np_opt = getattr(fastlr, optimizer)(views, lr=1e-3, n_threads=1)

        return _warmed(key, lambda: np_opt.step(grads))
    else:
        raise ValueError(impl)
    # one state for every torch-API optimizer of (size, optimizer): the first one made keeps
    # it, the others step the same buffers (the keys and formats are torch's on both sides)
    shared = _CACHE.setdefault(("state", size, optimizer), opt.state)
    opt.state = shared
    return _warmed(key, opt.step)


class TimeBridgeAdamStep:
    """Seconds per ``opt.step()``: float32 Adam, 10 tensors, 1 thread."""

    params = [IMPLS, list(SIZES)]
    param_names = ["impl", "size"]
    timeout = 180

    def setup(self, impl, size):
        optional("torch")
        steady_state_malloc()
        self.step = step_fn(impl, size)

    def time_step(self, impl, size):
        self.step()


class TrackBridgeSpeedup:
    """torch time / fastlr bridge time per step (interleaved in one process, best of 7), for
    Adam and AdamW (the same class on both sides; torch-fused: ``fused=True``).
    ``fastlr-numpy`` (``fastlr.AdamW`` over NumPy views of the tensors, its own state): what
    reading torch's objects costs the bridge, blurred by where that state lies.
    """

    params = [["torch-fused", "torch-forloop", "fastlr-numpy"], list(SIZES), OPTIMIZERS]
    param_names = ["versus", "size", "optimizer"]
    unit = "x"
    timeout = 300

    def setup(self, versus, size, optimizer):
        optional("torch")
        steady_state_malloc()
        self.samplers = {k: per_call_time(step_fn(k, size, optimizer))[1]
                         for k in ("fastlr-bridge", versus)}

    def track_speedup(self, versus, size, optimizer):
        best = {k: float("inf") for k in self.samplers}
        start = time.perf_counter()
        for i in range(n_samples(7)):
            if i >= 3 and time.perf_counter() - start > 8.0:
                break
            for k, sample in self.samplers.items():
                best[k] = min(best[k], sample())
        return round(best[versus] / best["fastlr-bridge"], 2)


def _bridged():
    """The bridged classes (every row of fastlr's table with a torch class)."""
    from fastlr import _specs
    return [o.cls for o in _specs.OPTIMIZERS.values() if o.torch]


def class_step_fn(impl, cls_name):
    """One ``opt.step()`` of ``cls_name`` at 64K (10 tensors), class defaults (cached)."""
    key = ("class", impl, cls_name)
    if key in _CACHE:
        return _CACHE[key]
    torch = optional("torch")
    params = _tensors(torch, SIZES["64K"])
    if impl == "fastlr-bridge":
        import fastlr.compat.torch as ft

        opt = getattr(ft, cls_name)(params, n_threads=1)
    elif impl == "torch-forloop":
        opt = getattr(torch.optim, cls_name)(params, foreach=False)
    else:
        raise ValueError(impl)
    return _warmed(key, opt.step)


class TimeBridgeStep:
    """Seconds per ``opt.step()`` of every bridged class: float32, 10 tensors of 64K in all,
    the class defaults, 1 thread; the bridge against torch's for-loop."""

    params = [["fastlr-bridge", "torch-forloop"], _bridged()]
    param_names = ["impl", "optimizer"]
    timeout = 180

    def setup(self, impl, optimizer):
        optional("torch")
        steady_state_malloc()
        self.step = class_step_fn(impl, optimizer)

    def time_step(self, impl, optimizer):
        self.step()


def _cold_step_fn(impl, n_tensors):
    """A step over ``n_tensors`` 16-element float32 tensors: the per-step cost outside the
    element loop (cached per process)."""
    key = ("cold", impl, n_tensors)
    if key in _CACHE:
        return _CACHE[key]
    torch = optional("torch")
    params = _tensors(torch, [(16,)] * n_tensors)
    if impl == "fastlr-bridge":
        import fastlr.compat.torch as ft

        opt = ft.AdamW(params, lr=1e-3, n_threads=1)
    elif impl == "torch-fused":
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    elif impl == "torch-noop":
        class Noop(torch.optim.Optimizer):      # torch's step wrapper (hooks, profiler)
            def __init__(self, params):
                super().__init__(params, {})

            @torch.no_grad()
            def step(self, closure=None):
                return None

        opt = Noop(params)
    else:
        raise ValueError(impl)
    return _warmed(key, opt.step)


class TrackColdStepOverhead:
    """Microseconds per ``opt.step()`` over 62 (ResNet-18's count) or 10 tiny tensors with the
    caches flushed before each step (64 MiB read), as after a model's backward pass: what a
    step costs besides its element loop. ``torch-noop``: a torch optimizer whose step does
    nothing (torch's step wrapper alone). The lower quartile of 200 steps."""

    params = [["fastlr-bridge", "torch-fused", "torch-noop"], [10, 62]]
    param_names = ["impl", "tensors"]
    unit = "us"
    timeout = 120

    def setup(self, impl, tensors):
        import numpy as np

        optional("torch")
        self.step = _cold_step_fn(impl, tensors)
        self.junk = np.ones(64 << 20, dtype=np.uint8)

    def track_cold_overhead(self, impl, tensors):
        times = []
        for _ in range(n_samples(200)):
            self.junk.sum()
            t = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t)
        return round(sorted(times)[len(times) // 4] * 1e6, 1)
