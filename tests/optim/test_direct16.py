"""master_weights=False in the optimizers of the table other than Adam/AdamW
(fastlr/optim/direct16.py): the float32 kernel on the 16-bit param's widened values, chunk
by chunk, then stochastic rounding with adam_mixed's random bits."""

import itertools

import numpy as np
import pytest

import fastlr
from fastlr import kernels
from fastlr._core import dispatch
from fastlr._core.engine import Engine
from fastlr.optim import direct16
from fastlr.reference.mixed import round_stochastic_into as round_twin

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = ml_dtypes.bfloat16
MIXED = dispatch.module("mixed")

NAMES = ["SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "Lion",
         "Rprop", "ASGD"]
OPTIONS = {"SGD": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
           "RMSprop": dict(momentum=0.5, centered=True, weight_decay=0.01),
           "Adagrad": dict(lr_decay=0.01, initial_accumulator_value=0.1),
           "NAdam": dict(decoupled_weight_decay=True, weight_decay=0.1),
           "RAdam": dict(weight_decay=0.1),
           "Lion": dict(lr=1e-3, weight_decay=0.1),
           "Rprop": dict(maximize=True)}


def _params(rng, dtype):
    """16-bit params of awkward shapes and layouts, with float32 and float64 ones beside."""
    f = np.asfortranarray(rng.standard_normal((30, 7)).astype(dtype))
    return [rng.standard_normal(5).astype(dtype), f, np.array(0.5, dtype),
            np.zeros(0, dtype), rng.standard_normal(300).astype(np.float32),
            rng.standard_normal(4)]


def _grads(rng, params, wide):
    out = []
    for p in params:
        dt = np.float32 if (wide and p.dtype.itemsize == 2) else p.dtype
        g = np.asarray(rng.standard_normal(p.shape) * 0.3).astype(dt)
        out.append(np.asfortranarray(g) if p.flags.f_contiguous and p.ndim > 1 else g)
    return out


def _same(a, b):
    return a.dtype == b.dtype and a.tobytes(order="A") == b.tobytes(order="A")


@pytest.mark.parametrize("name,dtype", list(itertools.product(NAMES, [np.float16, BF16])))
def test_step_matches_its_twin_bit_for_bit(name, dtype):
    rng = np.random.default_rng(len(name))
    a = _params(rng, dtype)
    b = [p.copy(order="A") for p in a]
    kw = dict(dict(lr=0.01), **OPTIONS.get(name, {}))
    lr = kw.pop("lr")   # (Rprop's lr only fills its step sizes: a number)
    sched = lr if name == "Rprop" else fastlr.schedules.cosine(lr, 10)
    groups = lambda ps: [{"params": ps[:3], "lr": sched}, {"params": ps[3:]}]  # noqa: E731
    o1 = getattr(fastlr, name)(groups(a), lr=0.02, master_weights=False, n_threads=2,
                               max_grad_norm=1.5, **kw)
    o2 = getattr(fastlr, name)(groups(b), lr=0.02, master_weights=False,
                               max_grad_norm=1.5, **kw)
    # the step engine steps the 16-bit params itself (fastlr/_core/master16.pxd); the
    # front runs their twin, the chunked passes of direct16.py
    assert type(o1._engine) is Engine and type(o1._fused16) is direct16.Direct16Step
    for t in range(5):
        g = _grads(rng, a, wide=t % 2 == 1)
        if t == 2:
            g = [np.asarray(x * x.dtype.type(20)) for x in g]      # clipped
        o1.step(g)
        o2.step_reference([x.copy(order="A") for x in g])
    # (float64 params: the float64 kernels are within an ulp of their twins)
    for i, (p, q) in enumerate(zip(a, b)):
        assert _same(p, q) if p.dtype != np.float64 else np.allclose(p, q, 1e-13, 0)
        for k, v in o1.state[i].items():
            w = o2.state[i][k]
            assert (np.array_equal(v, w) if p.dtype != np.float64
                    else np.allclose(v, w, 1e-13, 1e-300)), (i, k)
    assert o1.params[0] is a[0] and "master" not in o1.state_dict()
    assert o1.state[0]["step"] == 5 and o1.last_lr == o2.last_lr


