"""fastlr.Adafactor against its NumPy twin and torch.optim.Adafactor; its memory against Adam's.

One step over a transformer-like set of params: a square m x m matrix, an m x 4m matrix and
a vector of m (m = 256 and 1024), float32 and float64, with ``weight_decay=0.01``. The grads
are fixed arrays; each impl starts its own optimizer once (state warm) and times ``step``.
1 thread (``torch.set_num_threads(1)``).

``TimeAdafactorStep``: absolute times per impl (``fastlr``: the compiled kernel;
``reference``: the NumPy twin ``fastlr.reference.adafactor``, whose temporaries are m x n
arrays; ``torch``: ``torch.optim.Adafactor(foreach=False)``, skipped without torch).
``TrackAdafactorSpeedup``: twin time / fastlr time and torch time / fastlr time, interleaved
in one process (best of several samples each).

``TrackStateBytes``: the optimizer state's bytes per param element for one m x n param
(float32), for Adafactor (its row and column statistics: ``4 (m + n) / (m n)``) and Adam
(``exp_avg`` and ``exp_avg_sq``: 8), read from the optimizers' ``state``; and the ratio.
"""

import time

import numpy as np

from .common import n_samples, optional

SIZES = [256, 1024]
DTYPES = ["float32", "float64"]
SHAPES_MN = [(1024, 1024), (4096, 1024), (4096, 4096)]


def _shapes(m):
    return [(m, m), (m, 4 * m), (m,)]


def step_fn(impl, m, dtype):
    """A zero-argument callable running one step of ``impl`` (its state already made)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in _shapes(m)]
    grads = [rng.standard_normal(s).astype(dtype) for s in _shapes(m)]
    if impl in ("fastlr", "reference"):
        import fastlr
        from fastlr._core.adafactor import state_shapes

        opt = fastlr.Adafactor(params, weight_decay=0.01)
        if impl == "fastlr":
            return lambda: opt.step(grads)
        state = [{k: np.zeros(s, dtype=dtype) for k, s in state_shapes(p.shape).items()}
                 for p in params]
        counter = [0]

        def ref_step():
            counter[0] += 1
            for p, g, st in zip(params, grads, state):
                fastlr.reference.adafactor(p, g, **st, step=counter[0], weight_decay=0.01)
        return ref_step
    torch = optional("torch")
    tps = [torch.from_numpy(p) for p in params]
    for t, g in zip(tps, grads):
        t.grad = torch.from_numpy(g)
    topt = torch.optim.Adafactor(tps, weight_decay=0.01, foreach=False)
    return topt.step


class TimeAdafactorStep:
    params = (["fastlr", "reference", "torch"], SIZES, DTYPES)
    param_names = ["impl", "m", "dtype"]
    timeout = 300

    def setup(self, impl, m, dtype):
        self.step = step_fn(impl, m, dtype)
        self.step()         # the state exists from here on

    def time_step(self, impl, m, dtype):
        self.step()


def speedups(m, dtype, samples=5):
    """(twin time / fastlr time, torch time / fastlr time or None): best of ``samples``
    interleaved samples of one step each."""
    impls = ["fastlr", "reference"]
    try:
        optional("torch")
        impls.append("torch")
    except NotImplementedError:
        pass
    steps = {impl: step_fn(impl, m, dtype) for impl in impls}
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(n_samples(samples)):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - start)
    torch_ratio = best["torch"] / best["fastlr"] if "torch" in best else None
    return best["reference"] / best["fastlr"], torch_ratio, best


class TrackAdafactorSpeedup:
    params = (SIZES, DTYPES, ["reference", "torch"])
    param_names = ["m", "dtype", "versus"]
    unit = "other time / fastlr time"
    timeout = 300

    def setup(self, m, dtype, versus):
        if versus == "torch":
            optional("torch")

    def track_speedup(self, m, dtype, versus):
        twin, torch_ratio, _ = speedups(m, dtype)
        return round(twin if versus == "reference" else torch_ratio, 2)


def state_bytes_per_element(optimizer, m, n):
    """The bytes of ``optimizer``'s state arrays for one float32 m x n param, per element."""
    import fastlr

    opt = getattr(fastlr, optimizer)([np.zeros((m, n), dtype=np.float32)])
    st = opt.state[0]
    return sum(v.nbytes for v in st.values() if isinstance(v, np.ndarray)) / (m * n)


class TrackStateBytes:
    params = (["Adafactor", "Adam"], [f"{m}x{n}" for m, n in SHAPES_MN])
    param_names = ["optimizer", "shape"]
    unit = "state bytes per param element (float32)"

    def track_state_bytes(self, optimizer, shape):
        m, n = map(int, shape.split("x"))
        return state_bytes_per_element(optimizer, m, n)


class TrackStateRatio:
    params = ([f"{m}x{n}" for m, n in SHAPES_MN],)
    param_names = ["shape"]
    unit = "Adam state bytes / Adafactor state bytes"

    def track_ratio(self, shape):
        m, n = map(int, shape.split("x"))
        return round(state_bytes_per_element("Adam", m, n)
                     / state_bytes_per_element("Adafactor", m, n), 1)
