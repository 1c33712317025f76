"""Named params, the checkpoint rule for hyperparameters, and the optimizers' repr.

1. Named params (a dict of name -> array, torch's ``(name, array)`` pairs, per group, and
   groups picked by name with ``fastlr.optim.named_groups``) for every class: a dict of
   grads in any order gives the bits of the list in param order; a missing or unknown key,
   a non-string or repeated name, named and unnamed groups mixed: a clear error naming it,
   nothing changed.
2. Messages name a param by its flat index, its place in the groups and its name, also
   for the errors the compiled engine raises.
3. Checkpoints: the names are recorded and checked; the optimizer's hyperparameters and
   schedules are kept and compared with the checkpoint's (every hyperparameter of every
   class), ``strict=False`` warns; unnamed <-> named checkpoints load by position; an
   optimizer's own in-memory snapshot is a rollback.
4. ``repr``.
"""

import re
import warnings

import numpy as np
import pytest

import fastlr
from fastlr import schedules as S
from fastlr.optim import named_groups
from fastlr.optim.families import CLASSES

NAMES = ("fc.weight", "fc.bias", "out.weight", "out.bias")
SHAPES = ((3, 4), (3,), (2, 3), (2,))
CLASS_NAMES = list(CLASSES)


def _named(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(dtype) for n, s in zip(NAMES, SHAPES)}


def _grads(seed, dtype=np.float64):
    rng = np.random.default_rng(100 + seed)
    return {n: rng.standard_normal(s).astype(dtype) for n, s in zip(NAMES, SHAPES)}


def _shuffled(d, seed):
    keys = list(d)
    np.random.default_rng(seed).shuffle(keys)
    return {k: d[k] for k in keys}


def _snapshot(opt):
    state = {(i, k): (v.tobytes() if isinstance(v, np.ndarray) else repr(v))
             for i, st in opt.state.items() for k, v in st.items()}
    return {"steps": opt.steps, "params": [p.tobytes() for p in opt.params], "state": state,
            "groups": [{k: repr(v) for k, v in g.items() if k != "params"}
                       for g in opt.param_groups], "next_lr": repr(opt.next_lr)}


# ---------------------------------------------------------------------------------------
# 1. named params
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls_name", CLASS_NAMES)
@pytest.mark.parametrize("form", ["dict", "pairs", "groups", "named_groups"])
def test_named_params_step_like_the_list_in_param_order(cls_name, form):
    cls = CLASSES[cls_name]
    plain = _named()
    ref = cls([{"params": list(plain.values())[:2]},
               {"params": list(plain.values())[2:], "lr": 0.02}], lr=0.01)
    named = _named()
    if form == "dict":
        opt = cls(named, lr=0.01)
        ref = cls(list(plain.values()), lr=0.01)
    elif form == "pairs":
        opt = cls(list(named.items()), lr=0.01)
        ref = cls(list(plain.values()), lr=0.01)
    elif form == "groups":
        opt = cls([{"params": dict(list(named.items())[:2])},
                   {"params": list(named.items())[2:], "lr": 0.02}], lr=0.01)
    else:
        opt = cls(named_groups(named, [{"params": ["fc.weight", "fc.bias"]},
                                       {"params": ["out.weight", "out.bias"], "lr": 0.02}]),
                  lr=0.01)
    assert [n for g in opt.param_groups for n in g["param_names"]] == list(NAMES)
    for k in range(4):
        g = _grads(k)
        opt.step(_shuffled(g, k))                   # a dict, keys in any order
        ref.step([g[n] for n in NAMES])
    opt.step(list(_grads(9).values()))              # a list still works, in param order
    ref.step(list(_grads(9).values()))
    for n, p in zip(NAMES, ref.params):
        assert named[n].tobytes() == p.tobytes(), n
    assert opt.params[0] is named["fc.weight"]


def test_named_groups_rest_and_order():
    named = _named()
    groups = named_groups(named, [{"params": ["out.bias", "fc.bias"], "weight_decay": 0.0}])
    assert [list(g["params"]) for g in groups] == [["out.bias", "fc.bias"],
                                                    ["fc.weight", "out.weight"]]
    assert groups[0]["weight_decay"] == 0.0 and set(groups[1]) == {"params"}
    opt = fastlr.AdamW(groups, lr=1e-3, weight_decay=0.1)
    assert opt.param_groups[0]["param_names"] == ["out.bias", "fc.bias"]
    assert opt.param_groups[1]["weight_decay"] == 0.1
    assert opt.params[0] is named["out.bias"]
    # pairs in, every param listed: no extra group
    groups = named_groups(list(named.items()), [{"params": list(NAMES)}], rest=False)
    assert len(groups) == 1


