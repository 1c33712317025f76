"""The optimizers beyond SGD, RMSprop and Adam, and the options every optimizer shares (clipping, non-finite skip, plateau).

What is held to what (docs/design.md: Numerics, Arguments, Tests):

1. ``Adagrad``, ``Adadelta``, ``Adamax``, ``NAdam``, ``RAdam``, ``Rprop`` and ``ASGD``
   against ``torch.optim`` 2.13 (``foreach=False``): 100 steps, float32 and float64, every
   option, two param groups with different hyperparameters and lr schedules (torch's
   ``group["lr"]`` set to ``schedule(t)`` before its update ``t + 1``; Rprop's lr takes no
   schedule), params that are views of one flat buffer, a 2-D Fortran-ordered param and a
   3-D one; params *and every state buffer* (NAdam's ``mu_product``, ASGD's ``eta``
   included) within ``rtol * max(1, max|p|)``, rtol 1e-10 (float64; NAdam 1e-8) and 1e-4
   (float32). ``Lion`` against a NumPy transcription of ``optax.lion``. Every other
   schedulable hyperparameter (eps, either slot of betas, alpha, rho, ...) scheduled alone,
   against torch with the group value set before each update; out-of-range scheduled
   values raise and change nothing.
2. ``max_grad_norm``: for every optimizer the fused clipping gives the same bits as
   ``fastlr.clip_grad_norm`` followed by a plain step; ``last_grad_norm``; against
   ``torch.nn.utils.clip_grad_norm_`` + ``torch.optim``; thread-count independence;
   ``clip_grad_norm`` validation and non-finite grads.
3. ``skip_nonfinite``: a skipped step changes nothing (bits, counters, schedule position);
   the run continues as if the bad step never happened; without the option NaN/Inf
   propagate exactly where torch propagates them.
4. ``ReduceLROnPlateau`` against torch's, composed with a schedule, resumed from a
   checkpoint (attached before or after loading), invalid arguments.
5. Resume from ``state_dict`` and ``save``/``load`` bit-identically for every optimizer
   with a schedule, clipping and skipping; corrupted checkpoints raise and change nothing.

Torch-free parts always run; torch parts skip with a reason when torch is missing.
"""

import contextlib
import copy
import functools
import inspect
import re
import zlib

import numpy as np
import pytest

import fastlr
from fastlr import _specs
from fastlr import schedules as S

DTYPES = [np.float64, np.float32]
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
N_STEPS = 100
ALL = list(_specs.OPTIMIZERS)                                   # the table's classes
TORCH_HAS = [n for n, o in _specs.OPTIMIZERS.items() if o.torch]
# scalar state (0-d tensors in torch): the step, NAdam's mu_product, ASGD's eta and mu
SCALARS = ("step", "mu_product", "eta", "mu")
# torch's state keys that fastlr derives instead of keeping: ASGD's mu (from step and t0)
TORCH_ONLY = {"mu"}
# fastlr's state names that differ from torch's state keys
TORCH_KEY = {k: v for o in _specs.OPTIMIZERS.values() for k, v in o.torch_state.items()
             if k != "step"}
# the torch classes beyond SGD, RMSprop and Adam/AdamW (this file's families)
NEW_TORCH_FAMILIES = [n for n in TORCH_HAS
                      if _specs.OPTIMIZERS[n].family not in ("sgd", "rmsprop", "adam")]
# options that make every optimizer keep (and use) its state buffers
RICH = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
        "RMSprop": dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
        "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
        "AdamW": dict(lr=0.01),
        "Adagrad": dict(lr=0.05, lr_decay=0.01, weight_decay=0.01,
                        initial_accumulator_value=0.1),
        "Adadelta": dict(lr=0.5, rho=0.8, weight_decay=0.01),
        "Adamax": dict(lr=0.01, weight_decay=0.01),
        "NAdam": dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
        "RAdam": dict(lr=0.01, weight_decay=0.01),
        "Lion": dict(lr=1e-3, weight_decay=0.05),
        "Rprop": dict(lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-4, 0.5)),
        "ASGD": dict(lr=0.02, lambd=0.01, t0=20.0, weight_decay=0.01)}

dtype_ids = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
all_ids = pytest.mark.parametrize("name", ALL)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def bits(a):
    a = np.asarray(a)
    return (a.dtype.str, a.shape, a.tobytes(order="A"))


def assert_close(got, want, dtype, what, rtol=None):
    """max|got - want| <= rtol * max(1, max|want|)."""
    rtol = RTOL[np.dtype(dtype)] if rtol is None else rtol
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= rtol * scale, f"{what}: max|diff| = {err:.3e} > {rtol * scale:.3e}"
    return err / scale


def all_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def snapshot(opt):
    """Everything a skipped step or a failed call must leave alone, as bits."""
    state = {}
    for i, st in opt.state.items():
        for k, v in st.items():
            state[(i, k)] = bits(v) if isinstance(v, np.ndarray) else repr(v)
    return {"steps": opt.steps, "skipped": opt.skipped_steps,
            "params": [bits(p) for p in all_params(opt)], "state": state,
            "last_lr": repr(opt.last_lr), "next_lr": repr(opt.next_lr),
            "groups": [{k: repr(v) for k, v in g.items() if k != "params"}
                       for g in opt.param_groups]}


def assert_unchanged(opt, snap, what=""):
    now = snapshot(opt)
    for key in snap:
        assert now[key] == snap[key], f"{what}: {key} changed"


def assert_same_optimizer(a, b, what=""):
    """Bit-identical params, state buffers, per-param counts (mu_product), step counts."""
    sa, sb = snapshot(a), snapshot(b)
    for key in sa:
        assert sa[key] == sb[key], f"{what}: {key} differs"


