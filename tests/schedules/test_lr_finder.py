"""The learning-rate range test, ``fastlr.lr_finder.find_lr``.

What is held to what:

* suggestions land in a good-lr region found independently of the finder: analytically
  for SGD on a quadratic (converges iff lr < 2/max(a); at least halves the loss in as many
  steps as the test takes), and by short training runs on a grid of lrs for Adam on a
  logistic regression;
* the sweep: the lr each step uses is the recorded one (exp and linear rules), every group
  gets it, the debiased EMA and the divergence rule by hand, early stops;
* fastai's ``valley`` on hand-worked curves;
* restore: params (same objects), state dict arrays, counters, last_lr and the original
  hyperparameter objects are bit-identical afterwards, also when ``loss_and_grads`` or a
  step raises; a restored optimizer then trains exactly like a twin that never ran the test;
* argument errors name the argument; ``plot`` writes a real PNG and, without matplotlib,
  raises an ImportError saying how to install it.
"""

import doctest
import math
import sys

import numpy as np
import pytest

import fastlr
from fastlr import lr_finder
from fastlr import schedules as S
from fastlr.lr_finder import LRFinderResult, _valley_index, find_lr


# ---------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------
A = np.linspace(0.5, 2.0, 10)          # f(w) = 0.5 * sum(A * w**2); GD converges iff lr < 1


def quad_loss_and_grads(w):
    return lambda step: (0.5 * float(A @ (w * w)), [A * w])


def quad_relative_loss(lr, k):
    """f after k GD steps from w = 1, over f(1): each coordinate shrinks by (1 - lr*a)."""
    return float(np.sum(A * (1 - lr * A) ** (2 * k)) / np.sum(A))


