"""16-bit params (float16, ml_dtypes.bfloat16) in the optimizers of the table: float32
master weights (fastlr/optim/master.py).

The masters must hold exactly the bits a float32 optimizer over float32 copies holds (grads
cast exactly), the caller's arrays those masters rounded to nearest even, on every
optimizer; checkpoints carry the masters; misuse raises before anything is written.
"""

import os

import numpy as np
import pytest

import fastlr
from fastlr import _specs

CLASSES = [o.cls for o in _specs.OPTIMIZERS.values()]
SHAPES = [(5, 3), (7,)]


def _dtypes():
    out = [pytest.param(np.float16, id="float16")]
    try:
        import ml_dtypes
    except ImportError:
        out.append(pytest.param(None, id="bfloat16",
                                marks=pytest.mark.skip(reason="ml_dtypes is not installed")))
    else:
        out.append(pytest.param(np.dtype(ml_dtypes.bfloat16), id="bfloat16"))
    return out


DTYPES = _dtypes()


def _kw(cls):
    return {"SGD": dict(lr=0.02, momentum=0.9, nesterov=True), "Rprop": dict(lr=0.01),
            "Adadelta": dict(lr=0.5), "ASGD": dict(lr=0.02)}.get(cls, dict(lr=0.01))


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _grads(t, dtype):
    rng = np.random.default_rng([t, 7])
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


