"""Weight EMA: the fused kernels (fastlr._core.ema) against their NumPy twins
(fastlr.reference.ema) bit for bit, the EMA class against its formulas and against torch's
AveragedModel, swapping, checkpoints and validation.
"""

import itertools
import tracemalloc

import numpy as np
import pytest

from fastlr._core import ema as _ema
from fastlr.reference import ema as ref
from fastlr.ema import EMA

DTYPES = [np.float32, np.float64]
UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}

# sizes 0 and 1, small, 2-D in C and F order, and above the threading threshold (the
# threaded loop splits spans from 32768 elements; 70001 gives 2 spans, one of odd length).
SHAPES = [((0,), "C"), ((1,), "C"), ((), "C"), ((7,), "C"), ((37, 29), "C"),
          ((37, 29), "F"), ((70001,), "C"), ((300, 257), "F")]

HALF_UP = float(np.nextafter(0.5, 1.0))     # w = 1 - decay just below 0.5 in float64...
HALF_DOWN = float(np.nextafter(0.5, 0.0))   # ...and just above it
DECAYS = [0.0, 0.25, 0.5, HALF_UP, HALF_DOWN, 0.5 + 1e-9, 0.75, 0.9, 0.999, 0.9999, 1.0]


def bits(a):
    return np.ascontiguousarray(a).view(UINT[a.dtype])


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_array_equal(bits(a)[~nan_a], bits(b)[~nan_b])


def make(shape, order, dtype, seed, special=False):
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal(shape).astype(dtype), order=order).copy(order=order)
    if special and x.size >= 8:
        info = np.finfo(dtype)
        flat = x.reshape(-1, order="A")
        flat[:8] = [0.0, -0.0, info.smallest_subnormal, 1e30, -1e-30, np.inf, -np.inf, np.nan]
    return x


# ---------------------------------------------------------------------------------------
# The kernel against the twin
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,order", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_ema_update_matches_reference_bit_for_bit(dtype, shape, order, n_threads):
    for k, decay in enumerate(DECAYS):
        ema = make(shape, order, dtype, 2 * k, special=True)
        param = make(shape, order, dtype, 2 * k + 1, special=k % 2 == 0)
        want = ema.copy(order="K")
        ref.ema_update(want, param, decay=decay)
        before = param.copy(order="K")
        _ema.ema_update(ema, param, decay=decay, n_threads=n_threads)
        assert_same_bits(ema, want)
        assert_same_bits(param, before)             # param is only read


@pytest.mark.parametrize("dtype", DTYPES)
def test_ema_update_endpoints_and_branches(dtype):
    e = np.array([1.0, -2.0, 3.0, 0.1], dtype=dtype)
    p = np.array([5.0, 7.0, -1.0, 0.3], dtype=dtype)
    x = e.copy()
    _ema.ema_update(x, p, decay=1.0)                # w = 0: ema unchanged
    assert_same_bits(x, e)
    x = e.copy()
    _ema.ema_update(x, p, decay=0.0)                # w = 1: a copy of param
    assert_same_bits(x, p)
    x = e.copy()
    _ema.ema_update(x, p, decay=0.5)                # w = 0.5: torch's second branch
    t = dtype(0.5)
    assert_same_bits(x, p - (p - e) * (dtype(1) - t))
    x = e.copy()
    _ema.ema_update(x, p, decay=0.9)                # w = 0.1: the first branch
    w = dtype(1.0 - 0.9)
    assert_same_bits(x, e + w * (p - e))


def test_threads_give_the_same_bits():
    for dtype in DTYPES:
        e = make((200003,), "C", dtype, 1)
        p = make((200003,), "C", dtype, 2)
        results = []
        for nt in (1, 2, 3, 8):
            x = e.copy()
            _ema.ema_update(x, p, decay=0.999, n_threads=nt)
            results.append(x)
        for x in results[1:]:
            assert_same_bits(x, results[0])


def test_lists_are_one_call_and_match_per_array():
    arrays = [make(s, o, d, i) for i, ((s, o), d) in
              enumerate(itertools.product(SHAPES, DTYPES))]
    params = [make(a.shape, "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C",
                   a.dtype, 100 + i) for i, a in enumerate(arrays)]
    want = [a.copy(order="K") for a in arrays]
    ref.ema_update(want, params, decay=0.99)
    _ema.ema_update(arrays, tuple(params), decay=0.99, n_threads=2)
    for a, w in zip(arrays, want):
        assert_same_bits(a, w)