def logistic_data(seed):
    rng = np.random.default_rng(seed)
    n, d = 512, 8
    x = rng.normal(size=(n, d))
    y = (x @ (2 * rng.normal(size=d)) + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    return x, y


def logistic(x, y, w, idx):
    z = x[idx] @ w
    loss = float(np.mean(np.logaddexp(0.0, z) - y[idx] * z))
    p = 0.5 * (1.0 + np.tanh(0.5 * z))           # sigmoid without overflow warnings
    return loss, [x[idx].T @ (p - y[idx]) / len(idx)]


def batch(step, n=512, size=32):
    start = (step * size) % n
    return np.arange(start, start + size)


# ---------------------------------------------------------------------------------------
# suggestions land in a good region
# ---------------------------------------------------------------------------------------
def test_quadratic_sgd_suggestions_in_the_analytic_good_region():
    n = 100
    w = np.ones(A.size)
    opt = fastlr.SGD([w], lr=0.1)
    r = find_lr(opt, quad_loss_and_grads(w), start_lr=1e-5, end_lr=10.0, num_steps=n)
    # good: converges (lr < 2/max(A) = 1) and halves f within the test's own step budget
    lo = min(lr for lr in np.logspace(-5, 0, 2001) if quad_relative_loss(lr, n) <= 0.5)
    hi = 2.0 / A.max()
    assert 1e-3 < lo < 1e-2
    assert r.stop_reason == "diverged" and len(r.lrs) < n
    assert r.lrs[-1] > hi                   # it ran past the stability limit, then stopped
    for name in ("valley", "steepest", "min_div_10"):
        assert lo <= r.suggestions[name] < hi, (name, r.suggestions[name], lo, hi)
    assert r.suggested_lr == r.suggestions["valley"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logistic_adam_suggestions_in_the_region_short_runs_find(seed):
    x, y = logistic_data(seed)
    every = np.arange(len(y))
    n_steps = 100
    grid = np.logspace(-4, 1.5, 23)
    final = []
    for lr in grid:                           # independent: plain training at fixed lrs
        w = np.zeros(x.shape[1])
        opt = fastlr.Adam([w], lr=float(lr))
        for step in range(n_steps):
            opt.step(logistic(x, y, w, batch(step))[1])
        final.append(logistic(x, y, w, every)[0])
    final = np.array(final)
    good = grid[final <= 0.5 * math.log(2.0)]   # halves the loss (from w = 0) in 100 steps
    assert good.size >= 5 and np.all(np.diff(np.flatnonzero(final <= 0.5 * math.log(2))) == 1)
    lo, hi = good.min(), good.max()
    assert final[-1] > final.min() * 3          # the top of the grid is bad: a real upper end

    w = np.zeros(x.shape[1])
    opt = fastlr.Adam([w], lr=1e-3)
    r = find_lr(opt, lambda step: logistic(x, y, w, batch(step)), start_lr=1e-5,
                end_lr=30.0, num_steps=n_steps)
    for name in ("valley", "steepest", "min_div_10"):
        assert lo <= r.suggestions[name] <= hi, (name, r.suggestions[name], lo, hi)
    assert not w.any() and opt.steps == 0


# ---------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_lr_used_by_each_step_is_the_recorded_one(mode):
    w = np.ones(3)
    b = np.ones(2, dtype=np.float32)
    opt = fastlr.SGD([{"params": [w]}, {"params": [b], "lr": S.cosine(0.5, 10)}], lr=0.1)
    seen = []

    def loss_and_grads(step):
        seen.append((step, opt.next_lr))
        return 1.0, [np.zeros(3), np.zeros(2, dtype=np.float32)]

    r = find_lr(opt, loss_and_grads, start_lr=1e-3, end_lr=2.0, num_steps=7, mode=mode)
    i = np.arange(7) / 6
    expected = (1e-3 * (2.0 / 1e-3) ** i if mode == "exp" else 1e-3 + i * (2.0 - 1e-3))
    np.testing.assert_allclose(r.lrs, expected, rtol=1e-14)
    assert r.lrs[0] == 1e-3 and math.isclose(r.lrs[-1], 2.0, rel_tol=1e-14)
    assert [s for s, _ in seen] == list(range(7))
    for (_, lrs), lr in zip(seen, r.lrs):
        assert lrs == [lr, lr]                 # every group gets the swept lr
    if mode == "linear":
        assert np.allclose(np.diff(r.lrs), np.diff(r.lrs)[0])
    assert r.stop_reason == "completed" and r.mode == mode and r.num_steps == 7


def test_smoothing_is_the_debiased_ema_and_losses_are_raw():
    raw = [3.0, 1.0, 2.0, 0.5, 0.25, 4.0, 0.1, 0.2]
    w = np.ones(1)
    opt = fastlr.SGD([w], lr=0.1)
    r = find_lr(opt, lambda s: (np.float32(raw[s]), [np.zeros(1)]), start_lr=0.01,
                end_lr=1.0, num_steps=len(raw), smooth=0.7, diverge_factor=100.0)
    avg, expected = 0.0, []
    for i, loss in enumerate(raw):
        avg = 0.7 * avg + 0.3 * loss
        expected.append(avg / (1 - 0.7 ** (i + 1)))
    np.testing.assert_array_equal(r.losses, np.float32(raw).astype(np.float64))
    np.testing.assert_allclose(r.smoothed_losses, expected, rtol=1e-6)
    assert r.smoothed_losses[0] == pytest.approx(3.0)    # debiased: not 0.3 * 3
    # smooth=0: no smoothing at all
    r0 = find_lr(opt, lambda s: (raw[s], [np.zeros(1)]), start_lr=0.01, end_lr=1.0,
                 num_steps=len(raw), smooth=0.0, diverge_factor=100.0)
    np.testing.assert_array_equal(r0.smoothed_losses, raw)


def test_stops_when_smoothed_loss_exceeds_factor_times_best():
    raw = [4.0, 2.0, 1.0, 2.0, 3.9, 4.1, 1.0, 1.0]
    w = np.ones(1)
    opt = fastlr.SGD([w], lr=0.1)
    calls = []

    def loss_and_grads(step):
        calls.append(step)
        return raw[step], [np.ones(1)]

    r = find_lr(opt, loss_and_grads, num_steps=len(raw), smooth=0.0, diverge_factor=4.0)
    # best 1.0 at step 2; 3.9 is still <= 4 * best, 4.1 is not: recorded, then stop
    assert r.stop_reason == "diverged"
    assert len(r.lrs) == len(r.losses) == len(r.smoothed_losses) == 6
    assert r.losses[-1] == 4.1 and calls == list(range(6))


def test_diverging_sweep_stops_early():
    w = np.ones(A.size)
    opt = fastlr.SGD([w], lr=0.1)
    r = find_lr(opt, quad_loss_and_grads(w), start_lr=1e-4, end_lr=1e6, num_steps=100)
    assert r.stop_reason == "diverged"
    assert 10 < len(r.lrs) < 100
    assert np.all(np.isfinite(r.smoothed_losses))
    assert r.smoothed_losses[-1] > 4 * r.smoothed_losses.min()
    assert np.all(r.smoothed_losses[:-1] <= 4 * np.minimum.accumulate(r.smoothed_losses)[:-1])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_and_is_left_out_of_suggestions(bad):
    w = np.ones(1)
    opt = fastlr.SGD([w], lr=0.1)
    curve = [5.0 - 0.1 * i for i in range(30)]
    r = find_lr(opt, lambda s: (bad if s == 25 else curve[s], [np.zeros(1)]),
                num_steps=30, smooth=0.5)
    assert r.stop_reason == "non-finite loss"
    assert len(r.lrs) == 26 and not math.isfinite(r.losses[-1])
    assert np.isnan(r.smoothed_losses[-1]) and np.all(np.isfinite(r.smoothed_losses[:-1]))
    assert all(v is not None and math.isfinite(v) for v in r.suggestions.values())
    assert r.suggestions["min_div_10"] == pytest.approx(r.lrs[20] / 10)   # last kept point


def test_negative_losses_do_not_stop_the_sweep():
    w = np.ones(1)
    opt = fastlr.SGD([w], lr=0.1)
    r = find_lr(opt, lambda s: (-1.0 - 0.01 * s, [np.zeros(1)]), num_steps=20)
    assert r.stop_reason == "completed" and len(r.lrs) == 20


# ---------------------------------------------------------------------------------------
# fastai's valley and the other suggestions
# ---------------------------------------------------------------------------------------
def fastai_valley_by_hand():
    # (losses, index fastai's valley returns), worked by hand from its code
    return [
        # lds = 1,2,3,4,5,4,3: max_end 4, max_start 4-5 = -1, sections 5/3 -> -1+1+0 = 0
        ([5, 4, 3, 2, 1, 2, 3], 0),
        # longest run 9..1 (indices 2..10): max_end 10, lds 9, max_start 1,
        # sections 3 -> 1 + 3 + 1 = 5
        ([1, 2, 9, 8, 7, 6, 5, 4, 3, 2, 1, 5], 5),
        # flat then decreasing: equal values do not extend the run; lds 1,1,1,1,2,3,4,4,4,
        # max_end 6, max_start 6-4 = 2, sections 4/3 -> 2 + 1 + 0 = 3
        ([3, 3, 3, 3, 2, 1, 0, 0, 0], 3),
        # never decreasing: lds all 1, idx 0
        ([1, 2, 3, 4], 0),
        # fastai would return index -1 (the last lr) here; clamped to 0
        ([2, 1, 3, 4], 0),
        # a decreasing subsequence, not a contiguous run: 10,8,6,4,2 with bumps;
        # max_end 7 (lds 5), max_start 2, sections 5/3 -> 2 + 1 + 0 = 3
        ([10, 8, 9, 6, 7, 4, 5, 2, 3], 3),
    ]


@pytest.mark.parametrize("losses,idx", fastai_valley_by_hand())
def test_valley_matches_fastai_by_hand(losses, idx):
    assert _valley_index(losses) == idx


def test_suggestions_use_fastai_window_and_rules():
    n = 40
    lrs = np.logspace(-4, 0, n)
    smoothed = np.concatenate([np.linspace(5, 1, 30), np.linspace(1.2, 9, 10)])
    smoothed[12] = 4.0        # a steep drop inside the window (the window starts at 4)
    r = LRFinderResult(lrs, smoothed, smoothed, num_steps=n, mode="exp",
                       stop_reason="completed")
    win_l, win_s = lrs[4:n - 5], smoothed[4:n - 5]
    assert r.suggestions["min_div_10"] == pytest.approx(lrs[29] / 10)
    slope = np.gradient(win_s, np.log10(win_l))
    assert r.suggestions["steepest"] == win_l[np.argmin(slope)]
    assert r.suggestions["valley"] == win_l[_valley_index(win_s.tolist())]
    # a short record (fewer than 3 points left after trimming) uses all of it
    short = LRFinderResult(lrs[:4], smoothed[:4], smoothed[:4], num_steps=n, mode="exp",
                           stop_reason="diverged")
    assert short.suggestions["min_div_10"] == pytest.approx(lrs[3] / 10)
    one = LRFinderResult(lrs[:1], smoothed[:1], smoothed[:1], num_steps=n, mode="exp",
                         stop_reason="diverged")
    assert one.suggestions["steepest"] is None and one.suggested_lr == lrs[0]
    assert "steepest=None" in repr(one)


def test_repr_summarises():
    w = np.ones(A.size)
    r = find_lr(fastlr.SGD([w]), quad_loss_and_grads(w), start_lr=1e-5, end_lr=10.0)
    text = repr(r)
    assert text.startswith("LRFinderResult(")
    assert f"{len(r.lrs)}/100 steps" in text and "diverged" in text
    assert f"suggested_lr={r.suggested_lr:.3g}" in text and "valley=" in text


# ---------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------
def build_optimizer(kind):
    """A non-trivial optimizer: several groups, float32 and float64, flat-buffer spans,
    a schedule and a Python callable as hyperparameters, a few steps already taken."""
    rng = np.random.default_rng(7)
    flat, (w1, b1) = fastlr.flat_buffer([(4, 3), (3,)], np.float32)
    flat[...] = rng.normal(size=flat.size).astype(np.float32)
    w2 = rng.normal(size=(5,))
    w3 = np.asfortranarray(rng.normal(size=(2, 3)))
    sched = S.warmup_cosine(0.05, warmup_steps=3, total_steps=50)
    callable_lr = lambda t: 0.01 / (1 + t)              # noqa: E731
    if kind == "adam":
        opt = fastlr.Adam([{"params": [w1, b1], "lr": sched, "amsgrad": True},
                           {"params": [w2], "lr": np.float32(0.02), "weight_decay": 0.1},
                           {"params": [w3], "lr": callable_lr}], lr=1e-3)
    elif kind == "sgd":        # fresh momentum buffers with dampening: torch's first step
        opt = fastlr.SGD([{"params": [w1, b1], "lr": sched},
                          {"params": [w2, w3], "lr": callable_lr}], lr=0.1, momentum=0.9,
                         dampening=0.5)
    else:
        opt = fastlr.RMSprop([{"params": [w1, b1], "lr": sched, "centered": True},
                              {"params": [w2, w3], "momentum": S.cosine(0.9, 20)}], lr=0.01)
    params = [w1, b1, w2, w3]
    warm = 0 if kind == "sgd" else 3
    for t in range(warm):
        opt.step(grads_for(params, t))
    return opt, params


def grads_for(params, t):
    rng = np.random.default_rng(1000 + t)
    out = []
    for p in params:
        g = np.empty_like(p)                   # the param's dtype and memory order
        g[...] = rng.normal(size=p.shape)
        out.append(g)
    return out


def snapshot(opt, params):
    sd = opt.state_dict()
    return {
        "ids": [id(p) for p in params],
        "params": [(p.dtype, p.shape, p.flags.f_contiguous, p.tobytes(order="A"))
                   for p in params],
        "steps": opt.steps,
        "counts": [st["step"] for st in opt.state.values()],
        "state": {i: {k: (v if k == "step" else (v.dtype, v.tobytes())) for k, v in st.items()}
                  for i, st in sd["state"].items()},
        "sd_groups": sd["param_groups"],
        "groups": [[(k, v) for k, v in g.items() if k != "params"] for g in opt.param_groups],
        "group_params": [[id(p) for p in g["params"]] for g in opt.param_groups],
        "last_lr": opt.last_lr,
        "next_lr": opt.next_lr,
    }


def assert_same(before, after):
    for key in before:
        if key != "groups":
            assert before[key] == after[key], key
    for g_before, g_after in zip(before["groups"], after["groups"]):
        assert [k for k, _ in g_before] == [k for k, _ in g_after]
        for (k, v0), (_, v1) in zip(g_before, g_after):
            assert v1 is v0, (k, v0, v1)         # the original objects, schedules included


def loss_of(params):
    return lambda step: (float(sum(np.sum(p.astype(np.float64) ** 2) for p in params)),
                         [(2 * p).astype(p.dtype) for p in params])


@pytest.mark.parametrize("kind", ["adam", "sgd", "rmsprop"])
def test_restore_is_bit_identical_and_training_continues_like_a_twin(kind):
    opt, params = build_optimizer(kind)
    twin, twin_params = build_optimizer(kind)
    before = snapshot(opt, params)
    r = find_lr(opt, loss_of(params), start_lr=1e-4, end_lr=10.0, num_steps=30)
    assert len(r.lrs) >= 5                    # it really trained (and moved the params)
    assert_same(before, snapshot(opt, params))
    for t in range(5):                        # a twin that never ran the test: same bits
        opt.step(grads_for(params, 50 + t))
        twin.step(grads_for(twin_params, 50 + t))
    for p, q in zip(params, twin_params):
        assert p.tobytes() == q.tobytes()
    assert opt.last_lr == twin.last_lr and opt.steps == twin.steps


def test_restore_keeps_last_lr_after_a_manual_lr_write():
    w = np.ones(3)
    opt = fastlr.SGD([w], lr=0.1)
    opt.step([np.ones(3)])
    opt.param_groups[0]["lr"] = 0.25          # last_lr is still the 0.1 the step used
    find_lr(opt, lambda s: (float(w @ w), [2 * w]), num_steps=10)
    assert opt.last_lr == [0.1] and opt.next_lr == [0.25]
    assert opt.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize("where", ["loss_and_grads", "step"])
def test_restore_when_the_sweep_raises(where):
    opt, params = build_optimizer("adam")
    before = snapshot(opt, params)
    good = loss_of(params)

    class Boom(Exception):
        pass

    def loss_and_grads(step):
        if step == 6:
            if where == "loss_and_grads":
                raise Boom("batch 6 is broken")
            return 1.0, [np.ones(1)] * len(params)         # optimizer.step rejects these
        return good(step)

    with pytest.raises(Boom if where == "loss_and_grads" else (ValueError, TypeError)):
        find_lr(opt, loss_and_grads, start_lr=1e-3, end_lr=1.0, num_steps=20)
    assert_same(before, snapshot(opt, params))


def test_bad_return_from_loss_and_grads_raises_and_restores():
    opt, params = build_optimizer("sgd")
    before = snapshot(opt, params)
    with pytest.raises(TypeError, match="loss_and_grads"):
        find_lr(opt, lambda s: 1.0, num_steps=5)
    with pytest.raises(TypeError, match="scalar loss"):
        find_lr(opt, lambda s: (np.ones(2), [p for p in params]), num_steps=5)
    assert_same(before, snapshot(opt, params))


def test_restore_false_keeps_training_but_not_the_swept_lr():
    opt, params = build_optimizer("adam")
    sched = opt.param_groups[0]["lr"]
    before = [p.copy() for p in params]
    r = find_lr(opt, loss_of(params), start_lr=1e-4, end_lr=1.0, num_steps=10,
                restore=False)
    assert opt.steps == 3 + len(r.lrs) - (r.stop_reason != "completed")
    assert any(not np.array_equal(p, q) for p, q in zip(params, before))
    assert opt.param_groups[0]["lr"] is sched


@pytest.mark.parametrize("restore", [True, False])
def test_after_a_plateau_cut_the_sweep_runs_each_lr_as_written_and_keeps_the_cut(restore):
    """The swept lr is the lr of each step (a written lr: not scaled by the plateau's
    factor); the factor is put back with the groups, with or without restore."""
    w = np.ones(3)
    opt = fastlr.SGD([w], lr=1.0)
    plateau = fastlr.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    plateau.step(1.0)
    plateau.step(2.0)
    assert opt.next_lr == [0.5]
    seen = []

    def loss_and_grads(step):
        seen.append(opt.next_lr[0])
        return 1.0, [np.zeros(3)]

    r = find_lr(opt, loss_and_grads, start_lr=1e-3, end_lr=1.0, num_steps=5, restore=restore)
    assert seen == list(r.lrs)
    assert plateau.scales == [0.5] and opt.next_lr == [0.5]
    assert opt.state_dict()["lr_scale"] == [0.5]


# ---------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"start_lr": 0.0}, ValueError, "start_lr"),
    ({"start_lr": -1e-3}, ValueError, "start_lr"),
    ({"start_lr": math.nan}, ValueError, "start_lr"),
    ({"start_lr": math.inf}, ValueError, "start_lr"),
    ({"start_lr": "1e-3"}, TypeError, "start_lr"),
    ({"end_lr": 1e-7}, ValueError, "end_lr"),
    ({"start_lr": 1.0, "end_lr": 0.5}, ValueError, "end_lr"),
    ({"end_lr": math.inf}, ValueError, "end_lr"),
    ({"num_steps": 1}, ValueError, "num_steps"),
    ({"num_steps": 10.0}, TypeError, "num_steps"),
    ({"num_steps": True}, TypeError, "num_steps"),
    ({"mode": "log"}, ValueError, "mode"),
    ({"smooth": 1.0}, ValueError, "smooth"),
    ({"smooth": -0.1}, ValueError, "smooth"),
    ({"diverge_factor": 1.0}, ValueError, "diverge_factor"),
    ({"diverge_factor": None}, TypeError, "diverge_factor"),
])
def test_bad_arguments(kwargs, error, match):
    w = np.ones(2)
    opt = fastlr.SGD([w])
    with pytest.raises(error, match=match):
        find_lr(opt, lambda s: (0.0, [w]), **kwargs)
    assert opt.steps == 0


