"""fastlr.kernels against fastlr.reference (the NumPy oracle), plus the contract of docs/design.md:
in place, every option, every layout, bit-identical across thread counts.

SGD and RMSprop follow the same operations in the same order as the reference, so they are
compared bit for bit. Adam multiplies by 1/sqrt(1 - beta2^t) where the reference divides by
sqrt(1 - beta2^t); it is compared to a few ulps.
"""

import inspect
import itertools

import numpy as np
import pytest

import fastlr
from fastlr import kernels, reference

DTYPES = [np.float32, np.float64]

# (shape, order): sizes 0, 1, 7, 1000, 100003 (above the threading threshold), 2-D in C and F.
SHAPES = [((0,), "C"), ((1,), "C"), ((7,), "C"), ((1000,), "C"), ((100003,), "C"),
          ((37, 29), "C"), ((37, 29), "F")]


def make_arrays(shape, order, dtype, seed, state_names, special=False):
    """param, grad and the named state buffers of one parameter, with awkward values mixed
    in (zeros, denormals, large and tiny magnitudes) when `special`. State is consistent:
    second moments are positive and exceed the squared first moments."""
    rng = np.random.default_rng(seed)

    def arr(scale=1.0, awkward=False):
        x = (rng.standard_normal(shape) * scale).astype(dtype)
        if awkward and x.size >= 7:
            flat = x.reshape(-1, order="A")
            info = np.finfo(dtype)
            flat[:5] = [0.0, -0.0, info.smallest_subnormal, 1e3, -1e-20]
        return np.asarray(x, order=order).copy(order=order)

    param = arr(awkward=special)
    grad = arr(0.1, awkward=special)
    state = [np.abs(arr(0.01)) + 1e-4 if ("sq" in name or "square" in name) else arr(1e-3)
             for name in state_names]
    return param, grad, state


def sgd_options():
    for momentum, dampening, nesterov, wd, maximize in itertools.product(
        [0.0, 0.9], [0.0, 0.1], [False, True], [0.0, 0.01], [False, True]
    ):
        if momentum == 0 and (dampening or nesterov):
            continue
        if nesterov and dampening:
            continue
        yield dict(momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=wd, maximize=maximize, lr=0.05)


def rmsprop_options():
    for alpha, momentum, centered, wd, maximize in itertools.product(
        [0.99, 0.3], [0.0, 0.9], [False, True], [0.0, 0.01], [False, True]
    ):
        yield dict(alpha=alpha, momentum=momentum, centered=centered, weight_decay=wd,
                   maximize=maximize, lr=0.01, eps=1e-6)


def adam_options():
    for beta1, amsgrad, wd, decoupled, maximize in itertools.product(
        [0.9, 0.3], [False, True], [0.0, 0.01], [False, True], [False, True]
    ):
        if decoupled and wd == 0:
            continue
        yield dict(beta1=beta1, beta2=0.999, amsgrad=amsgrad, weight_decay=wd,
                   decoupled_weight_decay=decoupled, maximize=maximize, lr=0.01, eps=1e-8)


def adamw_options():
    for amsgrad, wd, maximize in itertools.product([False, True], [0.0, 0.05], [False, True]):
        yield dict(amsgrad=amsgrad, weight_decay=wd, maximize=maximize, lr=0.01)


CASES = ([("sgd", o) for o in sgd_options()] + [("rmsprop", o) for o in rmsprop_options()]
         + [("adam", o) for o in adam_options()] + [("adamw", o) for o in adamw_options()])


def case_id(case):
    name, opts = case
    on = [f"{k}={v}" for k, v in opts.items() if k not in ("lr", "eps", "beta2") and v]
    return f"{name}[{','.join(on) or 'plain'}]"


def split_options(name, opts):
    """(state buffer names, keyword arguments of the call)."""
    opts = dict(opts)
    centered = opts.pop("centered", False)
    amsgrad = opts.pop("amsgrad", False)
    names = kernels.state_names(name, momentum=opts.get("momentum", 0.0), centered=centered,
                                amsgrad=amsgrad)
    return names, opts


