"""The floating-point environment (setup.py: never -ffast-math).

Code linked with -ffast-math (crtfastmath.o) sets MXCSR's flush-to-zero (FTZ) and
denormals-are-zero (DAZ) bits for the whole process when it is loaded: every float in the
process then silently loses its subnormal range. fastlr must leave them alone:

* in a fresh interpreter, arithmetic sees subnormals before importing fastlr, after
  importing it, after running every kernel (serial and threaded, both dtypes), every
  optimizer (with clipping and schedules), clip_grad_norm and the schedules, and in a new
  thread: ``np.float32(1e-39) * np.float32(1)`` stays a nonzero subnormal (no DAZ) and
  ``np.float32(1e-38) * np.float32(0.01)`` is not flushed to 0 (no FTZ), likewise in
  float64;
* the kernels themselves compute with subnormals where the math does (also on OpenMP
  worker threads): inputs and results in the subnormal range match fastlr.reference and are
  not flushed to zero.
"""

import json

import numpy as np
import pytest

from fastlr import kernels, reference

from _reliability_helpers import KERNEL_CALLS, call_kernel, kernel_buffers, run_script

FPENV_SCRIPT = r"""
import json, threading
import numpy as np

def subnormals_work():
    return {
        "f32_daz": bool(np.float32(1e-39) * np.float32(1) != 0),      # subnormal input kept
        "f32_ftz": bool(np.float32(1e-38) * np.float32(0.01) != 0),   # subnormal result kept
        "f64_daz": bool(np.float64(1e-310) * np.float64(1) != 0),
        "f64_ftz": bool(np.float64(1e-300) * np.float64(1e-10) != 0),
    }

seen = {"before import": subnormals_work()}
import fastlr
from fastlr import kernels, schedules
import _reliability_helpers as H
seen["after import"] = subnormals_work()

for dtype in (np.float32, np.float64):
    for n, n_threads in ((1000, 1), (100003, 2)):
        H.run_every_kernel(kernels, dtype, n, n_threads)
for cls in (fastlr.SGD, fastlr.RMSprop, fastlr.Adam, fastlr.AdamW, fastlr.Adagrad,
            fastlr.Adadelta, fastlr.Adamax, fastlr.NAdam, fastlr.RAdam, fastlr.Lion):
    ps = [np.ones(100003), np.ones(10, np.float32)]
    opt = cls(ps, lr=schedules.warmup_cosine(1e-3, warmup_steps=2, total_steps=10),
              max_grad_norm=1.0, n_threads=2)
    for _ in range(3):
        opt.step([np.full(100003, 0.5), np.full(10, 0.5, np.float32)])
fastlr.clip_grad_norm([np.ones(100003)], 1.0, n_threads=2)
schedules.one_cycle(1e-2, 100).values(np.arange(200))
seen["after every kernel"] = subnormals_work()

out = {}
t = threading.Thread(target=lambda: out.update(subnormals_work()))
t.start(); t.join()
seen["in a new thread"] = out
print(json.dumps(seen))
"""


def test_fastlr_leaves_ftz_and_daz_off():
    seen = json.loads(run_script(FPENV_SCRIPT, timeout=180).strip().splitlines()[-1])
    assert set(seen) == {"before import", "after import", "after every kernel",
                         "in a new thread"}
    for when, flags in seen.items():
        assert flags == {"f32_daz": True, "f32_ftz": True, "f64_daz": True,
                         "f64_ftz": True}, when


def _subnormal(x):
    a = np.abs(x)
    return (a > 0) & (a < np.finfo(x.dtype).tiny)


@pytest.mark.parametrize("n,n_threads", [(1000, 1), (100003, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_computes_with_subnormals_exactly(dtype, n, n_threads):
    tiny = np.finfo(dtype).tiny
    # a subnormal result: 1.5 tiny - tiny = tiny / 2 (exact)
    p = np.full(n, 1.5 * tiny, dtype)
    kernels.sgd(p, np.full(n, tiny, dtype), step=1, lr=1.0, n_threads=n_threads)
    assert (p == dtype(tiny / 2)).all() and _subnormal(p).all()
    # a subnormal input: 0 - tiny / 4 (exact)
    p = np.zeros(n, dtype)
    kernels.sgd(p, np.full(n, tiny / 4, dtype), step=1, lr=1.0, n_threads=n_threads)
    assert (p == dtype(-tiny / 4)).all() and _subnormal(p).all()


@pytest.mark.parametrize("n,n_threads", [(1000, 1), (100003, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(KERNEL_CALLS))
def test_kernels_keep_subnormals_like_the_reference(name, dtype, n, n_threads):
    info = np.finfo(dtype)
    rng = np.random.default_rng(11)
    p0 = (rng.uniform(-2, 2, n) * info.tiny).astype(dtype)       # about half subnormal
    g = (rng.standard_normal(n) * info.tiny).astype(dtype)
    assert _subnormal(p0).mean() > 0.3
    lr = 1.0 if name == "sgd" else float(info.tiny)              # updates of size ~tiny
    got, want = p0.copy(), p0.copy()
    s_got, s_want = kernel_buffers(name, got), kernel_buffers(name, want)
    for t in (1, 2):
        call_kernel(kernels, name, got, g, s_got, t, n_threads=n_threads, lr=lr)
        call_kernel(reference, name, want, g, s_want, t, lr=lr)
    for a, b in [(got, want)] + list(zip(s_got.values(), s_want.values())):
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=16 * info.smallest_subnormal)
    assert _subnormal(want).any() and _subnormal(got).any()
    # where the reference keeps a subnormal of some size, the kernel did not flush it
    big_sub = _subnormal(want) & (np.abs(want) > 64 * info.smallest_subnormal)
    assert (got[big_sub] != 0).all()
