"""The optimizer classes (``fastlr.SGD``, ``RMSprop``, ``Adam``, ``AdamW``).

What is held to what (docs/design.md: Numerics, Arguments):

* trajectories against ``torch.optim`` 2.13 (``foreach=False``), 100 steps, float32 and
  float64, every option, with and without lr schedules (torch's scheduler stepped after the
  optimizer); max|fastlr - torch| <= rtol * max(1, max|p|), rtol 1e-10 (f64) / 1e-4 (f32);
  skipped with a reason when torch is missing;
* ``opt.step`` against its pure-NumPy twin ``opt.step_reference`` (always runs);
* param groups, ``add_param_group``, writes to ``param_groups``, lr/momentum/beta1/
  weight_decay schedules and Python callables, ``steps`` / ``last_lr`` / ``next_lr``;
* flat buffers (coalesced spans, every grad form gives the same bits), many small params,
  mixed dtypes, thread-count independence;
* checkpoints: resume is bit-identical, state dicts are copies;
* bad input raises and changes nothing; ``save`` is atomic.
"""

import contextlib
import copy
import functools
import os
import pickle
import re
import zlib

import numpy as np
import pytest

import fastlr
from fastlr import schedules as S

DTYPES = [np.float64, np.float32]
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
SHAPES = ((6, 5), (11,), (2, 3, 4), (1,))
N_STEPS = 100
STATE_NAMES = {"SGD": ("momentum_buffer",),
               "RMSprop": ("square_avg", "momentum_buffer", "grad_avg"),
               "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
               "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}

dtype_ids = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def make_params(shapes, dtype, seed=0):
    rng = np.random.default_rng(_seed("params", shapes, seed))
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


@functools.lru_cache(maxsize=None)
def _grads_cached(shapes, dtype, n, seed):
    """n steps of seeded grads, one per shape; the scale varies per step and per param
    (1e-3 .. 10) so that eps, AMSGrad's maximum and the centered average all matter.
    Returned read-only: grads may be read-only."""
    rng = np.random.default_rng(_seed("grads", shapes, np.dtype(dtype).name, seed))
    out = []
    for _ in range(n):
        step = []
        for s in shapes:
            g = (10.0 ** rng.uniform(-3, 1)) * rng.standard_normal(s)
            g = g.astype(dtype)
            g.flags.writeable = False
            step.append(g)
        out.append(tuple(step))
    return tuple(out)


def make_grads(shapes, dtype, n, seed=0):
    return _grads_cached(tuple(tuple(s) for s in shapes), np.dtype(dtype).type, n, seed)


def copies(arrays):
    return [a.copy(order="A") for a in arrays]


def bits(a):
    return (a.dtype.str, a.shape, a.tobytes(order="A"))


def assert_same_bits(got, want, what=""):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert bits(g) == bits(w), f"{what}[{i}] differs: max|diff| = " \
            f"{np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))}"


def assert_close(got, want, dtype, what, rtol=None):
    """max|got - want| <= rtol * max(1, max|want|)."""
    rtol = RTOL[np.dtype(dtype)] if rtol is None else rtol
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= rtol * scale, f"{what}: max|diff| = {err:.3e} > {rtol * scale:.3e}"


def state_bufs(opt):
    """{(param index, buffer name): a copy} of every state buffer."""
    return {(i, k): np.array(v, copy=True) for i, st in opt.state.items()
            for k, v in st.items() if k != "step"}


def snapshot(opt):
    """Everything a failed call must leave alone, as bits."""
    return {"steps": opt.steps,
            "params": [bits(p) for g in opt.param_groups for p in g["params"]],
            "state": {k: bits(v) for k, v in state_bufs(opt).items()},
            "counts": {i: st["step"] for i, st in opt.state.items()},
            "groups": [{k: (repr(v) if k != "params" else [id(p) for p in v])
                        for k, v in g.items()} for g in opt.param_groups],
            "next_lr": _next_lr(opt)}


def _next_lr(opt):
    try:
        return repr(opt.next_lr)          # repr: nan == nan
    except Exception as error:            # a schedule that raises at this step
        return type(error).__name__


def assert_unchanged(opt, snap):
    now = snapshot(opt)
    for key in snap:
        assert now[key] == snap[key], f"{key} changed after a failed call"


def assert_same_optimizer(a, b):
    """Bit-identical params, state buffers, per-param counts and step counts."""
    assert a.steps == b.steps
    pa = [p for g in a.param_groups for p in g["params"]]
    pb = [p for g in b.param_groups for p in g["params"]]
    assert_same_bits(pa, pb, "params")
    sa, sb = a.state, b.state
    assert sorted(sa) == sorted(sb)
    for i in sa:
        assert sorted(sa[i]) == sorted(sb[i]), i
        assert sa[i]["step"] == sb[i]["step"], i
        for k in sa[i]:
            if k != "step":
                assert bits(sa[i][k]) == bits(sb[i][k]), f"state[{i}][{k!r}] differs"


# ---------------------------------------------------------------------------------------
# torch side
# ---------------------------------------------------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch not installed; pip install torch==2.13.0")


@contextlib.contextmanager
def torch_default_dtype(torch, dtype):
    """float64 runs use a float64 default (torch keeps its step counts in the default
    dtype); restored on exit."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if np.dtype(dtype) == np.float64
                            else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class TorchTwin:
    """A torch optimizer over copies of the same params, grouped the same way."""

    def __init__(self, torch, cls_name, groups, **defaults):
        self.torch = torch
        self.groups = []
        for g in groups:
            tg = dict(g)
            tg["params"] = [torch.nn.Parameter(torch.tensor(p)) for p in g["params"]]
            self.groups.append(tg)
        self.opt = getattr(torch.optim, cls_name)(self.groups, foreach=False, **defaults)

    @property
    def tparams(self):
        return [p for g in self.opt.param_groups for p in g["params"]]

    def add_param_group(self, group):
        tg = dict(group)
        tg["params"] = [self.torch.nn.Parameter(self.torch.tensor(p)) for p in group["params"]]
        self.opt.add_param_group(tg)

    def step(self, grads):
        for p, g in zip(self.tparams, grads):
            p.grad = self.torch.tensor(g)
        self.opt.step()

    def params(self):
        return [p.detach().numpy() for p in self.tparams]

    def state(self, i):
        st = self.opt.state[self.tparams[i]]
        return {k: (v.detach().numpy() if k != "step" else int(v))
                for k, v in st.items()}


def assert_matches_torch(opt, twin, dtype, what=""):
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, (p, tp) in enumerate(zip(params, twin.params())):
        assert p.dtype == tp.dtype
        assert_close(p, tp, dtype, f"{what} params[{i}]")
    for i, st in opt.state.items():
        tst = twin.state(i)
        for k, v in st.items():
            if k == "step":
                if "step" in tst:
                    assert v == tst["step"], f"{what} state[{i}]['step']"
                continue
            if k not in tst and not np.any(v):
                continue        # a buffer torch has not created yet (all zeros here)
            assert k in tst, f"{what} state[{i}][{k!r}] missing in torch"
            assert_close(v, tst[k], dtype, f"{what} state[{i}][{k!r}]")


# fastlr schedule and the torch scheduler that matches it, for base lr ``lr``
def _sched_cosine(torch, lr):
    return S.cosine(lr, N_STEPS), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, N_STEPS)


def _sched_step(torch, lr):
    return S.step_decay(lr, 30, 0.1), lambda o: torch.optim.lr_scheduler.StepLR(o, 30, 0.1)


def _sched_warmup(torch, lr):
    L = torch.optim.lr_scheduler
    fl = S.join([S.linear(lr, start_factor=0.1, total_steps=10), S.cosine(lr, N_STEPS - 10)],
                [10])
    return fl, lambda o: L.SequentialLR(
        o, [L.LinearLR(o, 0.1, 1.0, total_iters=10), L.CosineAnnealingLR(o, N_STEPS - 10)],
        milestones=[10])


SCHEDULES = {"none": None, "cosine": _sched_cosine, "step_decay": _sched_step,
             "warmup_join": _sched_warmup}


# ---------------------------------------------------------------------------------------
# 1. trajectories against torch.optim
# ---------------------------------------------------------------------------------------
PARITY = [
    ("SGD", "plain", dict(lr=0.05)),
    ("SGD", "momentum", dict(lr=0.05, momentum=0.9)),
    ("SGD", "dampening", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", "nesterov", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", "weight_decay", dict(lr=0.05, weight_decay=0.05)),
    ("SGD", "maximize", dict(lr=0.05, momentum=0.5, maximize=True)),
    ("SGD", "all", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05,
                        maximize=True)),
    ("SGD", "all-dampening", dict(lr=0.05, momentum=0.8, dampening=0.2, weight_decay=0.05,
                                  maximize=True)),
    ("RMSprop", "default", dict()),
    ("RMSprop", "alpha", dict(lr=0.01, alpha=0.9, eps=1e-6)),
    ("RMSprop", "centered", dict(lr=0.01, centered=True)),
    ("RMSprop", "momentum", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", "weight_decay", dict(lr=0.01, weight_decay=0.05)),
    ("RMSprop", "maximize", dict(lr=0.01, maximize=True)),
    ("RMSprop", "all", dict(lr=0.01, alpha=0.95, eps=1e-4, centered=True, momentum=0.7,
                            weight_decay=0.05, maximize=True)),
    ("Adam", "default", dict()),
    ("Adam", "betas", dict(lr=0.01, betas=(0.3, 0.9))),
    ("Adam", "amsgrad", dict(lr=0.01, amsgrad=True)),
    ("Adam", "weight_decay", dict(lr=0.01, weight_decay=0.05)),
    ("Adam", "decoupled", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    ("Adam", "maximize", dict(lr=0.01, maximize=True)),
    ("Adam", "all", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, amsgrad=True,
                         weight_decay=0.05, decoupled_weight_decay=True, maximize=True)),
    ("Adam", "all-l2", dict(lr=0.01, betas=(0.8, 0.95), amsgrad=True, weight_decay=0.05,
                            maximize=True)),
    ("AdamW", "default", dict()),
    ("AdamW", "all", dict(lr=0.01, betas=(0.85, 0.99), eps=1e-6, amsgrad=True,
                          weight_decay=0.1, maximize=True)),
]
# every case without a schedule; the richest cases of each class with every schedule
SCHEDULED = {("SGD", "all"), ("SGD", "all-dampening"), ("RMSprop", "all"), ("Adam", "all"),
             ("Adam", "all-l2"), ("AdamW", "all"), ("AdamW", "default"), ("SGD", "plain")}
PARITY_CASES = [pytest.param(c, kw, s, id=f"{c}-{name}-{s}")
                for c, name, kw in PARITY for s in SCHEDULES
                if s == "none" or (c, name) in SCHEDULED]


@dtype_ids
@pytest.mark.parametrize("cls_name, kwargs, sched", PARITY_CASES)
def test_trajectory_matches_torch(torch, cls_name, kwargs, sched, dtype):
    params = make_params(SHAPES, dtype, seed=1)
    grads = make_grads(SHAPES, dtype, N_STEPS, seed=1)
    lr = kwargs.get("lr", getattr(fastlr, cls_name)([np.zeros(1)]).defaults["lr"])
    fl_kwargs, make_sched = dict(kwargs), None
    if sched != "none":
        fl_kwargs["lr"], make_sched = SCHEDULES[sched](torch, lr)
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, [{"params": params}], **kwargs)
        scheduler = make_sched(twin.opt) if make_sched else None
        mine = copies(params)
        opt = getattr(fastlr, cls_name)(mine, **fl_kwargs)
        for t, g in enumerate(grads):
            if scheduler is not None:       # the lr torch uses for this update
                assert opt.next_lr[0] == pytest.approx(twin.opt.param_groups[0]["lr"],
                                                       rel=1e-12, abs=1e-18), t
            opt.step(list(g))
            twin.step(g)
            if scheduler is not None:
                scheduler.step()
            if t in (0, 9, 50):
                assert_matches_torch(opt, twin, dtype, f"step {t + 1}")
        assert opt.steps == N_STEPS
        assert_matches_torch(opt, twin, dtype, f"step {N_STEPS}")
        assert all(st["step"] == N_STEPS for st in opt.state.values())
        # every buffer torch keeps, fastlr keeps too (and none that it does not)
        for i in range(len(params)):
            tnames = set(twin.state(i)) - {"step"}
            assert set(opt.state[i]) - {"step"} == tnames


# ---------------------------------------------------------------------------------------
# 2. step against step_reference (fastlr.reference)
# ---------------------------------------------------------------------------------------
BIT_EXACT = ("SGD", "RMSprop")     # element-wise the same formula: the same bits
# Adam's kernel folds the bias corrections into fewer operations (docs/design.md, Numerics, allows
# the reordering): its state buffers match the reference bit for bit in a step from equal
# state, its params to a few ulp; over many steps the params stay within these bounds.
ADAM_RTOL = {np.dtype(np.float64): 1e-14, np.dtype(np.float32): 1e-6}


def _reference_pair(cls_name, kwargs, dtype, shapes=SHAPES, seed=2):
    params = make_params(shapes, dtype, seed=seed)
    a, b = copies(params), copies(params)
    cls = getattr(fastlr, cls_name)
    return cls(a, **kwargs), cls(b, **kwargs), a, b


def _schedules_for(cls_name):
    """Every schedulable hyperparameter of the class driven by a schedule."""
    if cls_name == "SGD":
        return dict(lr=S.cosine(0.05, 40), momentum=S.linear(0.9, start_factor=0.5,
                                                             total_steps=15),
                    weight_decay=S.step_decay(0.05, 10, 0.5))
    if cls_name == "RMSprop":
        return dict(lr=S.warmup_cosine(0.01, warmup_steps=5, total_steps=40),
                    momentum=S.piecewise_constant([10], [0.5, 0.9]),
                    weight_decay=S.exponential(0.05, 0.9))
    return dict(lr=S.cosine(0.01, 40), betas=(S.linear(0.9, start_factor=0.5,
                                                       total_steps=20), 0.99),
                weight_decay=S.step_decay(0.05, 10, 0.5))


@dtype_ids
@pytest.mark.parametrize("cls_name, kwargs", [
    pytest.param(c, kw, id=f"{c}-{name}") for c, name, kw in PARITY] + [
    pytest.param(c, "schedules", id=f"{c}-all-schedules")
    for c in ("SGD", "RMSprop", "Adam", "AdamW")])
def test_step_matches_step_reference(cls_name, kwargs, dtype):
    if kwargs == "schedules":
        kwargs = _schedules_for(cls_name)
        if cls_name == "RMSprop":
            kwargs["centered"] = True
        if cls_name.startswith("Adam"):
            kwargs["amsgrad"] = True
    opt, ref, a, b = _reference_pair(cls_name, kwargs, dtype)
    grads = make_grads(SHAPES, dtype, 40, seed=2)
    for g in grads:
        opt.step(list(g))
        ref.step_reference(list(g))
    assert opt.steps == ref.steps == 40
    if cls_name in BIT_EXACT:
        assert_same_optimizer(opt, ref)
    else:
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, dtype, f"params[{i}]", rtol=ADAM_RTOL[np.dtype(dtype)])
        for (i, k), v in state_bufs(opt).items():
            assert_close(v, ref.state[i][k], dtype, f"state[{i}][{k!r}]",
                         rtol=ADAM_RTOL[np.dtype(dtype)])
        assert [s["step"] for s in opt.state.values()] == [40] * len(a)


@dtype_ids
@pytest.mark.parametrize("cls_name, kwargs", [
    ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), amsgrad=True, weight_decay=0.1,
                  decoupled_weight_decay=True, maximize=True)),
    ("AdamW", dict(lr=0.01, amsgrad=True))])
def test_adam_one_step_from_equal_state(cls_name, kwargs, dtype):
    """From the same state, one Adam step: buffers bit-identical to the reference's, params
    within a few ulp of max(|p before|, |p after|)."""
    opt, ref, a, b = _reference_pair(cls_name, kwargs, dtype, seed=3)
    for t, g in enumerate(make_grads(SHAPES, dtype, 30, seed=3)):
        ref.load_state_dict(opt.state_dict())
        for x, y in zip(a, b):
            y[...] = x
        before = copies(a)
        opt.step(list(g))
        ref.step_reference(list(g))
        for (i, k), v in state_bufs(opt).items():
            assert bits(v) == bits(ref.state[i][k]), (t, i, k)
        for x, y, p0 in zip(a, b, before):
            unit = np.spacing(np.maximum(np.abs(p0), np.maximum(np.abs(x), np.abs(y))))
            assert np.all(np.abs(x - y) <= 4 * unit), (t, np.max(np.abs(x - y) / unit))


# ---------------------------------------------------------------------------------------
# 3. param groups, schedules, callables
# ---------------------------------------------------------------------------------------
GROUP_CASES = [
    ("SGD", [dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.01, weight_decay=0.1),
             dict(momentum=0.5, dampening=0.5, maximize=True)], dict(lr=0.02)),
    ("RMSprop", [dict(lr=0.01, centered=True), dict(lr=0.003, momentum=0.9, alpha=0.9),
                 dict(weight_decay=0.05, maximize=True)], dict(lr=0.005)),
    ("Adam", [dict(lr=0.01, amsgrad=True, weight_decay=0.1), dict(lr=0.003, betas=(0.5, 0.9)),
              dict(maximize=True, decoupled_weight_decay=True, weight_decay=0.2)],
     dict(lr=0.002, eps=1e-6)),
    ("AdamW", [dict(lr=0.01), dict(lr=0.003, amsgrad=True, weight_decay=0.0)],
     dict(lr=0.002)),
]


@dtype_ids
@pytest.mark.parametrize("scheduled", [False, True], ids=["const", "cosine"])
@pytest.mark.parametrize("cls_name, group_opts, defaults", GROUP_CASES,
                         ids=[c[0] for c in GROUP_CASES])
def test_param_groups_match_torch(torch, cls_name, group_opts, defaults, scheduled, dtype):
    shapes = SHAPES[:len(group_opts) + 1]
    params = make_params(shapes, dtype, seed=4)
    grads = make_grads(shapes, dtype, N_STEPS, seed=4)
    layout = [[params[0], params[1]]] + [[p] for p in params[2:]]
    tgroups = [dict(o, params=ps) for o, ps in zip(group_opts, layout)]
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, tgroups, **defaults)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(twin.opt, N_STEPS)
                     if scheduled else None)
        fgroups = []
        for o, ps in zip(group_opts, layout):
            g = dict(o, params=copies(ps))
            if scheduled:
                g["lr"] = S.cosine(o.get("lr", defaults["lr"]), N_STEPS)
            fgroups.append(g)
        fdefaults = dict(defaults)
        if scheduled:
            fdefaults["lr"] = S.cosine(defaults["lr"], N_STEPS)
        opt = getattr(fastlr, cls_name)(fgroups, **fdefaults)
        for g in grads:
            opt.step(list(g))
            twin.step(g)
            if scheduler:
                scheduler.step()
        assert_matches_torch(opt, twin, dtype)
        if scheduled:
            assert opt.next_lr == pytest.approx(scheduler.get_last_lr(), rel=1e-12, abs=1e-15)


@dtype_ids
@pytest.mark.parametrize("cls_name, defaults, new_group", [
    ("SGD", dict(lr=0.05, momentum=0.9), dict(lr=0.02, dampening=0.5)),
    ("RMSprop", dict(lr=0.01, centered=True), dict(momentum=0.9)),
    ("Adam", dict(lr=0.01, amsgrad=True), dict(lr=0.003, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01), dict(betas=(0.5, 0.9)))])
def test_add_param_group_mid_run_matches_torch(torch, cls_name, defaults, new_group, dtype):
    shapes = [(4, 3), (5,), (2, 2)]
    params = make_params(shapes, dtype, seed=5)
    grads = make_grads(shapes, dtype, N_STEPS, seed=5)
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, [{"params": params[:2]}], **defaults)
        mine = copies(params)
        opt = getattr(fastlr, cls_name)(mine[:2], **defaults)
        for t, g in enumerate(grads):
            if t == 40:
                twin.add_param_group(dict(new_group, params=[params[2]]))
                opt.add_param_group(dict(new_group, params=[mine[2]]))
                # the new group reads like torch's, defaults filled in
                assert _hyper(opt.param_groups[1]) == _hyper(twin.opt.param_groups[1])
                assert opt.state[2]["step"] == 0
            opt.step(list(g[:2]) if t < 40 else list(g))
            twin.step(g[:2] if t < 40 else g)
            if t == 40:
                assert [opt.state[i]["step"] for i in range(3)] == [41, 41, 1]
        assert [opt.state[i]["step"] for i in range(3)] == [N_STEPS, N_STEPS, N_STEPS - 40]
        assert opt.steps == N_STEPS
        assert_matches_torch(opt, twin, dtype)


TORCH_ONLY_KEYS = {"foreach", "fused", "differentiable", "capturable"}


def _hyper(group):
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in group.items()
            if k != "params" and k not in TORCH_ONLY_KEYS}


@pytest.mark.parametrize("cls_name, override", [
    ("SGD", dict(lr=0.1, nesterov=True, momentum=0.9)), ("RMSprop", dict(centered=True)),
    ("Adam", dict(betas=(0.5, 0.6), amsgrad=True)), ("AdamW", dict(weight_decay=0.3))])
def test_param_groups_read_like_torch(torch, cls_name, override):
    w, b = np.zeros((2, 3)), np.zeros(3)
    opt = getattr(fastlr, cls_name)([{"params": [w]}, dict(override, params=b)])
    twin = TorchTwin(torch, cls_name, [{"params": [w]}, dict(override, params=[b])])
    assert len(opt.param_groups) == 2
    for mine, theirs in zip(opt.param_groups, twin.opt.param_groups):
        assert set(mine) == set(theirs) - TORCH_ONLY_KEYS
        assert _hyper(mine) == _hyper(theirs)
        assert isinstance(mine["params"], list)
    assert opt.param_groups[0]["params"][0] is w
    assert opt.param_groups[1]["params"][0] is b        # a single array is a one-item list
    assert _hyper(opt.defaults) == _hyper(twin.opt.defaults)


@dtype_ids
@pytest.mark.parametrize("cls_name, key, value, defaults", [
    ("SGD", "lr", 0.003, dict(lr=0.05, momentum=0.9)),
    ("Adam", "lr", 0.0005, dict(lr=0.01, amsgrad=True)),
    ("RMSprop", "lr", 0.02, dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adam", "betas", (0.5, 0.9), dict(lr=0.01)),
    ("AdamW", "weight_decay", 0.3, dict(lr=0.01)),
    ("SGD", "dampening", 0.5, dict(lr=0.05, momentum=0.9)),
    ("RMSprop", "alpha", 0.5, dict(lr=0.01)),
    # momentum switched on mid-run: torch starts the buffer from the gradient on its first
    # use ("buffer is None"), per parameter (docs/design.md, Numerics: counting)
    ("SGD", "momentum", 0.9, dict(lr=0.05, momentum=0.0, dampening=0.5)),
])
def test_writing_param_groups_takes_effect_next_step(torch, cls_name, key, value, defaults,
                                                     dtype):
    shapes = [(3, 4), (6,)]
    params = make_params(shapes, dtype, seed=6)
    grads = make_grads(shapes, dtype, 60, seed=6)
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, [{"params": [params[0]]}, {"params": [params[1]]}],
                         **defaults)
        mine = copies(params)
        opt = getattr(fastlr, cls_name)([{"params": [mine[0]]}, {"params": [mine[1]]}],
                                        **defaults)
        for t, g in enumerate(grads):
            if t == 30:                  # only group 1 changes
                opt.param_groups[1][key] = value
                twin.opt.param_groups[1][key] = value
                assert opt.param_groups[1][key] == value
                if key == "lr":
                    assert opt.next_lr == [defaults["lr"], value]
            opt.step(list(g))
            twin.step(g)
            if t in (29, 30, 59):
                assert_matches_torch(opt, twin, dtype, f"step {t + 1}")
        if key == "lr":
            assert opt.last_lr == [defaults["lr"], value]


def test_last_lr_is_the_lr_used_even_after_a_write():
    """``last_lr`` is "the lr each group used in the last update": writing a new lr into a
    param group between steps must not rewrite history."""
    w = np.ones(3)
    opt = fastlr.SGD([w], lr=0.05)
    opt.step([np.ones(3)])
    np.testing.assert_array_equal(w, 1 - 0.05)
    opt.param_groups[0]["lr"] = 0.003
    assert opt.next_lr == [0.003]
    assert opt.last_lr == [0.05]
    opt.step([np.ones(3)])
    assert opt.last_lr == [0.003]


def test_live_state_view_survives_a_param_groups_write():
    """``opt.state`` gives live views (its docstring); a torch-style lr write between steps
    must not silently detach them (nor reallocate the state)."""
    w = np.ones(4)
    opt = fastlr.Adam([w], lr=0.1)
    opt.step([np.ones(4)])
    view = opt.state[0]["exp_avg"]
    opt.param_groups[0]["lr"] = 0.01
    opt.step([np.ones(4)])
    assert np.shares_memory(view, opt.state[0]["exp_avg"])
    np.testing.assert_array_equal(view, opt.state[0]["exp_avg"])


def test_param_group_write_is_validated():
    w = np.ones(3)
    opt = fastlr.Adam([w], lr=0.1)
    snap = snapshot(opt)
    for key, value, error in [("lr", -1.0, ValueError), ("betas", (1.0, 0.9), ValueError),
                              ("eps", float("nan"), ValueError), ("amsgrad", "yes", TypeError),
                              ("lr", "fast", TypeError), ("nonsense", 1.0, ValueError)]:
        with pytest.raises(error):
            opt.param_groups[0][key] = value
        assert_unchanged(opt, snap)
    with pytest.raises(TypeError):
        opt.param_groups[0]["params"] = [np.ones(3)]
    opt.step([np.ones(3)])
    assert opt.steps == 1


def _edits_of_a_list():
    x = np.zeros(2)
    return [("item", lambda ps: ps.__setitem__(0, x)), ("slice", lambda ps: ps.__setitem__(
        slice(0, 1), [x])), ("del", lambda ps: ps.__delitem__(0)),
        ("append", lambda ps: ps.append(x)), ("extend", lambda ps: ps.extend([x])),
        ("insert", lambda ps: ps.insert(0, x)), ("pop", lambda ps: ps.pop()),
        ("remove", lambda ps: ps.remove(ps[0])), ("clear", lambda ps: ps.clear()),
        ("sort", lambda ps: ps.sort(key=id)), ("reverse", lambda ps: ps.reverse()),
        ("+=", lambda ps: ps.__iadd__([x])), ("*=", lambda ps: ps.__imul__(2))]


def _built(kind):
    """An optimizer of each kind that owns param groups (two groups where it may), its
    arrays per group and a step with grads."""
    a, b, c = np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 2))
    named = {"a": a, "b": b}
    grads = [np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 2))]
    if kind == "LBFGS":
        opt = fastlr.LBFGS([a, b, c], lr=0.1)
        return opt, [[a, b, c]], lambda: opt.step(lambda: (0.0, grads))
    if kind == "named":
        opt = fastlr.Adam([{"params": named}, {"params": {"c": c}, "lr": 0.01}], lr=0.1)
        return opt, [[a, b], [c]], lambda: opt.step(dict(a=grads[0], b=grads[1], c=grads[2]))
    cls = getattr(fastlr, kind)
    lr1 = 0.1 if kind in ("DAdaptAdam", "Prodigy") else 0.01   # (one lr for all groups)
    opt = cls([{"params": [a, b]}, {"params": [c], "lr": lr1}], lr=0.1)
    if kind.startswith("ScheduleFree"):
        opt.train()
    return opt, [[a, b], [c]], lambda: opt.step(grads)


GROUP_OWNERS = ["SGD", "Adam", "named", "Adafactor", "LAMB", "Muon", "ScheduleFreeAdamW",
                "DAdaptAdam", "Prodigy", "LBFGS"]


@pytest.mark.parametrize("kind", GROUP_OWNERS)
def test_param_group_params_cannot_be_edited(kind):
    """A group's "params" (and "param_names") is a read-only list: every edit in place
    raises TypeError saying what to do, and changes nothing; the optimizer then steps
    the arrays it lists (torch would step an edited list: fastlr never ignores an edit)."""
    opt, arrays, step = _built(kind)
    for g, group in enumerate(opt.param_groups):
        ps = group["params"]
        # it reads like torch's list
        assert isinstance(ps, list) and len(ps) == len(arrays[g])
        assert [id(p) for p in ps] == [id(p) for p in arrays[g]]
        assert ps == list(ps) and list(ps) == ps and type(ps[:]) is list
        assert type(copy.copy(ps)) is list and type(pickle.loads(pickle.dumps(ps))) is list
        entries = ["params"] + (["param_names"] if "param_names" in group else [])
        for key in entries:
            for label, edit in _edits_of_a_list():
                before = list(group[key])
                with pytest.raises(TypeError, match=rf"param_groups\[{g}\]\[{key!r}\] "
                                   rf"cannot be changed in place.*add_param_group"):
                    edit(group[key])
                assert [id(v) for v in group[key]] == [id(v) for v in before], (key, label)
    if kind == "named":
        assert opt.param_groups[0]["param_names"] == ["a", "b"]
    with pytest.raises(TypeError, match="cannot be replaced"):
        opt.param_groups[0]["params"] = [np.zeros(2)]
    step()
    for ps in arrays:                       # every listed array was stepped
        for p in ps:
            assert np.all(p != 0), kind


@pytest.mark.parametrize("kind", GROUP_OWNERS)
def test_param_group_entries_cannot_be_removed(kind):
    """del / pop / popitem / clear of a group's entry raise TypeError (the step would
    otherwise keep the removed value); setdefault and |= write through the checks."""
    opt, _, step = _built(kind)
    group = opt.param_groups[-1]
    lr = group["lr"]
    before = dict(group)
    removals = [("del", lambda: group.__delitem__("lr")), ("pop", lambda: group.pop("lr")),
                ("pop default", lambda: group.pop("lr", None)),
                ("pop params", lambda: group.pop("params")),
                ("popitem", group.popitem), ("clear", group.clear)]
    g = len(opt.param_groups) - 1
    for label, remove in removals:
        with pytest.raises(TypeError, match=rf"param_groups\[{g}\].*cannot be removed"):
            remove()
        assert group == before, label
    with pytest.raises(KeyError):
        del group["no such key"]
    assert group.pop("no such key", 7) == 7
    # setdefault: a present key gives its value; a missing one is written (checked)
    assert group.setdefault("lr", -5.0) == lr and group["lr"] == lr
    with pytest.raises(ValueError, match="unknown hyperparameter 'bogus'"):
        group.setdefault("bogus", 1.0)
    assert "bogus" not in group
    with pytest.raises(ValueError, match=rf"param_groups\[{g}\]\['lr'\] must be >= 0"):
        group |= {"lr": -1.0}
    assert group["lr"] == lr
    group |= {"lr": lr}
    assert group["lr"] == lr
    if hasattr(opt, "next_lr"):
        group |= {"lr": lr * 2}
        assert group["lr"] == lr * 2 and opt.next_lr[-1] == lr * 2
    step()


def test_a_written_hyperparameter_error_names_its_group():
    """The group's index, not "param_groups[...]" nor "param group [...]": for a write, at
    construction and in add_param_group (the index the new group would get)."""
    opt = fastlr.Adam([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)]}], lr=0.1)
    with pytest.raises(ValueError, match=r"^fastlr\.Adam: param_groups\[1\]\['lr'\] must "
                                         r"be >= 0"):
        opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(TypeError, match=r"^fastlr\.Adam: param_groups\[0\]\['betas'\] must "
                                        r"be a pair"):
        opt.param_groups[0]["betas"] = 0.9
    with pytest.raises(ValueError, match=r"^fastlr\.Adam: param_groups\[2\]\['eps'\] must "
                                         r"be >= 0"):
        opt.add_param_group({"params": [np.zeros(2)], "eps": -1.0})
    with pytest.raises(ValueError, match=r"^fastlr\.SGD: param_groups\[1\]\['lr'\] must "
                                         r"be >= 0"):
        fastlr.SGD([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)], "lr": -1.0}],
                   lr=0.1)
    with pytest.raises(ValueError, match=r"^fastlr\.Muon: param_groups\[1\]\['lr'\]"):
        fastlr.Muon([{"params": [np.zeros((2, 2))]},
                     {"params": [np.zeros((2, 2))], "lr": -1.0}])
    with pytest.raises(ValueError, match=r"^fastlr\.LBFGS: param_groups\[0\]\['lr'\]"):
        fastlr.LBFGS([{"params": [np.zeros(2)], "lr": -1.0}])


@pytest.mark.parametrize("cls_name", ["SGD", "Adam"])
def test_steps_last_lr_next_lr(cls_name):
    s0, s1 = S.cosine(0.1, 20), S.step_decay(0.01, 3, 0.5)
    w, b = np.zeros(3), np.zeros(2)
    opt = getattr(fastlr, cls_name)([{"params": [w]}, {"params": [b], "lr": s1}], lr=s0)
    assert opt.steps == 0
    assert opt.last_lr is None
    assert opt.next_lr == [s0(0), s1(0)]
    for t in range(25):
        opt.step([np.ones(3), np.ones(2)])
        assert opt.steps == t + 1
        assert opt.last_lr == [s0(t), s1(t)]          # the same doubles
        assert opt.next_lr == [s0(t + 1), s1(t + 1)]
    # reading them changes nothing
    before = snapshot(opt)
    for _ in range(3):
        opt.next_lr, opt.last_lr
    assert_unchanged(opt, before)


def test_next_lr_matches_torch_scheduler(torch):
    p = np.zeros(3)
    opt = fastlr.SGD([p], lr=S.join([S.linear(0.1, start_factor=0.1, total_steps=10),
                                     S.cosine(0.1, 90)], [10]))
    twin = TorchTwin(torch, "SGD", [{"params": [p]}], lr=0.1)
    L = torch.optim.lr_scheduler
    sched = L.SequentialLR(twin.opt, [L.LinearLR(twin.opt, 0.1, 1.0, total_iters=10),
                                      L.CosineAnnealingLR(twin.opt, 90)], milestones=[10])
    for _ in range(N_STEPS):
        assert opt.next_lr == pytest.approx(sched.get_last_lr(), rel=1e-12, abs=1e-18)
        opt.step([np.ones(3)])
        twin.step([np.ones(3)])
        sched.step()


@dtype_ids
@pytest.mark.parametrize("cls_name", ["SGD", "RMSprop", "Adam"])
def test_lr_callable_equals_schedule(cls_name, dtype):
    """A Python callable lr (the slow path) gives the same bits as the schedule it
    evaluates; and one written as a formula gives the same result to rounding."""
    sched = S.warmup_cosine(0.01, warmup_steps=5, total_steps=30)
    shapes = [(3, 4), (5,)]
    params = make_params(shapes, dtype, seed=7)
    grads = make_grads(shapes, dtype, 40, seed=7)
    cls = getattr(fastlr, cls_name)
    kw = dict(momentum=0.9) if cls_name != "Adam" else dict(amsgrad=True)
    a, b, c = copies(params), copies(params), copies(params)
    seen = []

    def fn(t):
        seen.append(t)
        return sched(t)

    def formula(t):
        if t < 5:
            return 0.01 * t / 5
        t = min(t - 5, 25)
        return 0.01 * (1 + np.cos(np.pi * t / 25)) / 2

    oa, ob, oc = cls(a, lr=sched, **kw), cls(b, lr=fn, **kw), cls(c, lr=formula, **kw)
    for g in grads:
        oa.step(list(g))
        ob.step(list(g))
        oc.step(list(g))
    assert_same_optimizer(oa, ob)
    assert set(range(40)) <= set(seen)          # it was really called, once per step at least
    for x, y in zip(a, c):
        assert_close(x, y, dtype, "formula callable", rtol=1e-13 if dtype == np.float64
                     else 1e-6)
    assert ob.last_lr == [sched(39)]


@dtype_ids
@pytest.mark.parametrize("cls_name", ["SGD", "RMSprop", "Adam", "AdamW"])
def test_scheduled_hyperparameters_match_torch_writes(torch, cls_name, dtype):
    """momentum / betas[0] / weight_decay as schedules == torch with the same values written
    into its param group before each step."""
    scheds = _schedules_for(cls_name)
    kw = dict(scheds)
    if cls_name == "RMSprop":
        kw["centered"] = True
    shapes = [(4, 3), (7,)]
    params = make_params(shapes, dtype, seed=8)
    grads = make_grads(shapes, dtype, 40, seed=8)

    def at(t):
        out = {}
        for k, v in scheds.items():
            if k == "betas":
                out[k] = (v[0](t), v[1])
            else:
                out[k] = v(t)
        return out

    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, [{"params": params}], **at(0),
                         **({"centered": True} if cls_name == "RMSprop" else {}))
        mine = copies(params)
        opt = getattr(fastlr, cls_name)(mine, **kw)
        for t, g in enumerate(grads):
            twin.opt.param_groups[0].update(at(t))
            opt.step(list(g))
            twin.step(g)
        assert_matches_torch(opt, twin, dtype)


# momentum that is 0 for a while (a schedule through 0): torch (with the values written into
# its group) updates no buffer while momentum == 0 and starts SGD's buffer from the gradient
# on its first non-zero use; a zero momentum is plain SGD / RMSprop, dampening or not.
# (torch's RMSprop cannot switch momentum on mid-run: its buffer is only created at the
# first step, so RMSprop is held to step_reference only.)
MOMENTUM_THROUGH_ZERO = S.piecewise_constant([2, 5, 8], [0.0, 0.9, 0.0, 0.8])


@pytest.mark.parametrize("cls_name, kw", [
    ("SGD", dict(lr=0.05, dampening=0.0)), ("SGD", dict(lr=0.05, dampening=0.5)),
    ("SGD", dict(lr=0.05, weight_decay=0.1, maximize=True))])
def test_momentum_schedule_through_zero_matches_torch(torch, cls_name, kw):
    shapes = [(3, 4), (5,)]
    params = make_params(shapes, np.float64, 25)
    grads = make_grads(shapes, np.float64, 12, 25)
    with torch_default_dtype(torch, np.float64):
        twin = TorchTwin(torch, cls_name, [{"params": params}], momentum=0.0, **kw)
        mine = copies(params)
        opt = getattr(fastlr, cls_name)(mine, momentum=MOMENTUM_THROUGH_ZERO, **kw)
        for t, g in enumerate(grads):
            twin.opt.param_groups[0]["momentum"] = MOMENTUM_THROUGH_ZERO(t)
            opt.step(list(g))
            twin.step(g)
            for i, (x, y) in enumerate(zip(mine, twin.params())):
                assert_close(x, y, np.float64, f"step {t + 1} params[{i}]")


@dtype_ids
@pytest.mark.parametrize("cls_name, kw", [
    ("SGD", dict(lr=0.05)), ("SGD", dict(lr=0.05, nesterov=False, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)), ("RMSprop", dict(lr=0.01, centered=True))])
def test_momentum_schedule_through_zero_matches_step_reference(cls_name, kw, dtype):
    """step and its twin step_reference agree (SGD and RMSprop: bit for bit) when a
    scheduled momentum is 0 at some steps."""
    shapes = [(3, 4), (5,)]
    opt, ref, a, b = _reference_pair(cls_name, dict(kw, momentum=MOMENTUM_THROUGH_ZERO),
                                     dtype, shapes=shapes, seed=26)
    for t, g in enumerate(make_grads(shapes, dtype, 12, 26)):
        opt.step(list(g))
        ref.step_reference(list(g))
        assert_same_bits(a, b, f"step {t + 1} params")


# ---------------------------------------------------------------------------------------
# 4. flat buffers, many params, mixed dtypes, threads
# ---------------------------------------------------------------------------------------
def test_flat_buffer_views():
    shapes = [(2, 3), (3,), (4, 1, 2), ()]
    flat, views = fastlr.flat_buffer(shapes, np.float64)
    assert flat.dtype == np.float64 and flat.shape == (6 + 3 + 8 + 1,)
    assert [v.shape for v in views] == [(2, 3), (3,), (4, 1, 2), ()]
    assert all(v.dtype == np.float64 and v.flags.c_contiguous for v in views)
    assert all(np.shares_memory(flat, v) for v in views)
    assert not np.any(flat)
    for k, v in enumerate(views):
        v[...] = k + 1
    np.testing.assert_array_equal(flat, [1] * 6 + [2] * 3 + [3] * 8 + [4])
    flat32, _ = fastlr.flat_buffer([(3,)])
    assert flat32.dtype == np.float32           # the default
    with pytest.raises(TypeError):
        fastlr.flat_buffer([(3,)], np.int32)


FLAT_KW = {"SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
           "RMSprop": dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01),
           "Adam": dict(lr=S.cosine(0.01, 30), amsgrad=True, weight_decay=0.01),
           "AdamW": dict(lr=0.01, maximize=True)}


def _flat_params(shapes, dtype, values):
    flat, views = fastlr.flat_buffer(shapes, dtype)
    for v, x in zip(views, values):
        v[...] = x
    return flat, views


@dtype_ids
@pytest.mark.parametrize("cls_name", list(FLAT_KW))
def test_flat_buffer_same_bits_every_grad_form(cls_name, dtype):
    shapes = [(6, 5), (11,), (2, 3, 4), (1,), (3, 3)]
    values = make_params(shapes, dtype, seed=9)
    grads = make_grads(shapes, dtype, 30, seed=9)
    cls = getattr(fastlr, cls_name)
    kw = FLAT_KW[cls_name]
    runs = {}
    for form in ("flat-flatgrad", "flat-gradviews", "flat-separategrads", "separate",
                 "separate-flatgrad"):
        if form.startswith("flat"):
            flat, params = _flat_params(shapes, dtype, values)
        else:
            params = copies(values)
        opt = cls(params, **kw)
        assert len(opt._spans) == (1 if form.startswith("flat") else len(shapes)), form
        gflat, gviews = fastlr.flat_buffer(shapes, dtype)
        for g in grads:
            if form in ("flat-flatgrad", "separate-flatgrad"):
                gflat[...] = np.concatenate([x.ravel() for x in g])
                opt.step(gflat)
            elif form == "flat-gradviews":
                for v, x in zip(gviews, g):
                    v[...] = x
                opt.step(gviews)
            else:
                opt.step(list(g))
        runs[form] = opt
    base = runs.pop("separate")
    for form, opt in runs.items():
        assert_same_optimizer(opt, base)
    # and it is the right update, not just a consistent one
    ref = cls(copies(values), **kw)
    for g in grads:
        ref.step_reference(list(g))
    params = [p for g in base.param_groups for p in g["params"]]
    refp = [p for g in ref.param_groups for p in g["params"]]
    for x, y in zip(params, refp):
        assert_close(x, y, dtype, cls_name, rtol=ADAM_RTOL[np.dtype(dtype)])


def test_flat_buffer_spans_split_by_group_and_order():
    flat, (a, b, c, d) = fastlr.flat_buffer([(3,), (4,), (5,), (2,)], np.float64)
    assert len(fastlr.SGD([a, b, c, d], lr=0.1)._spans) == 1
    assert len(fastlr.SGD([a, c], lr=0.1)._spans) == 2                 # a gap
    assert len(fastlr.SGD([b, a], lr=0.1)._spans) == 2                 # reversed
    assert len(fastlr.SGD([{"params": [a, b]}, {"params": [c, d]}], lr=0.1)._spans) == 2
    sep = np.zeros(3)
    assert len(fastlr.SGD([a, b, sep], lr=0.1)._spans) == 2


@dtype_ids
def test_reversed_views_and_F_order_params_are_updated_correctly(dtype):
    """Params that are views of one buffer in a non-adjacent order, and F-ordered params,
    give the same bits as separate C arrays with the same values."""
    shapes = [(3, 4), (5,), (4, 2)]
    values = make_params(shapes, dtype, seed=10)
    grads = make_grads(shapes, dtype, 20, seed=10)
    flat, views = _flat_params(shapes, dtype, values)
    rev = fastlr.Adam([views[2], views[0], views[1]], lr=0.01, amsgrad=True)
    sep_vals = copies(values)
    sep = fastlr.Adam([sep_vals[2], sep_vals[0], sep_vals[1]], lr=0.01, amsgrad=True)
    fvals = [np.asfortranarray(v) for v in values]
    ford = fastlr.Adam([fvals[2], fvals[0], fvals[1]], lr=0.01, amsgrad=True)
    assert not fvals[0].flags.c_contiguous
    for g in grads:
        gl = [g[2], g[0], g[1]]
        rev.step(gl)
        sep.step(gl)
        ford.step([np.asfortranarray(x) for x in gl])
    assert_same_optimizer(rev, sep)
    for x, y in zip(fvals, sep_vals):
        np.testing.assert_array_equal(x, y)
        assert x.flags.f_contiguous
    with pytest.raises(ValueError, match=r"grads\[1\]"):     # C grad for an F param
        ford.step([np.asfortranarray(g[2]), np.ascontiguousarray(g[0]), g[1]])


@dtype_ids
def test_many_small_params(dtype):
    rng = np.random.default_rng(11)
    shapes = [tuple(int(d) for d in rng.integers(1, 4, size=rng.integers(1, 3)))
              for _ in range(100)]
    values = make_params(shapes, dtype, seed=11)
    grads = make_grads(shapes, dtype, 15, seed=11)
    sep_vals = copies(values)
    sep = fastlr.Adam(sep_vals, lr=0.01, amsgrad=True, weight_decay=0.01)
    flat, views = _flat_params(shapes, dtype, values)
    fl = fastlr.Adam(views, lr=0.01, amsgrad=True, weight_decay=0.01)
    ref = fastlr.Adam(copies(values), lr=0.01, amsgrad=True, weight_decay=0.01)
    assert len(fl._spans) == 1 and len(sep._spans) == 100
    for g in grads:
        sep.step(list(g))
        fl.step(list(g))
        ref.step_reference(list(g))
    assert_same_optimizer(sep, fl)
    refp = ref.param_groups[0]["params"]
    for i, (x, y) in enumerate(zip(sep_vals, refp)):
        assert_close(x, y, dtype, f"params[{i}]", rtol=ADAM_RTOL[np.dtype(dtype)])
    assert all(st["step"] == 15 for st in sep.state.values())


@pytest.mark.parametrize("cls_name", ["SGD", "RMSprop", "Adam"])
def test_mixed_dtypes_across_and_within_groups(cls_name):
    kw = {"SGD": dict(momentum=0.9), "RMSprop": dict(centered=True),
          "Adam": dict(amsgrad=True)}[cls_name]
    cls = getattr(fastlr, cls_name)
    s32, s64 = [(3, 4), (5,)], [(2, 2), (7,)]
    v32, v64 = make_params(s32, np.float32, 12), make_params(s64, np.float64, 12)
    g32, g64 = make_grads(s32, np.float32, 20, 12), make_grads(s64, np.float64, 20, 12)
    p32, p64 = copies(v32), copies(v64)
    both = cls([{"params": p32, "lr": 0.01}, {"params": p64, "lr": 0.02}], **kw)
    q32, q64 = copies(v32), copies(v64)
    only32, only64 = cls(q32, lr=0.01, **kw), cls(q64, lr=0.02, **kw)
    # one group, interleaved dtypes
    r = [copies(v32)[0], copies(v64)[0], copies(v32)[1], copies(v64)[1]]
    mixed = cls([{"params": r, "lr": 0.01}], **kw)
    r32 = copies(v32)
    r64 = copies(v64)
    ref32, ref64 = cls(r32, lr=0.01, **kw), cls(r64, lr=0.01, **kw)
    for a, b in zip(g32, g64):
        both.step(list(a) + list(b))
        only32.step(list(a))
        only64.step(list(b))
        mixed.step([a[0], b[0], a[1], b[1]])
        ref32.step(list(a))
        ref64.step(list(b))
    assert_same_bits(p32, q32, "float32 group")
    assert_same_bits(p64, q64, "float64 group")
    assert_same_bits(r, [r32[0], r64[0], r32[1], r64[1]], "one mixed group")
    assert [p.dtype for p in p32 + p64] == [np.float32] * 2 + [np.float64] * 2
    snap = snapshot(both)
    with pytest.raises(TypeError):        # one flat grad needs params of one dtype
        both.step(np.zeros(sum(int(np.prod(s)) for s in s32 + s64), np.float32))
    assert_unchanged(both, snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("cls_name", list(FLAT_KW))
def test_threads_bit_identical(cls_name, dtype):
    # > 32768 elements in all: 2 and 3 threads really split the work (16384 at least each)
    shapes = [(150, 200), (10007,), (3,), (64, 65), (130, 100)]
    assert sum(int(np.prod(s)) for s in shapes) > 3 * 16384
    values = make_params(shapes, dtype, seed=13)
    grads = make_grads(shapes, dtype, 4, seed=13)
    cls = getattr(fastlr, cls_name)
    runs = []
    for n_threads in (1, 2, 3):
        for layout in ("flat", "separate"):
            if layout == "flat":
                _, params = _flat_params(shapes, dtype, values)
            else:
                params = copies(values)
            opt = cls(params, n_threads=n_threads, **FLAT_KW[cls_name])
            for g in grads:
                opt.step(list(g))
            runs.append(((n_threads, layout), opt))
    base = runs[0][1]
    for key, opt in runs[1:]:
        assert_same_optimizer(opt, base)


def test_module_thread_setting_is_used_and_results_agree():
    old = fastlr.get_num_threads()
    shapes = [(40000,)]
    values = make_params(shapes, np.float32, 14)
    grads = make_grads(shapes, np.float32, 3, 14)
    outs = []
    try:
        for n in (1, 2):
            fastlr.set_num_threads(n)
            opt = fastlr.Adam(copies(values), lr=0.01)
            for g in grads:
                opt.step(list(g))
            outs.append(opt)
    finally:
        fastlr.set_num_threads(old)
    assert_same_optimizer(*outs)


# ---------------------------------------------------------------------------------------
# 5. resume
# ---------------------------------------------------------------------------------------
def _resume_builders():
    """(id, build(params) -> optimizer, shapes): each builds its optimizer the same way
    every time (schedules and callables are code)."""

    def sgd(ps):
        return fastlr.SGD([{"params": ps[:2]}, {"params": ps[2:], "momentum": 0.0,
                                                "lr": S.step_decay(0.1, 5)}],
                          lr=S.cosine(0.05, 30), momentum=0.9, dampening=0.1,
                          weight_decay=S.linear(0.01, total_steps=10))

    def rms(ps):
        return fastlr.RMSprop([{"params": ps[:2], "centered": True}, {"params": ps[2:]}],
                              lr=S.warmup(S.cosine(0.01, 20), 5), momentum=0.5,
                              weight_decay=0.01, maximize=True)

    def adam(ps):
        return fastlr.Adam([{"params": ps[:2], "amsgrad": True}, {"params": ps[2:]}],
                           lr=S.one_cycle(0.01, 30), betas=(S.cosine(0.9, 20, end=0.8), 0.99),
                           weight_decay=0.05, decoupled_weight_decay=True)

    def adamw(ps):
        return fastlr.AdamW(ps, lr=0.003, amsgrad=True, maximize=True)

    def callable_lr(ps):
        return fastlr.Adam(ps, lr=lambda t: 0.01 * 0.9 ** t)

    return [("SGD", sgd), ("RMSprop", rms), ("Adam", adam), ("AdamW", adamw),
            ("callable-lr", callable_lr)]


RESUME = _resume_builders()


def _resume_run(build, dtype, how, tmp_path, n=20, k=7):
    shapes = [(4, 5), (6,), (3, 2), (2,)]
    values = make_params(shapes, dtype, seed=15)
    grads = make_grads(shapes, dtype, n, seed=15)
    straight = build(copies(values))
    for g in grads:
        straight.step(list(g))
    first_params = copies(values)
    first = build(first_params)
    for g in grads[:k]:
        first.step(list(g))
    second_params = copies(first_params)
    second = build(second_params)        # fresh: its own zero state, t = 0
    if how == "state_dict":
        second.load_state_dict(first.state_dict())
    else:
        path = tmp_path / "ckpt.npz"
        first.save(path)
        second.load(path)
    assert_same_optimizer(second, first)
    assert second.next_lr == first.next_lr
    for g in grads[k:]:
        second.step(list(g))
    assert_same_optimizer(second, straight)
    assert second.last_lr == straight.last_lr


@dtype_ids
@pytest.mark.parametrize("how", ["state_dict", "save"])
@pytest.mark.parametrize("name, build", RESUME, ids=[r[0] for r in RESUME])
def test_resume_is_bit_identical(name, build, how, dtype, tmp_path):
    _resume_run(build, dtype, how, tmp_path)


@pytest.mark.parametrize("how", ["state_dict", "save"])
def test_resume_after_add_param_group(how, tmp_path):
    """Per-param update counts survive a checkpoint (a group added later is behind)."""
    shapes = [(3, 3), (4,)]
    values = make_params(shapes, np.float64, 16)
    grads = make_grads(shapes, np.float64, 12, 16)

    def build(ps, added):
        opt = fastlr.Adam([ps[0]], lr=0.01, amsgrad=True)
        if added:
            opt.add_param_group({"params": [ps[1]], "lr": 0.02})
        return opt

    straight_p = copies(values)
    straight = build(straight_p, False)
    for t, g in enumerate(grads):
        if t == 3:
            straight.add_param_group({"params": [straight_p[1]], "lr": 0.02})
        straight.step([g[0]] if t < 3 else list(g))
    a_p = copies(values)
    a = build(a_p, False)
    for t, g in enumerate(grads[:6]):
        if t == 3:
            a.add_param_group({"params": [a_p[1]], "lr": 0.02})
        a.step([g[0]] if t < 3 else list(g))
    assert [a.state[0]["step"], a.state[1]["step"]] == [6, 3]
    b = build(copies(a_p), True)
    if how == "state_dict":
        b.load_state_dict(a.state_dict())
    else:
        a.save(tmp_path / "c.npz")
        b.load(tmp_path / "c.npz")
    assert [b.state[0]["step"], b.state[1]["step"]] == [6, 3]
    for g in grads[6:]:
        b.step(list(g))
    assert_same_optimizer(b, straight)


def test_state_dict_holds_copies():
    w = np.ones((2, 3))
    opt = fastlr.Adam([w], lr=0.1, amsgrad=True)
    opt.step([np.full((2, 3), 0.5)])
    sd = opt.state_dict()
    snap = snapshot(opt)
    for k, v in sd["state"][0].items():
        if k != "step":
            assert not np.shares_memory(v, opt.state[0][k])
            v[...] = 99.0
    sd["state"][0]["step"] = 50
    sd["steps"] = 50
    sd["param_groups"][0]["lr"] = 7.0
    sd["param_groups"][0]["betas"][0] = 0.1
    sd["param_groups"][0]["params"].append(5)
    assert_unchanged(opt, snap)
    assert opt.param_groups[0]["lr"] == 0.1
    # and loading copies in: mutating the loaded dict later changes nothing
    sd2 = opt.state_dict()
    other = fastlr.Adam([np.ones((2, 3))], lr=0.1, amsgrad=True)
    other.load_state_dict(sd2)
    snap2 = snapshot(other)
    sd2["state"][0]["exp_avg"][...] = -1.0
    sd2["param_groups"][0]["lr"] = 3.0
    assert_unchanged(other, snap2)
    # the state dict is plain: ints, floats, bools, lists, dicts and arrays
    assert isinstance(sd2["steps"], int) and isinstance(sd2["state"][0]["step"], int)
    assert sd2["param_groups"][0]["params"] == [0]


def test_state_dict_content_like_torch(torch):
    w = np.ones((2, 3))
    opt = fastlr.Adam([w], lr=0.1, amsgrad=True)
    twin = TorchTwin(torch, "Adam", [{"params": [w]}], lr=0.1, amsgrad=True)
    for _ in range(2):
        opt.step([np.full((2, 3), 0.5)])
        twin.step([np.full((2, 3), 0.5)])
    sd, tsd = opt.state_dict(), twin.opt.state_dict()
    assert set(sd["state"]) == set(tsd["state"]) == {0}
    assert set(sd["state"][0]) == set(tsd["state"][0])
    assert sd["state"][0]["step"] == int(tsd["state"][0]["step"]) == 2
    assert sd["param_groups"][0]["params"] == tsd["param_groups"][0]["params"]
    assert {k: v for k, v in sd["param_groups"][0].items() if k != "betas"} == {
        k: v for k, v in tsd["param_groups"][0].items()
        if k in sd["param_groups"][0] and k != "betas"}
    assert tuple(sd["param_groups"][0]["betas"]) == tuple(tsd["param_groups"][0]["betas"])


def test_load_keeps_the_schedule_the_code_built():
    """Schedules are code: a checkpoint restores counters and buffers, and the optimizer
    keeps the schedule it was built with. Another schedule than the checkpoint's (here a
    longer cosine, as when extending a run) is refused unless strict=False, which warns."""
    w = np.ones(3)
    a = fastlr.SGD([w], lr=S.cosine(0.1, 10))
    a.step([np.ones(3)])
    b = fastlr.SGD([np.ones(3)], lr=S.cosine(0.1, 20))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] is cosine\(0.1, 20\) "
                                         r"here, cosine\(0.1, 10\) in the checkpoint"):
        b.load_state_dict(a.state_dict())
    assert b.steps == 0
    with pytest.warns(UserWarning, match="cosine"):
        b.load_state_dict(a.state_dict(), strict=False)
    assert b.steps == 1
    assert b.param_groups[0]["lr"] == S.cosine(0.1, 20)
    assert b.next_lr == [S.cosine(0.1, 20)(1)]


# ---------------------------------------------------------------------------------------
# 6. bad input raises and changes nothing
# ---------------------------------------------------------------------------------------
def _stepped(cls_name="Adam", n=3, seed=17, dtype=np.float64, **kw):
    """An optimizer with two groups and non-trivial state after n steps."""
    shapes = [(3, 4), (5,), (2, 3)]
    params = make_params(shapes, dtype, seed)
    kw = dict({"SGD": dict(momentum=0.9), "RMSprop": dict(centered=True, momentum=0.5),
               "Adam": dict(amsgrad=True), "AdamW": dict(amsgrad=True)}[cls_name], **kw)
    opt = getattr(fastlr, cls_name)([{"params": params[:2]}, {"params": params[2:],
                                                              "lr": 0.02}], lr=0.01, **kw)
    for g in make_grads(shapes, dtype, n, seed):
        opt.step(list(g))
    return opt, params, [tuple(s) for s in shapes]


def _good_grads(shapes, dtype=np.float64):
    return [np.full(s, 0.25, dtype) for s in shapes]


def _bad_grads(shapes):
    g = _good_grads
    return [
        ("too few", g(shapes)[:2], ValueError, "3 params"),
        ("too many", g(shapes) + [np.zeros(3)], ValueError, "3 params"),
        ("dtype", g(shapes)[:2] + [np.zeros((2, 3), np.float32)], TypeError, r"grads\[2\]"),
        ("int dtype", g(shapes)[:2] + [np.zeros((2, 3), np.int64)], TypeError, r"grads\[2\]"),
        ("shape", g(shapes)[:2] + [np.zeros((3, 2))], ValueError, r"grads\[2\]"),
        ("size", g(shapes)[:2] + [np.zeros(7)], ValueError, r"grads\[2\]"),
        ("non-contiguous", g(shapes)[:2] + [np.zeros((2, 6))[:, ::2]], ValueError,
         r"grads\[2\]"),
        ("F order for a C param", g(shapes)[:2] + [np.asfortranarray(np.zeros((2, 3)))],
         ValueError, r"grads\[2\]"),
        ("python list grad", g(shapes)[:2] + [[[0.0] * 3] * 2], TypeError, r"grads\[2\]"),
        ("None grad", g(shapes)[:2] + [None], TypeError, r"grads\[2\]"),
        ("byte-swapped", g(shapes)[:2] + [np.zeros((2, 3), ">f8")], (TypeError, ValueError),
         r"grads\[2\]"),
        ("grads a python list of lists", [x.tolist() for x in g(shapes)], TypeError,
         r"grads\[0\]"),
        ("grads a generator", (x for x in g(shapes)), TypeError, "grads"),
        ("grads a dict", {0: 1}, TypeError, "grads"),
        ("flat grad wrong size", np.zeros(12 + 5 + 6 - 1), ValueError, "flat"),
        ("flat grad wrong dtype", np.zeros(12 + 5 + 6, np.float32), TypeError, "flat"),
        ("flat grad non-contiguous", np.zeros(2 * 23)[::2], ValueError, "flat"),
        ("flat grad int", np.zeros(23, np.int64), TypeError, "flat"),
    ]


@pytest.mark.parametrize("cls_name", ["SGD", "RMSprop", "Adam"])
def test_bad_grads_raise_and_change_nothing(cls_name):
    opt, params, shapes = _stepped(cls_name)
    snap = snapshot(opt)
    for what, grads, error, match in _bad_grads(shapes):
        with pytest.raises(error, match=match):
            opt.step(grads)
        assert_unchanged(opt, snap)
    # a grad that is its own param
    with pytest.raises(ValueError, match=r"grads\[2\]"):
        opt.step(_good_grads(shapes)[:2] + [params[2]])
    assert_unchanged(opt, snap)
    # still usable, and the failed calls did not shift anything: same as a twin
    twin, _, _ = _stepped(cls_name)
    opt.step(_good_grads(shapes))
    twin.step(_good_grads(shapes))
    assert_same_optimizer(opt, twin)


def test_dtype_error_message_names_grad_and_dtypes():
    opt, _, shapes = _stepped("Adam")
    with pytest.raises(TypeError) as info:
        opt.step(_good_grads(shapes)[:1] + [np.zeros(5, np.float32)] + _good_grads(shapes)[2:])
    msg = str(info.value)
    assert "grads[1]" in msg and "float32" in msg and "float64" in msg


@pytest.mark.parametrize("cls_name, key, bad", [
    ("SGD", "lr", lambda t: -1.0 if t == 3 else 0.1),
    ("SGD", "lr", lambda t: float("nan") if t == 3 else 0.1),
    ("SGD", "lr", lambda t: float("inf") if t == 3 else 0.1),
    ("SGD", "momentum", lambda t: -0.5 if t == 3 else 0.9),
    ("SGD", "weight_decay", lambda t: -0.1 if t == 3 else 0.0),
    ("RMSprop", "lr", lambda t: -1.0 if t == 3 else 0.01),
    ("RMSprop", "momentum", lambda t: -1.0 if t == 3 else 0.5),
    ("Adam", "lr", lambda t: -1.0 if t == 3 else 0.01),
    ("Adam", "betas", lambda t: 1.0 if t == 3 else 0.9),
    ("Adam", "weight_decay", lambda t: float("nan") if t == 3 else 0.0),
])
@pytest.mark.parametrize("wrap", ["from_callable", "callable"])
def test_schedule_yielding_invalid_value_raises_at_that_step(cls_name, key, bad, wrap):
    """The bad value is in group 1 only (group 0 would be updated first if evaluation and
    updates were interleaved)."""
    sched = S.from_callable(bad) if wrap == "from_callable" else bad
    value = (sched, 0.99) if key == "betas" else sched
    shapes = [(3, 4), (5,)]
    params = make_params(shapes, np.float64, 18)
    opt = getattr(fastlr, cls_name)([{"params": [params[0]]},
                                     {"params": [params[1]], key: value}], lr=0.01)
    grads = _good_grads(shapes)
    for _ in range(3):
        opt.step(grads)
    snap = snapshot(opt)
    for _ in range(2):
        with pytest.raises(ValueError, match="step 3"):
            opt.step(grads)
        assert_unchanged(opt, snap)
    assert opt.steps == 3


def test_schedule_that_raises_propagates_and_changes_nothing():
    def lr(t):
        if t == 2:
            raise ZeroDivisionError("boom")
        return 0.1

    shapes = [(3,), (4,)]
    opt = fastlr.SGD([{"params": [np.ones(3)]}, {"params": [np.ones(4)], "lr": lr}],
                     lr=0.1, momentum=0.9)
    opt.step(_good_grads(shapes))
    opt.step(_good_grads(shapes))
    snap = snapshot(opt)
    with pytest.raises(ZeroDivisionError, match="boom"):
        opt.step(_good_grads(shapes))
    assert_unchanged(opt, snap)


# --- load_state_dict ----------------------------------------------------------------------
def _del(*path):
    def f(sd):
        d = sd
        for p in path[:-1]:
            d = d[p]
        del d[path[-1]]
    return f


def _set(value, *path):
    def f(sd):
        d = sd
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
    return f


LOAD_ERRORS = [
    ("not a dict", None, TypeError),
    ("missing steps", _del("steps"), ValueError),
    ("missing state", _del("state"), ValueError),
    ("missing param_groups", _del("param_groups"), ValueError),
    ("unknown format", _set("torch-1", "format"), ValueError),
    ("extra group", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][-1])),
     ValueError),
    ("missing group", lambda sd: sd["param_groups"].pop(), ValueError),
    ("wrong group params", _set([2, 3], "param_groups", 1, "params"), ValueError),
    ("wrong buffer shape", _set(np.zeros((3, 2)), "state", 2, "exp_avg"), ValueError),
    ("wrong buffer size", _set(np.zeros(7), "state", 2, "exp_avg_sq"), ValueError),
    ("int buffer", _set(np.zeros((2, 3), np.int64), "state", 2, "exp_avg"), ValueError),
    ("list buffer", _set([[0.0] * 3] * 2, "state", 2, "exp_avg"), ValueError),
    ("negative steps", _set(-1, "steps"), ValueError),
    ("float steps", _set(3.0, "steps"), TypeError),
    ("negative param step", _set(-1, "state", 2, "step"), ValueError),
    ("missing param step", _del("state", 2, "step"), TypeError),
    ("missing param state", _del("state", 2), ValueError),
    ("unknown hyperparameter", _set(1.0, "param_groups", 1, "momentum"), ValueError),
    ("invalid lr", _set(-0.5, "param_groups", 1, "lr"), ValueError),
    ("invalid betas", _set([0.9, 1.5], "param_groups", 1, "betas"), ValueError),
    ("invalid amsgrad", _set("yes", "param_groups", 1, "amsgrad"), TypeError),
    ("missing buffer", _del("state", 2, "max_exp_avg_sq"), ValueError),
    ("extra buffer", _set(np.zeros((2, 3)), "state", 2, "momentum_buffer"), ValueError),
]


@pytest.mark.parametrize("what, corrupt, error", LOAD_ERRORS, ids=[e[0] for e in LOAD_ERRORS])
def test_load_state_dict_errors_change_nothing(what, corrupt, error):
    opt, _, _ = _stepped("Adam", n=3, seed=19)
    other, _, _ = _stepped("Adam", n=8, seed=20)       # different values everywhere
    other.param_groups[0]["lr"] = 0.005
    sd = other.state_dict()
    if corrupt is None:
        sd = list(sd.items())
    else:
        corrupt(sd)
    snap = snapshot(opt)
    with pytest.raises(error):
        opt.load_state_dict(sd)
    assert_unchanged(opt, snap)
    assert opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("src, dst", [(False, True), (True, False)],
                         ids=["amsgrad-off-into-on", "amsgrad-on-into-off"])
def test_load_checkpoint_with_other_buffers_is_refused(src, dst):
    opt, _, _ = _stepped("Adam", amsgrad=dst)
    other, _, _ = _stepped("Adam", n=5, seed=21, amsgrad=src)
    sd = other.state_dict()
    # keep the hyperparameters of the destination so that only the buffers disagree
    for g in sd["param_groups"]:
        g["amsgrad"] = dst
    snap = snapshot(opt)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        opt.load_state_dict(sd)
    assert_unchanged(opt, snap)
    # as saved (amsgrad differs in the groups as well): also refused
    sd = other.state_dict()
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    assert_unchanged(opt, snap)


def test_load_state_dict_from_another_optimizer_class_is_refused():
    opt, _, _ = _stepped("Adam")
    sgd, _, _ = _stepped("SGD")
    snap = snapshot(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(sgd.state_dict())
    assert_unchanged(opt, snap)


def _write_checkpoint(tmp_path):
    other, _, _ = _stepped("Adam", n=6, seed=22)
    path = tmp_path / "good.npz"
    other.save(path)
    return path


@pytest.mark.parametrize("damage", ["truncated-half", "truncated-tail", "random-bytes",
                                    "empty", "pickled-object", "plain-npy",
                                    "missing-member", "bad-json"])
def test_load_damaged_file_raises_value_error_and_changes_nothing(damage, tmp_path):
    good = _write_checkpoint(tmp_path)
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    if damage == "truncated-half":
        bad.write_bytes(data[:len(data) // 2])
    elif damage == "truncated-tail":
        bad.write_bytes(data[:-10])
    elif damage == "random-bytes":
        bad.write_bytes(np.random.default_rng(23).bytes(len(data)))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "pickled-object":
        with open(bad, "wb") as f:
            np.savez(f, format=np.array([{"a": 1}], dtype=object))
    elif damage == "plain-npy":
        with open(bad, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        with np.load(good) as z:
            files = {k: z[k] for k in z.files}
        if damage == "missing-member":
            del files["state/2/exp_avg"]
        else:
            files["param_groups"] = np.array("[{not json")
        with open(bad, "wb") as f:
            np.savez(f, **files)
    opt, _, _ = _stepped("Adam")
    snap = snapshot(opt)
    with pytest.raises(ValueError):
        opt.load(bad)
    assert_unchanged(opt, snap)
    assert not _open_fds_to(bad), f"load left {bad.name} open after the error"
    opt.load(good)                 # the intact file loads
    assert opt.steps == 6


@pytest.mark.parametrize("content, says", [
    (b"not a zip at all", r"it starts with b'not '"), (b"", "it is empty"),
    ("npy", r"it starts with b'\\x93NUM'"), ("pickle", r"it starts with b'\\x80"),
    ("object member", r"its member 'format' holds pickled Python objects")])
def test_a_file_that_is_no_checkpoint_is_named_without_pickle_advice(content, says,
                                                                    tmp_path):
    """NumPy's message for such files suggests allow_pickle; a checkpoint is never loaded
    that way, and the message says the file is not a fastlr checkpoint (.npz) instead."""
    bad = tmp_path / "bad.npz"
    if content == "npy":
        with open(bad, "wb") as f:
            np.save(f, np.zeros(3))
    elif content == "pickle":
        bad.write_bytes(pickle.dumps({"steps": 1}))
    elif content == "object member":
        with open(bad, "wb") as f:
            np.savez(f, format=np.array([{"a": 1}], dtype=object))
    else:
        bad.write_bytes(content)
    opt = fastlr.SGD([np.zeros(3)], lr=0.1)
    for call in (opt.load, fastlr.optim.read_checkpoint):
        with pytest.raises(ValueError) as info:
            call(bad)
        message = str(info.value)
        assert f"{bad} is not a readable fastlr checkpoint" in message
        assert re.search(says, message), message
        if content != "object member":
            assert "not a .npz file" in message
        assert "allow_pickle" not in message and "unsafe" not in message
        assert "allow_pickle" not in str(info.value.__cause__ or "")


def _open_fds_to(path):
    """This process's open file descriptors that point to ``path`` (Linux /proc; elsewhere
    an empty list)."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return []
    target, out = os.path.realpath(path), []
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == target:
                out.append(int(fd))
        except OSError:
            pass
    return out


