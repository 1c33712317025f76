"""fastlr.LAMB and fastlr.LARS (optax's definitions) and their kernels.

1. One step computed by hand from optax's formulas (scalar math, no NumPy twin): the trust
   ratio ``|p| / |u|`` (LARS: ``tc |p| / (|u| + eps)``), 1 when either norm is 0, weight
   decay, the masks, Nesterov -- for the classes, the compiled kernels and the twins.
2. The compiled step against its NumPy twin (``step_reference``, fastlr.reference.layerwise,
   no code shared): 100 steps, params of several shapes (0, 1, odd, 2-D F-ordered, 3-D, one
   past a 16K reduction block and past the threading threshold), param groups with their
   own hyperparameters and masks, lr and weight decay schedules, 1 and 2 threads: float64
   max |kernel - twin| <= 1e-10 * max(1, max|p|), float32 <= 1e-4 * max(1, max|p|), params
   and state. (The twin was checked against optax 0.2.8 itself, float64 with jax x64, 100
   steps: max relative difference 6e-16; see docs/layerwise.rst.)
3. The norms' fixed blocks: the same bits for 1, 2 and 3 threads.
4. Checkpoints: state_dict / load_state_dict and save / load resume bit for bit; a
   differing hyperparameter raises (strict=False warns).
5. Arguments: wrong kinds are TypeError, wrong values ValueError, messages start with the
   public name; bad grads and schedules raise before anything is written.
"""

import math
import os

import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr._core import layerwise as kernels
from fastlr.reference import layerwise as twins

DTYPES = [np.float64, np.float32]
N_STEPS = 100


def _tol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-4


def _close(a, b, dtype):
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.size:
        assert float(np.max(np.abs(a.astype(np.float64) - b))) <= _tol(dtype) * scale


# ---------------------------------------------------------------------------------------
# 1. one step by hand
# ---------------------------------------------------------------------------------------
def _lamb_by_hand(p, g, lr, wd=0.0, eps=1e-6):
    """optax.lamb's first step: m_hat = g, v_hat = g^2, u = g / (|g| + eps) + wd p."""
    u = [gi / (abs(gi) + eps) + wd * pi for pi, gi in zip(p, g)]
    pn = math.sqrt(sum(x * x for x in p))
    un = math.sqrt(sum(x * x for x in u))
    r = 1.0 if pn == 0.0 or un == 0.0 else pn / un
    return [pi - lr * r * ui for pi, ui in zip(p, u)], r


@pytest.mark.parametrize("p, g, wd", [([3.0, 4.0], [2.0, -1.0], 0.0),
                                      ([3.0, 4.0], [2.0, -1.0], 0.1),
                                      ([0.0, 0.0], [1.0, 3.0], 0.0),     # |p| = 0: r = 1
                                      ([1.0, -2.0], [0.0, 0.0], 0.0)])   # |u| = 0: r = 1
def test_lamb_one_step_by_hand(p, g, wd):
    want, ratio = _lamb_by_hand(p, g, lr=0.1, wd=wd)
    w = np.array(p)
    opt = fastlr.LAMB([w], lr=0.1, weight_decay=wd)
    opt.step([np.array(g)])
    np.testing.assert_allclose(w, want, rtol=1e-14, atol=1e-15)
    assert opt.trust_ratios[0] == pytest.approx(ratio, rel=1e-14)
    for fn in (kernels.lamb, twins.lamb):
        w = np.array(p)
        r = fn(w, np.array(g), np.zeros(2), np.zeros(2), lr=0.1, weight_decay=wd, step=1)
        np.testing.assert_allclose(w, want, rtol=1e-14, atol=1e-15)
        assert r == pytest.approx(ratio, rel=1e-14)