@contextlib.contextmanager
def torch_default_dtype(torch, dtype):
    """float64 runs use a float64 default (torch keeps step counts and NAdam's mu_product
    in the default dtype); restored on exit."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch not installed; pip install "
                                               "torch==2.13.0 to run the parity tests")


# ---- the problem: two groups; views of one flat buffer, an F-ordered 2-D, a 3-D ----------
SHAPES = ((5, 4), (7,), (6, 3), (3, 2, 2), (9,))
GROUP_OF = (0, 0, 0, 1, 1)
F_ORDER = (False, False, True, False, False)


def make_params(dtype, seed=0):
    """params[0], params[1]: adjacent views of one flat buffer; params[2]: F-ordered."""
    rng = np.random.default_rng(_seed("params", np.dtype(dtype).name, seed))
    flat, (a, b) = fastlr.flat_buffer(SHAPES[:2], dtype)
    flat[...] = rng.standard_normal(flat.size)
    f = np.asfortranarray(rng.standard_normal(SHAPES[2]).astype(dtype))
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    c = rng.standard_normal(SHAPES[3]).astype(dtype)
    d = rng.standard_normal(SHAPES[4]).astype(dtype)
    return flat, [a, b, f, c, d]


def clone_params(flat, params):
    """A copy with the same structure (one flat buffer for the first two)."""
    flat2, (a, b) = fastlr.flat_buffer(SHAPES[:2], flat.dtype)
    flat2[...] = flat
    return flat2, [a, b] + [p.copy(order="A") for p in params[2:]]


@functools.lru_cache(maxsize=None)
def _grads_cached(dtype, n, seed):
    """n steps of seeded read-only grads whose scale varies per step and param
    (1e-3 .. 10) so that eps and the accumulators all matter."""
    rng = np.random.default_rng(_seed("grads", np.dtype(dtype).name, n, seed))
    out = []
    for _ in range(n):
        step = []
        for shape, f in zip(SHAPES, F_ORDER):
            g = ((10.0 ** rng.uniform(-3, 1)) * rng.standard_normal(shape)).astype(dtype)
            if f:
                g = np.asfortranarray(g)
            g.flags.writeable = False
            step.append(g)
        out.append(tuple(step))
    return tuple(out)


def make_grads(dtype, n, seed=0):
    return _grads_cached(np.dtype(dtype).type, n, seed)


def writable(grads):
    return [g.copy(order="A") for g in grads]


def groups_of(params, g0, g1):
    return [dict(g0, params=[p for p, k in zip(params, GROUP_OF) if k == 0]),
            dict(g1, params=[p for p, k in zip(params, GROUP_OF) if k == 1])]


def schedules_for(lr0, lr1):
    """The lr schedule of each group: a cosine to 5% and a step decay."""
    return (S.cosine(lr0, N_STEPS, end=0.05 * lr0), S.step_decay(lr1, 30, 0.5))


# ---------------------------------------------------------------------------------------
# 1. trajectories against torch.optim
# ---------------------------------------------------------------------------------------
# (class, case id, group-0 options, group-1 overrides); group 1 always differs in lr
FAMILIES = [
    ("Adagrad", "plain", dict(lr=0.05), dict(eps=1e-6)),
    ("Adagrad", "lr_decay", dict(lr=0.05, lr_decay=0.02), dict(lr_decay=0.1)),
    ("Adagrad", "initial_accumulator_value", dict(lr=0.05, initial_accumulator_value=0.5),
     dict(eps=1e-3)),
    ("Adagrad", "weight_decay", dict(lr=0.05, weight_decay=0.05), dict(weight_decay=0.2)),
    ("Adagrad", "maximize", dict(lr=0.05, maximize=True), dict()),
    ("Adagrad", "all", dict(lr=0.05, lr_decay=0.01, weight_decay=0.05,
                            initial_accumulator_value=0.1, eps=1e-8, maximize=True),
     dict(maximize=False, lr_decay=0.0)),
    ("Adadelta", "plain", dict(lr=1.0), dict(eps=1e-4)),
    ("Adadelta", "rho", dict(lr=1.0, rho=0.5), dict(rho=0.95)),
    ("Adadelta", "weight_decay", dict(lr=1.0, weight_decay=0.05), dict(weight_decay=0.2)),
    ("Adadelta", "maximize", dict(lr=1.0, maximize=True), dict()),
    ("Adadelta", "all", dict(lr=0.5, rho=0.7, eps=1e-5, weight_decay=0.05, maximize=True),
     dict(rho=0.99, maximize=False)),
    ("Adamax", "plain", dict(lr=0.01), dict(betas=(0.8, 0.99))),
    ("Adamax", "weight_decay", dict(lr=0.01, weight_decay=0.05), dict(weight_decay=0.2)),
    ("Adamax", "maximize", dict(lr=0.01, maximize=True), dict(eps=1e-3)),
    ("Adamax", "all", dict(lr=0.01, betas=(0.3, 0.9), eps=1e-4, weight_decay=0.05,
                           maximize=True), dict(betas=(0.9, 0.999), maximize=False)),
    ("NAdam", "plain", dict(lr=0.01), dict(betas=(0.8, 0.99))),
    ("NAdam", "momentum_decay", dict(lr=0.01, momentum_decay=0.05),
     dict(momentum_decay=0.0)),
    ("NAdam", "weight_decay", dict(lr=0.01, weight_decay=0.05), dict(weight_decay=0.2)),
    ("NAdam", "decoupled_weight_decay", dict(lr=0.01, weight_decay=0.05,
                                             decoupled_weight_decay=True),
     dict(weight_decay=0.2)),
    ("NAdam", "maximize", dict(lr=0.01, maximize=True), dict(eps=1e-4)),
    ("NAdam", "all", dict(lr=0.01, betas=(0.3, 0.9), eps=1e-6, weight_decay=0.05,
                          momentum_decay=0.01, decoupled_weight_decay=True, maximize=True),
     dict(decoupled_weight_decay=False, betas=(0.9, 0.999))),
    ("RAdam", "plain", dict(lr=0.01), dict(betas=(0.8, 0.99))),
    ("RAdam", "weight_decay", dict(lr=0.01, weight_decay=0.05), dict(weight_decay=0.2)),
    ("RAdam", "decoupled_weight_decay", dict(lr=0.01, weight_decay=0.05,
                                             decoupled_weight_decay=True),
     dict(weight_decay=0.2)),
    ("RAdam", "maximize", dict(lr=0.01, maximize=True), dict(eps=1e-4)),
    # beta2 = 0.9: rho_t passes 5 at step 6 (the rectified branch starts early)
    ("RAdam", "all", dict(lr=0.01, betas=(0.3, 0.9), eps=1e-6, weight_decay=0.05,
                          decoupled_weight_decay=True, maximize=True),
     dict(decoupled_weight_decay=False, betas=(0.9, 0.999))),
    ("Rprop", "plain", dict(lr=0.01), dict(etas=(0.3, 1.5))),
    ("Rprop", "step_sizes", dict(lr=0.01, step_sizes=(1e-3, 0.05)),
     dict(step_sizes=(0.0, 1.0))),
    ("Rprop", "maximize", dict(lr=0.01, maximize=True), dict()),
    ("Rprop", "all", dict(lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-4, 0.5), maximize=True),
     dict(maximize=False, etas=(0.6, 1.1))),
    ("ASGD", "plain", dict(lr=0.02), dict(lambd=1e-3)),
    # t0 = 30: averaging starts within the 100 steps (mu != 1 from step 32)
    ("ASGD", "t0", dict(lr=0.02, t0=30.0), dict(t0=0.0)),
    ("ASGD", "lambd_alpha", dict(lr=0.05, lambd=0.05, alpha=0.5), dict(alpha=1.0)),
    ("ASGD", "weight_decay", dict(lr=0.02, weight_decay=0.05), dict(weight_decay=0.2)),
    ("ASGD", "maximize", dict(lr=0.02, maximize=True), dict()),
    ("ASGD", "all", dict(lr=0.02, lambd=0.01, alpha=0.9, t0=10.0, weight_decay=0.05,
                         maximize=True), dict(maximize=False, t0=50.0)),
]
FAMILY_CASES = [pytest.param(c, g0, g1, id=f"{c}-{case}") for c, case, g0, g1 in FAMILIES]


class TorchTwin:
    """A torch optimizer over copies of the same params, grouped the same way."""

    def __init__(self, torch, cls_name, groups):
        self.torch = torch
        tgroups, defaults = [], {}
        for g in groups:
            tg = dict(g)
            if "initial_accumulator_value" in tg:
                # torch's Adagrad fills its "sum" with the constructor's value and ignores
                # a group's (see test_adagrad_initial_accumulator_value_per_group)
                defaults["initial_accumulator_value"] = tg.pop("initial_accumulator_value")
            tg["params"] = [torch.nn.Parameter(torch.tensor(np.ascontiguousarray(p)))
                            for p in g["params"]]
            tgroups.append(tg)
        assert all(g.get("initial_accumulator_value",
                         defaults.get("initial_accumulator_value")) ==
                   defaults.get("initial_accumulator_value") for g in groups)
        self.opt = getattr(torch.optim, cls_name)(tgroups, foreach=False, **defaults)

    @property
    def tparams(self):
        return [p for g in self.opt.param_groups for p in g["params"]]

    def step(self, grads, clip=None):
        for p, g in zip(self.tparams, grads):
            p.grad = self.torch.tensor(np.ascontiguousarray(g))
        if clip is not None:
            norm = self.torch.nn.utils.clip_grad_norm_(self.tparams, clip, foreach=False)
        self.opt.step()
        return None if clip is None else float(norm)

    def params(self):
        return [p.detach().numpy() for p in self.tparams]

    def state(self, i):
        st = self.opt.state[self.tparams[i]]
        return {k: (float(v) if k in SCALARS else v.detach().numpy())
                for k, v in st.items()}


def compare_with_torch(opt, twin, dtype, what, rtol=None):
    worst = 0.0
    for i, (p, tp) in enumerate(zip(all_params(opt), twin.params())):
        assert p.dtype == tp.dtype
        worst = max(worst, assert_close(p, tp, dtype, f"{what} params[{i}]", rtol))
    for i, st in opt.state.items():
        tst = twin.state(i)
        assert {TORCH_KEY.get(k, k) for k in st} - {"step"} == \
            set(tst) - {"step"} - TORCH_ONLY, (what, i, set(st), set(tst))
        for k, v in st.items():
            if k == "step" and "step" not in tst:
                continue                    # torch's SGD keeps no step count
            tv = tst[TORCH_KEY.get(k, k)]
            if k == "step":
                assert v == tv, f"{what} state[{i}]['step']: {v} != {tv}"
                continue
            worst = max(worst, assert_close(v, tv, dtype, f"{what} state[{i}][{k!r}]", rtol))
    return worst


def _family_rtol(cls_name, dtype):
    if cls_name == "NAdam" and np.dtype(dtype) == np.float64:
        return 1e-8
    return None


@dtype_ids
@pytest.mark.parametrize("cls_name, g0, g1", FAMILY_CASES)
def test_family_trajectory_matches_torch(torch, cls_name, g0, g1, dtype):
    lr0, lr1 = g0["lr"], g0["lr"] * 0.5
    sched0, sched1 = schedules_for(lr0, lr1)
    mine0, mine1 = sched0, sched1
    if "lr" not in getattr(fastlr, cls_name)._schedulable:
        # Rprop: lr only fills step_size (test_scheduled_hyperparameter_matches_torch
        # schedules its etas and step_sizes)
        sched0, sched1 = (lambda t: lr0), (lambda t: lr1)
        mine0, mine1 = lr0, lr1
    flat, params = make_params(dtype, seed=1)
    grads = make_grads(dtype, N_STEPS, seed=1)
    g1 = dict(g0, **g1)
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, groups_of(params, dict(g0, lr=lr0),
                                                      dict(g1, lr=lr1)))
        opt = getattr(fastlr, cls_name)(groups_of(params, dict(g0, lr=mine0),
                                                  dict(g1, lr=mine1)))
        rtol = _family_rtol(cls_name, dtype)
        for t, g in enumerate(grads):
            want = [sched0(t), sched1(t)]
            assert opt.next_lr == pytest.approx(want, rel=1e-15)
            for tg, lr in zip(twin.opt.param_groups, want):
                tg["lr"] = lr
            assert opt.step(list(g)) is None
            twin.step(g)
            if t in (0, 4, 5, 6, 9, 29, 30, 59) or t == N_STEPS - 1:
                compare_with_torch(opt, twin, dtype, f"step {t + 1}", rtol)
        assert opt.last_lr == pytest.approx([sched0(N_STEPS - 1), sched1(N_STEPS - 1)],
                                            rel=1e-15)
        assert opt.steps == N_STEPS
        assert all(st["step"] == N_STEPS for st in opt.state.values())
        # the first two params were updated in place through the flat buffer
        assert np.shares_memory(flat, params[0]) and np.shares_memory(flat, params[1])
        assert params[2].flags.f_contiguous


@pytest.mark.parametrize("cls_name", [n for n in NEW_TORCH_FAMILIES
                                      if "weight_decay" in getattr(fastlr, n)._schedulable])
def test_scheduled_beta1_and_weight_decay_match_torch(torch, cls_name):
    """beta1 (where the class schedules it) and weight_decay as schedules: torch's group
    entries set to their values before each update."""
    dtype = np.float64
    flat, params = make_params(dtype, seed=3)
    grads = make_grads(dtype, 60, seed=3)
    lr = {"Adagrad": 0.05, "Adadelta": 1.0}.get(cls_name, 0.01)
    wd = S.linear(0.1, start_factor=0.0, end_factor=1.0, total_steps=40)
    b1 = S.cosine(0.9, 50, end=0.5)
    fl = dict(lr=lr, weight_decay=wd)
    th = dict(lr=lr, weight_decay=0.0)
    has_beta1 = "beta1" in getattr(fastlr, cls_name)._schedulable
    if has_beta1:
        fl["betas"] = (b1, 0.99)
        th["betas"] = (0.9, 0.99)
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name, groups_of(params, dict(th), dict(th, lr=lr / 2)))
        opt = getattr(fastlr, cls_name)(groups_of(params, dict(fl), dict(fl, lr=lr / 2)))
        for t, g in enumerate(grads):
            for tg in twin.opt.param_groups:
                tg["weight_decay"] = wd(t)
                if has_beta1:
                    tg["betas"] = (b1(t), 0.99)
            opt.step(list(g))
            twin.step(g)
        compare_with_torch(opt, twin, dtype, cls_name, _family_rtol(cls_name, dtype))
    assert opt.state_dict()["param_groups"][0]["weight_decay"] == {"schedule": repr(wd)}


# The hyperparameters beyond lr, momentum, beta1 and weight_decay that take a schedule
# (issue #17): each scheduled alone, the rest as RICH sets them.
_OLD_SCHEDULABLE = ("lr", "momentum", "beta1", "weight_decay")
_HYPER_SCHEDULE = {
    "beta2": S.cosine(0.999, 50, end=0.9),
    "eps": S.step_decay(1e-2, 20, 0.1),
    "alpha": S.cosine(0.99, 50, end=0.8),
    "dampening": S.linear(0.5, start_factor=0.0, end_factor=1.0, total_steps=40),
    "rho": S.cosine(0.9, 50, end=0.5),
    "lr_decay": S.linear(0.1, start_factor=0.0, end_factor=1.0, total_steps=40),
    "momentum_decay": S.linear(0.05, start_factor=0.08, end_factor=1.0, total_steps=40),
    "etaminus": S.cosine(0.5, 50, end=0.2),
    "etaplus": S.linear(1.5, start_factor=0.8, end_factor=1.0, total_steps=40),
    "step_size_min": S.step_decay(1e-3, 20, 0.1),
    "step_size_max": S.cosine(1.0, 50, end=0.02),
    "lambd": S.linear(0.05, start_factor=0.1, end_factor=1.0, total_steps=40),
    "alpha": S.cosine(0.99, 50, end=0.8),
}


def _schedulable_cases(torch_only):
    out = []
    for cls_name, row in _specs.OPTIMIZERS.items():
        if torch_only and not row.torch:
            continue
        for h in _specs.FAMILIES[row.family].hypers:
            if h.schedulable and h.name not in _OLD_SCHEDULABLE and h.name not in row.fixed:
                out.append(pytest.param(cls_name, h, id=f"{cls_name}-{h.name}"))
    return out


def _with_schedule(options, h, value):
    """``options`` with hyperparameter ``h`` set to ``value`` (a pair's slot for betas)."""
    options = dict(options)
    if h.pair:
        fam = next(f for f in _specs.FAMILIES.values() if h in f.hypers)
        names = [x.name for x in fam.hypers if x.pair == h.pair]
        pair = list(options.get(h.pair, [x.default for x in fam.hypers if x.pair == h.pair]))
        pair[names.index(h.name)] = value
        options[h.pair] = tuple(pair)
    else:
        options[h.name] = value
    return options


def test_every_numeric_hyperparameter_is_schedulable():
    """Item 3 of issue #17: every numeric hyperparameter takes a schedule (the table says
    which); the exceptions are named here with their reason."""
    not_schedulable = {}
    for fam in _specs.FAMILIES.values():
        for h in fam.hypers:
            if h.check != "flag" and not h.schedulable:
                not_schedulable[(fam.name, h.name)] = True
    assert set(not_schedulable) <= set(_NOT_SCHEDULABLE), sorted(not_schedulable)
    for cls_name, h in [(c.values[0], c.values[1]) for c in _schedulable_cases(False)]:
        assert h.name in _HYPER_SCHEDULE, f"{cls_name}.{h.name}: give it a test schedule"


#: (family, hyperparameter) that take no schedule, and why
_NOT_SCHEDULABLE = {("rprop", "lr"): "it only fills step_size when the state is created; "
                                     "the update never reads it",
                    ("asgd", "t0"): "mu follows from the step and t0 (torch stores it after "
                                    "each update from that update's t0)"}


@dtype_ids
@pytest.mark.parametrize("cls_name, h", _schedulable_cases(True))
def test_scheduled_hyperparameter_matches_torch(torch, cls_name, h, dtype):
    """A hyperparameter as a schedule: torch's group entry (a pair's slot: ``betas =
    (b1, s(t))``) set to its value before each update, which torch reads each step."""
    sched = _HYPER_SCHEDULE[h.name]
    rich = dict(RICH[cls_name])
    flat, params = make_params(dtype, seed=5)
    grads = make_grads(dtype, 60, seed=5)
    lr = rich["lr"]
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls_name,
                         groups_of(params, _with_schedule(rich, h, sched(0)),
                                   _with_schedule(rich, h, sched(0)) | {"lr": lr / 2}))
        opt = getattr(fastlr, cls_name)(groups_of(params, _with_schedule(rich, h, sched),
                                                  _with_schedule(rich, h, sched)
                                                  | {"lr": lr / 2}))
        for t, g in enumerate(grads):
            for tg in twin.opt.param_groups:
                if h.pair:
                    tg[h.pair] = _with_schedule({h.pair: tg[h.pair]}, h, sched(t))[h.pair]
                else:
                    tg[h.name] = sched(t)
            opt.step(list(g))
            twin.step(g)
            if t in (0, 9, 29) or t == len(grads) - 1:
                compare_with_torch(opt, twin, dtype, f"{cls_name} {h.name} step {t + 1}",
                                   _family_rtol(cls_name, dtype))
    saved = opt.state_dict()["param_groups"][0]
    if h.pair:
        slot = [x.name for x in opt._family.hypers if x.pair == h.pair].index(h.name)
        assert saved[h.pair][slot] == {"schedule": repr(sched)}
    else:
        assert saved[h.name] == {"schedule": repr(sched)}


