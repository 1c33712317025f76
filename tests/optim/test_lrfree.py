"""fastlr.Prodigy against prodigyopt 1.1.2, its compiled step against the NumPy twin, its
checkpoints and its argument checks.

1. Parity: params of four shapes (one above the threaded-loop threshold) in two groups,
   float64 and float32, 100 steps with the same grads on both sides, every option of
   prodigyopt (``weight_decay`` coupled and decoupled, ``beta1 = 0``, ``beta3``,
   ``use_bias_correction``, ``safeguard_warmup``, ``d_coef``, ``growth_rate``, ``d0``,
   ``slice_p``), per-group ``weight_decay``/``eps``, a group with lr 0 and an lr schedule.
   float64: max |fastlr - prodigyopt| <= 1e-8 * max(1, max|p|) after every step and the
   estimate ``d`` within 1e-8 relative (in practice ~1e-14: the sums are added in another
   order); float32: 1e-4. A wrong rule is off by orders of magnitude more (``d`` feeds back).
2. The compiled step against ``fastlr.reference.lrfree.prodigy_step`` on an edge-case grid
   (sizes 0, 1, odd, large; C and F layouts; every option), and the same bits for any
   thread count.
3. Checkpoints resume bit for bit; hyperparameters are checked, never loaded (a rollback
   restores them); bad state dicts change nothing.
4. Errors: TypeError/ValueError naming the argument, message starting ``fastlr.Prodigy``,
   nothing changed.
"""

import math

import numpy as np
import pytest

import fastlr
from fastlr._core.lrfree import prodigy_step as kernel_step
from fastlr.reference.lrfree import prodigy_step as twin_step

try:
    import torch
    import prodigyopt
except ImportError:         # the parity tests need both (the parity extra installs them)
    torch = prodigyopt = None

needs_prodigyopt = pytest.mark.skipif(
    prodigyopt is None, reason="prodigyopt or torch not installed; pip install "
    "\".[parity]\" (torch==2.13.0, prodigyopt==1.1.2)")

SHAPES = [(3, 4), (7,), (2, 3, 5), (40000,)]
N_STEPS = 100


def _init(dtype):
    return [np.random.default_rng(i).standard_normal(s).astype(dtype)
            for i, s in enumerate(SHAPES)]


def _grad(t, i, p):
    """A grad that depends on the param (a quadratic pull toward 0.5) plus noise."""
    noise = np.random.default_rng(1000 * t + i).standard_normal(p.shape).astype(p.dtype)
    return (p - p.dtype.type(0.5)) + p.dtype.type(0.3) * noise


# option name -> (constructor kwargs, per-group overrides of the two groups)
OPTIONS = {
    "default": ({}, ({}, {})),
    "decoupled_wd": ({"weight_decay": 0.05}, ({}, {})),
    "coupled_wd": ({"weight_decay": 0.05, "decouple": False}, ({}, {})),
    "no_first_moment": ({"betas": (0.0, 0.99)}, ({}, {})),
    "no_first_moment_coupled": ({"betas": (0.0, 0.99), "weight_decay": 0.1,
                                 "decouple": False}, ({}, {})),
    "beta3": ({"beta3": 0.9}, ({}, {})),
    "bias_correction": ({"use_bias_correction": True}, ({}, {})),
    "safeguard": ({"safeguard_warmup": True}, ({}, {})),
    "d_coef_growth": ({"d_coef": 2.0, "growth_rate": 1.02}, ({}, {})),
    "d0": ({"d0": 1e-3}, ({}, {})),
    "slice_p": ({"slice_p": 3}, ({}, {})),
    "per_group": ({"weight_decay": 0.01},
                  ({"eps": 1e-6}, {"weight_decay": 0.2, "safeguard_warmup": True,
                                   "d0": 1e-5, "slice_p": 11})),
    "lr_zero_group": ({"lr": 0.5}, ({}, {"lr": 0.0})),
    "schedule": ({"lr": fastlr.schedules.cosine(1.0, N_STEPS, end=0.1)}, ({}, {})),
}


def _torch_groups(ps, kw, over):
    groups = []
    for g, members in enumerate((ps[:2], ps[2:])):
        group = {"params": members, **over[g]}
        groups.append(group)
    return groups


