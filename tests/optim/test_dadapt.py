"""fastlr.DAdaptAdam, DAdaptSGD and DAdaptAdaGrad against dadaptation 3.2, their compiled
steps against the NumPy twins, their checkpoints and their argument checks.

1. Parity: params of four shapes (one above the threaded-loop threshold) in two groups,
   float64 and float32, 100 steps with the same grads on both sides (the package's, from its
   own trajectory: the grads depend on the params), every option of the
   package that changes the arithmetic (weight decay coupled and decoupled, betas, eps,
   bias correction, d0, growth_rate, momentum, layer_scale), groups with different hypers,
   a group with lr 0, ``log_every=0`` and an lr schedule (fastlr schedule vs torch's
   LambdaLR on the package). float64: max |fastlr - package| <= 1e-8 * max(1, max|p|) after
   every step and ``d`` within 1e-8 relative (in practice ~1e-14: the sums are added in
   another order); float32: 1e-4. A wrong rule is off by orders of magnitude more (``d``
   feeds back).
2. The compiled steps against ``fastlr.reference.dadapt`` on an edge-case grid (sizes 0, 1,
   odd, large; C and F layouts), and the same bits for any thread count.
3. Checkpoints resume bit for bit; bad state dicts change nothing.
4. Errors: TypeError/ValueError naming the argument, message starting with the class, nothing
   changed (fsdp_in_use, sparse grads, shared hypers that differ, a zero first grad).
"""

import logging
import math

import numpy as np
import pytest

import fastlr
from fastlr._core import dadapt as kernel
from fastlr.reference import dadapt as twin

try:
    import torch
    import dadaptation
except ImportError:         # the parity tests need both (the parity extra installs them)
    torch = dadaptation = None

needs_dadaptation = pytest.mark.skipif(
    dadaptation is None, reason="dadaptation or torch not installed; pip install "
    "\".[parity]\" (torch==2.13.0, dadaptation==3.2)")

SHAPES = [(3, 4), (7,), (2, 3, 5), (40000,)]
N_STEPS = 100
CLASSES = ("DAdaptAdam", "DAdaptSGD", "DAdaptAdaGrad")


def _init(dtype):
    return [np.random.default_rng(i).standard_normal(s).astype(dtype)
            for i, s in enumerate(SHAPES)]


def _grad(t, i, p):
    """A grad that depends on the param (a quadratic pull toward 0.5) plus noise."""
    noise = np.random.default_rng(1000 * t + i).standard_normal(p.shape).astype(p.dtype)
    return (p - p.dtype.type(0.5)) + p.dtype.type(0.3) * noise


SCHED = fastlr.schedules.cosine(1.0, N_STEPS, end=0.1)

# (class, constructor kwargs, per-group overrides of the two groups)
OPTIONS = {
    "adam_default": ("DAdaptAdam", {"log_every": 0}, ({}, {})),
    "adam_coupled_wd": ("DAdaptAdam", {"weight_decay": 0.05}, ({}, {})),
    "adam_decoupled_wd": ("DAdaptAdam", {"weight_decay": 0.05, "decouple": True}, ({}, {})),
    "adam_options": ("DAdaptAdam", {"betas": (0.8, 0.99), "eps": 1e-6,
                                    "use_bias_correction": True, "d0": 1e-4,
                                    "growth_rate": 1.05}, ({}, {})),
    "adam_per_group": ("DAdaptAdam", {"weight_decay": 0.01},
                       ({"eps": 1e-6}, {"weight_decay": 0.2, "layer_scale": 0.5})),
    "adam_lr_zero_group": ("DAdaptAdam", {"lr": 0.5, "weight_decay": 0.1, "decouple": True},
                           ({}, {"lr": 0.0})),
    "adam_schedule": ("DAdaptAdam", {"lr": SCHED}, ({}, {})),
    "sgd_default": ("DAdaptSGD", {"log_every": 0}, ({}, {})),
    "sgd_momentum_wd": ("DAdaptSGD", {"momentum": 0.9, "weight_decay": 0.01}, ({}, {})),
    "sgd_d0_growth": ("DAdaptSGD", {"d0": 1e-3, "growth_rate": 1.1}, ({}, {})),
    "sgd_lr_zero_group": ("DAdaptSGD", {"lr": 0.5, "momentum": 0.5}, ({}, {"lr": 0.0})),
    "sgd_schedule": ("DAdaptSGD", {"lr": SCHED, "momentum": 0.9}, ({}, {})),
    "adagrad_default": ("DAdaptAdaGrad", {"log_every": 0}, ({}, {})),
    "adagrad_momentum": ("DAdaptAdaGrad", {"momentum": 0.9, "eps": 1e-5}, ({}, {})),
    "adagrad_d0_growth": ("DAdaptAdaGrad", {"d0": 1e-4, "growth_rate": 1.1}, ({}, {})),
    "adagrad_per_group": ("DAdaptAdaGrad", {"weight_decay": 0.01},
                          ({"eps": 1e-3}, {"weight_decay": 0.2})),
    "adagrad_schedule": ("DAdaptAdaGrad", {"lr": SCHED}, ({}, {})),
}


