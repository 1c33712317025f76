"""8-bit block-wise quantized Adam state (fastlr.kernels.adam_int8_state): the kernel
against its NumPy twin (bit for bit, any thread count), the codes, the argument checks,
and the quality against float32 state on the three tasks of ``fastlr compare``."""

import numpy as np
import pytest

from fastlr import kernels
from fastlr._tools import compare
from fastlr.reference.int8state import BLOCK, adam_int8_state, int8_decode, int8_encode


def _state(shape, order="C"):
    n = int(np.prod(shape))
    nb = (n + BLOCK - 1) // BLOCK
    return [np.zeros(shape, np.uint8, order=order), np.zeros(nb, np.float32),
            np.zeros(shape, np.uint8, order=order), np.zeros(nb, np.float32)]


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.array_equal(np.ravel(a, order="K").view(np.uint8),
                       np.ravel(b, order="K").view(np.uint8))


CASES = {
    "adam": dict(),
    "adamw": dict(weight_decay=0.1, decoupled_weight_decay=True),
    "l2": dict(weight_decay=0.1),
    "maximize-small-beta1": dict(maximize=True, beta1=0.3, eps=1e-6),
}


@pytest.mark.parametrize("shape, order, n_threads", [
    ((37, 211), "C", 1),         # > 4096 elements (the GIL-free path), last block short
    ((37, 211), "F", 1),
    ((300,), "C", 1),            # not a multiple of 256
    ((256,), "C", 1),
    ((1,), "C", 1),
    ((70001,), "C", 2),          # > PARALLEL_MIN_SIZE: spans on two threads
])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_twin_bit_for_bit_over_100_steps(case, shape, order, n_threads):
    steps = 100 if np.prod(shape) < 20000 else 30
    rng = np.random.default_rng(7)
    p0 = np.array(rng.standard_normal(shape).astype(np.float32), order=order)
    bufs = {who: (p0.copy(order="K"), _state(shape, order)) for who in ("kernel", "twin")}
    for t in range(1, steps + 1):
        # heavy-tailed grads: blocks with a wide range of magnitudes (subnormal codes)
        g = np.array((rng.standard_normal(shape) * rng.exponential(1.0, shape) ** 3)
                     .astype(np.float32), order=order)
        kernels.adam_int8_state(bufs["kernel"][0], g, *bufs["kernel"][1], step=t, lr=0.01,
                                n_threads=n_threads, **CASES[case])
        adam_int8_state(bufs["twin"][0], g, *bufs["twin"][1], step=t, lr=0.01, **CASES[case])
    assert _same_bits(bufs["kernel"][0], bufs["twin"][0])
    for a, b in zip(bufs["kernel"][1], bufs["twin"][1]):
        assert _same_bits(a, b)
    assert not np.array_equal(bufs["kernel"][0], p0)


def test_thread_count_does_not_change_the_bits():
    rng = np.random.default_rng(1)
    n = 3 * 16384 + 1000                 # several spans, the last block short
    p = rng.standard_normal(n).astype(np.float32)
    runs = {}
    for nt in (1, 2, 3):
        q, st = p.copy(), _state((n,))
        for t in range(1, 6):
            g = np.random.default_rng([t, 5]).standard_normal(n).astype(np.float32)
            kernels.adam_int8_state(q, g, *st, step=t, lr=0.01, n_threads=nt)
        runs[nt] = (q, st)
    for nt in (2, 3):
        assert _same_bits(runs[nt][0], runs[1][0])
        for a, b in zip(runs[nt][1], runs[1][1]):
            assert _same_bits(a, b)


def _edge_grad(n, t):
    """Step ``t``'s grad for ``n`` elements: heavy-tailed, and past 2048 elements a NaN, an
    Inf and a -Inf block (one step each), an all-zero block, a block of subnormals and one
    of tiny normals; the last element subnormal (but for n = 1)."""
    rng = np.random.default_rng([n, t, 9])
    g = (rng.standard_normal(n) * rng.exponential(1.0, n) ** 3).astype(np.float32)
    if n > 2048:
        g[5] = np.nan if t == 2 else g[5]
        g[700] = np.inf if t == 3 else g[700]
        g[1000] = -np.inf if t == 4 else g[1000]
        g[1280:1536] = 0.0
        g[1536:1792] *= np.float32(1e-41)
        g[1792:2048] *= np.float32(1e-30)
    if n > 1:
        g[-1] = np.float32(-3e-42)
    return g


