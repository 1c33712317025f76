"""The kernel families added after SGD/RMSprop/Adam: Adagrad, Adadelta, Adamax, NAdam, RAdam,
Rprop (torch.optim 2.13) and Lion (optax.lion).

1. Every compiled kernel against its NumPy twin in ``fastlr.reference``, bit for bit (NaN-aware),
   over an edge-case generator in the style of bottleneck's ``bn.slow`` tests: dtypes, shapes
   (0-d, empty, 1, 7, 2-D in C and F order, and a span long enough to be split across threads,
   run with 1 and 2 threads), every option combination, 1, 2 and 10 steps, and awkward values
   (zeros, denormals, huge values, eps=0, betas of 0 and 1, NaN and Inf in a gradient).
2. Parity with torch.optim over 100 steps (the tolerances of docs/design.md, Numerics), skipped without
   torch; NAdam's returned ``mu_product`` against torch's ``state["mu_product"]``.
3. Lion against its formula, written out independently here.
4. Validation: every bad argument is a TypeError/ValueError naming it, and no buffer changes.
5. ``make_state`` for the six kernels.
"""

import inspect
import itertools
import math

import numpy as np
import pytest

from fastlr import kernels, reference

FAMILIES = ("adagrad", "adadelta", "adamax", "nadam", "radam", "lion", "rprop", "asgd")
TORCH_FAMILIES = ("adagrad", "adadelta", "adamax", "nadam", "radam", "rprop", "asgd")
STEPPED = frozenset({"adagrad", "adamax", "nadam", "radam", "asgd"})     # take step=
#: the per-param scalar a kernel takes and returns (NAdam's mu_product, ASGD's eta)
SCALAR = {"nadam": "mu_product", "asgd": "eta"}
DTYPES = [np.float32, np.float64]
BIG = 70000                       # above the threading threshold: the span is split
SHAPES = [((), "C"), ((0,), "C"), ((1,), "C"), ((7,), "C"), ((3, 5), "C"), ((3, 5), "F"),
          ((BIG,), "C")]
CHECK_AT = (1, 2, 10)             # steps after which kernel and twin are compared
N_STEPS = max(CHECK_AT)


def dtype_id(dtype):
    return np.dtype(dtype).name


def shape_id(shape_order):
    shape, order = shape_order
    return f"{'x'.join(map(str, shape)) or 'scalar'}{order}"


def dup(a):
    """A copy keeping a's memory layout (ndarray.copy() would make F order C)."""
    return np.array(a, copy=True, order="K")


# ---------------------------------------------------------------------------------------------
# option grids: every combination of the options each kernel has
# ---------------------------------------------------------------------------------------------

def option_grid(name):
    """Keyword arguments of the kernel (plus ``init``: Adagrad's initial accumulator)."""
    if name == "adagrad":
        for lr_decay, wd, maximize, init in itertools.product(
                [0.0, 0.01], [0.0, 0.02], [False, True], [0.0, 0.1]):
            yield dict(lr=0.05, lr_decay=lr_decay, weight_decay=wd, maximize=maximize,
                       init=init)
    elif name == "adadelta":
        for rho, wd, maximize in itertools.product([0.9, 0.0, 1.0], [0.0, 0.02],
                                                   [False, True]):
            yield dict(lr=0.5, rho=rho, weight_decay=wd, maximize=maximize)
    elif name == "adamax":
        for (b1, b2), wd, maximize in itertools.product([(0.9, 0.999), (0.0, 0.0)],
                                                        [0.0, 0.02], [False, True]):
            yield dict(lr=0.01, beta1=b1, beta2=b2, weight_decay=wd, maximize=maximize)
    elif name in ("nadam", "radam"):
        betas = [(0.9, 0.999), (0.0, 0.0), (0.75, 0.9)]
        for (b1, b2), (wd, decoupled), maximize in itertools.product(
                betas, [(0.0, False), (0.02, False), (0.02, True)], [False, True]):
            opts = dict(lr=0.01, beta1=b1, beta2=b2, weight_decay=wd,
                        decoupled_weight_decay=decoupled, maximize=maximize)
            if name == "nadam":
                for momentum_decay in (4e-3, 0.0):
                    yield dict(opts, momentum_decay=momentum_decay)
            else:
                yield opts
    elif name == "lion":
        for (b1, b2), wd, maximize in itertools.product(
                [(0.9, 0.99), (0.0, 0.0), (1.0, 1.0), (0.5, 0.0)], [0.0, 0.1], [False, True]):
            yield dict(lr=1e-3, beta1=b1, beta2=b2, weight_decay=wd, maximize=maximize)
    elif name == "asgd":
        # t0 = 3: averaging (mu != 1) from step 5 on
        for (lambd, alpha), t0, wd, maximize in itertools.product(
                [(1e-4, 0.75), (0.1, 0.5), (0.0, 1.0)], [1e6, 3.0], [0.0, 0.02], [False, True]):
            yield dict(lr=0.05, lambd=lambd, alpha=alpha, t0=t0, weight_decay=wd,
                       maximize=maximize)
    elif name == "rprop":
        # etas near 1 (0.999, 1.001: in float32 etaminus rounds near 1), bounds that clamp
        for (em, ep), (lo, hi), maximize in itertools.product(
                [(0.5, 1.2), (0.1, 3.0), (0.999, 1.001)],
                [(1e-6, 50.0), (1e-3, 0.05), (0.0, 0.0)], [False, True]):
            yield dict(etaminus=em, etaplus=ep, step_size_min=lo, step_size_max=hi,
                       maximize=maximize)
    else:
        raise AssertionError(name)


