"""Writes to ``param_groups``: ``update`` and ``|=`` are all or nothing.

A bad ``update`` (a bad value after good ones, an unknown or fixed key, a combination the
optimizer's group checks refuse) raises the error ``group[key] = value`` raises for the
offending entry and leaves the group exactly as it was: the next steps give the bits of an
optimizer that never saw it. A good ``update`` is the same keys written one by one (the
group, its ReduceLROnPlateau factor, a buffer filled from the lr, the next steps).
"""

import numpy as np
import pytest

import fastlr

SHAPES = [(3, 4), (4, 3)]


def _build(kind):
    """An optimizer of ``kind`` over two groups of 2-D float32 params (every kind takes
    them, Muon only those), a step or two in."""
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    groups = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.02}]
    options = {"SGD": dict(momentum=0.9), "RMSprop": dict(momentum=0.5),
               "Adam-int8": dict(state_dtype="int8")}.get(kind, {})
    cls = getattr(fastlr, kind.partition("-")[0])
    return cls(groups, lr=0.01, **options)


def _grads(t):
    rng = np.random.default_rng(100 + t)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _steps(opt, first, n):
    for t in range(first, first + n):
        opt.step(_grads(t))


def _bits(opt):
    """The params and every state entry, as NumPy arrays (float32 bits compared exactly)."""
    out = [np.array(p) for g in opt.param_groups for p in g["params"]]
    for i, st in sorted(opt.state.items()):
        for key, v in sorted(st.items()):
            out.append((i, key, np.array(v)))
    return out


def assert_same_bits(a, b, what):
    mine, theirs = _bits(a), _bits(b)
    assert len(mine) == len(theirs), what
    for x, y in zip(mine, theirs):
        if isinstance(x, tuple):
            assert x[:2] == y[:2], what
            x, y = x[2], y[2]
        assert x.dtype == y.dtype and x.shape == y.shape, what
        np.testing.assert_array_equal(x, y, err_msg=what)


def _hypers(group):
    """A group's entries but its arrays, in order."""
    return [(key, value) for key, value in group.items() if key != "params"]


def _one_by_one(group, entries):
    """The error the entries written one by one raise (the first), or None."""
    try:
        for key, value in entries.items():
            group[key] = value
    except (TypeError, ValueError) as error:
        return error
    return None


# (kind, entries): each bad after a good entry (or refused as a combination only)
BAD = [
    ("Adam", {"lr": 0.5, "betas": "bad"}),                     # TypeError, a pair
    ("Adam", {"lr": 0.5, "weight_decay": 0.1, "eps": -1.0}),   # ValueError, range
    ("Adam", {"lr": 0.5, "nonsense": 1.0}),                    # unknown key
    ("Adam", {"weight_decay": 0.1, "params": [np.zeros(2)]}),  # a fixed key
    ("Adam-int8", {"lr": 0.5, "amsgrad": True}),               # the group check (int8)
    ("SGD", {"lr": 0.5, "momentum": -1.0}),
    ("SGD", {"lr": 0.5, "dampening": 0.5, "nesterov": True}),  # nesterov: dampening 0
    ("RMSprop", {"lr": 0.5, "alpha": "x"}),
    ("RMSprop", {"momentum": 0.0, "centered": "yes"}),
    ("Lion", {"lr": 0.5, "betas": (0.9, 2.0)}),
    ("LAMB", {"lr": 0.5, "betas": "bad"}),
    ("Muon", {"lr": 0.5, "ns_steps": 100}),
    ("Adafactor", {"lr": 0.5, "beta2_decay": "x"}),
]

FORMS = {
    "update": lambda group, entries: group.update(entries),
    "update(**kwargs)": lambda group, entries: group.update(**entries),
    "update(pairs)": lambda group, entries: group.update(list(entries.items())),
    "|=": lambda group, entries: group.__ior__(entries),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind, entries", BAD, ids=lambda v: v if isinstance(v, str) else
                         "-".join(v))
def test_a_bad_update_changes_nothing(kind, entries, form):
    """The error of ``group[key] = value`` for the offending entry (type and message), the
    group exactly as it was, and the next steps bit for bit those of an optimizer that
    never saw the update."""
    opt, untouched, written = _build(kind), _build(kind), _build(kind)
    for o in (opt, untouched, written):
        _steps(o, 0, 2)
    expected = _one_by_one(written.param_groups[1], entries)
    assert expected is not None, "the entries must be refused"
    group = opt.param_groups[1]
    before = list(group.items())
    scales = np.array(getattr(opt, "_lr_scale", ()))
    with pytest.raises(type(expected)) as raised:
        FORMS[form](group, entries)
    assert str(raised.value) == str(expected)
    assert list(group.items()) == before
    for mine, theirs in zip(opt.param_groups, untouched.param_groups):
        assert _hypers(mine) == _hypers(theirs)
    np.testing.assert_array_equal(getattr(opt, "_lr_scale", ()), scales)
    _steps(opt, 2, 3)
    _steps(untouched, 2, 3)
    assert_same_bits(opt, untouched, f"{kind} {form} {entries}")