@pytest.mark.parametrize("name", NAMES)
def test_update_is_the_float32_kernel_then_stochastic_rounding(name):
    """Each step: the table's float32 kernel on the widened param (state float32), then
    the param rounded stochastically with adam_mixed's random bits."""
    rng = np.random.default_rng(7)
    p = rng.standard_normal(1000).astype(BF16)
    opt = getattr(fastlr, name)([p], **dict(dict(lr=0.01), **OPTIONS.get(name, {})),
                                master_weights=False)
    for _ in range(3):
        g = (rng.standard_normal(1000) * 0.1).astype(BF16)
        w = p.astype(np.float32)
        st = {k: v.copy() for k, v in opt.state[0].items() if isinstance(v, np.ndarray)}
        kwargs = opt._reference_kwargs(opt.param_groups[0], opt._values_at(opt.steps)[0], 0)
        kwargs.update(st)
        if name == "SGD":
            opt._started[0] = 0 if opt.steps == 0 else 1    # (_reference_kwargs marks it)
        getattr(kernels, opt._kernel)(w, g.astype(np.float32), **kwargs)
        want = p.view(np.uint16).copy()
        round_twin(want, w, g.view(np.uint16), opt.steps + 1, True)
        opt.step([g])
        assert np.array_equal(p.view(np.uint16), want)
        for k in st:
            assert np.array_equal(opt.state[0][k], st[k])


def test_chunks_give_the_bits_of_one_call(monkeypatch):
    rng = np.random.default_rng(3)
    n = 2 * direct16.CHUNK + 123
    a = rng.standard_normal(n).astype(np.float16)
    b = a.copy()
    gs = [(rng.standard_normal(n) * 0.1).astype(np.float16) for _ in range(3)]
    o1 = fastlr.RMSprop([a], lr=1e-3, momentum=0.9, master_weights=False)
    for g in gs:
        o1.step([g])
    monkeypatch.setattr(direct16, "CHUNK", 4 * n)
    o2 = fastlr.RMSprop([b], lr=1e-3, momentum=0.9, master_weights=False)
    for g in gs:
        o2.step([g])
    assert _same(a, b)
    assert np.array_equal(o1.state[0]["momentum_buffer"], o2.state[0]["momentum_buffer"])


def test_tiny_updates_are_not_lost():
    """Steps below half a bfloat16 ulp, which rounding to nearest would drop: the params
    move by the expected amount on average."""
    n = 20000
    w = np.ones(n, BF16)
    opt = fastlr.SGD([w], lr=1e-4, master_weights=False)
    g = np.random.default_rng(0).uniform(0.5, 1.5, n).astype(BF16)
    for _ in range(20):
        opt.step([g])
    moved = 1.0 - w.astype(np.float64)
    want = 20e-4 * g.astype(np.float64).mean()    # the float32 trajectory's
    assert abs(moved.mean() - want) < 0.05 * want
    nearest = np.ones(n, BF16)
    np.subtract(nearest, np.float32(1e-4), out=nearest, casting="unsafe")
    assert (nearest == 1).all()                  # (what rounding to nearest would give)


def test_the_rounding_is_adam_mixeds():
    """round_stochastic_into after the float32 Adam kernel gives adam_mixed's bits (no
    master): the optimizers share one rounding."""
    rng = np.random.default_rng(11)
    for dtype in (np.float16, BF16):
        p = rng.standard_normal(3000).astype(dtype)
        g = (rng.standard_normal(3000) * 0.2).astype(dtype)
        m = np.zeros(3000, np.float32)
        v = np.zeros(3000, np.float32)
        q, m2, v2 = p.copy(), m.copy(), v.copy()
        kernels.adam_mixed(p, g, m, v, step=3, lr=0.01, weight_decay=0.1,
                           decoupled_weight_decay=True)
        w = q.astype(np.float32)
        kernels.adam(w, g.astype(np.float32), m2, v2, step=3, lr=0.01, weight_decay=0.1,
                     decoupled_weight_decay=True)
        MIXED.round_stochastic_into(q.view(np.uint16), w, g.view(np.uint16), 3,
                                    dtype is BF16)
        assert _same(p, q) and np.array_equal(m, m2) and np.array_equal(v, v2)


