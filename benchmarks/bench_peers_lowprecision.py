"""The low-precision AdamW steps a user might pick instead of fastlr's, side by side.

AdamW (lr 1e-3, weight_decay 0.01), 1 thread, over a model's parameter shapes (``16M``: 8
tensors of 2M elements; ``gpt2-small``: GPT-2 small's 148 tensors, 124M elements), every
implementation on its own copy of the same data, samples interleaved in one process, the
best of each kept. The ratio reported is ``torch.optim.AdamW(fused=True)`` float32 time /
the implementation's time (above 1: faster than torch's fused float32 step).

Peers (each only where its package imports and its step runs on CPU tensors here; what did
not run is printed with the reason):

- ``torch-fused-bf16``: torch's fused AdamW on bfloat16 params and grads (state in bfloat16,
  nearest rounding).
- ``torchao-adamw8bit``: ``torchao.optim.AdamW8bit`` (float32 params, block-wise 8-bit
  state; the step is compiled by ``torch.compile`` on first use).
- ``torchao-bf16-sr``: ``torchao.optim._AdamW(bf16_stochastic_round=True)`` on bfloat16
  params and grads (no master weights).
- ``bnb-adamw8bit``: ``bitsandbytes.optim.AdamW8bit`` (float32 params, block-wise 8-bit
  state, its CPU backend).
- ``deepspeed-cpuadam``: DeepSpeed's ``DeepSpeedCPUAdam`` (ZeRO-Offload's step; float32).
- ``fastlr-bf16state``: ``fastlr.AdamW(state_dtype="bfloat16")`` (float32 params).

None of these packages is a dependency: ``python -m benchmarks.bench_peers_lowprecision
[16M|gpt2-small]`` prints the table for what is installed (install them by hand, e.g.
``pip install torchao bitsandbytes deepspeed`` next to ``torch==2.13.0``; DeepSpeed builds
its CPU Adam op with the C++ compiler on first use, a few minutes).
"""

import sys
import time

import numpy as np

from .bench_lowprecision import SIZES
from .common import per_call_time, steady_state_malloc, n_samples, optional

PEERS = ["torch-fused-bf16", "torchao-adamw8bit", "torchao-bf16-sr", "bnb-adamw8bit",
         "deepspeed-cpuadam", "fastlr-bf16state"]
BASELINE = "torch-fused"
HYPER = dict(lr=1e-3, weight_decay=0.01)
_CACHE = {}


def _data(size):
    """float32 params and grads (seeded), shared read-only by every implementation's copy."""
    if ("data", size) not in _CACHE:
        rng = np.random.default_rng(0)
        shapes = SIZES[size]
        _CACHE[("data", size)] = (
            [rng.standard_normal(s, dtype=np.float32) for s in shapes],
            [1e-2 * rng.standard_normal(s, dtype=np.float32) for s in shapes])
    return _CACHE[("data", size)]


def _tensors(torch, size, dtype):
    params, grads = _data(size)
    out = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(p.copy()).to(dtype))
        t.grad = torch.from_numpy(g).to(dtype)
        out.append(t)
    return out


def _make(impl, size):
    """A zero-argument step of ``impl``; NotImplementedError(reason) where it cannot run."""
    if impl == "fastlr-bf16state":
        import fastlr

        params, grads = _data(size)
        opt = fastlr.AdamW([p.copy() for p in params], n_threads=1, state_dtype="bfloat16",
                           **HYPER)
        return lambda: opt.step(grads)
    torch = optional("torch")
    if impl in ("torch-fused", "torch-fused-bf16"):
        dtype = torch.bfloat16 if impl.endswith("bf16") else torch.float32
        return torch.optim.AdamW(_tensors(torch, size, dtype), fused=True, **HYPER).step
    try:
        if impl == "torchao-adamw8bit":
            from torchao.optim import AdamW8bit
            return AdamW8bit(_tensors(torch, size, torch.float32), **HYPER).step
        if impl == "torchao-bf16-sr":
            from torchao.optim import _AdamW
            return _AdamW(_tensors(torch, size, torch.bfloat16), bf16_stochastic_round=True,
                          **HYPER).step
        if impl == "bnb-adamw8bit":
            import bitsandbytes as bnb
            return bnb.optim.AdamW8bit(_tensors(torch, size, torch.float32), **HYPER).step
        if impl == "deepspeed-cpuadam":
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            return DeepSpeedCPUAdam(_tensors(torch, size, torch.float32), adamw_mode=True,
                                    **HYPER).step
    except ImportError as e:
        raise NotImplementedError(f"not installed ({e})") from None
    raise ValueError(impl)


def step_fn(impl, size):
    """``impl``'s step over ``size``, built and warmed up once per process (the compiled
    peers compile here)."""
    key = (impl, size)
    if key not in _CACHE:
        fn = _make(impl, size)
        for _ in range(2):
            fn()
        _CACHE[key] = fn
    return _CACHE[key]


def speedups(size, impls, n_rounds=5, budget=60.0):
    """{impl: torch fused float32 time / impl time} (interleaved, best of ``n_rounds``), and
    {impl: why it did not run}."""
    samplers, skipped = {}, {}
    for impl in [BASELINE] + list(impls):
        try:
            samplers[impl] = per_call_time(step_fn(impl, size), min_sample=0.05)[1]
        except NotImplementedError as e:
            skipped[impl] = str(e)
        except Exception as e:          # a peer that imports but fails on CPU tensors
            skipped[impl] = f"{type(e).__name__}: {e}"[:200]
    best = {k: float("inf") for k in samplers}
    start = time.perf_counter()
    for i in range(n_rounds):
        if i >= 2 and time.perf_counter() - start > budget:
            break
        for k, sample in samplers.items():
            best[k] = min(best[k], sample())
    base = best.pop(BASELINE)
    return {k: base / v for k, v in best.items()}, skipped, base


class TrackPeerSpeedup:
    """torch fused float32 AdamW time / the peer's time per step (16M, 1 thread)."""

    params = [PEERS]
    param_names = ["impl"]
    unit = "x"
    timeout = 900

    def setup(self, impl):
        optional("torch")
        steady_state_malloc()
        self.samplers = {k: per_call_time(step_fn(k, "16M"), min_sample=0.05)[1]
                         for k in (BASELINE, impl)}

    def track_speedup(self, impl):
        best = {k: float("inf") for k in self.samplers}
        for _ in range(n_samples(3)):
            for k, sample in self.samplers.items():
                best[k] = min(best[k], sample())
        return round(best[BASELINE] / best[impl], 2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    size = argv[0] if argv else "16M"
    impls = argv[1].split(",") if len(argv) > 1 else PEERS
    steady_state_malloc()
    ratios, skipped, base = speedups(size, impls)
    print(f"AdamW, {size}, 1 thread; torch fused float32: {base * 1e3:.1f} ms per step")
    print(f"{'implementation':22s} torch fused f32 time / its time")
    for k, r in ratios.items():
        print(f"{k:22s} {r:6.2f}x")
    for k, why in skipped.items():
        print(f"{k:22s} did not run: {why}")


if __name__ == "__main__":
    main()
