"""fastlr.ScheduleFreeSGD / ScheduleFreeAdamW / ScheduleFreeRAdam: the fused loops against
their NumPy twins (bit for bit), the optimizers against the authors' reference package
``schedulefree`` 1.4.1 (train and eval mode, schedules, groups, checkpoints), and the
argument checks (nothing half-applied)."""

import os

import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr._core import schedulefree as K
from fastlr.reference import schedulefree as R

CLASSES = {"sgd": fastlr.ScheduleFreeSGD, "adamw": fastlr.ScheduleFreeAdamW,
           "radam": fastlr.ScheduleFreeRAdam}
SHAPES = [(5,), (3, 4), (2, 3, 2), ()]
TOL = {np.float64: 1e-10, np.float32: 1e-4}


# ----------------------------------------------------------------------------------------
# the loops against the twins
# ----------------------------------------------------------------------------------------
def _lists(rng, dtype, sizes, k):
    return [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(k)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ckp1", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_sgd_loop_is_its_twin(dtype, ckp1, decay):
    rng = np.random.default_rng(1)
    sizes = [0, 1, 7, 4097]
    ys, gs, zs = _lists(rng, dtype, sizes, 3)
    a = [[x.copy() for x in ys], [x.copy() for x in zs]]
    b = [[x.copy() for x in ys], [x.copy() for x in zs]]
    kw = dict(ckp1=ckp1, lr=0.1, y_coef=0.1 * (0.9 * (1 - ckp1) - 1), weight_decay=decay)
    K.sgd_step(a[0], gs, a[1], **kw)
    R.sgd_step(b[0], gs, b[1], **kw)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(x, y)
    assert any((x != y0).any() for x, y0 in zip(a[0], ys) if x.size)     # it moved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("ckp1,decay", [(0.2, 0.0), (0.7, 0.01), (0.0, 0.1)])
def test_adam_loop_is_its_twin(dtype, adaptive, ckp1, decay):
    rng = np.random.default_rng(2)
    sizes = [0, 1, 9, 5000]
    ys, gs, zs = _lists(rng, dtype, sizes, 3)
    vs = [np.abs(v) for v in _lists(rng, dtype, sizes, 1)[0]]
    a = [[x.copy() for x in lst] for lst in (ys, zs, vs)]
    b = [[x.copy() for x in lst] for lst in (ys, zs, vs)]
    kw = dict(ckp1=ckp1, lr=0.01, y_coef=0.01 * (0.9 * (1 - ckp1) - 1), weight_decay=decay,
              beta2=0.999, bias_correction2=1 - 0.999 ** 3, eps=1e-8, adaptive=adaptive)
    K.adam_step(*a[:1], gs, *a[1:], **kw)
    R.adam_step(*b[:1], gs, *b[1:], **kw)
    for x, y in zip(sum(a, []), sum(b, [])):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight", [0.1, 1 - 1 / 0.9, 0.5, 0.75, -0.6])
def test_switch_is_its_twin(dtype, weight):
    rng = np.random.default_rng(3)
    ys, zs = _lists(rng, dtype, [0, 3, 4500], 2)
    a, b = [y.copy() for y in ys], [y.copy() for y in ys]
    K.switch(a, zs, weight)
    R.switch(b, zs, weight)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loops_walk_any_layout_in_memory_order(dtype):
    rng = np.random.default_rng(4)
    shapes = [(3, 5), (2, 3, 4), ()]
    make = [lambda a: np.asfortranarray(a), lambda a: a, lambda a: a]
    ys, gs, zs, vs = ([f(rng.standard_normal(sh).astype(dtype)) for f, sh in
                       zip(make, shapes)] for _ in range(4))
    vs = [np.asarray(np.abs(v)) for v in vs]
    a = [[x.copy(order="K") for x in lst] for lst in (ys, zs, vs)]
    b = [[x.copy(order="K") for x in lst] for lst in (ys, zs, vs)]
    kw = dict(ckp1=0.25, lr=0.01, y_coef=-0.002, weight_decay=0.1, beta2=0.99,
              bias_correction2=0.0199, eps=1e-8, adaptive=True)
    K.adam_step(a[0], gs, a[1], a[2], **kw)
    R.adam_step(b[0], gs, b[1], b[2], **kw)
    K.switch(a[0], a[1], 0.1)
    R.switch(b[0], b[1], 0.1)
    for x, y in zip(sum(a, []), sum(b, [])):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match=r"zs\[0\] is C-contiguous but ys\[0\] is "
                                         r"F-contiguous"):
        K.switch(a[0], [np.ascontiguousarray(a[1][0])] + a[1][1:], 0.1)


