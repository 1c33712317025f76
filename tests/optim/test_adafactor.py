"""fastlr.Adafactor, its kernel, its NumPy twin and its torch bridge against
torch.optim.Adafactor 2.13 (single-tensor path), its memory, checkpoints and argument checks.

Parity: 100 steps of seeded random grads (their scale varies per step), params of 0 to 4
dims in C and F order, float64 within 1e-10 and float32 within 1e-4 of torch, relative to
max(1, max|torch|), for the params and every state tensor (docs/design.md, Numerics).
"""

import math
import warnings
import zlib

import numpy as np
import pytest

import fastlr
from fastlr import schedules as S
from fastlr.optim.adafactor import adafactor, state_shapes
from fastlr.reference import adafactor as adafactor_ref

torch = pytest.importorskip("torch", reason="the parity tests need torch 2.13")

N_STEPS = 100
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = [np.float64, np.float32]
SHAPES = [(), (37,), (7, 13), (3, 5, 4), (2, 3, 4, 5), (1, 9), (9, 1)]
OPTIONS = {
    "defaults": {},
    "all": dict(lr=0.05, beta2_decay=-0.5, eps=(1e-6, 0.0), d=1.5, weight_decay=0.1,
                maximize=True),
    "lr-above-rho": dict(lr=0.9, eps=(1e-30, 1e-2)),
    "beta2_decay-0": dict(beta2_decay=0.0, weight_decay=0.01),
}


def _close(mine, theirs, dtype, what):
    theirs = np.asarray(theirs)
    scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
    err = float(np.abs(np.asarray(mine, dtype=np.float64) - theirs).max(initial=0.0))
    assert err <= RTOL[np.dtype(dtype)] * scale, f"{what}: max error {err:.3e}"


def _grads(rng, shapes, dtype):
    scale = rng.uniform(0.05, 5.0)
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]


def _torch_kwargs(opts):
    return dict(opts, foreach=False)


# ---------------------------------------------------------------------------------------
# the kernel and its twin against torch, one param
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("opts", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernel_matches_torch(impl, order, opts, shape, dtype):
    fn = adafactor if impl == "kernel" else adafactor_ref
    opts = OPTIONS[opts]
    rng = np.random.default_rng(zlib.crc32(repr((shape, order)).encode()))
    p0 = rng.standard_normal(shape).astype(dtype)
    tp = torch.tensor(p0.copy())
    topt = torch.optim.Adafactor([tp], **_torch_kwargs(opts))
    p = np.array(p0, order=order)
    state = {k: np.zeros(s, dtype=dtype, order=order)
             for k, s in state_shapes(shape).items()}
    eps1, eps2 = opts.get("eps", (None, 1e-3))
    kw = {k: v for k, v in opts.items() if k != "eps"}
    for t in range(1, N_STEPS + 1):
        (g,) = _grads(rng, [shape], dtype)
        tp.grad = torch.tensor(g)
        topt.step()
        fn(p, np.array(g, order=order), **state, step=t, eps1=eps1, eps2=eps2, **kw)
    _close(p, tp.numpy(), dtype, "param")
    for key, buf in state.items():
        _close(buf, topt.state[tp][key].numpy(), dtype, key)


def test_kernel_and_twin_agree_on_hard_values():
    """Zero grads (row means clamped at eps1), a zero param (alpha from eps2) and huge
    grads (the update clipped by d): the kernel and the twin agree to rounding."""
    for g0 in (np.zeros((4, 6)), np.full((4, 6), 1e60), np.eye(4, 6)):
        a, b = np.zeros((4, 6)), np.zeros((4, 6))
        sa = [np.zeros((4, 1)), np.zeros((1, 6))]
        sb = [np.zeros((4, 1)), np.zeros((1, 6))]
        for t in range(1, 4):
            adafactor(a, g0, *sa, step=t, lr=0.5)
            adafactor_ref(b, g0, *sb, step=t, lr=0.5)
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)
            for x, y in zip(sa, sb):
                np.testing.assert_allclose(x, y, rtol=1e-14, atol=0)