GOOD = [
    ("Adam", {"lr": 0.03, "betas": (0.8, 0.99), "weight_decay": 0.1, "amsgrad": True}),
    ("SGD", {"dampening": 0.0, "nesterov": True, "lr": 0.2, "weight_decay": 0.01}),
    ("RMSprop", {"alpha": 0.9, "momentum": 0.0, "centered": True}),
    ("Lion", {"lr": 0.001, "betas": [0.95, 0.98], "weight_decay": 0.0}),
    ("LAMB", {"lr": 0.005, "weight_decay": 0.02}),
    ("Muon", {"lr": 0.05, "momentum": 0.8, "nesterov": False}),
    ("Adafactor", {"lr": 0.05, "weight_decay": 0.1, "maximize": True}),
]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind, entries", GOOD, ids=lambda v: v if isinstance(v, str) else
                         "-".join(v))
def test_a_good_update_is_the_keys_written_one_by_one(kind, entries, form):
    opt, one_by_one = _build(kind), _build(kind)
    for o in (opt, one_by_one):
        _steps(o, 0, 2)
    FORMS[form](opt.param_groups[1], entries)
    assert _one_by_one(one_by_one.param_groups[1], entries) is None
    for mine, theirs in zip(opt.param_groups, one_by_one.param_groups):
        assert _hypers(mine) == _hypers(theirs)
    if hasattr(opt, "next_lr"):
        assert opt.next_lr == one_by_one.next_lr
    _steps(opt, 2, 3)
    _steps(one_by_one, 2, 3)
    assert_same_bits(opt, one_by_one, f"{kind} {form} {entries}")


def test_update_resets_the_plateau_factor_only_when_it_writes():
    """An update with ``lr`` resets the group's ReduceLROnPlateau factor as ``group["lr"]
    = value`` does; a refused one leaves it cut."""
    opt = _build("Adam")
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    _steps(opt, 0, 1)
    plateau.step(1.0)
    plateau.step(1.0)                     # no improvement: every group's lr halved
    assert opt.next_lr == [0.005, 0.01]
    with pytest.raises(ValueError):
        opt.param_groups[1].update(lr=0.04, eps=-1.0)
    assert opt.next_lr == [0.005, 0.01]
    opt.param_groups[1].update(lr=0.04, eps=1e-6)
    assert opt.next_lr == [0.005, 0.04]
    opt.param_groups[0] |= {"eps": 1e-7}
    assert opt.next_lr == [0.005, 0.04]


def test_update_refills_a_buffer_filled_from_the_lr_only_when_it_writes():
    """Rprop's step size starts at the group's lr at a param's first update: an update
    with ``lr`` before it refills the buffer as a write does; a refused one does not."""
    opt = fastlr.Rprop([{"params": [np.ones(3)]}, {"params": [np.ones(2)]}], lr=0.01)
    with pytest.raises(TypeError):
        opt.param_groups[1].update({"lr": 0.05, "etas": 0.5})
    np.testing.assert_array_equal(opt.state[1]["step_size"], 0.01)
    opt.param_groups[1].update({"lr": 0.05, "etas": (0.4, 1.3)})
    np.testing.assert_array_equal(opt.state[1]["step_size"], 0.05)
    np.testing.assert_array_equal(opt.state[0]["step_size"], 0.01)
    assert opt.param_groups[1]["etas"] == (0.4, 1.3)


def test_update_and_a_group_its_check_sets():
    """LBFGS's group check sets ``max_eval`` (None: torch's default, from ``max_iter``) from
    the updated group; a refused update leaves it as it was."""
    opt = fastlr.LBFGS([np.ones(3)], lr=0.5, max_iter=8, max_eval=3)
    before = list(opt.param_groups[0].items())
    with pytest.raises(ValueError):
        opt.param_groups[0].update({"max_eval": None, "lr": -1.0})
    assert list(opt.param_groups[0].items()) == before
    opt.param_groups[0].update({"max_iter": 4, "max_eval": None})
    assert opt.param_groups[0]["max_eval"] == 5