def test_loops_check_everything_before_writing():
    ys = [np.ones(3), np.ones(4)]
    zs = [np.zeros(3), np.zeros(4)]
    before = [y.copy() for y in ys]
    kw = dict(ckp1=0.5, lr=0.1, y_coef=-0.1, weight_decay=0.0)
    cases = [
        ([np.ones(3), np.ones(5)], zs, ValueError, r"grads\[1\] has shape \(5,\) but ys\[1\]"),
        ([np.ones(3), np.ones(4, np.float32)], zs, TypeError, r"grads\[1\] has dtype float32"),
        ([np.ones(3), np.ones((2, 2))], zs, ValueError, r"grads\[1\] has shape \(2, 2\)"),
        ([np.ones(3), [1.0] * 4], zs, TypeError, r"grads\[1\] must be a numpy.ndarray"),
        ([np.ones(3)], zs, ValueError, r"grads has 1 arrays for 2 params"),
        ([np.ones(3), ys[1]], zs, ValueError, r"grads\[1\] overlaps"),
        ([np.ones(3), np.ones(8)[::2]], zs, ValueError, r"grads\[1\] is not contiguous"),
    ]
    for grads, z, exc, match in cases:
        with pytest.raises(exc, match=match):
            K.sgd_step(ys, grads, z, **kw)
        for y, b in zip(ys, before):
            np.testing.assert_array_equal(y, b)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"zs\[1\] is read-only"):
        K.sgd_step(ys, [np.ones(3), np.ones(4)], [zs[0], ro], **kw)
    with pytest.raises(TypeError, match="ckp1 must be a real number"):
        K.sgd_step(ys, [np.ones(3), np.ones(4)], zs, **dict(kw, ckp1="0.5"))
    with pytest.raises(TypeError, match="adaptive must be a bool"):
        K.adam_step(ys, [np.ones(3), np.ones(4)], zs, [np.zeros(3), np.zeros(4)],
                    ckp1=0.5, lr=0.1, y_coef=-0.1, weight_decay=0.0, beta2=0.9,
                    bias_correction2=0.1, eps=1e-8, adaptive=None)
    for y, b in zip(ys, before):
        np.testing.assert_array_equal(y, b)


# ----------------------------------------------------------------------------------------
# the optimizers against the reference package
# ----------------------------------------------------------------------------------------
try:
    import torch
    import schedulefree
except ImportError:                 # pragma: no cover - the parity extra installs both
    torch = schedulefree = None

#: the tests against the reference package (a torch optimizer)
needs_reference = pytest.mark.skipif(
    schedulefree is None, reason="the reference package schedulefree==1.4.1 (and torch) is "
    "not installed; the parity extra installs it: pip install \".[parity]\"")

REFERENCE = {} if schedulefree is None else {
    "sgd": schedulefree.SGDScheduleFree, "adamw": schedulefree.AdamWScheduleFree,
    "radam": schedulefree.RAdamScheduleFree}

OPTIONS = {
    "sgd": [dict(), dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=10),
            dict(lr=0.02, r=1.0, weight_lr_power=1.5), dict(lr=0.1, weight_lr_power=0.0)],
    "adamw": [dict(), dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, warmup_steps=20),
              dict(lr=0.005, eps=1e-6, r=0.5, weight_lr_power=3.0)],
    "radam": [dict(), dict(lr=0.01, betas=(0.85, 0.95), weight_decay=0.02),
              dict(lr=0.01, silent_sgd_phase=False, r=2.0),
              dict(lr=0.02, betas=(0.9, 0.0))],
}
CASES = [(kind, i) for kind, opts in OPTIONS.items() for i in range(len(opts))]