def opts_id(opts):
    return ",".join(f"{k}={v}" for k, v in opts.items())


# ---------------------------------------------------------------------------------------------
# calling either implementation the same way
# ---------------------------------------------------------------------------------------------

def new_state(name, param, init=0.0):
    return kernels.make_state(name, param, initial_accumulator_value=init)


def twin_state(state):
    return {k: dup(v) for k, v in state.items()}


def call(module, name, param, grad, state, step, opts, mu_product=1.0, **extra):
    """One update; returns the scalar state to pass next time (NAdam's mu_product, ASGD's
    eta) or the one given."""
    kwargs = {k: v for k, v in opts.items() if k != "init"}
    if name in STEPPED:
        kwargs["step"] = step
    if name in SCALAR:
        kwargs[SCALAR[name]] = mu_product
    fn = getattr(module, name)
    if module is reference:
        with np.errstate(all="ignore"):
            out = fn(param, grad, **state, **kwargs, **extra)
    else:
        out = fn(param, grad, **state, **kwargs, **extra)
    if name in SCALAR:
        assert isinstance(out, float)
        return out
    assert out is None
    return mu_product


def assert_same(name, got, want, what):
    """param and state of the kernel equal the twin's, NaN-aware, same shape and dtype."""
    (pk, sk, mk), (pr, sr, mr) = got, want
    np.testing.assert_array_equal(pk, pr, strict=True, err_msg=f"{name} param: {what}")
    assert list(sk) == list(sr)
    for key in sk:
        np.testing.assert_array_equal(sk[key], sr[key], strict=True,
                                      err_msg=f"{name} {key}: {what}")
    if name in SCALAR:
        assert mk == mr, f"{name} {SCALAR[name]} {mk!r} != twin {mr!r}: {what}"


def awkward_array(rng, shape, order, dtype, scale):
    """Normal values with zeros, -0, a denormal and a tiny value mixed in (size >= 7)."""
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    x = np.array(x, order=order)
    if x.size >= 7:
        flat = x.reshape(-1, order="A")     # a view: x is contiguous in `order`
        info = np.finfo(dtype)
        flat[:5] = [0.0, -0.0, info.smallest_subnormal, -1e-30, 2.5]
    return x


def run_against_twin(name, dtype, shape, order, opts, grads, param0, threads=(None,),
                     check_at=CHECK_AT):
    """Step the twin and one kernel run per thread count; compare after the steps in check_at
    (every run against the twin, so the runs also agree with one another)."""
    init = opts.get("init", 0.0)
    twin = [dup(param0), twin_state(new_state(name, param0, init)), 1.0]
    runs = [[dup(param0), new_state(name, param0, init), 1.0] for _ in threads]
    for run in runs:
        assert_same(name, run, twin, "initial state")
    for t, g in enumerate(grads, start=1):
        g_before = dup(g)
        twin[2] = call(reference, name, twin[0], g, twin[1], t, opts, twin[2])
        for nt, run in zip(threads, runs):
            run[2] = call(kernels, name, run[0], g, run[1], t, opts, run[2], n_threads=nt)
        assert g.tobytes() == g_before.tobytes(), "grad was modified"
        if t in check_at:
            for nt, run in zip(threads, runs):
                assert_same(name, run, twin,
                            f"after step {t}, {opts_id(opts)}, dtype={dtype_id(dtype)}, "
                            f"shape={shape} order={order} n_threads={nt}")


# ---------------------------------------------------------------------------------------------
# 1. kernel vs twin, bit for bit
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape_order", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", FAMILIES)
def test_kernel_matches_twin_every_option(name, dtype, shape_order):
    shape, order = shape_order
    threads = (1, 2) if shape == (BIG,) else (None,)
    rng = np.random.default_rng([FAMILIES.index(name), len(shape), DTYPES.index(dtype)])
    param0 = awkward_array(rng, shape, order, dtype, 1.0)
    grads = [awkward_array(rng, shape, order, dtype, 0.1) for _ in range(N_STEPS)]
    grid = list(option_grid(name))
    if shape == (BIG,):
        # The threaded span, with 1 and 2 threads: the options all off and all on. (Every
        # combination runs on the small shapes; 2-thread calls are slow on a busy machine.)
        grid = [grid[0], grid[-1]]
    for opts in grid:
        run_against_twin(name, dtype, shape, order, opts, grads, param0, threads=threads)


def test_long_span_with_two_threads_is_exact():
    """A span of BIG elements run on 2 threads: every element gets the same exact update."""
    p = np.ones(BIG)
    st = kernels.make_state("lion", p)
    kernels.lion(p, np.ones(BIG), **st, lr=0.5, n_threads=2)
    assert np.all(p == 1.0 - 0.5 * (1.0 + 1e-3))


