"""fastlr.Muon against torch.optim.Muon: one ``step`` over one 2-D param.

Transformer-like matrices (float32 and float64): a small 64 x 64 (where the per-call
overhead shows), an attention projection 768 x 768, an MLP
up-projection 768 x 3072 and its down-projection 3072 x 768 (tall: transposed for the
Newton-Schulz iteration), and a small 256 x 1024 one where the element-wise passes weigh
more. Default hyperparameters (Nesterov, 5 Newton-Schulz steps). The state is warm (the
momentum buffer exists) and the grad is the same every step. 1 thread:
``torch.set_num_threads(1)`` and NumPy's BLAS limited to one thread by ``threadpoolctl``
when it is installed (else as configured: set ``OPENBLAS_NUM_THREADS=1`` for asv).

Both run their matrix products in bfloat16 arithmetic: torch with MKL's bfloat16 GEMM,
fastlr with NumPy's float32 GEMM on bfloat16 values rounded after each product, so this
compares BLAS's float32 GEMM with MKL's bfloat16 one as much as the element-wise passes.

``TimeMuonStep``: absolute times per impl. ``TrackMuonSpeedupVsTorch``: torch time /
fastlr time, interleaved in one process (best of several samples each). Everything is
skipped (``NotImplementedError`` in ``setup``) when torch is not installed.
"""

import contextlib
import time

import numpy as np

from .common import n_samples, optional

SHAPES = ["64x64", "256x1024", "768x768", "768x3072", "3072x768"]
DTYPES = ["float32", "float64"]


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _shape(text):
    rows, cols = text.split("x")
    return int(rows), int(cols)


def step_fn(impl, shape, dtype):
    """A zero-argument callable running one warm step of ``impl`` on a fresh param."""
    rng = np.random.default_rng(0)
    rows, cols = _shape(shape)
    p = rng.standard_normal((rows, cols)).astype(dtype)
    g = rng.standard_normal((rows, cols)).astype(dtype)
    if impl == "fastlr":
        import fastlr

        opt = fastlr.Muon([p], lr=0.02)
        grads = [g]
        opt.step(grads)

        def step():
            opt.step(grads)
        return step
    torch = optional("torch")
    tp = torch.nn.Parameter(torch.from_numpy(p))
    tp.grad = torch.from_numpy(g)
    topt = torch.optim.Muon([tp], lr=0.02)
    topt.step()
    return topt.step


class TimeMuonStep:
    params = (["fastlr", "torch"], SHAPES, DTYPES)
    param_names = ["impl", "shape", "dtype"]
    timeout = 300

    def setup(self, impl, shape, dtype):
        optional("torch")
        self.limit = _one_blas_thread()
        self.limit.__enter__()
        self.step = step_fn(impl, shape, dtype)

    def teardown(self, impl, shape, dtype):
        self.limit.__exit__(None, None, None)

    def time_step(self, impl, shape, dtype):
        self.step()


def speedup(shape, dtype, samples=5):
    """torch time / fastlr time for one step: best of ``samples`` interleaved samples."""
    with _one_blas_thread():
        steps = {impl: step_fn(impl, shape, dtype) for impl in ("fastlr", "torch")}
        best = {impl: float("inf") for impl in steps}
        for _ in range(n_samples(samples)):
            for impl, step in steps.items():
                start = time.perf_counter()
                step()
                best[impl] = min(best[impl], time.perf_counter() - start)
    return round(best["torch"] / best["fastlr"], 2), best


class TrackMuonSpeedupVsTorch:
    params = (SHAPES, DTYPES)
    param_names = ["shape", "dtype"]
    unit = "torch time / fastlr time"
    timeout = 300

    def setup(self, shape, dtype):
        optional("torch")

    def track_speedup(self, shape, dtype):
        return speedup(shape, dtype)[0]


def agreement(shape, dtype, adjust_lr_fn=None, nesterov=True, steps=100, lr=0.02):
    """Not a benchmark: the measurement behind docs/muon.rst's agreement table.

    Runs ``fastlr.Muon`` and ``torch.optim.Muon`` side by side for ``steps`` steps on the
    same grads (drawn independently of the params) and returns ``(max |p - p_torch|,
    that / (2**-8 * sum_t lr'_t), max |B - B_torch|)``.
    """
    import math

    import fastlr

    torch = optional("torch")
    rng = np.random.default_rng(7)
    rows, cols = _shape(shape)
    p = rng.standard_normal((rows, cols)).astype(dtype)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    kw = dict(lr=lr, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    opt, topt = fastlr.Muon([p], **kw), torch.optim.Muon([tp], **kw)
    if adjust_lr_fn == "match_rms_adamw":
        adjusted = lr * (0.2 * math.sqrt(max(rows, cols)))
    else:
        adjusted = lr * math.sqrt(max(1, rows / cols))
    for _ in range(steps):
        g = rng.standard_normal((rows, cols)).astype(dtype)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step([g])
    diff = float(np.abs(p - tp.detach().numpy()).max())
    buf = float(np.abs(opt.state[0]["momentum_buffer"]
                       - topt.state[tp]["momentum_buffer"].numpy()).max())
    return diff, diff / (2.0 ** -8 * steps * adjusted), buf