@pytest.mark.parametrize("cls_name, h", _schedulable_cases(False))
def test_scheduled_hyperparameter_matches_the_twin(cls_name, h):
    """The compiled step against the NumPy twins' step with the same schedule (Lion, which
    torch lacks, included)."""
    sched = _HYPER_SCHEDULE[h.name]
    rich = _with_schedule(RICH[cls_name], h, sched)
    flat, params = make_params(np.float64, seed=6)
    flat2, params2 = clone_params(flat, params)
    a = getattr(fastlr, cls_name)(groups_of(params, rich, dict(rich, lr=rich["lr"] / 2)))
    b = getattr(fastlr, cls_name)(groups_of(params2, rich, dict(rich, lr=rich["lr"] / 2)))
    for g in make_grads(np.float64, 40, seed=6):
        a.step(list(g))
        b.step_reference(list(g))
    for i, (p, q) in enumerate(zip(all_params(a), all_params(b))):
        assert_close(p, q, np.float64, f"params[{i}]", 1e-13)


def _bad_value(rule):
    return {"nonneg": -1.0, "unit": 1.0, "closed_unit": 1.5, "finite": float("nan"),
            "open_unit": 0.0, "above_one": 1.0}[rule]


def _scheduled_cases():
    return [pytest.param(c, h, id=f"{c}-{h.name}") for c, row in _specs.OPTIMIZERS.items()
            for h in _specs.FAMILIES[row.family].hypers
            if h.schedulable and h.name not in row.fixed]


@pytest.mark.parametrize("cls_name, h", _scheduled_cases())
def test_out_of_range_scheduled_value_raises_and_changes_nothing(cls_name, h):
    """A schedule that leaves the hyperparameter's range: that step raises the table rule's
    error naming the group, the key and the step, and writes nothing."""
    rich = RICH[cls_name]
    good = (rich[h.name] if h.name in rich else
            rich[h.pair][[x.name for x in _specs.FAMILIES[_specs.OPTIMIZERS[cls_name].family]
                          .hypers if x.pair == h.pair].index(h.name)] if h.pair in rich
            else _specs.OPTIMIZERS[cls_name].defaults.get(h.name, h.default))
    bad = _bad_value(h.check)
    sched = lambda t: good if t < 3 else bad        # noqa: E731
    flat, params = make_params(np.float64, seed=7)
    opt = getattr(fastlr, cls_name)(groups_of(params, dict(rich),
                                              _with_schedule(rich, h, sched)))
    grads = make_grads(np.float64, 4, seed=7)
    for g in grads[:3]:
        opt.step(list(g))
    snap = snapshot(opt)
    key = f"{h.pair}[{[x.name for x in opt._family.hypers if x.pair == h.pair].index(h.name)}]" \
        if h.pair else h.name
    with pytest.raises(ValueError, match=rf"fastlr\.{cls_name}\.step: param_groups\[1\]"
                                         rf"\['{re.escape(key)}'\] is {re.escape(repr(bad))} "
                                         r"at step 3 \(from its schedule\); expected "):
        opt.step(list(grads[3]))
    assert_unchanged(opt, snap, f"{cls_name} {h.name}")


@pytest.mark.parametrize("slot", [0, 1])
def test_a_scheduled_betas_slot_in_checkpoints(slot, tmp_path):
    """Either slot of ``betas`` may be a schedule; checkpoints record it by repr and compare
    it on load (a different schedule raises, the same one loads)."""
    sched = S.cosine(0.9 if slot == 0 else 0.999, 30, end=0.5)
    betas = (sched, 0.999) if slot == 0 else (0.9, sched)
    flat, params = make_params(np.float64, seed=8)
    opt = fastlr.Adam(params, lr=0.01, betas=betas)
    for g in make_grads(np.float64, 5, seed=8):
        opt.step(list(g))
    saved = opt.state_dict()
    assert saved["param_groups"][0]["betas"][slot] == {"schedule": repr(sched)}
    opt.save(tmp_path / "ckpt.npz")
    flat2, params2 = clone_params(*make_params(np.float64, seed=8))
    same = fastlr.Adam(params2, lr=0.01, betas=betas)
    same.load(tmp_path / "ckpt.npz")
    same.load_state_dict(saved)
    assert same.steps == 5 and same.param_groups[0]["betas"][slot] is sched
    other = S.cosine(0.8, 30, end=0.5)
    differ = fastlr.Adam(params2, lr=0.01, betas=(other, 0.999) if slot == 0 else (0.9, other))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['betas'\]"):
        differ.load(tmp_path / "ckpt.npz")
    assert differ.steps == 0


def test_nesterov_with_a_scheduled_dampening():
    """SGD: nesterov needs dampening == 0; a scheduled dampening is checked each step."""
    w = np.ones(3)
    opt = fastlr.SGD([w], lr=0.1, momentum=0.9, nesterov=True,
                     dampening=lambda t: 0.0 if t < 2 else 0.5)
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    before = w.copy()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['dampening'\] is 0\.5 at step "
                                         r"2 \(from its schedule\); expected 0 \(nesterov"):
        opt.step([np.ones(3)])
    assert np.array_equal(w, before) and opt.steps == 2
    with pytest.raises(ValueError, match="nesterov=True requires"):
        fastlr.SGD([w], lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)


def test_adagrad_initial_accumulator_value_per_group(torch):
    """fastlr fills each group's state_sum with that group's initial_accumulator_value.
    torch 2.13 stores a group's value in the group but fills "sum" with the constructor's
    (it ignores the override): fastlr is held to torch optimizers built one per group."""
    dtype = np.float64
    rng = np.random.default_rng(21)
    a0, b0 = rng.standard_normal(4), rng.standard_normal(3)
    a, b = a0.copy(), b0.copy()
    opt = fastlr.Adagrad([{"params": [a], "initial_accumulator_value": 0.5},
                          {"params": [b], "lr": 0.02}], lr=0.05,
                         initial_accumulator_value=0.01)
    assert np.all(opt.state[0]["state_sum"] == 0.5)
    assert np.all(opt.state[1]["state_sum"] == 0.01)
    with torch_default_dtype(torch, dtype):
        ta = torch.nn.Parameter(torch.tensor(a0))
        tb = torch.nn.Parameter(torch.tensor(b0))
        oa = torch.optim.Adagrad([ta], lr=0.05, initial_accumulator_value=0.5, foreach=False)
        ob = torch.optim.Adagrad([tb], lr=0.02, initial_accumulator_value=0.01,
                                 foreach=False)
        for _ in range(20):
            ga, gb = rng.standard_normal(4), rng.standard_normal(3)
            opt.step([ga, gb])
            ta.grad, tb.grad = torch.tensor(ga), torch.tensor(gb)
            oa.step()
            ob.step()
        assert_close(a, ta.detach().numpy(), dtype, "group 0")
        assert_close(b, tb.detach().numpy(), dtype, "group 1")
        assert_close(opt.state[0]["state_sum"], oa.state[ta]["sum"].numpy(), dtype, "sum 0")
        # torch over the same groups fills both sums with the constructor's value: the
        # difference README and docs/migrating.rst document (update them if this changes)
        tc, td = (torch.nn.Parameter(torch.tensor(x)) for x in (a0, b0))
        both = torch.optim.Adagrad([{"params": [tc], "initial_accumulator_value": 0.5},
                                    {"params": [td]}], lr=0.05,
                                   initial_accumulator_value=0.01, foreach=False)
        assert both.param_groups[0]["initial_accumulator_value"] == 0.5
        assert float(both.state[tc]["sum"].max()) == float(both.state[tc]["sum"].min()) \
            == 0.01