def test_empty_param_is_left_alone():
    p = np.zeros((0, 3))
    adafactor(p, np.zeros((0, 3)), np.zeros((0, 1)), np.zeros((1, 3)), step=1)
    opt = fastlr.Adafactor([np.zeros(0), np.ones(2)])
    opt.step([np.zeros(0), np.ones(2)])
    assert opt.state[0]["step"] == 1 and opt.state[0]["variance"].shape == (0,)


# ---------------------------------------------------------------------------------------
# the class against torch: groups, schedules, named params
# ---------------------------------------------------------------------------------------
GROUP_SHAPES = [[(6, 5), (11,)], [(3, 4, 2), (), (2, 2, 3, 3)]]


def _run_pair(dtype, group_opts, defaults, scheduled, named=False, order="C"):
    rng = np.random.default_rng(7)
    inits = [[rng.standard_normal(s).astype(dtype) for s in shapes] for shapes in GROUP_SHAPES]
    tps = [[torch.tensor(a.copy()) for a in g] for g in inits]
    tgroups = [dict(opts, params=ps) for opts, ps in zip(group_opts, tps)]
    topt = torch.optim.Adafactor(tgroups, **_torch_kwargs(defaults))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, N_STEPS) if scheduled else None
    arrays = [[np.array(a, order=order) for a in g] for g in inits]
    groups = []
    for gi, (opts, ps) in enumerate(zip(group_opts, arrays)):
        if scheduled:
            opts = dict(opts, lr=S.cosine(opts.get("lr", defaults.get("lr", 1e-2)), N_STEPS))
        params = {f"g{gi}.p{k}": a for k, a in enumerate(ps)} if named else ps
        groups.append(dict(opts, params=params))
    fl_defaults = dict(defaults)
    opt = fastlr.Adafactor(groups, **fl_defaults)
    flat_t = [t for g in tps for t in g]
    flat = [a for g in arrays for a in g]
    for _ in range(N_STEPS):
        if scheduled:
            assert opt.next_lr == pytest.approx([g["lr"] for g in topt.param_groups],
                                                rel=1e-12, abs=1e-15)
        grads = _grads(rng, [a.shape for a in flat], dtype)
        for t, g in zip(flat_t, grads):
            t.grad = torch.tensor(g)
        topt.step()
        if sched:
            sched.step()
        grads = [np.array(g, order=order) for g in grads]
        if named:
            opt.step({name: g for name, g in zip(opt._names, grads)})
        else:
            opt.step(grads)
    return opt, topt, flat, flat_t


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("scheduled", [False, True], ids=["const", "cosine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_param_groups_match_torch(dtype, scheduled, order):
    group_opts = [dict(lr=0.03, weight_decay=0.05),
                  dict(beta2_decay=-0.6, eps=(1e-5, 1e-2), d=2.0, maximize=True)]
    opt, topt, flat, flat_t = _run_pair(dtype, group_opts, dict(lr=0.02), scheduled,
                                        order=order)
    for i, (a, t) in enumerate(zip(flat, flat_t)):
        _close(a, t.numpy(), dtype, f"param {i}")
        tst = topt.state[t]
        assert opt.state[i]["step"] == int(tst["step"]) == N_STEPS
        for key in ("row_var", "col_var", "variance"):
            assert (key in opt.state[i]) == (key in tst)
            if key in tst:
                _close(opt.state[i][key], tst[key].numpy(), dtype, f"state[{i}][{key}]")
    assert opt.steps == N_STEPS


def test_named_params_match_torch():
    opt, topt, flat, flat_t = _run_pair(np.float64, [{}, dict(lr=0.2)], {}, True, named=True)
    for a, t in zip(flat, flat_t):
        _close(a, t.numpy(), np.float64, "param")
    assert "g1.p2" in repr(opt)


def test_add_param_group_mid_run_matches_torch():
    rng = np.random.default_rng(3)
    a0, b0 = rng.standard_normal((4, 3)), rng.standard_normal(5)
    ta, tb = torch.tensor(a0.copy()), torch.tensor(b0.copy())
    a, b = a0.copy(), b0.copy()
    topt = torch.optim.Adafactor([ta], lr=0.05, foreach=False)
    opt = fastlr.Adafactor([a], lr=0.05)
    for t in range(30):
        if t == 10:
            topt.add_param_group({"params": [tb], "weight_decay": 0.1})
            opt.add_param_group({"params": [b], "weight_decay": 0.1})
        gs = _grads(rng, [(4, 3), (5,)], np.float64)[: 1 if t < 10 else 2]
        for x, g in zip((ta, tb), gs):
            x.grad = torch.tensor(g)
        topt.step()
        opt.step(gs)
    _close(a, ta.numpy(), np.float64, "a")
    _close(b, tb.numpy(), np.float64, "b")
    assert opt.state[1]["step"] == 20


def test_memory_is_m_plus_n():
    """The point of Adafactor: an m x n param keeps m + n values (Adam: 2 m n)."""
    m, n = 300, 200
    W = np.zeros((m, n), dtype=np.float32)
    st = fastlr.Adafactor([W]).state[0]
    assert sum(v.size for k, v in st.items() if k != "step") == m + n
    adam = fastlr.Adam([np.zeros((m, n), dtype=np.float32)]).state[0]
    assert sum(v.size for k, v in adam.items() if k != "step") == 2 * m * n
    batched = fastlr.Adafactor([np.zeros((4, m, n))]).state[0]
    assert batched["row_var"].shape == (4, m, 1) and batched["col_var"].shape == (4, 1, n)


# ---------------------------------------------------------------------------------------
# checkpoints, repr, param_groups
# ---------------------------------------------------------------------------------------
def _opt(params, **kw):
    return fastlr.Adafactor([{"params": params[:1], "lr": S.cosine(0.05, 40)},
                             {"params": params[1:], "weight_decay": 0.02}], **kw)


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(11)
    init = [rng.standard_normal((5, 4)), rng.standard_normal(6), rng.standard_normal((2, 3, 4))]
    grads = [_grads(rng, [p.shape for p in init], np.float64) for _ in range(40)]
    whole = [p.copy() for p in init]
    o1 = _opt(whole)
    for g in grads:
        o1.step(g)
    half = [p.copy() for p in init]
    o2 = _opt(half)
    for g in grads[:20]:
        o2.step(g)
    sd = o2.state_dict()
    resumed = [p.copy() for p in half]
    o3 = _opt(resumed)
    o3.load_state_dict(sd)
    assert o3.steps == 20 and o3.next_lr == o2.next_lr and o3.last_lr == o2.last_lr
    for g in grads[20:]:
        o3.step(g)
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)
    sd["state"][0]["row_var"][...] = 99.0          # the state dict holds copies
    assert not (o2.state[0]["row_var"] == 99.0).any()


def test_load_state_dict_checks_before_loading():
    p = [np.ones((3, 2)), np.ones(4)]
    src = fastlr.Adafactor(p, lr=0.1)
    src.step([np.ones((3, 2)), np.ones(4)])
    sd = src.state_dict()
    dst = fastlr.Adafactor([np.ones((3, 2)), np.ones(4)], lr=0.2)
    with pytest.raises(ValueError, match=r"^fastlr\.Adafactor\.load_state_dict: .*"
                                         r"param_groups\[0\]\['lr'\] is 0\.2 here, 0\.1"):
        dst.load_state_dict(sd)
    assert dst.steps == 0 and dst.state[0]["step"] == 0
    with pytest.warns(UserWarning, match="kept this optimizer's values"):
        dst.load_state_dict(sd, strict=False)
    assert dst.steps == 1 and dst.param_groups[0]["lr"] == 0.2
    np.testing.assert_array_equal(dst.state[0]["row_var"], src.state[0]["row_var"])
    bad = src.state_dict()
    bad["state"][1]["variance"] = np.zeros(5)
    other = fastlr.Adafactor([np.ones((3, 2)), np.ones(4)], lr=0.1)
    with pytest.raises(ValueError, match=r"state\[1\]\['variance'\] must be a float array "
                                         r"of shape \(4,\)"):
        other.load_state_dict(bad)
    bad = src.state_dict()
    bad["state"][0]["variance"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"state\[0\] has entries \['variance'\]"):
        other.load_state_dict(bad)
    assert other.steps == 0 and not other.state[0]["row_var"].any()
    with pytest.raises(TypeError, match=r"load_state_dict: strict"):
        other.load_state_dict(sd, strict="no")


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    init = [rng.standard_normal((5, 4)), rng.standard_normal(6), rng.standard_normal((2, 3, 4))]
    grads = [_grads(rng, [p.shape for p in init], np.float64) for _ in range(10)]
    a = [p.copy() for p in init]
    oa = _opt(a)
    for g in grads:
        oa.step(g)
    b = [p.copy() for p in init]
    ob = _opt(b)
    for g in grads[:5]:
        ob.step(g)
    path = tmp_path / "adafactor.npz"
    ob.save(path)
    c = [p.copy() for p in b]
    oc = _opt(c)
    oc.load(path)
    assert oc.steps == 5 and oc.last_lr == ob.last_lr and oc.state[2]["step"] == 5
    for g in grads[5:]:
        oc.step(g)
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x, y)
    other = _opt([np.ones((5, 4)), np.ones(6), np.ones((2, 3, 4))], d=2.0)
    with pytest.raises(ValueError, match=r"^fastlr\.Adafactor\.load: the checkpoint recorded "
                                         r"other hyperparameters"):
        other.load(path)
    assert other.steps == 0
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"^fastlr\.Adafactor\.load: .* is not a readable"):
        other.load(tmp_path / "junk.npz")