def _run_package(cls, dtype, kw, over, n_steps=N_STEPS):
    kw = dict(kw)
    sched = kw.pop("lr") if isinstance(kw.get("lr"), fastlr.schedules.Schedule) else None
    ps = [torch.tensor(p) for p in _init(dtype)]
    groups = [{"params": ps[:2], **over[0]}, {"params": ps[2:], **over[1]}]
    opt = getattr(dadaptation, cls)(groups, **kw)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, sched) if sched is not None else None
    out = []
    for t in range(n_steps):
        grads = [_grad(t, i, p.detach().numpy()) for i, p in enumerate(ps)]
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g.copy())
        opt.step()
        if lam is not None:
            lam.step()
        out.append((grads, [p.detach().numpy().copy() for p in ps], opt.param_groups[0]["d"]))
    return out


def _fastlr(cls, dtype, kw, over, **extra):
    ps = _init(dtype)
    return ps, getattr(fastlr, cls)([{"params": ps[:2], **over[0]},
                                     {"params": ps[2:], **over[1]}], **kw, **extra)


@needs_dadaptation
@pytest.mark.filterwarnings("ignore::UserWarning")      # LambdaLR's step-order warning
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("option", OPTIONS)
def test_matches_dadaptation(option, dtype, capsys):
    cls, kw, over = OPTIONS[option]
    expected = _run_package(cls, dtype, kw, over)
    ps, opt = _fastlr(cls, dtype, kw, over)
    tol = 1e-8 if dtype == np.float64 else 1e-4
    for t, (grads, want, want_d) in enumerate(expected):
        assert opt.step(grads)          # the package's grads: its trajectory
        for i, (p, w) in enumerate(zip(ps, want)):
            err = np.abs(p - w).max() / max(1.0, float(np.abs(w).max()))
            assert err <= tol, (option, t, i, err)
        assert abs(opt.d - want_d) <= tol * want_d, (option, t, opt.d, want_d)
    assert opt.estimate["k"] == N_STEPS
    assert opt.d > kw.get("d0", 1e-6)         # the estimate moved: the test can fail


def _kernel_args(cls, ps, lr, k=0, d=1e-3, **kw):
    n = len(ps)
    if cls == "DAdaptAdam":
        bufs = [[np.zeros_like(p) for p in ps] for _ in range(3)]
        bufs[2] = [np.asarray(np.random.default_rng(9).standard_normal(p.shape) * 1e-3,
                              dtype=p.dtype, order="F" if p.flags.f_contiguous and p.ndim > 1
                              else "C") for p in ps]
        args = dict(group_sizes=[1, n - 1], lr=[lr, lr], weight_decay=[0.1, 0.0],
                    eps=[1e-8, 1e-6], layer_scale=[1.0, 0.5], betas=(0.9, 0.99), d=d,
                    numerator_weighted=0.01, decouple=kw.get("decouple", False),
                    use_bias_correction=True, k=k)
        return "dadapt_adam_step", bufs, args
    if cls == "DAdaptSGD":
        bufs = [[np.zeros_like(p) for p in ps], [p.copy(order="K") for p in ps]]
        args = dict(group_sizes=[1, n - 1], lr=[lr, 0.0], momentum=0.5, weight_decay=0.01,
                    d=d, numerator_weighted=0.0, g0_norm=2.0, k=k)
        return "dadapt_sgd_step", bufs, args
    bufs = [[np.full_like(p, 1e-6) for p in ps], [np.zeros_like(p) for p in ps],
            [p.copy(order="K") for p in ps]]
    args = dict(group_sizes=[1, n - 1], weight_decay=[0.0, 0.1], eps=[1e-6, 1e-3], lr=lr,
                momentum=kw.get("momentum", 0.0), d=d, gsq_weighted=0.0, sksq_weighted=0.0,
                skl1=0.0, k=k)
    return "dadapt_adagrad_step", bufs, args


def _edge_params(order, dtype):
    rng = np.random.default_rng(3)
    shapes = [(5,), (0,), (1,), (3, 7), (17, 1001)]
    return [np.asarray(rng.standard_normal(s), dtype=dtype, order=order) for s in shapes]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("k", [0, 3])
