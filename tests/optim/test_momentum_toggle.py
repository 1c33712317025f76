"""SGD's and RMSprop's momentum written to 0 and back (torch.optim's semantics).

torch keeps ``state['momentum_buffer']`` while momentum is 0: such a step is plain SGD (or
RMSprop without momentum) and neither reads nor writes it, and the next step with
momentum != 0 goes on from that stale buffer (SGD: ``buf = momentum * buf + (1 - dampening)
* g``; RMSprop: ``buf = momentum * buf + g / (sqrt(avg) + eps)``); an SGD param that never
had one starts it from the grad then. fastlr must do the same for written and scheduled
values, in ``step`` and ``step_reference`` (bit for bit), and carry the stale buffer through
``state_dict`` / ``load_state_dict`` as torch's checkpoint does.

torch's RMSprop makes the buffer at a param's first update only, and only if momentum > 0
then: momentum 0 at the first update and nonzero later raises ``KeyError`` in torch. fastlr
starts a zero buffer then (its behaviour before the stale buffer was kept), tested against
torch given that zero buffer.
"""

import copy

import numpy as np
import pytest

import fastlr
from fastlr import schedules as S

from test_optim import (DTYPES, TorchTwin, assert_close, assert_same_bits,  # noqa: E402
                        copies, make_grads, make_params, torch, torch_default_dtype)

SHAPES = [(3, 4), (5,), (2,)]

#: momentum written before each step: 0 mid-run, 0 from the start, several times 0
SEQUENCES = {
    "on-off-on": [0.9, 0.9, 0.0, 0.5, 0.5, 0.0, 0.0, 0.8],
    "off-first": [0.0, 0.9, 0.0, 0.5, 0.0, 0.7],
    "the-defect": [0.9, 0.9, 0.0, 0.5],
}

#: (id, constructor options besides momentum); nesterov is on while momentum is
#: (fastlr refuses nesterov=True with momentum 0, torch checks it at construction only)
OPTIONS = [
    ("plain", dict(lr=0.05)),
    ("dampening", dict(lr=0.05, dampening=0.3)),
    ("nesterov", dict(lr=0.05, nesterov=True)),
    ("maximize", dict(lr=0.05, maximize=True)),
    ("weight_decay", dict(lr=0.05, weight_decay=0.1)),
]

#: RMSprop's: momentum > 0 at the first step (torch makes no buffer otherwise)
RMS_SEQUENCES = {
    "on-off-on": SEQUENCES["on-off-on"],
    "the-defect": SEQUENCES["the-defect"],
    "off-twice": [0.5, 0.0, 0.0, 0.7, 0.0, 0.3],
}

RMS_OPTIONS = [
    ("plain", dict(lr=0.01)),
    ("centered", dict(lr=0.01, centered=True)),
    ("maximize", dict(lr=0.01, maximize=True)),
    ("weight_decay", dict(lr=0.01, weight_decay=0.1)),
    ("all", dict(lr=0.01, alpha=0.9, centered=True, weight_decay=0.1, maximize=True)),
]

#: options a class's checkpoint and group tests build with
KW = {"SGD": dict(lr=0.05, dampening=0.1), "RMSprop": dict(lr=0.01, centered=True)}

dtype_ids = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
classes = pytest.mark.parametrize("cls", list(KW))
cases = pytest.mark.parametrize("cls,moms,kw", [
    pytest.param(cls, moms, kw, id=f"{cls}-{s}-{o}")
    for cls, seqs, opts in (("SGD", SEQUENCES, OPTIONS), ("RMSprop", RMS_SEQUENCES, RMS_OPTIONS))
    for s, moms in seqs.items() for o, kw in opts])


def _write(group, m, kw):
    """Write momentum ``m`` (and nesterov while it is on, when the case uses it)."""
    if kw.get("nesterov") and m == 0:
        group["nesterov"] = False
    group["momentum"] = m
    if kw.get("nesterov") and m != 0:
        group["nesterov"] = True


