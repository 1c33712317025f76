"""Optimizer steps over many arrays: fastlr's one-call step against torch's fused Adam.

Float32 Adam, 1 thread (``n_threads=1``, ``torch.set_num_threads(1)``). ``flat``: the params
are views of one buffer (``fastlr.flat_buffer``), updated as one span, with one flat grad
array; ``separate``: independent arrays and a list of grads. torch cases are skipped when
torch is not installed. Targets: >= 30x torch fused at 200 x 100, >= 5x at
1000 x 1000.
"""

import time

import numpy as np

import fastlr

from .common import per_call_time, steady_state_malloc, n_samples

CASES = {"200x100": (200, 100), "1000x1000": (1000, 1000)}


def _arrays(case, layout, seed=0):
    count, size = CASES[case]
    rng = np.random.default_rng(seed)
    shapes = [(size,)] * count
    if layout == "flat":
        flat, params = fastlr.flat_buffer(shapes)
        flat[:] = rng.standard_normal(flat.size)
        gflat, _ = fastlr.flat_buffer(shapes)
        gflat[:] = rng.normal(0, 1e-2, gflat.size)
        return params, gflat
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.normal(0, 1e-2, s).astype(np.float32) for s in shapes]
    return params, grads


def _stepper(impl, case, layout):
    params, grads = _arrays(case, layout)
    if impl == "fastlr":
        opt = fastlr.Adam(params, lr=1e-3, n_threads=1)
        return lambda: opt.step(grads)
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    torch.set_num_threads(1)
    if layout == "flat":
        grads = [g.copy() for g in np.split(grads, len(params))]
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    for p, g in zip(tparams, grads):
        p.grad = torch.from_numpy(np.array(g, copy=True))
    opt = torch.optim.Adam(tparams, lr=1e-3, fused=True)
    return opt.step


class TimeAdamManyArrays:
    """Seconds per Adam step over many float32 arrays, 1 thread."""

    params = [["fastlr", "torch-fused"], list(CASES), ["flat", "separate"]]
    param_names = ["impl", "case", "layout"]
    timeout = 120

    def setup(self, impl, case, layout):
        if impl == "torch-fused" and layout == "flat":
            raise NotImplementedError("torch has no flat layout: same as separate")
        steady_state_malloc()
        self.step = _stepper(impl, case, layout)
        self.step()

    def time_step(self, impl, case, layout):
        self.step()


class TrackAdamManyArraysVsTorch:
    """torch fused time / fastlr time per step (interleaved in one process, best of 7)."""

    params = [list(CASES), ["flat", "separate"]]
    param_names = ["case", "layout"]
    unit = "x"
    timeout = 120

    def setup(self, case, layout):
        steady_state_malloc()
        self.samplers = {"fastlr": per_call_time(_stepper("fastlr", case, layout))[1],
                         "torch": per_call_time(_stepper("torch-fused", case, "separate"))[1]}

    def track_speedup_vs_torch_fused(self, case, layout):
        best = {k: float("inf") for k in self.samplers}
        start = time.perf_counter()
        for i in range(n_samples(7)):
            if i >= 3 and time.perf_counter() - start > 4.0:
                break
            for k, sample in self.samplers.items():
                best[k] = min(best[k], sample())
        return round(best["torch"] / best["fastlr"], 2)