def test_rollback_restores_hyperparameters():
    w = np.ones(3)
    opt = fastlr.Adafactor([w], lr=0.1)
    sd = opt.state_dict()
    opt.param_groups[0]["lr"] = 0.3
    opt.step([np.ones(3)])
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.steps == 0


def test_named_checkpoint_names_must_match():
    src = fastlr.Adafactor({"a": np.ones(2), "b": np.ones((2, 2))})
    dst = fastlr.Adafactor({"a": np.ones(2), "c": np.ones((2, 2))})
    with pytest.raises(ValueError, match="missing from the checkpoint: 'c'"):
        dst.load_state_dict(src.state_dict())
    fastlr.Adafactor([np.ones(2), np.ones((2, 2))]).load_state_dict(src.state_dict())


def test_repr_and_param_groups_like_torch():
    w, b = np.ones((2, 3)), np.ones(3)
    opt = fastlr.Adafactor([{"params": [w]}, {"params": b, "lr": 0.5}], d=2.0)
    text = repr(opt)
    assert text.startswith("Adafactor (\nParameter Group 0\n    params: 1 array\n")
    assert "    eps: (None, 0.001)" in text and "    lr: 0.5" in text
    t = torch.optim.Adafactor([{"params": [torch.ones(2, 3)]},
                               {"params": [torch.ones(3)], "lr": 0.5}], d=2.0)
    for mine, theirs in zip(opt.param_groups, t.param_groups):
        assert {k: v for k, v in mine.items() if k != "params"} == \
            {k: v for k, v in theirs.items() if k not in ("params", "foreach")}
    assert opt.param_groups[1]["params"][0] is b
    assert fastlr.optim.Adafactor is fastlr.Adafactor
    assert "Adafactor" in fastlr.__all__ and "Adafactor" in fastlr.optim.__all__


