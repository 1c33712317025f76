"""16-bit params with float32 masters in the step engine's optimizers (every optimizer of
the table but Adam/AdamW, whose fused step is tests/optim/test_fused16.py): one pass per
param (fastlr/_core/master16.pxd) reads the 16-bit grads, updates the masters and rounds
them into the 16-bit params.

The bits must be those of a float32 optimizer over float32 copies stepped with the grads
widened exactly (the passes the engine replaces), at sizes spanning several blocks, with
clipping and the non-finite scan over 16-bit grads, on 1-3 threads; misuse raises before
anything is written.
"""

import numpy as np
import pytest

import fastlr
from fastlr import _specs
from fastlr.optim import master
from test_master_weights import DTYPES  # noqa: E402 (float16, and bfloat16 when installed)

ENGINE_CLASSES = [o.cls for o in _specs.OPTIMIZERS.values() if o.cls not in ("Adam", "AdamW")]
#: several 512-element blocks and remainders, an F-ordered matrix, a 0-d and an empty param
SHAPES = [(3001,), (37, 129), (), (0,), (1100,)]
F_ORDERED = 1


def _kw(cls):
    return {"SGD": dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01),
            "Rprop": dict(lr=0.01), "Adadelta": dict(lr=0.5),
            "ASGD": dict(lr=0.02)}.get(cls, dict(lr=0.01))


def _layout(a, k):
    return np.asfortranarray(a) if k == F_ORDERED else np.ascontiguousarray(a)


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [_layout(rng.standard_normal(s).astype(dtype), k) for k, s in enumerate(SHAPES)]


def _grads(t, dtype, nan_at=None):
    rng = np.random.default_rng([t, 11])
    out = [_layout((rng.standard_normal(s) * 3).astype(dtype), k)
           for k, s in enumerate(SHAPES)]
    if nan_at is not None and t == nan_at:
        out[4][17] = np.nan
    return out


def _widened(gs):
    return [_layout(g.astype(np.float32), k) for k, g in enumerate(gs)]


