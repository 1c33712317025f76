"""One grad array (not a list) passed to the step of LAMB, LARS, Muon and Adafactor, the
optimizers outside the table (tests/optim/test_bare_grad.py holds the table's to the same
rule, fastlr/optim/front.py: bare_grad).

With a single param, an array of that param's shape is its grad, checked as the list
``[g]`` is (the same error or the same bits, state included); any other array is a flat grad
buffer over the params (:func:`fastlr.flat_buffer`), 1-D, of their dtype and total size,
which gives the bits of its per-param views; anything else is refused with an error naming
the grads and what was expected, before anything is written. ``step`` and
``step_reference`` (LAMB, LARS, Muon; Adafactor has no twin path: its NumPy twin is not
bit-exact with its kernel) raise the same error type and wording, and LAMB's and LARS's
``step_reference`` checks a list of grads as their compiled step does. (Once, LAMB's and
LARS's ``step_reference`` took a bare array for a list of its rows: a ``(1,)`` param
stepped with a 0-d grad, a ``(2, 3)`` grad was "2 grads for 1 params"; their ``step``,
Muon's and Adafactor's refused every bare array; a list with a wrong dtype or layout passed
``step_reference`` unchecked, and a mis-shaped second grad raised after the first param had
been updated.)
"""

import re

import numpy as np
import pytest

import fastlr

from test_bare_grad import _grad, _snapshot  # noqa: E402 (the table's bits and state)

CLASSES = ["LAMB", "LARS", "Muon", "Adafactor"]
STEPS = ["step", "step_reference"]
#: the paths each class has
PATHS = [(c, how) for c in CLASSES for how in STEPS if hasattr(getattr(fastlr, c), how)]
paths = pytest.mark.parametrize("cls, how", PATHS, ids=[f"{c}-{h}" for c, h in PATHS])
both = pytest.mark.parametrize("cls", [c for c in CLASSES
                                       if hasattr(getattr(fastlr, c), "step_reference")])
F64 = np.float64
#: several params (2-D: Muon takes no others)
SHAPES = [(2, 3), (4, 2), (1, 5)]


def _kw(cls):
    return {"LARS": dict(lr=0.1, trust_coefficient=0.5), "Muon": dict(lr=0.02),
            "Adafactor": dict(lr=0.05)}.get(cls, dict(lr=0.01))


def _opt(cls, shapes, dtype=np.float64, order="C", seed=0):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s).astype(dtype), order=order) for s in shapes]
    return getattr(fastlr, cls)(params, **_kw(cls)), params


def _outcome(opt, params, how, grads):
    """What ``opt.<how>(grads)`` did: the snapshot after it, or (when it raised) the error's
    type and message, its method's name made ``step``, with the snapshot unchanged."""
    before = _snapshot(opt, params)
    try:
        getattr(opt, how)(grads)
    except (TypeError, ValueError) as e:
        assert _snapshot(opt, params) == before, (how, e)
        text = str(e)
        assert text.startswith(f"fastlr.{type(opt).__name__}.{how}: "), text
        return type(e), text.replace(f".{how}: ", ".step: ", 1)
    return _snapshot(opt, params)


# ---------------------------------------------------------------------------------------
# accepted: the list form's bits
# ---------------------------------------------------------------------------------------
@paths
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_the_one_params_grad_array_gives_the_list_forms_bits(cls, how, dtype, order):
    runs = []
    for form in ("bare", "list"):
        opt, params = _opt(cls, [(3, 4)], dtype, order)
        for t in range(3):
            g = _grad((3, 4), dtype, order, seed=t)
            getattr(opt, how)(g if form == "bare" else [g])
        runs.append(_snapshot(opt, params))
    assert runs[0] == runs[1]
    assert runs[0][1] == 3 and runs[0][0] != _snapshot(*_opt(cls, [(3, 4)], dtype, order))[0]


@paths
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_flat_grad_buffer_gives_the_bits_of_its_views(cls, how, order):
    """Several params (and one param of another shape than the buffer's); the 1-D flat grad
    buffer against the list of its per-param parts, each in its param's memory order."""
    for shapes in (SHAPES, [(2, 3)]):
        ends = np.cumsum([np.prod(s) for s in shapes])
        runs = []
        for form in ("flat", "views"):
            opt, params = _opt(cls, shapes, order=order)
            for t in range(3):
                gflat = _grad(int(ends[-1]), F64, seed=t)
                views = [part.reshape(s, order=order)
                         for part, s in zip(np.split(gflat, ends[:-1]), shapes)]
                getattr(opt, how)(gflat if form == "flat" else views)
            runs.append(_snapshot(opt, params))
        assert runs[0] == runs[1], shapes