def extreme_cases(dtype):
    """(id, option overrides, param builder, grad builder) of awkward values."""
    info = np.finfo(dtype)
    huge = 1e30 if dtype == np.float32 else 1e300
    tiny = info.smallest_subnormal
    yield "zero_grads", {}, lambda r, n: r.standard_normal(n), lambda r, n, t: np.zeros(n)
    yield "neg_zero_grads", {}, lambda r, n: r.standard_normal(n), \
        lambda r, n, t: np.full(n, -0.0)
    yield "denormal", {}, lambda r, n: r.integers(-3, 4, n) * tiny, \
        lambda r, n, t: r.integers(-3, 4, n) * tiny
    yield "denormal_eps0", {"eps": 0.0}, lambda r, n: r.integers(-3, 4, n) * tiny, \
        lambda r, n, t: r.integers(-3, 4, n) * tiny
    yield "huge_grads", {}, lambda r, n: r.standard_normal(n), \
        lambda r, n, t: r.standard_normal(n) * huge
    yield "huge_params_decay", {"weight_decay": 0.5}, \
        lambda r, n: r.standard_normal(n) * huge, lambda r, n, t: r.standard_normal(n)
    yield "eps0", {"eps": 0.0}, lambda r, n: r.standard_normal(n), \
        lambda r, n, t: np.where(np.arange(n) % 3 == 0, 0.0, r.standard_normal(n))
    yield "betas0", {"beta1": 0.0, "beta2": 0.0, "rho": 0.0}, \
        lambda r, n: r.standard_normal(n), lambda r, n, t: r.standard_normal(n)
    for bad in (np.nan, np.inf, -np.inf):
        def grad(r, n, t, bad=bad):
            g = r.standard_normal(n)
            if t == 2:
                g[3] = bad
            return g
        yield f"grad_{bad}", {}, lambda r, n: r.standard_normal(n), grad
    yield "nan_param", {}, lambda r, n: np.where(np.arange(n) == 5, np.nan,
                                                 r.standard_normal(n)), \
        lambda r, n, t: r.standard_normal(n)


EXTREME_IDS = [c[0] for c in extreme_cases(np.float64)]


def default_opts(name):
    return {"adagrad": dict(lr=0.05), "adadelta": dict(lr=0.5), "adamax": dict(lr=0.01),
            "nadam": dict(lr=0.01), "radam": dict(lr=0.01), "lion": dict(lr=1e-3),
            "rprop": dict(), "asgd": dict(lr=0.05, t0=3.0)}[name]


def applicable_extremes():
    """(name, case) pairs where the kernel has at least one of the case's options."""
    for name in FAMILIES:
        params = inspect.signature(getattr(kernels, name)).parameters
        for case_id, overrides, _, _ in extreme_cases(np.float64):
            if not overrides or set(overrides) & set(params):
                yield name, case_id


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name,case", list(applicable_extremes()))
def test_kernel_matches_twin_extreme_values(name, dtype, case):
    case_id, overrides, make_param, make_grad = next(
        c for c in extreme_cases(dtype) if c[0] == case)
    params = inspect.signature(getattr(kernels, name)).parameters
    opts = dict(default_opts(name), **{k: v for k, v in overrides.items() if k in params})
    n = 13
    rng = np.random.default_rng([FAMILIES.index(name), EXTREME_IDS.index(case)])
    with np.errstate(all="ignore"):
        param0 = np.asarray(make_param(rng, n), dtype=dtype)
        grads = [np.asarray(make_grad(rng, n, t), dtype=dtype) for t in range(1, 6)]
    run_against_twin(name, dtype, (n,), "C", opts, grads, param0, check_at=range(1, 6))
    if case.startswith("grad_"):
        # the bad value stays in its element: every other element is finite
        p = dup(param0)
        st = new_state(name, p)
        mu = 1.0
        for t, g in enumerate(grads, start=1):
            mu = call(kernels, name, p, g, st, t, opts, mu)
        others = np.arange(n) != 3
        assert np.all(np.isfinite(p[others]))
        for buf in st.values():
            assert np.all(np.isfinite(buf[others]))
        if name == "rprop":
            # it moves by sign(g) (torch.sign(NaN) = 0): the param stays finite
            assert np.isfinite(p[3])
        elif case == "grad_nan" or name != "lion":
            # the element's param is no longer finite (Lion's sign() maps +-Inf to +-1)
            assert not np.isfinite(p[3])


@pytest.mark.parametrize("name", FAMILIES)
def test_nan_grad_poisons_only_its_element(name):
    p = np.linspace(-1, 1, 9)
    g = np.full(9, 0.25)
    g[4] = np.nan
    st = new_state(name, p)
    call(kernels, name, p, g, st, 1, default_opts(name))
    # Rprop moves by sign(g), torch.sign(NaN) = 0: the NaN lands in prev only
    hit = st["prev"] if name == "rprop" else p
    assert np.isnan(hit[4]) and np.all(np.isfinite(np.delete(hit, 4)))
    assert np.all(np.isfinite(np.delete(p, 4)))


def radam_rho_t(beta2, t):
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    return rho_inf - 2.0 * t * beta2 ** t / (1.0 - beta2 ** t)


def test_radam_default_betas_switch_branch_within_ten_steps():
    """Steps 1-5 take the unrectified branch with beta2=0.999, 6-10 the rectified one: the
    10-step runs above cover both. With a constant gradient m / bc1 = g and
    sqrt(bc2 / v) = 1 / |g|, so an unrectified step moves p by lr * g and a rectified one by
    lr * rect(t) * sign(g)."""
    assert [radam_rho_t(0.999, t) > 5 for t in range(1, 11)] == [False] * 5 + [True] * 5
    g = np.array([0.3, -0.2, 0.05, -1.5, 2.0, 0.7])
    p = np.linspace(-1, 1, g.size)
    st = new_state("radam", p)
    lr = 0.1
    for t in range(1, 11):
        before = p.copy()
        kernels.radam(p, g, **st, step=t, lr=lr, eps=0.0)
        rho_inf, rho_t = 2.0 / (1 - 0.999) - 1, radam_rho_t(0.999, t)
        if t <= 5:
            np.testing.assert_allclose(before - p, lr * g, rtol=1e-12)
        else:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            np.testing.assert_allclose(before - p, lr * rect * np.sign(g), rtol=1e-6)


