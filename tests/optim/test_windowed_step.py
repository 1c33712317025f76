"""A step applied in element windows (fastlr.distributed's overlapped step) gives the bits of
one ``step``, counts once, and guards its lock and its arguments."""

import numpy as np
import pytest

import fastlr
from fastlr import schedules
from fastlr.optim.stepping import WindowedStep, supports_windows

SHAPES = [(100, 7), (3000,), (5,)]
TABLE = ["SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adagrad", "Adadelta", "Adamax", "Lion",
         "Rprop", "ASGD", "RMSprop"]
EXTRA = {"SGD": dict(momentum=0.9, nesterov=True), "RMSprop": dict(momentum=0.5, centered=True),
         "AdamW": dict(amsgrad=True), "Adam": dict(state_dtype="bfloat16")}


def _pair(name, dtype):
    out = []
    for _ in range(2):
        flat, views = fastlr.flat_buffer(SHAPES, dtype=dtype)
        flat[:] = np.random.default_rng(0).standard_normal(flat.size)
        lr = 0.01 if name == "Rprop" else schedules.cosine(0.01, 20)
        kw = dict(EXTRA.get(name, {}))
        if dtype == np.float64:
            kw.pop("state_dtype", None)
        opt = getattr(fastlr, name)([{"params": views[:2]}, {"params": views[2:], "lr": 0.1}],
                                    lr=lr, **kw)
        out.append((flat, opt))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", TABLE)
def test_windows_give_the_bits_of_one_step(name, dtype):
    (flat_a, a), (flat_b, b) = _pair(name, dtype)
    assert supports_windows(b)
    rng = np.random.default_rng(1)
    for t in range(6):
        g = rng.standard_normal(flat_a.size).astype(dtype)
        a.step(g)
        w = b._windowed_step(g)
        assert w.size == flat_b.size
        cuts = [0, *np.sort(rng.integers(0, g.size, 5)), g.size]
        for i in rng.permutation(len(cuts) - 1):      # any order, empty windows too
            w.run(int(cuts[i]), int(cuts[i + 1]))
        w.end()
        assert np.array_equal(flat_a, flat_b), (name, t)
    assert a.steps == b.steps == 6
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    for i in sa:
        for k in sa[i]:
            assert np.array_equal(sa[i][k], sb[i][k]), (i, k)
    assert a.last_lr == b.last_lr


def test_windows_hold_the_lock_and_check_their_arguments():
    (flat, opt), _ = _pair("Adam", np.float32)
    g = np.ones(flat.size, np.float32)
    w = opt._windowed_step(g)
    with pytest.raises(RuntimeError, match="another thread"):
        opt.step(g)
    with pytest.raises(ValueError, match="outside"):
        w.run(0, flat.size + 1)
    with pytest.raises(ValueError, match="outside"):
        w.run(5, 4)
    w.abandon()                 # releases the lock, counts nothing, forgets the grads
    assert opt.steps == 0
    with pytest.raises(RuntimeError, match="without begin_windows"):
        opt._engine.run_window(0, 1, 1)
    opt.step(g)
    assert opt.steps == 1
    with pytest.raises(TypeError, match="dtype"):
        opt._windowed_step(g.astype(np.float64))
    opt.step(g)                 # a refused start leaves the lock free
    w = opt._windowed_step(g)
    w.run(0, 10)
    w.end()
    with pytest.raises(RuntimeError, match="without begin_windows"):     # once only
        opt._engine.end_windows()
    opt._windowed_step(g).abandon()
    opt.step(g)                 # a plain step ends any windowed one
    with pytest.raises(RuntimeError, match="without begin_windows"):
        opt._engine.run_window(0, 1, 1)


def test_only_element_wise_engine_steps_support_windows():
    w16 = np.ones(8, np.float16)
    assert not supports_windows(fastlr.Adam([w16], lr=0.1))        # 16-bit params: masters
    assert not supports_windows(fastlr.SparseAdam([np.ones((4, 3))], lr=0.1))
    with pytest.raises(TypeError, match="cannot step in windows"):
        WindowedStep(fastlr.Adam([w16], lr=0.1), np.ones(8, np.float32))


def test_optimizers_without_the_engine_do_not_support_windows():
    assert not supports_windows(fastlr.Adafactor([np.ones((4, 3))], lr=0.1))
    assert not supports_windows(fastlr.LBFGS([np.ones(3)], lr=0.1))


@pytest.mark.parametrize("option", [dict(max_grad_norm=0.1), dict(skip_nonfinite=True)])
def test_windows_refuse_the_optimizers_own_clipping_and_skipping(option):
    x = np.zeros(3)
    opt = fastlr.SGD([x], lr=1.0, **option)
    with pytest.raises(ValueError, match="max_grad_norm.*skip_nonfinite"):
        opt._windowed_step(np.array([10.0, np.nan, 0.0]))
    assert np.array_equal(x, np.zeros(3)) and opt.steps == 0
    opt.step(np.array([1.0, 1.0, 1.0]))        # the lock was released
    assert opt.steps == 1


def test_an_ended_windowed_step_cannot_drive_the_next():
    x = np.zeros(6)
    opt = fastlr.SGD([x], lr=1.0)
    a = opt._windowed_step(np.ones(6))
    a.run(0, 6)
    a.end()
    b = opt._windowed_step(np.full(6, 2.0))
    for misuse in (lambda: a.run(0, 3), a.end):
        with pytest.raises(RuntimeError, match="has ended"):
            misuse()
    b.run(0, 6)
    b.end()
    assert np.array_equal(x, np.full(6, -3.0))
    assert opt.steps == 2 and opt.state[0]["step"] == 2


def test_next_lr_does_not_reconfigure_under_an_open_step():
    """Changing a group's lr marks the optimizer for reconfiguring; ``next_lr`` would do it,
    which under a step in windows would swap the groups the open step applies. It raises
    the busy error instead, and reconfigures once the step has ended."""
    (flat, opt), _ = _pair("Adam", np.float32)
    g = np.ones(flat.size, np.float32)
    w = opt._windowed_step(g)
    w.run(0, flat.size // 2)
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(RuntimeError, match=r"Adam\.next_lr: the optimizer is being stepped"):
        opt.next_lr
    w.run(flat.size // 2, flat.size)
    w.end()
    assert opt.next_lr[1] == 0.5
    assert opt.last_lr[1] == 0.1       # the open step applied the groups it started with