@pytest.mark.parametrize("bf16,grad_dtype", list(itertools.product([False, True],
                                                                   ["float32", "16"])))
def test_compiled_rounding_matches_its_twin(bf16, grad_dtype):
    rng = np.random.default_rng(5)
    dtype = BF16 if bf16 else np.float16
    n = 5000
    p = rng.standard_normal(n).astype(dtype)
    p[:4] = [0.0, np.inf, np.nan, 1e-6]
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-30, 12, n))).astype(np.float32)
    x[:7] = [np.nan, -np.inf, 1e-30, -1e-9, 65519.0, 70000.0, -0.0]
    g = rng.standard_normal(n).astype(np.float32 if grad_dtype == "float32" else dtype)
    gkey = g if grad_dtype == "float32" else g.view(np.uint16)
    a = p.view(np.uint16).copy()
    b = a.copy()
    MIXED.round_stochastic_into(a, x, gkey, 9, bf16)
    round_twin(b, x, gkey, 9, bf16)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="sizes differ"):
        MIXED.round_stochastic_into(a[:3], x, gkey, 9, bf16)
    with pytest.raises(ValueError, match="step"):
        MIXED.round_stochastic_into(a, x, gkey, 0, bf16)


def test_checkpoint_resumes_bit_for_bit():
    rng = np.random.default_rng(2)
    a = [rng.standard_normal((40, 3)).astype(BF16), rng.standard_normal(9).astype(np.float16)]
    opt = fastlr.NAdam(a, lr=0.01, master_weights=False)
    for _ in range(2):
        opt.step(_grads(rng, a, wide=False))
    sd = opt.state_dict()
    b = [p.copy() for p in a]
    opt2 = fastlr.NAdam(b, lr=0.01, master_weights=False)
    opt2.load_state_dict(sd)
    for _ in range(3):
        g = _grads(rng, a, wide=True)
        opt.step(g)
        opt2.step(g)
    for p, q in zip(a, b):
        assert _same(p, q)
    assert opt.state[0]["mu_product"] == opt2.state[0]["mu_product"]


def test_nothing_written_on_a_bad_grad():
    w = np.ones(4, np.float16)
    keep = w.copy()
    opt = fastlr.SGD([w, np.ones(3, np.float32)], lr=0.1, momentum=0.9,
                     master_weights=False)
    with pytest.raises(TypeError, match=r"grads\[0\] .*has dtype float64 but params\[0\] has "
                                        r"dtype float16 \(its grad must be float16 or "
                                        r"float32\)"):
        opt.step([np.ones(4), np.ones(3, np.float32)])
    with pytest.raises(ValueError, match=r"grads\[1\] .*has shape \(2,\) but params\[1\]"):
        opt.step([np.ones(4, np.float16), np.ones(2, np.float32)])
    assert _same(w, keep) and opt.steps == 0 and "momentum_buffer" not in opt.state[0]
    assert not fastlr.optim.stepping.supports_windows(opt)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.01, momentum=0.9)),
                                     ("RMSprop", dict(lr=0.003)), ("NAdam", dict(lr=0.01))])
def test_quality_close_to_float32(name, kw):
    """A least-squares problem: float16 params without masters end within 2% of the
    float32 run's loss (the same hyperparameters). (bfloat16's 8-bit significand costs more
    on this problem: rounding the float32 solution itself to bfloat16 adds 1.8% to SGD's
    loss; docs/lowprecision.rst has the table.)"""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 64)).astype(np.float32)
    y = X @ rng.standard_normal(64).astype(np.float32) + \
        0.1 * rng.standard_normal(512).astype(np.float32)

    def final_loss(dtype):
        w = np.zeros(64, dtype)
        opt = getattr(fastlr, name)(
            [w], **kw, **({} if dtype == np.float32 else dict(master_weights=False)))
        for _ in range(300):
            w32 = w.astype(np.float32)
            opt.step([(X.T @ (X @ w32 - y) / len(y)).astype(np.float32)])
        r = X @ w.astype(np.float32) - y
        return float(np.mean(r * r))

    ref, low = final_loss(np.float32), final_loss(np.float16)
    assert abs(low - ref) <= 0.02 * ref, (low, ref)


