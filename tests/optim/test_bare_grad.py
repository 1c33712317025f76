"""One grad array (not a list) passed to ``step`` / ``step_reference``.

With a single param, an array of that param's shape is its grad, checked as the list
``[g]`` is (its dtype, shape and memory order: the same outcome, the same bits). Any other
array is a flat grad buffer (the params as views of one buffer, see
:func:`fastlr.flat_buffer`), which must be 1-D with the params' total size; an array of
another shape is refused with a ValueError that names ``grads``, its shape and what was
expected, before anything is written. Held for every optimizer of the table, their NumPy
twins (``step_reference``), and the 16-bit (masters, ``master_weights=False``, Adam's fused
step) and int8-state fronts. (Once, only the element count was compared: a (3, 2) grad
stepped a (2, 3) param, and a C-ordered grad was applied transposed to an F-ordered param.)
"""

import re

import numpy as np
import pytest

import fastlr
from fastlr import _specs

TABLE = [o.cls for o in _specs.OPTIMIZERS.values()]


def _kw(cls):
    return {"SGD": dict(lr=0.05, momentum=0.9), "Adadelta": dict(lr=0.5),
            "Rprop": dict(lr=0.01)}.get(cls, dict(lr=0.01))


# (id, class, param dtype, extra options, grad dtypes to try)
FRONTS = [(c, c, np.float64, {}, (np.float64,)) for c in TABLE] + [
    ("SGD-f16-masters", "SGD", np.float16, {}, (np.float16, np.float32)),
    ("RMSprop-f16-direct", "RMSprop", np.float16, dict(master_weights=False),
     (np.float16, np.float32)),
    ("Adam-f16-masters", "Adam", np.float16, {}, (np.float16, np.float32)),
    ("AdamW-f16-direct", "AdamW", np.float16, dict(master_weights=False),
     (np.float16, np.float32)),
    ("AdamW-int8", "AdamW", np.float32, dict(state_dtype="int8"), (np.float32,)),
    ("Adam-f16-int8", "Adam", np.float16, dict(state_dtype="int8", master_weights=False),
     (np.float16, np.float32)),
    ("Adam-bf16-state", "Adam", np.float32, dict(state_dtype="bfloat16"), (np.float32,)),
]
fronts = pytest.mark.parametrize("cls, dtype, kw, gdtypes", [f[1:] for f in FRONTS],
                                 ids=[f[0] for f in FRONTS])
STEPS = ["step", "step_reference"]

#: the mis-shaped cases: (param shape, grad shape)
WRONG = [((2, 3), (3, 2)), ((3,), (3, 1)), ((2, 3), (1, 6)), ((6,), (2, 3)), ((2, 3), (6, 1))]


def _opt(cls, dtype, kw, shapes, order="C", seed=0):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s), order=order).astype(dtype, order=order)
              for s in shapes]
    return getattr(fastlr, cls)(params, **_kw(cls), **kw), params


def _canon(obj):
    """A state dict's values, arrays by dtype, shape and bits (its snapshot id left out)."""
    if isinstance(obj, np.ndarray):
        return (obj.dtype.str, obj.shape, obj.tobytes(order="A"))
    if isinstance(obj, dict):
        return {k: _canon(v) for k, v in obj.items() if k != "snapshot_of"}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    return obj


def _snapshot(opt, params):
    return ([p.tobytes(order="A") for p in params], opt.steps, _canon(opt.state_dict()))


def _grad(shape, dtype, order="C", seed=1):
    g = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return np.asarray(g, order=order)


@fronts
@pytest.mark.parametrize("how", STEPS)
@pytest.mark.parametrize("pshape, gshape", WRONG, ids=[f"{p}-{g}" for p, g in WRONG])
def test_a_mis_shaped_grad_array_is_refused_before_anything_is_written(cls, dtype, kw,
                                                                       gdtypes, how, pshape,
                                                                       gshape):
    for gdtype in gdtypes:
        opt, params = _opt(cls, dtype, kw, [pshape])
        opt.step([_grad(pshape, gdtype, seed=3)])           # state to keep intact
        before = _snapshot(opt, params)
        total = int(np.prod(pshape))
        match = (rf"\.{how}: grads has shape {re.escape(str(gshape))} but params\[0\].* has "
                 rf"shape {re.escape(str(pshape))}; one grad array is the one param's grad "
                 rf"\(its shape\) or a 1-D flat grad buffer of {total} elements")
        with pytest.raises(ValueError, match=match):
            getattr(opt, how)(_grad(gshape, gdtype))
        assert _snapshot(opt, params) == before


@fronts
@pytest.mark.parametrize("how", STEPS)
def test_a_grad_array_of_the_single_params_shape_is_checked_as_the_list_form(cls, dtype, kw,
                                                                             gdtypes, how):
    """C- and F-ordered params with grads of their shape in either order: one array does
    what the list ``[g]`` does, the same error or the same bits (state included)."""
    for gdtype in gdtypes:
        for porder in ("C", "F"):
            for gorder in ("C", "F"):
                outcomes = []
                for form in ("bare", "list"):
                    opt, params = _opt(cls, dtype, kw, [(2, 3)], porder)
                    try:
                        for t in range(3):
                            g = _grad((2, 3), gdtype, gorder, seed=t)
                            getattr(opt, how)(g if form == "bare" else [g])
                    except (TypeError, ValueError) as e:
                        outcomes.append((type(e), str(e), _snapshot(opt, params)))
                    else:
                        outcomes.append(_snapshot(opt, params))
                assert outcomes[0] == outcomes[1], (gdtype, porder, gorder)