def _run_torch(dtype, kw, over, nudge=0.0, n_steps=N_STEPS):
    kw = dict(kw)
    sched = kw.get("lr") if isinstance(kw.get("lr"), fastlr.schedules.Schedule) else None
    if sched is not None:
        kw["lr"] = float(sched(0))
    ps = [torch.tensor(p * dtype(1 + nudge)) for p in _init(dtype)]
    opt = prodigyopt.Prodigy(_torch_groups(ps, kw, over), **kw)
    out = []
    for t in range(n_steps):
        if sched is not None:
            for group in opt.param_groups:
                group["lr"] = float(sched(t))
        for i, p in enumerate(ps):
            p.grad = torch.tensor(_grad(t, i, p.detach().numpy()))
        opt.step()
        out.append(([p.detach().numpy().copy() for p in ps], opt.param_groups[0]["d"]))
    return out


def _fastlr_groups(ps, over):
    return [{"params": ps[:2], **over[0]}, {"params": ps[2:], **over[1]}]


@needs_prodigyopt
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("option", OPTIONS)
def test_matches_prodigyopt(option, dtype):
    kw, over = OPTIONS[option]
    n_steps = N_STEPS if dtype == np.float64 else 30     # float32: see below
    expected = _run_torch(dtype, kw, over, n_steps=n_steps)
    if dtype == np.float32:
        # prodigyopt's own float32 run departs from itself when its start is nudged by 4
        # ulp: the jumps of d amplify rounding (its float32 and float64 runs end up O(1)
        # apart on this problem), so float32 is compared while that departure stays below
        # 1e-5 (and +10x it), at least the first 5 steps; float64 is compared over all 100
        nudged = _run_torch(dtype, kw, over, nudge=4 * 2.0 ** -24, n_steps=n_steps)
        sens = [(max(float(np.abs(a.astype(np.float64) - b).max())
                     for a, b in zip(e[0], n[0])), abs(e[1] - n[1]))
                for e, n in zip(expected, nudged)]
        horizon = next((t for t, (s, _) in enumerate(sens) if s > 1e-5), n_steps)
        assert horizon >= 5, horizon
    else:
        sens, horizon = [(0.0, 0.0)] * N_STEPS, N_STEPS
    ps = _init(dtype)
    opt = fastlr.Prodigy(_fastlr_groups(ps, over), **kw)
    tol = 1e-8 if dtype == np.float64 else 1e-4
    for t in range(horizon):
        assert opt.step([_grad(t, i, p) for i, p in enumerate(ps)])
        want, d = expected[t]
        scale = max(1.0, max(float(np.abs(w).max()) for w in want))
        err = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(ps, want))
        assert err <= tol * scale + 10 * sens[t][0], (t, err)
        assert abs(opt.d - d) <= tol * abs(d) + 10 * sens[t][1], (t, opt.d, d)
    assert opt.estimate["k"] == horizon
    assert opt.d > opt.defaults["d0"]       # the estimate moved: the test exercises it


@needs_prodigyopt
def test_zero_grads_change_nothing_but_the_moments():
    """prodigyopt returns before the update when every grad is zero; so does fastlr."""
    ps = _init(np.float64)
    before = [p.copy() for p in ps]
    opt = fastlr.Prodigy(ps)
    assert opt.step([np.zeros_like(p) for p in ps]) is False
    assert all(np.array_equal(a, b) for a, b in zip(ps, before))
    assert opt.estimate["k"] == 0 and opt.d == 1e-6
    tp = [torch.tensor(p) for p in before]
    topt = prodigyopt.Prodigy(tp)
    for p in tp:
        p.grad = torch.zeros_like(p)
    topt.step()
    assert topt.param_groups[0]["k"] == 0
    # the next steps still agree (p0 was taken at the first step, as prodigyopt does)
    for t in range(5):
        grads = [_grad(t, i, p) for i, p in enumerate(ps)]
        opt.step(grads)
        for p, g in zip(tp, grads):
            p.grad = torch.tensor(g)
        topt.step()
    for a, b in zip(ps, tp):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# the compiled step against its NumPy twin