def _problem(dtype, shapes=SHAPES, seed=0):
    """Params (C and F layouts), a target per param and 100 steps of noise: the grad at y
    is ``scale * (y - target) + noise_t`` (a quadratic with noise)."""
    rng = np.random.default_rng(seed)
    params, targets, scales = [], [], []
    for k, shape in enumerate(shapes):
        p = rng.standard_normal(shape)
        params.append(np.asfortranarray(p).astype(dtype, order="K") if k == 1 else
                      p.astype(dtype))
        targets.append(rng.standard_normal(shape).astype(dtype))
        scales.append(dtype(rng.uniform(0.5, 2.0)))
    noise = [[rng.standard_normal(s).astype(dtype) * dtype(0.1) for s in shapes]
             for _ in range(100)]
    return params, targets, scales, noise


def _grads(values, targets, scales, noise_t):
    out = []
    for v, c, s, n in zip(values, targets, scales, noise_t):
        g = np.empty_like(v)            # the param's layout
        g[...] = s * (v - c) + n
        out.append(g)
    return out


class _Ref:
    """The reference optimizer over torch copies of the params (per-tensor path)."""

    def __init__(self, kind, params, groups=None, **options):
        self.tensors = [torch.tensor(np.array(p)) for p in params]
        if groups is None:
            spec = self.tensors
        else:
            spec = [dict(g, params=[self.tensors[i] for i in idx]) for idx, g in groups]
        self.opt = REFERENCE[kind](spec, foreach=False, **options)

    def values(self):
        return [t.numpy().copy() for t in self.tensors]

    def step(self, grads, lrs=None):
        for t, g in zip(self.tensors, grads):
            t.grad = torch.tensor(np.array(g))
        if lrs is not None:
            for group, lr in zip(self.opt.param_groups, lrs):
                group["lr"] = lr
        self.opt.step()


def _assert_close(mine, ref, dtype, what):
    for i, (a, b) in enumerate(zip(mine, ref)):
        scale = max(1.0, float(np.abs(b).max(initial=0)))
        err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0))
        assert err <= TOL[dtype] * scale, f"{what}: param {i} differs by {err:.3g}"


def _run_both(kind, dtype, options, schedule=None, groups=None, switch_every=10,
              seed=0):
    params, targets, scales, noise = _problem(dtype, seed=seed)
    ref = _Ref(kind, params, groups, **options)
    mine_options = dict(options)
    if schedule is not None:
        mine_options["lr"] = schedule
    spec = params if groups is None else \
        [dict(g, params=[params[i] for i in idx]) for idx, g in groups]
    opt = CLASSES[kind](spec, **mine_options)
    ref.opt.train()
    opt.train()
    for t in range(100):
        grads_mine = _grads(params, targets, scales, noise[t])
        if groups is not None:          # the optimizer's params are in the groups' order
            grads_mine = [grads_mine[i] for idx, _ in groups for i in idx]
        grads_ref = _grads(ref.values(), targets, scales, noise[t])
        lrs = None if schedule is None else [schedule(t)] * len(ref.opt.param_groups)
        opt.step(grads_mine)
        ref.step(grads_ref, lrs)
        if (t + 1) % switch_every == 0:
            opt.eval()
            ref.opt.eval()
            _assert_close(params, ref.values(), dtype, f"eval mode after step {t + 1}")
            opt.train()
            ref.opt.train()
        _assert_close(params, ref.values(), dtype, f"train mode after step {t + 1}")
    return opt, ref, params


@needs_reference
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,i", CASES)
def test_matches_reference(kind, i, dtype):
    opt, ref, params = _run_both(kind, dtype, OPTIONS[kind][i])
    # the state too: z (and exp_avg_sq), the counters
    for j, t in enumerate(ref.tensors):
        st = ref.opt.state[t]
        _assert_close([opt.state[j]["z"]], [st["z"].numpy()], dtype, "z")
        if "exp_avg_sq" in st:
            _assert_close([opt.state[j]["exp_avg_sq"]], [st["exp_avg_sq"].numpy()], dtype,
                          "exp_avg_sq")
    group = ref.opt.param_groups[0]
    assert opt.steps == group["k"] == 100
    assert opt.last_lr == pytest.approx([group["scheduled_lr"]], rel=1e-15)
    sd = opt.state_dict()
    assert sd["group_state"][0]["weight_sum"] == pytest.approx(group["weight_sum"], rel=1e-14)
    assert sd["group_state"][0]["lr_max"] == group["lr_max"]