def test_nadam_mu_product_is_state(torch):
    """NAdam's mu_product is per param (a group added later starts its own product), in
    opt.state and in the state dict, and equals torch's."""
    dtype = np.float64
    with torch_default_dtype(torch, dtype):
        a, b = np.ones(4), np.full(3, 2.0)
        opt = fastlr.NAdam([a], lr=0.01, momentum_decay=0.01)
        ta = torch.nn.Parameter(torch.tensor(a))
        tb = torch.nn.Parameter(torch.tensor(b))
        topt = torch.optim.NAdam([ta], lr=0.01, momentum_decay=0.01, foreach=False)
        rng = np.random.default_rng(3)
        for t in range(12):
            if t == 5:
                opt.add_param_group({"params": [b], "momentum_decay": 0.05})
                topt.add_param_group({"params": [tb], "momentum_decay": 0.05})
            gs = [rng.standard_normal(4)] + ([rng.standard_normal(3)] if t >= 5 else [])
            opt.step(gs)
            for p, g in zip([ta, tb], gs):
                p.grad = torch.tensor(g)
            topt.step()
        for i, tp in enumerate([ta, tb]):
            mp = opt.state[i]["mu_product"]
            assert isinstance(mp, float)
            assert mp == pytest.approx(float(topt.state[tp]["mu_product"]), rel=1e-12)
            assert opt.state_dict()["state"][i]["mu_product"] == mp
        assert opt.state[0]["step"] == 12 and opt.state[1]["step"] == 7
        assert opt.state[0]["mu_product"] != opt.state[1]["mu_product"]
        assert_close(a, ta.detach().numpy(), dtype, "a", rtol=1e-8)
        assert_close(b, tb.detach().numpy(), dtype, "b", rtol=1e-8)


# ---- Lion against a NumPy transcription of optax.lion ------------------------------------
def optax_lion_step(p, g, m, *, lr, b1, b2, wd, maximize):
    """optax.lion = scale_by_lion(b1, b2) + add_decayed_weights(wd) + scale(-lr):
    ``u = sign((1 - b1) g + b1 m)``, ``m = (1 - b2) g + b2 m``, ``p += -lr (u + wd p)``;
    ``maximize`` negates the gradient. In the param's dtype, as optax computes."""
    t = p.dtype.type
    g = -g if maximize else g
    u = np.sign(t(1.0 - b1) * g + t(b1) * m)
    m[...] = t(1.0 - b2) * g + t(b2) * m
    p[...] = p + t(-lr) * (u + t(wd) * p)


LION_CASES = [
    pytest.param(dict(), dict(), id="defaults"),
    pytest.param(dict(betas=(0.95, 0.98)), dict(betas=(0.5, 0.9)), id="betas"),
    pytest.param(dict(weight_decay=0.0), dict(weight_decay=0.1), id="weight_decay"),
    pytest.param(dict(maximize=True), dict(), id="maximize"),
    pytest.param(dict(betas=(0.8, 0.95), weight_decay=0.05, maximize=True),
                 dict(maximize=False, betas=(0.99, 0.999)), id="all"),
]


@dtype_ids
@pytest.mark.parametrize("g0, g1", LION_CASES)
def test_lion_matches_optax_formula(g0, g1, dtype):
    lr0, lr1 = 3e-3, 1e-3
    sched0, sched1 = schedules_for(lr0, lr1)
    flat, params = make_params(dtype, seed=2)
    grads = make_grads(dtype, N_STEPS, seed=2)
    g1 = dict(g0, **g1)
    mine = params
    ref = [p.copy(order="A") for p in params]
    moms = [np.zeros_like(p) for p in params]
    opt = fastlr.Lion(groups_of(mine, dict(g0, lr=sched0), dict(g1, lr=sched1)))
    defaults = dict(betas=(0.9, 0.99), weight_decay=1e-3, maximize=False)
    hyper = [dict(defaults, **g0), dict(defaults, **g1)]
    for t, g in enumerate(grads):
        lrs = [sched0(t), sched1(t)]
        opt.step(list(g))
        for i, (p, gi, m) in enumerate(zip(ref, g, moms)):
            h = hyper[GROUP_OF[i]]
            optax_lion_step(p, gi, m, lr=lrs[GROUP_OF[i]], b1=h["betas"][0],
                            b2=h["betas"][1], wd=h["weight_decay"], maximize=h["maximize"])
        if t in (0, 9, 49, N_STEPS - 1):
            for i in range(len(ref)):
                assert_close(mine[i], ref[i], dtype, f"step {t + 1} params[{i}]")
                assert_close(opt.state[i]["exp_avg"], moms[i], dtype,
                             f"step {t + 1} exp_avg[{i}]")
    assert set(opt.state[0]) == {"exp_avg", "step"}


def test_lion_defaults():
    opt = fastlr.Lion([np.zeros(3)])
    assert opt.defaults == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-3,
                                maximize=False)
    for bad in (dict(lr=-1.0), dict(betas=(1.5, 0.9)), dict(betas=(0.9, -0.1)),
                dict(weight_decay=-1.0)):
        with pytest.raises(ValueError):
            fastlr.Lion([np.zeros(3)], **bad)


def test_new_family_defaults_are_torchs(torch):
    import inspect
    for name in NEW_TORCH_FAMILIES:
        mine = fastlr.__dict__[name]([np.zeros(2)]).defaults
        sig = inspect.signature(getattr(torch.optim, name))
        for k, v in mine.items():
            want = sig.parameters[k].default
            if k == "betas":
                want = tuple(want)
            assert v == want, (name, k, v, want)


# ---------------------------------------------------------------------------------------
# 2. clipping
# ---------------------------------------------------------------------------------------
def mixed_problem(seed=0):
    """A float64 flat pair, a float32 F-ordered 2-D and a float64 1-D, in two groups."""
    rng = np.random.default_rng(_seed("mixed", seed))
    flat, (a, b) = fastlr.flat_buffer([(4, 3), (5,)], np.float64)
    flat[...] = rng.standard_normal(flat.size)
    f = np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32))
    c = rng.standard_normal(6)
    return [a, b, f, c]


def mixed_grads(params, n, seed=0):
    rng = np.random.default_rng(_seed("mixed-grads", seed))
    out = []
    for _ in range(n):
        step = []
        for p in params:
            g = np.empty_like(p, order="A")
            g[...] = (10.0 ** rng.uniform(-1, 1)) * rng.standard_normal(p.shape)
            step.append(g)
        out.append(step)
    return out


def global_norm(grads):
    return float(np.linalg.norm(np.concatenate([np.asarray(g, dtype=np.float64).ravel()
                                                for g in grads])))


def scheduled(name, schedule, lr):
    """A group's entries with a schedule: ``lr=schedule`` where the class schedules lr;
    Rprop (whose lr only fills step_size) gets ``lr`` and a scheduled step_size_max."""
    if "lr" in getattr(fastlr, name)._schedulable:
        return {"lr": schedule}
    return {"lr": lr, "step_sizes": (RICH[name]["step_sizes"][0],
                                     S.cosine(0.5, 25, end=0.05))}


def build(name, params, **options):
    kw = dict(RICH[name])
    lr = kw.pop("lr")
    groups = [dict(params=params[:3], **scheduled(name, S.cosine(lr, 20), lr)),
              dict(params=params[3:], lr=lr / 2)]
    return getattr(fastlr, name)(groups, **kw, **options)


@all_ids
@pytest.mark.parametrize("where", ["below", "above"])
def test_fused_clipping_equals_clip_then_step(name, where):
    params = mixed_problem()
    grads = mixed_grads(params, 8)
    norms = [global_norm(g) for g in grads]
    # "below": every norm under c (nothing clipped); "above": every norm over c
    c = 2.0 * max(norms) if where == "below" else 0.5 * min(norms)
    a_params = [p.copy(order="A") for p in params]
    b_params = [p.copy(order="A") for p in params]
    fused = build(name, a_params, max_grad_norm=c)
    plain = build(name, b_params)
    assert fused.max_grad_norm == c and plain.max_grad_norm is None
    assert np.isnan(fused.last_grad_norm)
    for t, g in enumerate(grads):
        g_before = [x.copy(order="A") for x in g]
        gc = [x.copy(order="A") for x in g]
        norm = fastlr.clip_grad_norm(gc, c)
        assert fused.step(g) is None
        plain.step(gc)
        assert [bits(x) for x in g] == [bits(x) for x in g_before], "step wrote a grad"
        assert fused.last_grad_norm == norm, t
        assert norm == pytest.approx(norms[t], rel=1e-12, abs=0)
        if where == "below":
            assert [bits(x) for x in gc] == [bits(x) for x in g_before]
        assert_same_optimizer(fused, plain, f"{name} step {t + 1}")


@pytest.mark.parametrize("name", ["SGD", "Adam", "NAdam"])
@dtype_ids
def test_clipping_matches_torch(torch, name, dtype):
    kw = {"SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
          "Adam": dict(lr=0.01, weight_decay=0.01, amsgrad=True),
          "NAdam": dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)}[name]
    rtol = _family_rtol(name, dtype)
    flat, params = make_params(dtype, seed=4)
    grads = make_grads(dtype, 30, seed=4)
    c = float(np.median([global_norm(g) for g in grads]))   # about half the steps clip
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, name, groups_of(params, dict(kw), dict(kw, lr=kw["lr"] / 2)))
        opt = getattr(fastlr, name)(groups_of(params, dict(kw), dict(kw, lr=kw["lr"] / 2)),
                                    max_grad_norm=c)
        for t, g in enumerate(grads):
            opt.step(list(g))
            tnorm = twin.step(g, clip=c)
            assert opt.last_grad_norm == pytest.approx(tnorm, rel=RTOL[np.dtype(dtype)])
            assert opt.last_grad_norm == pytest.approx(global_norm(g), rel=1e-12, abs=0)
        compare_with_torch(opt, twin, dtype, f"{name} clipped", rtol)


def test_clip_grad_norm_matches_torch(torch):
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        for c in (0.1, 1.0, 1e3):
            grads = [rng.standard_normal((4, 5)).astype(dtype),
                     np.asfortranarray(rng.standard_normal((3, 2)).astype(dtype))]
            tg = [torch.tensor(np.ascontiguousarray(g)) for g in grads]
            tps = []
            for g in tg:
                p = torch.nn.Parameter(torch.zeros_like(g))
                p.grad = g.clone()
                tps.append(p)
            want = float(torch.nn.utils.clip_grad_norm_(tps, c, foreach=False))
            got = fastlr.clip_grad_norm(grads, c)
            assert isinstance(got, float)
            assert got == pytest.approx(want, rel=RTOL[np.dtype(dtype)])
            for g, p in zip(grads, tps):
                assert g.dtype == dtype
                assert_close(g, p.grad.numpy(), dtype, f"clip {dtype} {c}")
    # a single array is accepted too
    g = np.full(4, 3.0)
    assert fastlr.clip_grad_norm(g, 1.0) == 6.0
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-6)