# ---------------------------------------------------------------------------------------
def _buffers(ps, slices, has_m=True):
    return dict(
        exp_avg=[np.zeros_like(p) for p in ps] if has_m else None,
        exp_avg_sq=[np.zeros_like(p) for p in ps],
        s=[np.zeros((p.size + sp - 1) // sp, dtype=p.dtype) for p, sp in zip(ps, slices)],
        p0=[p.ravel(order="K")[::sp].copy() for p, sp in zip(ps, slices)])


def _arrays(shapes, dtype, order):
    return [np.asarray(np.random.default_rng(10 + i).standard_normal(s), dtype=dtype,
                       order=order) for i, s in enumerate(shapes)]


GRID = {
    "sizes": ([(0,), (1,), (5,), (33,)], "C", {}),
    "large": ([(70001,), (3,)], "C", {}),
    "fortran": ([(4, 6), (5, 3)], "F", {}),
    "slice": ([(9, 7), (13,)], "C", {"slice_p": 4}),
    "coupled_no_m": ([(6, 5)], "C", {"betas": (0.0, 0.9), "weight_decay": 0.1,
                                     "decouple": False}),
    "decoupled_bias_safe": ([(6, 5), (2,)], "C", {"weight_decay": 0.1,
                                                  "use_bias_correction": True,
                                                  "safeguard_warmup": True}),
}


def _call(fn, ps, grads, buf, est, **kw):
    sp = kw.pop("slice_p", 1)
    args = dict(group_sizes=[len(ps)], lr=[1.0], weight_decay=[kw.pop("weight_decay", 0.0)],
                eps=[1e-8], d0=[1e-6], safeguard_warmup=[kw.pop("safeguard_warmup", False)],
                slice_p=[sp], **est, **kw)
    return fn(ps, grads, buf["exp_avg"], buf["exp_avg_sq"], buf["s"], buf["p0"], **args)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", GRID)
def test_kernel_matches_twin(case, dtype):
    shapes, order, kw = GRID[case]
    sp = kw.get("slice_p", 1)
    has_m = kw.get("betas", (0.9,))[0] > 0
    # float32: before d's first jumps, after which rounding differences grow (see above)
    n_steps = 20 if dtype == np.float64 else 6
    runs = []
    for fn in (kernel_step, twin_step):
        ps = _arrays(shapes, dtype, order)
        buf = _buffers(ps, [sp] * len(ps), has_m)
        est = dict(d=1e-6, d_max=1e-6, d_numerator=0.0, k=0)
        for t in range(n_steps):
            grads = [np.asarray(_grad(t, i, p), order=order) for i, p in enumerate(ps)]
            out = _call(fn, ps, grads, buf, est, **kw)
            est = {k: out[k] for k in ("d", "d_max", "d_numerator", "k")}
        runs.append((ps, buf, out))
    (pa, ba, oa), (pb, bb, ob) = runs
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for key in ("exp_avg_sq", "s"):
        for a, b in zip(ba[key], bb[key]):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max(
                initial=1.0)))
    for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat"):
        assert oa[key] == pytest.approx(ob[key], rel=1e-10 if dtype == np.float64 else 1e-3)
    assert oa["k"] == ob["k"] == n_steps


def test_same_bits_for_any_thread_count():
    results = []
    for nt in (1, 2, 3, 5):
        ps = _arrays([(100003,), (65536,), (17,)], np.float32, "C")
        buf = _buffers(ps, [1] * 3)
        est = dict(d=1e-6, d_max=1e-6, d_numerator=0.0, k=0)
        for t in range(5):
            out = _call(kernel_step, ps, [_grad(t, i, p) for i, p in enumerate(ps)], buf, est,
                        n_threads=nt)
            est = {k: out[k] for k in ("d", "d_max", "d_numerator", "k")}
        results.append(([p.tobytes() for p in ps], out))
    for other in results[1:]:
        assert other == results[0]


# ---------------------------------------------------------------------------------------
# the class: names, layouts, checkpoints
# ---------------------------------------------------------------------------------------
def _steps(opt, ps, start, n, named=None):
    for t in range(start, start + n):
        grads = [_grad(t, i, p) for i, p in enumerate(ps)]
        opt.step(dict(zip(named, grads)) if named else grads)