# Found while writing these tests: two ways the kernels round differently from their twins.

@pytest.mark.parametrize("beta1", [0.1, 0.4, 0.5 + 2.0 ** -30])
@pytest.mark.parametrize("name", ["adamax", "nadam", "radam"])
def test_float32_lerp_weight_rounding_matches_twin(name, beta1):
    """exp_avg = lerp(exp_avg, g, 1 - beta1) in float32 with 1 - beta1 >= 0.5 (beta1 <= 0.5).

    The kernels round the weight w = 1 - beta1 to float32 first and form w - 1 and the branch
    test |w| < 0.5 in float32 (as torch's Lerp.h does); reference._lerp forms 1 - w and the
    test in double. With beta1 = 0.1 the two coefficients differ by one float32 ulp, and with
    beta1 = 0.5 + 2**-30 the two take different branches of the lerp."""
    opts = dict(default_opts(name), beta1=beta1)
    rng = np.random.default_rng(11)
    n = 64
    param0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    run_against_twin(name, np.float32, (n,), "C", opts, grads, param0, check_at=(1, 2, 3))


def test_radam_rectification_rounding_matches_twin_float64():
    """float64 RAdam with beta2 = 0.762938919637755 at step 8 (rectified): the kernel takes
    sqrt() of the rectification term, the twin (like torch's Python code) ``** 0.5``; here
    pow(x, 0.5) is one ulp above the correctly rounded sqrt(x), so param differs by an ulp."""
    beta2 = 0.762938919637755
    x = 0.3398378873878197     # the rect radicand at step 8 with this beta2
    assert x ** 0.5 != math.sqrt(x)
    opts = dict(lr=0.05, beta1=0.9, beta2=beta2)
    rng = np.random.default_rng(3)
    n = 64
    param0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(8)]
    run_against_twin("radam", np.float64, (n,), "C", opts, grads, param0,
                     check_at=range(1, 9))


# ---------------------------------------------------------------------------------------------
# 2. parity with torch.optim
# ---------------------------------------------------------------------------------------------

TORCH_CLASS = {"adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax",
               "nadam": "NAdam", "radam": "RAdam", "rprop": "Rprop", "asgd": "ASGD"}
TORCH_CASES = [pytest.param(name, opts, id=f"{name}[{opts_id(opts)}]")
               for name in TORCH_FAMILIES for opts in option_grid(name)
               # NAdam without momentum decay: with the default betas only
               if opts.get("momentum_decay", 1.0) != 0.0 or opts["beta1"] == 0.9]
TORCH_STEPS = 100
TORCH_STATE_KEY = {"state_sum": "sum"}      # fastlr argument name -> torch state key


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="torch not installed; pip install torch==2.13.0 for the parity tests")


def torch_kwargs(name, opts):
    kw = {k: v for k, v in opts.items() if k != "init"}
    if "beta1" in kw:
        kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
    if "etaminus" in kw:
        kw["etas"] = (kw.pop("etaminus"), kw.pop("etaplus"))
        kw["step_sizes"] = (kw.pop("step_size_min"), kw.pop("step_size_max"))
    if name == "adagrad":
        kw["initial_accumulator_value"] = opts.get("init", 0.0)
    kw["foreach"] = False
    return kw


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name,opts", TORCH_CASES)
def test_parity_with_torch(torch, name, opts, dtype):
    old = torch.get_default_dtype()
    if name == "asgd" and dtype == np.float64:
        # torch keeps ASGD's eta and mu in tensors of its default dtype (float32 would
        # round them; fastlr's are doubles)
        torch.set_default_dtype(torch.float64)
    try:
        _parity_with_torch(torch, name, opts, dtype)
    finally:
        torch.set_default_dtype(old)


def _parity_with_torch(torch, name, opts, dtype):
    rng = np.random.default_rng(2024)
    n = 48
    param0 = rng.standard_normal(n).astype(dtype)
    p = dup(param0)
    st = new_state(name, p, opts.get("init", 0.0))
    tp = torch.nn.Parameter(torch.from_numpy(dup(param0)))
    opt = getattr(torch.optim, TORCH_CLASS[name])([tp], **torch_kwargs(name, opts))
    rtol = (1e-8 if name == "nadam" else 1e-10) if dtype == np.float64 else 1e-4
    mu = 1.0
    worst = 0.0
    for t in range(1, TORCH_STEPS + 1):
        # gradient scale varies from step to step so that eps and the maxima matter
        g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
        mu = call(kernels, name, p, g, st, t, opts, mu)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        want = tp.detach().numpy()
        scale = max(1.0, float(np.max(np.abs(want))))
        diff = float(np.max(np.abs(p.astype(np.float64) - want)))
        worst = max(worst, diff / scale)
        assert diff <= rtol * scale, (
            f"step {t}: max|fastlr - torch| = {diff:.3g} > {rtol:g} * {scale:.3g}")
        if name == "asgd":          # the returned eta is torch's next eta
            et = float(opt.state[tp]["eta"])
            assert abs(mu - et) <= (1e-15 if dtype == np.float64 else 2.0 ** -24) * et, (t, mu)
        if name == "nadam":
            mt = float(opt.state[tp]["mu_product"])
            # torch multiplies a float32 tensor: one float32 rounding per step (and once
            # the product is subnormal in float32, half a subnormal step)
            assert abs(mu - mt) <= t * (2.0 ** -24 * mt + 2.0 ** -150), (t, mu, mt)
            if t == 1:
                assert np.float32(mu) == np.float32(mt)
    # state buffers agree too (torch's names are fastlr's argument names)
    tstate = opt.state[tp]
    for key, buf in st.items():
        want = tstate[TORCH_STATE_KEY.get(key, key)].detach().numpy()
        scale = max(1.0, float(np.max(np.abs(want))))
        assert float(np.max(np.abs(buf.astype(np.float64) - want))) <= rtol * scale * 10, key