@needs_reference
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_matches_reference_with_a_schedule(kind):
    sched = schedules.warmup_cosine(0.03, warmup_steps=15, total_steps=80, init=0.001)
    options = dict(OPTIONS[kind][1]) if kind != "radam" else dict(weight_decay=0.01)
    options.pop("lr", None)
    _run_both(kind, np.float64, options, schedule=sched, switch_every=7)


@needs_reference
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_matches_reference_with_a_callable_lr(kind):
    _run_both(kind, np.float64, {}, schedule=lambda t: 0.01 / (1 + 0.05 * t), switch_every=13)


@needs_reference
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_matches_reference_with_param_groups(kind):
    beta = "momentum" if kind == "sgd" else "betas"
    other = 0.7 if kind == "sgd" else (0.8, 0.99)
    groups = [([0, 2], {"lr": 0.03, "weight_decay": 0.01}),
              ([1, 3], {"lr": 0.005, beta: other})]
    opt, ref, _ = _run_both(kind, np.float64, {}, groups=groups, switch_every=9)
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_eval_before_any_step_and_mode_guard(kind):
    params, *_ = _problem(np.float64)
    before = [p.copy() for p in params]
    opt = CLASSES[kind](params)
    assert opt.train_mode is False
    with pytest.raises(RuntimeError, match=rf"fastlr\.{opt.__class__.__name__}\.step: the "
                                           r"optimizer is in eval mode"):
        opt.step([np.ones_like(p) for p in params])
    opt.eval()
    opt.train()
    opt.eval()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)     # no z yet: the switch changes nothing
    assert opt.steps == 0 and opt.state == {}


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
def _steps(opt, params, targets, scales, noise, ts):
    for t in ts:
        opt.step(_grads(params, targets, scales, noise[t]))


@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("via", ["state_dict", "file"])
def test_checkpoint_resumes_exactly(kind, mode, via, tmp_path):
    sched = schedules.cosine(0.02, 60)
    params, targets, scales, noise = _problem(np.float64, seed=4)
    whole = [p.copy() for p in params]
    a = CLASSES[kind](whole, lr=sched)
    a.train()
    _steps(a, whole, targets, scales, noise, range(25))
    if mode == "eval":                  # the same switches as the interrupted run
        a.eval()
        a.train()
    _steps(a, whole, targets, scales, noise, range(25, 60))

    opt = CLASSES[kind](params, lr=sched)
    opt.train()
    _steps(opt, params, targets, scales, noise, range(25))
    if mode == "eval":
        opt.eval()
    saved_params = [p.copy() for p in params]
    if via == "file":
        path = os.fspath(tmp_path / "sf.npz")
        opt.save(path)
    else:
        sd = opt.state_dict()
        assert sd["train_mode"] is (mode == "train")
    # a fresh optimizer (in eval mode) over the params saved at the same moment
    restored = [p.copy() for p in saved_params]
    b = CLASSES[kind](restored, lr=sched)
    if via == "file":
        b.load(path)
    else:
        b.load_state_dict(sd)
    assert b.train_mode is (mode == "train") and b.steps == 25
    for p, s in zip(restored, saved_params):
        np.testing.assert_array_equal(p, s)     # loading never touches the arrays
    b.train()
    _steps(b, restored, targets, scales, noise, range(25, 60))
    for p, q in zip(restored, whole):
        np.testing.assert_array_equal(p, q)