@pytest.mark.parametrize("groups, rest, match", [
    ([{"params": ["fc.weight", "nope"]}], True, r"'nope', which is not a param"),
    ([{"params": ["fc.bias"]}, {"params": ["fc.bias"]}], True,
     r"'fc.bias' is in groups\[0\] and groups\[1\]"),
    ([{"params": ["fc.bias"]}], False, r"no group names 'fc.weight', 'out.weight'"),
    ([{"params": [3]}], True, r"groups\[0\]\['params'\] must list param names"),
    ([{"lr": 0.1}], True, r"groups\[0\] must be a dict with a 'params' entry"),
])
def test_named_groups_errors_name_the_param(groups, rest, match):
    with pytest.raises((ValueError, TypeError), match=match):
        named_groups(_named(), groups, rest=rest)


def test_named_groups_needs_names():
    with pytest.raises(TypeError, match="named must be a dict of name -> array"):
        named_groups(list(_named().values()), [])


@pytest.mark.parametrize("cls_name", CLASS_NAMES)
@pytest.mark.parametrize("bad, error, match", [
    (lambda g: g.pop("fc.bias"), ValueError, r"missing from the grads: 'fc.bias'; it needs "
     r"one grad per param name \(4\)"),
    (lambda g: g.update(extra=np.zeros(2)), ValueError, r"unexpected in the grads: 'extra'"),
    (lambda g: (g.pop("out.bias"), g.update({"out.b": np.zeros(2)})), ValueError,
     r"missing from the grads: 'out.bias', unexpected in the grads: 'out.b'"),
    (lambda g: g.update({"fc.bias": np.zeros(4)}), ValueError,
     r"grads\['fc.bias'\] \(params\[1\], param_groups\[0\]\['params'\]\[1\]\) has shape"),
    (lambda g: g.update({"out.bias": np.zeros(2, np.float32)}), TypeError,
     r"grads\['out.bias'\] \(params\[3\], param_groups\[1\]\['params'\]\[1\]\) has dtype"),
    (lambda g: g.update({"out.weight": [0.0]}), TypeError,
     r"grads\['out.weight'\] \(params\[2\], param_groups\[1\]\['params'\]\[0\]\) must be "
     r"a numpy.ndarray"),
])
def test_bad_grads_dict_names_the_key_and_changes_nothing(cls_name, bad, error, match):
    named = _named()
    opt = CLASSES[cls_name]([{"params": dict(list(named.items())[:2])},
                             {"params": dict(list(named.items())[2:])}], lr=0.01)
    opt.step(_grads(0))
    snap = _snapshot(opt)
    grads = _grads(1)
    bad(grads)
    with pytest.raises(error, match=match):
        opt.step(grads)
    assert _snapshot(opt) == snap
    with pytest.raises(error, match=match):
        opt.step_reference(grads) if error is ValueError and "shape" not in match else \
            opt.step(grads)
    assert _snapshot(opt) == snap


def test_step_reference_takes_a_grads_dict():
    a, b = _named(), _named()
    fa, fb = fastlr.Adam(a, lr=0.1), fastlr.Adam(list(b.items()), lr=0.1)
    for k in range(3):
        fa.step(_shuffled(_grads(k), k))
        fb.step_reference(_shuffled(_grads(k), k + 1))
    for n in NAMES:
        np.testing.assert_allclose(a[n], b[n], rtol=1e-12)


def test_list_grads_name_the_group_and_the_param():
    named = _named()
    opt = fastlr.SGD([{"params": dict(list(named.items())[:2])},
                      {"params": dict(list(named.items())[2:])}], lr=0.1)
    grads = [np.zeros(s) for s in SHAPES]
    grads[3] = np.zeros(3)
    with pytest.raises(ValueError, match=re.escape(
            "grads[3] (param_groups[1]['params'][1], 'out.bias') has shape (3,) but "
            "params[3] has shape (2,)")):
        opt.step(grads)
    unnamed = fastlr.SGD([{"params": [np.zeros(2)]}, {"params": [np.zeros(3)]}], lr=0.1)
    with pytest.raises(ValueError, match=re.escape("grads[1] (param_groups[1]['params'][0]) "
                                                   "has shape (2,)")):
        unnamed.step([np.zeros(2), np.zeros(2)])