def run_steps(module, name, opts, param, grad, state, steps=(1, 2, 3), n_threads=None):
    names, kwargs = split_options(name, opts)
    fn = getattr(module, name)
    for step in steps:
        if name != "rmsprop":
            kwargs["step"] = step
        result = fn(param, grad, **dict(zip(names, state)), **kwargs, n_threads=n_threads)
        assert result is None


def assert_matches(name, dtype, got, want, what):
    if name in ("sgd", "rmsprop"):
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        tol = 2e-6 if dtype == np.float32 else 1e-14
        scale = max(1.0, float(np.max(np.abs(np.nan_to_num(want))))) if want.size else 1.0
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_reference(case, dtype):
    name, opts = case
    names, _ = split_options(name, opts)
    for (shape, order), special in itertools.product(SHAPES, [False, True]):
        p, g, st = make_arrays(shape, order, dtype, seed=len(shape) + shape[0], special=special,
                               state_names=names)
        p_ref, st_ref = p.copy(order="A"), [s.copy(order="A") for s in st]
        g_before = g.copy(order="A")
        run_steps(kernels, name, opts, p, g, st)
        run_steps(reference, name, opts, p_ref, g, st_ref)
        what = f"{name} {opts} dtype={np.dtype(dtype).name} shape={shape} order={order}"
        assert p.dtype == dtype and p.shape == shape
        assert_matches(name, dtype, p, p_ref, "param: " + what)
        for s_name, s, s_ref in zip(names, st, st_ref):
            assert_matches(name, dtype, s, s_ref, f"{s_name}: " + what)
        np.testing.assert_array_equal(g, g_before, err_msg="grad was modified")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_threads_bit_identical(case, dtype):
    """1 and 2 threads (and the default) give the same bits, on a span that is split."""
    name, opts = case
    names, _ = split_options(name, opts)
    results = []
    for n_threads in (1, 2, None):
        p, g, st = make_arrays((100003,), "C", dtype, seed=7, state_names=names, special=True)
        run_steps(kernels, name, opts, p, g, st, n_threads=n_threads)
        results.append([p] + st)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", kernels.KERNELS)
def test_same_names_and_signatures_as_reference(name):
    assert inspect.signature(getattr(kernels, name)) == inspect.signature(
        getattr(reference, name))
    assert getattr(kernels, name).__doc__ and "param" in getattr(kernels, name).__doc__


def test_results_land_in_callers_buffers():
    """Views into larger arrays are updated in place: the caller's memory changes."""
    for dtype, order in itertools.product(DTYPES, "CF"):
        big = np.zeros((4, 50, 40), dtype=dtype, order=order)
        big[...] = np.linspace(-1, 1, big.size).reshape(big.shape)
        param = big[1] if order == "C" else big[:, :, 1]
        assert param.flags.c_contiguous or param.flags.f_contiguous
        grad = np.full(param.shape, 0.25, dtype=dtype, order=order)
        state = kernels.make_state("adam", param, amsgrad=True)
        before = big.copy(order="A")
        kernels.adam(param, grad, **state, step=1, lr=0.1)
        assert np.shares_memory(param, big)
        changed = big != before
        assert changed.sum() == param.size  # exactly the view's elements, nowhere else
        for buf in state.values():
            assert np.any(buf != 0)


def test_read_only_grad_accepted():
    p = np.ones(10, np.float32)
    g = np.full(10, 0.5, np.float32)
    g.flags.writeable = False
    kernels.sgd(p, g, step=1, lr=0.1)
    np.testing.assert_array_equal(p, np.full(10, 0.95, np.float32))