def _built(moms, kw, dtype, flat, cls="SGD"):
    """(fastlr's params, its optimizer) over SHAPES; ``flat``: views of one flat buffer."""
    values = make_params(SHAPES, dtype, 41)
    if flat:
        buffer, params = fastlr.flat_buffer(SHAPES, dtype)
        for p, v in zip(params, values):
            p[...] = v
    else:
        params = copies(values)
    if kw.get("nesterov"):
        kw = dict(kw, nesterov=moms[0] != 0)
    opt = getattr(fastlr, cls)(params, **dict(kw, momentum=moms[0]))
    return params, opt


def _grads(dtype, n):
    return make_grads(SHAPES, dtype, n, 41)


def _torch_twin(torch, params, moms, kw, cls="SGD"):
    if kw.get("nesterov"):
        kw = dict(kw, nesterov=moms[0] != 0)
    return TorchTwin(torch, cls, [{"params": params}], **dict(kw, momentum=moms[0]))


def _assert_state_matches(opt, twin, dtype, what):
    """The same buffers as torch's (a stale one included), with their values."""
    for i, st in opt.state.items():
        tst = twin.state(i)
        assert set(st) - {"step"} == set(tst) - {"step"}, f"{what} state[{i}]"
        for name in set(tst) - {"step"}:
            assert_close(st[name], tst[name], dtype, f"{what} state[{i}][{name!r}]")


def _step_both(opt, twin, params, g, dtype, what):
    """One step of fastlr and of torch; the params and the buffers compared."""
    opt.step(list(g))
    twin.step(g)
    for i, (x, y) in enumerate(zip(params, twin.params())):
        assert_close(x, y, dtype, f"{what} params[{i}]")
    _assert_state_matches(opt, twin, dtype, what)


@dtype_ids
@cases
@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
def test_momentum_written_to_zero_and_back_matches_torch(torch, cls, moms, kw, dtype, flat):
    params, opt = _built(moms, kw, dtype, flat, cls)
    with torch_default_dtype(torch, dtype):
        twin = _torch_twin(torch, params, moms, kw, cls)
        for t, (m, g) in enumerate(zip(moms, _grads(dtype, len(moms)))):
            _write(opt.param_groups[0], m, kw)
            _write(twin.opt.param_groups[0], m, kw)
            _step_both(opt, twin, params, g, dtype, f"step {t + 1}")


@dtype_ids
@cases
@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
def test_momentum_written_to_zero_and_back_step_equals_step_reference(torch, cls, moms, kw,
                                                                     dtype, flat):
    """step_reference follows torch too, and step gives its bits."""
    a, opt = _built(moms, kw, dtype, flat, cls)
    b, ref = _built(moms, kw, dtype, flat, cls)
    with torch_default_dtype(torch, dtype):
        twin = _torch_twin(torch, b, moms, kw, cls)
    for t, (m, g) in enumerate(zip(moms, _grads(dtype, len(moms)))):
        for group in (opt.param_groups[0], ref.param_groups[0], twin.opt.param_groups[0]):
            _write(group, m, kw)
        opt.step(list(g))
        ref.step_reference(list(g))
        with torch_default_dtype(torch, dtype):
            twin.step(g)
        for i, (x, y) in enumerate(zip(b, twin.params())):
            assert_close(x, y, dtype, f"step {t + 1} step_reference params[{i}]")
        assert_same_bits(a, b, f"step {t + 1} params")
        for i in opt.state:
            assert opt.state[i].keys() == ref.state[i].keys(), f"step {t + 1} state[{i}]"
            for name in set(opt.state[i]) - {"step"}:
                assert_same_bits([opt.state[i][name]], [ref.state[i][name]],
                                 f"step {t + 1} state[{i}][{name!r}]")


