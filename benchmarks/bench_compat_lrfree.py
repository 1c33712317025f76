"""The bridges of the learning-rate-free packages: one ``step()`` of
``fastlr.compat.torch.SGDScheduleFree`` / ``AdamWScheduleFree`` / ``RAdamScheduleFree`` /
``Prodigy`` against the same class of ``schedulefree`` 1.4.1 / ``prodigyopt`` 1.1.2.

Float32 parameters, 10 tensors of about n/10 elements each (n = 64K: per-tensor overhead
shows; n = 4M: memory bound), 1 thread (``torch.set_num_threads(1)``; ``n_threads=1`` for
Prodigy's bridge). impl: ``bridge`` (the fastlr.compat.torch class) and ``package`` (the
package's class with its defaults: ``foreach=True`` for schedule-free, whose CPU path runs
torch's per-tensor ops). ``weight_decay=0`` so that the package's in-place rewriting of the
grads (schedule-free divides them by the denominator) does not accumulate across samples;
both sides step the same optimizer repeatedly, each from its own copy of the data, so
successive samples continue one run. Everything is skipped (``NotImplementedError`` in
``setup``) when torch or the package is not installed.

``TimeLrfreeBridgeStep``: seconds per step. ``TrackLrfreeBridgeSpeedup``: package time /
bridge time, interleaved in one process (best of up to 7 samples each), side by side per
optimizer, which holds up on a shared machine better than absolute timings.
"""

from . import bench_compat_torch as _compat_torch   # (a module: asv finds no benchmark here)
from .common import optional, per_call_time, steady_state_malloc

SIZES = {"64K": 65536, "4M": 4194304}
N_TENSORS = 10
OPTIMIZERS = ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree", "Prodigy"]
IMPLS = ["bridge", "package"]
#: the package and the options of each optimizer (lr only; no decay, see above)
_SPEC = {
    "SGDScheduleFree": ("schedulefree", dict(lr=0.1)),
    "AdamWScheduleFree": ("schedulefree", dict(lr=1e-3)),
    "RAdamScheduleFree": ("schedulefree", dict(lr=1e-3)),
    "Prodigy": ("prodigyopt", dict(lr=1.0)),
}

_CACHE = {}


def _imports(optimizer):
    return optional("torch", _SPEC[optimizer][0])


def step_fn(impl, size, optimizer):
    """A zero-argument callable doing one step (cached for the process; warmed up: state
    made, RAdam past its SGD phase, Prodigy's d moved)."""
    key = (impl, size, optimizer)
    if key in _CACHE:
        return _CACHE[key]
    torch, package = _imports(optimizer)
    n = SIZES[size]
    base, extra = divmod(n, N_TENSORS)
    gen = torch.Generator().manual_seed(20240611)
    params = []
    for k in range(N_TENSORS):
        p = torch.nn.Parameter(torch.randn(base + (k < extra), generator=gen))
        p.grad = 1e-2 * torch.randn(p.shape, generator=gen)
        params.append(p)
    kw = _SPEC[optimizer][1]
    if impl == "bridge":
        import fastlr.compat.torch as ft

        extra_kw = {"n_threads": 1} if optimizer == "Prodigy" else {}
        opt = getattr(ft, optimizer)(params, **kw, **extra_kw)
    elif impl == "package":
        opt = getattr(package, optimizer)(params, **kw)
    else:
        raise ValueError(impl)
    if hasattr(opt, "train"):
        opt.train()
    for _ in range(8):
        opt.step()
    _CACHE[key] = opt.step
    return opt.step


class TimeLrfreeBridgeStep:
    """Seconds per ``opt.step()``: float32, 10 tensors, 1 thread."""

    params = [IMPLS, list(SIZES), OPTIMIZERS]
    param_names = ["impl", "size", "optimizer"]
    timeout = 180

    def setup(self, impl, size, optimizer):
        _imports(optimizer)
        steady_state_malloc()
        self.step = step_fn(impl, size, optimizer)

    def time_step(self, impl, size, optimizer):
        self.step()


class TrackLrfreeBridgeSpeedup:
    """package time / bridge time per step (interleaved in one process, best of 7)."""

    params = [list(SIZES), OPTIMIZERS]
    param_names = ["size", "optimizer"]
    unit = "x"
    timeout = 300

    def setup(self, size, optimizer):
        _imports(optimizer)
        steady_state_malloc()
        self.samplers = {k: per_call_time(step_fn(impl, size, optimizer))[1]
                         for k, impl in (("fastlr-bridge", "bridge"), ("package", "package"))}

    def track_speedup(self, size, optimizer):
        # bench_compat_torch's interleaved best-of-7 loop, "package" in torch's place
        return _compat_torch.TrackBridgeSpeedup.track_speedup(self, "package", size, optimizer)