def test_grads_dict_for_unnamed_params_is_refused():
    opt = fastlr.Adam([np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match="the grads is a dict but the params have no names"):
        opt.step({"w": np.zeros(2)})


@pytest.mark.parametrize("params, error, match", [
    ({"w": np.zeros(2), 3: np.zeros(2)}, TypeError, r"param names must be strings, got int"),
    ([("w", np.zeros(2)), ("w", np.zeros(2))], ValueError, r"names 'w' twice"),
    ([("w", np.zeros(2)), np.zeros(2)], TypeError, r"mixes \(name, array\) pairs and arrays"),
    ([{"params": {"w": np.zeros(2)}}, {"params": {"w": np.zeros(2)}}], ValueError,
     r"param_groups\[1\] names 'w', which param_groups\[0\] already holds"),
    ([{"params": {"w": np.zeros(2)}}, {"params": [np.zeros(2)]}], ValueError,
     r"param_groups\[1\] has no names but the optimizer's params are named"),
    ([{"params": [np.zeros(2)]}, {"params": {"w": np.zeros(2)}}], ValueError,
     r"param_groups\[1\] has named params but the optimizer's params are unnamed"),
    ({"w": np.zeros(2), "b": np.zeros(2, np.int64)}, TypeError,
     r"params\[1\] \(param_groups\[0\]\['params'\]\[1\], 'b'\) must have dtype float32"),
    ([{"params": [np.zeros(2)]}, {"params": [np.zeros(2), np.zeros(3)[::2]]}], ValueError,
     r"params\[2\] \(param_groups\[1\]\['params'\]\[1\]\) must be contiguous"),
    ({}, ValueError, r"param_groups\[0\]\['params'\] is empty"),
])
def test_bad_names_are_refused(params, error, match):
    with pytest.raises(error, match=match):
        fastlr.Adam(params, lr=0.1)


def test_overlap_message_names_both_params():
    buf = np.zeros(4)
    with pytest.raises(ValueError, match=re.escape(
            "params[0] (param_groups[0]['params'][0], 'a') and params[1] "
            "(param_groups[0]['params'][1], 'b') overlap")):
        fastlr.SGD({"a": buf[:3], "b": buf[2:]}, lr=0.1)


def test_add_param_group_checks_names_and_changes_nothing_on_error():
    opt = fastlr.Adam({"w": np.zeros(2)}, lr=0.1)
    opt.step({"w": np.ones(2)})
    snap = _snapshot(opt)
    for group, match in [({"params": [np.zeros(2)]}, "has no names"),
                         ({"params": {"w": np.zeros(3)}}, "already holds"),
                         ({"params": {"v": np.zeros(3), "u": "x"}}, "must be a numpy")]:
        with pytest.raises((TypeError, ValueError), match=match):
            opt.add_param_group(group)
        assert _snapshot(opt) == snap
        assert opt._names == ["w"] and list(opt._name_index) == ["w"]
    opt.add_param_group({"params": [("v", np.zeros(3))], "lr": 0.5})
    assert opt.param_groups[1]["param_names"] == ["v"]
    opt.step({"v": np.ones(3), "w": np.ones(2)})
    assert opt.state[1]["step"] == 1


def test_param_names_beside_the_arrays_as_torch_writes_them():
    w, b = np.zeros(2), np.zeros(3)
    opt = fastlr.SGD([{"params": [w, b], "param_names": ["w", "b"], "lr": 0.5}], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["w", "b"]
    opt.step({"b": np.ones(3), "w": np.ones(2)})
    assert w.tolist() == [-0.5, -0.5]
    for group, error, match in [
            ({"params": [w], "param_names": ["w", "b"]}, ValueError, "list of 1 names"),
            ({"params": {"w": w}, "param_names": ["w"]}, ValueError, "list of 1 names"),
            ({"params": [w, b], "param_names": ["w", "w"]}, ValueError, "names 'w' twice"),
            ({"params": [w], "param_names": [7]}, TypeError, "must be strings")]:
        with pytest.raises(error, match=match):
            fastlr.SGD([group], lr=0.1)


def test_param_names_cannot_be_replaced():
    opt = fastlr.Adam({"w": np.zeros(2)}, lr=0.1)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['param_names'\] cannot be "
                                        r"replaced"):
        opt.param_groups[0]["param_names"] = ["v"]
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['param_names'\] cannot be "
                                        r"changed in place"):
        opt.param_groups[0]["param_names"][0] = "v"
    assert opt.param_groups[0]["param_names"] == ["w"]
    opt.step({"w": np.ones(2)})                 # the optimizer's names are unchanged