@dtype_ids
@classes
def test_a_scheduled_momentum_then_written_values_match_torch(torch, dtype, cls):
    """A schedule through 0 keeps the buffer; a number written over it (0 included) keeps
    it too, and a schedule written back goes on from it."""
    sched = S.piecewise_constant([2, 4], [0.9, 0.0, 0.6])
    writes = {3: 0.0, 5: 0.7, 6: 0.0, 7: sched}      # step index -> value written before it
    params, opt = _built([sched], KW[cls], dtype, False, cls)
    with torch_default_dtype(torch, dtype):
        twin = _torch_twin(torch, params, [0.9], KW[cls], cls)
        current = sched
        for t, g in enumerate(_grads(dtype, 10)):
            if t in writes:
                current = writes[t]
                opt.param_groups[0]["momentum"] = current
            twin.opt.param_groups[0]["momentum"] = current(t) if callable(current) \
                else current
            _step_both(opt, twin, params, g, dtype, f"step {t + 1}")


@dtype_ids
@classes
def test_groups_keep_their_own_stale_buffers(torch, dtype, cls):
    """Each group's params keep their buffers through its own momentum's zeros."""
    values = make_params(SHAPES, dtype, 43)
    groups = [{"params": values[:1]}, {"params": values[1:], "momentum": 0.5}]
    moms = [(0.9, 0.5), (0.9, 0.0), (0.0, 0.0), (0.0, 0.3), (0.2, 0.0), (0.0, 0.6)]
    params = copies(values)
    opt = getattr(fastlr, cls)([{"params": params[:1]}, {"params": params[1:], "momentum": 0.5}],
                               momentum=0.9, **KW[cls])
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, cls, groups, momentum=0.9, **KW[cls])
        for t, (m, g) in enumerate(zip(moms, make_grads(SHAPES, dtype, len(moms), 43))):
            for o in (opt, twin.opt):
                for group, value in zip(o.param_groups, m):
                    group["momentum"] = value
            _step_both(opt, twin, params, g, dtype, f"step {t + 1}")


def _run_to_zero(torch, dtype, cls="SGD"):
    """fastlr and torch after steps at momentum 0.9, 0.9 then 0 (a stale buffer)."""
    moms = [0.9, 0.9, 0.0]
    params, opt = _built(moms, KW[cls], dtype, False, cls)
    twin = _torch_twin(torch, params, moms, KW[cls], cls)
    for m, g in zip(moms, _grads(dtype, len(moms))):
        opt.param_groups[0]["momentum"] = m
        twin.opt.param_groups[0]["momentum"] = m
        opt.step(list(g))
        twin.step(g)
    return params, opt, twin


@dtype_ids
@classes
@pytest.mark.parametrize("how", ["state_dict", "save"])
def test_a_checkpoint_at_momentum_zero_carries_the_stale_buffer(torch, dtype, cls, how,
                                                               tmp_path):
    with torch_default_dtype(torch, dtype):
        params, opt, twin = _run_to_zero(torch, dtype, cls)
        sd = copy.deepcopy(opt.state_dict())
        tsd = twin.opt.state_dict()
        for i in range(len(SHAPES)):
            assert_close(sd["state"][i]["momentum_buffer"],
                         tsd["state"][i]["momentum_buffer"].numpy(), dtype,
                         f"state_dict state[{i}]")
        # built with the checkpoint's values (momentum 0: no buffer of its own), loaded
        mine = copies(params)
        loaded = getattr(fastlr, cls)(mine, **dict(KW[cls], momentum=0.0))
        if how == "save":
            opt.save(tmp_path / "ckpt.npz")
            loaded.load(tmp_path / "ckpt.npz")
        else:
            loaded.load_state_dict(sd)
        for i in range(len(SHAPES)):
            assert_same_bits([loaded.state[i]["momentum_buffer"]],
                             [sd["state"][i]["momentum_buffer"]], f"loaded state[{i}]")
        # and on, from the stale buffer, as torch (the one saved and the one loaded)
        for t, (m, g) in enumerate(zip([0.0, 0.5, 0.6], _grads(dtype, 6)[3:])):
            for o in (opt, loaded):
                o.param_groups[0]["momentum"] = m
            twin.opt.param_groups[0]["momentum"] = m
            opt.step(list(g))
            loaded.step(list(g))
            twin.step(g)
            assert_same_bits(mine, params, f"step {t + 4} loaded vs saved")
            for i, (x, y) in enumerate(zip(params, twin.params())):
                assert_close(x, y, dtype, f"step {t + 4} params[{i}]")


