"""fastlr.kernels.adam_mixed (16-bit params: float16 or bfloat16, with or without a float32
master copy) against its NumPy twin fastlr.reference.adam_mixed, bit for bit over 100 steps
in every combination; the master's bits against the float32 kernels; float16 rounding
against NumPy's cast; the stochastic rounding's mean; thread counts; every argument error."""

import math

import numpy as np
import pytest

from fastlr import kernels
from fastlr.reference import adam_mixed as twin
from fastlr.reference.lowprecision import bf16_round, bf16_widen, random_bits, step_salt
from fastlr.reference.mixed import f16_round, f16_round_stochastic, f16_widen

FN = "fastlr.kernels.adam_mixed"

# param formats: float16, bfloat16 as uint16 bits, bfloat16 as ml_dtypes.bfloat16
FORMATS = ["float16", "bf16-bits", "bf16-ml_dtypes"]
OPTIONS = {
    "adam": dict(lr=1e-2),
    "adamw": dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "adam-l2": dict(lr=1e-2, weight_decay=0.05),
    "maximize-small-beta1": dict(lr=3e-3, beta1=0.3, beta2=0.99, eps=1e-6, maximize=True),
}


def _dtype(fmt):
    if fmt == "float16":
        return np.float16
    if fmt == "bf16-bits":
        return np.uint16
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


def _to16(x32, fmt):
    """float32 values in the param's format (nearest even)."""
    if fmt == "float16":
        return x32.astype(np.float16)
    bits = bf16_round(x32)
    return bits if fmt == "bf16-bits" else bits.view(_dtype(fmt))


def _to32(a):
    """float32 values of a 16-bit (or float32) array."""
    if a.dtype == np.float32:
        return a
    if a.dtype == np.float16:
        return a.astype(np.float32)
    return bf16_widen(a.view(np.uint16))


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def _buffers(fmt, grad32, state32, master, shape, order="C", seed=0):
    rng = np.random.default_rng(seed)
    p = np.array(_to16(rng.standard_normal(shape).astype(np.float32), fmt), order=order)
    sdt = np.float32 if state32 else np.uint16
    m = np.zeros(shape, sdt, order=order)
    v = np.zeros(shape, sdt, order=order)
    w = np.array(_to32(p), np.float32, order=order) if master else None
    return p, m, v, w