@pytest.mark.parametrize("options", [{}, {"max_grad_norm": 5.0},
                                     {"skip_nonfinite": True}, {"n_threads": 2},
                                     {"n_threads": 3, "max_grad_norm": 50.0}],
                         ids=["plain", "clipped", "skip-nonfinite", "2-threads",
                              "3-threads-clipped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", ENGINE_CLASSES)
def test_one_pass_gives_the_bits_of_the_float32_optimizer(cls, dtype, options):
    params = _params(dtype)
    copies = [_layout(p.astype(np.float32), k) for k, p in enumerate(params)]
    kw = dict(_kw(cls), **options)
    opt = getattr(fastlr, cls)(params, **kw)
    ref = getattr(fastlr, cls)(copies, **kw)
    nan_at = 3 if options.get("skip_nonfinite") else None
    for t in range(6):
        gs = _grads(t, dtype, nan_at)
        assert opt.step(gs) == ref.step(_widened(gs))
    assert opt.steps == ref.steps and opt.skipped_steps == ref.skipped_steps
    if "max_grad_norm" in options:
        assert opt.last_grad_norm == ref.last_grad_norm
    masters = opt.param_groups[0]["params"]
    for k, (p, m, c) in enumerate(zip(params, masters, copies)):
        assert np.array_equal(m, c, equal_nan=True), k
        assert np.array_equal(p.view(np.uint16), c.astype(dtype).view(np.uint16)), k
        assert p.flags.f_contiguous if k == F_ORDERED else p.flags.c_contiguous
    for i, (a, b) in enumerate(zip(opt.state_dict()["state"].values(),
                                   ref.state_dict()["state"].values())):
        for key in a:
            assert np.array_equal(a[key], b[key], equal_nan=True), (i, key)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_engine_reads_16bit_grads_and_stores_the_params_itself(dtype, monkeypatch):
    calls = []
    for name in ("_widen_into", "_round_into"):
        real = getattr(master, name)
        monkeypatch.setattr(master, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    params = _params(dtype)
    opt = fastlr.SGD(params, lr=0.1, momentum=0.9)
    opt.step(_grads(0, dtype))
    opt.step(_widened(_grads(1, dtype)))
    assert calls == []
    assert opt._engine.published == tuple(range(len(SHAPES)))
    # a 16-bit grad in the other memory order than its param: widened first (as before)
    gs = _grads(2, dtype)
    gs[F_ORDERED] = np.ascontiguousarray(gs[F_ORDERED])
    opt.step(gs)
    assert calls.count("_widen_into") == len(SHAPES)
    assert "_round_into" not in calls


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_other_order_16bit_grads_are_still_taken(dtype):
    params = _params(dtype)
    copies = [_layout(p.astype(np.float32), k) for k, p in enumerate(params)]
    opt = fastlr.RMSprop(params, lr=0.01)
    ref = fastlr.RMSprop(copies, lr=0.01)
    for t in range(3):
        gs = _grads(t, dtype)
        bent = list(gs)
        bent[F_ORDERED] = np.ascontiguousarray(gs[F_ORDERED])
        wide = np.empty(2 * gs[0].size, dtype)
        wide[::2] = gs[0]
        bent[0] = wide[::2]
        opt.step(bent)
        ref.step(_widened(gs))
    for p, m, c in zip(params, opt.param_groups[0]["params"], copies):
        assert np.array_equal(m, c) and np.array_equal(p, c.astype(dtype))


def _snapshot(opt, params):
    return ([p.copy() for p in params], [m.copy() for m in opt.param_groups[0]["params"]],
            opt.state_dict())


def _unchanged(opt, params, snap):
    ps, ms, sd = snap
    assert all(np.array_equal(a.view(np.uint16), b.view(np.uint16))
               for a, b in zip(params, ps))
    assert all(np.array_equal(a, b) for a, b in zip(opt.param_groups[0]["params"], ms))
    now = opt.state_dict()
    assert now["steps"] == sd["steps"]
    for a, b in zip(now["state"].values(), sd["state"].values()):
        assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_misuse_raises_before_anything_is_written(dtype):
    params = _params(dtype)
    opt = fastlr.SGD(params, lr=0.1, momentum=0.9)
    opt.step(_grads(0, dtype))
    snap = _snapshot(opt, params)
    gs = _grads(1, dtype)
    with pytest.raises(TypeError, match=r"grads\[4\].* has dtype float64 but params\[4\]"
                                        r".* is .*kept with float32 master weights"):
        opt.step(gs[:4] + [gs[4].astype(np.float64)])
    with pytest.raises(ValueError, match=r"grads\[4\].* has shape"):
        opt.step(gs[:4] + [gs[4][:-1]])
    # a grad in another 16-bit param's memory (written by the step) is refused
    with pytest.raises(ValueError, match=r"grads\[4\].* overlaps params\[0\]"):
        opt.step(gs[:4] + [params[0][:1100]])
    # a 16-bit param made read-only after construction
    params[4].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[4\].* is read-only"):
        opt.step(gs)
    params[4].flags.writeable = True
    _unchanged(opt, params, snap)
    opt.step(gs)
    assert opt.steps == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_sparse_grads_still_reach_the_16bit_params(dtype):
    w = np.zeros((6, 3), dtype)
    opt = fastlr.SGD([w], lr=0.5)
    opt.step([fastlr.RowSparseGrad(np.array([1, 4]), np.ones((2, 3), np.float32))])
    expected = np.zeros((6, 3), np.float32)
    expected[[1, 4]] = -0.5
    assert np.array_equal(w, expected.astype(dtype))
    assert np.array_equal(opt.param_groups[0]["params"][0], expected)


# ---- master_weights=False: the engine steps the 16-bit params themselves ----------------
# (bit for bit against their twin, the chunked passes of fastlr/optim/direct16.py, with
# groups, schedules, clipping and float32 grads: tests/optim/test_direct16.py)
@pytest.mark.parametrize("grad_dtype", ["param", "float32"])
@pytest.mark.parametrize("options", [{}, {"max_grad_norm": 5.0}, {"skip_nonfinite": True},
                                     {"n_threads": 3, "max_grad_norm": 50.0}],
                         ids=["plain", "clipped", "skip-nonfinite", "3-threads-clipped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", ["SGD", "RMSprop", "NAdam", "Rprop"])
def test_without_masters_one_pass_gives_the_twins_bits(cls, dtype, options, grad_dtype):
    a = _params(dtype)
    b = [p.copy(order="A") for p in a]
    kw = dict(_kw(cls), master_weights=False, **options)
    o1 = getattr(fastlr, cls)(a, **kw)
    o2 = getattr(fastlr, cls)(b, **kw)
    assert o1._engine.published == ()
    nan_at = 3 if options.get("skip_nonfinite") else None
    for t in range(6):
        gs = _grads(t, dtype, nan_at)
        if grad_dtype == "float32":
            gs = _widened(gs)
        assert o1.step(gs) == o2.step_reference([g.copy(order="A") for g in gs])
    assert o1.steps == o2.steps and o1.skipped_steps == o2.skipped_steps
    for k, (p, q) in enumerate(zip(a, b)):
        assert p.dtype == dtype and np.array_equal(p.view(np.uint16), q.view(np.uint16)), k
        for key, v in o1.state[k].items():
            assert np.array_equal(v, o2.state[k][key], equal_nan=True), (k, key)


@pytest.mark.parametrize("grad_dtype", ["param", "float32"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_without_masters_a_flat_grad_buffer(dtype, grad_dtype):
    gdt = dtype if grad_dtype == "param" else np.float32
    rng = np.random.default_rng(5)
    data = rng.standard_normal(40 * 30 + 1001).astype(dtype)   # two params, one buffer
    views = [data[:1200].reshape(40, 30), data[1200:]]
    copies = [v.copy() for v in views]
    o1 = fastlr.RMSprop(views, lr=0.01, master_weights=False)
    o2 = fastlr.RMSprop(copies, lr=0.01, master_weights=False)
    for t in range(3):
        g = rng.standard_normal(data.size).astype(gdt)
        o1.step(g)
        o2.step_reference(g.copy())
    for p, q in zip(views, copies):
        assert np.array_equal(p.view(np.uint16), q.view(np.uint16))
    with pytest.raises(TypeError, match="flat grad buffer has dtype float64"):
        o1.step(np.ones(data.size))
    with pytest.raises(ValueError, match="flat grad buffer has 5 elements"):
        o1.step(np.ones(5, gdt))


@pytest.mark.parametrize("dtype", DTYPES)
def test_without_masters_misuse_raises_before_anything_is_written(dtype):
    params = _params(dtype)
    opt = fastlr.SGD(params, lr=0.1, momentum=0.9, master_weights=False)
    opt.step(_grads(0, dtype))
    snap = ([p.copy() for p in params], opt.state_dict())
    gs = _grads(1, dtype)
    with pytest.raises(TypeError, match=r"grads\[4\].* has dtype float64 but params\[4\].*"
                                        r"\(its grad must be .* or float32\)"):
        opt.step(gs[:4] + [gs[4].astype(np.float64)])
    with pytest.raises(ValueError, match=r"grads\[4\].* overlaps params\[0\]"):
        opt.step(gs[:4] + [params[0][:1100]])
    with pytest.raises(ValueError, match=r"grads\[1\].* must be F-contiguous"):
        opt.step([gs[0], np.ascontiguousarray(gs[1])] + gs[2:])
    params[0].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\].* is read-only"):
        opt.step(gs)
    params[0].flags.writeable = True
    assert all(np.array_equal(p.view(np.uint16), q.view(np.uint16))
               for p, q in zip(params, snap[0]))
    for a, b in zip(opt.state_dict()["state"].values(), snap[1]["state"].values()):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert opt.steps == 1


def _misaligned(values, dtype):
    raw = np.zeros(values.size * 2 + 2, np.uint8)
    x = raw[1:1 + values.size * 2].view(dtype)
    x[...] = values
    assert not x.flags.aligned
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_misaligned_16bit_param_is_widened_and_published_as_before(dtype):
    rng = np.random.default_rng(9)
    values = [rng.standard_normal(700).astype(dtype) for _ in range(2)]
    params = [values[0].copy(), _misaligned(values[1], dtype)]
    copies = [v.astype(np.float32) for v in values]
    opt = fastlr.RMSprop(params, lr=0.01, momentum=0.5)
    ref = fastlr.RMSprop(copies, lr=0.01, momentum=0.5)
    assert opt._engine.published == (0,)
    for t in range(4):
        gs = [(rng.standard_normal(700) * 0.1).astype(dtype) for _ in range(2)]
        opt.step(gs)
        ref.step([g.astype(np.float32) for g in gs])
    for p, m, c in zip(params, opt.param_groups[0]["params"], copies):
        assert np.array_equal(m, c) and np.array_equal(p, c.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_state_with_masters_reads_the_16bit_grads(dtype, monkeypatch):
    """AdamW(state_dtype="int8") keeps float32 masters; its step reads the 16-bit grads
    (fastlr.kernels.adam_mixed_int8_state) instead of casting them first: the bits of its
    twin (tests/optim/test_mixed_int8.py), no float32 grad copies."""
    calls = []
    real = master._widen_into
    monkeypatch.setattr(master, "_widen_into", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(2)
    a = [rng.standard_normal((40, 30)).astype(dtype), rng.standard_normal(777).astype(dtype)]
    b = [p.copy() for p in a]
    o1 = fastlr.AdamW(a, lr=0.01, state_dtype="int8", max_grad_norm=3.0)
    o2 = fastlr.AdamW(b, lr=0.01, state_dtype="int8", max_grad_norm=3.0)
    for t in range(3):
        gs = [(rng.standard_normal(p.shape) * (1 + 3 * t)).astype(dtype) for p in a]
        o1.step(gs)
        n = len(calls)
        o2.step_reference(gs)
        del calls[n:]           # (the twin casts them)
    assert calls == []
    for p, q in zip(a, b):
        assert np.array_equal(p.view(np.uint16), q.view(np.uint16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_without_masters_a_float32_flat_buffer_over_params_of_several_dtypes(dtype):
    """One float32 grad buffer serves 16-bit params of both formats and float32 ones."""
    rng = np.random.default_rng(12)
    a = [rng.standard_normal(600).astype(dtype), rng.standard_normal(300).astype(np.float32),
         rng.standard_normal(700).astype(np.float16)]
    b = [p.copy() for p in a]
    o1 = fastlr.SGD(a, lr=0.1, momentum=0.9, master_weights=False)
    o2 = fastlr.SGD(b, lr=0.1, momentum=0.9, master_weights=False)
    for t in range(3):
        g = rng.standard_normal(1600).astype(np.float32)
        o1.step(g)
        o2.step_reference(g.copy())
    for p, q in zip(a, b):
        assert p.dtype == q.dtype and p.tobytes() == q.tobytes()
    with pytest.raises(TypeError, match="needs params of one dtype"):
        fastlr.SGD([np.ones(3, dtype), np.ones(2)], lr=0.1,
                   master_weights=False).step(np.ones(5, np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_misaligned_16bit_param_made_read_only_is_refused_before_writing(dtype):
    w = _misaligned(np.ones(600, np.float32).astype(dtype), dtype)
    opt = fastlr.SGD([w], lr=0.1, momentum=0.9)
    w.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\].* is read-only"):
        opt.step([np.ones(600, dtype)])
    assert opt.steps == 0 and np.all(opt.param_groups[0]["params"][0] == 1)