def test_lamb_weight_decay_mask_is_no_weight_decay():
    w1, w2 = np.array([3.0, 4.0]), np.array([3.0, 4.0])
    fastlr.LAMB([{"params": [w1], "weight_decay_mask": False}], lr=0.1,
                weight_decay=0.5).step([np.array([2.0, -1.0])])
    fastlr.LAMB([w2], lr=0.1).step([np.array([2.0, -1.0])])
    assert np.array_equal(w1, w2)
    want, _ = _lamb_by_hand([3.0, 4.0], [2.0, -1.0], lr=0.1)
    np.testing.assert_allclose(w1, want, rtol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("mask", [True, False])
def test_lars_two_steps_by_hand(nesterov, mask):
    lr, mom, tc, wd, eps = 0.1, 0.9, 0.01, 0.05, 1e-3
    p, b = [3.0, 4.0], [0.0, 0.0]
    grads = [[0.6, 0.8], [-0.2, 0.5]]
    w = np.array(p)
    opt = fastlr.LARS([w], lr=lr, momentum=mom, weight_decay=wd, trust_coefficient=tc,
                      eps=eps, nesterov=nesterov, trust_ratio_mask=mask)
    for g in grads:
        u = [gi + wd * pi for pi, gi in zip(p, g)]
        pn = math.sqrt(sum(x * x for x in p))
        un = math.sqrt(sum(x * x for x in u))
        r = tc * pn / (un + eps) if mask else 1.0
        s = [lr * r * ui for ui in u]
        b = [si + mom * bi for si, bi in zip(s, b)]
        step = [si + mom * bi for si, bi in zip(s, b)] if nesterov else b
        p = [pi - di for pi, di in zip(p, step)]
        opt.step([np.array(g)])
        np.testing.assert_allclose(w, p, rtol=1e-14)
        np.testing.assert_allclose(opt.state[0]["momentum_buffer"], b, rtol=1e-14)
        assert opt.trust_ratios[0] == pytest.approx(r, rel=1e-14)


@pytest.mark.parametrize("p, g", [([0.0, 0.0], [1.0, 2.0]), ([1.0, 2.0], [0.0, 0.0])])
def test_lars_zero_norm_ratio_is_one(p, g):
    for fn in (kernels.lars, twins.lars):
        w, buf = np.array(p), np.zeros(2)
        r = fn(w, np.array(g), buf, lr=0.5, trust_coefficient=0.001, eps=1e-3)
        assert r == 1.0
        np.testing.assert_allclose(w, np.array(p) - 0.5 * np.array(g), rtol=1e-15)


def test_lars_weight_decay_mask():
    w1, w2 = np.array([3.0, 4.0]), np.array([3.0, 4.0])
    g = np.array([0.6, 0.8])
    fastlr.LARS([{"params": [w1], "weight_decay_mask": False}], lr=0.1,
                weight_decay=0.5).step([g])
    fastlr.LARS([w2], lr=0.1).step([g])
    assert np.array_equal(w1, w2)


# ---------------------------------------------------------------------------------------
# 2. the compiled step against its NumPy twin
# ---------------------------------------------------------------------------------------
SHAPES = [(0,), (1,), (7,), ((6, 5), "F"), (2, 3, 4), (40_001,)]


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in SHAPES:
        shape, order = (s if isinstance(s[-1], str) else (s, "C"))
        out.append(np.asarray(rng.standard_normal(shape), dtype=dtype, order=order))
    out[1][...] = 0.0                       # a zero param: the trust ratio starts at 1
    return out


def _groups(cls, params):
    """Three groups with their own hyperparameters and masks (optax's masks as groups)."""
    if cls is fastlr.LAMB:
        return [{"params": params[:2], "weight_decay_mask": False},
                {"params": params[2:4], "betas": (0.8, 0.99), "eps": 1e-8, "eps_root": 1e-12},
                {"params": params[4:], "weight_decay": schedules.exponential(0.02, 0.97)}]
    return [{"params": params[:2], "weight_decay_mask": False, "trust_ratio_mask": False},
            {"params": params[2:4], "nesterov": True, "eps": 1e-6, "momentum": 0.5},
            {"params": params[4:], "weight_decay": schedules.exponential(2e-3, 0.97),
             "trust_coefficient": 0.02}]


LR = {fastlr.LAMB: schedules.cosine(0.01, N_STEPS, end=1e-4),
      fastlr.LARS: schedules.warmup_cosine(0.5, warmup_steps=10,
                                                      total_steps=N_STEPS)}


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [fastlr.LAMB, fastlr.LARS])
def test_kernel_matches_twin_100_steps(cls, dtype, n_threads):
    a, b = _params(dtype), _params(dtype)
    kw = dict(weight_decay=1e-3) if cls is fastlr.LARS else dict(weight_decay=0.01)
    fast = cls(_groups(cls, a), lr=LR[cls], n_threads=n_threads, **kw)
    slow = cls(_groups(cls, b), lr=LR[cls], **kw)
    rng = np.random.default_rng(1)
    for t in range(N_STEPS):
        grads = [np.empty_like(p) for p in a]           # each in its param's layout
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        fast.step(grads)
        slow.step_reference(grads)
        np.testing.assert_allclose(fast.trust_ratios, slow.trust_ratios,
                                   rtol=_tol(dtype) * 10)
    for pa, pb in zip(a, b):
        _close(pa, pb, dtype)
    for sa, sb in zip(fast.state.values(), slow.state.values()):
        assert sa["step"] == sb["step"] == N_STEPS
        for k in cls._slots:
            _close(sa[k], sb[k], dtype)
    assert fast.last_lr == slow.last_lr
    assert fast.steps == N_STEPS
    assert any(r != 1.0 for r in fast.trust_ratios) and 1.0 in fast.trust_ratios


