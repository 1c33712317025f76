"""CPU dispatch: every compiled variant of the core loops gives the same bits."""

import importlib
import itertools
import os
import pathlib
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


def _table_under(level):
    """The core-loop table's variant under ``level``: the fastest built at most it."""
    return next(v for v in VARIANTS
                if _dispatch.LEVELS.index(v) >= _dispatch.LEVELS.index(level))


def test_default_is_the_fastest_available():
    assert VARIANTS and VARIANTS[-1] == "baseline"
    forced = os.environ.get("FASTLR_CPU")
    assert _kernels.cpu_target() == (_table_under(forced) if forced else VARIANTS[0])
    assert _kernels.cpu_target() == _dispatch.default_target()
    assert set(VARIANTS) <= set(_dispatch.cpu_levels())
    assert _dispatch.level() == (forced or _dispatch.cpu_levels()[0])


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
        if dtype == np.float32:         # bfloat16 state (stochastic rounding), AMSGrad too
            p, m, v, vmax = arr(), np.zeros(n, np.uint16), np.zeros(n, np.uint16), \
                np.zeros(n, np.uint16)
            for step in (1, 2, 3):
                kernels.adam_bf16_state(p, g, m, v, vmax, step=step, lr=0.01,
                                        weight_decay=0.1)
                kernels.adam_bf16_state(p, g, m, v, step=step, lr=0.01, maximize=True,
                                        weight_decay=0.1, decoupled_weight_decay=True)
            out.append(p.tobytes() + m.tobytes() + v.tobytes() + vmax.tobytes())
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
for fmt in (np.float16, np.uint16):       # 16-bit params (mixed): bfloat16 as uint16 bits
    for master, sdt in ((True, np.uint16), (False, np.uint16), (False, np.float32)):
        x = rng.standard_normal(70001).astype(np.float32)
        p = x.astype(np.float16) if fmt is np.float16 else (x.view(np.uint32) >> 16).astype(
            np.uint16)
        m, v = np.zeros(p.shape, sdt), np.zeros(p.shape, sdt)
        w = x.copy() if master else None
        for t in range(1, 4):
            g = (rng.standard_normal(p.shape) * 0.1).astype(np.float32)
            g = g.astype(np.float16) if fmt is np.float16 else (g.view(np.uint32) >> 16).astype(
                np.uint16)
            fastlr.kernels.adam_mixed(p, g, m, v, w, step=t, lr=0.01, weight_decay=0.1,
                                      decoupled_weight_decay=True, n_threads=2)
        for a in (p, m, v, w):
            if a is not None:
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


def _expected(name, level):
    """The build of kernel module ``name`` dispatch.module picks under ``level``: the
    fastest level built for it (MODULE_TARGETS, all built here) at most ``level``."""
    target = next((t for t in _dispatch.MODULE_TARGETS[name]
                   if _dispatch.LEVELS.index(t) >= _dispatch.LEVELS.index(level)), "baseline")
    return _dispatch._module_name(name, target)


def _expected_names(level):
    return sorted(_expected(name, level) for name in _dispatch.MODULES)


# every level the CPU runs and something is built for: x86-64-v4 (the table, int8state and
# mixed) on an AVX-512 CPU, x86-64-v3 (the table and every kernel module) on an AVX2 one
LEVELS_RUN = [lv for lv in _dispatch.cpu_levels() if _dispatch._built(lv)]


@pytest.mark.skipif(len(LEVELS_RUN) < 2, reason="only the baseline is built for this CPU")
def test_module_variants_give_identical_bits():
    """Each level forced in turn (FASTLR_CPU), and the default: the modules it picks, and
    the same bytes from every optimizer and kernel that uses them."""
    baseline, base_names = _module_run("baseline")
    assert base_names == _expected_names("baseline")
    assert all("_x86_64_" not in n for n in base_names)
    for level in LEVELS_RUN[:-1]:
        digest, names = _module_run(level)
        assert names == _expected_names(level), (level, names)
        assert digest == baseline, level
    fastest, names = _module_run(None)
    assert names == _expected_names(LEVELS_RUN[0])
    assert fastest == baseline


def test_forcing_a_level_caps_the_table_and_the_modules():
    """FASTLR_CPU=x86-64-v3 on an AVX-512 CPU: the x86-64-v3 table and modules;
    FASTLR_CPU=x86-64-v4: the x86-64-v4 table and the x86-64-v4 modules where built (the
    x86-64-v3 ones elsewhere)."""
    code = ("import fastlr; from fastlr._core import dispatch; "
            "print(fastlr._kernels.cpu_target(), dispatch.module('int8state').__name__, "
            "dispatch.module('mixed').__name__, dispatch.module('ema').__name__)")
    for level in LEVELS_RUN:
        env = dict(os.environ, FASTLR_CPU=level)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd="/")
        assert out.returncode == 0, out.stderr
        table, *mods = out.stdout.split()
        assert table == _table_under(level)
        assert mods == [_expected(name, level) for name in ("int8state", "mixed", "ema")]
    for level in _dispatch.LEVELS:
        if level in LEVELS_RUN:
            continue
        env = dict(os.environ, FASTLR_CPU=level)    # not built, or the CPU lacks it
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd="/")
        assert out.returncode != 0 and f"FASTLR_CPU={level!r}" in out.stderr


def test_module_targets_match_the_sources():
    """dispatch.MODULE_TARGETS names exactly the <name>_x86_64_v*.pyx files there are (and
    setup.py builds), and every level it names is built when the CPU runs it."""
    core = pathlib.Path(_dispatch.__file__).parent
    tables = {m.split(".")[-1] for t, m in _dispatch.TARGETS.items() if t != "baseline"}
    assert tables == {p.stem for p in core.glob("cores_x86_64_v*.pyx")} or not list(
        core.glob("*.pyx"))
    sources = {p.stem for p in core.glob("*_x86_64_v*.pyx")} - tables
    if not sources:
        pytest.skip("no .pyx sources next to fastlr._core (an installed wheel)")
    assert sources == {_dispatch._module_name(name, t).split(".")[-1]
                       for name, targets in _dispatch.MODULE_TARGETS.items() for t in targets}
    setup_py = core.parent.parent / "setup.py"
    if setup_py.exists():
        text = setup_py.read_text()
        for stem in sources:
            assert f'("fastlr._core.{stem}", ["fastlr/_core/{stem}.pyx"])' in text, stem
    cpu = _dispatch.cpu_levels()
    for name, targets in _dispatch.MODULE_TARGETS.items():
        for t in targets:
            if t in cpu and t in LEVELS_RUN:
                importlib.import_module(_dispatch._module_name(name, t))


def test_module_refuses_unknown_names():
    with pytest.raises(ValueError, match="is not one of"):
        _dispatch.module("cores")