# ---------------------------------------------------------------------------------------
# 2. checkpoints: names
# ---------------------------------------------------------------------------------------
def _trained(cls=fastlr.Adam, named=True, steps=3, **kw):
    kw = dict({"lr": 0.01}, **kw)
    params = _named()
    opt = cls(params if named else list(params.values()), **kw)
    for k in range(steps):
        g = _grads(k)
        opt.step(g if named else list(g.values()))
    return opt


def test_state_dict_and_file_record_the_names(tmp_path):
    opt = _trained()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == list(NAMES)
    opt.save(tmp_path / "c.npz")
    other = fastlr.Adam(_named(seed=1), lr=0.01)
    other.load(tmp_path / "c.npz")
    assert other.steps == 3
    assert _snapshot(other)["state"] == _snapshot(opt)["state"]
    assert fastlr.optim.read_checkpoint(tmp_path / "c.npz")["param_groups"][0][
        "param_names"] == list(NAMES)


@pytest.mark.parametrize("via_file", [False, True])
def test_names_mismatch_is_refused_naming_the_keys(via_file, tmp_path):
    src = _trained()
    renamed = {("fc.b" if n == "fc.bias" else n): a for n, a in _named(seed=1).items()}
    dst = fastlr.Adam(renamed, lr=0.01)
    snap = _snapshot(dst)
    load = dst.load if via_file else dst.load_state_dict
    what = tmp_path / "c.npz" if via_file else src.state_dict()
    if via_file:
        src.save(what)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: missing from the checkpoint: "
                                         r"'fc.b', unexpected in the checkpoint: 'fc.bias'"):
        load(what)
    assert _snapshot(dst) == snap
    with pytest.warns(UserWarning, match="loaded by position"):
        load(what, strict=False)
    assert dst.steps == 3


def test_names_in_another_order_are_refused():
    src = _trained()
    dst = fastlr.Adam(_named(), lr=0.01)
    sd = src.state_dict()
    names = sd["param_groups"][0]["param_names"]
    names[0], names[2] = names[2], names[0]
    with pytest.raises(ValueError, match="the same names in another order"):
        dst.load_state_dict(sd)


def test_unnamed_and_named_checkpoints_load_by_position():
    named, unnamed = _trained(named=True), _trained(named=False)
    a = fastlr.Adam(_named(seed=1), lr=0.01)
    a.load_state_dict(unnamed.state_dict())           # no names saved: by position
    b = fastlr.Adam(list(_named(seed=1).values()), lr=0.01)
    b.load_state_dict(named.state_dict())             # no names here: by position
    assert _snapshot(a)["state"] == _snapshot(b)["state"] == _snapshot(named)["state"]


def test_state_errors_name_the_param_and_its_group():
    sd = _trained().state_dict()
    sd["state"][3]["exp_avg"] = np.zeros(5)
    dst = fastlr.Adam([{"params": dict(list(_named().items())[:2])},
                       {"params": dict(list(_named().items())[2:])}], lr=0.01)
    sd["param_groups"] = [dict(sd["param_groups"][0], params=[0, 1],
                               param_names=list(NAMES[:2])),
                          dict(sd["param_groups"][0], params=[2, 3],
                               param_names=list(NAMES[2:]))]
    sd["lr_scale"], sd["last_lr"] = [1.0, 1.0], None
    with pytest.raises(ValueError, match=re.escape(
            "state[3]['exp_avg'] must be a float array of shape (2,) like params[3] "
            "(param_groups[1]['params'][1], 'out.bias')")):
        dst.load_state_dict(sd)


