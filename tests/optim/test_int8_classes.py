"""state_dtype="int8" in fastlr.Adam / fastlr.AdamW: the class step against the kernel (and
its twin) looped by hand, bit for bit; the reference mode; groups, schedules, clipping,
skipping, threads, add_param_group, master weights; checkpoints (round trip and conversions
to and from float32/bfloat16 state); every refusal; the quality against float32 state."""

import numpy as np
import pytest

import fastlr
from fastlr import kernels, schedules
from fastlr.optim import int8
from fastlr.optim.stepping import supports_windows
from fastlr.reference.int8state import BLOCK, int8_decode

from test_lowprecision import _same_bits  # noqa: E402
from test_lowprecision import _grads as _grads_of, _params as _params_of  # noqa: E402

# sizes around the block: 300 (a short last block), 0, 85, 256 (exactly one), 513
SHAPES = [(300,), (0,), (17, 5), (256,), (3, 171)]


def _params(seed=0, shapes=SHAPES):
    return _params_of(seed, shapes)


def _grads(t, shapes=SHAPES, scale=1.0):
    return _grads_of(t, shapes, scale)


def _state(p):
    k = (p.size + BLOCK - 1) // BLOCK
    return [np.zeros(p.shape, np.uint8), np.zeros(k, np.float32),
            np.zeros(p.shape, np.uint8), np.zeros(k, np.float32)]


class _ByHand:
    """The kernel (or the twin) called per param by hand, with the class's arithmetic of
    hyperparameters: one (params, kwargs) per group; kwargs values may be callables of t."""

    def __init__(self, groups, fn=kernels.adam_int8_state):
        self.groups = [(ps, kw, [_state(p) for p in ps], [0] * len(ps)) for ps, kw in groups]
        self.fn = fn
        self.t = 0

    def step(self, grads, scale=None):
        k = 0
        for ps, kw, states, counts in self.groups:
            values = {key: (v(self.t) if callable(v) else v) for key, v in kw.items()}
            for j, p in enumerate(ps):
                g = grads[k] if scale is None else grads[k] * np.float32(scale)
                counts[j] += 1
                self.fn(p, g, *states[j], step=counts[j], **values)
                k += 1
        self.t += 1


ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, maximize=False,
            decoupled_weight_decay=False)