@pytest.mark.parametrize("case", list(CASES))
def test_every_built_variant_gives_identical_bits(case):
    """fastlr._core.int8state compiled for baseline x86-64, x86-64-v3 (AVX2) and x86-64-v4
    (AVX-512; fastlr.kernels' on such CPUs), those built that this CPU runs: the same bits
    over several steps, at sizes around the 256-element block, with NaN / Inf / zero /
    subnormal grads."""
    from fastlr._core import dispatch
    builds = dispatch.variants("int8state")
    if len(builds) < 2:
        pytest.skip("only the baseline build is built or runs on this CPU")
    for n in (1, 255, 256, 300, 7807):
        p0 = np.random.default_rng([n, 1]).standard_normal(n).astype(np.float32)
        outs = {}
        for level, build in builds.items():
            p, st = p0.copy(), _state((n,))
            for t in range(1, 7):
                with np.errstate(invalid="ignore", over="ignore"):
                    build.adam_int8_state(p, _edge_grad(n, t), *st, step=t, lr=0.01,
                                          n_threads=1, **CASES[case])
            outs[level] = [p] + st
        first, *others = outs
        for level in others:
            for a, b in zip(outs[first], outs[level]):
                assert _same_bits(a, b), (n, level)
        assert np.isfinite(outs[first][0]).any() and not np.array_equal(outs[first][0], p0)
        if n > 2048:     # the non-finite grads (blocks 0, 2 and 3) reached their blocks only
            q = outs[first][0]
            blocks = np.isfinite(q[:n // BLOCK * BLOCK]).reshape(-1, BLOCK)
            assert (blocks.any(axis=1) == blocks.all(axis=1)).all()
            assert np.flatnonzero(~blocks.all(axis=1)).tolist() == [0, 2, 3]


def test_first_step_is_float32_adams():
    # step 1 uses the unrounded moments: the param moves as with float32 state
    rng = np.random.default_rng(2)
    p = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    q, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    kernels.adam_int8_state(p, g, *_state((1000,)), step=1, lr=0.01, weight_decay=0.1,
                            decoupled_weight_decay=True)
    kernels.adam(q, g, m, v, step=1, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    assert np.array_equal(p, q)


def test_codes():
    for emax, cmax in ((15, 127), (31, 255)):
        codes = np.arange(cmax + 1)
        vals = int8_decode(codes, emax)
        assert vals[8 * emax] == 1.0 and vals[0] == 0.0
        assert vals[1] == np.float32(2.0 ** (-2 - emax))
        assert np.all(np.diff(vals.astype(np.float64)) > 0)          # increasing
        # every code's value encodes back to itself, whatever the random bits
        for r in (0, 1 << 19, (1 << 20) - 16):
            r20 = np.full(codes.size, r, np.uint32)
            assert np.array_equal(int8_encode(vals, r20, emax, cmax), codes)
        # stochastic rounding: the expected stored value is the value
        y = np.float32(0.3)
        r20 = (np.random.default_rng(0).integers(0, 1 << 16, 100000, dtype=np.uint32)
               << np.uint32(4))
        stored = int8_decode(int8_encode(np.full(r20.size, y), r20, emax, cmax), emax)
        assert abs(stored.astype(np.float64).mean() / y - 1) < 2e-3
        assert len(np.unique(stored)) == 2
        # NaN clamps to the largest code
        assert int8_encode(np.array([np.nan], np.float32), np.zeros(1, np.uint32), emax,
                           cmax)[0] == cmax


def test_block_scales_are_absmax_and_blocks_stay_in_place():
    g = np.zeros(600, np.float32)
    g[5], g[300], g[599] = -2.0, 0.5, 4.0
    p = np.zeros(600, np.float32)
    st = _state((600,))
    kernels.adam_int8_state(p, g, *st, step=1, lr=0.1, beta1=0.9, beta2=0.999)
    m, ms, v, vs = st
    assert np.array_equal(ms, np.float32([0.1]) * np.float32([2.0, 0.5, 4.0]))
    assert np.array_equal(vs, (np.float32(0.001) * np.float32([2.0, 0.5, 4.0]) ** 2))
    assert m[5] == 128 | 120 and m[300] == 120 and m[599] == 120 and v[5] == 248
    assert np.count_nonzero(m) == 3 and np.count_nonzero(v) == 3


def test_second_moment_decays_under_int8_state():
    """With zero grads v must decay by beta2 a step; rounded to nearest, a code cannot hold
    v * 0.999 (a code step is 12.5%) and v would stay put; stochastic rounding keeps the
    expected value."""
    rng = np.random.default_rng(1)
    n = 20000
    p = rng.standard_normal(n).astype(np.float32)
    st = _state((n,))
    g = rng.uniform(0.5, 2.0, n).astype(np.float32)
    kernels.adam_int8_state(p, g, *st, step=1, lr=1e-3)
    v0 = (int8_decode(st[2], 31) * np.repeat(st[3], BLOCK)[:n]).astype(np.float64)
    zero = np.zeros_like(g)
    for t in range(2, 1502):
        kernels.adam_int8_state(p, zero, *st, step=t, lr=1e-3)
    v = (int8_decode(st[2], 31) * np.repeat(st[3], BLOCK)[:n]).astype(np.float64)
    ratio = np.mean(v / v0) / 0.999 ** 1500
    assert abs(ratio - 1) < 0.03, ratio


def test_nonfinite_grad_makes_its_block_nonfinite_only():
    p = np.ones(512, np.float32)
    g = np.ones(512, np.float32)
    g[3] = np.nan
    st = _state((512,))
    with np.errstate(invalid="ignore"):
        kernels.adam_int8_state(p, g, *st, step=1, lr=0.1)
    assert np.isnan(st[1][0]) and np.isnan(st[3][0])
    assert np.isfinite(st[1][1]) and np.isfinite(st[3][1]) and np.all(p[256:] == p[300])


def _args(n=4):
    return dict(param=np.ones(n, np.float32), grad=np.ones(n, np.float32),
                exp_avg=np.zeros(n, np.uint8), exp_avg_scale=np.zeros(1, np.float32),
                exp_avg_sq=np.zeros(n, np.uint8), exp_avg_sq_scale=np.zeros(1, np.float32),
                step=1, lr=0.1)


@pytest.mark.parametrize("change, exc, match", [
    (dict(param=np.zeros(4)), TypeError, "param must have dtype float32, got float64"),
    (dict(param=[1.0, 2.0]), TypeError, "param must be a numpy.ndarray of float32, got list"),
    (dict(param=np.zeros((4, 4), np.float32)[:, 0]), ValueError, "param must be contiguous"),
    (dict(grad=np.zeros(4, np.float64)), TypeError, "grad must have dtype float32"),
    (dict(grad=np.zeros(5, np.float32)), ValueError, "grad has shape"),
    (dict(exp_avg=np.zeros(4, np.float32)), TypeError, "exp_avg must have dtype uint8"),
    (dict(exp_avg=np.zeros(4, np.int8)), TypeError, "exp_avg must have dtype uint8"),
    (dict(exp_avg_sq=np.zeros(5, np.uint8)), ValueError, "exp_avg_sq has shape"),
    (dict(exp_avg_scale=np.zeros(2, np.float32)), ValueError,
     r"exp_avg_scale must have shape \(1,\)"),
    (dict(exp_avg_sq_scale=np.zeros((1, 1), np.float32)), ValueError,
     r"exp_avg_sq_scale must have shape \(1,\)"),
    (dict(exp_avg_sq_scale=np.zeros(1, np.float64)), TypeError,
     "exp_avg_sq_scale must have dtype float32"),
    (dict(exp_avg_scale=None), TypeError, "exp_avg_scale must be a numpy.ndarray"),
    (dict(step=0), ValueError, "step"),
    (dict(step=1.5), TypeError, "step"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(beta1=1.0), ValueError, "beta1"),
    (dict(beta2=-0.1), ValueError, "beta2"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(decoupled_weight_decay="yes"), TypeError, "decoupled_weight_decay"),
    (dict(maximize=None), TypeError, "maximize"),
    (dict(amsgrad=True), ValueError, "amsgrad=True is not available with 8-bit"),
    (dict(n_threads=0), ValueError, "n_threads"),
])
def test_kernel_arguments(change, exc, match):
    args = _args()
    args.update(change)
    before = {k: np.copy(v) for k, v in args.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=rf"fastlr\.kernels\.adam_int8_state: .*{match}"):
        kernels.adam_int8_state(**args)
    for k, v in before.items():
        assert np.array_equal(args[k], v)           # nothing written


def test_kernel_refuses_layouts_overlap_and_read_only_buffers():
    args = _args(16)
    args["param"] = np.ones((4, 4), np.float32)
    args["grad"] = np.ones((4, 4), np.float32)
    args["exp_avg"] = np.zeros((4, 4), np.uint8, order="F")
    args["exp_avg_sq"] = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="exp_avg is F-contiguous but param is C-contiguous"):
        kernels.adam_int8_state(**args)
    args = _args(8)
    args["exp_avg_sq"] = args["exp_avg"]
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq overlap"):
        kernels.adam_int8_state(**args)
    args = _args(8)
    args["exp_avg_scale"] = args["param"][:1]
    with pytest.raises(ValueError, match="param and exp_avg_scale overlap"):
        kernels.adam_int8_state(**args)
    args = _args(8)
    args["exp_avg_sq_scale"].flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg_sq_scale is read-only"):
        kernels.adam_int8_state(**args)
    assert np.all(args["param"] == 1)


class _Stepper:
    """AdamW + a schedule driving the kernels directly (float32 state: fastlr.kernels.adamw,
    the class's step; int8: fastlr.kernels.adam_int8_state)."""

    def __init__(self, params, lr, mode, weight_decay=0.01):
        self.params, self.lr, self.mode, self.wd, self.t = params, lr, mode, weight_decay, 0
        self.state = [_state(p.shape) if mode == "int8" else
                      [np.zeros_like(p), np.zeros_like(p)] for p in params]

    def step(self, grads):
        self.t += 1
        lr = self.lr(self.t - 1)
        for p, g, st in zip(self.params, grads, self.state):
            g = np.ascontiguousarray(g, dtype=np.float32)
            if self.mode == "int8":
                kernels.adam_int8_state(p, g, *st, step=self.t, lr=lr, weight_decay=self.wd,
                                        decoupled_weight_decay=True)
            else:
                kernels.adamw(p, g, *st, step=self.t, lr=lr, weight_decay=self.wd)


class _KernelMethod(compare.Method):
    def make(self, params, value, total_steps):
        return _Stepper(params, self.lr(value, total_steps), self.options["mode"])


# the tasks of `fastlr compare` at an lr where their float32 runs are stable across seeds
QUALITY_TASKS = {"digits": 0.01, "lstsq": 0.1, "logreg": 0.032}


@pytest.mark.parametrize("task", list(QUALITY_TASKS))
def test_quality_against_float32_state(task):
    """AdamW + warmup-cosine with int8 state ends within 2% of the float32-state final
    training loss (mean of two minibatch orders) on each task of ``fastlr compare``, in
    float32 (deterministic: fixed seeds)."""
    t = compare.in_float32(compare.TASKS[task](0))
    steps = t.epochs * t.steps_per_epoch()
    loss = {}
    for mode in ("float32", "int8"):
        method = _KernelMethod("adamw", "AdamW", "AdamW", 1e-3, "lr", "warmup_cosine",
                               {"mode": mode})
        runs = [compare.run_one(t, method, QUALITY_TASKS[task], steps, seed) for seed in (0, 1)]
        assert not any(r["diverged"] for r in runs)
        loss[mode] = np.mean([r["train_loss"] for r in runs])
    assert abs(loss["int8"] / loss["float32"] - 1) <= 0.02, loss


@pytest.mark.parametrize("which", ["exp_avg_scale", "exp_avg_sq_scale"])
@pytest.mark.parametrize("view", ["strided", "reversed"])
def test_scales_must_be_contiguous(which, view):
    """A strided or reversed scale array was written as if packed (past its memory)."""
    n, nb = 1000, 4
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    m, v = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    parent = np.zeros(3 * nb, np.float32)
    bad = parent[::2][:nb] if view == "strided" else parent[nb:2 * nb][::-1]
    scales = {"exp_avg_scale": np.zeros(nb, np.float32),
              "exp_avg_sq_scale": np.zeros(nb, np.float32)}
    scales[which] = bad
    with pytest.raises(ValueError, match=f"{which} must be contiguous"):
        kernels.adam_int8_state(p, g, m, scales["exp_avg_scale"], v,
                                scales["exp_avg_sq_scale"], step=1, lr=1e-3)
    assert not parent.any() and not p.any()
