"""The .npz codec of the optimizers outside the table (fastlr.optim.checkpoint's
write_state_tree / read_state_tree, behind their save / load)."""

import math

import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr.optim.checkpoint import read_state_tree, write_state_tree


def _same(a, b):
    if isinstance(a, np.generic):       # NumPy scalars are stored as Python numbers
        a = a.item()
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_round_trip_keeps_types(tmp_path):
    sd = {"format": "x-1", "steps": 7, "flag": True, "none": None, "nan": float("nan"),
          "inf": -math.inf, "betas": (0.9, 0.999), "names": ["a", "b"],
          "state": {0: {"m": np.arange(6.0).reshape(2, 3), "step": 3},
                    5: {"m": np.zeros((0,), np.float32), "hist": [np.ones(2), np.ones(1)]}},
          "scalar0d": np.array(2.5), "f32": np.float32(0.25).item(),
          "nested": {"$array": "not a tag here: two keys", "x": 1},
          "tagged_key": {"$tuple": 1}}
    path = tmp_path / "t.npz"
    write_state_tree(sd, path)
    got = read_state_tree(path, "test", "tree")
    _same(sd, got)
    # the arrays come back in their order and layout
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    write_state_tree({"f": f}, path)
    np.testing.assert_array_equal(read_state_tree(path, "test", "tree")["f"], f)


def test_schedules_are_recorded_by_repr(tmp_path):
    s = schedules.cosine(0.1, 10)
    path = tmp_path / "s.npz"
    write_state_tree({"lr": s}, path)
    assert read_state_tree(path, "t", "tree") == {"lr": {"schedule": repr(s)}}


def test_unsavable_entry_writes_nothing(tmp_path):
    path = tmp_path / "u.npz"
    with pytest.raises(TypeError, match="of type object cannot be saved"):
        write_state_tree({"x": object()}, path)
    assert not path.exists()


def test_other_files_are_refused_by_name(tmp_path):
    adam = tmp_path / "adam.npz"
    fastlr.Adam([np.ones(2)]).save(adam)          # the table's own format
    with pytest.raises(ValueError, match=r"fastlr\.Muon\.load: .* is not a fastlr Muon "
                                         r"checkpoint \(ValueError: its format is"):
        fastlr.Muon([np.ones((2, 2))]).load(adam)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.ones(2))
    with pytest.raises(ValueError, match=r"fastlr\.Prodigy\.load: .* is not a fastlr "
                                         r"Prodigy checkpoint \(KeyError"):
        fastlr.Prodigy([np.ones(2)]).load(plain)


def test_each_class_loads_exactly_its_state_dict(tmp_path):
    # save writes state_dict() and load hands back an equal dict (types kept), for every
    # optimizer that uses this format
    rng = np.random.default_rng(0)
    makers = {
        "Muon": lambda ps: fastlr.Muon(ps, lr=schedules.cosine(0.02, 10)),
        "Adafactor": lambda ps: fastlr.Adafactor(ps),
        "Prodigy": lambda ps: fastlr.Prodigy(ps, lr=schedules.linear(1.0, total_steps=3)),
        "ScheduleFreeAdamW": lambda ps: fastlr.ScheduleFreeAdamW(ps, warmup_steps=2),
    }
    for name, make in makers.items():
        ps = [rng.standard_normal((3, 4)), rng.standard_normal((4, 2))]
        opt = make(ps)
        if hasattr(opt, "train"):
            opt.train()
        for _ in range(3):
            opt.step([rng.standard_normal(p.shape) for p in ps])
        path = tmp_path / f"{name}.npz"
        opt.save(path)
        got = read_state_tree(path, "t", "tree")
        sd = opt.state_dict()
        assert set(got) == set(sd), name
        _same(sd["state"], got["state"])
    # LBFGS: the closure-driven step
    w = np.zeros(3)
    a = rng.standard_normal((5, 3))
    b = rng.standard_normal(5)

    def closure():
        r = a @ w - b
        return float(r @ r), [2 * a.T @ r]

    opt = fastlr.LBFGS([w], max_iter=4, history_size=3)
    opt.step(closure)
    opt.save(tmp_path / "lbfgs.npz")
    _same(opt.state_dict()["state"], read_state_tree(tmp_path / "lbfgs.npz", "t", "t")["state"])
