"""master_weights=False in fastlr.Adam / fastlr.AdamW: 16-bit params updated in place with
stochastic rounding, no float32 copy (fastlr/optim/fused16.py).

The class step must be fastlr.kernels.adam_mixed (adam / adam_bf16_state for float32 params
beside them) called per param by hand, bit for bit, with groups, schedules, clipping,
skipping and threads; its reference mode the twins'; checkpoints resume exactly; every
misuse raises before anything is written."""

import numpy as np
import pytest

import fastlr
from fastlr import kernels, reference, schedules
from fastlr.optim.stepping import supports_windows

from test_int8_classes import ADAM, CASES, LR  # noqa: E402 (hyperparameters, by hand too)
from test_lowprecision import _same_bits  # noqa: E402
from test_master_weights import DTYPES  # noqa: E402

SHAPES = [(5, 3), (0,), (7,), (40, 9)]


def _params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(t, dtype, shapes=SHAPES, scale=1.0):
    rng = np.random.default_rng([t, 7])
    return [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]


def _is16(dtype):
    return np.dtype(dtype).itemsize == 2


class _ByHand:
    """The kernels (or twins) called per param by hand with the class's arithmetic of
    hyperparameters: one (params, kwargs) per group; a kwargs value may be a callable of t."""

    def __init__(self, groups, state_dtype="float32", twin=False):
        where = reference if twin else kernels
        sdt = np.uint16 if state_dtype == "bfloat16" else np.float32

        def fn(p):
            if _is16(p.dtype):
                return where.adam_mixed
            return where.adam_bf16_state if state_dtype == "bfloat16" else where.adam

        self.groups = [(ps, kw, [[np.zeros(p.shape, sdt if _is16(p.dtype) or
                                           state_dtype == "bfloat16" else p.dtype)
                                  for _ in range(2)] for p in ps], [0] * len(ps),
                        [fn(p) for p in ps]) for ps, kw in groups]
        self.t = 0

    def step(self, grads, scale=None):
        k = 0
        for ps, kw, states, counts, fns in self.groups:
            values = {key: (v(self.t) if callable(v) else v) for key, v in kw.items()}
            for j, p in enumerate(ps):
                g = grads[k]
                if scale is not None:
                    g = (g if g.dtype in (np.float32, np.float64) else
                         g.astype(np.float32)) * np.float32(scale)
                counts[j] += 1
                fns[j](p, g, *states[j], step=counts[j], **values)
                k += 1
        self.t += 1


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("grad_dtype", ["param", "float32"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_class_step_is_the_kernel_per_param_bit_for_bit(case, dtype, grad_dtype, state_dtype):
    cls, kw, by_hand = CASES[case]
    a, b = _params(dtype), _params(dtype)
    opt = cls(a, master_weights=False, state_dtype=state_dtype, **kw)
    hand = _ByHand([(b, by_hand)], state_dtype)
    gd = dtype if grad_dtype == "param" else np.float32
    for t in range(6):
        g = _grads(t, gd)
        assert opt.step(g) is None
        hand.step(g)
    assert all(_same_bits(x, y) for x, y in zip(a, b))
    assert opt.params[0] is a[0] and opt.param_groups[0]["params"][0] is a[0]
    for i, st in enumerate(hand.groups[0][2]):
        assert _same_bits(opt.state[i]["exp_avg"], st[0])
        assert _same_bits(opt.state[i]["exp_avg_sq"], st[1])
        assert opt.state[i]["step"] == 6
    assert opt.last_lr == [by_hand["lr"](5) if callable(by_hand["lr"]) else by_hand["lr"]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_params_beside_16bit_ones_and_two_groups(dtype):
    """float32 params of the same optimizer take fastlr.kernels.adam per param (the bits of
    the engine's step); each group its own hyperparameters and schedules."""
    a16, b16 = _params(dtype, 1, [(6, 4), (9,)]), _params(dtype, 1, [(6, 4), (9,)])
    a32, b32 = _params(np.float32, 2, [(3,), (8,)]), _params(np.float32, 2, [(3,), (8,)])
    f32 = _params(np.float32, 2, [(3,), (8,)])
    lr2 = schedules.step_decay(3e-2, step_size=2, gamma=0.5)
    opt = fastlr.AdamW([{"params": a16}, {"params": a32, "lr": lr2, "weight_decay": 0.0}],
                       lr=1e-2, master_weights=False)
    engine = fastlr.AdamW(f32, lr=lr2, weight_decay=0.0)
    hand = _ByHand([(b16, dict(ADAM, lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True)),
                    (b32, dict(ADAM, lr=lr2, decoupled_weight_decay=True))])
    for t in range(5):
        g = _grads(t, dtype, [(6, 4), (9,)]) + _grads(t, np.float32, [(3,), (8,)])
        opt.step(g)
        hand.step(g)
        engine.step(g[2:])
    assert all(_same_bits(x, y) for x, y in zip(a16 + a32, b16 + b32))
    assert all(_same_bits(x, y) for x, y in zip(a32, f32))
    assert opt.last_lr == [1e-2, lr2(4)]


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_mode_is_the_twins_and_matches_the_step(dtype, state_dtype):
    a, b = _params(dtype), _params(dtype)
    kw = dict(lr=LR, weight_decay=0.05, master_weights=False, state_dtype=state_dtype)
    opt, ref = fastlr.AdamW(a, **kw), fastlr.AdamW(b, **kw)
    for t in range(5):
        g = _grads(t, dtype)
        opt.step(g)
        ref.step_reference(g)
    assert all(_same_bits(x, y) for x, y in zip(a, b))
    for i in range(len(a)):
        assert _same_bits(opt.state[i]["exp_avg_sq"], ref.state[i]["exp_avg_sq"])
    assert ref.steps == opt.steps == 5


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_flat_grad_buffer_is_split_in_param_order(dtype):
    flat_p = np.random.default_rng(3).standard_normal(30).astype(dtype)
    a = [flat_p[:12].reshape(3, 4), flat_p[12:]]
    b = [x.copy() for x in a]
    opt = fastlr.Adam(a, lr=1e-2, master_weights=False)
    ref = fastlr.Adam(b, lr=1e-2, master_weights=False)
    for t in range(3):
        for flat in (np.random.default_rng(t).standard_normal(30).astype(dtype),
                     np.random.default_rng(t).standard_normal(30).astype(np.float32)):
            opt.step(flat)
            ref.step_reference(flat)
    assert all(_same_bits(x, y) for x, y in zip(a, b))
    with pytest.raises(TypeError, match="flat grad buffer has dtype float64"):
        opt.step(np.ones(30))
    with pytest.raises(ValueError, match="flat grad buffer has 29 elements"):
        opt.step(np.ones(29, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_widens_16bit_grads_and_scales_them_in_float32(dtype):
    a, b = _params(dtype), _params(dtype)
    opt = fastlr.AdamW(a, lr=1e-2, max_grad_norm=1.0, master_weights=False)
    hand = _ByHand([(b, dict(ADAM, lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True))])
    for t in range(4):
        g = _grads(t, dtype, scale=2.0)
        opt.step(g)
        norm = np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in g))
        assert np.isclose(opt.last_grad_norm, norm, rtol=1e-12)
        hand.step(g, scale=min(1.0 / (opt.last_grad_norm + 1e-6), 1.0))
    assert all(_same_bits(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_nonfinite_skips_before_anything_is_written(dtype):
    a = _params(dtype)
    before = [p.copy() for p in a]
    opt = fastlr.Adam(a, lr=1e-2, skip_nonfinite=True, master_weights=False)
    g = _grads(0, dtype)
    g[3][1, 1] = np.inf
    assert opt.step(g) is False and opt.step_reference(g) is False
    assert opt.skipped_steps == 2 and opt.steps == 0
    assert all(_same_bits(x, y) for x, y in zip(a, before))
    assert not any(buf.any() for st in opt.state.values() for k, buf in st.items()
                   if k != "step")
    assert opt.step(_grads(1, dtype)) is True and opt.steps == 1


def test_thread_count_does_not_change_the_bits():
    import ml_dtypes
    shapes = [(60000,), (300,)]
    runs = []
    for n in (1, 2):
        ps = _params(ml_dtypes.bfloat16, 1, shapes)
        opt = fastlr.AdamW(ps, lr=1e-2, n_threads=n, master_weights=False)
        for t in range(3):
            opt.step(_grads(t, ml_dtypes.bfloat16, shapes))
        runs.append(ps)
    assert all(_same_bits(x, y) for x, y in zip(*runs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_master_and_the_state_is_8_or_4_bytes_per_param(dtype):
    for state_dtype, nbytes in (("float32", 8), ("bfloat16", 4)):
        a = _params(dtype)
        opt = fastlr.AdamW(a, lr=1e-2, master_weights=False, state_dtype=state_dtype)
        opt.step(_grads(0, dtype))
        owned = sum(buf.nbytes for st in opt.state.values() for k, buf in st.items()
                    if k != "step")
        assert owned == nbytes * sum(p.size for p in a)
        sd = opt.state_dict()
        assert "master" not in sd or not sd["master"]
        assert "master_weights=False" in repr(opt)


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_round_trip_resumes_bit_for_bit(dtype, state_dtype, tmp_path):
    kw = dict(lr=LR, master_weights=False, state_dtype=state_dtype)
    a = _params(dtype)
    opt = fastlr.AdamW(a, **kw)
    for t in range(4):
        opt.step(_grads(t, dtype))
    sd = opt.state_dict()
    mid = [p.copy() for p in a]
    opt.save(tmp_path / "direct.npz")
    for t in range(4, 8):
        opt.step(_grads(t, dtype))
    for source in ("file", "dict"):
        resumed = fastlr.AdamW([p.copy() for p in mid], **kw)
        if source == "file":
            resumed.load(tmp_path / "direct.npz")
        else:
            resumed.load_state_dict(sd)
        assert resumed.steps == 4
        for t in range(4, 8):
            resumed.step(_grads(t, dtype))
        assert all(_same_bits(x, y) for x, y in zip(resumed.params, a)), source


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoints_move_between_master_and_no_master(dtype):
    """A state dict with masters loads into master_weights=False with a warning (the params
    as they are; no copy to put them in); one without masters into master weights, which
    then start at the params."""
    a = _params(dtype)
    masters = fastlr.AdamW(a, lr=1e-2)
    masters.step(_grads(0, dtype))
    b = [p.copy() for p in a]
    direct = fastlr.AdamW(b, lr=1e-2, master_weights=False)
    with pytest.warns(UserWarning, match="master weights for params"):
        direct.load_state_dict(masters.state_dict())
    assert direct.steps == 1
    assert _same_bits(direct.state[0]["exp_avg"], masters.state[0]["exp_avg"])
    direct.step(_grads(1, dtype))
    c = [p.copy() for p in b]
    back = fastlr.AdamW(c, lr=1e-2)
    back.load_state_dict(direct.state_dict())
    assert all(_same_bits(m, p.astype(np.float32))
               for m, p in zip(back.param_groups[0]["params"], c))


def test_add_param_group_starts_its_own_count():
    a = _params(np.float16)
    opt = fastlr.Adam(a[:2], lr=1e-2, master_weights=False)
    opt.step(_grads(0, np.float16)[:2])
    opt.add_param_group({"params": a[2:], "lr": 3e-2})
    opt.step(_grads(1, np.float16))
    assert [opt.state[i]["step"] for i in range(4)] == [2, 2, 1, 1]


BAD = {
    "dtype": (lambda g, p: g.__setitem__(0, g[0].astype(np.float64)), TypeError,
              r"grads\[0\] .*has dtype float64 but "
              r"params\[0\] has dtype float16 \(its grad must be float16 or float32\)"),
    "shape": (lambda g, p: g.__setitem__(2, g[2][:6]), ValueError,
              r"grads\[2\] .*has shape \(6,\) but params\[2\] has shape \(7,\)"),
    "layout": (lambda g, p: g.__setitem__(3, np.asfortranarray(g[3])), ValueError,
               r"grads\[3\] .*must be C-contiguous like params\[3\]"),
    "not-array": (lambda g, p: g.__setitem__(1, [1.0]), TypeError,
                  r"grads\[1\] .*must be a numpy.ndarray, got list"),
    "count": (lambda g, p: g.pop(), ValueError, "got 3 grads for 4 params"),
    "a-param": (lambda g, p: g.__setitem__(0, p[0]), ValueError,
                r"grads\[0\] .*overlaps the optimizer's params or state"),
    "read-only": (lambda g, p: setattr(p[2].flags, "writeable", False), ValueError,
                  r"params\[2\] .*is read-only"),
    "schedule": ("schedule", ValueError, "lr"),
}


@pytest.mark.parametrize("change", sorted(BAD))
def test_bad_grads_and_values_raise_before_anything_is_written(change):
    fix, exc, match = BAD[change]
    a = _params(np.float16)
    lr = (lambda t: 1e-2 if t < 1 else -1.0) if fix == "schedule" else 1e-2
    opt = fastlr.Adam(a, lr=lr, master_weights=False)
    opt.step(_grads(0, np.float16))
    before = [p.copy() for p in a]
    state = [{k: np.copy(v) for k, v in st.items()} for st in opt.state.values()]
    g = _grads(1, np.float16)
    if fix != "schedule":
        fix(g, a)
    # (the reference mode checks the grads, not the schedules' values)
    for step in (opt.step,) if fix == "schedule" else (opt.step, opt.step_reference):
        with pytest.raises(exc, match=match) as error:
            step(g)
        if step == opt.step and "grads[" in match:      # named as the optim layer names them
            assert "(param_groups[0]['params'][" in str(error.value)
    assert all(_same_bits(x, y) for x, y in zip(a, before))
    assert opt.steps == 1
    for i, st in state.items() if isinstance(state, dict) else enumerate(state):
        for k, v in st.items():
            assert np.array_equal(np.asarray(opt.state[i][k]), v)


def test_a_grad_overlapping_the_state_is_refused():
    a = _params(np.float32)
    opt = fastlr.Adam(a, lr=1e-2, master_weights=False)
    g = _grads(0, np.float32)
    g[1] = opt.state[3]["exp_avg"][:0].reshape(0)
    g[3] = opt.state[3]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"grads\[3\] .*overlaps the optimizer's params or "
                                         r"state in memory. Nothing was updated"):
        opt.step(g)


def test_refusals():
    w = np.ones(4, np.float16)
    with pytest.raises(ValueError, match="amsgrad=True is not available with "
                                         "master_weights=False"):
        fastlr.Adam([w], lr=1e-2, amsgrad=True, master_weights=False)
    opt = fastlr.Adam([w], lr=1e-2, master_weights=False)
    with pytest.raises(ValueError, match="amsgrad"):
        opt.add_param_group({"params": [np.ones(2, np.float16)], "amsgrad": True})

    with pytest.raises(TypeError, match="float64, but state_dtype='bfloat16' needs float32 "):
        fastlr.Adam([np.ones(2)], lr=1e-2, master_weights=False, state_dtype="bfloat16")
    assert not supports_windows(opt)
    with pytest.raises(TypeError, match=r"cannot step in windows \(master_weights=False"):
        opt._windowed_step(np.ones(4, np.float16))
    # uint16 arrays are not taken as bfloat16 params by the classes (only by the kernel)
    # the message names the 16-bit dtypes the class does take
    match = r"must have dtype float32, float64, float16 or ml_dtypes.bfloat16 \(native"
    with pytest.raises(TypeError, match=match):
        fastlr.Adam([np.ones(3, np.uint16)], lr=1e-2, master_weights=False)
    with pytest.raises(TypeError, match=match + r" byte order\), got >f2"):
        fastlr.SGD([np.ones(3, ">f2")], lr=1e-2)


def test_stochastic_rounding_tracks_the_float32_trajectory_on_average():
    """Many tiny steps that round-to-nearest would lose (each below half a bfloat16 ulp):
    stochastic rounding moves the params by their expected amount."""
    import ml_dtypes
    n = 4096
    w = np.ones(n, ml_dtypes.bfloat16)
    w32 = np.ones(n, np.float32)
    rng = np.random.default_rng(0)
    opt = fastlr.Adam([w], lr=1e-4, master_weights=False)
    ref = fastlr.Adam([w32], lr=1e-4)
    for t in range(50):
        g = rng.standard_normal(n).astype(np.float32) + 1.0
        opt.step([g])
        ref.step([g])
    drift = float(np.mean(w.astype(np.float64)) - np.mean(w32))
    assert abs(drift) < 2e-4, drift          # a nearest rounding would keep every w at 1.0
    assert float(np.mean(w32)) < 1 - 3e-3


# ---- master weights (the default) through the same fused pass -------------------------
def _nearest(x32, dtype):
    return x32.astype(dtype)


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_master_weights_take_the_fused_pass_with_the_three_passes_bits(dtype, state_dtype):
    """Adam/AdamW keep 16-bit params' float32 masters and step them with
    fastlr.kernels.adam_mixed (one pass: 16-bit grads read as they are, the master updated,
    the param rounded to nearest even): the bits of a float32 optimizer over float32 copies,
    clipped and with float32 params beside them, and no float32 grad buffers."""
    from fastlr.optim.fused16 import Fused16Step

    shapes = SHAPES + [(6,)]
    a = _params(dtype, 5, shapes)[:-1] + _params(np.float32, 5, [(6,)])
    copies = [p.astype(np.float32) for p in a]
    kw = dict(lr=LR, weight_decay=0.05, max_grad_norm=3.0, state_dtype=state_dtype)
    opt = fastlr.AdamW(a, **kw)
    f32 = fastlr.AdamW(copies, **kw)
    assert type(opt._engine) is Fused16Step
    for t in range(6):
        g = _grads(t, dtype, shapes)[:-1] + _grads(t, np.float32, [(6,)])
        opt.step(g)
        f32.step([x.astype(np.float32) for x in g])
        assert opt.last_grad_norm == f32.last_grad_norm
    masters = opt.param_groups[0]["params"]
    assert all(_same_bits(m, c) for m, c in zip(masters, copies))
    assert all(_same_bits(p, _nearest(c, dtype)) for p, c in zip(a[:-1], copies[:-1]))
    assert _same_bits(a[-1], copies[-1]) and a[-1] is masters[-1]
    assert not opt._grad32
    for i in range(len(a)):
        assert _same_bits(opt.state[i]["exp_avg_sq"], f32.state[i]["exp_avg_sq"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_amsgrad_and_other_optimizers_keep_the_engines_passes(dtype):
    from fastlr._core.engine import Engine

    a = _params(dtype)
    opt = fastlr.Adam(a, lr=1e-2, amsgrad=True)
    assert type(opt._engine) is Engine
    copies = [p.astype(np.float32) for p in a]
    f32 = fastlr.Adam(copies, lr=1e-2, amsgrad=True)
    for t in range(3):
        opt.step(_grads(t, dtype))
        f32.step([x.astype(np.float32) for x in _grads(t, dtype)])
    assert all(_same_bits(m, c) for m, c in zip(opt.param_groups[0]["params"], copies))
    # float32 params only: the engine's one call (no per-param calls)
    assert type(fastlr.AdamW([np.ones(3, np.float32)], lr=1e-2)._engine) is Engine
    # a 16-bit group added later switches to the fused pass, resuming the same state
    b = _params(np.float32, 1)
    opt = fastlr.AdamW(b, lr=1e-2)
    opt.step(_grads(0, np.float32))
    opt.add_param_group({"params": [np.ones((4, 2), dtype)]})
    opt.step(_grads(1, np.float32) + [np.ones((4, 2), dtype)])
    assert type(opt._engine) is not Engine and opt.state[0]["step"] == 2


# ---- review findings: each failed before its fix ----------------------------------------
@pytest.mark.parametrize("master_weights", [None, False])
def test_a_0d_param_with_clipping_steps_whole(master_weights):
    """A clipped 0-d grad stays an array (it was a NumPy scalar: the kernel refused it after
    the params before it were updated)."""
    a = [np.ones(4, np.float16), np.array(2.0, np.float16)]
    opt = fastlr.Adam(a, lr=0.1, max_grad_norm=0.5, master_weights=master_weights)
    opt.step([np.full(4, 3.0, np.float16), np.array(4.0, np.float16)])
    assert opt.steps == 1 and opt.state[1]["step"] == 1 and float(a[1]) < 2.0
    if master_weights is None:
        f32 = fastlr.Adam([np.ones(4, np.float32), np.array(2.0, np.float32)], lr=0.1,
                          max_grad_norm=0.5)
        f32.step([np.full(4, 3.0, np.float32), np.array(4.0, np.float32)])
        assert all(_same_bits(m, c) for m, c in zip(opt.param_groups[0]["params"],
                                                    f32.params))
    b = [np.ones(300, np.float32), np.array(2.0, np.float32)]
    opt = fastlr.Adam(b, lr=0.1, max_grad_norm=0.5, state_dtype="int8")
    opt.step([np.full(300, 3.0, np.float32), np.array(4.0, np.float32)])
    assert opt.steps == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_scales_float64_grads_by_the_double_factor(dtype):
    a = [_params(dtype, 2, [(5,)])[0], np.linspace(-1, 1, 7)]
    copies = [a[0].astype(np.float32), a[1].copy()]
    opt = fastlr.AdamW(a, lr=1e-2, max_grad_norm=0.3)
    engine = fastlr.AdamW(copies, lr=1e-2, max_grad_norm=0.3)
    for t in range(3):
        g = [_grads(t, dtype, [(5,)])[0], np.linspace(1, 2, 7) * (t + 1)]
        opt.step(g)
        engine.step([g[0].astype(np.float32), g[1]])
    assert _same_bits(a[1], copies[1])
    assert _same_bits(opt.param_groups[0]["params"][0], copies[0])


@pytest.mark.parametrize("what", ["master", "state"])
def test_a_read_only_master_or_state_view_is_refused_before_anything_is_written(what):
    a = _params(np.float16)
    opt = fastlr.Adam(a, lr=1e-2)
    opt.step(_grads(0, np.float16))
    before = [p.copy() for p in a]
    if what == "master":
        opt.param_groups[0]["params"][3].flags.writeable = False
    else:
        opt.state[3]["exp_avg"].flags.writeable = False
    with pytest.raises(ValueError, match=r"read-only .*Nothing was updated"):
        opt.step(_grads(1, np.float16))
    assert all(_same_bits(x, y) for x, y in zip(a, before)) and opt.steps == 1


def test_flat_grads_of_params_of_several_dtypes_1d_only():
    buf = np.random.default_rng(0).standard_normal(10).astype(np.float16)
    a = [buf[:4], buf[4:]]
    b = [x.copy() for x in a]
    opt = fastlr.Adam(a, lr=1e-2)
    ref = fastlr.Adam(b, lr=1e-2)
    flat = np.linspace(-1, 1, 10, dtype=np.float32)
    opt.step(flat)
    ref.step_reference(flat)
    opt.step(flat.astype(np.float16))
    ref.step_reference(flat.astype(np.float16))      # (split, then widened)
    assert all(_same_bits(x, y) for x, y in zip(a, b))
    # a flat buffer is 1-D (as fastlr.flat_buffer makes it): a (2, 5) one is refused
    for g in (flat.reshape(2, 5), flat.astype(np.float16).reshape(2, 5)):
        for step in (opt.step, ref.step_reference):
            with pytest.raises(ValueError, match=r"grads has shape \(2, 5\) but one grad "
                                                 r"array for 2 params must be a 1-D flat"):
                step(g)
    assert all(_same_bits(x, y) for x, y in zip(a, b)) and opt.steps == ref.steps == 2
    mixed = fastlr.Adam([np.ones(3, np.float16), np.ones(2, np.float32)], lr=1e-2)
    mixed.step(np.ones(5, np.float32))
    with pytest.raises(TypeError, match=r"flat grad buffer has dtype float16 but params\[1\] .*"
                                        r"has dtype float32"):
        mixed.step(np.ones(5, np.float16))


def test_master_weights_is_read_as_a_bool():
    opt = fastlr.AdamW([np.ones(3, np.float16)], lr=1e-2, master_weights=np.False_)
    assert "master_weights=False" in repr(opt) and not opt._masters_of


def test_a_refused_16bit_group_leaves_the_engines_step():
    from fastlr._core.engine import Engine

    opt = fastlr.AdamW([np.ones(3, np.float32)], lr=1e-2)
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [np.ones(2, np.float16)], "lr": -1.0})
    opt.add_param_group({"params": [np.ones(2, np.float32)]})
    opt.step([np.ones(3, np.float32), np.ones(2, np.float32)])
    assert type(opt._engine) is Engine


def test_bfloat16_state_of_a_0d_param_round_trips_a_state_dict():
    a = [np.array(1.5, np.float32), np.ones(3, np.float32)]
    opt = fastlr.AdamW(a, lr=1e-2, state_dtype="bfloat16")
    opt.step([np.array(0.5, np.float32), np.ones(3, np.float32)])
    other = fastlr.AdamW([p.copy() for p in a], lr=1e-2, state_dtype="bfloat16")
    other.load_state_dict(opt.state_dict())
    assert _same_bits(other.state[0]["exp_avg"], opt.state[0]["exp_avg"])