def test_kernel_matches_twin(cls, dtype, order, k):
    ps = _edge_params(order, dtype)
    fname, bufs, args = _kernel_args(cls, ps, 1.0, k=k)
    ps2 = [p.copy(order="K") for p in ps]
    bufs2 = [[b.copy(order="K") for b in bs] for bs in bufs]
    gs = [np.asarray(np.random.default_rng(i).standard_normal(p.shape), dtype=dtype,
                     order=order) for i, p in enumerate(ps)]
    got = getattr(kernel, fname)(ps, gs, *bufs, **args)
    want = getattr(twin, fname)(ps2, gs, *bufs2, **args)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert got["stepped"] and want["stepped"]
    for key in got:
        # AdaGrad's d_hat is a difference of two sums that cancel on a fresh state: its
        # rounding is relative to the sums
        scale = abs(want["sksq_weighted"]) / want["skl1"] if "skl1" in want else 0.0
        if isinstance(got[key], float):
            assert math.isclose(got[key], want[key], rel_tol=rtol,
                                abs_tol=rtol * scale if key == "d_hat" else 1e-300), key
        else:
            assert got[key] == want[key], key
    for a, b in zip(ps + sum(bufs, []), ps2 + sum(bufs2, [])):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("cls", CLASSES)
def test_same_bits_any_thread_count(cls):
    base = [np.random.default_rng(5).standard_normal(70001)]
    results = []
    for nt in (1, 2, 3):
        ps = [p.copy() for p in base]
        opt = getattr(fastlr, cls)(ps, n_threads=nt)
        for t in range(5):
            opt.step([_grad(t, 0, ps[0])])
        results.append((ps[0].copy(), opt.estimate))
    for p, est in results[1:]:
        assert np.array_equal(p, results[0][0]) and est == results[0][1]


@pytest.mark.parametrize("cls", CLASSES)
def test_zero_grads_do_not_move(cls):
    w = np.array([1.0, -2.0, 3.0])
    opt = getattr(fastlr, cls)([w])
    if cls == "DAdaptSGD":     # the first grad's norm divides dlr: refused, nothing changes
        with pytest.raises(ValueError, match=r"^fastlr\.DAdaptSGD\.step: .*all zero"):
            opt.step([np.zeros(3)])
        assert opt.state == {} and opt.estimate["k"] == 0
        assert opt.step([w.copy()])
        before = w.copy()
        opt.param_groups[0]["lr"] = 0.0          # no step: nothing moves (the package fails)
    else:
        before = w.copy()
    assert not opt.step([np.zeros(3)])
    assert np.array_equal(w, before)
    assert opt.estimate["k"] == (1 if cls == "DAdaptSGD" else 0)


@pytest.mark.parametrize("cls", CLASSES)
def test_checkpoint_resumes_bit_for_bit(cls, tmp_path):
    def make():
        ps = _init(np.float64)[:3]
        return ps, getattr(fastlr, cls)([{"params": ps[:1]}, {"params": ps[1:]}],
                                        lr=SCHED)
    ps, opt = make()
    for t in range(4):
        opt.step([_grad(t, i, p) for i, p in enumerate(ps)])
    sd = opt.state_dict()
    opt.save(tmp_path / "c.npz")
    saved = [p.copy() for p in ps]
    for t in range(4, 8):
        opt.step([_grad(t, i, p) for i, p in enumerate(ps)])
    for how in ("state_dict", "file"):
        ps2, opt2 = make()
        for p, s in zip(ps2, saved):
            p[...] = s
        if how == "state_dict":
            opt2.load_state_dict(sd)
        else:
            opt2.load(tmp_path / "c.npz")
        for t in range(4, 8):
            opt2.step([_grad(t, i, p) for i, p in enumerate(ps2)])
        assert all(np.array_equal(a, b) for a, b in zip(ps, ps2))
        assert opt2.estimate == opt.estimate and opt2.d == opt.d


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_state_dict_changes_nothing(cls):
    w = np.ones(3)
    opt = getattr(fastlr, cls)([w])
    opt.step([np.array([1.0, 2.0, 3.0])])
    sd = opt.state_dict()
    before = opt.state_dict()
    bad = dict(sd, state=dict(sd["state"], estimate=dict(sd["state"]["estimate"], d=-1.0)))
    with pytest.raises(ValueError, match=rf"^fastlr\.{cls}\.load_state_dict: .*'d'"):
        opt.load_state_dict(bad)
    other = getattr(fastlr, cls)([np.ones(3)], d0=1e-3)
    with pytest.raises(ValueError, match=r"recorded other hyperparameters.*'d0'"):
        other.load_state_dict(sd)
    assert other.d == 1e-3 and other.state == {}
    after = opt.state_dict()
    assert after["state"]["estimate"] == before["state"]["estimate"]


