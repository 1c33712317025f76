"""The schedule-free optimizers against the authors' reference package: one ``step``.

fastlr.ScheduleFreeSGD / ScheduleFreeAdamW / ScheduleFreeRAdam against
``schedulefree.SGDScheduleFree`` / ``AdamWScheduleFree`` / ``RAdamScheduleFree`` 1.4.1 on
the same arrays (the torch tensors are ``torch.from_numpy`` views of fastlr's params and
grads), in train mode, float32, 1 thread (``torch.set_num_threads(1)``). Sizes: one param
of 1K elements (call overhead), 64K (in cache) and 1M (memory), and 64 params of 1K
(per-tensor overhead). impl: ``fastlr`` (one fused pass per param), ``reference`` (the
per-tensor path, ``foreach=False``: five to seven passes), ``reference-foreach`` (torch's
multi-tensor ops, the reference's default).

The reference divides its grads in place (AdamW, RAdam: ``grad.div_(denom)``); repeated
steps keep them of order one, so no copy is made between samples.

``TimeScheduleFreeStep``: absolute times per impl. ``TrackScheduleFreeSpeedup``: reference
time / fastlr time (per-tensor path and foreach), interleaved in one process, best of
several samples each. Everything is skipped (``NotImplementedError`` in ``setup``) when
torch or schedulefree is not installed.
"""

import time

import numpy as np

from .common import n_samples, optional

KINDS = ["sgd", "adamw", "radam"]
#: (number of params, elements per param)
LAYOUTS = ["1x1024", "1x65536", "1x1048576", "64x1024"]
IMPLS = ["fastlr", "reference", "reference-foreach"]
DTYPE = np.float32


def _arrays(layout):
    count, n = (int(v) for v in layout.split("x"))
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(DTYPE) for _ in range(count)]
    grads = [rng.standard_normal(n).astype(DTYPE) for _ in range(count)]
    return params, grads


def step_fn(impl, kind, layout):
    """A zero-argument callable running one step (after a first step that creates the
    state)."""
    params, grads = _arrays(layout)
    if impl == "fastlr":
        import fastlr

        cls = {"sgd": fastlr.ScheduleFreeSGD, "adamw": fastlr.ScheduleFreeAdamW,
               "radam": fastlr.ScheduleFreeRAdam}[kind]
        opt = cls(params, lr=1e-3)
        opt.train()

        def step():
            opt.step(grads)
    else:
        torch, schedulefree = optional("torch", "schedulefree")
        cls = {"sgd": schedulefree.SGDScheduleFree, "adamw": schedulefree.AdamWScheduleFree,
               "radam": schedulefree.RAdamScheduleFree}[kind]
        tensors = [torch.from_numpy(p) for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g)
        opt = cls(tensors, lr=1e-3, foreach=impl == "reference-foreach")
        opt.train()

        def step():
            opt.step()
    step()
    return step


class TimeScheduleFreeStep:
    params = (IMPLS, KINDS, LAYOUTS)
    param_names = ["impl", "kind", "layout"]
    timeout = 120

    def setup(self, impl, kind, layout):
        optional("torch", "schedulefree")
        self.step = step_fn(impl, kind, layout)

    def time_step(self, impl, kind, layout):
        self.step()


def speedup(kind, layout, samples=7, repeat=20):
    """Reference time / fastlr time per step, for the per-tensor path and foreach: best of
    ``samples`` interleaved samples of ``repeat`` steps each."""
    steps = {impl: step_fn(impl, kind, layout) for impl in IMPLS}
    best = {impl: float("inf") for impl in steps}
    for _ in range(n_samples(samples)):
        for impl, step in steps.items():
            start = time.perf_counter()
            for _ in range(repeat):
                step()
            best[impl] = min(best[impl], (time.perf_counter() - start) / repeat)
    return {impl: round(best[impl] / best["fastlr"], 2) for impl in IMPLS[1:]}, best


class TrackScheduleFreeSpeedup:
    params = (KINDS, LAYOUTS, IMPLS[1:])
    param_names = ["kind", "layout", "versus"]
    unit = "reference time / fastlr time"
    timeout = 300

    def setup(self, kind, layout, versus):
        optional("torch", "schedulefree")

    def track_speedup(self, kind, layout, versus):
        return speedup(kind, layout)[0][versus]