def test_malformed_saved_names_are_refused():
    sd = _trained().state_dict()
    sd["param_groups"][0]["param_names"] = ["a", 2, "c", "d"]
    dst = fastlr.Adam(_named(), lr=0.01)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['param_names'\] must be a list "
                                         r"of 4 strings"):
        dst.load_state_dict(sd)


# ---------------------------------------------------------------------------------------
# 3. checkpoints never silently change a hyperparameter
# ---------------------------------------------------------------------------------------
def test_constant_saved_schedule_here_is_refused():
    src = _trained(lr=1e-3)
    dst = fastlr.Adam(_named(), lr=S.cosine(1e-3, 100))
    snap = _snapshot(dst)
    with pytest.raises(ValueError, match=re.escape(
            "param_groups[0]['lr'] is cosine(0.001, 100) here, 0.001 in the checkpoint")):
        dst.load_state_dict(src.state_dict())
    assert _snapshot(dst) == snap
    assert dst.param_groups[0]["lr"] == S.cosine(1e-3, 100)


def test_schedule_saved_constant_here_is_refused():
    src = _trained(lr=S.cosine(1e-3, 100))
    dst = fastlr.Adam(_named(), lr=1e-3)
    with pytest.raises(ValueError, match=re.escape(
            "param_groups[0]['lr'] is 0.001 here, cosine(0.001, 100) in the checkpoint")):
        dst.load_state_dict(src.state_dict())


def test_other_schedule_is_refused_and_strict_false_warns_and_keeps_ours(tmp_path):
    src = _trained(lr=S.cosine(1e-3, 100))
    src.save(tmp_path / "c.npz")
    dst = fastlr.Adam(_named(), lr=S.cosine(5e-3, 10))
    snap = _snapshot(dst)
    with pytest.raises(ValueError, match=re.escape(
            "fastlr.Adam.load: the checkpoint recorded other hyperparameters than this "
            "optimizer: param_groups[0]['lr'] is cosine(0.005, 10) here, cosine(0.001, 100) "
            "in the checkpoint")):
        dst.load(tmp_path / "c.npz")
    assert _snapshot(dst) == snap
    with pytest.warns(UserWarning, match=r"kept this optimizer's values"):
        dst.load(tmp_path / "c.npz", strict=False)
    assert dst.steps == 3
    assert dst.param_groups[0]["lr"] == S.cosine(5e-3, 10)
    assert dst.next_lr == [S.cosine(5e-3, 10)(3)]