@pytest.mark.parametrize("cls", TABLE)
def test_the_reviewers_cases_through_the_engine(cls):
    """fastlr.SGD(w).step(g) and friends: the cases that once stepped silently."""
    w = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"grads has shape \(3, 2\) but params\[0\]"):
        getattr(fastlr, cls)(w, **_kw(cls)).step(np.ones((3, 2)))
    wf = np.asfortranarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"grads\[0\].* must be F-contiguous like params\[0\]"):
        getattr(fastlr, cls)(wf, **_kw(cls)).step(np.arange(6.0).reshape(2, 3))
    p = np.zeros(3)
    with pytest.raises(ValueError, match=r"grads has shape \(3, 1\) but params\[0\]"):
        getattr(fastlr, cls)(p, **_kw(cls)).step(np.ones((3, 1)))
    assert not w.any() and not wf.any() and not p.any()
    # the single param's own grad in its order works, as [g] does
    a, b = np.ones((2, 3)), np.ones((2, 3))
    oa, ob = getattr(fastlr, cls)(a, **_kw(cls)), getattr(fastlr, cls)(b, **_kw(cls))
    for t in range(3):
        g = _grad((2, 3), np.float64, seed=t)
        oa.step(g)
        ob.step([g])
    assert a.tobytes() == b.tobytes() and not np.array_equal(a, np.ones((2, 3)))


@fronts
@pytest.mark.parametrize("how", STEPS)
def test_a_1d_flat_buffer_over_several_params_and_only_1d(cls, dtype, kw, gdtypes, how):
    shapes = [(2, 3), (3,), (4, 1)]
    for gdtype in gdtypes:
        runs = []
        for form in ("flat", "views"):
            flat, params = fastlr.flat_buffer(shapes, dtype)
            flat[...] = np.random.default_rng(0).standard_normal(flat.size).astype(dtype)
            opt = getattr(fastlr, cls)(params, **_kw(cls), **kw)
            for t in range(3):
                gflat, gviews = fastlr.flat_buffer(shapes, gdtype)
                gflat[...] = _grad(13, gdtype, seed=t)
                getattr(opt, how)(gflat if form == "flat" else gviews)
            runs.append(_snapshot(opt, params))
        assert runs[0] == runs[1]
        before = runs[0]
        for bad in ((13, 1), (1, 13)):
            with pytest.raises(ValueError, match=(
                    rf"\.{how}: grads has shape {re.escape(str(bad))} but one grad array "
                    rf"for 3 params must be a 1-D flat grad buffer of 13 elements \(see "
                    rf"fastlr.flat_buffer\); otherwise pass a list with one grad per param")):
                getattr(opt, how)(np.ones(bad, gdtype))
            assert _snapshot(opt, params) == before


@pytest.mark.parametrize("cls", TABLE)
@pytest.mark.parametrize("how", STEPS)
def test_one_param_takes_a_1d_flat_buffer_of_its_size(cls, how):
    """A single 2-D param that is a view of a flat buffer takes that 1-D buffer's grad (the
    flat-buffer form), with the bits of its own-shaped grad."""
    runs = []
    for form in ("flat", "shaped"):
        flat, (w,) = fastlr.flat_buffer([(2, 3)], np.float64)
        flat[...] = 1.0
        opt = getattr(fastlr, cls)(w, **_kw(cls))
        for t in range(3):
            g = _grad(6, np.float64, seed=t)
            getattr(opt, how)(g if form == "flat" else g.reshape(2, 3))
        runs.append(_snapshot(opt, [w]))
    assert runs[0] == runs[1]


#: 16-bit params with float32 masters through each front (the step engine, Adam's fused
#: step, int8 state), and without masters (master_weights=False)
NON_NATIVE_FRONTS = [(c, c, {}) for c in TABLE] + [
    ("Adam-int8", "Adam", dict(state_dtype="int8")),
    ("AdamW-bf16-state", "AdamW", dict(state_dtype="bfloat16")),
    ("RMSprop-direct", "RMSprop", dict(master_weights=False)),
    ("AdamW-direct", "AdamW", dict(master_weights=False)),
    ("Adam-int8-direct", "Adam", dict(state_dtype="int8", master_weights=False)),
]


@pytest.mark.parametrize("how", STEPS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cls, kw", [f[1:] for f in NON_NATIVE_FRONTS],
                         ids=[f[0] for f in NON_NATIVE_FRONTS])
def test_a_byte_swapped_grad_array_of_a_16bit_param_is_checked_as_the_list_form(cls, kw,
                                                                                dtype, how):
    """A grad of the single 16-bit param's shape in the other byte order (16-bit or
    float32), passed bare: the list form's outcome, and nothing written when it raises.
    (With masters, a byte-swapped 16-bit one once escaped as the engine's internal
    WidenFirst: it was not taken for a 16-bit grad, so only the list form was widened.)"""
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    dtype = np.dtype(dtype)
    for gdtype in (dtype.newbyteorder(), np.dtype(np.float32).newbyteorder()):
        for shape in ((7,), (2, 3)):
            for order in ("C", "F"):
                outcomes = []
                for form in ("bare", "list"):
                    opt, params = _opt(cls, dtype, kw, [shape], order)
                    opt.step([_grad(shape, dtype, order, seed=3)])   # state to keep intact
                    before = _snapshot(opt, params)
                    g = _grad(shape, gdtype, order)
                    try:
                        getattr(opt, how)(g if form == "bare" else [g])
                    except (TypeError, ValueError) as e:
                        assert _snapshot(opt, params) == before, (form, gdtype, shape, order)
                        outcomes.append((type(e), str(e)))
                    else:
                        outcomes.append(_snapshot(opt, params))
                assert outcomes[0] == outcomes[1], (gdtype, shape, order)