def test_load_missing_file_raises_and_changes_nothing(tmp_path):
    opt, _, _ = _stepped("SGD")
    snap = snapshot(opt)
    with pytest.raises((ValueError, OSError)):
        opt.load(tmp_path / "nope.npz")
    assert_unchanged(opt, snap)


# --- construction -------------------------------------------------------------------------
def _p():
    return [np.zeros(3)]


CTOR_ERRORS = [
    ("SGD lr<0", lambda: fastlr.SGD(_p(), lr=-1.0), ValueError, "lr"),
    ("SGD lr nan", lambda: fastlr.SGD(_p(), lr=float("nan")), ValueError, "lr"),
    ("SGD momentum<0", lambda: fastlr.SGD(_p(), momentum=-0.1), ValueError, "momentum"),
    ("SGD weight_decay<0", lambda: fastlr.SGD(_p(), weight_decay=-0.1), ValueError,
     "weight_decay"),
    ("SGD nesterov+dampening", lambda: fastlr.SGD(_p(), momentum=0.9, dampening=0.1,
                                                  nesterov=True), ValueError, "nesterov"),
    ("SGD nesterov no momentum", lambda: fastlr.SGD(_p(), nesterov=True), ValueError,
     "nesterov"),
    ("SGD group nesterov no momentum", lambda: fastlr.SGD(
        [{"params": _p(), "momentum": 0.0}], momentum=0.9, nesterov=True), ValueError,
     "nesterov"),
    ("SGD lr string", lambda: fastlr.SGD(_p(), lr="0.1"), TypeError, "lr"),
    ("SGD nesterov not bool", lambda: fastlr.SGD(_p(), momentum=0.9, nesterov="yes"),
     TypeError, "nesterov"),
    ("RMSprop alpha<0", lambda: fastlr.RMSprop(_p(), alpha=-0.1), ValueError, "alpha"),
    ("RMSprop eps<0", lambda: fastlr.RMSprop(_p(), eps=-1.0), ValueError, "eps"),
    ("RMSprop momentum<0", lambda: fastlr.RMSprop(_p(), momentum=-0.1), ValueError,
     "momentum"),
    ("Adam beta1=1", lambda: fastlr.Adam(_p(), betas=(1.0, 0.9)), ValueError, "beta"),
    ("Adam beta2=1", lambda: fastlr.Adam(_p(), betas=(0.9, 1.0)), ValueError, "beta"),
    ("Adam beta<0", lambda: fastlr.Adam(_p(), betas=(-0.1, 0.9)), ValueError, "beta"),
    ("Adam betas triple", lambda: fastlr.Adam(_p(), betas=(0.9, 0.9, 0.9)), TypeError,
     "betas"),
    ("Adam eps<0", lambda: fastlr.Adam(_p(), eps=-1.0), ValueError, "eps"),
    ("Adam lr<0", lambda: fastlr.Adam(_p(), lr=-1.0), ValueError, "lr"),
    ("Adam group lr<0", lambda: fastlr.Adam([{"params": _p(), "lr": -1.0}]), ValueError,
     "lr"),
    ("Adam group unknown key", lambda: fastlr.Adam([{"params": _p(), "momentum": 0.9}]),
     ValueError, "momentum"),
    ("AdamW weight_decay<0", lambda: fastlr.AdamW(_p(), weight_decay=-0.1), ValueError,
     "weight_decay"),
    ("AdamW decoupled kwarg", lambda: fastlr.AdamW(_p(), decoupled_weight_decay=False),
     TypeError, "decoupled"),
    ("positional momentum", lambda: fastlr.SGD(_p(), 0.1, 0.9), TypeError, None),
    ("int params", lambda: fastlr.Adam([np.zeros(3, np.int64)]), TypeError, r"params\[0\]"),
    ("float64 params beside float16 ones, bfloat16 state, no master weights",
     lambda: fastlr.AdamW([np.zeros(3, np.float16), np.zeros(3)],
                          master_weights=False, state_dtype="bfloat16"),
     TypeError, r"params\[1\]"),
    ("list param", lambda: fastlr.Adam([[0.0, 1.0]]), TypeError, r"params\[0\]"),
    ("byte-swapped param", lambda: fastlr.Adam([np.zeros(3, ">f8")]), TypeError,
     r"params\[0\]"),
    ("same array twice", lambda: _same_twice(), ValueError, "overlap"),
    ("overlapping views", lambda: _overlapping(), ValueError, "overlap"),
    ("array and its transpose", lambda: _transposed(), ValueError, "overlap"),
    ("read-only param", lambda: _read_only(), ValueError, r"params\[1\]"),
    ("non-contiguous param", lambda: fastlr.SGD([np.zeros((4, 4))[:, ::2]]), ValueError,
     r"params\[0\]"),
    ("empty params", lambda: fastlr.SGD([]), ValueError, "empty"),
    ("empty group", lambda: fastlr.SGD([{"params": []}]), ValueError, "no params"),
    ("mixed arrays and dicts", lambda: fastlr.SGD([np.zeros(3), {"params": _p()}]),
     TypeError, "mixes"),
    ("params a number", lambda: fastlr.SGD(3.0), TypeError, "params"),
    ("n_threads=0", lambda: fastlr.SGD(_p(), n_threads=0), ValueError, "n_threads"),
    ("n_threads float", lambda: fastlr.SGD(_p(), n_threads=2.0), TypeError, "n_threads"),
]