def test_read_only_param_is_accepted():
    e = np.zeros(5)
    p = np.ones(5)
    p.flags.writeable = False
    _ema.ema_update(e, p, decay=0.75)
    np.testing.assert_array_equal(e, 0.25)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,order", SHAPES)
def test_swap_buffers_moves_bits_and_twice_restores(dtype, shape, order):
    rng = np.random.default_rng(7)
    u = UINT[np.dtype(dtype)]
    n = int(np.prod(shape))
    # arbitrary bit patterns: signalling NaNs and payloads must move unchanged
    a = rng.integers(0, np.iinfo(u).max, n, dtype=u, endpoint=True).view(dtype)
    b = rng.integers(0, np.iinfo(u).max, n, dtype=u, endpoint=True).view(dtype)
    a = a.reshape(shape, order=order).copy(order=order)
    b = b.reshape(shape, order=order).copy(order=order)
    a0, b0 = bits(a).copy(), bits(b).copy()
    _ema.swap_buffers(a, b, n_threads=2)
    np.testing.assert_array_equal(bits(a), b0)
    np.testing.assert_array_equal(bits(b), a0)
    _ema.swap_buffers([a], [b], n_threads=1)
    np.testing.assert_array_equal(bits(a), a0)
    np.testing.assert_array_equal(bits(b), b0)
    x, y = a.copy(order="K"), b.copy(order="K")
    ref.swap_buffers(x, y)
    np.testing.assert_array_equal(bits(x), b0)


# ---------------------------------------------------------------------------------------
# Kernel validation: every bad input raises, naming the argument, and writes nothing
# ---------------------------------------------------------------------------------------
def _bad_kernel_calls():
    e = np.ones(6, np.float32)
    p = np.full(6, 2.0, np.float32)
    ro = e.copy()
    ro.flags.writeable = False
    base = np.zeros(12, np.float32)
    two_d_c = np.ones((2, 3), np.float32)
    yield "list", dict(ema=[1.0, 2.0], param=[p, p]), TypeError, "ema[0]"
    yield "param-type", dict(ema=e, param="x"), TypeError, "param must be a numpy.ndarray"
    yield "int", dict(ema=np.ones(6, np.int64), param=p), TypeError, "ema must have dtype"
    yield "f16", dict(ema=e, param=p.astype(np.float16)), TypeError, "param must have dtype"
    yield "mismatch", dict(ema=e, param=p.astype(np.float64)), TypeError, "param has dtype float64"
    yield "shape", dict(ema=e, param=p[:5].copy()), ValueError, "param has shape (5,)"
    yield "strided", dict(ema=base[::2], param=p), ValueError, "ema must be contiguous"
    yield "layout", dict(ema=two_d_c, param=np.asfortranarray(np.ones((2, 3), np.float32))), \
        ValueError, "param is F-contiguous but ema is C-contiguous"
    yield "readonly", dict(ema=ro, param=p), ValueError, "ema is read-only"
    yield "overlap", dict(ema=base[:6], param=base[3:9]), ValueError, "overlap"
    yield "same", dict(ema=e, param=e), ValueError, "ema and param overlap"
    yield "byteorder", dict(ema=e, param=p.astype(">f4")), TypeError, "byte order"
    yield "count", dict(ema=[e], param=[p, p.copy()]), ValueError, "ema has 1 arrays"
    yield "mixed", dict(ema=e, param=[p]), TypeError, "both be arrays"
    yield "list-overlap", dict(ema=[e, e], param=[p, p.copy()]), ValueError, "overlap"
    for d in (-0.1, 1.5, float("nan"), float("inf")):
        yield f"decay={d}", dict(ema=e, param=p, decay=d), ValueError, "decay must be"
    for d in ("0.5", True, None, [0.5]):
        yield f"decay={d!r}", dict(ema=e, param=p, decay=d), TypeError, "decay must be"
    for nt, err in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        yield f"threads={nt}", dict(ema=e, param=p, n_threads=nt), err, "n_threads"


@pytest.mark.parametrize("case", list(_bad_kernel_calls()), ids=lambda c: c[0])
def test_ema_update_rejects_bad_input_and_writes_nothing(case):
    _, kwargs, error, text = case
    kwargs = dict(kwargs)
    kwargs.setdefault("decay", 0.5)
    arrays = [a for v in (kwargs["ema"], kwargs["param"])
              for a in (v if isinstance(v, list) else [v]) if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match="fastlr.kernels.ema_update") as info:
        _ema.ema_update(**kwargs)
    assert text in str(info.value)
    for a, b in zip(arrays, before):
        assert a.tobytes() == b.tobytes()