def test_errors_name_the_argument():
    w = np.ones(3)
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptAdam: fsdp_in_use is True"):
        fastlr.DAdaptAdam([w], fsdp_in_use=True)
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptSGD: fsdp_in_use"):
        fastlr.DAdaptSGD([w], fsdp_in_use=True)
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptAdam: d0 "):
        fastlr.DAdaptAdam([w], d0=0.0)
    with pytest.raises(TypeError, match=r"^fastlr\.DAdaptAdam: betas must be a pair"):
        fastlr.DAdaptAdam([w], betas=0.9)
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptSGD: momentum "):
        fastlr.DAdaptSGD([w], momentum=1.0)
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptAdaGrad: momentum "):
        fastlr.DAdaptAdaGrad([w], momentum=-0.1)
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptAdaGrad: eps "):
        fastlr.DAdaptAdaGrad([w], eps=0.0)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'beta3'"):
        fastlr.DAdaptAdam([{"params": [w], "beta3": 0.9}])
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['betas'\].*shares betas"):
        fastlr.DAdaptAdam([{"params": [w]}, {"params": [np.ones(2)], "betas": (0.5, 0.9)}])
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\].*shares lr"):
        fastlr.DAdaptAdaGrad([{"params": [w]}, {"params": [np.ones(2)], "lr": 0.0}])
    opt = fastlr.DAdaptAdam([{"params": [w]}, {"params": [np.ones(2)], "lr": 0.5}])
    with pytest.raises(ValueError, match=r"^fastlr\.DAdaptAdam\.step: param_groups\[1\]"
                                         r"\['lr'\] is 0\.5 at step 0"):
        opt.step([np.ones(3), np.ones(2)])
    assert np.array_equal(w, np.ones(3)) and opt.state == {}


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_grads_change_nothing(cls):
    w = np.ones((4, 3))
    opt = getattr(fastlr, cls)({"w": w})
    with pytest.raises(ValueError, match=rf"^fastlr\.{cls}\.step: grads\['w'\] has shape"):
        opt.step({"w": np.ones(3)})
    with pytest.raises(TypeError, match=rf"^fastlr\.{cls}\.step: grads\['w'\] has dtype"):
        opt.step({"w": np.ones((4, 3), dtype=np.float32)})
    sparse = fastlr.RowSparseGrad(np.array([1]), np.ones((1, 3)))
    with pytest.raises(TypeError, match=rf"^fastlr\.{cls}\.step: grads\[0\] is a sparse "
                                        r"grad \(RowSparseGrad\)"):
        opt.step([sparse])
    assert np.array_equal(w, np.ones((4, 3))) and opt.estimate["k"] == 0


def test_log_every_logs(caplog):
    w = np.array([1.0, -2.0])
    opt = fastlr.DAdaptAdam([w], log_every=2)
    with caplog.at_level(logging.INFO, logger="fastlr.dadapt"):
        for _ in range(4):
            opt.step([2 * w])
    assert [r.message.split(":")[0] for r in caplog.records] == ["DAdaptAdam k=0",
                                                                 "DAdaptAdam k=2"]


def test_repr_exports_and_d():
    opt = fastlr.DAdaptSGD({"a": np.ones(2)}, momentum=0.9)
    text = repr(opt)
    assert text.startswith("DAdaptSGD (\nParameter Group 0\n    params: 1 array ('a')\n")
    assert "    momentum: 0.9" in text
    assert opt.d == 1e-6 and opt.estimate == {"d": 1e-6, "numerator_weighted": 0.0,
                                              "g0_norm": 0.0, "k": 0}
    for name in CLASSES:
        assert getattr(fastlr.optim, name) is getattr(fastlr, name)
        assert name in fastlr.__all__ and name in fastlr.optim.__all__


@pytest.mark.parametrize("cls", CLASSES)
def test_the_step_is_the_module_global(cls, monkeypatch):
    """The class calls its compiled step through fastlr.optim.dadapt's globals (fastlr bench
    swaps in the NumPy twin there): with the twin the class gives the same params."""
    import fastlr.optim.dadapt as module
    runs = []
    for swap in (False, True):
        name = getattr(fastlr, cls)._kernel
        if swap:
            calls = []

            def twin_step(*args, _twin=getattr(twin, name), **kw):
                calls.append(1)
                return _twin(*args, **kw)
            monkeypatch.setattr(module, name, twin_step)
        ps = _init(np.float64)[:3]
        opt = getattr(fastlr, cls)(ps)
        for t in range(5):
            opt.step([_grad(t, i, p) for i, p in enumerate(ps)])
        runs.append(ps)
    assert len(calls) == 5
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