def _same_twice():
    w = np.zeros(3)
    return fastlr.Adam([w, np.zeros(2), w])


def _overlapping():
    buf = np.zeros(10)
    return fastlr.Adam([{"params": [buf[:6]]}, {"params": [buf[4:]]}])


def _transposed():
    w = np.zeros((3, 4))
    return fastlr.SGD([w, w.T])


def _read_only():
    w = np.zeros(3)
    w.flags.writeable = False
    return fastlr.SGD([np.zeros(2), w])


@pytest.mark.parametrize("what, build, error, match", CTOR_ERRORS,
                         ids=[e[0] for e in CTOR_ERRORS])
def test_invalid_construction_raises(what, build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("cls_name, group, error", [
    ("SGD", {"params": [np.zeros(2)], "lr": -1.0}, ValueError),
    ("SGD", {"params": [np.zeros(2, np.int32)]}, TypeError),
    ("Adam", {"params": [np.zeros(2)], "betas": (0.9, 1.0)}, ValueError),
    ("Adam", {"params": [np.zeros(2)], "foo": 1.0}, ValueError),
    ("Adam", {"params": []}, ValueError),
    ("Adam", {"lr": 0.1}, TypeError),
    ("Adam", "OVERLAP", ValueError),
    ("Adam", "READONLY", ValueError),
    # fastlr's constructor refuses a nesterov group without momentum; add_param_group must
    # too, else every later step raises and the optimizer is unusable
    ("SGD", {"params": [np.zeros(2)], "momentum": 0.0}, ValueError),
])
def test_add_param_group_invalid_raises_and_changes_nothing(cls_name, group, error):
    shapes = [(3, 4), (5,)]
    params = make_params(shapes, np.float64, 24)
    kw = dict(momentum=0.9, nesterov=True) if cls_name == "SGD" else dict(amsgrad=True)
    opt = getattr(fastlr, cls_name)(params, lr=0.01, **kw)
    opt.step(_good_grads(shapes))
    if group == "OVERLAP":
        group = {"params": [params[1]]}
    elif group == "READONLY":
        ro = np.zeros(2)
        ro.flags.writeable = False
        group = {"params": [ro]}
    snap = snapshot(opt)
    with pytest.raises(error):
        opt.add_param_group(group)
    assert_unchanged(opt, snap)
    assert len(opt.param_groups) == 1 and len(opt.state) == 2
    opt.step(_good_grads(shapes))        # still usable with the old grads
    assert opt.steps == 2


# ---------------------------------------------------------------------------------------
# 7. save is atomic
# ---------------------------------------------------------------------------------------
def test_save_leaves_no_temp_files_and_replaces(tmp_path):
    opt, params, shapes = _stepped("Adam", n=3)
    path = tmp_path / "ckpt.npz"
    opt.save(path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    first = path.read_bytes()
    opt.step(_good_grads(shapes))
    opt.save(str(path))                         # str paths too; over the existing file
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    assert path.read_bytes() != first
    fresh, _, _ = _stepped("Adam", n=0)
    fresh.load(path)
    assert fresh.steps == 4
    assert_same_optimizer_state(fresh, opt)
    # a checkpoint is a plain .npz without pickles
    with np.load(path, allow_pickle=False) as z:
        assert "format" in z.files and "steps" in z.files


def assert_same_optimizer_state(a, b):
    sa, sb = a.state, b.state
    for i in sa:
        assert sa[i]["step"] == sb[i]["step"]
        for k in sa[i]:
            if k != "step":
                assert bits(sa[i][k]) == bits(sb[i][k])


def test_failed_save_leaves_no_temp_file_and_keeps_old_target(tmp_path):
    opt, _, _ = _stepped("SGD")
    target = tmp_path / "dir"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        opt.save(target)                     # cannot replace a directory
    assert sorted(os.listdir(tmp_path)) == ["dir"]
    assert sorted(os.listdir(target)) == ["keep"]
    with pytest.raises(OSError):
        opt.save(tmp_path / "missing" / "c.npz")
    assert sorted(os.listdir(tmp_path)) == ["dir"]