def test_swap_buffers_rejects_read_only_and_overlap():
    a, b = np.ones(4), np.zeros(4)
    b.flags.writeable = False
    with pytest.raises(ValueError, match="b is read-only"):
        _ema.swap_buffers(a, b)
    base = np.arange(8.0)
    with pytest.raises(ValueError, match="overlap"):
        _ema.swap_buffers(base[:4], base[2:6])
    np.testing.assert_array_equal(base, np.arange(8.0))


# ---------------------------------------------------------------------------------------
# The EMA class against its formulas
# ---------------------------------------------------------------------------------------
def expected_decay(warmup, k, decay, gamma=1.0, power=2.0 / 3.0, min_decay=0.0):
    """Written from the sources, independently of fastlr.ema."""
    if warmup is None:
        return decay
    if warmup == "tf":      # tf.train.ExponentialMovingAverage(decay, num_updates=k)
        return max(min(decay, (1.0 + k) / (10.0 + k)), min_decay)
    # timm ModelEmaV3.get_decay(step=k + 1) with update_after_step=0
    step = max(0, (k + 1) - 0 - 1)
    if step <= 0:
        return 0.0
    d = 1 - (1 + step / gamma) ** -power
    return max(min(d, decay), min_decay)


def test_decay_at_known_values():
    assert EMA(np.zeros(2), 0.99).decay_at(0) == 0.99
    tf = EMA(np.zeros(2), 0.99, warmup="tf")
    assert tf.decay_at(0) == 0.1 and tf.decay_at(8) == 0.5 and tf.decay_at(10 ** 6) == 0.99
    timm = EMA(np.zeros(2), 0.9999, warmup="timm", warmup_power=0.75)
    assert timm.decay_at(0) == 0.0
    assert timm.decay_at(1) == 1 - 2 ** -0.75
    # crowsonkb: power 3/4 reaches 0.999 at about 10K steps
    assert timm.decay_at(9000) < 0.999 < timm.decay_at(11000)
    assert timm.decay_at(10 ** 9) == 0.9999
    floor = EMA(np.zeros(2), 0.9, warmup="timm", min_decay=0.5)
    assert floor.decay_at(0) == 0.0 and floor.decay_at(1) == 0.5
    with pytest.raises(ValueError, match="step"):
        tf.decay_at(-1)
    with pytest.raises(TypeError, match="step"):
        tf.decay_at(1.0)