# ---------------------------------------------------------------------------------------
# refused: the same error on both paths, nothing written
# ---------------------------------------------------------------------------------------
def _bad_single(params):
    """(label, grad array) refused for the one float64 param of shape (2, 3) (C-ordered)."""
    return [
        ("transposed shape", np.ones((3, 2))),
        ("a row", np.ones((1, 6))),
        ("a column", np.ones((6, 1))),
        ("1-D of another size", np.ones(5)),
        ("float32", np.ones((2, 3), np.float32)),
        ("float32 flat", np.ones(6, np.float32)),
        ("F-ordered", np.asfortranarray(np.ones((2, 3)))),
        ("byte-swapped", np.ones((2, 3), np.dtype(np.float64).newbyteorder())),
        ("strided flat", np.ones(12)[::2]),
        ("int", np.ones((2, 3), np.int64)),
        ("the param itself", params[0]),
    ]


def _bad_several(params):
    """(label, grad array) refused for the float64 params of SHAPES."""
    return [
        ("2-D", np.ones((1, 19))),
        ("the first param's shape", np.ones((2, 3))),
        ("1-D of another size", np.ones(16)),
        ("float32 flat", np.ones(19, np.float32)),
        ("0-d", np.array(1.0)),
    ]


def _refusals(cls, how, shapes, bad):
    """Each case of ``bad`` on a fresh optimizer that has taken a step: its error (type,
    message), nothing written."""
    out = {}
    for i in range(len(bad(_opt(cls, shapes)[1]))):
        opt, params = _opt(cls, shapes)
        opt.step([_grad(s, F64, seed=9) for s in shapes])      # state to keep intact
        label, grads = bad(params)[i]
        out[label] = _outcome(opt, params, how, grads)
        assert isinstance(out[label], tuple), (label, out[label])
    return out


@paths
def test_a_refused_grad_array_names_the_grads_and_writes_nothing(cls, how):
    got = _refusals(cls, how, [(2, 3)], _bad_single)
    shape = (rf"\.step: grads has shape {{}} but params\[0\].* has shape \(2, 3\); one grad "
             rf"array is the one param's grad \(its shape\) or a 1-D flat grad buffer of 6 "
             rf"elements")
    for label, gshape in (("transposed shape", (3, 2)), ("a row", (1, 6)),
                          ("a column", (6, 1))):
        assert got[label][0] is ValueError
        assert re.search(shape.format(re.escape(str(gshape))), got[label][1]), got[label]
    assert got["1-D of another size"][0] is ValueError
    assert "the flat grad buffer has 5 elements but the params have 6" in \
        got["1-D of another size"][1]
    assert got["float32"][0] is TypeError
    assert re.search(r"grads\[0\].* has dtype float32 but params\[0\].* has dtype float64",
                     got["float32"][1]), got["float32"]
    assert got["float32 flat"][0] is TypeError
    assert re.search(r"the flat grad buffer has dtype float32 but params\[0\].* has dtype "
                     r"float64", got["float32 flat"][1]), got["float32 flat"]
    for label in ("F-ordered", "the param itself"):
        assert got[label][0] is ValueError and "grads[0]" in got[label][1], got[label]
    for label in ("byte-swapped", "int"):
        assert got[label][0] is TypeError and "grads[0]" in got[label][1], got[label]
    assert got["strided flat"][0] is ValueError
    assert "the flat grad buffer must be C-contiguous" in got["strided flat"][1]

    got = _refusals(cls, how, SHAPES, _bad_several)
    several = (r"\.step: grads has shape {} but one grad array for 3 params must be a 1-D "
               r"flat grad buffer of 19 elements \(see fastlr.flat_buffer\); otherwise pass "
               r"a list with one grad per param")
    for label, gshape in (("2-D", (1, 19)), ("the first param's shape", (2, 3)),
                          ("0-d", ())):
        assert got[label][0] is ValueError
        assert re.search(several.format(re.escape(str(gshape))), got[label][1]), got[label]
    assert got["1-D of another size"][0] is ValueError
    assert got["float32 flat"][0] is TypeError