@needs_reference
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_checkpoint_matches_the_reference_mode_and_counters(kind):
    params, targets, scales, noise = _problem(np.float64, seed=5)
    ref = _Ref(kind, params)
    opt = CLASSES[kind](params)
    opt.train()
    ref.opt.train()
    for t in range(5):
        opt.step(_grads(params, targets, scales, noise[t]))
        ref.step(_grads(ref.values(), targets, scales, noise[t]))
    for switch in ("train", "eval"):
        getattr(opt, switch)()
        getattr(ref.opt, switch)()
        rsd, sd = ref.opt.state_dict(), opt.state_dict()
        rg = rsd["param_groups"][0]
        assert sd["train_mode"] == rg["train_mode"]
        assert sd["steps"] == rg["k"]
        assert sd["group_state"][0]["lr_max"] == rg["lr_max"]
        assert sd["group_state"][0]["weight_sum"] == pytest.approx(rg["weight_sum"],
                                                                   rel=1e-15)


def test_checkpoint_refusals_change_nothing():
    params, targets, scales, noise = _problem(np.float64, seed=6)
    opt = fastlr.ScheduleFreeAdamW(params, lr=0.01)
    opt.train()
    _steps(opt, params, targets, scales, noise, range(3))
    sd = opt.state_dict()
    other = fastlr.ScheduleFreeAdamW([p.copy() for p in params], lr=0.02)
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] is 0.02 here, 0.01 in "
                                         r"the checkpoint"):
        other.load_state_dict(sd)
    assert other.steps == 0 and other.state == {} and other.train_mode is False
    with pytest.warns(UserWarning, match="kept this optimizer's values"):
        other.load_state_dict(sd, strict=False)
    assert other.steps == 3 and other.param_groups[0]["lr"] == 0.02
    assert other.train_mode is True
    sgd = fastlr.ScheduleFreeSGD([p.copy() for p in params])
    with pytest.raises(ValueError, match="is of 'ScheduleFreeAdamW', not 'ScheduleFreeSGD'"):
        sgd.load_state_dict(sd)
    bad = dict(sd, state={i: dict(v) for i, v in sd["state"].items()})
    bad["state"][2]["z"] = np.zeros(7)
    fresh = fastlr.ScheduleFreeAdamW([p.copy() for p in params], lr=0.01)
    with pytest.raises(ValueError, match=r"state\[2\]\['z'\] must be a float array of shape"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="'state' is empty but 'steps' is 3"):
        fresh.load_state_dict(dict(sd, state={}))
    assert fresh.state_dict()["steps"] == 0 and before["steps"] == 0
    # a rollback to its own state dict restores the hyperparameters too
    opt.param_groups[0]["lr"] = 0.5
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.01


def test_named_params_and_dict_grads():
    w, b = np.ones((2, 3)), np.zeros(3)
    opt = fastlr.ScheduleFreeSGD({"w": w, "b": b}, lr=0.1)
    opt.train()
    opt.step({"b": np.ones(3), "w": np.ones((2, 3))})
    assert (w < 1).all() and (b < 0).all()
    with pytest.raises(ValueError, match="missing from the grads: 'w'"):
        opt.step({"b": np.ones(3)})
    assert "params: 2 arrays ('w', 'b')" in repr(opt)
    assert "train_mode: True" in repr(opt)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["w", "b"]
    renamed = fastlr.ScheduleFreeSGD({"w2": w.copy(), "b": b.copy()}, lr=0.1)
    with pytest.raises(ValueError, match="names its params otherwise"):
        renamed.load_state_dict(sd)


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------
BAD_HYPERS = [
    ("sgd", dict(lr=-0.1), ValueError, r"lr must be"),
    ("sgd", dict(lr="0.1"), TypeError, r"lr must be a number >= 0, a fastlr schedule"),
    ("sgd", dict(momentum=1.0), ValueError, r"momentum must be"),
    ("sgd", dict(momentum=0.0), ValueError, r"momentum must be"),
    ("sgd", dict(warmup_steps=2.0), TypeError, r"warmup_steps must be"),
    ("sgd", dict(warmup_steps=-1), ValueError, r"warmup_steps must be >= 0"),
    ("sgd", dict(weight_decay=float("nan")), ValueError, r"weight_decay must be"),
    ("adamw", dict(betas=(0.0, 0.999)), ValueError, r"betas\[0\] \(beta1\) must be"),
    ("adamw", dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\] \(beta2\) must be"),
    ("adamw", dict(betas=0.9), TypeError, r"betas must be a pair"),
    ("adamw", dict(eps=-1e-8), ValueError, r"eps must be"),
    ("adamw", dict(r=float("inf")), ValueError, r"r must be"),
    ("adamw", dict(weight_lr_power=-1.0), ValueError, r"weight_lr_power must be"),
    ("adamw", dict(foreach=True), TypeError, r"foreach"),
    ("radam", dict(silent_sgd_phase="yes"), TypeError, r"silent_sgd_phase must be"),
    ("radam", dict(warmup_steps=3), TypeError, r"warmup_steps"),
]


