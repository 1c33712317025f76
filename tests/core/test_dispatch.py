"""CPU dispatch: every compiled variant of the core loops gives the same bits."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlr
from fastlr import _kernels, kernels
from fastlr._core import dispatch as _dispatch

VARIANTS = _dispatch.available()


@pytest.fixture
def restore_target():
    before = _kernels.cpu_target()
    yield
    _kernels._set_cores(before)


def test_default_is_the_fastest_available():
    assert VARIANTS and VARIANTS[-1] == "baseline"
    assert _kernels.cpu_target() == (os.environ.get("FASTLR_CPU") or VARIANTS[0])


def _run_all(seed=3):
    """Every kernel and option combination on awkward data; returns all output bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for dtype, n in itertools.product([np.float32, np.float64], [1, 7, 1000, 40000]):
        def arr(scale=1.0):
            x = (rng.standard_normal(n) * scale).astype(dtype)
            if n >= 7:
                x[:5] = [0.0, -0.0, np.finfo(dtype).smallest_subnormal, 1e3, np.nan]
            return x
        g = arr(0.1)
        for name, opts in [("sgd", {}), ("sgd", dict(momentum=0.9, nesterov=True)),
                           ("sgd", dict(momentum=0.9, dampening=0.2, weight_decay=0.1)),
                           ("rmsprop", dict(centered=True, momentum=0.5)), ("rmsprop", {}),
                           ("adam", dict(amsgrad=True, weight_decay=0.1)),
                           ("adamw", dict(maximize=True))]:
            p = arr()
            st = kernels.make_state(name, p, momentum=opts.get("momentum", 0),
                                    centered=opts.pop("centered", False),
                                    amsgrad=opts.pop("amsgrad", False))
            for buf in st.values():
                buf[...] = np.abs(arr(0.01))
            for step in (1, 2):
                kw = dict(opts, lr=0.01)
                if name != "rmsprop":
                    kw["step"] = step
                getattr(kernels, name)(p, g, **st, **kw)
            out.append(p.tobytes() + b"".join(b.tobytes() for b in st.values()))
    return out


@pytest.mark.skipif(len(VARIANTS) < 2, reason="only one variant of the core loops is built "
                                              "for this CPU")
def test_variants_give_identical_bits(restore_target):
    results = {}
    for target in VARIANTS:
        _kernels._set_cores(target)
        assert _kernels.cpu_target() == target
        results[target] = _run_all()
        params = [np.linspace(-1, 1, 5000, dtype=np.float32) for _ in range(3)]
        opt = fastlr.Adam(params, lr=0.1, amsgrad=True)
        for _ in range(3):
            opt.step([np.cos(p) for p in params])
        results[target].append(b"".join(p.tobytes() for p in params))
    first = results[VARIANTS[0]]
    for target in VARIANTS[1:]:
        assert results[target] == first, f"{target} differs from {VARIANTS[0]}"


def test_forcing_the_baseline_from_the_environment():
    code = "import fastlr; print(fastlr._kernels.cpu_target())"
    env = dict(os.environ, FASTLR_CPU="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "baseline"
    env["FASTLR_CPU"] = "pentium"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, cwd="/")
    assert out.returncode != 0 and "FASTLR_CPU='pentium'" in out.stderr


# The kernel modules built once per target (dispatch.MODULES): each optimizer that uses one,
# run in a fresh process per target, must leave the same bytes.
_MODULE_RUN = r"""
import hashlib, numpy as np, fastlr
from fastlr._core import dispatch
h = hashlib.sha256()
rng = np.random.default_rng(5)
for dtype in (np.float32, np.float64):
    shapes = [(37, 19), (300,), (64, 64)]
    for make in (lambda ps: fastlr.LAMB(ps, lr=0.01, weight_decay=0.1),
                 lambda ps: fastlr.LARS(ps, lr=0.1, nesterov=True),
                 lambda ps: fastlr.Prodigy(ps, weight_decay=0.01),
                 lambda ps: fastlr.ScheduleFreeAdamW(ps, warmup_steps=2),
                 lambda ps: fastlr.ScheduleFreeSGD(ps),
                 lambda ps: fastlr.ScheduleFreeRAdam(ps),
                 lambda ps: fastlr.Adafactor(ps, weight_decay=0.01),
                 lambda ps: fastlr.DAdaptAdam(ps, weight_decay=0.01),
                 lambda ps: fastlr.DAdaptSGD(ps, momentum=0.9),
                 lambda ps: fastlr.DAdaptAdaGrad(ps, weight_decay=0.01)):
        ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt = make(ps)
        if hasattr(opt, "train"):
            opt.train()
        for _ in range(4):
            opt.step([(rng.standard_normal(p.shape) * 0.1).astype(dtype) for p in ps])
        if hasattr(opt, "eval"):
            opt.eval()
        for p in ps:
            h.update(p.tobytes())
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ema = fastlr.EMA(params, decay=0.9, warmup="timm")
    for _ in range(3):
        for p in params:
            p += rng.standard_normal(p.shape).astype(dtype)
        ema.update()
    ema.copy_to(params)
    for p in params:
        h.update(p.tobytes())
for shape in ((37, 211), (70001,)):       # 8-bit state (int8state): two threads, a short block
    p = rng.standard_normal(shape).astype(np.float32)
    nb = (p.size + 255) // 256
    st = [np.zeros(shape, np.uint8), np.zeros(nb, np.float32)] * 2
    st = [a.copy() for a in st]
    for t in range(1, 6):
        g = (rng.standard_normal(shape) * rng.exponential(1.0, shape) ** 3).astype(np.float32)
        fastlr.kernels.adam_int8_state(p, g, *st, step=t, lr=0.01, weight_decay=0.1,
                                       decoupled_weight_decay=True, n_threads=2)
    for a in [p] + st:
        h.update(a.tobytes())
names = sorted({m.__name__ for m in map(dispatch.module, dispatch.MODULES)})
print(h.hexdigest(), ",".join(names))
"""


def _module_run(target):
    env = dict(os.environ)
    env.pop("FASTLR_CPU", None)
    if target is not None:
        env["FASTLR_CPU"] = target
    out = subprocess.run([sys.executable, "-c", _MODULE_RUN], env=env, capture_output=True,
                         text=True, timeout=300, cwd="/")     # the fastlr under test
    assert out.returncode == 0, out.stderr
    digest, names = out.stdout.split()
    return digest, names.split(",")


@pytest.mark.skipif(len(VARIANTS) < 2, reason="only one variant of the core loops is built "
                                              "for this CPU")
def test_module_variants_give_identical_bits():
    baseline, base_names = _module_run("baseline")
    assert all("_x86_64_v3" not in n for n in base_names)
    fastest, names = _module_run(None)
    if VARIANTS[0] == "x86-64-v3":
        assert all(n.endswith("_x86_64_v3") for n in names), names
    assert fastest == baseline


def test_module_refuses_unknown_names():
    with pytest.raises(ValueError, match="is not one of"):
        _dispatch.module("cores")
