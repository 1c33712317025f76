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


# ---- a write between steps: what the next step uses ---------------------------------------
# A hyperparameter write refreshes the engine's values of the groups (the spans and state
# buffers stay where they are unless the write changes which buffers exist): the next step
# must use every written value.

def _many_params(dtype, seed):
    """Three groups of 2-D and 1-D params: views of one flat buffer (one span), separate
    arrays (a span each) and both."""
    rng = np.random.default_rng(seed)
    flat, views = fastlr.flat_buffer([(4, 3)] * 6 + [(5,)] * 6, dtype)
    flat[...] = rng.standard_normal(flat.size)
    separate = [rng.standard_normal(s).astype(dtype) for s in [(3, 2)] * 8 + [(7,)] * 4]
    return [views[:8], separate[:8], views[8:] + separate[8:]]


#: (class, defaults, {step: [(group, entries)]}): the writes before that step
WRITES = {
    "Adam": (dict(lr=0.01), {
        1: [(1, {"lr": 0.02})],
        2: [(1, {"weight_decay": 0.1}), (0, {"lr": 0.005})],     # 0 -> nonzero
        3: [(1, {"betas": (0.8, 0.99)}), (2, {"eps": 1e-3})],
        4: [(1, {"weight_decay": 0.0})],                         # and back
        5: [(2, {"maximize": True, "lr": 0.03})],
        6: [(0, {"decoupled_weight_decay": True, "weight_decay": 0.05})],
        7: [(1, {"lr": 0.001, "betas": (0.95, 0.9)}), (0, {"weight_decay": 0.0})],
    }),
    "AdamW": (dict(lr=0.01, amsgrad=True), {
        1: [(1, {"weight_decay": 0.0}), (2, {"lr": 0.05})],
        3: [(1, {"weight_decay": 0.3, "betas": (0.5, 0.9)})],
        5: [(0, {"lr": 0.0}), (2, {"eps": 0.1})],
    }),
    "SGD": (dict(lr=0.05), {
        1: [(1, {"lr": 0.1})],
        2: [(1, {"momentum": 0.9}), (2, {"weight_decay": 0.1})],  # a buffer appears
        3: [(1, {"dampening": 0.5}), (0, {"momentum": 0.5, "nesterov": True})],
        4: [(2, {"weight_decay": 0.0}), (1, {"dampening": 0.0, "nesterov": True})],
        5: [(0, {"maximize": True, "lr": 0.01})],
        6: [(1, {"momentum": 0.7, "nesterov": False})],
        7: [(1, {"momentum": 0.3}), (2, {"momentum": 0.9})],
    }),
    "RMSprop": (dict(lr=0.01, momentum=0.5, centered=True), {
        1: [(1, {"lr": 0.02}), (0, {"alpha": 0.9})],
        3: [(2, {"weight_decay": 0.1, "eps": 1e-4}), (1, {"momentum": 0.9})],
        5: [(2, {"weight_decay": 0.0}), (0, {"maximize": True})],
    }),
}


class _Torch:
    """torch's optimizer of the same name over copies of the groups' params."""

    def __init__(self, torch, cls_name, groups, defaults):
        self.torch = torch
        self.params = [[torch.nn.Parameter(torch.tensor(p)) for p in ps] for ps in groups]
        self.opt = getattr(torch.optim, cls_name)([{"params": ps} for ps in self.params],
                                                  foreach=False, **defaults)

    def step(self, grads):
        for p, g in zip((p for ps in self.params for p in ps), grads):
            p.grad = self.torch.tensor(g)
        self.opt.step()


@pytest.mark.parametrize("cls_name", list(WRITES))
def test_written_hyperparameters_are_used_by_the_next_step(cls_name):
    """Writes between steps to params in spans of one and of many (lr, betas, eps, weight
    decay from 0 and back, maximize, a momentum that starts a buffer, update and single
    writes), float64: torch's values after every step, within 1e-10."""
    torch = pytest.importorskip("torch", reason="the parity test needs torch 2.13")
    defaults, writes = WRITES[cls_name]
    groups = _many_params(np.float64, 5)
    opt = getattr(fastlr, cls_name)([{"params": ps} for ps in groups], **defaults)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        twin = _Torch(torch, cls_name, groups, defaults)
        rng = np.random.default_rng(9)
        for t in range(9):
            for g, entries in writes.get(t, ()):
                opt.param_groups[g].update(entries)
                twin.opt.param_groups[g].update(entries)
            grads = [rng.standard_normal(p.shape) for ps in groups for p in ps]
            opt.step(grads)
            twin.step(grads)
            mine = [p for ps in groups for p in ps]
            theirs = [p.detach().numpy() for ps in twin.params for p in ps]
            for i, (x, y) in enumerate(zip(mine, theirs)):
                err = np.max(np.abs(x - y)) / max(1.0, np.max(np.abs(y)))
                assert err <= 1e-10, f"{cls_name} step {t + 1} params[{i}]: {err:.3e}"
    finally:
        torch.set_default_dtype(old)


def _scheduled(values):
    """A callable of the step count giving ``values[t]`` (the value a write set by then)."""
    return lambda t: values[t]