# ---- Adam/AdamW with int8 state and no master ------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_int8_state_matches_its_twin_bit_for_bit(dtype):
    rng = np.random.default_rng(21)
    a = _params(rng, dtype)[:5]
    a[0] = rng.standard_normal(700).astype(dtype)          # several blocks
    b = [p.copy(order="A") for p in a]
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.1},  # noqa: E731
                         {"params": ps[2:], "lr": fastlr.schedules.cosine(0.01, 9)}]
    o1 = fastlr.AdamW(groups(a), lr=0.02, state_dtype="int8", master_weights=False,
                      n_threads=2, max_grad_norm=2.0)
    o2 = fastlr.AdamW(groups(b), lr=0.02, state_dtype="int8", master_weights=False,
                      max_grad_norm=2.0)
    assert type(o1._engine) is direct16.Direct16Step
    for t in range(5):
        g = _grads(rng, a, wide=t % 2 == 1)
        o1.step(g)
        o2.step_reference([x.copy(order="A") for x in g])
    for i, (p, q) in enumerate(zip(a, b)):
        assert _same(p, q), i
        for k, v in o1.state[i].items():
            assert np.array_equal(v, o2.state[i][k]), (i, k)
    assert o1.params[0] is a[0] and "master" not in o1.state_dict()


def test_int8_state_update_is_the_kernel_then_stochastic_rounding():
    rng = np.random.default_rng(4)
    p = rng.standard_normal((40, 30)).astype(BF16)
    opt = fastlr.AdamW([p], lr=0.01, state_dtype="int8", master_weights=False)
    for step in range(1, 4):
        g = (rng.standard_normal(p.shape) * 0.1).astype(BF16)
        w = p.astype(np.float32)
        st = [opt.state[0][k].copy() for k in ("exp_avg", "exp_avg_scale", "exp_avg_sq",
                                               "exp_avg_sq_scale")]
        kernels.adam_int8_state(w, g.astype(np.float32), *st, step=step, lr=0.01,
                                weight_decay=0.01, decoupled_weight_decay=True)
        want = p.view(np.uint16).copy().reshape(-1)
        round_twin(want, w.reshape(-1), g.view(np.uint16).reshape(-1), step, True)
        opt.step([g])
        assert np.array_equal(p.view(np.uint16).reshape(-1), want)
        for k, v in zip(("exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale"), st):
            assert np.array_equal(opt.state[0][k], v)


def test_int8_state_without_master_owns_about_two_bytes_per_param():
    p = np.zeros((512, 1000), BF16)
    opt = fastlr.AdamW([p], lr=0.01, state_dtype="int8", master_weights=False)
    opt.step([np.ones(p.shape, BF16)])
    owned = sum(v.nbytes for v in opt.state[0].values() if isinstance(v, np.ndarray))
    assert owned / p.size <= 2.1 and "master" not in opt.state_dict()
    assert opt.param_groups[0]["params"][0] is p


def test_int8_state_without_master_checkpoints():
    rng = np.random.default_rng(8)
    a = [rng.standard_normal((30, 20)).astype(np.float16)]
    opt = fastlr.AdamW(a, lr=0.01, state_dtype="int8", master_weights=False)
    for _ in range(2):
        opt.step(_grads(rng, a, wide=False))
    sd = opt.state_dict()
    b = [a[0].copy()]
    again = fastlr.AdamW(b, lr=0.01, state_dtype="int8", master_weights=False)
    again.load_state_dict(sd)
    floats = fastlr.AdamW([a[0].copy()], lr=0.01, master_weights=False)
    floats.load_state_dict(sd)           # int8 state decoded into float32 state
    assert floats.state[0]["exp_avg"].dtype == np.float32
    for _ in range(2):
        g = _grads(rng, a, wide=True)
        opt.step(g)
        again.step(g)
    assert _same(a[0], b[0])