# ---------------------------------------------------------------------------------------------
# 3. Lion against its formula
# ---------------------------------------------------------------------------------------------

def lion_formula(p, g, m, lr, b1, b2, wd, maximize=False):
    """optax.lion, written out: returns new (p, m)."""
    g = -g if maximize else g
    u = np.sign((1 - b1) * g + b1 * m)
    m = (1 - b2) * g + b2 * m
    return p - lr * (u + wd * p), m


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("b1,b2,wd", [(0.9, 0.99, 1e-3), (0.95, 0.98, 0.1), (0.0, 0.5, 0.0),
                                      (1.0, 1.0, 0.01)])
def test_lion_matches_formula(b1, b2, wd, maximize):
    rng = np.random.default_rng(5)
    n = 200
    p = rng.standard_normal(n)
    m_init = np.zeros(n)
    fp, fm = p.copy(), m_init.copy()
    st = kernels.make_state("lion", p)
    for _ in range(20):
        g = rng.standard_normal(n)
        g[::17] = 0.0
        kernels.lion(p, g, **st, lr=0.01, beta1=b1, beta2=b2, weight_decay=wd,
                     maximize=maximize)
        fp, fm = lion_formula(fp, g, fm, 0.01, b1, b2, wd, maximize)
    np.testing.assert_allclose(p, fp, rtol=1e-14, atol=0)
    np.testing.assert_allclose(st["exp_avg"], fm, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lion_sign_of_zero_is_zero(dtype):
    """A zero grad with zero momentum: the update is sign(0) = 0, so only the decay moves p,
    and without decay p does not move at all."""
    p0 = np.array([1.5, -2.0, 0.0, 3.0], dtype=dtype)
    g = np.array([0.0, -0.0, 0.0, 0.0], dtype=dtype)
    p = p0.copy()
    st = kernels.make_state("lion", p)
    kernels.lion(p, g, **st, lr=0.1, weight_decay=0.5)
    np.testing.assert_array_equal(p, p0 - dtype(0.1) * (dtype(0.5) * p0))
    np.testing.assert_array_equal(st["exp_avg"], np.zeros(4, dtype))
    p = p0.copy()
    kernels.lion(p, g, **st, lr=0.1, weight_decay=0.0)
    np.testing.assert_array_equal(p, p0)
    # momentum alone (zero grad) still moves p by lr * sign(m)
    st["exp_avg"][...] = [1.0, -1.0, 0.0, 2.0]
    p = p0.copy()
    kernels.lion(p, g, **st, lr=0.1, weight_decay=0.0)
    np.testing.assert_array_equal(p, p0 - dtype(0.1) * np.array([1, -1, 0, 1], dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lion_maximize_flips_direction(dtype):
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(50).astype(dtype)
    g = rng.standard_normal(50).astype(dtype)
    down, up, neg = p0.copy(), p0.copy(), p0.copy()
    sd, su, sn = (kernels.make_state("lion", p0) for _ in range(3))
    kernels.lion(down, g, **sd, lr=0.25, weight_decay=0.0)
    kernels.lion(up, g, **su, lr=0.25, weight_decay=0.0, maximize=True)
    kernels.lion(neg, -g, **sn, lr=0.25, weight_decay=0.0)
    np.testing.assert_allclose(up - p0, -(down - p0), rtol=1e-6 if dtype == np.float32 else 0,
                               atol=0.25 * np.finfo(dtype).eps * 8)
    np.testing.assert_array_equal(np.sign(down - p0), -np.sign(g))
    np.testing.assert_array_equal(np.sign(up - p0), np.sign(g))
    assert up.tobytes() == neg.tobytes()
    assert su["exp_avg"].tobytes() == sn["exp_avg"].tobytes()


# ---------------------------------------------------------------------------------------------
# 4. validation
# ---------------------------------------------------------------------------------------------

BASE_HYPER = {
    "adagrad": dict(step=3, lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-10),
    "adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.01),
    "adamax": dict(step=3, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
    "nadam": dict(step=3, mu_product=0.5, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.01, momentum_decay=4e-3, decoupled_weight_decay=False),
    "radam": dict(step=3, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                  decoupled_weight_decay=True),
    "lion": dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=1e-3),
    "rprop": dict(etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0),
    "asgd": dict(step=3, eta=0.01, lr=0.01, lambd=1e-4, alpha=0.75, t0=1.0,
                 weight_decay=0.01),
}


def arrays_of(name, shape=(4, 5), dtype=np.float64, order="C"):
    """[param, grad, *state] with distinct non-zero contents, and the array names."""
    names = ("param", "grad") + kernels.state_names(name)
    rng = np.random.default_rng(1)
    arrays = [np.array(np.abs(rng.standard_normal(shape)) + 0.1, dtype=dtype, order=order)
              for _ in names]
    return list(names), arrays


def call_with(name, arrays, **hyper):
    kw = dict(BASE_HYPER[name], **hyper)
    return getattr(kernels, name)(*arrays, **kw)


def assert_rejected(name, arrays, exc, match, **hyper):
    """The call raises `exc` naming `match`, and no buffer it was given changes."""
    real = [a for a in arrays if isinstance(a, np.ndarray)]
    before = [a.tobytes() for a in real]
    with pytest.raises(exc, match=match):
        call_with(name, arrays, **hyper)
    for a, b in zip(real, before):
        assert a.tobytes() == b, f"{name}: a buffer changed although the call raised"


def test_base_calls_are_valid():
    for name in FAMILIES:
        _, arrays = arrays_of(name)
        call_with(name, arrays)


def array_mutations(shape=(4, 5)):
    """(id, exception, builder(good_array) -> bad array or object, role filter)."""
    n = int(np.prod(shape))
    yield "float16", TypeError, lambda a: a.astype(np.float16), "any"
    yield "float32", TypeError, lambda a: a.astype(np.float32), "not_param"
    yield "int64", TypeError, lambda a: a.astype(np.int64), "any"
    yield "int32", TypeError, lambda a: a.astype(np.int32), "any"
    yield "list", TypeError, lambda a: a.tolist(), "any"
    yield "none", TypeError, lambda a: None, "not_param"
    yield "longer", ValueError, lambda a: np.zeros(n + 1), "any"
    yield "transposed_shape", ValueError, lambda a: np.ascontiguousarray(a.T), "any"
    yield "flat", ValueError, lambda a: a.reshape(-1), "not_param"
    yield "strided", ValueError, lambda a: np.zeros((shape[0], 2 * shape[1]))[:, ::2], "any"
    yield "f_order", ValueError, lambda a: np.asfortranarray(a), "not_param"
    yield "byteswapped", TypeError, lambda a: a.astype(a.dtype.newbyteorder()), "any"


def make_read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("mutation", [m[0] for m in array_mutations()] + ["read_only"])
@pytest.mark.parametrize("name", FAMILIES)
def test_bad_arrays_rejected(name, mutation):
    names, _ = arrays_of(name)
    if mutation == "read_only":
        exc, build, roles = ValueError, make_read_only, "not_grad"
    else:
        _, exc, build, roles = next(m for m in array_mutations() if m[0] == mutation)
    for k, role in enumerate(names):
        if roles == "not_param" and role == "param" or roles == "not_grad" and role == "grad":
            continue
        _, arrays = arrays_of(name)
        arrays[k] = build(arrays[k])
        assert_rejected(name, arrays, exc, role)


@pytest.mark.parametrize("name", FAMILIES)
def test_read_only_grad_and_f_order_accepted(name):
    names, arrays = arrays_of(name)
    arrays[1].flags.writeable = False
    call_with(name, arrays)
    _, arrays = arrays_of(name, order="F")
    ref = [dup(a) for a in arrays]
    call_with(name, arrays)
    with np.errstate(all="ignore"):
        kw = dict(BASE_HYPER[name])
        getattr(reference, name)(*ref, **kw)
    for a, b in zip(arrays, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", FAMILIES)
def test_overlapping_buffers_rejected(name):
    names, _ = arrays_of(name)
    for i, j in itertools.combinations(range(len(names)), 2):
        # the same array twice
        _, arrays = arrays_of(name)
        arrays[j] = arrays[i]
        assert_rejected(name, arrays, ValueError, f"{names[i]} and {names[j]} overlap")
        # two views of one block sharing a single element
        _, arrays = arrays_of(name)
        block = np.arange(39, dtype=np.float64)
        arrays[i] = block[:20].reshape(4, 5)
        arrays[j] = block[19:].reshape(4, 5)
        assert_rejected(name, arrays, ValueError, f"{names[i]} and {names[j]} overlap")
    # adjacent but disjoint views are fine
    _, arrays = arrays_of(name)
    block = np.ones(20 * len(names))
    arrays = [block[20 * k:20 * (k + 1)].reshape(4, 5) for k in range(len(names))]
    call_with(name, arrays)


def hyper_mutations(name):
    """(argument, bad value, exception) for every hyperparameter of `name`."""
    hyper = BASE_HYPER[name]
    for arg in ("lr", "lr_decay", "eps", "weight_decay", "momentum_decay", "step_size_min",
                "step_size_max", "eta", "lambd"):
        if arg in hyper:
            for bad in (-1e-3, -0.0 - 1e-300, float("nan"), float("inf"), -float("inf")):
                yield arg, bad, ValueError
            yield arg, "0.1", TypeError
            yield arg, None, TypeError
            yield arg, True, TypeError
            yield arg, 1j, TypeError
    closed = name in ("lion",)
    for arg in ("beta1", "beta2", "rho", "mu_product"):
        if arg in hyper:
            bads = [-0.1, -1e-300, 1.5, float("nan"), float("inf")]
            if not (closed or arg in ("rho", "mu_product")):
                bads += [1.0, 1]                        # [0, 1): 1 excluded
            else:
                bads += [np.nextafter(1.0, 2.0)]
            for bad in bads:
                yield arg, bad, ValueError
            yield arg, "0.5", TypeError
            yield arg, False, TypeError
    for arg in ("alpha", "t0"):             # any finite number
        if arg in hyper:
            for bad in (float("nan"), float("inf"), -float("inf")):
                yield arg, bad, ValueError
            yield arg, "0.5", TypeError
            yield arg, None, TypeError
    if "etaminus" in hyper:         # (0, 1) and > 1, as torch's 0 < etaminus < 1 < etaplus
        for bad in (0.0, 1.0, 1, -0.5, 1.5, float("nan"), float("inf")):
            yield "etaminus", bad, ValueError
        for bad in (1.0, 1, 0.5, 0.0, float("nan"), float("inf")):
            yield "etaplus", bad, ValueError
        for arg in ("etaminus", "etaplus"):
            yield arg, "0.5", TypeError
            yield arg, False, TypeError
    if "step" in hyper:
        for bad in (0, -1, -(2 ** 70), 2 ** 63, np.int64(0)):
            yield "step", bad, ValueError
        for bad in (True, False, np.bool_(True), 1.0, 1.5, "1", None, np.float64(2.0)):
            yield "step", bad, TypeError
    for arg in ("maximize", "decoupled_weight_decay"):
        if arg in inspect.signature(getattr(kernels, name)).parameters:
            for bad in ("yes", None, 1.0):
                yield arg, bad, TypeError
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
        yield "n_threads", bad, exc


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_hyperparameters_rejected(name):
    for arg, bad, exc in hyper_mutations(name):
        _, arrays = arrays_of(name)
        try:
            assert_rejected(name, arrays, exc, arg, **{arg: bad})
        except BaseException as e:       # say which value got through
            raise AssertionError(f"{name}({arg}={bad!r}): {e}") from e


def test_missing_required_keyword_arguments():
    for name in STEPPED:
        _, arrays = arrays_of(name)
        kw = dict(BASE_HYPER[name])
        del kw["step"]
        with pytest.raises(TypeError, match="step"):
            getattr(kernels, name)(*arrays, **kw)
    _, arrays = arrays_of("nadam")
    kw = dict(BASE_HYPER["nadam"])
    del kw["mu_product"]
    with pytest.raises(TypeError, match="mu_product"):
        kernels.nadam(*arrays, **kw)


def legal_boundaries(name):
    hyper = BASE_HYPER[name]
    for arg in ("lr", "lr_decay", "eps", "weight_decay", "momentum_decay", "step_size_min",
                "step_size_max", "eta", "lambd"):
        if arg in hyper:
            yield {arg: 0.0}
            yield {arg: np.float32(0.25)}
            yield {arg: 2}
    for arg in ("beta1", "beta2", "rho", "mu_product"):
        if arg in hyper:
            yield {arg: 0.0}
            yield {arg: 0}
            yield {arg: np.nextafter(1.0, 0.0)}
            if name == "lion" or arg in ("rho", "mu_product"):
                yield {arg: 1.0}
                yield {arg: 1}
    if "etaminus" in hyper:
        yield {"etaminus": 5e-324}
        yield {"etaminus": np.nextafter(1.0, 0.0)}
        yield {"etaplus": np.nextafter(1.0, 2.0)}
        yield {"etaplus": 2}
    if "step" in hyper:
        yield {"step": 1}
        yield {"step": np.int64(7)}
        yield {"step": 2 ** 40}
    yield {"maximize": np.bool_(True)}
    yield {"maximize": 1}
    yield {"n_threads": np.int32(2)}


@pytest.mark.parametrize("name", FAMILIES)
def test_legal_boundaries_accepted_and_match_twin(name):
    for extra in legal_boundaries(name):
        _, arrays = arrays_of(name)
        ref = [dup(a) for a in arrays]
        out = call_with(name, arrays, **extra)
        twin_extra = dict(extra)
        if "step" in twin_extra:      # see test_twin_result_does_not_depend_on_step_type
            twin_extra["step"] = int(twin_extra["step"])
        with np.errstate(all="ignore"):
            want = getattr(reference, name)(*ref, **dict(BASE_HYPER[name], **twin_extra))
        assert out == want
        for a, b in zip(arrays, ref):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} {extra}")


@pytest.mark.parametrize("name", sorted(STEPPED))
def test_kernel_result_does_not_depend_on_step_type(name):
    results = []
    for step in (7, np.int64(7), np.int32(7), np.uint8(7)):
        _, arrays = arrays_of(name)
        out = call_with(name, arrays, step=step)
        results.append((out, [a.tobytes() for a in arrays]))
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("name", ["adamax", "nadam", "radam"])
def test_twin_result_does_not_depend_on_step_type(name):
    """The oracle must not change with the integer type of ``step``. reference.adamax/nadam/
    radam compute ``beta ** step`` directly: with a NumPy integer step that is NumPy's
    power, which rounds differently from the C pow() that a Python int step (and the
    kernels, for every step type) gets: 0.999 ** 7 = 0.993020965034979 but
    0.999 ** np.int64(7) = 0.9930209650349789."""
    results = []
    for step in (7, np.int64(7)):
        _, arrays = arrays_of(name)
        with np.errstate(all="ignore"):
            getattr(reference, name)(*arrays, **dict(BASE_HYPER[name], step=step))
        results.append([a.tobytes() for a in arrays])
    assert results[0] == results[1]


def test_lr_zero_changes_nothing_but_state():
    for name in FAMILIES:
        names, arrays = arrays_of(name)
        p_before = arrays[0].tobytes()
        # Rprop has no lr: its step sizes clamped to [0, 0]
        zero = dict(step_size_min=0.0, step_size_max=0.0) if name == "rprop" else dict(lr=0.0)
        if name == "asgd":      # after its first update the step size is the carried eta
            zero["eta"] = 0.0
        call_with(name, arrays, **zero)
        assert arrays[0].tobytes() == p_before, name


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_arrays_are_a_no_op(name):
    for shape in ((0,), (0, 3), (3, 0)):
        names, arrays = arrays_of(name, shape=shape)
        call_with(name, arrays)
        assert all(a.shape == shape for a in arrays)
    # but the dtype and shape checks still apply
    names, arrays = arrays_of(name, shape=(0,))
    arrays[1] = np.zeros(0, np.float32)
    with pytest.raises(TypeError, match="grad"):
        call_with(name, arrays)


# ---------------------------------------------------------------------------------------------
# 5. make_state
# ---------------------------------------------------------------------------------------------

EXPECTED_STATE = {"adagrad": ("state_sum",), "adadelta": ("square_avg", "acc_delta"),
                  "adamax": ("exp_avg", "exp_inf"), "nadam": ("exp_avg", "exp_avg_sq"),
                  "radam": ("exp_avg", "exp_avg_sq"), "lion": ("exp_avg",),
                  "rprop": ("prev", "step_size"), "asgd": ("ax",)}
#: buffers that start at a value (make_state's default of the option that fills them)
FILLED = {("rprop", "step_size"): 0.01}


@pytest.mark.parametrize("name", FAMILIES)
def test_state_names_in_argument_order(name):
    for module in (kernels, reference):
        params = list(inspect.signature(getattr(module, name)).parameters.values())
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert positional == ["param", "grad", *EXPECTED_STATE[name]]
    assert kernels.state_names(name) == EXPECTED_STATE[name]
    assert tuple(kernels.make_state(name, np.zeros(3))) == EXPECTED_STATE[name]
    assert name in kernels.KERNELS and name in kernels.__all__


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", FAMILIES)
def test_make_state_layout(name, dtype):
    for shape, order in [((), "C"), ((0,), "C"), ((1,), "C"), ((6,), "C"), ((3, 5), "C"),
                         ((3, 5), "F"), ((2, 3, 4), "F"), ((4, 1), "F")]:
        param = np.ones(shape, dtype=dtype, order=order)
        state = kernels.make_state(name, param)
        bufs = list(state.values())
        for key, buf in state.items():
            assert type(buf) is np.ndarray
            assert buf.shape == shape and buf.dtype == dtype
            assert buf.flags.c_contiguous == param.flags.c_contiguous
            assert buf.flags.f_contiguous == param.flags.f_contiguous
            assert buf.flags.writeable and buf.flags.aligned
            assert np.all(buf == dtype(FILLED.get((name, key), 0.0)))
            assert not np.shares_memory(buf, param)
        for a, b in itertools.combinations(bufs, 2):
            assert not np.shares_memory(a, b)
        # the buffers are accepted by the kernel as they are
        call(kernels, name, param, np.full(shape, 0.5, dtype=dtype, order=order), state, 1,
             default_opts(name))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_make_state_adagrad_initial_accumulator_value(dtype):
    for order in "CF":
        param = np.ones((3, 4), dtype=dtype, order=order)
        for value, want in [(0.1, dtype(0.1)), (2, dtype(2.0)), (np.float32(0.5), dtype(0.5)),
                            (0.0, dtype(0.0)), (1e-300, dtype(1e-300))]:
            st = kernels.make_state("adagrad", param, initial_accumulator_value=value)
            assert list(st) == ["state_sum"]
            buf = st["state_sum"]
            assert buf.dtype == dtype and buf.shape == (3, 4)
            assert buf.flags.f_contiguous == (order == "F")
            np.testing.assert_array_equal(buf, np.full((3, 4), want, dtype=dtype))


@pytest.mark.parametrize("bad", [-0.1, -1e-300, float("nan"), float("inf"), -float("inf"),
                                 "abc", None, "0.1", [0.1], 1j])
def test_make_state_bad_initial_accumulator_value(bad):
    with pytest.raises((TypeError, ValueError), match="initial_accumulator_value"):
        kernels.make_state("adagrad", np.ones(3), initial_accumulator_value=bad)


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "adagrad"])
def test_make_state_initial_accumulator_value_is_adagrad_only(name):
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        kernels.make_state(name, np.ones(3), initial_accumulator_value=0.1)
    assert list(kernels.make_state(name, np.ones(3), initial_accumulator_value=0.0)) == list(
        EXPECTED_STATE[name])


@pytest.mark.parametrize("name", FAMILIES)
def test_make_state_rejects_other_options_and_bad_params(name):
    for option in (dict(momentum=0.9), dict(centered=True), dict(amsgrad=True)):
        with pytest.raises(ValueError, match=f"{name} has no option {next(iter(option))}"):
            kernels.make_state(name, np.ones(3), **option)
    with pytest.raises(TypeError, match="param"):
        kernels.make_state(name, np.ones(3, np.int64))
    with pytest.raises(TypeError, match="param"):
        kernels.make_state(name, [1.0, 2.0])
    with pytest.raises(TypeError, match="param"):
        kernels.make_state(name, np.ones(3, np.float16))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_make_state_rprop_step_size_starts_at_lr(dtype):
    """Rprop's step_size starts at lr (torch: ``full_like(grad, lr)``), default 1e-2."""
    for order in "CF":
        param = np.ones((3, 4), dtype=dtype, order=order)
        for kw, want in [({}, 0.01), ({"lr": 0.5}, 0.5), ({"lr": 2}, 2.0)]:
            st = kernels.make_state("rprop", param, **kw)
            np.testing.assert_array_equal(st["step_size"], np.full((3, 4), dtype(want)))
            assert st["step_size"].flags.f_contiguous == (order == "F")
            assert not np.any(st["prev"])
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="lr"):
            kernels.make_state("rprop", np.ones(3), lr=bad)