@pytest.mark.parametrize("kind,options,exc,match", BAD_HYPERS)
def test_bad_hyperparameters(kind, options, exc, match):
    cls = CLASSES[kind]
    with pytest.raises(exc, match=match) as info:
        cls([np.ones(3)], **options)
    if exc is ValueError or "must be" in match:
        assert str(info.value).startswith(f"fastlr.{cls.__name__}: ")


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_bad_group_values_and_writes(kind):
    cls = CLASSES[kind]
    with pytest.raises(ValueError, match=r"fastlr\.\w+: param_groups\[1\]\['lr'\] must be"):
        cls([{"params": [np.ones(2)]}, {"params": [np.ones(2)], "lr": -1.0}])
    opt = cls([np.ones(2)])
    with pytest.raises(ValueError, match=r"^fastlr\.\w+: param_groups\[0\]\['weight_decay'\] "
                                         r"must be >= 0"):
        opt.param_groups[0]["weight_decay"] = -1.0
    assert opt.param_groups[0]["weight_decay"] == 0


def test_bad_params():
    with pytest.raises(TypeError, match=r"fastlr.ScheduleFreeAdamW: params\[0\] .* must "
                                        r"have dtype float32 or float64"):
        fastlr.ScheduleFreeAdamW([np.ones(3, dtype=np.int64)])
    with pytest.raises(ValueError, match="must be contiguous"):
        fastlr.ScheduleFreeAdamW([np.ones(6)[::2]])
    buf = np.ones(6)
    with pytest.raises(ValueError, match="overlap in memory"):
        fastlr.ScheduleFreeAdamW([buf[:4], buf[2:]])
    with pytest.raises(ValueError, match="params is empty"):
        fastlr.ScheduleFreeSGD([])


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_bad_grads_and_schedules_change_nothing(kind):
    params, targets, scales, noise = _problem(np.float64, seed=7)
    calls = []

    def lr(t):
        calls.append(t)
        return 0.01 if t < 3 else -1.0

    opt = CLASSES[kind](params, lr=lr)
    opt.train()
    _steps(opt, params, targets, scales, noise, range(2))
    before = [p.copy() for p in params]
    state = {i: {k: v.copy() for k, v in st.items()} for i, st in opt.state.items()}
    good = _grads(params, targets, scales, noise[2])
    bad = [
        (good[:-1], ValueError, "got 3 grads for 4 params"),
        (good[:1] + [good[1].astype(np.float32)] + good[2:], TypeError,
         r"grads\[1\] must have dtype float64"),
        (good[:1] + [np.ascontiguousarray(good[1])] + good[2:], ValueError,
         r"grads\[1\] must be F-contiguous"),
        (good[:1] + [None] + good[2:], TypeError, r"grads\[1\] must be a numpy.ndarray"),
        (good[:2] + [np.ones(5)] + good[3:], ValueError, r"grads\[2\] must have shape"),
        (good[:3] + [params[3]], ValueError, r"grads\[3\] overlaps a param"),
        (np.ones(3), TypeError, "grads must be a list"),
    ]
    for grads, exc, match in bad:
        with pytest.raises(exc, match=rf"fastlr\.{CLASSES[kind].__name__}\.step: .*{match}"):
            opt.step(grads)
    opt.step(good)                   # step 3 (t=2) still fine
    before = [p.copy() for p in params]
    state = {i: {k: v.copy() for k, v in st.items()} for i, st in opt.state.items()}
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] \(a schedule\) at step 3 "
                                         r"must be"):
        opt.step(_grads(params, targets, scales, noise[3]))
    assert opt.steps == 3
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    for i, st in opt.state.items():
        for k, v in st.items():
            np.testing.assert_array_equal(v, state[i][k])