@pytest.mark.parametrize("cls_name, key", [("Adam", "lr"), ("Adam", "weight_decay"),
                                           ("Adam", "betas"), ("SGD", "momentum"),
                                           ("SGD", "weight_decay"), ("RMSprop", "lr"),
                                           ("Lion", "weight_decay"), ("NAdam", "lr")])
def test_a_write_per_step_gives_the_bits_of_the_same_values_scheduled(cls_name, key):
    """A value written before each step, float32 over many spans: the bits of an optimizer
    given the same values by a schedule (weight decay through 0 and back, a momentum
    buffer starting mid-run)."""
    values = {"lr": [0.01, 0.02, 0.0, 0.005, 0.03, 0.01, 0.2, 0.01],
              "weight_decay": [0.0, 0.1, 0.1, 0.0, 0.0, 0.3, 0.0, 0.05],
              "momentum": [0.0, 0.0, 0.9, 0.5, 0.1, 0.9, 0.3, 0.6],
              "betas": [0.9, 0.5, 0.8, 0.0, 0.95, 0.9, 0.7, 0.99]}[key]
    written_groups, scheduled_groups = _many_params(np.float32, 7), _many_params(np.float32, 7)
    cls = getattr(fastlr, cls_name)
    written = cls([{"params": ps} for ps in written_groups])
    entry = (lambda v: (v, 0.999)) if key == "betas" else (lambda v: v)
    scheduled = cls([{"params": ps} for ps in scheduled_groups[:2]] + [
        {"params": scheduled_groups[2], key: entry(_scheduled(values))}])
    rng = np.random.default_rng(11)
    for t, v in enumerate(values):
        written.param_groups[2][key] = entry(v)
        grads = [rng.standard_normal(p.shape).astype(np.float32)
                 for ps in written_groups for p in ps]
        written.step(grads)
        scheduled.step(grads)
        assert_same_bits(written, scheduled, f"{cls_name} {key} step {t + 1}")
    assert written.last_lr == scheduled.last_lr


def test_a_write_keeps_the_state_where_it_is_unless_its_buffers_change():
    """A write that leaves the buffers as they are leaves every state view live (no new
    layout); one that adds a buffer (AMSGrad) keeps the others' values; add_param_group
    after writes keeps a new group's adjacent params out of the last group's span."""
    flat, views = fastlr.flat_buffer([(3,)] * 6, np.float32)
    opt = fastlr.Adam(views[:4], lr=0.01)
    grads = [np.full(3, 0.5, np.float32)] * 4
    opt.step(grads)
    bufs = {(i, k): v for i, st in opt.state.items() for k, v in st.items() if k != "step"}
    for k, value in [("lr", 0.02), ("betas", (0.8, 0.9)), ("weight_decay", 0.1),
                     ("maximize", True), ("eps", 1e-3)]:
        opt.param_groups[0][k] = value
        opt.step(grads)
        for (i, name), view in bufs.items():
            assert np.shares_memory(view, opt.state[i][name]), (k, i, name)
    assert len(opt._spans) == 1
    before = {key: view.copy() for key, view in bufs.items()}
    opt.param_groups[0]["amsgrad"] = True
    assert opt.next_lr == [0.02]
    for (i, name), view in before.items():
        np.testing.assert_array_equal(opt.state[i][name], view)
    assert np.all(opt.state[0]["max_exp_avg_sq"] == 0)
    opt.add_param_group({"params": views[4:]})
    opt.param_groups[1]["lr"] = 0.5
    opt.step([np.full(3, 0.5, np.float32)] * 6)
    assert len(opt._spans) == 2 and opt.last_lr == [0.02, 0.5]


def test_spans_follow_per_param_counts_through_writes():
    """A checkpoint whose params took different numbers of steps splits a flat buffer's
    span (each param's bias correction uses its own count); a write then keeps the split:
    the bits of the same params in separate arrays."""
    flat, views = fastlr.flat_buffer([(5,)] * 4, np.float32)
    flat[...] = np.linspace(-1.0, 1.0, flat.size)
    separate = [v.copy() for v in views]
    source = fastlr.Adam([v.copy() for v in views], lr=0.01)
    source.step([np.full(5, 0.3, np.float32)] * 4)
    sd = source.state_dict()
    for i in range(4):
        sd["state"][i]["step"] = [1, 1, 7, 2][i]
    spanned, apart = fastlr.Adam(views, lr=0.01), fastlr.Adam(separate, lr=0.01)
    for opt in (spanned, apart):
        opt.load_state_dict(sd)
        opt.param_groups[0]["lr"] = 0.02
    assert len(spanned._spans) == 3             # counts 1, 1 | 7 | 2
    rng = np.random.default_rng(4)
    for t in range(3):
        grads = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]
        spanned.step(grads)
        apart.step(grads)
        spanned.param_groups[0]["betas"] = (0.8, 0.99 - 0.01 * t)
        apart.param_groups[0]["betas"] = (0.8, 0.99 - 0.01 * t)
        assert_same_bits(spanned, apart, f"step {t + 1}")
    assert [s["step"] for s in spanned.state.values()] == [4, 4, 10, 5]