@classes
def test_a_failed_load_of_a_stale_buffer_changes_nothing(cls):
    dtype = np.float64
    params = make_params(SHAPES, dtype, 41)
    make = getattr(fastlr, cls)
    opt = make(copies(params), **dict(KW[cls], momentum=0.9))
    for g in _grads(dtype, 2):
        opt.step(list(g))
    opt.param_groups[0]["momentum"] = 0.0
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][2]["momentum_buffer"] = np.zeros(7)          # the wrong shape
    fresh = make(copies(params), **dict(KW[cls], momentum=0.0))
    before = fresh.state
    with pytest.raises(ValueError, match=r"state\[2\]\['momentum_buffer'\]"):
        fresh.load_state_dict(sd)
    assert fresh.state.keys() == before.keys()
    for i, st in fresh.state.items():
        assert "momentum_buffer" not in st and st.keys() == before[i].keys(), f"state[{i}]"
    # it still steps as a fresh optimizer: momentum on later starts from the grads (a
    # zero buffer: RMSprop)
    other = make(copies(params), **dict(KW[cls], momentum=0.0))
    for m, g in zip([0.0, 0.9, 0.9], _grads(dtype, 3)):
        for o in (fresh, other):
            o.param_groups[0]["momentum"] = m
            o.step(list(g))
    assert_same_bits([p for g in fresh.param_groups for p in g["params"]],
                     [p for g in other.param_groups for p in g["params"]], "params")


@dtype_ids
@classes
def test_loading_a_checkpoint_without_a_buffer_drops_the_stale_one(torch, dtype, cls):
    """torch's load replaces the state: a param whose checkpoint has no buffer starts it
    (SGD: from the grad) at its next momentum step."""
    with torch_default_dtype(torch, dtype):
        params, opt, twin = _run_to_zero(torch, dtype, cls)
        start = copies(params)
        blank = getattr(fastlr, cls)(copies(start), **dict(KW[cls], momentum=0.0))
        sd = blank.state_dict()
        tblank = _torch_twin(torch, start, [0.0], KW[cls], cls)
        opt.load_state_dict(sd)
        twin.opt.load_state_dict(tblank.opt.state_dict())
        assert all("momentum_buffer" not in st for st in opt.state.values())
        for t, g in enumerate(_grads(dtype, 5)[3:]):
            opt.param_groups[0]["momentum"] = 0.8
            twin.opt.param_groups[0]["momentum"] = 0.8
            _step_both(opt, twin, params, g, dtype, f"step {t + 4}")