def test_kernel_functions_match_twins():
    rng = np.random.default_rng(3)
    for dtype in DTYPES:
        for order in "CF":
            p = np.asarray(rng.standard_normal((33, 17)), dtype=dtype, order=order)
            q = p.copy(order="K")
            m, v, m2, v2 = (np.zeros_like(p) for _ in range(4))
            b, b2 = np.zeros_like(p), np.zeros_like(p)
            r, r2 = p.copy(order="K"), p.copy(order="K")
            for k in range(1, 21):
                g = np.asarray(rng.standard_normal(p.shape), dtype=dtype, order=order)
                g.flags.writeable = False                   # grads may be read-only
                kernels.lamb(p, g, m, v, lr=0.01, weight_decay=0.1, step=k)
                twins.lamb(q, g, m2, v2, lr=0.01, weight_decay=0.1, step=k)
                kernels.lars(r, g, b, lr=0.3, weight_decay=1e-3, nesterov=k % 2 == 0)
                twins.lars(r2, g, b2, lr=0.3, weight_decay=1e-3, nesterov=k % 2 == 0)
            for x, y in ((p, q), (m, m2), (v, v2), (r, r2), (b, b2)):
                _close(x, y, dtype)


# ---------------------------------------------------------------------------------------
# 3. threads: the same bits
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [fastlr.LAMB, fastlr.LARS])
def test_same_bits_for_any_thread_count(cls):
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(n).astype(np.float32) for n in (200_003, 70_000, 5)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in init]
             for _ in range(4)]
    runs = []
    for n_threads in (1, 2, 3):
        params = [p.copy() for p in init]
        opt = cls(params, lr=0.01, n_threads=n_threads)
        for g in grads:
            opt.step(g)
        runs.append((params, opt.trust_ratios))
    for params, ratios in runs[1:]:
        assert ratios == runs[0][1]
        assert all(np.array_equal(x, y) for x, y in zip(params, runs[0][0]))


# ---------------------------------------------------------------------------------------
# 4. schedules, groups, names, checkpoints
# ---------------------------------------------------------------------------------------
def test_schedules_and_callables():
    w = np.ones(3)
    opt = fastlr.LAMB([w], lr=lambda t: 0.1 / (t + 1), weight_decay=schedules.constant(0.0))
    assert opt.next_lr == [0.1]
    opt.step([np.ones(3)])
    assert opt.last_lr == [0.1] and opt.next_lr == [0.05]
    opt.param_groups[0]["lr"] = 0.3
    assert opt.next_lr == [0.3]


def test_add_param_group_and_named_params():
    a, b = np.ones(4), np.full(3, 2.0)
    opt = fastlr.LARS({"w": a}, lr=0.1)
    opt.add_param_group({"params": {"b": b}, "lr": 0.2, "trust_ratio_mask": False})
    opt.step({"b": np.ones(3), "w": np.ones(4)})
    np.testing.assert_allclose(b, 2.0 - 0.2)
    assert opt.state[1]["step"] == 1 and opt.trust_ratios[1] == 1.0
    with pytest.raises(ValueError, match="fastlr.LARS.step"):
        opt.step({"w": np.ones(4)})


def test_repr_lists_groups_and_masks():
    text = repr(fastlr.LARS([{"params": [np.ones(2)], "trust_ratio_mask": False}]))
    assert text.startswith("LARS (") and "trust_ratio_mask: False" in text