LR = schedules.warmup_cosine(1e-2, warmup_steps=3, total_steps=20)
CASES = {
    "adam": (fastlr.Adam, dict(lr=1e-2), dict(ADAM, lr=1e-2)),
    "adam-l2-maximize": (fastlr.Adam, dict(lr=1e-2, weight_decay=0.1, maximize=True),
                         dict(ADAM, lr=1e-2, weight_decay=0.1, maximize=True)),
    "adam-small-beta1": (fastlr.Adam, dict(lr=1e-2, betas=(0.3, 0.99)),
                         dict(ADAM, lr=1e-2, beta1=0.3, beta2=0.99)),
    "adamw": (fastlr.AdamW, dict(lr=1e-2, weight_decay=0.1),
              dict(ADAM, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    "adamw-schedules": (fastlr.AdamW, dict(lr=LR, betas=(0.9, schedules.constant(0.95))),
                        dict(ADAM, lr=LR, beta2=0.95, weight_decay=0.01,
                             decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_class_step_is_the_kernel_per_param_bit_for_bit(case):
    cls, kw, by_hand = CASES[case]
    a, b = _params(), _params()
    opt = cls(a, state_dtype="int8", **kw)
    hand = _ByHand([(b, by_hand)])
    for t in range(12):
        g = _grads(t)
        opt.step(g)
        hand.step(g)
    for i, (x, y) in enumerate(zip(a, b)):
        assert _same_bits(x, y), i
        st = opt.state[i]
        assert st["step"] == 12
        for key, buf in zip(("exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale"),
                            hand.groups[0][2][i]):
            assert _same_bits(st[key], buf), (i, key)
    assert opt.last_lr == [kw["lr"](11) if callable(kw["lr"]) else kw["lr"]]


def test_two_groups_their_own_hyperparameters_and_schedules():
    a, b = _params(), _params()
    opt = fastlr.AdamW([{"params": a[:2], "lr": LR, "weight_decay": 0.0},
                        {"params": a[2:], "betas": (0.8, 0.99), "maximize": True}],
                       lr=3e-3, weight_decay=0.05, state_dtype="int8")
    hand = _ByHand([(b[:2], dict(ADAM, lr=LR, decoupled_weight_decay=True)),
                    (b[2:], dict(ADAM, lr=3e-3, beta1=0.8, beta2=0.99, maximize=True,
                                 weight_decay=0.05, decoupled_weight_decay=True))])
    for t in range(10):
        g = _grads(t)
        opt.step(g)
        hand.step(g)
    assert all(_same_bits(x, y) for x, y in zip(a, b))
    assert opt.last_lr == [LR(9), 3e-3]


def test_a_written_hyperparameter_and_the_plateau_scale_apply_at_the_next_step():
    a, b = _params(), _params()
    opt = fastlr.Adam(a, lr=1e-2, state_dtype="int8")
    hand = _ByHand([(b, dict(ADAM, lr=1e-2))])
    opt.step(_grads(0))
    hand.step(_grads(0))
    opt.param_groups[0]["lr"] = 2e-2
    opt._lr_scale[0] = 0.5      # what ReduceLROnPlateau writes
    hand.groups[0][1]["lr"] = 1e-2
    opt.step(_grads(1))
    hand.step(_grads(1))
    assert all(_same_bits(x, y) for x, y in zip(a, b))


def test_reference_mode_matches_the_compiled_step():
    """step_reference runs fastlr.reference.adam_int8_state per param: the same bits,
    with clipping, groups, a flat grad buffer and F-ordered params."""
    shapes = [(40, 9), (7,), (300,)]
    fa, va = fastlr.flat_buffer(shapes)
    fb, vb = fastlr.flat_buffer(shapes)
    fc, (c0, c1, c2) = fastlr.flat_buffer(shapes)
    for x, y in zip(va, _params(3, shapes)):
        x[...] = y
    fb[...] = fa
    fc[...] = fa
    fa_f = np.asfortranarray(_params(4, [(20, 30)])[0])
    fb_f = fa_f.copy(order="F")

    def groups(vs, f):
        return [{"params": vs[:2]}, {"params": [vs[2], f], "weight_decay": 0.2, "lr": LR}]
    fast = fastlr.AdamW(groups(va, fa_f), lr=1e-2, max_grad_norm=5.0, state_dtype="int8")
    twin = fastlr.AdamW(groups(vb, fb_f), lr=1e-2, max_grad_norm=5.0, state_dtype="int8")
    for t in range(10):
        g = _grads(t, shapes + [(20, 30)], scale=3.0)
        g[3] = np.asfortranarray(g[3])
        fast.step(g)
        twin.step_reference(g)
        assert fast.last_grad_norm > 5.0
    assert all(_same_bits(x, y) for x, y in zip(va + [fa_f], vb + [fb_f]))
    for i in fast.state:
        for key, buf in fast.state[i].items():
            if key != "step":
                assert _same_bits(buf, twin.state[i][key]), (i, key)
    # one flat grad buffer: the same as the list of its views (each param in its order)
    one = fastlr.Adam([c0, c1, c2], lr=1e-2, state_dtype="int8")
    ref = fastlr.Adam([x.copy() for x in (c0, c1, c2)], lr=1e-2, state_dtype="int8")
    flat, views = fastlr.flat_buffer(shapes)
    flat[...] = np.random.default_rng(5).standard_normal(flat.size)
    one.step(flat)
    ref.step_reference(flat)
    assert all(_same_bits(x, y) for x, y in zip((c0, c1, c2), ref.params))


def test_reference_splits_a_flat_grad_in_each_params_memory_order():
    """A flat grad buffer over an F-ordered param: the element at each memory position
    (as the engine pairs them), for every state dtype."""
    w = np.asfortranarray(np.ones((3, 4), np.float32))
    flat = np.arange(12, dtype=np.float32) - 5.5
    for mode in ("float32", "int8"):
        a, b = w.copy(order="F"), w.copy(order="F")
        fastlr.Adam([a], lr=0.1, state_dtype=mode).step(flat)
        fastlr.Adam([b], lr=0.1, state_dtype=mode).step_reference(flat)
        # (the float32 twin is held to a tolerance; int8's to the bits)
        assert _same_bits(a, b) if mode == "int8" else np.allclose(a, b, rtol=1e-6), mode


def test_clipping_scales_the_grads_as_the_float32_step_does():
    a, b, c = _params(), _params(), _params()
    opt = fastlr.AdamW(a, lr=1e-2, max_grad_norm=1.0, state_dtype="int8")
    f32 = fastlr.AdamW(c, lr=1e-2, max_grad_norm=1.0)
    hand = _ByHand([(b, dict(ADAM, lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True))])
    for t in range(5):
        g = _grads(t, scale=2.0)
        opt.step(g)
        f32.step(g)
        assert opt.last_grad_norm == f32.last_grad_norm      # the same compiled reduction
        hand.step(g, scale=min(1.0 / (opt.last_grad_norm + 1e-6), 1.0))
    assert all(_same_bits(x, y) for x, y in zip(a, b))


def test_skip_nonfinite_skips_before_anything_is_written():
    a = _params()
    before = [p.copy() for p in a]
    opt = fastlr.Adam(a, lr=1e-2, skip_nonfinite=True, state_dtype="int8")
    g = _grads(0)
    g[2][1, 1] = np.nan
    assert opt.step(g) is False
    assert opt.skipped_steps == 1 and opt.steps == 0
    assert all(_same_bits(x, y) for x, y in zip(a, before))
    assert not any(buf.any() for st in opt.state.values() for k, buf in st.items()
                   if k != "step")
    assert opt.step(_grads(1)) is True and opt.steps == 1


def test_thread_count_does_not_change_the_bits():
    shapes = [(40000,), (300,)]
    runs = []
    for n in (1, 2):
        ps = _params(1, shapes)
        opt = fastlr.AdamW(ps, lr=1e-2, n_threads=n, state_dtype="int8")
        for t in range(3):
            opt.step(_grads(t, shapes))
        runs.append(ps)
    assert all(_same_bits(x, y) for x, y in zip(*runs))


def test_add_param_group_starts_its_own_count():
    a, b = _params(), _params()
    opt = fastlr.Adam(a[:3], lr=1e-2, state_dtype="int8")
    hand = _ByHand([(b[:3], dict(ADAM, lr=1e-2))])
    for t in range(3):
        opt.step(_grads(t)[:3])
        hand.step(_grads(t)[:3])
    opt.add_param_group({"params": a[3:], "lr": 5e-3})
    hand.groups.append((b[3:], dict(ADAM, lr=5e-3), [_state(p) for p in b[3:]], [0, 0]))
    for t in range(3, 6):
        opt.step(_grads(t))
        hand.step(_grads(t))
    assert all(_same_bits(x, y) for x, y in zip(a, b))
    assert [opt.state[i]["step"] for i in range(5)] == [6, 6, 6, 3, 3]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_params_step_their_float32_masters(dtype):
    ml_dtypes = pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    dt = np.dtype(ml_dtypes.bfloat16) if ml_dtypes else np.dtype(np.float16)
    shapes = [(300,), (5, 7)]
    p16 = [p.astype(dt) for p in _params(2, shapes)]
    copies = [p.astype(np.float32) for p in p16]
    opt = fastlr.AdamW(p16, lr=1e-2, state_dtype="int8")
    ref = fastlr.AdamW(copies, lr=1e-2, state_dtype="int8")
    for t in range(5):
        g = [x.astype(dt) for x in _grads(t, shapes)]
        opt.step(g)
        ref.step([x.astype(np.float32) for x in g])
    for master, x, user in zip(opt.param_groups[0]["params"], copies, p16):
        assert _same_bits(master, x)
        assert _same_bits(user, x.astype(dt))
    assert opt.params[0] is p16[0]


def test_state_is_codes_and_scales_and_a_quarter_of_the_memory():
    ps = _params()
    opt = fastlr.Adam(ps, lr=1e-2, state_dtype="int8")
    opt.step(_grads(0))
    st = opt.state[0]
    assert sorted(k for k in st if k != "step") == ["exp_avg", "exp_avg_scale", "exp_avg_sq",
                                                    "exp_avg_sq_scale"]
    assert st["exp_avg"].dtype == np.uint8 and st["exp_avg"].shape == (300,)
    assert st["exp_avg_scale"].dtype == np.float32 and st["exp_avg_scale"].shape == (2,)
    assert opt.state[1]["exp_avg_scale"].shape == (0,)
    n = sum(p.size for p in ps)
    nbytes = sum(v.nbytes for s in opt.state.values() for k, v in s.items() if k != "step")
    assert nbytes == 2 * n + 8 * sum((p.size + 255) // 256 for p in ps)
    assert "state_dtype='int8'" in repr(opt)
    # each block's scale is the absmax of its moment (decoded code 1.0 at the max)
    m = int8.decoded(ps[0], st["exp_avg"], st["exp_avg_scale"], "exp_avg")
    assert np.abs(m[:256]).max() == st["exp_avg_scale"][0]


# ---- checkpoints -----------------------------------------------------------------------
def test_checkpoint_round_trip_is_exact_and_resumes_bit_for_bit(tmp_path):
    a = _params()
    opt = fastlr.AdamW(a, lr=LR, state_dtype="int8")
    for t in range(4):
        opt.step(_grads(t))
    sd = opt.state_dict()
    mid = [p.copy() for p in a]
    path = tmp_path / "int8.npz"
    opt.save(path)
    for t in range(4, 8):
        opt.step(_grads(t))
    for source in ("file", "dict"):
        resumed = fastlr.AdamW([p.copy() for p in mid], lr=LR, state_dtype="int8")
        if source == "file":
            resumed.load(path)
        else:
            resumed.load_state_dict(sd)
        assert resumed.steps == 4
        for i in range(len(a)):
            for key in ("exp_avg", "exp_avg_scale", "exp_avg_sq", "exp_avg_sq_scale"):
                assert _same_bits(resumed.state[i][key], sd["state"][i][key])
        for t in range(4, 8):
            resumed.step(_grads(t))
        assert all(_same_bits(x, y) for x, y in zip(resumed.params, a)), source
    # the state dict holds copies, not the live buffers
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.state[0]["exp_avg"])


def _bf16_nearest(x):
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32)


@pytest.mark.parametrize("target", ["float32", "bfloat16"])
def test_int8_state_loads_decoded_into_float_state(target):
    a = _params()
    opt = fastlr.Adam(a, lr=1e-2, state_dtype="int8")
    for t in range(3):
        opt.step(_grads(t))
    sd = opt.state_dict()
    other = fastlr.Adam([p.copy() for p in a], lr=1e-2, state_dtype=target)
    other.load_state_dict(sd)
    for i, p in enumerate(a):
        st = sd["state"][i]
        flat = st["exp_avg"].reshape(-1).astype(np.uint32)
        mag = int8_decode(flat & 127, 15)
        m = np.where(flat & 128, -mag, mag) * np.repeat(st["exp_avg_scale"], BLOCK)[:p.size]
        v = int8_decode(st["exp_avg_sq"].reshape(-1), 31) * np.repeat(st["exp_avg_sq_scale"],
                                                          BLOCK)[:p.size]
        got = other.state_dict()["state"][i]
        want_m, want_v = m.astype(np.float32), v.astype(np.float32)
        if target == "bfloat16":        # rounded to nearest even
            want_m, want_v = _bf16_nearest(want_m), _bf16_nearest(want_v)
        assert _same_bits(got["exp_avg"], want_m.reshape(p.shape)), i
        assert _same_bits(got["exp_avg_sq"], want_v.reshape(p.shape)), i
        assert got["step"] == 3
    other.step(_grads(3))           # and it steps on


def test_float_state_loads_encoded_into_int8_state():
    """Each block's max as its scale, the codes rounded to nearest: decoding gives the
    float32 state back within half a code step (1/16 of the value) or the smallest code."""
    a = _params()
    f32 = fastlr.AdamW(a, lr=1e-2)
    for t in range(3):
        f32.step(_grads(t))
    sd = f32.state_dict()
    opt = fastlr.AdamW([p.copy() for p in a], lr=1e-2, state_dtype="int8")
    opt.load_state_dict(sd)
    for i, p in enumerate(a):
        st = opt.state[i]
        for moment in ("exp_avg", "exp_avg_sq"):
            want = sd["state"][i][moment]
            got = int8.decoded(p, st[moment], st[moment + "_scale"], moment)
            scale = np.repeat(st[moment + "_scale"], BLOCK)[:p.size].reshape(p.shape)
            if p.size:
                assert st[moment + "_scale"][0] == np.abs(want.reshape(-1)[:256]).max()
            tiny = scale * (2.0 ** -17 if moment == "exp_avg" else 2.0 ** -33)
            assert np.all(np.abs(got - want) <= np.abs(want) / 16 + tiny), (i, moment)
            assert np.all(np.sign(got) * np.sign(want) >= 0)
    before = [p.copy() for p in opt.params]
    opt.step(_grads(3))
    assert opt.steps == 4 and not all(_same_bits(x, y) for x, y in zip(before, opt.params))


def test_encoding_keeps_each_params_memory_order():
    """An F-ordered param's blocks run down its columns, in both conversions."""
    for order, want in (("F", [1.0, 4.0, 4.0]), ("C", [4.0, 4.0, 4.0])):
        w = np.ones((300, 2), np.float32, order=order)
        m = np.zeros((300, 2), np.float32, order=order)
        m[:, 0] = 1.0       # F order: elements 0-299 in memory, blocks 0 and 1
        m[:, 1] = -4.0
        codes, scales = int8.encoded(w, m, "exp_avg")
        assert scales.tolist() == want, order
        assert codes.flags[f"{order}_CONTIGUOUS"]
        assert _same_bits(int8.decoded(w, codes, scales, "exp_avg"), m)



@pytest.mark.parametrize("source", ["dict", "file"])
def test_a_checkpoint_keeps_its_blocks_across_param_layouts(source, tmp_path):
    """An F-ordered param's blocks run down its columns. Its checkpoint (the codes in the
    param's layout, which a file keeps) loaded into a C-ordered param of the same shape
    decodes in the checkpoint's order: into float32 state exactly what the F-ordered
    optimizer holds; into int8 state as that float32 state encoded in C order."""
    rng = np.random.default_rng(3)
    w = np.asfortranarray(rng.standard_normal((40, 13)).astype(np.float32))   # 3 blocks
    opt = fastlr.Adam([w], lr=1e-2, state_dtype="int8")
    for t in range(3):
        g = rng.standard_normal((40, 13)).astype(np.float32) * np.linspace(
            0.01, 10, 13, dtype=np.float32)
        opt.step([np.asfortranarray(g)])
    sd = opt.state_dict()
    if source == "file":
        opt.save(tmp_path / "f.npz")
        sd = fastlr.Adam([w.copy(order="F")], lr=1e-2, state_dtype="int8")
        sd.load(tmp_path / "f.npz")
        assert sd.state_dict()["state"][0]["exp_avg"].flags.f_contiguous
        sd = sd.state_dict()
    truth = fastlr.Adam([w.copy(order="F")], lr=1e-2)
    truth.load_state_dict(sd)
    into_c = fastlr.Adam([np.ascontiguousarray(w)], lr=1e-2)
    into_c.load_state_dict(sd)
    int8_c = fastlr.Adam([np.ascontiguousarray(w)], lr=1e-2, state_dtype="int8")
    int8_c.load_state_dict(sd)
    via_float = fastlr.Adam([np.ascontiguousarray(w)], lr=1e-2, state_dtype="int8")
    via_float.load_state_dict(truth.state_dict())
    for moment in ("exp_avg", "exp_avg_sq"):
        assert _same_bits(into_c.state[0][moment], truth.state[0][moment]), moment
        for key in (moment, moment + "_scale"):
            assert _same_bits(int8_c.state[0][key], via_float.state[0][key]), key
    strided = dict(sd, state={0: dict(sd["state"][0])})
    strided["state"][0]["exp_avg"] = np.zeros((80, 26), np.uint8)[::2, ::2]
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] must be contiguous \(C or F "
                                         r"order: its memory order is the order of its blocks"):
        int8_c.load_state_dict(strided)


def test_the_step_runs_the_params_it_was_built_with():
    """param_groups[g]["params"] cannot be edited (TypeError, nothing changes); the int8
    step, like the float32 one, then updates the optimizer's own params with their own
    grads and state."""
    def build(state_dtype):
        a, b, c = (np.zeros(4, np.float32) for _ in range(3))
        opt = fastlr.Adam([{"params": [a, b]}, {"params": [c]}], lr=0.1,
                          state_dtype=state_dtype)
        return opt, (a, b, c)
    grads = [np.ones(4, np.float32), -np.ones(4, np.float32), np.ones(4, np.float32)]
    want, (a32, b32, c32) = build("float32")
    want.step(grads)
    for edit in ("pop", "append"):
        opt, (a, b, c) = build("int8")
        with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\] cannot be "
                                            r"changed in place"):
            if edit == "pop":
                opt.param_groups[0]["params"].pop()
            else:
                opt.param_groups[0]["params"].append(np.zeros(4, np.float32))
        assert [id(p) for p in opt.param_groups[0]["params"]] == [id(a), id(b)]
        opt.step(grads)
        assert opt.steps == 1
        for x, y in ((a, a32), (b, b32), (c, c32)):
            assert _same_bits(x, y), edit


def test_a_step_number_past_int64_is_refused_before_anything_is_written():
    a, b = np.zeros(4, np.float32), np.zeros(4, np.float32)
    opt = fastlr.Adam([a, b], lr=0.1, state_dtype="int8")
    sd = opt.state_dict()
    sd["state"][1]["step"] = 2**63 - 1
    opt.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"params\[1\] \(param_groups\[0\]\['params'\]\[1\]\) "
                                         r"has taken 9223372036854775807 steps; its next step "
                                         r"number must be < 2\*\*63. Nothing was updated"):
        opt.step([np.ones(4, np.float32)] * 2)
    assert opt.steps == 0 and not a.any() and not b.any()