def test_int8_state_without_master_quality():
    """AdamW + warmup-cosine on a least-squares problem: float16 params with int8 state and
    no master end within 2% of float32 params and state (docs/lowprecision.rst)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 64)).astype(np.float32)
    y = X @ rng.standard_normal(64).astype(np.float32) + \
        0.1 * rng.standard_normal(512).astype(np.float32)

    def final_loss(dtype, **kw):
        w = np.zeros(64, dtype)
        sched = fastlr.schedules.warmup_cosine(0.05, warmup_steps=30, total_steps=800)
        opt = fastlr.AdamW([w], lr=sched, **kw)
        for _ in range(800):
            w32 = w.astype(np.float32)
            opt.step([(X.T @ (X @ w32 - y) / len(y)).astype(np.float32)])
        r = X @ w.astype(np.float32) - y
        return float(np.mean(r * r))

    ref = final_loss(np.float32)
    low = final_loss(np.float16, state_dtype="int8", master_weights=False)
    assert abs(low - ref) <= 0.02 * ref, (low, ref)


# ---- review fixes ----------------------------------------------------------------------
def test_rmsprop_momentum_scheduled_from_zero():
    """A scheduled momentum keeps its buffer; at momentum 0 the kernel takes none (the
    step raised after updating the first group's params)."""
    warm = lambda t: 0.0 if t < 2 else 0.9      # noqa: E731
    a, b = np.ones(4, np.float16), np.linspace(1, 2, 4).astype(np.float16)
    c, d = a.copy(), b.copy()
    groups = lambda x, y: [{"params": [x], "momentum": 0.5},   # noqa: E731
                           {"params": [y], "momentum": warm}]
    opt = fastlr.RMSprop(groups(a, b), lr=0.01, master_weights=False)
    ref = fastlr.RMSprop(groups(c, d), lr=0.01, master_weights=False)
    for _ in range(4):
        g = [np.linspace(-1, 1, 4).astype(np.float16)] * 2
        opt.step(g)
        ref.step_reference(g)
    assert _same(a, c) and _same(b, d) and opt.steps == 4
    assert np.array_equal(opt.state[1]["momentum_buffer"], ref.state[1]["momentum_buffer"])


def test_row_sparse_grads_refused_before_anything_is_written():
    emb, w16 = np.ones((6, 3), np.float32), np.ones((2, 3), np.float16)
    for cls in (fastlr.SGD, fastlr.Adagrad, fastlr.Adam):
        opt = cls([emb, w16], lr=0.1, master_weights=False)
        grads = [fastlr.RowSparseGrad(np.array([1]), np.ones((1, 3), np.float32)),
                 np.ones((2, 3), np.float16)]
        for step in (opt.step, opt.step_reference):
            with pytest.raises(ValueError, match=r"row-sparse grads \(grads\[0\].*\) are "
                                                 r"not supported with master_weights=False"):
                step(grads)
        assert (emb == 1).all() and (w16 == 1).all() and opt.steps == 0


def test_amsgrad_refusal_with_int8_state_names_int8():
    with pytest.raises(ValueError, match="state_dtype='int8'"):
        fastlr.Adam([np.ones(3, np.float16)], lr=0.1, amsgrad=True, state_dtype="int8",
                    master_weights=False)


def test_sharded_optimizer_refuses_numpy_false():
    from fastlr import distributed
    with pytest.raises(ValueError, match="master_weights=False is not supported"):
        distributed.ShardedOptimizer(fastlr.SGD, [np.ones(4, np.float32)], lr=0.1,
                                     master_weights=np.False_)


def test_rounding_refuses_none_and_step_zero():
    with pytest.raises(TypeError):
        MIXED.round_stochastic_into(None, np.zeros(2, np.float32), np.zeros(2, np.float32),
                                    1, True)
    with pytest.raises(ValueError, match="step"):
        round_twin(np.zeros(2, np.uint16), np.zeros(2, np.float32), np.zeros(2, np.float32),
                   0, True)