def test_clip_grad_norm_nonfinite_as_torch(torch):
    """Without error_if_nonfinite, a NaN grad makes everything NaN; an Inf gives factor 0
    (Inf * 0 = NaN, finite * 0 = 0) -- what torch does, silently (no NumPy warning)."""
    import warnings
    for bad in (np.nan, np.inf):
        grads = [np.arange(1.0, 7.0), np.array([1.0, bad, 2.0])]
        tps = []
        for g in grads:
            p = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64))
            p.grad = torch.tensor(g)
            tps.append(p)
        want = float(torch.nn.utils.clip_grad_norm_(tps, 1.0, foreach=False))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fastlr.clip_grad_norm(grads, 1.0)
        assert repr(got) == repr(want)
        for g, p in zip(grads, tps):
            np.testing.assert_array_equal(g, p.grad.numpy())
        assert not caught, f"clip_grad_norm warned for a {bad} grad: " \
            f"{[str(w.message) for w in caught]}"


def test_clip_grad_norm_error_if_nonfinite_writes_nothing():
    for bad in (np.nan, np.inf, -np.inf):
        big = np.arange(1.0, 101.0)                  # norm far above max_norm
        other = np.array([1.0, 2.0, bad], dtype=np.float32)
        before = [bits(big), bits(other)]
        with pytest.raises((ValueError, RuntimeError)):
            fastlr.clip_grad_norm([big, other], 1.0, error_if_nonfinite=True)
        assert [bits(big), bits(other)] == before
    # finite grads with the flag: a normal clip
    g = np.full(4, 3.0)
    assert fastlr.clip_grad_norm(g, 1.0, error_if_nonfinite=True) == 6.0


def test_clip_grad_norm_validation_changes_nothing():
    def fresh():
        return np.arange(1.0, 11.0), np.arange(5, dtype=np.float32)

    for max_norm in (0.0, -1.0, np.nan, np.inf, -np.inf):
        a, b = fresh()
        before = [bits(a), bits(b)]
        with pytest.raises(ValueError, match="max_norm"):
            fastlr.clip_grad_norm([a, b], max_norm)
        assert [bits(a), bits(b)] == before
    for max_norm in ("1", None, True, [1.0]):
        a, b = fresh()
        with pytest.raises(TypeError):
            fastlr.clip_grad_norm([a, b], max_norm)
    # an int array, a read-only grad, a non-contiguous grad, a non-array: nothing scaled
    ro = np.arange(1.0, 5.0)
    ro.flags.writeable = False
    strided = np.arange(1.0, 21.0)[::2]
    for bad, exc in ((np.arange(4), TypeError), (ro, ValueError), (strided, ValueError),
                     ([1.0, 2.0], TypeError), (np.arange(4, dtype=np.float16), TypeError)):
        a, b = fresh()
        bb = bits(bad) if isinstance(bad, np.ndarray) else None
        before = [bits(a), bits(b)]
        with pytest.raises(exc):
            fastlr.clip_grad_norm([a, b, bad], 0.5)
        assert [bits(a), bits(b)] == before
        if bb is not None:
            assert bits(bad) == bb
    with pytest.raises(TypeError):
        fastlr.clip_grad_norm("grads", 1.0)
    for n_threads, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError),
                           (True, TypeError)):
        a, b = fresh()
        with pytest.raises(exc):
            fastlr.clip_grad_norm([a, b], 0.5, n_threads=n_threads)
        assert bits(a) == bits(fresh()[0])


def test_optimizer_max_grad_norm_validation():
    w = np.zeros(3)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="max_grad_norm"):
            fastlr.Adam([w], max_grad_norm=bad)
    for bad in ("1", True):
        with pytest.raises(TypeError, match="max_grad_norm"):
            fastlr.Adam([w], max_grad_norm=bad)
    for bad in ("yes", None, 1.0):
        with pytest.raises(TypeError, match="skip_nonfinite"):
            fastlr.Adam([w], skip_nonfinite=bad)
    with pytest.raises(ValueError, match="skip_nonfinite"):
        fastlr.Adam([w], skip_nonfinite=2)
    opt = fastlr.SGD([w], max_grad_norm=2)
    assert opt.max_grad_norm == 2.0
    opt.max_grad_norm = None
    assert opt.max_grad_norm is None


def test_clipping_is_thread_count_independent():
    """> 100k elements in several arrays of both dtypes: the norm and every bit of the
    result are the same for 1 and 2 threads (fixed-order block sums)."""
    rng = np.random.default_rng(11)
    shapes = [(70001,), (300, 170), (40003,)]
    dtypes = [np.float32, np.float64, np.float32]
    base = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    grads = [[(rng.uniform(0.1, 3) * rng.standard_normal(s)).astype(d)
              for s, d in zip(shapes, dtypes)] for _ in range(3)]
    c = 0.3 * global_norm(grads[0])
    results = {}
    for nt in (1, 2):
        gc = [g.copy() for g in grads[0]]
        norm = fastlr.clip_grad_norm(gc, c, n_threads=nt)
        assert norm == pytest.approx(global_norm(grads[0]), rel=1e-12, abs=0)
        ps = [p.copy() for p in base]
        opt = fastlr.Adam(ps, lr=0.01, max_grad_norm=c, n_threads=nt)
        norms = []
        for g in grads:
            opt.step(g)
            norms.append(opt.last_grad_norm)
        results[nt] = (norm, [bits(g) for g in gc], norms, [bits(p) for p in ps],
                       sorted((i, k, bits(v)) for i, st in opt.state.items()
                              for k, v in st.items() if k != "step"))
    assert results[1] == results[2]


@all_ids
def test_last_grad_norm_matches_numpy(name):
    params = mixed_problem(seed=5)
    grads = mixed_grads(params, 4, seed=5)
    opt = build(name, params, max_grad_norm=1e9)        # never clips, always measures
    for g in grads:
        opt.step(g)
        assert opt.last_grad_norm == pytest.approx(global_norm(g), rel=1e-12, abs=0)


# ---------------------------------------------------------------------------------------
# 3. skipped steps
# ---------------------------------------------------------------------------------------
@all_ids
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
def test_skip_nonfinite_changes_nothing(name, bad, clip, tmp_path):
    params = mixed_problem(seed=6)
    grads = mixed_grads(params, 6, seed=6)
    c = 0.5 * min(global_norm(g) for g in grads) if clip else None
    ref_params = [p.copy(order="A") for p in params]
    opt = build(name, params, skip_nonfinite=True, max_grad_norm=c)
    ref = build(name, ref_params, skip_nonfinite=True, max_grad_norm=c)
    for t in range(3):
        assert opt.step(grads[t]) is True
        assert ref.step(grads[t]) is True
    for which in range(len(params)):        # a bad element in each grad in turn
        badg = [g.copy(order="A") for g in grads[3]]
        flat = badg[which].reshape(-1, order="A")
        flat[len(flat) // 2] = bad
        for g in badg:
            g.flags.writeable = False
        snap = snapshot(opt)
        norm_before = opt.last_grad_norm
        assert opt.step(badg) is False
        assert opt.skipped_steps == which + 1
        snap["skipped"] = which + 1
        assert_unchanged(opt, snap, f"{name} bad grad {which}")
        if not clip:
            assert repr(opt.last_grad_norm) == repr(norm_before)
    assert opt.steps == 3 and all(st["step"] == 3 for st in opt.state.values())
    # the good steps after: exactly the run that never saw the bad ones
    for t in range(3, 6):
        assert opt.step(grads[t]) is True
        assert ref.step(grads[t]) is True
        if clip:
            assert opt.last_grad_norm == ref.last_grad_norm
    snap_ref = snapshot(ref)
    snap_ref["skipped"] = len(params)
    assert_unchanged(opt, snap_ref, f"{name} after the skips")
    assert ref.skipped_steps == 0
    # the count survives state_dict / load_state_dict and save / load
    fresh = build(name, [p.copy(order="A") for p in params], skip_nonfinite=True)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.skipped_steps == len(params)
    fresh2 = build(name, [p.copy(order="A") for p in params], skip_nonfinite=True)
    opt.save(tmp_path / "ck.npz")
    fresh2.load(tmp_path / "ck.npz")
    assert fresh2.skipped_steps == len(params)
    assert opt.state_dict()["skipped_steps"] == len(params)


def test_skip_nonfinite_first_step_and_sgd_buffer():
    """A skipped first step leaves the optimizer as built: no lr used, no count, SGD's
    momentum buffer not started (the next good step sets it to the gradient)."""
    w, v = np.ones(3), np.ones(3)
    a = fastlr.SGD([w], lr=0.1, momentum=0.9, skip_nonfinite=True)
    b = fastlr.SGD([v], lr=0.1, momentum=0.9, skip_nonfinite=True)
    assert a.step([np.array([1.0, np.nan, 1.0])]) is False
    assert a.last_lr is None and a.steps == 0 and a.state[0]["step"] == 0
    assert "momentum_buffer" not in a.state[0]
    g = np.array([0.5, -1.0, 2.0])
    assert a.step([g]) is True and b.step([g]) is True
    sa, sb = snapshot(a), snapshot(b)
    assert sa.pop("skipped") == 1 and sb.pop("skipped") == 0
    assert sa == sb
    np.testing.assert_array_equal(a.state[0]["momentum_buffer"], g)


def test_skip_with_a_flat_grad():
    flat, (w, b) = fastlr.flat_buffer([(3, 2), (4,)], np.float32)
    flat[...] = 1.0
    opt = fastlr.Adam([w, b], lr=0.1, skip_nonfinite=True)
    g = np.ones(10, dtype=np.float32)
    g[7] = np.inf
    before = bits(flat)
    assert opt.step(g) is False
    assert bits(flat) == before and opt.skipped_steps == 1
    g[7] = 1.0
    assert opt.step(g) is True and opt.steps == 1


def test_fused_clipping_with_a_flat_grad():
    """One flat grad buffer or its views: the same norm and the same bits."""
    rng = np.random.default_rng(17)
    runs = []
    for form in ("flat", "views"):
        flat, (w, b) = fastlr.flat_buffer([(30, 20), (50,)], np.float32)
        flat[...] = 1.0
        opt = fastlr.RAdam([w, b], lr=0.1, max_grad_norm=0.5, skip_nonfinite=True)
        rng = np.random.default_rng(17)
        norms = []
        for _ in range(5):
            gflat, gviews = fastlr.flat_buffer([(30, 20), (50,)], np.float32)
            gflat[...] = rng.standard_normal(gflat.size)
            assert opt.step(gflat if form == "flat" else gviews) is True
            norms.append(opt.last_grad_norm)
            assert opt.last_grad_norm == pytest.approx(global_norm([gflat]), rel=1e-12)
        runs.append((bits(flat), norms, bits(opt.state[0]["exp_avg_sq"])))
    assert runs[0] == runs[1]


TORCH_NAN_KW = {"SGD": dict(lr=0.05, momentum=0.9), "RMSprop": dict(lr=0.01, centered=True,
                                                                     momentum=0.5),
                "Adam": dict(lr=0.01, amsgrad=True), "AdamW": dict(lr=0.01),
                "Adagrad": dict(lr=0.05), "Adadelta": dict(lr=1.0),
                "Adamax": dict(lr=0.01), "NAdam": dict(lr=0.01), "RAdam": dict(lr=0.01),
                "Rprop": dict(lr=0.01), "ASGD": dict(lr=0.01)}


@pytest.mark.parametrize("name", TORCH_HAS)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_propagates_as_torch_by_default(torch, name, bad):
    """Without skip_nonfinite, step returns None and a NaN/Inf grad propagates into
    params and state exactly where torch propagates it (same NaN and Inf masks)."""
    kw = TORCH_NAN_KW[name]
    p0 = np.linspace(-1.0, 1.0, 8)
    gs = [np.linspace(0.5, -0.3, 8), np.linspace(-0.2, 0.4, 8), np.linspace(0.1, 0.9, 8)]
    gs[1][3] = bad
    with torch_default_dtype(torch, np.float64):
        p = p0.copy()
        opt = getattr(fastlr, name)([p], **kw)
        tp = torch.nn.Parameter(torch.tensor(p0))
        topt = getattr(torch.optim, name)([tp], foreach=False, **kw)
        for t, g in enumerate(gs):
            assert opt.step([g]) is None
            tp.grad = torch.tensor(g)
            topt.step()
            pairs = [("param", p, tp.detach().numpy())]
            for k, v in opt.state[0].items():
                if k != "step":
                    pairs.append((k, v, topt.state[tp][TORCH_KEY.get(k, k)].numpy()))
            for what, mine, theirs in pairs:
                np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs),
                                              err_msg=f"NaN mask of {what} after {t + 1}")
                np.testing.assert_array_equal(np.isinf(mine), np.isinf(theirs),
                                              err_msg=f"Inf mask of {what} after {t + 1}")
        if name == "Rprop":     # it moves by sign(g) (torch.sign(NaN) = 0): the bad grad
            assert np.isfinite(p).all()     # lands in prev (for one step: masks above)
        else:
            assert not np.isfinite(p[3])
        assert opt.steps == 3 and opt.skipped_steps == 0