def test_float32_and_float64_params_together():
    a, b = np.ones(3, dtype=np.float32), np.ones(2)
    opt = fastlr.ScheduleFreeAdamW([a, b], lr=0.1)
    opt.train()
    opt.step([np.ones(3, dtype=np.float32), np.ones(2)])
    opt.eval()
    assert a.dtype == np.float32 and (a < 1).all() and (b < 1).all()
    assert opt.state[0]["z"].dtype == np.float32


def _policy_module():
    """tests/test_argument_policy.py (the project's argument policy: its bad values)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "test_argument_policy.py")
    spec = importlib.util.spec_from_file_location("fastlr_argument_policy_values", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_POLICY = _policy_module()
KINDS = {
    "sgd": {"lr": ("real", "nonneg", "required"), "momentum": ("real", "open_unit", "required"),
            "weight_decay": ("real", "nonneg", "required"),
            "warmup_steps": ("int", 0, None, "required"), "r": ("real", "finite", "required"),
            "weight_lr_power": ("real", "nonneg", "required")},
    "adamw": {"lr": ("real", "nonneg", "required"),
              "betas[0]": ("real", "open_unit", "required"),
              "betas[1]": ("real", "unit", "required"), "eps": ("real", "nonneg", "required"),
              "weight_decay": ("real", "nonneg", "required"),
              "warmup_steps": ("int", 0, None, "required"), "r": ("real", "finite", "required"),
              "weight_lr_power": ("real", "nonneg", "required")},
    "radam": {"lr": ("real", "nonneg", "required"),
              "betas[0]": ("real", "open_unit", "required"),
              "betas[1]": ("real", "unit", "required"), "eps": ("real", "nonneg", "required"),
              "weight_decay": ("real", "nonneg", "required"), "r": ("real", "finite", "required"),
              "weight_lr_power": ("real", "nonneg", "required"),
              "silent_sgd_phase": ("flag", "required")},
}
POLICY_CASES = [pytest.param(kind, arg, value, exc, id=f"{kind}-{arg}-{label}")
                for kind, spec in KINDS.items() for arg, k in spec.items()
                for label, value, exc in _POLICY.bad_values(k)]


def _with(arg, value):
    if arg.startswith("betas["):
        pair = [0.9, 0.999]
        pair[int(arg[6])] = value
        return {"betas": tuple(pair)}
    return {arg: value}


@pytest.mark.parametrize("kind,arg,value,exc", POLICY_CASES)
@pytest.mark.parametrize("where", ["constructor", "group", "write"])
def test_argument_policy(kind, arg, value, exc, where):
    cls = CLASSES[kind]
    p = np.ones(3)
    with pytest.raises((TypeError, ValueError)) as info:
        if where == "constructor":
            cls([p], **_with(arg, value))
        elif where == "group":
            cls([{"params": [p], **_with(arg, value)}])
        else:
            opt = cls([p])
            before = dict(opt.param_groups[0])
            key, new = next(iter(_with(arg, value).items()))
            try:
                opt.param_groups[0][key] = new
            finally:
                assert dict(opt.param_groups[0]) == before      # nothing half-applied
    assert info.type is exc, f"{info.type.__name__} ({info.value}), expected {exc.__name__}"
    message = str(info.value)
    assert message.startswith(f"fastlr.{cls.__name__}: "), message
    assert arg.split("[")[0] in message, message


def test_zero_d_arrays_are_numbers():
    opt = fastlr.ScheduleFreeRAdam([np.ones(2)], lr=np.array(0.01),
                                   betas=(np.array(0.8), np.float32(0.99)),
                                   weight_decay=np.array(0), silent_sgd_phase=np.array(True))
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and type(group["lr"]) is float
    assert group["betas"][0] == 0.8 and type(group["betas"][0]) is float
    assert group["silent_sgd_phase"] is True
    sgd = fastlr.ScheduleFreeSGD([np.ones(2)], warmup_steps=np.int64(3), momentum=np.array(0.5))
    assert sgd.param_groups[0]["warmup_steps"] == 3 and sgd.param_groups[0]["momentum"] == 0.5