def test_checkpoint_errors_change_nothing():
    a = _params()
    opt = fastlr.Adam(a, lr=1e-2, state_dtype="int8")
    opt.step(_grads(0))
    good = opt.state_dict()
    snapshot = {k: v.copy() for k, v in opt.state[0].items() if k != "step"}

    def broken(i, key, value):
        sd = opt.state_dict()
        sd["state"][i][key] = value
        return sd
    cases = [
        (broken(0, "exp_avg", good["state"][0]["exp_avg"].astype(np.int8)),
         r"state\[0\]\['exp_avg'\] must be uint8 codes \(int8 state\) of shape \(300,\)"),
        (broken(0, "exp_avg_scale", np.zeros(3, np.float32)),
         r"state\[0\]\['exp_avg_scale'\] must be float32 of shape \(2,\) \(one scale per "
         r"block of 256 of the param's 300 elements\)"),
        (broken(3, "exp_avg_sq_scale", np.zeros(1, np.float64)),
         r"state\[3\]\['exp_avg_sq_scale'\] must be float32"),
    ]
    no_scale = opt.state_dict()
    del no_scale["state"][2]["exp_avg_scale"]
    cases.append((no_scale, r"state\[2\] has no 'exp_avg_scale' buffer"))
    f32 = fastlr.Adam([p.copy() for p in a], lr=1e-2)
    f32.step(_grads(0))
    negative = f32.state_dict()
    negative["state"][4]["exp_avg_sq"][0, 0] = -1.0
    cases.append((negative, r"state\[4\]\['exp_avg_sq'\] holds negative values"))
    for sd, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        for k, v in snapshot.items():
            assert _same_bits(opt.state[0][k], v)
        assert opt.steps == 1
    # int8 state with a bad scale into float32 state: the same check
    with pytest.raises(ValueError, match=r"exp_avg_scale'\] must be float32 of shape"):
        f32.load_state_dict(broken(0, "exp_avg_scale", np.zeros(3, np.float32)))
    # AMSGrad state has nowhere to go
    ams = fastlr.Adam([p.copy() for p in a], lr=1e-2, amsgrad=True)
    ams.step(_grads(0))
    sd = ams.state_dict()
    for g in sd["param_groups"]:
        g["amsgrad"] = False
    with pytest.raises(ValueError, match=r"buffers \['max_exp_avg_sq'\]"):
        opt.load_state_dict(sd)