def test_bad_optimizer_and_callable():
    with pytest.raises(TypeError, match="optimizer"):
        find_lr(object(), lambda s: (0.0, []))
    with pytest.raises(TypeError, match="loss_and_grads"):
        find_lr(fastlr.SGD([np.ones(2)]), None)
    with pytest.raises(TypeError):
        find_lr(fastlr.SGD([np.ones(2)]), lambda s: (0.0, []), 1e-5)   # keyword-only


def test_numpy_integer_num_steps_is_accepted():
    w = np.ones(2)
    r = find_lr(fastlr.SGD([w]), lambda s: (1.0, [np.zeros(2)]), num_steps=np.int64(4))
    assert len(r.lrs) == 4


def test_module_doctest():
    result = doctest.testmod(lr_finder, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------
@pytest.fixture
def result():
    w = np.ones(A.size)
    return find_lr(fastlr.SGD([w]), quad_loss_and_grads(w), start_lr=1e-5, end_lr=10.0)


def test_plot_writes_a_png(result, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = tmp_path / "x.png"
    fig = result.plot(path=path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("valley: ") for t in labels)
    assert any(t.startswith("steepest: ") for t in labels)


def test_plot_on_given_axes_linear_scale(result, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        assert result.plot(ax=ax, log=False) is fig
        assert ax.get_xscale() == "linear" and len(ax.lines) >= 3
        result.plot(ax=ax, path=tmp_path / "y.png")
        assert (tmp_path / "y.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert plt.fignum_exists(fig.number)      # not ours to close
    finally:
        plt.close(fig)


def test_plot_without_matplotlib_says_how_to_install(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'fastlr\[plot\]'"):
        result.plot()


def test_import_does_not_import_matplotlib(tmp_path):
    import subprocess

    code = ("import sys, fastlr.lr_finder; "
            "sys.exit(3 if 'matplotlib' in sys.modules else 0)")
    # run outside the clone: at its top, `python -c` would import the source tree
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr or "importing fastlr imported matplotlib"