@pytest.mark.parametrize("warmup,options", [
    (None, {}),
    ("tf", {}),
    ("tf", {"min_decay": 0.3}),
    ("timm", {}),
    ("timm", {"warmup_gamma": 3.0, "warmup_power": 0.75, "min_decay": 0.2}),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ema_class_follows_its_formula_over_100_steps(warmup, options, dtype):
    decay = 0.97
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(dtype) for s in [(5, 3), (70001,), (1,), (0,)]]
    params[0] = np.asfortranarray(params[0])
    ema = EMA(params, decay, warmup=warmup, n_threads=2, **options)
    want = [p.copy(order="K") for p in params]
    for k in range(100):
        for p in params:
            p += rng.standard_normal(p.shape).astype(dtype) * dtype(0.1)   # "optimizer"
        d = expected_decay(warmup, k, decay, **{("gamma" if key == "warmup_gamma" else
                                                 "power" if key == "warmup_power" else key): v
                                                for key, v in options.items()})
        assert ema.decay_at(k) == d
        ema.update()
        for w, p in zip(want, params):
            ref.ema_update(w, p, decay=d)
        assert ema.updates == k + 1
    for a, w in zip(ema.averaged, want):
        assert_same_bits(a, w)
    # the averages lag the params (a real average, not a copy)
    assert not np.array_equal(ema.averaged[1], params[1])


def test_single_array_params():
    w = np.zeros((2, 2), np.float32)
    ema = EMA(w, 0.5)
    w += 1
    ema.update()
    assert isinstance(ema.averaged, list) and len(ema.averaged) == 1
    np.testing.assert_array_equal(ema.averaged[0], 0.5)
    ema.copy_to()
    np.testing.assert_array_equal(w, 0.5)


def test_averaged_buffers_are_allocated_once_and_keep_layout():
    p = [np.zeros((3, 4), order="F"), np.zeros(5, np.float32)]
    ema = EMA(p, 0.9)
    ids = [id(a) for a in ema.averaged]
    ptrs = [a.ctypes.data for a in ema.averaged]
    assert ema.averaged[0].flags.f_contiguous and ema.averaged[1].dtype == np.float32
    for _ in range(3):
        ema.update()
        with ema.average_parameters():
            pass
    assert [id(a) for a in ema.averaged] == ids
    assert [a.ctypes.data for a in ema.averaged] == ptrs


def test_update_allocates_nothing():
    params = [np.ones(1000, np.float32) for _ in range(10)]
    ema = EMA(params, 0.99, warmup="timm", n_threads=1)
    for _ in range(10):
        ema.update()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            ema.update()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 4096


# ---------------------------------------------------------------------------------------
# Against torch's AveragedModel
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch_averaged_model_over_50_steps(dtype):
    torch = pytest.importorskip("torch", reason="torch not installed; pip install torch==2.13.0")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 0.9
    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 2)).to(tdtype)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # fastlr tracks the very buffers torch's optimizer updates in place
    params = [p.detach().numpy() for p in model.parameters()]
    x = torch.randn(64, 4, dtype=tdtype)
    y = torch.randn(64, 2, dtype=tdtype)
    ema = None
    for step in range(50):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        averaged.update_parameters(model)
        if ema is None:
            # AveragedModel's first update_parameters copies the params (n_averaged == 0);
            # fastlr.EMA copies at construction: build it at that point.
            for a, p in zip(averaged.module.parameters(), model.parameters()):
                assert torch.equal(a, p)
            ema = EMA(params, decay)
        else:
            ema.update()
    assert ema.updates == 49 and int(averaged.n_averaged) == 50
    tol = 1e-10 if dtype == "float64" else 1e-5
    worst = 0.0
    for a, mine, p in zip(averaged.module.parameters(), ema.averaged, params):
        theirs = a.detach().numpy()
        scale = max(1.0, float(np.abs(theirs).max()))
        worst = max(worst, float(np.abs(mine - theirs).max()) / scale)
        assert not np.array_equal(mine, p)      # a real average
    assert worst <= tol


# ---------------------------------------------------------------------------------------
# Swapping and the context manager
# ---------------------------------------------------------------------------------------
def _trained(dtype=np.float64, warmup=None):
    rng = np.random.default_rng(11)
    params = [rng.standard_normal((4, 5)).astype(dtype), rng.standard_normal(70001).astype(dtype)]
    ema = EMA(params, 0.8, warmup=warmup)
    for _ in range(5):
        for p in params:
            p += dtype(0.5)
        ema.update()
    return params, ema


def test_swap_twice_is_identity():
    params, ema = _trained(np.float32)
    p0 = [bits(p).copy() for p in params]
    a0 = [bits(a).copy() for a in ema.averaged]
    ema.swap()
    assert ema.swapped
    for p, a in zip(params, a0):
        np.testing.assert_array_equal(bits(p), a)
    ema.swap()
    assert not ema.swapped
    for p, b in zip(params, p0):
        np.testing.assert_array_equal(bits(p), b)
    for a, b in zip(ema.averaged, a0):
        np.testing.assert_array_equal(bits(a), b)


def test_average_parameters_swaps_in_and_out():
    params, ema = _trained()
    p0 = [p.copy() for p in params]
    avg = [a.copy() for a in ema.averaged]
    with ema.average_parameters():
        for p, a in zip(params, avg):
            assert_same_bits(p, a)
        with pytest.raises(RuntimeError, match="swap back"):
            ema.update()                        # would average the averages
        with pytest.raises(RuntimeError, match="already hold"):
            with ema.average_parameters():
                pass
        sd = ema.state_dict()                   # the averages, wherever they live
        for s, a in zip(sd["averaged"], avg):
            assert_same_bits(s, a)
    for p, b in zip(params, p0):
        assert_same_bits(p, b)
    assert ema.updates == 5


def test_average_parameters_restores_on_exception():
    params, ema = _trained()
    p0 = [p.copy() for p in params]
    avg = [a.copy() for a in ema.averaged]
    with pytest.raises(ZeroDivisionError):
        with ema.average_parameters():
            1 / 0
    assert not ema.swapped
    for p, b in zip(params, p0):
        assert_same_bits(p, b)
    for a, b in zip(ema.averaged, avg):
        assert_same_bits(a, b)