# ---- refusals --------------------------------------------------------------------------
def test_amsgrad_is_refused_at_construction_in_groups_and_on_write():
    with pytest.raises(ValueError, match=r"fastlr.Adam: amsgrad=True is not available with "
                                         r"state_dtype='int8'"):
        fastlr.Adam(_params(), amsgrad=True, state_dtype="int8")
    with pytest.raises(ValueError, match=r"amsgrad=True is not available"):
        fastlr.AdamW([{"params": _params()[:1], "amsgrad": True}], state_dtype="int8")
    opt = fastlr.Adam(_params(), state_dtype="int8")
    with pytest.raises(ValueError, match=r"amsgrad=True is not available"):
        opt.param_groups[0]["amsgrad"] = True
    assert opt.param_groups[0]["amsgrad"] is False
    with pytest.raises(ValueError, match=r"amsgrad=True is not available"):
        opt.add_param_group({"params": [np.ones(3, np.float32)], "amsgrad": True})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "NAdam", "RAdam", "Adamax", "Lion"])
def test_other_optimizers_refuse_int8_state(name):
    cls = getattr(fastlr, name)
    with pytest.raises(ValueError, match=rf"fastlr.{name}: state_dtype='int8' is implemented "
                                         r"for Adam and AdamW"):
        cls(_params(), lr=0.1, state_dtype="int8")