def test_sgd_first_step_initialises_buffer():
    """torch: the momentum buffer is None on its first use and becomes the gradient (no
    dampening factor), whatever the buffer held."""
    p = np.zeros(3)
    buf = np.full(3, 123.0)
    g = np.array([1.0, -2.0, 3.0])
    kernels.sgd(p, g, buf, step=1, lr=1.0, momentum=0.9, dampening=0.5)
    np.testing.assert_array_equal(buf, g)
    np.testing.assert_array_equal(p, -g)
    kernels.sgd(p, g, buf, step=2, lr=1.0, momentum=0.9, dampening=0.5)
    np.testing.assert_array_equal(buf, 0.9 * g + 0.5 * g)


def test_amsgrad_max_is_over_raw_second_moment_and_propagates_nan():
    p = np.zeros(3)
    g = np.array([1.0, np.nan, 2.0])
    m, v, vmax = np.zeros(3), np.zeros(3), np.array([5.0, 0.0, np.nan])
    kernels.adam(p, g, m, v, vmax, step=1, lr=0.1)
    assert vmax[0] == 5.0          # max(5, 0.001): raw v, not bias-corrected (which is 1.0)
    assert np.isnan(vmax[1]) and np.isnan(vmax[2])
    assert np.isnan(p[1]) and np.isnan(p[2]) and np.isfinite(p[0])


def test_adamw_is_adam_with_decoupled_decay():
    args = [np.linspace(-1, 1, 50) for _ in range(4)]
    a = [x.copy() for x in args]
    b = [x.copy() for x in args]
    kernels.adamw(a[0], a[1], a[2], a[3], step=3, lr=0.1)
    kernels.adam(b[0], b[1], b[2], b[3], step=3, lr=0.1, weight_decay=1e-2,
                 decoupled_weight_decay=True)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


def test_make_state_layout_and_names():
    p = np.asfortranarray(np.ones((3, 4), np.float32))
    st = kernels.make_state("rmsprop", p, momentum=0.9, centered=True)
    assert list(st) == ["square_avg", "momentum_buffer", "grad_avg"]
    for buf in st.values():
        assert buf.dtype == np.float32 and buf.shape == (3, 4) and buf.flags.f_contiguous
        assert not np.any(buf)
    assert kernels.make_state("sgd", p) == {}
    assert list(kernels.make_state("adamw", p, amsgrad=True)) == [
        "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    with pytest.raises(ValueError, match="unknown kernel 'adafactor'"):
        kernels.make_state("adafactor", p)
    with pytest.raises(ValueError, match="sgd has no option amsgrad"):
        kernels.make_state("sgd", p, amsgrad=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.make_state("adam", np.ones(3, np.int64))


def test_num_threads_setting():
    default = fastlr.get_num_threads()
    assert default >= 1
    try:
        fastlr.set_num_threads(1)
        assert fastlr.get_num_threads() == 1
        with pytest.raises(ValueError, match="n_threads must be between 1 and 4096"):
            fastlr.set_num_threads(0)
        with pytest.raises(TypeError, match="n_threads must be an int"):
            fastlr.set_num_threads(1.5)
    finally:
        fastlr.set_num_threads(None)
    assert fastlr.get_num_threads() == default


def test_make_state_buffers_are_separate_aligned_and_staggered_when_large():
    for n in (10, 1 << 20):               # small: packed; large: staggered by STAGGER_BYTES
        p = np.ones(n, np.float32)
        st = kernels.make_state("adam", p, amsgrad=True)
        bufs = list(st.values())
        for a, b in itertools.combinations(bufs, 2):
            assert not np.shares_memory(a, b)
        addrs = [b.ctypes.data for b in bufs]
        assert all(a % 64 == 0 for a in addrs)
        gaps = {y - x for x, y in zip(addrs, addrs[1:])}
        expected = (n * 4 + 63) // 64 * 64 + (kernels.STAGGER_BYTES if n * 4 >= 1 << 20 else 0)
        assert gaps == {expected}
        for b in bufs:
            b[...] = 1.0                  # writable, and writing one leaves the others alone
        assert all(np.all(b == 1.0) for b in bufs)