def test_named_params_and_dict_grads_give_the_same_bits():
    ps, qs = _init(np.float64), _init(np.float64)
    names = [f"w{i}" for i in range(len(qs))]
    a = fastlr.Prodigy(ps, weight_decay=0.01)
    b = fastlr.Prodigy(list(zip(names, qs)), weight_decay=0.01)
    _steps(a, ps, 0, 10)
    _steps(b, qs, 0, 10, named=names)
    assert all(np.array_equal(x, y) for x, y in zip(ps, qs))
    assert a.d == b.d
    assert "w0" in repr(b) and repr(a).startswith("Prodigy (\nParameter Group 0")


@pytest.mark.parametrize("via", ["state_dict", "file"])
def test_checkpoint_resumes_bit_for_bit(via, tmp_path):
    kw = dict(weight_decay=0.01, slice_p=2, lr=fastlr.schedules.linear(1.0, total_steps=30))
    ps = _init(np.float64)
    ref = fastlr.Prodigy(ps, **kw)
    _steps(ref, ps, 0, 30)
    qs = _init(np.float64)
    first = fastlr.Prodigy(qs, **kw)
    _steps(first, qs, 0, 12)
    path = tmp_path / "prodigy.npz"
    if via == "file":
        first.save(path)
    else:
        sd = first.state_dict()
    rs = [q.copy() for q in qs]
    second = fastlr.Prodigy(rs, **kw)
    if via == "file":
        second.load(path)
    else:
        second.load_state_dict(sd)
    assert second.estimate == first.estimate and second.d > 1e-6
    _steps(second, rs, 12, 18)
    assert all(np.array_equal(x, y) for x, y in zip(ps, rs))
    assert second.d == ref.d


def test_checkpoint_never_changes_a_hyperparameter(tmp_path):
    ps = _init(np.float64)
    sd = fastlr.Prodigy(ps, d_coef=2.0).state_dict()
    opt = fastlr.Prodigy(_init(np.float64))
    with pytest.raises(ValueError, match=r"fastlr.Prodigy.load_state_dict: .*d_coef.*1.0 "
                                         r"here, 2.0 in the checkpoint"):
        opt.load_state_dict(sd)
    with pytest.warns(UserWarning, match="kept this optimizer's values"):
        opt.load_state_dict(sd, strict=False)
    assert opt.param_groups[0]["d_coef"] == 1.0
    # its own snapshot is a rollback: the hyperparameters too
    own = opt.state_dict()
    opt.param_groups[0]["d_coef"] = 3.0
    opt.load_state_dict(own)
    assert opt.param_groups[0]["d_coef"] == 1.0


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd["state"]["estimate"].update(d=-1.0), r"state\['estimate'\]\['d'\]"),
    (lambda sd: sd["state"]["s"].pop(), r"state\['s'\] must be a list of 4"),
    (lambda sd: sd["state"]["exp_avg"].__setitem__(0, np.zeros(3)), r"state\['exp_avg'\]\[0\]"),
    (lambda sd: sd["param_groups"].pop(), "param_groups must be a list of 1"),
    (lambda sd: sd["param_groups"][0].update(foo=1), "unknown hyperparameter 'foo'"),
    (lambda sd: sd["param_groups"][0].update(slice_p=2), "slice_p"),
    (lambda sd: sd.update(format="x"), "unknown format"),
])
def test_bad_state_dicts_change_nothing(edit, match):
    ps = _init(np.float64)
    opt = fastlr.Prodigy(ps)
    _steps(opt, ps, 0, 3)
    sd = opt.state_dict()
    edit(sd)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["state"]["estimate"] == before["state"]["estimate"]
    for key in ("exp_avg", "exp_avg_sq", "s", "p0"):
        assert all(np.array_equal(a, b) for a, b in zip(after["state"][key],
                                                         before["state"][key]))