def test_float64_params_are_refused():
    ps = [np.ones(3, np.float32), np.ones(3)]
    with pytest.raises(TypeError, match=r"params\[1\] .*has dtype float64, but "
                                        r"state_dtype='int8' needs float32 params"):
        fastlr.Adam(ps, state_dtype="int8")
    opt = fastlr.Adam([np.ones(3, np.float32)], state_dtype="int8")
    with pytest.raises(TypeError, match=r"state_dtype='int8' needs float32 params"):
        opt.add_param_group({"params": [np.ones(2)]})


def _untouched(opt, params, before):
    assert opt.steps == 0 and all(_same_bits(x, y) for x, y in zip(params, before))
    assert not any(buf.any() for st in opt.state.values() for k, buf in st.items()
                   if k != "step")


def _over(state, n):
    """n float32 over the memory of ``state`` and what follows it (its allocation)."""
    root = state
    while isinstance(root.base, np.ndarray):
        root = root.base
    start = state.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return root.reshape(-1).view(np.uint8)[start:start + 4 * n].view(np.float32)


@pytest.mark.parametrize("change, exc, match", [
    (lambda g, o: g.__setitem__(2, g[2].astype(np.float64)), TypeError,
     r"grads\[2\] \(param_groups\[0\]\['params'\]\[2\]\) has dtype float64"),
    (lambda g, o: g.__setitem__(4, g[4].T.copy()), ValueError, r"grads\[4\] .*has shape"),
    (lambda g, o: g.pop(), ValueError, r"got 4 grads for 5 params"),
    (lambda g, o: g.__setitem__(2, _over(o.state[0]["exp_avg"], 85).reshape(17, 5)),
     ValueError, r"grads\[2\] .*overlaps the optimizer's int8 state in memory"),
    (lambda g, o: g.__setitem__(1, o.state[0]["exp_avg_scale"][:0]), None, None),
    (lambda g, o: o.param_groups[0].__setitem__("lr", lambda t: -1.0), ValueError,
     r"param_groups\[0\]\['lr'\] is -1.0 at step 0 \(from its schedule\)"),
])
def test_bad_grads_and_values_raise_before_anything_is_written(change, exc, match):
    ps = _params()
    before = [p.copy() for p in ps]
    opt = fastlr.Adam(ps, lr=1e-2, state_dtype="int8")
    g = _grads(0)
    change(g, opt)
    if exc is None:             # an empty grad overlaps nothing
        opt.step(g)
        assert opt.steps == 1
        return
    with pytest.raises(exc, match=match):
        opt.step(g)
    _untouched(opt, ps, before)