def test_copy_to_params_and_other_arrays():
    params, ema = _trained()
    avg = [a.copy() for a in ema.averaged]
    out = [np.empty_like(a) for a in avg]
    ema.copy_to(out)
    for o, a in zip(out, avg):
        assert_same_bits(o, a)
    ema.copy_to()
    for p, a in zip(params, avg):
        assert_same_bits(p, a)


def test_copy_to_rejects_bad_targets_and_writes_nothing():
    params, ema = _trained()
    good = [np.zeros_like(a) for a in ema.averaged]
    bad_cases = [
        ([np.zeros((4, 5))], ValueError, "params has 1 arrays but averaged has 2"),
        ([np.zeros((4, 5), np.float32), good[1]], TypeError, "dtype"),
        ([np.zeros((5, 4)), good[1]], ValueError, "shape"),
        ([good[0], ema.averaged[1]], ValueError, "overlap"),
        (good[0], TypeError, "a list of arrays"),
    ]
    ro = np.zeros((4, 5))
    ro.flags.writeable = False
    bad_cases.append(([ro, good[1]], ValueError, "params[0] is read-only"))
    avg = [a.copy() for a in ema.averaged]
    for target, error, text in bad_cases:
        with pytest.raises(error, match="fastlr.EMA.copy_to") as info:
            ema.copy_to(target)
        assert text in str(info.value)
        for g in good:
            assert not g.any()
        for a, b in zip(ema.averaged, avg):
            assert_same_bits(a, b)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup", [None, "tf", "timm"])
@pytest.mark.parametrize("via", ["state_dict", "file"])
def test_resume_is_bit_identical(warmup, via, tmp_path):
    def run(params, ema, steps, seed):
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            for p in params:
                p -= rng.standard_normal(p.shape).astype(p.dtype) * p.dtype.type(0.01)
            ema.update()

    def fresh():
        rng = np.random.default_rng(5)
        return [rng.standard_normal((3, 7)).astype(np.float32), rng.standard_normal(9)]

    full_params = fresh()
    full = EMA(full_params, 0.95, warmup=warmup, warmup_power=0.75)
    run(full_params, full, 20, 1)
    run(full_params, full, 20, 2)

    params = fresh()
    first = EMA(params, 0.95, warmup=warmup, warmup_power=0.75)
    run(params, first, 20, 1)
    if via == "file":
        first.save(tmp_path / "ema.npz")
        assert not [f for f in tmp_path.iterdir() if f.name != "ema.npz"]   # no temp left
    else:
        sd = first.state_dict()
    saved_params = [p.copy() for p in params]
    resumed_params = [p.copy() for p in saved_params]
    # a new process: the EMA is rebuilt (other defaults on purpose), then loaded
    resumed = EMA(resumed_params, 0.5)
    if via == "file":
        resumed.load(tmp_path / "ema.npz")
        with np.load(tmp_path / "ema.npz", allow_pickle=False) as data:
            assert data["updates"].dtype == np.int64
    else:
        resumed.load_state_dict(sd)
    assert resumed.updates == 20 and resumed.decay == 0.95 and resumed.warmup == warmup
    run(resumed_params, resumed, 20, 2)
    assert resumed.updates == full.updates == 40
    for a, b in zip(resumed.averaged, full.averaged):
        assert_same_bits(a, b)


def test_state_dict_is_a_copy():
    params, ema = _trained()
    sd = ema.state_dict()
    sd["averaged"][0][...] = 123.0
    assert not (ema.averaged[0] == 123.0).any()


def _bad_state_dicts(sd):
    def edit(**changes):
        d = dict(sd)
        d.update(changes)
        return d

    avg = sd["averaged"]
    yield "not-dict", [1, 2], TypeError
    yield "format", edit(format="fastlr.EMA/99"), ValueError
    yield "missing", {k: v for k, v in sd.items() if k != "updates"}, ValueError
    yield "extra", edit(foo=1), ValueError
    yield "updates<0", edit(updates=-1), ValueError
    yield "updates-float", edit(updates=3.0), TypeError
    yield "decay", edit(decay=1.5), ValueError
    yield "warmup", edit(warmup="cosine"), ValueError
    yield "gamma", edit(warmup_gamma=0.0), ValueError
    yield "min>decay", edit(min_decay=0.9), ValueError
    yield "count", edit(averaged=avg[:1]), ValueError
    yield "not-list", edit(averaged=avg[0]), TypeError
    yield "shape", edit(averaged=[avg[0].reshape(5, 4), avg[1]]), ValueError
    yield "dtype", edit(averaged=[avg[0].astype(np.float32), avg[1]]), ValueError
    yield "not-array", edit(averaged=[avg[0].tolist(), avg[1]]), TypeError