@both
@pytest.mark.parametrize("shapes, bad", [([(2, 3)], _bad_single), (SHAPES, _bad_several)],
                         ids=["one-param", "several"])
def test_step_and_step_reference_refuse_a_grad_array_alike(cls, shapes, bad):
    assert _refusals(cls, "step", shapes, bad) == _refusals(cls, "step_reference", shapes, bad)


@both
def test_a_params_own_flat_buffer_is_refused_alike(cls):
    """The params' own flat buffer passed as their grad: it overlaps what the step writes."""
    got = []
    for how in STEPS:
        flat, params = fastlr.flat_buffer(SHAPES, np.float64)
        flat[...] = _grad(flat.size, F64)
        opt = getattr(fastlr, cls)(params, **_kw(cls))
        got.append(_outcome(opt, params, how, flat))
    assert got[0] == got[1]
    assert got[0][0] is ValueError and "grads[0]" in got[0][1] and "overlaps" in got[0][1]


# ---------------------------------------------------------------------------------------
# LAMB's and LARS's step_reference checks a list of grads as their step does
# ---------------------------------------------------------------------------------------
def _bad_lists(opt, params):
    """(label, grads) refused for the params of SHAPES (float64, C-ordered)."""
    good = [_grad(s, F64, seed=5) for s in SHAPES]
    buf = [v for v in opt.state[1].values() if isinstance(v, np.ndarray)][0]

    def second(g):
        return [good[0], g, good[2]]

    return [
        ("too few", good[:2]),
        ("too many", good + [good[0]]),
        ("not an array", second([[1.0, 2.0]] * 4)),
        ("float32", second(good[1].astype(np.float32))),
        ("int", second(good[1].astype(np.int64))),
        ("byte-swapped", second(good[1].astype(good[1].dtype.newbyteorder()))),
        ("mis-shaped", second(good[1].T.copy())),
        ("flattened", second(good[1].ravel())),
        ("F-ordered", second(np.asfortranarray(good[1]))),
        ("strided", second(np.ones((4, 4))[:, ::2])),
        ("a param", second(params[1])),
        ("a view of a param", [good[0], good[1], params[2][...]]),
        ("a state buffer", second(buf)),
        ("the grads' tuple", tuple(second(params[1]))),
        ("two bad", [good[0].astype(np.float32), good[1].T.copy(), good[2]]),
    ]


@pytest.mark.parametrize("cls", ["LAMB", "LARS"])
def test_step_reference_checks_a_list_of_grads_as_the_step_does(cls):
    outcomes = {}
    for how in STEPS:
        opt, params = _opt(cls, SHAPES)
        opt.step([_grad(s, F64, seed=9) for s in SHAPES])
        for label, grads in _bad_lists(opt, params):
            outcomes.setdefault(label, []).append(_outcome(opt, params, how, grads))
    for label, (step, twin) in outcomes.items():
        assert isinstance(step, tuple) and step == twin, (label, step, twin)
    assert "overlaps params[1]" in outcomes["a param"][0][1]
    assert "overlaps params[2]" in outcomes["a view of a param"][0][1]
    assert "overlaps state[1]" in outcomes["a state buffer"][0][1]
    assert outcomes["two bad"][0][0] is TypeError


@pytest.mark.parametrize("cls", ["LAMB", "LARS"])
def test_named_grads_and_a_fortran_param_through_step_reference(cls):
    """A dict of named grads, F-ordered params: the twin path takes what the step takes and
    refuses what it refuses (a C-ordered grad for an F-ordered param)."""
    runs = []
    for how in STEPS:
        rng = np.random.default_rng(0)
        named = {"a": np.asfortranarray(rng.standard_normal((3, 4))),
                 "b": rng.standard_normal(5)}
        opt = getattr(fastlr, cls)(named, **_kw(cls))
        grads = {"b": _grad(5, F64), "a": _grad((3, 4), F64, "F")}
        getattr(opt, how)(grads)
        bad = _outcome(opt, list(named.values()), how,
                       {"a": _grad((3, 4), F64), "b": _grad(5, F64)})
        runs.append((bad, opt.steps))
    assert runs[0] == runs[1]
    assert runs[0][0][0] is ValueError and "grads['a']" in runs[0][0][1]