def test_row_sparse_grads_are_refused():
    w = np.zeros((10, 4), np.float32)
    opt = fastlr.Adam([w], lr=0.1, state_dtype="int8")
    with pytest.raises(ValueError, match=r"row-sparse grads \(grads\[0\].*\) need "
                                         r"state_dtype='float32'; this optimizer keeps "
                                         r"state_dtype='int8'"):
        opt.step([fastlr.RowSparseGrad(np.array([1, 3]), np.ones((2, 4), np.float32))])
    assert not w.any() and opt.steps == 0


def test_no_steps_in_windows():
    """fastlr.distributed's overlapped step asks supports_windows; the windowed step says
    why it refuses."""
    flat, views = fastlr.flat_buffer([(300,), (5,)])
    opt = fastlr.AdamW(views, lr=1e-2, state_dtype="int8")
    assert not supports_windows(opt)
    assert supports_windows(fastlr.AdamW(fastlr.flat_buffer([(3,)])[1], lr=1e-2,
                                         state_dtype="bfloat16"))
    with pytest.raises(TypeError, match=r"cannot step in windows \(state_dtype='int8'"):
        opt._windowed_step(np.zeros(305, np.float32))
    assert opt.steps == 0


def test_the_torch_bridge_takes_no_state_dtype():
    torch = pytest.importorskip("torch")
    from fastlr.compat.torch import AdamW
    with pytest.raises(TypeError, match="state_dtype"):
        AdamW([torch.nn.Parameter(torch.zeros(3))], state_dtype="int8")