def _grad(t, fmt, grad32, shape, order="C", scale=0.1):
    g = (scale * np.random.default_rng([t, 11]).standard_normal(shape)).astype(np.float32)
    return np.array(g if grad32 else _to16(g, fmt), order=order)


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
@pytest.mark.parametrize("state32", [True, False], ids=["state-f32", "state-bf16"])
@pytest.mark.parametrize("grad32", [False, True], ids=["grad-16", "grad-f32"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernel_matches_twin_bit_for_bit(fmt, grad32, state32, master, option):
    """100 steps, odd sizes (loop tails), the kernel on 2 threads: the twin's bits."""
    kw = OPTIONS[option]
    shape = (37, 29)
    order = "F" if option == "adam-l2" else "C"
    fast = _buffers(fmt, grad32, state32, master, shape, order)
    slow = _buffers(fmt, grad32, state32, master, shape, order)
    for t in range(1, 101):
        g = _grad(t, fmt, grad32, shape, order)
        kernels.adam_mixed(fast[0], g, *fast[1:], step=t, n_threads=2, **kw)
        twin(slow[0], g, *slow[1:], step=t, **kw)
    for a, b in zip(fast, slow):
        assert a is None and b is None or _same_bits(a, b)
    assert np.isfinite(_to32(fast[0])).all()
    assert not np.array_equal(_to32(fast[0]), _to32(_buffers(fmt, grad32, state32, master,
                                                             shape, order)[0]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
def test_same_bits_for_any_thread_count(fmt, master):
    shape = (70001,)            # several 16K-element chunks and a tail
    outs = []
    for nt in (1, 2):
        bufs = _buffers(fmt, False, False, master, shape, seed=3)
        for t in range(1, 4):
            kernels.adam_mixed(bufs[0], _grad(t, fmt, False, shape), *bufs[1:], step=t,
                               lr=1e-2, n_threads=nt)
        outs.append(bufs)
    for a, b in zip(*outs):
        assert a is None and b is None or _same_bits(a, b)



def test_every_built_variant_gives_identical_bits():
    """fastlr._core.mixed compiled for baseline x86-64, x86-64-v3 (AVX2) and x86-64-v4
    (AVX-512; the one fastlr.kernels uses on such CPUs), those built that this CPU runs:
    every combination, non-finite, zero and tiny grads included, the same bits."""
    from fastlr._core import dispatch
    builds = list(dispatch.variants("mixed").values())
    if len(builds) < 2:
        pytest.skip("only the baseline build is built or runs on this CPU")
    shape = (5001,)
    # NaN, Inf, signed zeros, a float32 / bfloat16 subnormal (0 in float16), the smallest
    # float16 subnormal
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-38, -6e-8], np.float32)
    for fmt in ("float16", "bf16-bits"):
        for grad32 in (False, True):
            for state32 in (False, True):
                for master in (False, True):
                    for kw in OPTIONS.values():
                        outs = []
                        for build in builds:
                            bufs = _buffers(fmt, grad32, state32, master, shape, seed=4)
                            for t in range(1, 4):
                                g = _grad(t, fmt, grad32, shape)
                                if t == 2:
                                    g[:len(special)] = special if grad32 else _to16(special,
                                                                                    fmt)
                                build.adam_mixed(bufs[0], g, *bufs[1:], step=t, **kw)
                            outs.append(bufs)
                        for other in outs[1:]:
                            for a, b in zip(outs[0], other):
                                assert a is None and b is None or _same_bits(a, b)

@pytest.mark.parametrize("fmt", ["float16", "bf16-bits"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_master_bits_are_the_float32_kernels(fmt, option):
    """With a master, master and float32 moments are fastlr.kernels.adam's bits on float32
    copies (the grads widened exactly), and the param is the master rounded to nearest;
    with bfloat16 moments, master and moments are fastlr.kernels.adam_bf16_state's."""
    kw = OPTIONS[option]
    shape = (5003,)
    for state32, ref_kernel in ((True, kernels.adam), (False, kernels.adam_bf16_state)):
        p, m, v, w = _buffers(fmt, False, state32, True, shape, seed=5)
        w32, m32, v32 = w.copy(), m.copy(), v.copy()
        for t in range(1, 31):
            g = _grad(t, fmt, False, shape)
            kernels.adam_mixed(p, g, m, v, w, step=t, **kw)
            ref_kernel(w32, _to32(g).copy(), m32, v32, step=t, **kw)
        assert _same_bits(w, w32) and _same_bits(m, m32) and _same_bits(v, v32)
        assert _same_bits(p, _to16(w, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_master_rounds_the_float32_step_to_a_neighbour(fmt):
    """Without a master one step is the float32 step on the widened param, stored as one of
    its two neighbouring 16-bit values; over 200000 elements the rounding errors, in units
    of the gap, average 0 (unbiased) and the fraction rounded up is the mean dropped part."""
    n = 200_000
    rng = np.random.default_rng(8)
    p = _to16(rng.standard_normal(n).astype(np.float32), fmt)
    g = _to16((0.1 * rng.standard_normal(n)).astype(np.float32), fmt)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    exact = _to32(p).copy()
    kernels.adam(exact, _to32(g).copy(), m.copy(), v.copy(), step=1, lr=3e-3)
    kernels.adam_mixed(p, g, m, v, step=1, lr=3e-3)
    got = _to32(p).astype(np.float64)
    e = exact.astype(np.float64)
    lo = np.where(got <= e, got, np.nan)
    # the neighbours of exact: got is one of them, the other one ulp away on the other side
    if fmt == "float16":
        down = np.nextafter(exact.astype(np.float16), np.float16(-np.inf)).astype(np.float64)
        up = np.nextafter(exact.astype(np.float16), np.float16(np.inf)).astype(np.float64)
        near = exact.astype(np.float16).astype(np.float64)
    else:
        near = bf16_widen(bf16_round(exact)).astype(np.float64)
        b = bf16_round(exact).astype(np.int64)
        step_up = np.where(exact >= 0, 1, -1)
        up = bf16_widen((b + step_up).astype(np.uint16)).astype(np.float64)
        down = bf16_widen((b - step_up).astype(np.uint16)).astype(np.float64)
        up, down = np.maximum(up, down), np.minimum(up, down)
    lower = np.where(near <= e, near, down)
    upper = np.where(near >= e, near, up)
    assert np.all((got == lower) | (got == upper))
    gap = upper - lower
    inexact = gap > 0
    assert inexact.mean() > 0.9
    err = (got - e)[inexact] / gap[inexact]
    assert abs(err.mean()) < 0.01, err.mean()            # standard error about 0.001
    # rounded up with probability the dropped part: per tenth of the gap (nearest rounding
    # would give 0 below the middle and 1 above, truncation 0 everywhere)
    frac = ((e - lower) / np.where(inexact, gap, 1))[inexact]
    went_up = got[inexact] == upper[inexact]
    for k in range(10):
        sel = (frac >= k / 10) & (frac < (k + 1) / 10)
        assert sel.sum() > 2000
        assert abs(went_up[sel].mean() - frac[sel].mean()) < 0.03, k


@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
def test_kernel_matches_twin_at_the_edges_of_float16(master):
    """Results in the subnormal range (down to 2^-24 and below) and past 65504 (Inf):
    kernel and twin agree bit for bit, in both rounding modes."""
    rng = np.random.default_rng(12)
    n = 20000
    tiny = (rng.choice([-1, 1], n) * np.exp2(rng.uniform(-27, -13, n))).astype(np.float32)
    big = rng.uniform(6.0e4, 65504.0, n).astype(np.float32)
    for x, lr in ((tiny, 1e-6), (big, 2000.0)):
        bufs = []
        for _ in range(2):
            p = x.astype(np.float16)
            w = x.copy() if master else None
            bufs.append([p, np.zeros(n, np.float32), np.zeros(n, np.float32), w])
        for t in range(1, 11):
            g = rng.standard_normal(n).astype(np.float16)
            kernels.adam_mixed(bufs[0][0], g, *bufs[0][1:], step=t, lr=lr, maximize=True,
                               n_threads=2)
            twin(bufs[1][0], g, *bufs[1][1:], step=t, lr=lr, maximize=True)
        for a, b in zip(*bufs):
            assert a is None and b is None or _same_bits(a, b)
    p16 = bufs[0][0]
    assert np.isinf(p16).any() and np.isfinite(p16).any()


def _round_through_kernel(x, fmt):
    """The kernel's nearest rounding of float32 x: master = x, lr = 0 (the master is kept)."""
    w = np.array(x, np.float32)
    p = np.zeros(w.shape, _dtype(fmt))
    z = np.zeros(w.shape, np.float32)
    kernels.adam_mixed(p, z, z.copy(), z.copy(), w, step=1, lr=0.0)
    keep = ~np.isnan(w)         # (a NaN master comes back quieted by the arithmetic)
    assert _same_bits(w[keep], np.array(x, np.float32)[keep])
    _round_through_kernel.master = w
    return p


EDGES = [65504.0, 65519.996, 65520.0, 1e5, -65520.0, 2.0 ** -24, 1.5 * 2.0 ** -24,
         2.5 * 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * (1 + 2.0 ** -20), 2.0 ** -26, 1e-40,
         2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -11), 2.0 ** -14 * (1 - 2.0 ** -12),
         1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, -0.0, 0.0, math.inf, -math.inf, 1 / 3,
         -2.0 ** -20, 6.1e-5, 3.4e38]


def test_float16_nearest_rounding_is_numpys_cast():
    x = np.array(EDGES, np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert _same_bits(_round_through_kernel(x, "float16"), want)
    assert _same_bits(f16_round(x), want.view(np.uint16))
    # 300000 random float32 bit patterns (every exponent), NaN aside
    bits = np.random.default_rng(4).integers(0, 2 ** 32, 300_000, dtype=np.uint64)
    x = bits.astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert _same_bits(_round_through_kernel(x, "float16"), want)
    # NaN: a quiet NaN with its sign
    nan = np.array([np.nan, -np.nan, np.float32(np.nan) * -1], np.float32)
    sig = np.array([0x7F800001, 0xFF900000], np.uint32).view(np.float32)
    for x in (nan, sig):
        h = _round_through_kernel(x, "float16")
        assert np.isnan(h).all() and np.array_equal(np.signbit(h), np.signbit(x))
        assert np.all(h.view(np.uint16) & 0x0200)                   # quiet
        assert _same_bits(h.view(np.uint16), f16_round(_round_through_kernel.master))


def test_bfloat16_nearest_rounding_is_ml_dtypes_cast():
    ml = pytest.importorskip("ml_dtypes")
    bits = np.random.default_rng(5).integers(0, 2 ** 32, 300_000, dtype=np.uint64)
    x = np.concatenate([np.array(EDGES, np.float32), bits.astype(np.uint32).view(np.float32)])
    x = x[~np.isnan(x)]
    got = _round_through_kernel(x, "bf16-ml_dtypes")
    assert _same_bits(got, x.astype(ml.bfloat16))


def test_every_16_bit_value_is_kept_and_widened_exactly():
    """Every float16 and bfloat16 bit pattern (NaN aside): widened exactly (as NumPy's and
    ml_dtypes' casts), and kept unchanged by a step that changes nothing (lr = 0)."""
    allbits = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    h = allbits.view(np.float16)
    keep = ~np.isnan(h)
    assert _same_bits(f16_widen(allbits)[keep], h[keep].astype(np.float32))
    for fmt in ("float16", "bf16-bits"):
        p = allbits.copy().view(np.float16) if fmt == "float16" else allbits.copy()
        vals = _to32(p)
        keep = ~np.isnan(vals)
        p, vals = p[keep].copy(), vals[keep]
        z = np.zeros(p.shape, np.float32)
        kernels.adam_mixed(p, z, z.copy(), z.copy(), step=1, lr=0.0)
        assert _same_bits(_to32(p), vals)


def test_float16_stochastic_rounding_is_unbiased():
    """The twin's float16 stochastic rounding (which the kernel matches bit for bit) over
    many random draws: always a neighbour, the mean is the value (normal, subnormal, the
    top of the range), halves are kept, NaN and overflow as nearest."""
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(1, 2, 64), rng.uniform(2.0 ** -24, 2.0 ** -14, 64),
                        rng.uniform(2.0 ** -30, 2.0 ** -24, 32), rng.uniform(-65504, 65504, 32)
                        ]).astype(np.float32)
    key = rng.standard_normal(x.size).astype(np.float32)
    draws = np.array([f16_round_stochastic(x, random_bits(key, step_salt(t, 2)))
                      for t in range(1, 4001)]).view(np.float16).astype(np.float64)
    near = x.astype(np.float16)
    lo = np.where(near.astype(np.float64) > np.abs(x) * np.sign(x),
                  np.nextafter(near, np.float16(-np.inf)), near).astype(np.float64)
    hi = np.nextafter(lo.astype(np.float16), np.float16(np.inf)).astype(np.float64)
    assert np.all((draws == lo) | (draws == hi))
    gap = hi - lo
    bias = (draws.mean(axis=0) - x) / gap
    assert np.max(np.abs(bias)) < 0.05, np.max(np.abs(bias))    # s.e. <= 0.008
    halves = rng.standard_normal(1000).astype(np.float16).astype(np.float32)
    r = random_bits(halves, 12345)
    assert _same_bits(f16_round_stochastic(halves, r), halves.astype(np.float16).view(np.uint16))
    special = np.array([np.inf, -np.inf, 70000.0, -1e30, np.nan, 0.0, -0.0], np.float32)
    out = f16_round_stochastic(special, random_bits(special, 7))
    assert _same_bits(out, f16_round(special))


def test_stochastic_rounding_is_reproducible_from_param_and_step():
    shape = (3000,)
    runs = []
    for _ in range(2):
        bufs = _buffers("float16", False, True, False, shape, seed=9)
        for t in range(1, 6):
            kernels.adam_mixed(bufs[0], _grad(t, "float16", False, shape), *bufs[1:3],
                               step=t, lr=1e-3)
        runs.append(bufs[0])
    assert _same_bits(*runs)


def test_zero_size_and_nonfinite_grads():
    p = np.zeros((0, 3), np.float16)
    kernels.adam_mixed(p, p.copy(), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32),
                       step=1, lr=0.1)
    p = np.ones(4, np.float16)
    g = np.array([np.nan, np.inf, 1.0, 0.0], np.float16)
    w = np.ones(4, np.float32)
    kernels.adam_mixed(p, g, np.zeros(4, np.float32), np.zeros(4, np.float32), w, step=1,
                       lr=0.1)
    assert np.isnan(p[:2]).all() and np.isnan(w[:2]).all() and np.isfinite(p[2:]).all()


# ---- argument errors: nothing written --------------------------------------------------
def _args(n=4):
    return dict(param=np.ones(n, np.float16), grad=np.ones(n, np.float16),
                exp_avg=np.zeros(n, np.float32), exp_avg_sq=np.zeros(n, np.float32),
                master=np.ones(n, np.float32), step=1, lr=0.1)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


_SHARED = np.zeros(8, np.float32)

ERRORS = [
    (dict(param=np.ones(4, np.float32)), TypeError,
     r"param must have dtype float16 or bfloat16 .*got float32"),
    (dict(param=np.ones(4, np.int16)), TypeError, "param must have dtype float16"),
    (dict(param=[1.0, 2.0]), TypeError, "param must be a numpy.ndarray, got list"),
    (dict(grad=np.ones(4, np.float64)), TypeError,
     r"grad must have the param's dtype \(float16\) or float32, got float64"),
    (dict(grad=np.ones(4, np.uint16)), TypeError, r"grad must have the param's dtype"),
    (dict(exp_avg=np.zeros(4, np.float16)), TypeError,
     "exp_avg must have dtype float32 or bfloat16"),
    (dict(exp_avg_sq=np.zeros(4, np.uint16)), TypeError,
     r"exp_avg_sq must have exp_avg's dtype \(float32\), got uint16"),
    (dict(master=np.ones(4, np.float16)), TypeError, "master must have dtype float32"),
    (dict(master=np.ones(5, np.float32)), ValueError, r"master has shape \(5,\)"),
    (dict(grad=np.ones(3, np.float16)), ValueError, r"grad has shape \(3,\)"),
    (dict(param=np.ones(8, np.float16)[::2]), ValueError, "param must be contiguous"),
    (dict(param=np.ones((2, 2), np.float16), grad=np.ones((2, 2), np.float16, order="F"),
          exp_avg=np.zeros((2, 2), np.float32), exp_avg_sq=np.zeros((2, 2), np.float32),
          master=np.ones((2, 2), np.float32)), ValueError,
     "grad is F-contiguous but param is C-contiguous"),
    (dict(param=_readonly(np.ones(4, np.float16))), ValueError, "param is read-only"),
    (dict(exp_avg=_readonly(np.zeros(4, np.float32))), ValueError, "exp_avg is read-only"),
    (dict(master=_readonly(np.ones(4, np.float32))), ValueError, "master is read-only"),
    (dict(param=np.ones(4, ">f2")), TypeError, "param has non-native byte order"),
    (dict(exp_avg=_SHARED[:4], exp_avg_sq=_SHARED[2:6]), ValueError,
     "exp_avg and exp_avg_sq overlap"),
    (dict(master=_SHARED[4:8], exp_avg=_SHARED[:4].view(np.uint16)[2:6],
          exp_avg_sq=np.zeros(4, np.uint16)), None, None),      # adjacent: no overlap
    (dict(step=0), ValueError, "step must be >= 1"),
    (dict(step=2.0), TypeError, "step must be an int"),
    (dict(lr=-0.1), ValueError, "lr must be >= 0"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
    (dict(lr=math.nan), ValueError, "lr must be a finite number, got nan"),
    (dict(beta1=1.0), ValueError, r"beta1 must be in \[0, 1\)"),
    (dict(beta2=True), TypeError, "beta2 must be a real number"),
    (dict(eps=-1e-8), ValueError, "eps must be >= 0"),
    (dict(weight_decay=math.inf), ValueError, "weight_decay must be a finite number, got inf"),
    (dict(maximize=2), ValueError, "maximize"),
    (dict(decoupled_weight_decay="yes"), TypeError, "decoupled_weight_decay"),
    (dict(n_threads=0), ValueError, "n_threads"),
]


@pytest.mark.parametrize("change, exc, match", ERRORS, ids=lambda x: None)
def test_argument_errors_write_nothing(change, exc, match):
    args = _args()
    args.update(change)
    before = {k: np.copy(v) for k, v in args.items() if isinstance(v, np.ndarray)}
    if exc is None:
        kernels.adam_mixed(**args)
        return
    with pytest.raises(exc, match=rf"^{FN}: .*{match}"):
        kernels.adam_mixed(**args)
    for k, v in before.items():
        assert _same_bits(args[k], v), k


def test_overlap_across_dtypes_and_grad():
    p = np.ones(8, np.float16)
    z = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=f"^{FN}: param and grad overlap"):
        kernels.adam_mixed(p, p, z, z.copy(), step=1, lr=0.1)
    w = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=f"^{FN}: param and master overlap"):
        kernels.adam_mixed(w.view(np.float16)[:8], np.ones(8, np.float16), z, z.copy(), w,
                           step=1, lr=0.1)
    assert _same_bits(w, np.ones(8, np.float32))
    # a read-only grad is fine (it is only read)
    g = _readonly(np.ones(8, np.float16))
    kernels.adam_mixed(p, g, z, z.copy(), step=1, lr=0.1)


def test_bfloat16_arrays_of_either_kind_and_their_messages():
    ml = pytest.importorskip("ml_dtypes")
    bf = np.dtype(ml.bfloat16)
    p = np.ones(4, bf)
    z = np.zeros(4, np.float32)
    # grads and moments as bits or as ml_dtypes arrays, mixed freely
    kernels.adam_mixed(p, np.ones(4, np.uint16), np.zeros(4, bf), np.zeros(4, bf),
                       step=1, lr=0.1)
    q = np.ones(4, np.uint16)
    with pytest.raises(TypeError, match=r"grad must have the param's dtype \(bfloat16\) or "
                                        r"float32, got float16"):
        kernels.adam_mixed(q, np.ones(4, np.float16), z, z.copy(), step=1, lr=0.1)
    with pytest.raises(TypeError, match=r"exp_avg_sq must have exp_avg's dtype \(bfloat16\)"):
        kernels.adam_mixed(q, q.copy(), np.zeros(4, bf), z, step=1, lr=0.1)
    with pytest.raises(TypeError, match="param has non-native byte order"):
        kernels.adam_mixed(np.ones(4, bf.newbyteorder(">")), z.copy(), z, z.copy(), step=1,
                           lr=0.1)


# ---- quality: the tasks of `fastlr compare` trained on 16-bit params -------------------
# the tasks of `fastlr compare` at an lr where their float32 runs are stable across seeds
# (test_lowprecision.py's)
QUALITY_TASKS = {"digits": 0.01, "lstsq": 0.1, "logreg": 0.032}
QUALITY_MODES = {"bfloat16 + master": ("bf16-bits", True),
                 "bfloat16, no master": ("bf16-bits", False),
                 "float16 + master": ("float16", True)}


class _Mixed16:
    """AdamW (torch's defaults: weight_decay 0.01) on 16-bit copies of a task's float32
    params through fastlr.kernels.adam_mixed: the task's loss and grads are evaluated at
    the 16-bit values (written back widened into its float32 arrays after every step) and
    the grads rounded to the param's format (16-bit params and grads)."""

    def __init__(self, fmt, master):
        self.fmt, self.master = fmt, master

    def make(self, params, value, total_steps):
        from fastlr._tools import compare
        self.lr = compare.METHODS["adamw"].lr(value, total_steps)
        self.params = params
        self.p16 = [_to16(p, self.fmt) for p in params]
        self.state = [(np.zeros(p.shape, np.float32), np.zeros(p.shape, np.float32),
                       _to32(q).copy() if self.master else None)
                      for p, q in zip(params, self.p16)]
        self.t = 0
        self._write_back()
        return self

    def _write_back(self):
        for p, q in zip(self.params, self.p16):
            p[...] = _to32(q)

    def step(self, grads):
        lr = self.lr(self.t)                # update t + 1 uses schedule(t), as fastlr's
        self.t += 1
        for q, g, (m, v, w) in zip(self.p16, grads, self.state):
            kernels.adam_mixed(q, _to16(np.asarray(g, np.float32), self.fmt), m, v, w,
                               step=self.t, lr=lr, weight_decay=0.01,
                               decoupled_weight_decay=True)
        self._write_back()


def quality_losses(task_name, modes=tuple(QUALITY_MODES), seeds=range(6)):
    """{mode: mean final training loss over ``seeds``} for float32 AdamW (fastlr.AdamW on
    float32 params) and the 16-bit ``modes``, on ``task_name``."""
    from fastlr._tools import compare
    t = compare.in_float32(compare.TASKS[task_name](0))
    steps = t.epochs * t.steps_per_epoch()
    methods = {"float32": compare.METHODS["adamw"]}
    methods.update({mode: _Mixed16(*QUALITY_MODES[mode]) for mode in modes})
    out = {}
    for mode, method in methods.items():
        runs = [compare.run_one(t, method, QUALITY_TASKS[task_name], steps, seed)
                for seed in seeds]
        assert not any(r["diverged"] for r in runs), mode
        out[mode] = float(np.mean([r["train_loss"] for r in runs]))
    return out


@pytest.mark.parametrize("task", list(QUALITY_TASKS))
def test_quality_against_float32(task):
    """AdamW + warmup-cosine on 16-bit params and grads (bfloat16 with and without a float32
    master, float16 with one) ends within 2% of float32 AdamW's final training loss (mean of
    six minibatch orders) on each task of ``fastlr compare`` (deterministic: fixed seeds).
    Six orders, not two: without a master, single least-squares runs scatter by about 1.5%
    around the mean (-0.6% to +2.5% over these six; their mean is +0.9%)."""
    loss = quality_losses(task)
    for mode in QUALITY_MODES:
        assert abs(loss[mode] / loss["float32"] - 1) <= 0.02, (mode, loss)