def test_param_group_writes_are_checked_and_take_effect():
    w = np.ones(4)
    opt = fastlr.Adafactor([w])
    for key, value, exc in [("lr", -1.0, ValueError), ("beta2_decay", 0.5, ValueError),
                            ("d", 0.5, ValueError), ("eps", (None, -1.0), ValueError),
                            ("eps", 1e-3, TypeError), ("maximize", "yes", TypeError),
                            ("weight_decay", "x", TypeError)]:
        before = opt.param_groups[0][key]
        with pytest.raises(exc, match=r"^fastlr\.Adafactor: "):
            opt.param_groups[0][key] = value
        assert opt.param_groups[0][key] == before
    opt.param_groups[0]["lr"] = 0.0            # rho = 0: no update
    opt.step([np.ones(4)])
    np.testing.assert_array_equal(w, np.ones(4))


# ---------------------------------------------------------------------------------------
# arguments: the policy of fastlr._core.args, nothing half-applied
# ---------------------------------------------------------------------------------------
BAD_HYPERS = [
    ("lr", -0.1, ValueError, "lr must be >= 0"), ("lr", "0.1", TypeError, "lr"),
    ("lr", math.nan, ValueError, "lr"), ("lr", True, TypeError, "lr"),
    ("beta2_decay", 0.1, ValueError, "beta2_decay must be <= 0"),
    ("beta2_decay", math.inf, ValueError, "beta2_decay"),
    ("eps", (-1.0, 1e-3), ValueError, "eps1 must be >= 0"),
    ("eps", (None, -1e-3), ValueError, "eps2 must be >= 0"),
    ("eps", 1e-3, TypeError, "eps must be a pair"), ("eps", ("a", 1e-3), TypeError, "eps1"),
    ("d", 0.99, ValueError, "d must be >= 1"), ("d", None, TypeError, "d"),
    ("weight_decay", -1.0, ValueError, "weight_decay must be >= 0"),
    ("maximize", 2, ValueError, "maximize"), ("maximize", "no", TypeError, "maximize"),
]