# ---- quality ---------------------------------------------------------------------------
def test_quality_against_float32_state_on_least_squares():
    """AdamW + warmup-cosine with int8 state in the class ends within 2% of float32 state's
    final training loss (mean of two minibatch orders), as the kernel does
    (tests/optim/test_int8state.py)."""
    from fastlr._tools import compare
    t = compare.in_float32(compare.TASKS["lstsq"](0))
    steps = t.epochs * t.steps_per_epoch()
    loss = {}
    for mode in ("float32", "int8"):
        method = compare.Method("adamw", "AdamW", "AdamW", 1e-3, "lr", "warmup_cosine",
                                {"state_dtype": mode})
        runs = [compare.run_one(t, method, 0.1, steps, seed) for seed in (0, 1)]
        assert not any(r["diverged"] for r in runs)
        loss[mode] = np.mean([r["train_loss"] for r in runs])
    assert abs(loss["int8"] / loss["float32"] - 1) <= 0.02, loss


@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
def test_a_schedule_is_called_once_per_step_and_its_checked_value_applied(state_dtype):
    """The int8 step applies the values the engine checked: a callable schedule is called
    once per step, as for float32 state (a second call could return another value)."""
    calls = []

    def lr(t):
        calls.append(t)
        return 0.1

    w = np.ones(300, np.float32)
    opt = fastlr.Adam([w], lr=lr, state_dtype=state_dtype)
    for _ in range(3):
        opt.step([np.ones(300, np.float32)])
    assert calls == [0, 1, 2]
