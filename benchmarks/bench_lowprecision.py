"""Low-precision optimizer state (``state_dtype="bfloat16"``): float32 AdamW over a model's
parameter shapes, 1 thread, against float32 state and against ``torch.optim.AdamW(fused=True)``.

Shapes: ``16M`` (8 tensors of 2M elements) and ``gpt2-small`` (GPT-2 small's 148 parameter
tensors, 124M elements: token and position embeddings, 12 blocks of layer norms, attention
and MLP weights and biases, the final layer norm). Every variant steps its own copy of the
same data; the samples are interleaved in one process and the best of each is kept, so the
ratios hold up on a shared machine better than absolute times.

What the state costs per element (param r/w 8 bytes, grad 4, state r/w): float32 state 16
bytes (28 moved in all), bfloat16 state 8 bytes (20 in all): the memory-bound floor of the
bfloat16 step is 28/20 = 1.4x the float32 one.
"""

import time

import numpy as np

from .common import per_call_time, steady_state_malloc, n_samples, optional


def gpt2_shapes(n_layer=12, d=768, vocab=50257, ctx=1024):
    """GPT-2's parameter shapes (Hugging Face's GPT2Model order; the LM head is tied to the
    token embedding): 148 tensors and 124,439,808 elements for GPT-2 small."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(n_layer):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),      # ln_1, attention
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # ln_2, MLP
    return shapes + [(d,), (d,)]


SIZES = {"16M": [(2048, 1024)] * 8, "gpt2-small": gpt2_shapes()}
_CACHE = {}


def _data(size):
    rng = np.random.default_rng(0)
    shapes = SIZES[size]
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads = [1e-2 * rng.standard_normal(s, dtype=np.float32) for s in shapes]
    return params, grads


def step_fn(impl, size):
    """One AdamW step (lr 1e-3, weight_decay 0.01) of ``impl``: "fastlr-float32",
    "fastlr-bfloat16" (the state dtype) or "torch-fused" (cached per process)."""
    key = (impl, size)
    if key in _CACHE:
        return _CACHE[key]
    import fastlr

    params, grads = _data(size)
    if impl == "torch-fused":
        torch = optional("torch")
        tensors = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g)
        fn = torch.optim.AdamW(tensors, lr=1e-3, weight_decay=0.01, fused=True).step
    else:
        opt = fastlr.AdamW(params, lr=1e-3, weight_decay=0.01, n_threads=1,
                           state_dtype=impl.split("-")[1])

        def fn():
            opt.step(grads)
    fn()
    _CACHE[key] = fn
    return fn


class TrackStateDtypeSpeedup:
    """``versus`` time / fastlr time per step, for each state dtype (interleaved samples,
    best of up to 7)."""

    params = [["torch-fused", "fastlr-float32"], ["float32", "bfloat16"], list(SIZES)]
    param_names = ["versus", "state_dtype", "size"]
    unit = "x"
    timeout = 600

    def setup(self, versus, state_dtype, size):
        if versus == f"fastlr-{state_dtype}":
            raise NotImplementedError("the same variant on both sides")
        steady_state_malloc()
        self.samplers = {k: per_call_time(step_fn(k, size), min_sample=0.05)[1]
                         for k in (f"fastlr-{state_dtype}", versus)}

    def track_speedup(self, versus, state_dtype, size):
        best = {k: float("inf") for k in self.samplers}
        start = time.perf_counter()
        for i in range(n_samples(7)):
            if i >= 3 and time.perf_counter() - start > 20.0:
                break
            for k, sample in self.samplers.items():
                best[k] = min(best[k], sample())
        return round(best[versus] / best[f"fastlr-{state_dtype}"], 2)


class TrackStateBytesPerParam:
    """Bytes of optimizer state per param element for AdamW (the point of the mode)."""

    params = [["float32", "bfloat16"]]
    param_names = ["state_dtype"]
    unit = "bytes"

    def track_state_bytes(self, state_dtype):
        import fastlr

        p = np.zeros((64, 1024), np.float32)
        opt = fastlr.AdamW([p], state_dtype=state_dtype)
        return sum(b.nbytes for k, b in opt.state[0].items() if k != "step") / p.size
