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