@all_ids
def test_nan_propagates_without_skip(name):
    params = mixed_problem(seed=8)
    grads = mixed_grads(params, 2, seed=8)
    opt = build(name, params)
    grads[1][3][2] = np.nan
    assert opt.step(grads[0]) is None
    assert opt.step(grads[1]) is None
    # Rprop moves by sign(g), torch.sign(NaN) = 0: the NaN stays in prev
    hit = opt.state[3]["prev"] if name == "Rprop" else params[3]
    assert np.isnan(hit[2]) and opt.steps == 2 and opt.skipped_steps == 0


# ---------------------------------------------------------------------------------------
# 4. ReduceLROnPlateau
# ---------------------------------------------------------------------------------------
def metric_sequence(mode, n=80, seed=0):
    """Improving stretches, plateaus, improvements smaller than the threshold, a NaN."""
    rng = np.random.default_rng(_seed("metric", seed))
    out, level = [], 1.0
    for k in range(n):
        phase = (k // 9) % 3
        if phase == 0:
            level *= 0.93                      # clear improvement
        elif phase == 1:
            level *= 1.0 - 2e-5                # below a 1e-4 rel threshold
        out.append(level + 0.004 * rng.standard_normal() * (phase == 2))
    out[n // 2] = float("nan")
    out[n // 2 + 1] = out[n // 2 - 1]          # an equal value: not an improvement
    return [-v for v in out] if mode == "max" else out


PLATEAU_CASES = []
for _mode in ("min", "max"):
    for _tm, _th in (("rel", 1e-4), ("abs", 2e-3)):
        for _pat in (0, 2):
            for _cool in (0, 2):
                for _min_lr in (0.0, 2e-3, [1e-3, 4e-4]):
                    PLATEAU_CASES.append(pytest.param(
                        dict(mode=_mode, threshold_mode=_tm, threshold=_th, patience=_pat,
                             cooldown=_cool, min_lr=_min_lr, factor=0.5),
                        id=f"{_mode}-{_tm}-p{_pat}-c{_cool}-minlr{_min_lr}"))
PLATEAU_CASES += [
    pytest.param(dict(factor=0.5, patience=1, eps=0.0, min_lr=1e-3), id="eps0"),
    pytest.param(dict(factor=0.9, patience=0, eps=5e-3), id="eps-large"),
    pytest.param(dict(factor=0.0, patience=1), id="factor0"),
    pytest.param(dict(), id="defaults"),
    pytest.param(dict(factor=0.3, patience=3, threshold=0.0, cooldown=1,
                      min_lr=[0.0, 1e-2]), id="threshold0"),
]


@pytest.mark.parametrize("kw", PLATEAU_CASES)
def test_plateau_matches_torch(torch, kw):
    lrs = [0.1, 0.03]
    mode = kw.get("mode", "min")
    metrics = metric_sequence(mode)
    twp = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    topt = torch.optim.SGD([{"params": [twp[0]], "lr": lrs[0]},
                            {"params": [twp[1]], "lr": lrs[1]}])
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    opt = fastlr.SGD([{"params": [np.zeros(2)], "lr": lrs[0]},
                      {"params": [np.zeros(3)], "lr": lrs[1]}])
    plateau = fastlr.ReduceLROnPlateau(opt, **kw)
    assert opt.next_lr == lrs
    cuts = 0
    for k, m in enumerate(metrics):
        before = [g["lr"] for g in topt.param_groups]
        tsched.step(m)
        cut = plateau.step(m)
        want = [g["lr"] for g in topt.param_groups]
        assert opt.next_lr == pytest.approx(want, rel=1e-12, abs=0), k
        assert plateau.get_last_lr() == opt.next_lr
        assert cut == (want != before), k
        cuts += cut
        for attr in ("num_bad_epochs", "cooldown_counter", "last_epoch"):
            assert getattr(plateau, attr) == getattr(tsched, attr), (k, attr)
        assert repr(float(plateau.best)) == repr(float(tsched.best)), k
        # the configured lr is not what the plateau changes: it scales it
        assert [g["lr"] for g in opt.param_groups] == lrs
    if kw.get("patience", 10) <= 3:         # plateaus last 9 calls
        assert cuts >= (1 if kw.get("factor") in (0.0, 0.9) else 2)


def test_a_written_lr_is_used_as_written_after_a_cut(torch):
    """torch: a group's lr written after a ReduceLROnPlateau cut is the lr of the next step,
    and later cuts scale it. fastlr: the write puts that group's factor back to 1 (the
    other group keeps its cut)."""
    metrics = [1.0, 2.0, 2.0, 0.5, 3.0, 3.0, 0.1, 4.0]
    writes = {2: (0, 0.3), 5: (1, 0.07)}       # after metric k: group, lr
    twp = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in range(2)]
    topt = torch.optim.SGD([{"params": [twp[0]]}, {"params": [twp[1]], "lr": 0.2}], lr=1.0,
                           momentum=0.5)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=0)
    ws = [np.zeros(3), np.zeros(3)]
    opt = fastlr.SGD([{"params": [ws[0]]}, {"params": [ws[1]], "lr": 0.2}], lr=1.0,
                     momentum=0.5)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for k, m in enumerate(metrics):
        grads = [np.full(3, 0.1 * (k + 1)), np.full(3, -0.2 * (k + 1))]
        for p, g in zip(twp, grads):
            p.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step(grads)
        tsched.step(m)
        plateau.step(m)
        if k in writes:
            g, lr = writes[k]
            topt.param_groups[g]["lr"] = lr
            opt.param_groups[g]["lr"] = lr
            assert opt.param_groups[g]["lr"] == lr and plateau.scales[g] == 1.0
        assert opt.next_lr == pytest.approx([g["lr"] for g in topt.param_groups],
                                            rel=1e-12, abs=0), k
        for w, p in zip(ws, twp):
            np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-12, atol=0)
    assert plateau.scales[0] < 1 and plateau.scales[1] < 1    # cut after the writes too


def test_a_written_schedule_after_a_cut_starts_unscaled():
    s = S.cosine(0.2, 50)
    opt = fastlr.Adam([np.zeros(2)], lr=0.1)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    assert opt.next_lr == [0.05]
    opt.step([np.ones(2)])
    opt.param_groups[0]["lr"] = s
    assert opt.next_lr == [s(1)] and plateau.scales == [1.0]
    plateau.step(3.0)                               # then cuts scale the schedule
    opt.step([np.ones(2)])
    assert opt.last_lr == [s(1) * 0.5] and opt.next_lr == [s(2) * 0.5]


@pytest.mark.parametrize("via", ["state_dict", "save"])
def test_a_written_lr_after_a_cut_resumes_bit_exact(via, tmp_path):
    """The factor a write reset, and the cuts after it, are in the checkpoint: a resumed
    run (built as the original, the same lr written) goes on bit for bit. A rollback to
    the optimizer's own state dict from before the write restores the cut factor."""
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(3), rng.standard_normal(2)] for _ in range(12)]
    metrics = [1.0, 2.0, 2.0, 0.5, 3.0, 3.0, 3.0, 0.2, 4.0, 4.0, 4.0, 4.0]

    def build():
        ps = [np.zeros(3), np.zeros(2)]
        opt = fastlr.Adam([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}], lr=0.1)
        return opt, ps, fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)

    opt, ps, plateau = build()
    before_write = None
    for t in range(6):
        opt.step(grads[t])
        plateau.step(metrics[t])
        if t == 2:
            before_write = opt.state_dict()
            opt.param_groups[0]["lr"] = 0.3
    assert plateau.scales[0] < 1                 # cut again after the write
    saved = opt.state_dict()
    opt.save(tmp_path / "ck.npz")
    snap = [p.copy() for p in ps]
    history = []
    for t in range(6, 12):
        opt.step(grads[t])
        plateau.step(metrics[t])
        history.append((opt.next_lr, [p.tobytes() for p in ps]))

    opt2, ps2, plateau2 = build()
    for p, q in zip(ps2, snap):
        p[...] = q
    opt2.param_groups[0]["lr"] = 0.3             # the lr the checkpoint recorded
    if via == "state_dict":
        opt2.load_state_dict(saved)
    else:
        opt2.load(tmp_path / "ck.npz")
    assert opt2.state_dict()["lr_scale"] == saved["lr_scale"]
    for k, t in enumerate(range(6, 12)):
        opt2.step(grads[t])
        plateau2.step(metrics[t])
        assert (opt2.next_lr, [p.tobytes() for p in ps2]) == history[k], t
    # a rollback to the optimizer's own state from before the write (after two cuts)
    assert before_write["lr_scale"][0] == 0.25
    opt.load_state_dict(before_write)
    assert opt.param_groups[0]["lr"] == 0.1
    assert opt.state_dict()["lr_scale"] == before_write["lr_scale"]


