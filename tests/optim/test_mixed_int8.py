"""fastlr.kernels.adam_mixed_int8_state (16-bit params with 8-bit block-wise state, one pass)
against its NumPy twin fastlr.reference.adam_mixed_int8_state (the widening, int8-state and
rounding twins as passes), bit for bit in every combination; with a master, the bits of
fastlr.kernels.adam_int8_state on the master; every built variant and thread count; every
argument error; and fastlr.AdamW(state_dtype="int8", master_weights=False) through it."""

import math

import numpy as np
import pytest

import fastlr
from fastlr import kernels
from fastlr.reference import adam_mixed_int8_state as twin
from fastlr.reference.lowprecision import bf16_widen

# formats, options and helpers of adam_mixed's tests (its formats, float32 <-> 16 bits)
from test_mixed import FORMATS, OPTIONS, _dtype, _readonly, _same_bits, _to16, _to32  # noqa: E402

FN = "fastlr.kernels.adam_mixed_int8_state"
BLOCK = 256

# SHAPES: one element, a short block, whole blocks, two threads' spans and a short block,
# past the twin's chunk of 65536 (the codes' random bits without a master)
SHAPES = [(1,), (255,), (2, 256), (70001,), (300, 231)]


def _buffers(fmt, master, shape, order="C", seed=0):
    """param, exp_avg, exp_avg_scale, exp_avg_sq, exp_avg_sq_scale, master (or None)."""
    rng = np.random.default_rng(seed)
    p = np.array(_to16(rng.standard_normal(shape).astype(np.float32), fmt), order=order)
    nblk = -(-p.size // BLOCK)
    m = np.zeros(shape, np.uint8, order=order)
    v = np.zeros(shape, np.uint8, order=order)
    w = np.array(_to32(p), np.float32, order=order) if master else None
    return [p, m, np.zeros(nblk, np.float32), v, np.zeros(nblk, np.float32), w]


def _grad(t, fmt, grad32, shape, order="C"):
    g = (0.1 * np.random.default_rng([t, 11]).standard_normal(shape)).astype(np.float32)
    return np.array(g if grad32 else _to16(g, fmt), order=order)


def _run(fn, bufs, fmt, grad32, kw, steps=4, order="C", special=None, **extra):
    shape = bufs[0].shape
    for t in range(1, steps + 1):
        g = _grad(t, fmt, grad32, shape, order)
        if special is not None and t == 2:
            g.reshape(-1)[:len(special)] = special if grad32 else _to16(special, fmt)
        fn(bufs[0], g, *bufs[1:], step=t, **kw, **extra)
    return bufs


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
@pytest.mark.parametrize("grad32", [False, True], ids=["grad-16", "grad-f32"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernel_matches_twin_bit_for_bit(fmt, grad32, master, option):
    kw = OPTIONS[option]
    for shape in SHAPES:
        for order in ("C", "F"):
            fast = _run(kernels.adam_mixed_int8_state, _buffers(fmt, master, shape, order),
                        fmt, grad32, kw, order=order, n_threads=2)
            slow = _run(twin, _buffers(fmt, master, shape, order), fmt, grad32, kw,
                        order=order)
            for a, b in zip(fast, slow):
                assert a is None and b is None or _same_bits(a, b), (shape, order)


@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
def test_same_bits_for_any_thread_count(master):
    shape = (3 * 16384 + 77,)
    outs = [_run(kernels.adam_mixed_int8_state, _buffers("float16", master, shape), "float16",
                 False, OPTIONS["adamw"], n_threads=nt) for nt in (1, 2, 3)]
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert a is None and b is None or _same_bits(a, b)


def test_every_built_variant_gives_identical_bits():
    """fastlr._core.mixed built for baseline x86-64, x86-64-v3 and x86-64-v4 (those this
    CPU runs): the same bits, non-finite and tiny grads included."""
    from fastlr._core import dispatch
    builds = list(dispatch.variants("mixed").values())
    if len(builds) < 2:
        pytest.skip("only the baseline build is built or runs on this CPU")
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-38, -6e-8], np.float32)
    for fmt in ("float16", "bf16-bits"):
        for grad32 in (False, True):
            for master in (False, True):
                for kw in OPTIONS.values():
                    outs = [_run(b.adam_mixed_int8_state, _buffers(fmt, master, (5001,), seed=4),
                                 fmt, grad32, kw, steps=3, special=special) for b in builds]
                    for other in outs[1:]:
                        for a, b in zip(outs[0], other):
                            assert a is None and b is None or _same_bits(a, b)


@pytest.mark.parametrize("fmt", ["float16", "bf16-bits"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_master_bits_are_the_float32_int8_kernels(fmt, option):
    """With a master: master, codes and scales are adam_int8_state's on the master with the
    grad widened; the param is the master rounded to nearest even."""
    kw = OPTIONS[option]
    shape = (70001,)
    bufs = _buffers(fmt, True, shape, seed=2)
    ref = [bufs[5].copy()] + [b.copy() for b in bufs[1:5]]
    for t in range(1, 4):
        g = _grad(t, fmt, False, shape)
        kernels.adam_mixed_int8_state(bufs[0], g, *bufs[1:], step=t, **kw)
        kernels.adam_int8_state(ref[0], _to32(g), *ref[1:], step=t, **kw)
        for a, b in zip(bufs[1:5] + [bufs[5]], ref[1:] + [ref[0]]):
            assert _same_bits(a, b)
        assert _same_bits(bufs[0], _to16(ref[0], fmt))


def test_no_master_param_is_a_neighbour_of_the_float32_step():
    shape = (4096,)
    bufs = _buffers("bf16-bits", False, shape, seed=3)
    w = _to32(bufs[0]).copy()
    st = [b.copy() for b in bufs[1:5]]
    g = _grad(1, "bf16-bits", False, shape)
    kernels.adam_mixed_int8_state(bufs[0], g, *bufs[1:5], step=1, lr=3e-3)
    # codes' bits use the index in the param here (one chunk), as adam_int8_state's
    kernels.adam_int8_state(w, _to32(g), *st, step=1, lr=3e-3)
    for a, b in zip(bufs[1:5], st):
        assert _same_bits(a, b)
    got = _to32(bufs[0])
    # the neighbours: w truncated towards zero, and one bfloat16 step further out
    low = (w.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    down, up = bf16_widen(low), bf16_widen(low + np.uint16(1))
    assert np.all((got == down) | (got == up) | (got == w))
    assert 0.1 < np.mean(got != down) < 0.9          # rounded both ways, not truncated


def test_zero_size_and_nonfinite_grads():
    p = np.ones((0, 3), np.float16)
    z8, zs = np.zeros((0, 3), np.uint8), np.zeros(0, np.float32)
    kernels.adam_mixed_int8_state(p, p.copy(), z8, zs, z8.copy(), zs.copy(), step=1, lr=0.1)
    bufs = _buffers("float16", True, (600,))
    g = np.full(600, 0.01, np.float16)
    g[300] = np.nan
    kernels.adam_mixed_int8_state(bufs[0], g, *bufs[1:], step=1, lr=0.1)
    # the NaN's block (256..511) gets a NaN scale, the others stay finite
    assert np.isnan(bufs[2][1]) and np.isfinite(bufs[2][[0, 2]]).all()
    assert np.isnan(bufs[5][300]) and np.isfinite(bufs[5][:256]).all()


def _args(n=4, fmt="float16"):
    nb = -(-n // BLOCK)
    dt = _dtype(fmt)
    return dict(param=np.ones(n, dt), grad=np.full(n, 0.5, dt),
                exp_avg=np.zeros(n, np.uint8), exp_avg_scale=np.zeros(nb, np.float32),
                exp_avg_sq=np.zeros(n, np.uint8), exp_avg_sq_scale=np.zeros(nb, np.float32),
                master=np.ones(n, np.float32), step=1, lr=0.1)


_SHARED = np.zeros(8, np.uint8)

ERRORS = [
    (dict(param=np.ones(4, np.float32)), TypeError,
     r"param must have dtype float16 or bfloat16 .*got float32"),
    (dict(param=[1.0, 2.0]), TypeError, "param must be a numpy.ndarray, got list"),
    (dict(grad=np.ones(4, np.float64)), TypeError,
     r"grad must have the param's dtype \(float16\) or float32, got float64"),
    (dict(grad=np.ones(3, np.float16)), ValueError, r"grad has shape \(3,\)"),
    (dict(exp_avg=np.zeros(4, np.float32)), TypeError,
     r"exp_avg must have dtype uint8 \(8-bit state codes\), got float32"),
    (dict(exp_avg_sq=np.zeros(5, np.uint8)), ValueError, r"exp_avg_sq has shape \(5,\)"),
    (dict(exp_avg_scale=np.zeros(2, np.float32)), ValueError,
     r"exp_avg_scale must have shape \(1,\) \(one scale per block of 256"),
    (dict(exp_avg_sq_scale=np.zeros(1, np.float64)), TypeError,
     "exp_avg_sq_scale must have dtype float32"),
    (dict(master=np.ones(4, np.float16)), TypeError, "master must have dtype float32"),
    (dict(master=np.ones(5, np.float32)), ValueError, r"master has shape \(5,\)"),
    (dict(param=np.ones(8, np.float16)[::2]), ValueError, "param must be contiguous"),
    (dict(param=_readonly(np.ones(4, np.float16))), ValueError, "param is read-only"),
    (dict(exp_avg=_readonly(np.zeros(4, np.uint8))), ValueError, "exp_avg is read-only"),
    (dict(exp_avg_scale=_readonly(np.zeros(1, np.float32))), ValueError,
     "exp_avg_scale is read-only"),
    (dict(master=_readonly(np.ones(4, np.float32))), ValueError, "master is read-only"),
    (dict(exp_avg=_SHARED[:4], exp_avg_sq=_SHARED[2:6]), ValueError,
     "exp_avg and exp_avg_sq overlap"),
    (dict(exp_avg=_SHARED[:4], exp_avg_sq=_SHARED[4:8]), None, None),   # adjacent: fine
    (dict(amsgrad=True), ValueError, "amsgrad=True is not available with 8-bit"),
    (dict(step=0), ValueError, "step must be >= 1"),
    (dict(lr=math.nan), ValueError, "lr must be a finite number, got nan"),
    (dict(beta1=1.0), ValueError, r"beta1 must be in \[0, 1\)"),
    (dict(eps=-1e-8), ValueError, "eps must be >= 0"),
    (dict(maximize=2), ValueError, "maximize"),
    (dict(n_threads=0), ValueError, "n_threads"),
]


@pytest.mark.parametrize("change, exc, match", ERRORS, ids=lambda x: None)
def test_argument_errors_write_nothing(change, exc, match):
    args = _args()
    args.update(change)
    before = {k: np.copy(v) for k, v in args.items() if isinstance(v, np.ndarray)}
    if exc is None:
        kernels.adam_mixed_int8_state(**args)
        return
    with pytest.raises(exc, match=rf"^{FN}: .*{match}"):
        kernels.adam_mixed_int8_state(**args)
    for k, v in before.items():
        assert _same_bits(args[k], v), k


def test_overlap_of_param_grad_and_master():
    w = np.ones(8, np.float32)
    args = _args(8)
    with pytest.raises(ValueError, match=f"^{FN}: param and grad overlap"):
        kernels.adam_mixed_int8_state(**dict(args, grad=args["param"]))
    with pytest.raises(ValueError, match=f"^{FN}: param and master overlap"):
        kernels.adam_mixed_int8_state(**dict(args, param=w.view(np.float16)[:8], master=w))
    assert _same_bits(w, np.ones(8, np.float32))
    kernels.adam_mixed_int8_state(**dict(args, grad=_readonly(args["grad"])))  # only read


@pytest.mark.parametrize("fmt", ["float16", "bf16-ml_dtypes"])
def test_adamw_without_master_steps_through_the_kernel(fmt, monkeypatch):
    """fastlr.AdamW(state_dtype="int8", master_weights=False) on a param past one chunk:
    the compiled step is this kernel (counted), bit for bit its step_reference."""
    dt = _dtype(fmt)
    rng = np.random.default_rng(5)
    a = [rng.standard_normal((300, 251)).astype(np.float32).astype(dt),
         rng.standard_normal(77).astype(np.float32).astype(dt)]
    b = [p.copy() for p in a]
    o1 = fastlr.AdamW(a, lr=0.01, state_dtype="int8", master_weights=False, n_threads=2)
    o2 = fastlr.AdamW(b, lr=0.01, state_dtype="int8", master_weights=False)
    calls = []
    real = kernels.adam_mixed_int8_state
    monkeypatch.setattr(kernels, "adam_mixed_int8_state",
                        lambda *x, **k: calls.append(1) or real(*x, **k))
    for t in range(3):
        g = [(0.1 * rng.standard_normal(p.shape)).astype(dt) for p in a]
        o1.step(g)
        o2.step_reference([x.copy() for x in g])
    assert len(calls) == 6
    for i, (p, q) in enumerate(zip(a, b)):
        assert _same_bits(p, q), i
        for k, v in o1.state[i].items():
            assert np.array_equal(v, o2.state[i][k]), (i, k)


@pytest.mark.parametrize("fmt", ["float16", "bf16-ml_dtypes"])
def test_adamw_with_masters_stores_the_params_in_the_kernel(fmt, monkeypatch):
    """fastlr.AdamW(state_dtype="int8") on 16-bit params keeps float32 masters; its compiled
    step runs this kernel with the master (one pass: the param stored there, not published
    again), bit for bit its step_reference (adam_int8_state on the masters, then the masters
    published), clipping, a NaN grad, an F-ordered param and a float32 grad included."""
    dt = _dtype(fmt)
    rng = np.random.default_rng(8)
    shapes = [(300, 251), (40, 9), (77,)]
    a = [np.asarray(rng.standard_normal(s).astype(np.float32).astype(dt)) for s in shapes]
    a[1] = np.asfortranarray(a[1])
    b = [p.copy(order="A") for p in a]
    kw = dict(lr=0.01, weight_decay=0.1, state_dtype="int8", max_grad_norm=5.0)
    o1 = fastlr.AdamW(a, n_threads=2, **kw)
    o2 = fastlr.AdamW(b, **kw)
    calls, rounded = [], []
    real = kernels.adam_mixed_int8_state
    monkeypatch.setattr(kernels, "adam_mixed_int8_state",
                        lambda *x, **k: calls.append(1) or real(*x, **k))
    from fastlr.optim import master
    real_round = master._round_into
    monkeypatch.setattr(master, "_round_into",
                        lambda *x: rounded.append(1) or real_round(*x))
    for t in range(4):
        g = [np.array((0.1 * rng.standard_normal(p.shape)).astype(
            np.float32 if (t == 2 and i == 2) else dt), order="A") for i, p in enumerate(a)]
        g[1] = np.asfortranarray(g[1])
        if t == 1:
            g[2][3] = np.nan
        o1.step(g)
        o2.step_reference([x.copy(order="A") for x in g])
    assert len(calls) == 12 and len(rounded) == 12      # 12: the twin's publishing only
    for i, (p, q) in enumerate(zip(a, b)):
        assert _same_bits(p, q), i
        assert _same_bits(o1.param_groups[0]["params"][i], o2.param_groups[0]["params"][i])
        for k, v in o1.state[i].items():
            w = o2.state[i][k]
            assert _same_bits(v, w) if isinstance(v, np.ndarray) else v == w, (i, k)


def test_masters_step_refuses_a_read_only_16bit_param_before_writing():
    """A 16-bit param kept with a master is stored by the step itself: read-only, it is
    refused before any param is updated (not after the first ones)."""
    a = [np.ones(1000, np.float16), np.ones(1000, np.float16)]
    opt = fastlr.AdamW(a, lr=0.1, state_dtype="int8")
    a[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[1\] .*read-only.*Nothing was updated"):
        opt.step([np.full(1000, 0.5, np.float16)] * 2)
    assert np.all(a[0] == 1) and opt.state[0]["step"] == 0 and not opt.state[0][
        "exp_avg_scale"].any()


def test_masters_step_publishes_a_misaligned_16bit_param():
    """A misaligned 16-bit param (which the kernel refuses) is stepped on its master and
    published as before, bit for bit the twin."""
    def misaligned():
        raw = np.zeros(2002, np.uint8)
        x = raw[1:2001].view(np.float16)
        x[:] = 1
        return x
    a, b = [np.ones(1000, np.float16), misaligned()], [np.ones(1000, np.float16), misaligned()]
    o1 = fastlr.AdamW(a, lr=0.1, state_dtype="int8")
    o2 = fastlr.AdamW(b, lr=0.1, state_dtype="int8")
    g = [np.full(1000, 0.5, np.float16)] * 2
    o1.step(g)
    o2.step_reference(g)
    assert o1.state[1]["step"] == 1 and not np.all(a[1] == 1)
    for p, q in zip(a, b):
        assert _same_bits(p, q)