def test_corrupted_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="fastlr.Prodigy.load"):
        fastlr.Prodigy(_init(np.float64)).load(path)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, match", [
    ({"lr": -1.0}, ValueError, "lr"),
    ({"lr": "1"}, TypeError, "lr"),
    ({"betas": (1.0, 0.9)}, ValueError, r"betas\[0\]"),
    ({"betas": 0.9}, TypeError, "betas"),
    ({"beta3": 1.5}, ValueError, "beta3"),
    ({"eps": 0.0}, ValueError, "eps"),
    ({"weight_decay": math.nan}, ValueError, "weight_decay"),
    ({"decouple": 2}, (TypeError, ValueError), "decouple"),
    ({"d0": 0.0}, ValueError, "d0"),
    ({"d_coef": -1.0}, ValueError, "d_coef"),
    ({"growth_rate": 0.0}, ValueError, "growth_rate"),
    ({"slice_p": 0}, ValueError, "slice_p"),
    ({"slice_p": 2.0}, TypeError, "slice_p"),
    ({"n_threads": 0}, ValueError, "n_threads"),
    ({"params": [{"params": [np.ones(3)], "foo": 1}]}, ValueError,
     r"unknown hyperparameter 'foo'"),
])
def test_bad_hyperparameters(kw, exc, match):
    with pytest.raises(exc, match=rf"^fastlr.Prodigy.*{match}"):
        kw.setdefault("params", [np.ones(3)])
        fastlr.Prodigy(**kw)


def test_groups_must_share_what_prodigyopt_shares():
    a, b = np.ones(3), np.ones(2)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['betas'\].*shares betas"):
        fastlr.Prodigy([{"params": [a]}, {"params": [b], "betas": (0.8, 0.99)}])
    opt = fastlr.Prodigy([{"params": [a]}, {"params": [b], "lr": 0.5}])
    with pytest.raises(ValueError, match=r"fastlr.Prodigy.step: param_groups\[1\]\['lr'\] is "
                                         r"0.5 at step 0 but the largest group lr is 1.0"):
        opt.step([a, b])
    assert np.array_equal(a, np.ones(3)) and opt.state == {}
    with pytest.raises(ValueError, match="slice_p.* fixed at construction"):
        opt.param_groups[0]["slice_p"] = 2


def test_slice_p_needs_c_order():
    with pytest.raises(ValueError, match=r"fastlr.Prodigy: params\[0\].*F-contiguous.*slice_p"):
        fastlr.Prodigy([np.ones((3, 4), order="F")], slice_p=2)


@pytest.mark.parametrize("grads, exc, match", [
    (lambda ps: ps[:1], ValueError, "got 1 grads for 2 params"),
    (lambda ps: [ps[0], "x"], TypeError, r"grads\[1\] must be a numpy.ndarray"),
    (lambda ps: [ps[0], ps[1].astype(np.float32)], TypeError, r"grads\[1\] has dtype"),
    (lambda ps: [ps[0], np.ones(5)], ValueError, r"grads\[1\] has shape"),
    (lambda ps: [ps[0].copy(), ps[1]], ValueError, "overlap"),
    (lambda ps: 3, TypeError, "grads must be a list"),
])
def test_bad_grads_change_nothing(grads, exc, match):
    ps = [np.ones((2, 3)), np.arange(4.0)]
    opt = fastlr.Prodigy(ps)
    opt.step([np.full((2, 3), 0.5), np.ones(4)])
    before = opt.state_dict()
    values = [p.copy() for p in ps]
    with pytest.raises(exc, match=rf"^fastlr.Prodigy.step: .*{match}"):
        opt.step(grads(ps))
    assert all(np.array_equal(a, b) for a, b in zip(ps, values))
    assert opt.state_dict()["state"]["estimate"] == before["state"]["estimate"]


def test_messages_name_the_param_by_group_and_name():
    ps = {"fc.w": np.ones((2, 3)), "fc.b": np.ones(3)}
    opt = fastlr.Prodigy(ps)
    with pytest.raises(TypeError, match=r"grads\['fc.b'\] has dtype float32 but params\[1\] "
                                        r"\(param_groups\[0\]\['params'\]\[1\], 'fc.b'\)"):
        opt.step({"fc.w": np.ones((2, 3)), "fc.b": np.ones(3, dtype=np.float32)})
    with pytest.raises(ValueError, match="fc.x"):
        opt.step({"fc.w": np.ones((2, 3)), "fc.x": np.ones(3)})


def test_first_step_failure_leaves_no_state():
    ps = [np.ones(3)]
    opt = fastlr.Prodigy(ps)
    with pytest.raises(ValueError):
        opt.step([np.ones(4)])
    assert opt.state == {} and not opt.state_dict()["state"]["initialized"]
    ps[0][...] = 2.0
    opt.step([np.ones(3)])
    assert np.array_equal(opt.state[0]["p0"], np.full(3, 2.0))   # p0: the first real step