def test_plateau_composes_with_a_schedule():
    """After cuts the lr is schedule(t) * scale; min_lr bounds the lr at the cut only."""
    s0, s1 = S.cosine(0.1, 200), S.step_decay(0.02, 25, 0.5)
    opt = fastlr.Adam([{"params": [np.zeros(3)], "lr": s0},
                       {"params": [np.zeros(2)], "lr": s1}])
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=1, min_lr=[0.0, 4e-3])
    scale = [1.0, 1.0]
    metrics = metric_sequence("min", n=60, seed=3)
    floored, lowest = False, []
    for t, m in enumerate(metrics):
        opt.step([np.full(3, 0.1), np.full(2, -0.1)])
        lrs = opt.next_lr
        want_unscaled = [s0(opt.steps), s1(opt.steps)]
        assert lrs == pytest.approx([w * s for w, s in zip(want_unscaled, scale)], rel=1e-12)
        cut = plateau.step(m)
        new = opt.next_lr
        for g in range(2):
            target = max(lrs[g] * 0.5, [0.0, 4e-3][g])
            if lrs[g] - target > plateau.eps and cut:
                assert new[g] == pytest.approx(target, rel=1e-12), (t, g)
                scale[g] *= target / lrs[g]
                floored |= target > lrs[g] * 0.5
            else:
                assert new[g] == lrs[g], (t, g)
        assert plateau.scales == pytest.approx(scale, rel=1e-12)
        assert opt.state_dict()["lr_scale"] == plateau.scales
        lowest.append(new[1])
    assert floored and scale[0] < 0.1
    # min_lr held at the cut; the schedule then takes group 1 below it
    assert min(lowest) < 4e-3 * (1 - 1e-9)


PLATEAU_KW = dict(mode="min", factor=0.5, patience=1, cooldown=2, min_lr=[1e-4, 0.0],
                  threshold=1e-3)


def _plateau_opt(params):
    return fastlr.Adam([{"params": params[:2], "lr": S.cosine(0.05, 100)},
                        {"params": params[2:], "lr": 0.02}], weight_decay=0.01,
                       max_grad_norm=5.0)


def _plateau_state(plateau):
    return {k: repr(getattr(plateau, k)) for k in
            ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "min_lrs", "mode",
             "factor", "patience", "cooldown", "threshold", "threshold_mode", "eps")}


@pytest.mark.parametrize("order", ["attach-then-load", "load-then-attach"])
@pytest.mark.parametrize("via", ["state_dict", "save"])
def test_plateau_resume(order, via, tmp_path):
    rng = np.random.default_rng(13)
    shapes = [(3, 2), (4,), (5,)]
    params0 = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(40)]
    metrics = metric_sequence("min", n=40, seed=9)

    params = [p.copy() for p in params0]
    opt = _plateau_opt(params)
    plateau = fastlr.ReduceLROnPlateau(opt, **PLATEAU_KW)
    history = []
    ck = None
    for t in range(40):
        if t == 17:
            ck = ([p.copy() for p in params], copy.deepcopy(opt.state_dict()))
            ck_next_lr = opt.next_lr
            opt.save(tmp_path / "plateau.npz")
        opt.step(grads[t])
        plateau.step(metrics[t])
        history.append((opt.next_lr, [bits(p) for p in params], _plateau_state(plateau)))
    assert sum(s < 1 for s in plateau.scales) == 2     # both groups were cut

    params2, sd = ck
    opt2 = _plateau_opt(params2)
    if order == "attach-then-load":
        plateau2 = fastlr.ReduceLROnPlateau(opt2, **PLATEAU_KW)
    if via == "state_dict":
        assert "plateau" in sd and "lr_scale" in sd
        opt2.load_state_dict(sd)
    else:
        opt2.load(tmp_path / "plateau.npz")
    if order == "load-then-attach":
        # a loaded plateau state waits in the optimizer's checkpoint until one is attached
        assert opt2.state_dict()["plateau"] == sd["plateau"]
        plateau2 = fastlr.ReduceLROnPlateau(opt2, **PLATEAU_KW)
    assert opt2.next_lr == history[16][0] == ck_next_lr
    assert opt2.steps == 17
    for t in range(17, 40):
        opt2.step(grads[t])
        plateau2.step(metrics[t])
        assert (opt2.next_lr, [bits(p) for p in params2], _plateau_state(plateau2)) == \
            history[t], t


@pytest.mark.parametrize("min_lr", [0.1, [0.1]], ids=["number", "list"])
def test_plateau_after_add_param_group_as_torch(torch, min_lr):
    """A group added after the plateau: a number min_lr extends to it (torch); a list does
    not (torch raises RuntimeError, fastlr ValueError), and the lrs stay as they were."""
    tp = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    topt = torch.optim.SGD([tp[0]], lr=1.0)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=0,
                                                        min_lr=min_lr)
    opt = fastlr.SGD([np.zeros(2)], lr=1.0)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=min_lr)
    tsched.step(1.0)
    plateau.step(1.0)
    topt.add_param_group({"params": [tp[1]], "lr": 0.15})
    opt.add_param_group({"params": [np.zeros(2)], "lr": 0.15})
    for m in (2.0, 3.0, 4.0):
        if isinstance(min_lr, list):
            with pytest.raises(RuntimeError):
                tsched.step(m)
            with pytest.raises(ValueError, match="min_lr"):
                plateau.step(m)
        else:
            tsched.step(m)
            plateau.step(m)
        assert opt.next_lr == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-12)


def test_last_lr_survives_a_checkpoint_after_a_cut(tmp_path):
    """last_lr is the lr the last update used. A plateau cut after that update changes
    next_lr, not last_lr; a resumed optimizer must report the same last_lr as the one
    that was saved (it has the same steps)."""
    w = np.zeros(2)
    opt = fastlr.SGD([w], lr=1.0)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    opt.step([np.ones(2)])
    plateau.step(1.0)
    opt.step([np.ones(2)])
    plateau.step(2.0)                   # a cut after the second update
    assert opt.last_lr == [1.0] and opt.next_lr == [0.5]
    opt.save(tmp_path / "ck.npz")
    for how in ("state_dict", "save"):
        other = fastlr.SGD([np.zeros(2)], lr=1.0)
        if how == "state_dict":
            other.load_state_dict(opt.state_dict())
        else:
            other.load(tmp_path / "ck.npz")
        assert other.next_lr == [0.5], how
        assert other.last_lr == opt.last_lr, how


def test_plateau_state_in_checkpoint_roundtrip(tmp_path):
    opt = fastlr.SGD([{"params": [np.zeros(2)], "lr": 0.1},
                      {"params": [np.zeros(2)], "lr": 0.2}])
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=[0.0, 0.15])
    for m in (1.0, 2.0, 3.0):
        plateau.step(m)
    sd = opt.state_dict()
    assert sd["lr_scale"] == pytest.approx([0.25, 0.75])
    assert sd["plateau"]["best"] == 1.0 and sd["plateau"]["last_epoch"] == 3
    assert opt.next_lr == pytest.approx([0.025, 0.15])
    opt.save(tmp_path / "p.npz")
    other = fastlr.SGD([{"params": [np.zeros(2)], "lr": 0.1},
                        {"params": [np.zeros(2)], "lr": 0.2}])
    other.load(tmp_path / "p.npz")
    assert other.next_lr == opt.next_lr
    p2 = fastlr.ReduceLROnPlateau(other)          # the checkpoint's config wins
    assert p2.factor == 0.5 and p2.patience == 0 and p2.min_lrs == [0.0, 0.15]
    assert p2.best == 1.0 and p2.last_epoch == 3


def test_plateau_invalid_arguments():
    opt = fastlr.SGD([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)]}], lr=0.1)
    bad = [dict(mode="mid"), dict(threshold_mode="relative"), dict(factor=1.0),
           dict(factor=1.5), dict(factor=-0.1), dict(factor=np.nan), dict(threshold=-1e-4),
           dict(threshold=np.inf), dict(eps=-1.0), dict(patience=-1), dict(patience=1.5),
           dict(cooldown=-1), dict(cooldown=0.5), dict(min_lr=-1.0), dict(min_lr=np.nan),
           dict(min_lr=[0.0]), dict(min_lr=[0.0, 0.0, 0.0]), dict(min_lr=[0.0, -1.0]),
           dict(factor="0.1"), dict(patience=True)]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            fastlr.ReduceLROnPlateau(opt, **kw)
        assert opt._plateau is None, kw          # a failed constructor attaches nothing
    with pytest.raises(TypeError):
        fastlr.ReduceLROnPlateau(object())
    plateau = fastlr.ReduceLROnPlateau(opt)
    with pytest.raises(ValueError):
        fastlr.ReduceLROnPlateau(opt)             # one per optimizer
    with pytest.raises(TypeError):
        plateau.step("loss")
    assert plateau.last_epoch == 0
    plateau.step(np.float32(1.5))
    plateau.step(np.array(1.0))
    assert plateau.best == 1.0 and plateau.last_epoch == 2


def test_plateau_bad_checkpoint_changes_nothing():
    opt = fastlr.SGD([{"params": [np.zeros(2)], "lr": 0.1}, {"params": [np.zeros(2)]}], lr=0.2)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for m in (1.0, 2.0):
        plateau.step(m)
    good = opt.state_dict()
    corrupt = []
    for key, value in (("best", float("nan")), ("num_bad_epochs", -1), ("factor", 2.0),
                       ("mode", "up"), ("min_lrs", [0.0]), ("last_epoch", 1.5)):
        sd = copy.deepcopy(good)
        sd["plateau"][key] = value
        corrupt.append(sd)
    sd = copy.deepcopy(good)
    del sd["plateau"]["best"]
    corrupt.append(sd)
    for lr_scale in ([1.0], [-1.0, 1.0], [np.nan, 1.0], "1"):
        sd = copy.deepcopy(good)
        sd["lr_scale"] = lr_scale
        corrupt.append(sd)
    other = fastlr.SGD([{"params": [np.zeros(2)], "lr": 0.1}, {"params": [np.zeros(2)]}],
                       lr=0.2)
    p2 = fastlr.ReduceLROnPlateau(other, factor=0.5, patience=0)
    p2.step(3.0)
    before = (snapshot(other), _plateau_state(p2), p2.scales)
    for sd in corrupt:
        with pytest.raises((ValueError, TypeError)):
            other.load_state_dict(sd)
        assert (snapshot(other), _plateau_state(p2), p2.scales) == before


# ---------------------------------------------------------------------------------------
# 5. resume bit-identically; corrupted checkpoints
# ---------------------------------------------------------------------------------------
N_RESUME = 30
BAD_AT = (5, 20)        # steps whose grads hold a NaN (skipped)


