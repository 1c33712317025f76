"""fastlr.Muon, its validated kernel (fastlr.kernels.muon) and its NumPy twin
(fastlr.reference.muon) against torch.optim.Muon 2.13 and each other.

torch runs the Newton-Schulz iteration in bfloat16 with MKL's matrix products; fastlr rounds
NumPy's BLAS products to bfloat16 the same way, but the two BLAS sum the float32 products in
different orders, which now and then rounds a bfloat16 element the other way. So:

* the momentum buffers (element-wise, in the param's dtype) must equal torch's bit for bit
  (the grads are drawn independently of the params, so both sides see the same grads);
* the params must agree within ``2**-9 * sum_t lr'_t``: half a bfloat16 ulp (relative
  ``2**-8``) of a unit update element, per step, accumulated over the run. Measured on
  this machine (shapes 4x6 to 384x96, both dtypes, both adjust_lr_fn, Nesterov on and off,
  100 steps): at most 0.04 of ``2**-8 * sum_t lr'_t``, i.e. about a tenth of this bound;
  docs/muon.rst has the table.
"""
import importlib.util
import math
import pathlib
import warnings

import numpy as np
import pytest

import fastlr
from fastlr import kernels, reference, schedules

torch = pytest.importorskip("torch")

_POLICY_PATH = pathlib.Path(__file__).resolve().parents[1] / "test_argument_policy.py"


def _policy():
    spec = importlib.util.spec_from_file_location("_muon_argument_policy", _POLICY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


policy = _policy()

DTYPES = [np.float64, np.float32]


def _adjusted(lr, shape, adjust_lr_fn):
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    return lr * math.sqrt(max(1, rows / cols))


def _bound(lrs, shape, adjust_lr_fn):
    return 2.0 ** -9 * sum(_adjusted(lr, shape, adjust_lr_fn) for lr in lrs)


# ---------------------------------------------------------------------------------------
# torch parity: 100 steps, two groups, an lr schedule, both adjust_lr_fn, Nesterov on/off
# ---------------------------------------------------------------------------------------
PARITY = [
    # (shapes of group 0, shapes of group 1, group 0 options, group 1 options)
    ([(16, 8), (8, 24)], [(32, 64)],
     {"nesterov": True}, {"adjust_lr_fn": "match_rms_adamw", "lr": 0.01}),
    ([(64, 32)], [(6, 4), (96, 48)],
     {"nesterov": False, "adjust_lr_fn": "original"}, {"momentum": 0.9, "weight_decay": 0.0}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(PARITY)))
@pytest.mark.parametrize("scheduled", [False, True])
def test_matches_torch_over_100_steps(dtype, case, scheduled):
    shapes0, shapes1, opt0, opt1 = PARITY[case]
    rng = np.random.default_rng(case)
    base_lr = 0.02
    schedule = schedules.cosine(base_lr, 100, end=0.002) if scheduled else None
    params = [rng.standard_normal(s).astype(dtype) for s in shapes0 + shapes1]
    n0 = len(shapes0)
    mine = [p.copy() for p in params]
    groups = [dict(opt0, params=mine[:n0]), dict(opt1, params=mine[n0:])]
    opt = fastlr.Muon(groups, lr=schedule if scheduled else base_lr)
    theirs = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ref = torch.optim.Muon([dict(opt0, params=theirs[:n0]), dict(opt1, params=theirs[n0:])],
                           lr=base_lr)
    lrs = {0: [], 1: []}
    for t in range(100):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        for g, group in enumerate(ref.param_groups):
            if scheduled and "lr" not in (opt0, opt1)[g]:
                group["lr"] = schedule(t)
            lrs[g].append(group["lr"])
        for tp, g in zip(theirs, grads):
            tp.grad = torch.from_numpy(g.copy())
        ref.step()
        opt.step(grads)
    for i, (p, tp) in enumerate(zip(mine, theirs)):
        g = 0 if i < n0 else 1
        adjust = groups[g].get("adjust_lr_fn")
        np.testing.assert_array_equal(opt.state[i]["momentum_buffer"],
                                      ref.state[tp]["momentum_buffer"].numpy())
        diff = np.abs(p - tp.detach().numpy()).max()
        assert diff <= _bound(lrs[g], p.shape, adjust), (i, p.shape, diff)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_step_matches_torch_where_the_products_agree(dtype):
    """A 4x6 param whose bfloat16 products MKL and NumPy's BLAS sum alike (short rows):
    the whole step equals torch's, the param bit for bit (fma in the update as torch)."""
    rng = np.random.default_rng(5)
    for _ in range(5):
        p = rng.standard_normal((4, 6)).astype(dtype)
        g = rng.standard_normal((4, 6)).astype(dtype)
        buf = rng.standard_normal((4, 6)).astype(dtype)
        tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
        ref = torch.optim.Muon([tp], lr=0.02)
        tp.grad = torch.from_numpy(g.copy())
        ref.state[tp]["momentum_buffer"] = torch.from_numpy(buf.copy())
        ref.step()
        kernels.muon(p, g, buf, lr=0.02)
        np.testing.assert_array_equal(buf, ref.state[tp]["momentum_buffer"].numpy())
        np.testing.assert_array_equal(p, tp.detach().numpy())


# ---------------------------------------------------------------------------------------
# the kernel against its NumPy twin, layouts, options
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 5), (8, 24), (40, 12)])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_kernel_matches_twin(dtype, shape, nesterov, adjust_lr_fn):
    rng = np.random.default_rng(sum(shape))
    p = rng.standard_normal(shape).astype(dtype)
    buf = np.zeros(shape, dtype)
    p2, buf2 = p.copy(), buf.copy()
    kw = dict(lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=nesterov, ns_steps=5,
              adjust_lr_fn=adjust_lr_fn)
    for _ in range(3):
        g = rng.standard_normal(shape).astype(dtype)
        kernels.muon(p, g, buf, **kw)
        reference.muon(p2, g, buf2, **kw)
    # the twin rounds lerp's product and sum separately (no fma): ulps of the grads' scale
    np.testing.assert_allclose(buf, buf2, rtol=0, atol=16 * np.finfo(dtype).eps)
    assert np.abs(p - p2).max() <= 3 * 2.0 ** -9 * _adjusted(0.05, shape, adjust_lr_fn) + \
        4 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_fortran_order_gives_the_same_bits(dtype, shape):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(shape).astype(dtype)
    pf, buf, buff = np.asfortranarray(p), np.zeros(shape, dtype), np.zeros(shape, dtype,
                                                                           order="F")
    for _ in range(4):
        g = rng.standard_normal(shape).astype(dtype)
        kernels.muon(p, g, buf, lr=0.1)
        kernels.muon(pf, np.asfortranarray(g), buff, lr=0.1)
    np.testing.assert_array_equal(p, pf)
    np.testing.assert_array_equal(buf, buff)