@pytest.mark.parametrize("grad_dtype", ["param", "float32"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", CLASSES)
def test_masters_are_the_float32_optimizer_and_params_their_rounding(cls, dtype, grad_dtype):
    params = _params(dtype)
    copies = [p.astype(np.float32) for p in params]
    opt = getattr(fastlr, cls)(params, **_kw(cls))
    ref = getattr(fastlr, cls)(copies, **_kw(cls))
    for t in range(25):
        gs = _grads(t, dtype)
        opt.step(gs if grad_dtype == "param" else [g.astype(np.float32) for g in gs])
        ref.step([g.astype(np.float32) for g in gs])
    masters = opt.param_groups[0]["params"]
    for p, m, c in zip(params, masters, copies):
        assert m.dtype == np.float32 and np.array_equal(m, c)
        assert p.dtype == dtype and np.array_equal(p, c.astype(dtype))
    assert all(a is b for a, b in zip(opt.params, params))
    assert not all(np.array_equal(p, _params(dtype)[k]) for k, p in enumerate(params))


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_reference_matches_step_to_rounding(dtype):
    a, b = _params(dtype), _params(dtype)
    fast = fastlr.Adam(a, lr=0.01, weight_decay=0.1)
    slow = fastlr.Adam(b, lr=0.01, weight_decay=0.1)
    for t in range(10):
        fast.step(_grads(t, dtype))
        slow.step_reference(_grads(t, dtype))
    # (the NumPy twin rounds as NumPy's float32 operations do: to float32 rounding)
    for x, y in zip(fast.param_groups[0]["params"], slow.param_groups[0]["params"]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y, m in zip(a, b, slow.param_groups[0]["params"]):
        assert np.array_equal(y, m.astype(dtype))          # the twin's params: its masters
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_params_beside_16bit_ones_are_used_in_place(dtype):
    w16 = _params(dtype)[0]
    w32 = np.ones(4, dtype=np.float32)
    opt = fastlr.AdamW([{"params": [w16]}, {"params": [w32], "lr": 0.1}], lr=0.01)
    assert opt.param_groups[1]["params"][0] is w32
    assert opt.param_groups[0]["params"][0] is not w16
    opt.step([_grads(0, dtype)[0], np.ones(4, dtype=np.float32)])
    assert np.all(w32 < 1)
    assert sorted(opt.state_dict()["master"]) == [0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoints_carry_the_masters_and_resume_exactly(dtype, tmp_path):
    whole = _params(dtype)
    uninterrupted = fastlr.NAdam(whole, lr=0.01)
    first = _params(dtype)
    opt = fastlr.NAdam(first, lr=0.01)
    for t in range(8):
        uninterrupted.step(_grads(t, dtype))
        opt.step(_grads(t, dtype))
    sd = opt.state_dict()
    assert set(sd["master"]) == {0, 1}
    path = os.path.join(tmp_path, "ckpt.npz")
    opt.save(path)
    for how in ("dict", "file"):
        params = [np.zeros(s, dtype=dtype) for s in SHAPES]
        resumed = fastlr.NAdam(params, lr=0.01)
        if how == "dict":
            resumed.load_state_dict(sd)
        else:
            resumed.load(path)
        for p, q in zip(params, first):
            assert np.array_equal(p, q)         # the params are the masters' rounding
        run = [p.copy() for p in whole]
        cont = fastlr.NAdam(run, lr=0.01)
        cont.load_state_dict(uninterrupted.state_dict())
        for t in range(8, 16):
            resumed.step(_grads(t, dtype))
            cont.step(_grads(t, dtype))
        for x, y in zip(resumed.param_groups[0]["params"], cont.param_groups[0]["params"]):
            assert np.array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_checkpoint_without_masters_starts_them_at_the_params(dtype):
    plain = fastlr.Adam([np.zeros(s, dtype=np.float32) for s in SHAPES], lr=0.01)
    plain.step([g.astype(np.float32) for g in _grads(0, dtype)])
    sd = plain.state_dict()
    assert "master" not in sd
    params = _params(dtype, seed=3)
    opt = fastlr.Adam(params, lr=0.01)
    opt.param_groups[0]["params"][0][...] = 7.0     # a master out of step with its param
    opt.load_state_dict(sd)
    for p, m in zip(params, opt.param_groups[0]["params"]):
        assert np.array_equal(m, p.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_param_group_and_named_params(dtype):
    a, b = _params(dtype)
    opt = fastlr.Adam({"a": a}, lr=0.01)
    opt.add_param_group({"params": {"b": b}, "lr": 0.02})
    ref = fastlr.Adam({"a": a.astype(np.float32)}, lr=0.01)
    ref.add_param_group({"params": {"b": b.astype(np.float32)}, "lr": 0.02})
    for t in range(5):
        ga, gb = _grads(t, dtype)
        opt.step({"b": gb, "a": ga})
        ref.step({"a": ga.astype(np.float32), "b": gb.astype(np.float32)})
    for p, m in zip((a, b), ref.params):
        assert np.array_equal(p, m.astype(dtype))


def test_misuse_raises_before_anything_is_written():
    w = np.ones(3, dtype=np.float16)
    # (master_weights=False: tests/optim/test_fused16.py and test_direct16.py)
    with pytest.raises(TypeError, match="master_weights must be a bool"):
        fastlr.Adam([w], lr=0.1, master_weights="yes")
    with pytest.raises(ValueError, match="overlaps another param"):
        fastlr.Adam([w, w], lr=0.1)
    ro = np.ones(3, dtype=np.float16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastlr.Adam([ro], lr=0.1)
    with pytest.raises(ValueError, match="contiguous"):
        fastlr.Adam([np.ones(6, dtype=np.float16)[::2]], lr=0.1)
    opt = fastlr.Adam([w], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.ones(3, dtype=np.float64)])
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        opt.step([np.ones(4, dtype=np.float16)])
    assert np.array_equal(w, np.ones(3, dtype=np.float16)) and opt.steps == 0
    bad = opt.state_dict()
    bad["master"] = {0: np.ones(4, dtype=np.float32)}
    with pytest.raises(ValueError, match=r"master\[0\]"):
        opt.load_state_dict(bad)
    assert np.array_equal(w, np.ones(3, dtype=np.float16))
    # float32 / float64 params ignore the option
    assert fastlr.Adam([np.ones(2)], lr=0.1, master_weights=False).steps == 0


@pytest.mark.parametrize("grad_order", ["F", "C"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fortran_ordered_params(dtype, grad_order):
    rng = np.random.default_rng(4)
    w = np.asfortranarray(rng.standard_normal((6, 4)).astype(dtype))
    w32 = np.asfortranarray(w.astype(np.float32))
    opt = fastlr.Adam([w], lr=0.01)
    ref = fastlr.Adam([w32], lr=0.01)
    for t in range(5):
        g = rng.standard_normal((6, 4)).astype(dtype)
        g = np.asfortranarray(g) if grad_order == "F" else np.ascontiguousarray(g)
        opt.step([g])               # (a C-ordered 16-bit grad is cast into an F buffer)
        ref.step([np.asfortranarray(g.astype(np.float32))])
    assert np.array_equal(opt.param_groups[0]["params"][0], w32)
    assert w.flags.f_contiguous and np.array_equal(w, w32.astype(dtype))


def test_the_compiled_float16_conversions_give_numpys_bits():
    from fastlr._core import dispatch
    mixed = dispatch.module("mixed")
    bits = np.arange(65536, dtype=np.uint16)
    out = np.empty(bits.size, dtype=np.float32)
    mixed.f16_unpack(bits, out)
    ref = bits.view(np.float16).astype(np.float32)
    assert np.array_equal(out, ref, equal_nan=True)
    x = np.random.default_rng(0).integers(0, 2**32, 500_000, dtype=np.uint64)
    x = x.astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    got = np.empty(x.size, dtype=np.uint16)
    mixed.f16_pack(x, got)
    with np.errstate(over="ignore"):
        assert np.array_equal(got, x.astype(np.float16).view(np.uint16))
    with pytest.raises(ValueError, match="sizes differ"):
        mixed.f16_pack(x[:3], got[:2])


def test_a_refused_group_does_not_block_the_retry():
    w = np.ones(3, dtype=np.float16)
    opt = fastlr.SGD([np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [w], "lr": -1.0})
    opt.add_param_group({"params": [w], "lr": 0.5})
    opt.step([np.zeros(2), np.ones(3, dtype=np.float16)])
    assert np.array_equal(w, np.full(3, 0.5, dtype=np.float16))


def test_16bit_params_overlapping_other_params_are_refused():
    buf = np.ones(8, dtype=np.float32)
    with pytest.raises(ValueError, match="overlaps another param"):
        fastlr.SGD([buf, buf.view(np.float16)[:4]], lr=0.5)
    opt = fastlr.SGD([buf.view(np.float16)[:4]], lr=0.5)
    with pytest.raises(ValueError, match="overlaps another param"):
        opt.add_param_group({"params": [buf[1:]]})      # shares the 16-bit param's bytes
    opt.add_param_group({"params": [buf[2:]]})          # the next bytes: fine
    assert np.array_equal(buf[2:], np.ones(6, dtype=np.float32))


def test_masters_in_a_checkpoint_are_checked_and_never_dropped_silently():
    w = np.ones(3, dtype=np.float16)
    opt = fastlr.Adam([w], lr=0.1)
    opt.step([np.ones(3, dtype=np.float16)])
    sd = opt.state_dict()
    low = dict(sd, master={0: sd["master"][0].astype(np.float16)})
    with pytest.raises(ValueError, match=r"master\[0\] must be a float32 or float64"):
        fastlr.Adam([np.ones(3, dtype=np.float16)], lr=0.1).load_state_dict(low)
    plain = fastlr.Adam([np.ones(3, dtype=np.float32)], lr=0.1)
    with pytest.warns(UserWarning, match=r"master weights for params \[0\]"):
        plain.load_state_dict(sd)
    assert plain.steps == 1


# ---- found by a review: the fused Adam/AdamW step with masters, flat 16-bit buffers ----
def _bits(a):
    return a.view(np.uint16) if a.itemsize == 2 else a.view(np.uint32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_row_sparse_grads_reach_the_16bit_params_of_adams_fused_step(cls, dtype):
    """The lazy update steps the masters; every master is then rounded into its param (the
    fused front once left the caller's array stale until a later dense step)."""
    w, w_twin = np.ones((4, 3), dtype), np.ones((4, 3), dtype)
    opt = getattr(fastlr, cls)([w], lr=0.1, weight_decay=0.0)
    twin = getattr(fastlr, cls)([w_twin], lr=0.1, weight_decay=0.0)
    for t in range(3):
        g = fastlr.RowSparseGrad(np.array([1, 3 - t]), np.full((2, 3), 0.5 + t, np.float32))
        opt.step([g])
        twin.step_reference([g])
        assert np.array_equal(_bits(w), _bits(w_twin)), t
        master = opt.param_groups[0]["params"][0]
        assert np.array_equal(_bits(w), _bits(master.astype(dtype)))
    assert w[1, 0] != 1 and w[0, 0] == 1


def _misaligned(values):
    raw = np.zeros(values.size * 2 + 2, np.uint8)
    x = raw[1:1 + values.size * 2].view(values.dtype).reshape(values.shape)
    x[...] = values
    assert not x.flags.aligned
    return x


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_a_misaligned_16bit_param_in_adams_fused_step(cls, dtype, state_dtype):
    """adam_mixed refuses a misaligned array: its master is stepped and rounded into it
    in passes, with the bits of an aligned copy (the step once updated the params before
    it and then raised)."""
    rng = np.random.default_rng(4)
    values = [rng.standard_normal(s).astype(dtype) for s in ((40,), (300,), (9, 7))]
    params = [values[0].copy(), _misaligned(values[1]), _misaligned(values[2])]
    copies = [v.copy() for v in values]
    kw = dict(lr=0.05, weight_decay=0.1, state_dtype=state_dtype)
    opt, ref = getattr(fastlr, cls)(params, **kw), getattr(fastlr, cls)(copies, **kw)
    for t in range(4):
        gs = [rng.standard_normal(v.shape).astype(dtype if t % 2 else np.float32)
              for v in values]
        opt.step(gs)
        ref.step(gs)
        for p, c in zip(params, copies):
            assert np.array_equal(_bits(p), _bits(c)), t
    assert opt.steps == 4


FLAT_CASES = [("SGD", dict(lr=0.01, momentum=0.9)), ("RMSprop", dict(lr=0.01)),
              ("Adam", dict(lr=0.01, amsgrad=True)), ("AdamW", dict(lr=0.01, state_dtype="int8")),
              ("AdamW", dict(lr=0.01))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls, kw", FLAT_CASES)
def test_a_flat_16bit_grad_buffer_with_masters(cls, kw, dtype):
    """One 16-bit grad buffer over 16-bit params (views of one buffer, as the docs show)
    steps as the list of its views does, in every front (the engine's once refused it,
    naming the masters' float32 dtype); misuse names the buffer, nothing written."""
    shapes, sizes = [(100,), (20, 10), (300,)], [100, 200, 300]
    rng = np.random.default_rng(2)

    def views(buf):
        starts = np.cumsum([0] + sizes)
        return [buf[a:b].reshape(s) for a, b, s in zip(starts, starts[1:], shapes)]

    made = [fastlr.flat_buffer(shapes, dtype) for _ in range(3)]     # 16-bit buffers too
    bufs = [b for b, _ in made]
    bufs[0][...] = rng.standard_normal(600).astype(dtype)
    bufs[1][...] = bufs[2][...] = bufs[0]
    assert all(b.dtype == dtype and np.shares_memory(b, v[-1]) for b, v in made)
    flat, listed, twin = (getattr(fastlr, cls)(v, **kw) for _, v in made)
    for t in range(3):
        g = rng.standard_normal(600).astype(dtype)
        flat.step(g)
        listed.step(views(g))
        twin.step_reference(g)
        assert np.array_equal(_bits(bufs[0]), _bits(bufs[1])), t
        if cls not in ("Adam", "AdamW") or "state_dtype" in kw:    # the twins' bits
            assert np.array_equal(_bits(bufs[0]), _bits(bufs[2])), t
        else:       # (float32 Adam's twin: to rounding, by design)
            np.testing.assert_allclose(bufs[2].astype(np.float32),
                                       bufs[0].astype(np.float32), rtol=0.02, atol=1e-3)
    other = np.float16 if np.dtype(dtype) != np.float16 else DTYPES[1].values[0]
    bad = [(np.ones(599, dtype), ValueError, "the flat grad buffer has 599 elements but "
                                             "the params have 600 in all"),
           (np.ones(1200, dtype)[::2], ValueError, "must be C-contiguous"),
           (np.ones(600, other) if other is not None else None, TypeError,
            f"the flat grad buffer has dtype {np.dtype(other)} but params.0. .*has dtype"),
           # byte-swapped: refused by step and its twin alike (once, the engine named the
           # masters' float32 dtype, and the twin refused its first view as grads[0])
           (np.ones(600, np.dtype(dtype).newbyteorder()), TypeError,
            f"the flat grad buffer has dtype {np.dtype(dtype).newbyteorder()} but "
            f"params.0. .*has dtype {np.dtype(dtype)}")]
    before = bufs[0].copy()
    for g, exc, match in bad:
        if g is None:
            continue
        for step in (flat.step, flat.step_reference):
            with pytest.raises(exc, match=match):
                step(g)
    assert np.array_equal(_bits(before), _bits(bufs[0])) and flat.steps == 3
    with pytest.raises(TypeError, match=r"dtype must be float32, float64, float16 or "
                                        r"ml_dtypes.bfloat16 \(native byte order\), got >f2"):
        fastlr.flat_buffer(shapes, ">f2")