@pytest.mark.parametrize("key, value, exc, match", BAD_HYPERS)
def test_constructor_checks(key, value, exc, match):
    with pytest.raises(exc, match=rf"^fastlr\.Adafactor: .*{match}"):
        fastlr.Adafactor([np.ones(2)], **{key: value})
    in_group = match.replace(" must", r"'\] must")       # param group ['lr'] must ...
    with pytest.raises(exc, match=rf"^fastlr\.Adafactor: .*{in_group}"):
        fastlr.Adafactor([{"params": [np.ones(2)], key: value}])


def test_torch_rejects_what_fastlr_rejects():
    for key, value, exc, _ in BAD_HYPERS:
        if exc is ValueError and key != "maximize" and not (
                isinstance(value, float) and not math.isfinite(value)):
            with pytest.raises(ValueError):
                torch.optim.Adafactor([torch.ones(2)], **{key: value})


@pytest.mark.parametrize("bad, exc, match", [
    (lambda g: g[:1], ValueError, r"got 1 grads for 2 params"),
    (lambda g: [g[0], g[1].astype(np.float32)], TypeError, r"grads\[1\] has dtype float32"),
    (lambda g: [g[0], np.ones(4)], ValueError, r"grads\[1\] has shape \(4,\)"),
    (lambda g: [np.asfortranarray(g[0]), g[1]], ValueError, r"grads\[0\] must have the layout"),
    (lambda g: [g[0], [1.0, 2.0, 3.0]], TypeError, r"grads\[1\] must be a numpy\.ndarray"),
    (lambda g: g[0], ValueError, r"grads has shape \(3, 2\) but one grad array for 2"),
    (lambda g: iter(g), TypeError, r"grads must be a list"),
    (lambda g: {"a": g[0]}, TypeError, r"the params have no names"),
])
def test_step_checks_grads_and_writes_nothing(bad, exc, match):
    w, b = np.ones((3, 2)), np.ones(3)
    opt = fastlr.Adafactor([w, b])
    opt.step([np.ones((3, 2)), np.ones(3)])
    before = [w.copy(), b.copy(), opt.state[0]["row_var"].copy()]
    good = [np.full((3, 2), 0.3), np.full(3, 0.2)]
    with pytest.raises(exc, match=rf"^fastlr\.Adafactor\.step: .*{match}"):
        opt.step(bad(good))
    for x, y in zip([w, b, opt.state[0]["row_var"]], before):
        np.testing.assert_array_equal(x, y)
    assert opt.steps == 1 and opt.state[0]["step"] == 1


def test_step_refuses_a_grad_overlapping_a_written_buffer():
    w = np.ones(4)
    opt = fastlr.Adafactor([w])
    with pytest.raises(ValueError, match=r"grads\[0\] overlaps a param or a state buffer"):
        opt.step([w])
    with pytest.raises(ValueError, match=r"overlaps"):
        opt.step([opt.state[0]["variance"]])
    assert opt.steps == 0