@classes
@pytest.mark.parametrize("flat", [False, True], ids=["separate", "flat"])
def test_a_checkpoint_missing_one_params_buffer_loads_as_into_a_fresh_optimizer(cls, flat):
    """One param's buffer left out of a checkpoint taken at momentum 0, while the others
    keep theirs (the group's state names stay): the optimizer must step from what it
    loaded, as a fresh one loading the same checkpoint does, and show it in its own
    checkpoints (not the stale buffer its spans held)."""
    dtype = np.float64
    values = make_params(SHAPES, dtype, 45)

    def build(momentum):
        params = copies(values)
        if flat:
            buf, params = fastlr.flat_buffer([p.shape for p in values], dtype)
            for v, p in zip(values, params):
                p[...] = v
        return params, getattr(fastlr, cls)(params, **dict(KW[cls], momentum=momentum))

    params, opt = build(0.9)
    for g in _grads(dtype, 2):
        opt.step(list(g))
    opt.param_groups[0]["momentum"] = 0.0
    sd = copy.deepcopy(opt.state_dict())
    del sd["state"][1]["momentum_buffer"]
    opt.load_state_dict(sd)
    fresh_params, fresh = build(0.0)
    for p, q in zip(fresh_params, params):
        p[...] = q
    fresh.load_state_dict(sd)
    for m, g in zip([0.0, 0.5, 0.5], _grads(dtype, 3)):
        for o in (opt, fresh):
            o.param_groups[0]["momentum"] = m
            o.step(list(g))
    assert_same_bits(params, fresh_params, "params")
    mine, theirs = opt.state_dict()["state"], fresh.state_dict()["state"]
    assert mine.keys() == theirs.keys()
    for i in mine:
        assert sorted(mine[i]) == sorted(theirs[i]), f"state[{i}]"
        for k in mine[i]:
            assert_same_bits([np.asarray(mine[i][k])], [np.asarray(theirs[i][k])],
                             f"state[{i}][{k!r}]")


@dtype_ids
def test_a_buffer_not_yet_started_stays_unstarted_through_a_checkpoint(torch, dtype):
    """Loaded at momentum 0 before any buffer: the first momentum step after the load
    starts the buffer from the grad, as torch (dampening shows the difference)."""
    kw = dict(lr=0.05, momentum=0.0, dampening=0.5)
    values = make_params(SHAPES, dtype, 44)
    grads = make_grads(SHAPES, dtype, 5, 44)
    first = fastlr.SGD(copies(values), **kw)
    for g in grads[:2]:
        first.step(list(g))
    params = copies([p for g in first.param_groups for p in g["params"]])
    opt = fastlr.SGD(params, **kw)
    opt.load_state_dict(first.state_dict())
    assert all(set(st) == {"step"} for st in opt.state.values())
    with torch_default_dtype(torch, dtype):
        twin = TorchTwin(torch, "SGD", [{"params": params}], **kw)
        for t, g in enumerate(grads[2:]):
            for o in (opt, twin.opt):
                o.param_groups[0]["momentum"] = 0.9
            _step_both(opt, twin, params, g, dtype, f"step {t + 3}")


@dtype_ids
@pytest.mark.parametrize("built", [0.0, 0.5], ids=["built-off", "written-off"])
def test_rmsprop_momentum_off_at_the_first_step_then_on_starts_a_zero_buffer(torch, dtype,
                                                                          built):
    """torch's RMSprop makes no buffer when momentum is 0 at a param's first update (built
    so, or written to 0 before it: fastlr shows none either), and its next step with
    momentum raises KeyError: a case torch cannot run. fastlr starts a zero buffer then, as
    torch would given one (put into its state here), and keeps it while momentum is 0."""
    moms = [0.0, 0.0, 0.6, 0.0, 0.4]
    kw = KW["RMSprop"]
    params, opt = _built([built], kw, dtype, False, "RMSprop")
    ref_params, ref = _built([built], kw, dtype, False, "RMSprop")
    grads = _grads(dtype, len(moms))
    with torch_default_dtype(torch, dtype):
        twin = _torch_twin(torch, params, [built], kw, "RMSprop")
        for t, (m, g) in enumerate(zip(moms, grads)):
            for group in (opt.param_groups[0], ref.param_groups[0], twin.opt.param_groups[0]):
                group["momentum"] = m
            if t == 2:
                with pytest.raises(KeyError, match="momentum_buffer"):
                    twin.step(g)
                for p in twin.tparams:      # the zero buffer fastlr starts
                    twin.opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
            _step_both(opt, twin, params, g, dtype, f"step {t + 1}")
            ref.step_reference(list(g))
            assert_same_bits(params, ref_params, f"step {t + 1} step_reference")