def test_load_state_dict_rejects_bad_input_and_changes_nothing():
    params, ema = _trained()
    good = ema.state_dict()
    for k in range(len(good["averaged"])):
        good["averaged"][k] = good["averaged"][k] + 1.0     # would change the averages
    good["updates"] = 1000
    before = [a.copy() for a in ema.averaged]
    for label, sd, error in _bad_state_dicts(good):
        with pytest.raises(error, match="fastlr.EMA.load_state_dict"):
            ema.load_state_dict(sd)
        assert ema.updates == 5 and ema.decay == 0.8 and ema.warmup is None, label
        for a, b in zip(ema.averaged, before):
            assert_same_bits(a, b)


def test_load_rejects_corrupt_files_and_changes_nothing(tmp_path):
    params, ema = _trained()
    ema.save(tmp_path / "ok.npz")
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    np.savez(tmp_path / "pickled.npz", format=np.array("fastlr.EMA/1"),
             updates=np.array(1), config=np.array([{"decay": 0.5}], dtype=object))
    before = [a.copy() for a in ema.averaged]
    for name in ["truncated.npz", "garbage.npz", "other.npz", "pickled.npz", "missing.npz"]:
        with pytest.raises(ValueError, match="fastlr.EMA.load"):
            ema.load(tmp_path / name)
        assert ema.updates == 5
        for a, b in zip(ema.averaged, before):
            assert_same_bits(a, b)
    # a checkpoint of another model
    other = EMA([np.zeros(3), np.zeros(2)], 0.5)
    with pytest.raises(ValueError, match="shape"):
        other.load(tmp_path / "ok.npz")
    ema.load(tmp_path / "ok.npz")


# ---------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------
def _bad_constructions():
    ok = np.zeros(3)
    ro = np.zeros(3)
    ro.flags.writeable = False
    base = np.zeros(10)
    yield "none", dict(params=None), TypeError, "params must be a numpy.ndarray"
    yield "empty", dict(params=[]), ValueError, "empty"
    yield "ints", dict(params=[np.zeros(3, np.int32)]), TypeError, "params[0] must have dtype"
    yield "obj", dict(params=[ok, 3.0]), TypeError, "params[1] must be a numpy.ndarray"
    yield "strided", dict(params=base[::2]), ValueError, "params must be contiguous"
    yield "readonly", dict(params=[ok, ro]), ValueError, "params[1] is read-only"
    yield "twice", dict(params=[ok, ok]), ValueError, "params[0] and params[1] overlap"
    yield "overlap", dict(params=[base[:5], base[4:]]), ValueError, "overlap"
    yield "decay", dict(params=ok, decay=1.01), ValueError, "decay"
    yield "decay-nan", dict(params=ok, decay=float("nan")), ValueError, "decay"
    yield "decay-str", dict(params=ok, decay="0.9"), TypeError, "decay"
    yield "warmup", dict(params=ok, warmup="linear"), ValueError, "warmup"
    yield "warmup-bool", dict(params=ok, warmup=True), TypeError, "warmup"
    yield "gamma", dict(params=ok, warmup_gamma=-1.0), ValueError, "warmup_gamma"
    yield "power", dict(params=ok, warmup_power=float("inf")), ValueError, "warmup_power"
    yield "min", dict(params=ok, decay=0.5, min_decay=0.6), ValueError, "min_decay"
    yield "threads", dict(params=ok, n_threads=0), ValueError, "n_threads"


@pytest.mark.parametrize("case", list(_bad_constructions()), ids=lambda c: c[0])
def test_constructor_rejects_bad_input(case):
    _, kwargs, error, text = case
    with pytest.raises(error, match="fastlr.EMA") as info:
        EMA(**kwargs)
    assert text in str(info.value)


def test_repr_and_properties():
    ema = EMA([np.zeros(2)], 0.99, warmup="timm", warmup_power=0.75)
    assert "decay=0.99" in repr(ema) and "timm" in repr(ema)
    assert (ema.decay, ema.warmup, ema.warmup_gamma, ema.warmup_power, ema.min_decay) == \
        (0.99, "timm", 1.0, 0.75, 0.0)
    ema.n_threads = 2
    assert ema.n_threads == 2
    with pytest.raises(ValueError):
        ema.n_threads = 0