@pytest.mark.parametrize("cls", [fastlr.LAMB, fastlr.LARS])
def test_checkpoint_round_trip(cls, tmp_path):
    rng = np.random.default_rng(2)
    grads = [[rng.standard_normal(s) for s in ((5,), (3, 2))] for _ in range(10)]

    def make(params, lr=schedules.exponential(0.05, 0.9)):
        return cls([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.01,
                                             "weight_decay_mask": False}], lr=lr)

    ref = [np.ones(5), np.ones((3, 2))]
    opt = make(ref)
    for g in grads:
        opt.step(g)
    a = [np.ones(5), np.ones((3, 2))]
    first = make(a)
    for g in grads[:4]:
        first.step(g)
    sd = first.state_dict()
    path = os.path.join(tmp_path, "opt.npz")
    first.save(path)
    for resume in ("dict", "file"):
        b = [x.copy() for x in a]
        second = make(b)
        if resume == "dict":
            second.load_state_dict(sd)
        else:
            second.load(path)
        assert second.steps == 4 and second.last_lr == first.last_lr
        for g in grads[4:]:
            second.step(g)
        assert all(np.array_equal(x, y) for x, y in zip(b, ref))
    other = make([np.ones(5), np.ones((3, 2))], lr=0.05)
    with pytest.raises(ValueError, match="recorded other hyperparameters"):
        other.load_state_dict(sd)
    with pytest.warns(UserWarning):
        other.load_state_dict(sd, strict=False)
    assert other.steps == 4


# ---------------------------------------------------------------------------------------
# 5. arguments
# ---------------------------------------------------------------------------------------
REAL_BAD = [("0.5", TypeError), (True, TypeError), ([0.5], TypeError),
            (np.array([0.5]), TypeError), (math.nan, ValueError), (math.inf, ValueError),
            (-0.5, ValueError)]
FLAG_BAD = [("yes", TypeError), (1.0, TypeError), (2, ValueError), (None, TypeError)]
HYPERS = {fastlr.LAMB: {"lr": REAL_BAD, "eps": REAL_BAD, "eps_root": REAL_BAD,
                        "weight_decay": REAL_BAD, "weight_decay_mask": FLAG_BAD,
                        "betas": [((1.0, 0.9), ValueError), ((0.9, -0.1), ValueError),
                                  (0.9, TypeError), (("a", 0.9), TypeError)]},
          fastlr.LARS: {"lr": REAL_BAD, "momentum": REAL_BAD, "weight_decay": REAL_BAD,
                        "trust_coefficient": REAL_BAD, "eps": REAL_BAD,
                        "nesterov": FLAG_BAD, "weight_decay_mask": FLAG_BAD,
                        "trust_ratio_mask": FLAG_BAD}}
CASES = [(cls, key, value, exc) for cls, table in HYPERS.items()
         for key, bad in table.items() for value, exc in bad]


@pytest.mark.parametrize("cls, key, value, exc", CASES)
def test_bad_hyperparameter(cls, key, value, exc):
    name = f"fastlr.{cls.__name__}"
    named = "beta" if key == "betas" else key       # a pair's message names the slot
    with pytest.raises(exc, match=rf"^{name}: .*{named}"):
        cls([np.ones(2)], **{key: value})
    with pytest.raises(exc, match=rf"^{name}: .*{named}"):
        cls([{"params": [np.ones(2)], key: value}])
    opt = cls([np.ones(2)])
    before = dict(opt.param_groups[0])
    with pytest.raises(exc):
        opt.param_groups[0][key] = value
    assert opt.param_groups[0] == before