def test_same_schedule_restores_the_step_count():
    src = _trained(lr=S.warmup_cosine(1e-3, warmup_steps=5, total_steps=100))
    dst = fastlr.Adam(_named(), lr=src.param_groups[0]["lr"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dst.load_state_dict(src.state_dict())
    assert dst.steps == 3 and dst.next_lr == src.next_lr
    g = _grads(7)
    src.step(g)
    dst.step(g)
    assert _snapshot(dst)["state"] == _snapshot(src)["state"]


def _hyper_cases():
    """(class, hyperparameter key, the value saved, the value of the loading optimizer)
    for every hyperparameter of every class: each schedulable one as a constant vs a
    schedule, and every other one as two values."""
    cases = []
    for name, cls in CLASSES.items():
        opt = cls([np.zeros(2)])
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        for key, value in group.items():
            if key in cls._row.fixed:
                continue                    # AdamW's decoupled_weight_decay: no argument
            if key in cls._pairs:           # betas, etas, step_sizes: either slot
                b1, b2 = value
                cases.append((name, key, {key: (b1, b2)}, {key: (S.cosine(b1, 10), b2)}))
                cases.append((name, key, {key: (b1, b2)}, {key: (b1, S.constant(b2))}))
                cases.append((name, key, {key: (b1, b2)},
                              {key: (b1, b2 * 1.5 if b2 > 1 else b2 / 2)}))
            elif key in cls._flags:
                other = not value
                if name == "SGD" and key == "nesterov":
                    continue        # needs momentum and no dampening: below
                cases.append((name, key, {key: value}, {key: other}))
            elif key in cls._schedulable:
                cases.append((name, key, {key: 0.05}, {key: S.cosine(0.05, 10)}))
            else:
                cases.append((name, key, {key: value}, {key: value + 0.05 if value < 0.5
                                                        else value / 2}))
    cases.append(("SGD", "nesterov", {"momentum": 0.9, "nesterov": False},
                  {"momentum": 0.9, "nesterov": True}))
    return cases


HYPER_CASES = _hyper_cases()


@pytest.mark.parametrize("cls_name, key, saved, here", HYPER_CASES,
                         ids=[f"{c}-{k}-{i}" for i, (c, k, _, _) in enumerate(HYPER_CASES)])
def test_every_hyperparameter_is_checked(cls_name, key, saved, here):
    cls = CLASSES[cls_name]
    src = cls([np.ones(2)], **saved)
    src.step([np.full(2, 0.5)])
    sd = src.state_dict()
    dst = cls([np.ones(2)], **here)
    # the buffers the options need (amsgrad, centered, momentum add some): as dst's, so
    # that only the hyperparameters differ
    st = sd["state"][0]
    for k in [k for k in st if k not in ("step", "mu_product") and k not in dst.state[0]]:
        del st[k]
    for k, v in dst.state[0].items():
        st.setdefault(k, np.zeros_like(v) if isinstance(v, np.ndarray) else v)
    snap = _snapshot(dst)
    with pytest.raises(ValueError, match=re.escape(f"param_groups[0][{key!r}] is ")):
        dst.load_state_dict(sd)
    assert _snapshot(dst) == snap
    callables = any(callable(v) and not isinstance(v, S.Schedule)
                    for v in ([here[key]] if key not in cls._pairs else here[key]))
    if not callables:
        with pytest.warns(UserWarning, match=re.escape(f"param_groups[0][{key!r}]")):
            dst.load_state_dict(sd, strict=False)
        assert dst.steps == 1
        assert repr(dst.param_groups[0][key]) == repr(cls([np.ones(2)], **here)
                                                      .param_groups[0][key])


def test_a_python_callable_is_kept_without_a_check():
    src = _trained(lr=lambda t: 1e-3)
    dst = fastlr.Adam(_named(), lr=lambda t: 2e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dst.load_state_dict(src.state_dict())
    assert dst.next_lr == [2e-3]
    with pytest.raises(ValueError, match="is 0.001 here"):
        fastlr.Adam(_named(), lr=1e-3).load_state_dict(src.state_dict())


def test_torch_style_round_trip_and_own_snapshot_rollback():
    a = _trained(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
    b = fastlr.Adam(_named(), lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
    b.load_state_dict(a.state_dict())
    assert _snapshot(b)["state"] == _snapshot(a)["state"]
    # the optimizer's own in-memory snapshot is a rollback: hyperparameters come back too
    sd = a.state_dict()
    a.param_groups[0]["lr"] = 0.5
    a.step(_grads(5))
    a.load_state_dict(sd)
    assert a.param_groups[0]["lr"] == 0.01 and a.steps == 3
    # ... but not for another optimizer, nor through a file
    b.param_groups[0]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"'lr'\] is 0.5 here, 0.01 in the checkpoint"):
        b.load_state_dict(sd)


def test_strict_must_be_a_flag(tmp_path):
    opt = _trained()
    with pytest.raises(TypeError, match="strict"):
        opt.load_state_dict(opt.state_dict(), strict="no")
    opt.save(tmp_path / "c.npz")
    with pytest.raises(TypeError, match="strict"):
        opt.load(tmp_path / "c.npz", strict=None)


# ---------------------------------------------------------------------------------------
# 4. repr
# ---------------------------------------------------------------------------------------
def test_repr_shows_groups_hyperparameters_schedules_and_names():
    named = _named()
    opt = fastlr.SGD([{"params": dict(list(named.items())[:2]), "lr": S.cosine(0.1, 10)},
                      {"params": dict(list(named.items())[2:])}], lr=0.01, momentum=0.9,
                     max_grad_norm=1.0)
    text = repr(opt)
    assert text.startswith("SGD (\nParameter Group 0\n    params: 2 arrays ('fc.weight', "
                           "'fc.bias')\n")
    assert "    lr: cosine(0.1, 10)\n" in text and "    momentum: 0.9\n" in text
    assert "Parameter Group 1\n    params: 2 arrays ('out.weight', 'out.bias')\n    " \
           "dampening: 0.0\n    lr: 0.01\n" in text
    assert text.endswith("max_grad_norm=1.0\n)")
    assert repr(fastlr.Adam([np.zeros(2)])).startswith("Adam (\nParameter Group 0\n    params: "
                                                       "1 array\n    amsgrad: False\n")


# ---------------------------------------------------------------------------------------
# 5. EMA over named params
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["dict", "pairs"])
def test_ema_named_params_average_like_the_list(form):
    named, plain = _named(), _named()
    ema = fastlr.EMA(named if form == "dict" else list(named.items()), decay=0.9)
    ref = fastlr.EMA(list(plain.values()), decay=0.9)
    assert ema.names == list(NAMES) and ref.names is None
    for k in range(3):
        for n, g in _grads(k).items():
            named[n] += g
            plain[n] += g
        ema.update()
        ref.update()
    assert [a.tobytes() for a in ema.averaged] == [a.tobytes() for a in ref.averaged]
    out = {n: np.zeros(s) for n, s in zip(NAMES, SHAPES)}
    ema.copy_to(_shuffled(out, 3))                  # a dict, by name
    for n, a in zip(NAMES, ema.averaged):
        assert out[n].tobytes() == a.tobytes()
    assert "'fc.weight', 'fc.bias'" in repr(ema)


def test_ema_named_errors():
    with pytest.raises(ValueError, match="names 'w' twice"):
        fastlr.EMA([("w", np.zeros(2)), ("w", np.zeros(3))])
    with pytest.raises(TypeError, match="param names must be strings"):
        fastlr.EMA({1: np.zeros(2)})
    ema = fastlr.EMA(_named())
    out = {n: np.zeros(s) for n, s in zip(NAMES, SHAPES)}
    del out["fc.bias"]
    with pytest.raises(ValueError, match="missing from params: 'fc.bias'"):
        ema.copy_to(out)
    with pytest.raises(TypeError, match="params is a dict but the params have no names"):
        fastlr.EMA([np.zeros(2)]).copy_to({"w": np.zeros(2)})


@pytest.mark.parametrize("via_file", [False, True])
def test_ema_checkpoint_records_and_checks_names(via_file, tmp_path):
    src = fastlr.EMA(_named(), decay=0.9)
    src.update()
    path = tmp_path / "ema.npz"
    src.save(path)
    what = path if via_file else src.state_dict()
    assert src.state_dict()["names"] == list(NAMES)
    renamed = {("fc.b" if n == "fc.bias" else n): a for n, a in _named(seed=1).items()}
    dst = fastlr.EMA(renamed, decay=0.9)
    load = dst.load if via_file else dst.load_state_dict
    before = [a.tobytes() for a in dst.averaged]
    with pytest.raises(ValueError, match="missing from the checkpoint: 'fc.b', unexpected "
                                         "in the checkpoint: 'fc.bias'"):
        load(what)
    assert [a.tobytes() for a in dst.averaged] == before and dst.updates == 0
    with pytest.warns(UserWarning, match="loaded by position"):
        load(what, strict=False)
    assert dst.updates == 1
    # unnamed <-> named: by position
    fastlr.EMA(list(_named().values()), decay=0.9).load_state_dict(src.state_dict())
    unnamed = fastlr.EMA(list(_named().values()), decay=0.9)
    fastlr.EMA(_named(), decay=0.9).load_state_dict(unnamed.state_dict())
    same = fastlr.EMA(_named(seed=2), decay=0.9)
    load = same.load if via_file else same.load_state_dict
    load(what)
    assert [a.tobytes() for a in same.averaged] == [a.tobytes() for a in src.averaged]


def test_zero_d_arrays_are_stored_as_numbers():
    import fastlr
    p = [np.zeros(3)]
    opt = fastlr.Adam(p, lr=np.array(0.1), betas=(np.array(0.8), 0.9))
    assert opt.defaults["lr"] == 0.1 and type(opt.defaults["lr"]) is float
    assert opt.defaults["betas"] == (0.8, 0.9)
    opt.param_groups[0]["lr"] = np.array(0.2)
    assert type(opt.param_groups[0]["lr"]) is float
    opt.add_param_group({"params": [np.zeros(2)], "weight_decay": np.array(0.5)})
    assert type(opt.param_groups[1]["weight_decay"]) is float
    with pytest.raises(TypeError, match="lr"):
        fastlr.Adam(p, lr=np.array(True))
    opt.step([np.ones(3), np.ones(2)])
    assert fastlr.schedules.as_schedule(np.array(0.25))(0) == 0.25