def test_a_schedule_out_of_range_is_refused_before_any_write():
    w = np.ones(3)
    opt = fastlr.Adafactor([w], lr=lambda t: 0.1 if t < 2 else -1.0, d=S.constant(1.0))
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    before = w.copy()
    with pytest.raises(ValueError, match=r"^fastlr\.Adafactor\.step: param_groups\[0\] at "
                                         r"step 2: lr must be >= 0, got -1\.0"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(w, before)
    assert opt.steps == 2


def test_params_are_checked():
    with pytest.raises(TypeError, match=r"^fastlr\.Adafactor: params\[0\] .*float32 or float64"):
        fastlr.Adafactor([np.ones(2, dtype=np.int64)])
    with pytest.raises(ValueError, match=r"^fastlr\.Adafactor: .* overlap in memory"):
        x = np.ones(4)
        fastlr.Adafactor([x[:3], x[2:]])
    with pytest.raises(ValueError, match=r"must be contiguous"):
        fastlr.Adafactor([np.ones((4, 4))[:, ::2]])


KERNEL_ARRAYS = dict(row_var=np.zeros((3, 1)), col_var=np.zeros((1, 2)))


@pytest.mark.parametrize("change, exc, match", [
    (dict(param=np.ones((3, 2), dtype=np.float32)), TypeError, "grad has dtype float64"),
    (dict(grad=np.ones((2, 3))), ValueError, "grad has shape"),
    (dict(grad=np.asfortranarray(np.ones((3, 2)))), ValueError, "grad is F-contiguous"),
    (dict(row_var=None), ValueError, "row_var is required"),
    (dict(row_var=np.zeros((3, 2))), ValueError, r"row_var must have shape \(3, 1\)"),
    (dict(col_var=np.zeros((1, 2), dtype=np.float32)), TypeError, "col_var has dtype"),
    (dict(variance=np.zeros((3, 2))), ValueError, "variance must be None"),
    (dict(step=0), ValueError, "step must be >= 1"),
    (dict(step=1.0), TypeError, "step"),
    (dict(lr=-1.0), ValueError, "lr must be >= 0"),
    (dict(beta2_decay=1.0), ValueError, "beta2_decay must be <= 0"),
    (dict(eps1=-1.0), ValueError, "eps1 must be >= 0"),
    (dict(eps2="x"), TypeError, "eps2"),
    (dict(d=0.0), ValueError, "d must be >= 1"),
    (dict(weight_decay=math.nan), ValueError, "weight_decay"),
    (dict(maximize=None), TypeError, "maximize"),
    (dict(param=[1.0]), TypeError, "param must be a numpy.ndarray"),
])
def test_kernel_checks_and_writes_nothing(change, exc, match):
    args = dict(param=np.ones((3, 2)), grad=np.ones((3, 2)), row_var=np.zeros((3, 1)),
                col_var=np.zeros((1, 2)), variance=None, step=1)
    args.update(change)
    snapshot = {k: np.array(v, copy=True) for k, v in args.items()
                if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=rf"^fastlr\.kernels\.adafactor: .*{match}"):
        adafactor(**args)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(args[k], v)


def test_kernel_refuses_overlap_and_read_only():
    p = np.ones((3, 2))
    with pytest.raises(ValueError, match="param and grad overlap"):
        adafactor(p, p, np.zeros((3, 1)), np.zeros((1, 2)), step=1)
    buf = np.zeros(5)
    with pytest.raises(ValueError, match="row_var and col_var overlap"):
        adafactor(p, np.ones((3, 2)), buf[:3].reshape(3, 1), buf[2:4].reshape(1, 2), step=1)
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        adafactor(ro, np.ones(2), variance=np.zeros(2), step=1)


# ---------------------------------------------------------------------------------------
# fastlr.compat.torch.Adafactor
# ---------------------------------------------------------------------------------------
def _bridge_pair(dtype, F=False):
    from fastlr.compat.torch import Adafactor as Bridge
    rng = np.random.default_rng(5)
    shapes = [(6, 5), (11,), (3, 4, 2), ()]
    inits = [rng.standard_normal(s).astype(dtype) for s in shapes]

    def make(cls):
        ps = [torch.nn.Parameter(torch.tensor(a.copy())) for a in inits]
        if F:
            ps[2] = torch.nn.Parameter(ps[2].detach().permute(2, 1, 0).contiguous()
                                       .permute(2, 1, 0))
        return ps, cls([{"params": ps[:2], "lr": 0.03, "weight_decay": 0.05},
                        {"params": ps[2:], "maximize": True, "eps": (1e-5, 1e-2)}],
                       foreach=False)
    return make(torch.optim.Adafactor), make(Bridge), shapes, rng


@pytest.mark.parametrize("F", [False, True], ids=["C", "F-3d"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bridge_matches_torch(dtype, F):
    (tps, topt), (bps, bopt), shapes, rng = _bridge_pair(dtype, F)
    sched = [torch.optim.lr_scheduler.CosineAnnealingLR(o, N_STEPS) for o in (topt, bopt)]
    for _ in range(N_STEPS):
        grads = _grads(rng, shapes, dtype)
        for ps in (tps, bps):
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g).reshape(p.shape)
                if F and p.dim() == 3:
                    p.grad = p.grad.permute(2, 1, 0).contiguous().permute(2, 1, 0)
        topt.step()
        bopt.step()
        for s in sched:
            s.step()
    for i, (a, b) in enumerate(zip(bps, tps)):
        _close(a.detach().numpy(), b.detach().numpy(), dtype, f"param {i}")
        sa, sb = bopt.state[a], topt.state[b]
        assert sorted(sa) == sorted(sb) and float(sa["step"]) == float(sb["step"]) == N_STEPS
        for key in sa:
            _close(sa[key].numpy(), sb[key].numpy(), dtype, f"state {i} {key}")


def test_bridge_state_dicts_load_both_ways():
    from fastlr.compat.torch import Adafactor as Bridge
    (tps, topt), (bps, bopt), shapes, rng = _bridge_pair(np.float64)
    for _ in range(5):
        grads = _grads(rng, shapes, np.float64)
        for ps in (tps, bps):
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g)
        topt.step()
        bopt.step()
    # torch's state dict into the bridge and the bridge's into torch: both continue alike
    b2 = Bridge([{"params": bps[:2]}, {"params": bps[2:]}])
    b2.load_state_dict(topt.state_dict())
    t2 = torch.optim.Adafactor([{"params": tps[:2]}, {"params": tps[2:]}], foreach=False)
    t2.load_state_dict(bopt.state_dict())
    for _ in range(5):
        grads = _grads(rng, shapes, np.float64)
        for ps in (tps, bps):
            for p, g in zip(ps, grads):
                p.grad = torch.tensor(g)
        t2.step()
        b2.step()
    for a, b in zip(bps, tps):
        _close(a.detach().numpy(), b.detach().numpy(), np.float64, "param")
    assert float(b2.state[bps[0]]["step"]) == 10


def test_bridge_refuses_before_writing():
    from fastlr.compat.torch import Adafactor as Bridge
    with pytest.raises(ValueError, match=r"fastlr\.compat\.torch\.Adafactor: foreach=True"):
        Bridge([torch.ones(2, requires_grad=True)], foreach=True)
    a = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    h = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = Bridge([a, h])
    a.grad = torch.ones(3, 2, dtype=torch.float64)
    h.grad = torch.ones(4, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"parameter 1 .* has dtype torch\.float16"):
        opt.step()
    assert not opt.state and (a.detach() == 1).all()
    opt = Bridge([a])
    opt.param_groups[0]["d"] = 0.5
    with pytest.raises(ValueError, match=r"param_groups\[0\]: d must be >= 1"):
        opt.step()
    opt.param_groups[0]["d"] = 1.0
    opt.step()
    assert float(opt.state[a]["step"]) == 1 and opt.state[a]["row_var"].shape == (3, 1)
    opt.state[a]["row_var"] = torch.zeros(2, 1, dtype=torch.float64)
    before = a.detach().clone()
    with pytest.raises(ValueError, match=r"state\['row_var'\] has shape \(2, 1\)"):
        opt.step()
    assert torch.equal(a.detach(), before)


def test_bridge_skips_params_without_grads():
    from fastlr.compat.torch import Adafactor as Bridge
    a = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = Bridge([a, b])
    a.grad = torch.ones(2, 2)
    opt.step()
    assert b not in opt.state and float(opt.state[a]["step"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import fastlr.compat.torch as ct
    assert "Adafactor" in ct.__all__