@pytest.mark.parametrize("cls", [fastlr.LAMB, fastlr.LARS])
def test_bad_threads_and_params(cls):
    name = f"fastlr.{cls.__name__}"
    for value, exc in [(0, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match=rf"^{name}: n_threads"):
            cls([np.ones(2)], n_threads=value)
    with pytest.raises(TypeError, match=rf"^{name}: .*float32 or float64"):
        cls([np.ones(2, dtype=np.int64)])
    x = np.ones(4)
    with pytest.raises(ValueError, match="overlap"):
        cls([x[:3], x[1:]])
    with pytest.raises(ValueError, match="read-only"):
        ro = np.ones(2)
        ro.flags.writeable = False
        cls([ro])


def _snapshot(opt):
    return ([p.copy() for p in opt.params],
            {i: {k: np.array(v, copy=True) for k, v in st.items()}
             for i, st in opt.state.items()}, opt.steps)


def _unchanged(opt, snap):
    params, state, steps = _snapshot(opt)
    assert steps == snap[2]
    assert all(np.array_equal(a, b) for a, b in zip(params, snap[0]))
    for i in state:
        assert all(np.array_equal(state[i][k], snap[1][i][k]) for k in state[i])


@pytest.mark.parametrize("cls", [fastlr.LAMB, fastlr.LARS])
def test_bad_grads_change_nothing(cls):
    params = [np.ones(3), np.ones((2, 2))]
    opt = cls(params, lr=0.1)
    opt.step([np.ones(3), np.ones((2, 2))])
    snap = _snapshot(opt)
    name = f"fastlr.{cls.__name__}.step"
    bad = [([np.ones(3)], ValueError, "grads"),
           ([np.ones(3), np.ones(4)], ValueError, r"grads\[1\]"),
           ([np.ones(3), np.ones((2, 2), dtype=np.float32)], TypeError, r"grads\[1\]"),
           ([np.ones(3), np.ones((2, 2), order="F")[:, :1]], ValueError, r"grads\[1\]"),
           ([np.ones(3), [[1.0, 1.0], [1.0, 1.0]]], TypeError, r"grads\[1\]"),
           (np.ones(3), ValueError, "the flat grad buffer has 3 elements"),
           (np.ones((3, 1)), ValueError, r"grads has shape \(3, 1\) but one grad array"),
           (iter([np.ones(3), np.ones((2, 2))]), TypeError, "grads must be a list"),
           ([params[0], np.ones((2, 2))], ValueError, "overlaps"),
           ([np.ones(3), opt.state[1][cls._slots[0]]], ValueError, "overlaps")]
    for grads, exc, what in bad:
        with pytest.raises(exc, match=rf"^{name}: .*{what}"):
            opt.step(grads)
        _unchanged(opt, snap)


@pytest.mark.parametrize("cls", [fastlr.LAMB, fastlr.LARS])
def test_bad_schedule_value_changes_nothing(cls):
    opt = cls([np.ones(3)], lr=lambda t: 0.1 if t < 1 else -1.0)
    opt.step([np.ones(3)])
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=rf"^fastlr.{cls.__name__}.step: .*'lr'.*step 1"):
        opt.step([np.ones(3)])
    _unchanged(opt, snap)


def test_kernel_arguments():
    p, g, m, v = (np.ones(4) for _ in range(4))
    name = "fastlr._core.layerwise.lamb"
    with pytest.raises(ValueError, match=rf"^{name}: step"):
        kernels.lamb(p, g, m, v, lr=0.1, step=0)
    with pytest.raises(ValueError, match=rf"^{name}: beta2"):
        kernels.lamb(p, g, m, v, lr=0.1, beta2=1.0, step=1)
    with pytest.raises(ValueError, match=rf"^{name}: param and exp_avg overlap"):
        kernels.lamb(p, g, p, v, lr=0.1, step=1)
    with pytest.raises(TypeError, match=r"^fastlr._core.layerwise.lars: grad must"):
        kernels.lars(p, [1.0] * 4, m, lr=0.1)
    with pytest.raises(TypeError, match=r"^fastlr._core.layerwise.lars: nesterov"):
        kernels.lars(p, g, m, lr=0.1, nesterov="no")
    assert np.array_equal(p, np.ones(4)) and np.array_equal(m, np.ones(4))


def test_checkpoint_without_last_lr_takes_it_from_the_schedule():
    lr = schedules.exponential(0.1, 0.5)
    opt = fastlr.LAMB([np.ones(3)], lr=lr)
    for _ in range(3):
        opt.step([np.ones(3)])
    sd = opt.state_dict()
    del sd["last_lr"]                       # as a hand-made or older state dict
    other = fastlr.LAMB([np.ones(3)], lr=lr)
    other.load_state_dict(sd)
    assert other.steps == 3 and other.last_lr == [lr(2)] == opt.last_lr
    assert other.next_lr == [lr(3)]