def test_orthogonalizes():
    """The update's singular values come out near 1 (the quintic's band, about 0.7..1.2)."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((32, 48)) * np.logspace(0, 3, 48)     # badly conditioned
    p = np.zeros((32, 48))
    kernels.muon(p, g, np.zeros_like(p), lr=1.0, weight_decay=0.0, momentum=0.0)
    s = np.linalg.svd(-p, compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.3, s


def test_zero_grad_and_zero_steps():
    p = np.ones((3, 4))
    kernels.muon(p, np.zeros((3, 4)), np.zeros((3, 4)), lr=0.1, weight_decay=0.5)
    np.testing.assert_array_equal(p, np.full((3, 4), 1 - 0.1 * 0.5))   # decay only
    p = np.zeros((2, 2))
    kernels.muon(p, np.eye(2) * 3, np.zeros((2, 2)), lr=1.0, weight_decay=0.0, momentum=0.0,
                 ns_steps=0)
    np.testing.assert_allclose(-p, np.eye(2) / math.sqrt(2), rtol=2 ** -8)   # X / ||X||_F


def test_step_reference_matches_step():
    rng = np.random.default_rng(9)
    a = [rng.standard_normal((8, 12)), rng.standard_normal((12, 8)).astype(np.float32)]
    b = [x.copy() for x in a]
    oa, ob = fastlr.Muon(a, lr=0.03), fastlr.Muon(b, lr=0.03)
    for _ in range(3):
        grads = [rng.standard_normal(x.shape).astype(x.dtype) for x in a]
        oa.step(grads)
        ob.step_reference(grads)
    for x, y in zip(a, b):
        assert np.abs(x - y).max() <= 3 * 2.0 ** -9 * _adjusted(0.03, x.shape, None) + 1e-6


# ---------------------------------------------------------------------------------------
# refusals: not 2-D (as torch), arguments (the argument policy), nothing half-applied
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_refuses_params_that_are_not_2d(shape):
    with pytest.raises(ValueError, match="Muon only supports 2D"):
        torch.optim.Muon([torch.nn.Parameter(torch.zeros(shape))])
    with pytest.raises(ValueError, match=r"^fastlr\.Muon: params\[1\].*2-D params"):
        fastlr.Muon([np.zeros((2, 2)), np.zeros(shape)])
    with pytest.raises(ValueError, match=r"^fastlr\.kernels\.muon: param must be 2-D"):
        kernels.muon(np.zeros(shape), np.zeros(shape), np.zeros(shape), lr=0.1)
    opt = fastlr.Muon([np.zeros((2, 2))])
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [np.zeros(shape)]})
    assert len(opt.param_groups) == 1


MUON_SPEC = {"lr": policy.REAL("nonneg"), "weight_decay": policy.REAL("nonneg"),
             "momentum": policy.REAL("nonneg"), "nesterov": policy.FLAG,
             "eps": policy.REAL("nonneg"), "ns_steps": policy.INT(0, 99),
             "adjust_lr_fn": policy.CHOICE(None, "original", "match_rms_adamw")}


def _policy_cases():
    def opt(**kw):
        return lambda: fastlr.Muon([np.ones((2, 3), np.float32)], **kw)

    def group(**kw):
        return lambda: fastlr.Muon([dict(kw, params=[np.ones((2, 3), np.float32)])])

    def kernel(**kw):
        kw.setdefault("lr", 0.1)
        p = np.ones((2, 3))
        return lambda: kernels.muon(p, np.ones((2, 3)), np.zeros((2, 3)), **kw)

    out = []
    for name, make in (("fastlr.Muon", opt), ("fastlr.Muon", group),
                       ("fastlr.kernels.muon", kernel)):
        for arg, kind in MUON_SPEC.items():
            if make is kernel and arg in ("lr",):
                kind = policy.REAL("nonneg")
            for label, value, exc in policy.bad_values(kind):
                if make is not kernel and arg in ("lr", "weight_decay", "momentum") and \
                        callable(value):
                    continue                  # a callable is a schedule there
                out.append(pytest.param(name, make, arg, value, exc,
                                        id=f"{make.__name__}-{arg}-{label}"))
        for label, value, exc in [("str", "abc", TypeError), ("two", (1.0, 2.0), ValueError),
                                  ("nan", (1.0, math.nan, 1.0), ValueError),
                                  ("strmember", (1.0, "x", 1.0), TypeError),
                                  ("number", 3.0, TypeError)]:
            out.append(pytest.param(name, make, "ns_coefficients", value, exc,
                                    id=f"{make.__name__}-ns_coefficients-{label}"))
    return out


@pytest.mark.parametrize("name,make,arg,value,exc", _policy_cases())
def test_argument_policy(name, make, arg, value, exc):
    call = make(**{arg: value})
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert info.type is exc, f"{info.type.__name__} ({info.value}), expected {exc.__name__}"
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    assert arg in message, message


def test_kernel_array_checks_write_nothing():
    p, g, b = np.ones((3, 4)), np.ones((3, 4)), np.zeros((3, 4))
    bad = [
        (dict(grad=np.ones((3, 4), np.float32)), TypeError, "dtype"),
        (dict(grad=np.ones((4, 3))), ValueError, "shape"),
        (dict(grad=np.asfortranarray(np.ones((3, 4)))), ValueError, "layout"),
        (dict(grad=[[1.0] * 4] * 3), TypeError, "numpy.ndarray"),
        (dict(param=np.ones((3, 4), np.int64)), TypeError, "float32 or float64"),
        (dict(grad=p), ValueError, "overlaps"),
        (dict(momentum_buffer=p), ValueError, "overlap"),
    ]
    ro = np.zeros((3, 4))
    ro.flags.writeable = False
    bad.append((dict(momentum_buffer=ro), ValueError, "read-only"))
    for override, exc, words in bad:
        args = dict(param=p, grad=g, momentum_buffer=b)
        args.update(override)
        with pytest.raises(exc, match=words) as info:
            kernels.muon(args["param"], args["grad"], args["momentum_buffer"], lr=0.1)
        assert str(info.value).startswith("fastlr.kernels.muon: ")
        np.testing.assert_array_equal(p, np.ones((3, 4)))
        np.testing.assert_array_equal(b, np.zeros((3, 4)))


def test_step_errors_change_nothing():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal((3, 4)), rng.standard_normal((5, 2))]
    lr = fastlr.schedules.from_callable(lambda t: 0.1 if t < 1 else -1.0)
    opt = fastlr.Muon([{"params": params[:1]}, {"params": params[1:], "lr": lr}], lr=0.1)
    opt.step([np.ones((3, 4)), np.ones((5, 2))])
    before = [p.copy() for p in params]
    bufs = [opt.state[i]["momentum_buffer"].copy() for i in range(2)]
    cases = [
        ([np.ones((3, 4)), np.ones((2, 5))], ValueError, r"grads\[1\] has shape"),
        ([np.ones((3, 4)), np.ones((5, 2), np.float32)], TypeError, r"grads\[1\] has dtype"),
        ([np.ones((3, 4))], ValueError, "1 grads for 2 params"),
        ([params[0], np.ones((5, 2))], ValueError, r"grads\[0\] overlaps params\[0\]"),
        ([np.ones((3, 4)), opt.state[1]["momentum_buffer"]], ValueError,
         r"grads\[1\] overlaps params\[1\]"),
        (np.ones((3, 4)), ValueError, r"grads has shape \(3, 4\) but one grad array for 2"),
        (iter([np.ones((3, 4)), np.ones((5, 2))]), TypeError, "must be a list"),
        ([np.ones((3, 4)), np.ones((5, 2))], ValueError, r"param_groups\[1\]\['lr'\]"),
    ]
    for grads, exc, words in cases:
        with pytest.raises(exc, match=words) as info:
            opt.step(grads)
        assert str(info.value).startswith("fastlr.Muon.step: ")
        for p, q in zip(params, before):
            np.testing.assert_array_equal(p, q)
        for i in range(2):
            np.testing.assert_array_equal(opt.state[i]["momentum_buffer"], bufs[i])
        assert opt.steps == 1


def test_group_writes_are_checked():
    opt = fastlr.Muon([np.ones((2, 2))])
    with pytest.raises(ValueError, match="lr"):
        opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(TypeError, match="params"):
        opt.param_groups[0]["params"] = []
    opt.param_groups[0]["adjust_lr_fn"] = "match_rms_adamw"
    assert opt.param_groups[0]["lr"] == 1e-3


# ---------------------------------------------------------------------------------------
# grads by name, None grads, schedules as callables, repr
# ---------------------------------------------------------------------------------------
def test_named_params_and_none_grads():
    a, b = np.ones((2, 3)), np.ones((4, 2))
    opt = fastlr.Muon({"fc1.weight": a, "fc2.weight": b}, lr=0.1)
    opt.step({"fc2.weight": np.eye(4, 2), "fc1.weight": None})
    np.testing.assert_array_equal(a, np.ones((2, 3)))          # no grad: untouched
    assert list(opt.state) == [1]
    assert not np.array_equal(b, np.ones((4, 2)))
    with pytest.raises(ValueError, match="fc1.weight"):
        opt.step({"fc2.weight": np.eye(4, 2)})
    text = repr(opt)
    assert text.startswith("Muon (\nParameter Group 0\n    params: 2 arrays ('fc1.weight'")
    assert "    adjust_lr_fn: None" in text and "    ns_steps: 5" in text


def test_callable_lr_is_evaluated_per_step():
    seen = []

    def lr(t):
        seen.append(t)
        return 0.01 * (t + 1)
    opt = fastlr.Muon([np.ones((2, 2))], lr=lr)
    for _ in range(3):
        opt.step([np.eye(2)])
    assert seen == [0, 1, 2] and opt.steps == 3


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------
def _pair(rng, lr=0.02):
    params = [rng.standard_normal((6, 4)), rng.standard_normal((3, 5))]
    return params, fastlr.Muon([{"params": params[:1]},
                                {"params": params[1:], "adjust_lr_fn": "match_rms_adamw"}],
                               lr=schedules.cosine(lr, 20))


def test_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    grads = [[rng.standard_normal((6, 4)), rng.standard_normal((3, 5))] for _ in range(10)]
    pa, a = _pair(np.random.default_rng(0))
    for g in grads[:5]:
        a.step(g)
    sd = a.state_dict()
    a.save(tmp_path / "m.npz")
    pb, b = _pair(np.random.default_rng(0))
    pc, c = _pair(np.random.default_rng(0))
    for x, y, z in zip(pa, pb, pc):
        y[...] = x
        z[...] = x
    b.load_state_dict(sd)
    c.load(tmp_path / "m.npz")
    assert b.steps == c.steps == 5
    for g in grads[5:]:
        a.step(g)
        b.step(g)
        c.step(g)
    for x, y, z in zip(pa, pb, pc):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_checkpoint_hyperparameters_are_checked(tmp_path):
    _, a = _pair(np.random.default_rng(0))
    a.step([np.ones((6, 4)), np.ones((3, 5))])
    a.save(tmp_path / "m.npz")
    _, b = _pair(np.random.default_rng(0), lr=0.05)
    before = b.state_dict()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        b.load(tmp_path / "m.npz")
    assert b.steps == 0 and b.state == {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b.load(tmp_path / "m.npz", strict=False)
    assert caught and b.steps == 1
    assert b.param_groups[0]["lr"] == before["param_groups"][0]["lr"] or \
        repr(b.param_groups[0]["lr"]) == before["param_groups"][0]["lr"]["schedule"]
    with pytest.raises(ValueError, match="momentum_buffer"):
        b.load_state_dict({"format": "fastlr-muon-1", "steps": 1, "param_groups":
                           a.state_dict()["param_groups"],
                           "state": {0: {"momentum_buffer": np.ones((4, 6))}}})


def test_own_state_dict_is_a_rollback():
    opt = fastlr.Muon([np.ones((2, 2))], lr=0.1)
    sd = opt.state_dict()
    opt.param_groups[0]["lr"] = 0.5
    opt.step([np.eye(2)])
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.steps == 0 and opt.state == {}


# ---------------------------------------------------------------------------------------
# fastlr.compat.torch.Muon
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bridge_matches_torch(dtype):
    from fastlr.compat import torch as ct
    rng = np.random.default_rng(2)
    shapes = [(12, 20), (20, 12)]
    init = [torch.from_numpy(rng.standard_normal(s)).to(dtype) for s in shapes]
    a = [torch.nn.Parameter(x.clone()) for x in init]
    b = [torch.nn.Parameter(x.clone()) for x in init]
    oa = ct.Muon([{"params": a[:1]}, {"params": a[1:], "adjust_lr_fn": "match_rms_adamw"}],
                 lr=0.02)
    ob = torch.optim.Muon([{"params": b[:1]},
                           {"params": b[1:], "adjust_lr_fn": "match_rms_adamw"}], lr=0.02)
    assert isinstance(oa, torch.optim.Muon)
    for _ in range(30):
        for x, y in zip(a, b):
            g = torch.from_numpy(rng.standard_normal(tuple(x.shape))).to(dtype)
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(oa.state[x]["momentum_buffer"],
                                   ob.state[y]["momentum_buffer"], rtol=0, atol=0)
        adjust = "match_rms_adamw" if i else None
        assert (x - y).abs().max().item() <= _bound([0.02] * 30, tuple(x.shape), adjust)


def test_bridge_refuses_before_writing():
    from fastlr.compat import torch as ct
    a = torch.nn.Parameter(torch.ones(3, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.bfloat16))
    opt = ct.Muon([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(3, 4, dtype=torch.float64), torch.ones(4, 3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^fastlr\.compat\.torch\.Muon\.step: param_groups\[0\]"
                                        r"\['params'\]\[1\].*bfloat16"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3, 4, dtype=torch.float64))
    assert len(opt.state) == 0
    opt.param_groups[0]["lr"] = -1.0
    b.grad = None
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        opt.step()