def _resume_opt(name, params):
    kw = dict(RICH[name])
    lr = kw.pop("lr")
    groups = [dict(params=params[:3], **scheduled(name, S.join([S.linear(lr, start_factor=0.1,
                                                                        total_steps=5),
                                                               S.cosine(lr, 25)], [5]), lr)),
              dict(params=params[3:], **scheduled(name, S.step_decay(lr / 2, 10, 0.5), lr / 2))]
    return getattr(fastlr, name)(groups, **kw, max_grad_norm=2.0, skip_nonfinite=True)


def _resume_grads(params):
    grads = mixed_grads(params, N_RESUME, seed=12)
    for t in BAD_AT:
        grads[t][2][1, 2] = np.nan if t == BAD_AT[0] else np.inf
    return grads


def _clone_mixed(params):
    flat, (a, b) = fastlr.flat_buffer([(4, 3), (5,)], np.float64)
    a[...] = params[0]
    b[...] = params[1]
    return [a, b] + [p.copy(order="A") for p in params[2:]]


@all_ids
@pytest.mark.parametrize("via", ["state_dict", "save"])
def test_resume_is_bit_identical(name, via, tmp_path):
    params = mixed_problem(seed=12)
    grads = _resume_grads(params)
    opt = _resume_opt(name, params)
    ck = None
    returns = []
    for t in range(N_RESUME):
        if t == 13:
            ck = (_clone_mixed(params), opt.state_dict())
            opt.save(tmp_path / "ck.npz")
        returns.append(opt.step(grads[t]))
    assert returns == [t not in BAD_AT for t in range(N_RESUME)]
    assert opt.skipped_steps == 2 and opt.steps == N_RESUME - 2
    params2, sd = ck
    # the state dict holds copies: the run that went on did not change it
    assert sd["steps"] == 12 and sd["skipped_steps"] == 1
    opt2 = _resume_opt(name, params2)
    if via == "state_dict":
        opt2.load_state_dict(sd)
    else:
        opt2.load(tmp_path / "ck.npz")
    assert opt2.steps == 12 and opt2.skipped_steps == 1
    for t in range(13, N_RESUME):
        assert opt2.step(grads[t]) is (t not in BAD_AT)
    assert_same_optimizer(opt, opt2, f"{name} resumed via {via}")
    assert opt2.last_grad_norm == opt.last_grad_norm
    assert opt2.skipped_steps == 2
    # the flat-buffer views are still views of one buffer, updated in place
    assert np.shares_memory(params2[0].base, params2[1])


def _nadam_trained():
    params = mixed_problem(seed=14)
    opt = _resume_opt("NAdam", params)
    for g in mixed_grads(params, 4, seed=14):
        opt.step(g)
    return opt


def test_asgd_negative_eta_raises_with_its_rule():
    w = np.ones(4)
    opt = fastlr.ASGD([w], lr=0.1)
    opt.step([np.ones(4)])
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["eta"] = -1.0
    with pytest.raises(ValueError, match=r"ASGD\.load_state_dict: state\[0\]\['eta'\] must be "
                                         r"a finite number >= 0, got -1\.0$"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("corrupt", ["missing", "2.0", "-0.5", "nan", "string", "array2"])
def test_nadam_corrupted_mu_product_raises(corrupt, tmp_path):
    src = _nadam_trained()
    sd = copy.deepcopy(src.state_dict())
    if corrupt == "missing":
        del sd["state"][2]["mu_product"]
    else:
        sd["state"][2]["mu_product"] = {"2.0": 2.0, "-0.5": -0.5, "nan": float("nan"),
                                        "string": "0.5",
                                        "array2": np.array([0.5, 0.5])}[corrupt]
    target = _nadam_trained()
    for g in mixed_grads(all_params(target), 1, seed=15):
        target.step(g)                              # differs from the checkpoint
    snap = snapshot(target)
    with pytest.raises(ValueError, match="mu_product" if corrupt == "missing" else
                       r"\['mu_product'\] must be a number in \[0, 1\], got"):
        target.load_state_dict(sd)
    assert_unchanged(target, snap, corrupt)
    # the same through a .npz file
    src.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz", allow_pickle=False) as data:
        files = {k: data[k] for k in data.files}
    if corrupt == "missing":
        del files["state/2/mu_product"]
    elif corrupt in ("2.0", "-0.5", "nan"):
        files["state/2/mu_product"] = np.array(float(corrupt))
    else:
        return
    np.savez(tmp_path / "bad.npz", **files)
    with pytest.raises(ValueError):
        target.load(tmp_path / "bad.npz")
    assert_unchanged(target, snap, f"{corrupt} (npz)")


def test_corrupted_checkpoints_raise_and_change_nothing():
    src = _nadam_trained()
    good = src.state_dict()
    edits = {
        "negative step": lambda sd: sd["state"][0].__setitem__("step", -1),
        "negative steps": lambda sd: sd.__setitem__("steps", -3),
        "float steps": lambda sd: sd.__setitem__("steps", 2.5),
        "negative skipped_steps": lambda sd: sd.__setitem__("skipped_steps", -1),
        "wrong buffer shape": lambda sd: sd["state"][3].__setitem__("exp_avg", np.zeros(2)),
        "missing buffer": lambda sd: sd["state"][1].pop("exp_avg_sq"),
        "unknown buffer": lambda sd: sd["state"][1].__setitem__("momentum_buffer",
                                                                np.zeros(5)),
        "missing param state": lambda sd: sd["state"].pop(3),
        "lr_scale length": lambda sd: sd.__setitem__("lr_scale", [1.0]),
        "bad hyperparameter": lambda sd: sd["param_groups"][1].__setitem__("eps", -1.0),
        "unknown hyperparameter": lambda sd: sd["param_groups"][0].__setitem__("rho", 0.9),
        "bad plateau": lambda sd: sd.__setitem__("plateau", {"mode": "min"}),
    }
    target = _nadam_trained()
    target.step(mixed_grads(all_params(target), 1, seed=16)[0])
    snap = snapshot(target)
    for what, edit in edits.items():
        sd = copy.deepcopy(good)
        edit(sd)
        with pytest.raises((ValueError, TypeError)):
            target.load_state_dict(sd)
        assert_unchanged(target, snap, what)
    target.load_state_dict(good)
    sa, sb = snapshot(target), snapshot(src)
    del sa["params"], sb["params"]          # params are not part of a checkpoint
    assert sa == sb


# ---------------------------------------------------------------------------------------
# classes come from the table: a new row of an existing family is a working class
# ---------------------------------------------------------------------------------------
def test_classes_are_the_tables():
    from fastlr.optim import families
    assert list(families.CLASSES) == list(_specs.OPTIMIZERS)
    for name, cls in families.CLASSES.items():
        row = _specs.OPTIMIZERS[name]
        assert getattr(fastlr, name) is cls and cls.__name__ == name
        assert cls._kernel == row.family
        assert cls._slots == tuple(s.name for s in _specs.FAMILIES[row.family].state)
        assert row.doc in cls.__doc__
        sig = inspect.signature(cls.__init__).parameters
        assert list(sig)[:2] == ["self", "params"] and "n_threads" in sig
        for key in row.fixed:
            assert key not in sig


def test_a_new_row_makes_a_working_class():
    """A row the table does not have (NAdam with decoupled weight decay fixed, as AdamW is
    to Adam) gives a class that steps as NAdam(decoupled_weight_decay=True) does."""
    from fastlr.optim import families
    row = _specs.Optimizer("NAdamW", "nadam", "nadam", "torch.optim.NAdam", "NAdamW",
                           defaults={"lr": 2e-3, "weight_decay": 1e-2},
                           fixed={"decoupled_weight_decay": True})
    cls = families._make_class(row, (fastlr.NAdam,))
    sig = inspect.signature(cls.__init__).parameters
    assert "decoupled_weight_decay" not in sig and sig["weight_decay"].default == 1e-2
    a, b = np.ones(5), np.ones(5)
    mine = cls([a], lr=0.1)
    want = fastlr.NAdam([b], lr=0.1, weight_decay=1e-2, decoupled_weight_decay=True)
    assert mine.defaults == want.defaults
    for t in range(3):
        g = np.linspace(-1, 1, 5) * (t + 1)
        mine.step([g])
        want.step([g.copy()])
    np.testing.assert_array_equal(a, b)
    assert mine.state[0]["mu_product"] == want.state[0]["mu_product"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_rprop_step_size_starts_at_the_lr_of_the_first_update(torch, dtype):
    """torch creates Rprop's step_size (filled with the group's lr) at a param's first
    update: an lr written before it counts, one written after it does not (lr is no
    longer read); a group added later starts at its own lr."""
    p0 = np.linspace(-1.0, 1.0, 6).astype(dtype)
    grads = [np.sin(np.arange(6) + t).astype(dtype) for t in range(6)]
    with torch_default_dtype(torch, dtype):
        p, q = p0.copy(), p0[:3].copy()
        opt = fastlr.Rprop([p], lr=0.01)
        tp = torch.nn.Parameter(torch.tensor(p0))
        tq = torch.nn.Parameter(torch.tensor(p0[:3]))
        topt = torch.optim.Rprop([tp], lr=0.01, foreach=False)
        for t, g in enumerate(grads):
            lr = {0: 0.3, 2: 0.05}.get(t)
            if lr is not None:
                opt.param_groups[0]["lr"] = topt.param_groups[0]["lr"] = lr
            if t == 3:
                opt.add_param_group({"params": [q], "lr": 0.02})
                topt.add_param_group({"params": [tq], "lr": 0.02})
                opt.param_groups[1]["lr"] = topt.param_groups[1]["lr"] = 0.7
            if t >= 3:
                opt.step([g, g[:3]])
                tq.grad = torch.tensor(g[:3])
            else:
                opt.step([g])
            tp.grad = torch.tensor(g)
            topt.step()
            for mine, theirs in ((p, tp), (q, tq)):
                np.testing.assert_array_equal(mine, theirs.detach().numpy())
            np.testing.assert_array_equal(opt.state[0]["step_size"],
                                          topt.state[tp]["step_size"].numpy())
    assert opt.state[1]["step_size"].max() > 0.5       # from lr=0.7, not 0.02


@pytest.mark.parametrize("value", [S.cosine(0.1, 10), lambda t: 0.1])
def test_rprop_lr_takes_no_schedule(value):
    with pytest.raises(TypeError, match=r"fastlr\.Rprop: lr must be a number, not a "
                                        r"schedule: it only sets where"):
        fastlr.Rprop([np.ones(2)], lr=value)
    opt = fastlr.Rprop([np.ones(2)], etas=(S.cosine(0.5, 10, end=0.3), 1.2))
    with pytest.raises(TypeError, match=r"\['lr'\] must be a number, not a schedule"):
        opt.param_groups[0]["lr"] = value
    assert opt.param_groups[0]["lr"] == 0.01
