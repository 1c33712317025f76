"""fastlr.LBFGS against torch.optim.LBFGS 2.13, its checkpoints and its argument checks.

1. Parity: a least-squares problem (a 2-D weight, Fortran-ordered in one variant, and a
   bias: two params of different shapes) and the Rosenbrock function, float64 and float32,
   100 ``step`` calls in a row, every option torch's own tests exercise (default, ``lr``, a
   0-d array lr as torch's "Tensor lr", ``tolerance_grad``, ``line_search_fn="strong_wolfe"``)
   and more (``max_iter``, ``max_eval``, ``history_size``, ``tolerance_change``). Both sides
   get the same grads from one NumPy function, so only the optimizers are compared: the
   params after every step, the returned losses and the state at the end (counters,
   ``t``, ``H_diag``, history length, ``d``).

   float64: max |fastlr - torch| <= 1e-10 * max(1, max|p|) after every step (in practice
   ~1e-13: torch fuses its axpys and MKL orders its dot products its own way, so the bits
   differ by rounding); float32: 1e-4 * max(1, max|p|). L-BFGS feeds its own rounding back
   (the history pairs are differences of nearly equal grads), so on a long run the bound
   adds ten times the run's measured sensitivity to rounding at that step: how far torch
   itself moves when its start is nudged by 4 ulp and (float32) how far torch's float32 run
   is from its float64 run. In float64 that term is below 1e-12 except late in the
   Rosenbrock runs with a small lr (1400 iterations; up to ~1e-9); in float32 it is up to
   a few 1e-3. The first step's term must be below 1e-12 (float64) and 1e-4 (float32), so
   the first step is always held to about the plain bound. A wrong update rule is off by
   orders of magnitude more: changing H_diag or the step length by 0.1% fails most cases.
2. Named params, F-contiguous params and a dict of grads give the same bits as the plain
   run; several params of different shapes.
3. Checkpoints: ``state_dict``/``load_state_dict`` and ``save``/``load`` resume bit for bit;
   a differing hyperparameter or name raises naming it (``strict=False`` warns); a rollback
   to the optimizer's own snapshot restores its hyperparameters; bad state dicts and files
   raise and change nothing.
4. Errors: construction arguments (TypeError/ValueError naming the argument, message
   starting ``fastlr.LBFGS``), bad closures (validated before use; the params and state are
   restored when the closure fails mid-step), one-thread-at-a-time.
"""

import os

import numpy as np
import pytest

import fastlr

torch = pytest.importorskip("torch", reason="torch not installed; pip install torch==2.13.0")

DTYPES = [np.float64, np.float32]
N_STEPS = 100


# ---------------------------------------------------------------------------------------
# the problems: values and grads in NumPy, one function for both optimizers
# ---------------------------------------------------------------------------------------
def _least_squares(dtype):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 5)).astype(dtype)
    Y = rng.standard_normal((40, 3)).astype(dtype)

    def loss_grads(W, b):
        R = X @ W.T + b - Y                 # (40, 3)
        return 0.5 * float(np.sum(R * R)) / len(X), [(R.T @ X) / dtype(len(X)),
                                                    R.sum(axis=0) / dtype(len(X))]

    init = [np.full((3, 5), 0.1, dtype=dtype), np.zeros(3, dtype=dtype)]
    return init, loss_grads


def _rosenbrock(dtype):
    def loss_grads(x):
        a, b = x[:-1], x[1:]
        f = float(np.sum(100 * (b - a * a) ** 2 + (1 - a) ** 2))
        g = np.zeros_like(x)
        g[:-1] += -400 * a * (b - a * a) - 2 * (1 - a)
        g[1:] += 200 * (b - a * a)
        return f, [g]

    return [np.array([-1.5, 1.5, 0.5, -0.8], dtype=dtype)], loss_grads


PROBLEMS = {"least_squares": _least_squares, "rosenbrock": _rosenbrock}

# torch's optim_inputs_func_lbfgs cases, then more options
OPTIONS = {
    "default": {},
    "lr": {"lr": 0.01},
    "tensor_lr": {"lr": 0.001},
    "tolerance_grad": {"tolerance_grad": 1e-6},
    "strong_wolfe": {"line_search_fn": "strong_wolfe"},
    "max_iter_history": {"max_iter": 5, "history_size": 3},
    "max_eval_wolfe": {"max_iter": 4, "max_eval": 3, "history_size": 2,
                       "line_search_fn": "strong_wolfe"},
    "tolerance_change_wolfe": {"lr": 0.5, "tolerance_change": 1e-5, "history_size": 1,
                               "line_search_fn": "strong_wolfe"},
    "one_iter": {"max_iter": 1, "history_size": 4},
}


def _torch_run(init, loss_grads, kw, dtype, steps):
    """torch.optim.LBFGS on ``init`` (as ``dtype``), grads from ``loss_grads``: the params
    after each step, the returned losses, the optimizer."""
    ps = [torch.tensor(np.ascontiguousarray(p, dtype=dtype), requires_grad=True)
          for p in init]
    if kw.get("lr") == 0.001:
        kw = dict(kw, lr=torch.tensor(0.001))         # torch's "Tensor lr" case
    opt = torch.optim.LBFGS(ps, **kw)

    def closure():
        f, gs = loss_grads(*[p.detach().numpy() for p in ps])
        for p, g in zip(ps, gs):
            p.grad = torch.from_numpy(np.ascontiguousarray(g, dtype=dtype))
        return f

    out, losses = [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure)))
        out.append(np.concatenate([p.detach().numpy().ravel() for p in ps]))
    return out, losses, opt


def _fastlr_run(params, loss_grads, kw, steps):
    if kw.get("lr") == 0.001:       # a 0-d float32 array, as torch.tensor(0.001)
        kw = dict(kw, lr=np.array(0.001, dtype=np.float32))
    opt = fastlr.LBFGS(params, **kw)
    arrays = params if isinstance(params, list) else list(params.values())

    def closure():
        f, gs = loss_grads(*arrays)
        if isinstance(params, dict):
            return f, dict(reversed(list(zip(params, gs))))      # any order
        return f, gs

    out, losses = [], []
    for _ in range(steps):
        losses.append(opt.step(closure))
        out.append(np.concatenate([p.ravel() for p in arrays]))
    return out, losses, opt


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_matches_torch(problem, option, dtype):
    kw = OPTIONS[option]
    init, loss_grads = PROBLEMS[problem](dtype)
    params = [p.copy() for p in init]
    if problem == "least_squares":
        params[0] = np.asfortranarray(params[0])
    mine, my_losses, opt = _fastlr_run(params, loss_grads, kw, N_STEPS)
    theirs, their_losses, topt = _torch_run(init, loss_grads, kw, dtype, N_STEPS)
    # how far rounding-sized changes carry on this run: torch from a start moved by a few
    # ulp, and (float32) torch's float32 run against its float64 run
    eps = np.finfo(dtype).eps
    nudged, _, _ = _torch_run([p * (1 + 4 * eps) for p in init], loss_grads, kw, dtype,
                              N_STEPS)
    spread = [np.max(np.abs(a - b)) for a, b in zip(nudged, theirs)]
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    if dtype == np.float32:
        init64 = [p.astype(np.float64) for p in init]
        exact, _, _ = _torch_run(init64, PROBLEMS[problem](np.float64)[1], kw,
                                 np.float64, N_STEPS)
        spread = [max(a, np.max(np.abs(b - c))) for a, b, c in zip(spread, theirs, exact)]
    for k, (a, b) in enumerate(zip(mine, theirs)):
        assert a.dtype == dtype
        bound = rtol * max(1.0, float(np.max(np.abs(b)))) + 10 * spread[k]
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert err <= bound, f"step {k + 1}: max |fastlr - torch| = {err:.3g} (bound {bound:.3g})"
    assert spread[0] < (1e-12 if dtype == np.float64 else 1e-4)    # the first step: tight
    assert my_losses[0] == their_losses[0]
    # the returned losses, where the params before the step agree to rounding
    for k in range(1, N_STEPS):
        if spread[k - 1] < 1e-7:
            assert my_losses[k] == pytest.approx(their_losses[k], rel=1e-6, abs=1e-9), k
    ts = topt.state[topt._params[0]]
    st = opt.state
    if max(spread) < 1e-7:
        for key in ("n_iter", "func_evals"):
            assert st[key] == ts[key], key
        assert len(st["old_dirs"]) == len(ts["old_dirs"])
        assert len(st["old_dirs"]) <= kw.get("history_size", 100)
        if ts.get("d") is not None and dtype == np.float64:
            # (near the optimum these are ratios of tiny differences: loose bounds)
            np.testing.assert_allclose(st["d"], ts["d"].numpy(), rtol=1e-3, atol=1e-8)
            np.testing.assert_allclose(float(st["t"]), float(ts["t"]), rtol=1e-3)
            np.testing.assert_allclose(float(st["H_diag"]), float(ts["H_diag"]), rtol=1e-3)
    assert st["n_iter"] > 0 and st["func_evals"] >= st["n_iter"] // kw.get("max_iter", 20)


def test_first_step_matches_torch_in_detail():
    """One step of 20 iterations from the Rosenbrock start: every counter and the whole
    history against torch's."""
    init, loss_grads = _rosenbrock(np.float64)
    _, losses, opt = _fastlr_run([init[0].copy()], loss_grads, {}, 1)
    _, tlosses, topt = _torch_run(init, loss_grads, {}, np.float64, 1)
    ts, st = topt.state[topt._params[0]], opt.state
    assert losses == tlosses == [loss_grads(init[0])[0]]
    assert (st["n_iter"], st["func_evals"]) == (ts["n_iter"], ts["func_evals"]) == (20, 20)
    assert len(st["old_dirs"]) == len(ts["old_dirs"])
    for mine, theirs in zip(st["old_dirs"] + st["old_stps"], ts["old_dirs"] + ts["old_stps"]):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(st["ro"], [float(r) for r in ts["ro"]], rtol=1e-9)
    np.testing.assert_allclose(st["prev_flat_grad"], ts["prev_flat_grad"].numpy(),
                               rtol=1e-9, atol=1e-12)
    assert st["prev_loss"] == pytest.approx(ts["prev_loss"], rel=1e-12)


def test_converges_to_the_least_squares_solution():
    rng = np.random.default_rng(3)
    A, b = rng.standard_normal((50, 8)), rng.standard_normal(50)
    w = np.zeros(8)

    def closure():
        r = A @ w - b
        return 0.5 * float(r @ r), [A.T @ r]

    opt = fastlr.LBFGS([w], line_search_fn="strong_wolfe", history_size=10,
                       tolerance_grad=1e-12, tolerance_change=1e-14)
    for _ in range(5):
        opt.step(closure)
    np.testing.assert_allclose(w, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# 2. names, layouts
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kw", [{}, {"line_search_fn": "strong_wolfe", "history_size": 4}])
def test_named_and_fortran_params_give_the_same_bits(dtype, kw):
    init, loss_grads = _least_squares(dtype)
    plain, plain_losses, _ = _fastlr_run([p.copy() for p in init], loss_grads, kw, 10)
    named = {"fc.weight": np.asfortranarray(init[0]), "fc.bias": init[1].copy()}
    assert named["fc.weight"].flags.f_contiguous and not named["fc.weight"].flags.c_contiguous
    out, losses, opt = _fastlr_run(named, loss_grads, kw, 10)
    assert losses == plain_losses
    for a, b in zip(out, plain):
        np.testing.assert_array_equal(a, b)
    assert opt.param_groups[0]["param_names"] == ["fc.weight", "fc.bias"]
    assert named["fc.weight"].flags.f_contiguous            # updated in place


def test_pairs_and_group_dict_params():
    init, loss_grads = _least_squares(np.float64)
    a = [p.copy() for p in init]
    b = [p.copy() for p in init]
    o1 = fastlr.LBFGS(list(zip(["w", "b"], a)), max_iter=3)
    o2 = fastlr.LBFGS({"params": b, "max_iter": 3}, max_eval=3)
    # torch: a group's max_iter leaves the constructor's max_eval (20 * 5 // 4)
    t = torch.optim.LBFGS([{"params": [torch.ones(2)], "max_iter": 3}])
    o3 = fastlr.LBFGS({"params": [np.ones(2)], "max_iter": 3})
    assert o3.param_groups[0]["max_iter"] == 3
    assert o3.param_groups[0]["max_eval"] == t.param_groups[0]["max_eval"] == 25
    for _ in range(4):
        o1.step(lambda: loss_grads(*a))
        o2.step(lambda: loss_grads(*b))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_zero_grad_returns_at_once():
    w = np.ones(3)
    opt = fastlr.LBFGS([w])
    calls = []

    def closure():
        calls.append(1)
        return 1.0, [np.zeros(3)]

    assert opt.step(closure) == 1.0
    assert calls == [1] and opt.state["func_evals"] == 1 and opt.state["n_iter"] == 0
    np.testing.assert_array_equal(w, 1.0)


def test_repr_and_defaults():
    opt = fastlr.LBFGS({"a": np.ones(2), "b": np.ones((2, 2))}, max_iter=8)
    text = repr(opt)
    assert text.startswith("LBFGS (\nParameter Group 0\n    params: 2 arrays ('a', 'b')")
    for line in ("history_size: 100", "line_search_fn: None", "lr: 1.0", "max_eval: 10",
                 "max_iter: 8", "tolerance_change: 1e-09", "tolerance_grad: 1e-07"):
        assert f"    {line}\n" in text
    assert text.endswith(")")
    t = torch.optim.LBFGS([torch.ones(2, requires_grad=True)], max_iter=8)
    mine = {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "param_names")}
    assert mine == {k: v for k, v in t.param_groups[0].items()
                    if k not in ("params", "param_names")}
    assert fastlr.optim.LBFGS is fastlr.LBFGS


# ---------------------------------------------------------------------------------------
# 3. checkpoints
# ---------------------------------------------------------------------------------------
def _resume(dtype, kw, via, tmp_path):
    init, loss_grads = _rosenbrock(dtype)
    w = init[0].copy()
    whole = fastlr.LBFGS([w], **kw)
    for _ in range(3):
        whole.step(lambda: loss_grads(w))
    if via == "file":
        path = tmp_path / "lbfgs.npz"
        whole.save(path)
    else:
        sd = whole.state_dict()
    w2 = w.copy()
    resumed = fastlr.LBFGS([w2], **kw)
    if via == "file":
        resumed.load(path)
    else:
        resumed.load_state_dict(sd)
    for _ in range(3):
        a = whole.step(lambda: loss_grads(w))
        b = resumed.step(lambda: loss_grads(w2))
        assert a == b
        np.testing.assert_array_equal(w, w2)
    assert resumed.state["n_iter"] == whole.state["n_iter"]
    assert resumed.state["func_evals"] == whole.state["func_evals"]


@pytest.mark.parametrize("via", ["state_dict", "file"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kw", [{"max_iter": 4, "history_size": 3},
                                {"line_search_fn": "strong_wolfe", "max_iter": 3}])
def test_checkpoint_resumes_bit_for_bit(dtype, kw, via, tmp_path):
    _resume(dtype, kw, via, tmp_path)


def test_state_dict_is_a_copy_and_a_rollback_restores_hyperparameters():
    init, loss_grads = _rosenbrock(np.float64)
    w = init[0].copy()
    opt = fastlr.LBFGS([w], max_iter=2)
    opt.step(lambda: loss_grads(w))
    sd = opt.state_dict()
    d = sd["state"]["d"].copy()
    w_at = w.copy()
    opt.param_groups[0]["lr"] = 0.5
    opt.step(lambda: loss_grads(w))
    np.testing.assert_array_equal(sd["state"]["d"], d)            # not aliased
    opt.load_state_dict(sd)                                         # its own: a rollback
    assert opt.param_groups[0]["lr"] == 1.0
    w[...] = w_at
    w3 = w_at.copy()
    other = fastlr.LBFGS([w3], max_iter=2)
    other.load_state_dict(sd)
    opt.step(lambda: loss_grads(w))
    other.step(lambda: loss_grads(w3))
    np.testing.assert_array_equal(w, w3)


def test_checkpoint_never_changes_a_hyperparameter(tmp_path):
    w = np.ones(3)
    src = fastlr.LBFGS([w], lr=0.5, line_search_fn="strong_wolfe")
    src.step(lambda: (float(w @ w), [2 * w]))
    path = tmp_path / "c.npz"
    src.save(path)
    sd = src.state_dict()
    dst = fastlr.LBFGS([np.ones(3)], lr=0.25)
    before = dst.state_dict()
    for load in (lambda: dst.load(path), lambda: dst.load_state_dict(sd)):
        with pytest.raises(ValueError, match=r"fastlr\.LBFGS\.load.*param_groups\[0\]\['lr'\] "
                                             r"is 0\.25 here, 0\.5 in the checkpoint") as e:
            load()
        assert "line_search_fn" in str(e.value) and "Nothing was loaded" in str(e.value)
        assert dst.state["n_iter"] == 0 and dst.state_dict()["state"] == before["state"]
    with pytest.warns(UserWarning, match="kept this optimizer's values"):
        dst.load(path, strict=False)
    assert dst.param_groups[0]["lr"] == 0.25 and dst.param_groups[0]["line_search_fn"] is None
    assert dst.state["n_iter"] == src.state["n_iter"] > 0
    same = fastlr.LBFGS([np.ones(3)], lr=0.5, line_search_fn="strong_wolfe")
    same.load(path)
    np.testing.assert_array_equal(same.state["d"], src.state["d"])


def test_checkpoint_names_are_checked(tmp_path):
    src = fastlr.LBFGS({"a": np.ones(2), "b": np.ones(2)})
    path = tmp_path / "n.npz"
    src.save(path)
    dst = fastlr.LBFGS({"a": np.ones(2), "c": np.ones(2)})
    with pytest.raises(ValueError, match="missing from the checkpoint: 'c'.*unexpected in "
                                         "the checkpoint: 'b'"):
        dst.load(path)
    fastlr.LBFGS([np.ones(2), np.ones(2)]).load(path)      # unnamed: by position


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd["state"].update(d=np.ones(5)), r"state\['d'\] must be a flat float array "
                                                  r"of 3 elements"),
    (lambda sd: sd["state"]["old_dirs"].append(np.ones(3)), "one entry per correction pair"),
    (lambda sd: sd["state"].update(n_iter=-1), r"state\['n_iter'\]"),
    (lambda sd: sd["state"].update(t=None), r"state\['t'\] is missing"),
    (lambda sd: sd["state"].update(bogus=1), "unknown entries"),
    (lambda sd: sd.update(param_groups=[{}, {}]), "one group"),
    (lambda sd: sd["param_groups"][0].update(momentum=0.9), "unknown hyperparameter"),
    (lambda sd: sd.update(format="other"), "unknown format"),
])
def test_bad_state_dicts_change_nothing(edit, match):
    w = np.ones(3)
    opt = fastlr.LBFGS([w], max_iter=2)
    opt.step(lambda: (float(w @ w + w.sum()), [2 * w + 1]))
    sd = opt.state_dict()
    edit(sd)
    before = opt.state_dict()
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["state"]["n_iter"] == before["state"]["n_iter"]
    np.testing.assert_array_equal(after["state"]["d"], before["state"]["d"])


def test_corrupted_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    opt = fastlr.LBFGS([np.ones(2)])
    with pytest.raises(ValueError, match=r"fastlr\.LBFGS\.load: .* is not a readable"):
        opt.load(path)
    other = tmp_path / "other.npz"
    fastlr.Adam([np.ones(2)]).save(other)
    with pytest.raises(ValueError, match="fastlr.LBFGS.load"):
        opt.load(other)
    assert os.path.exists(other)


# ---------------------------------------------------------------------------------------
# 4. errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, match", [
    ({"lr": -0.1}, ValueError, "lr must be >= 0"),
    ({"lr": "1"}, TypeError, "lr must be a real number"),
    ({"lr": True}, TypeError, "lr"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite"),
    ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
    ({"max_iter": 2.0}, TypeError, "max_iter must be an int"),
    ({"max_eval": 0}, ValueError, "max_eval must be >= 1"),
    ({"max_eval": 1.5}, TypeError, "max_eval"),
    ({"history_size": 0}, ValueError, "history_size must be >= 1"),
    ({"tolerance_grad": -1e-7}, ValueError, "tolerance_grad must be >= 0"),
    ({"tolerance_change": None}, TypeError, "tolerance_change"),
    ({"line_search_fn": "armijo"}, ValueError, "line_search_fn must be one of 'strong_wolfe'"),
    ({"line_search_fn": 1}, TypeError, "line_search_fn"),
])
def test_bad_hyperparameters(kw, exc, match):
    with pytest.raises(exc, match=rf"^fastlr\.LBFGS: .*{match}"):
        fastlr.LBFGS([np.ones(2)], **kw)


@pytest.mark.parametrize("params, exc, match", [
    ([{"params": [np.ones(2)]}, {"params": [np.ones(2)]}], ValueError,
     r"doesn't support per-parameter options \(parameter groups\)"),
    ([np.ones(2), np.ones(2, dtype=np.float32)], TypeError, "one dtype"),
    ([np.ones(2, dtype=np.int64)], TypeError, r"params\[0\].*float32 or float64"),
    ([np.ones((4, 4))[:, ::2]], ValueError, "contiguous"),
    ([[1.0, 2.0]], TypeError, "numpy.ndarray"),
    ({"params": [np.ones(2)], "momentum": 0.9}, ValueError, "unknown hyperparameter"),
    ([], ValueError, "empty"),
])
def test_bad_params(params, exc, match):
    with pytest.raises(exc, match=rf"^fastlr\.LBFGS: .*{match}"):
        fastlr.LBFGS(params)


def test_read_only_and_overlapping_params():
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastlr.LBFGS([ro])
    buf = np.ones(4)
    with pytest.raises(ValueError, match="overlap"):
        fastlr.LBFGS([buf[:3], buf[1:]])


W0 = np.array([1.0, -2.0, 0.5])


@pytest.mark.parametrize("reply, exc, match", [
    (lambda w: 1.0, TypeError, r"closure must return \(loss, grads\), got float"),
    (lambda w: (1.0, [2 * w], 3), TypeError, "of length 3"),
    (lambda w: ("1.0", [2 * w]), TypeError, "loss the closure returned must be a real number"),
    (lambda w: (1.0, 2 * w), TypeError, r"must be a list of 1 arrays in param order"),
    (lambda w: (1.0, [2 * w, 2 * w]), ValueError, "returned 2 grads for 1 params"),
    (lambda w: (1.0, [np.ones(4)]), ValueError, r"grads\[0\] must have shape \(3,\)"),
    (lambda w: (1.0, [np.ones(3, dtype=np.float32)]), TypeError,
     r"grads\[0\] must have dtype float64"),
    (lambda w: (1.0, [list(2 * w)]), TypeError, r"grads\[0\] must be a numpy.ndarray"),
    (lambda w: (1.0, {"w": 2 * w}), TypeError, "the params have no names"),
])
@pytest.mark.parametrize("bad_call", [1, 3])
def test_bad_closures_leave_params_and_state_unchanged(reply, exc, match, bad_call):
    w = W0.copy()
    _, rosen = _rosenbrock(np.float64)
    opt = fastlr.LBFGS([w], max_iter=4)
    opt.step(lambda: rosen(w))
    w_before, sd = w.copy(), opt.state_dict()
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == bad_call:
            return reply(w)
        return rosen(w)

    with pytest.raises(exc, match=rf"^fastlr\.LBFGS\.step: .*{match}"):
        opt.step(closure)
    assert len(calls) == bad_call
    np.testing.assert_array_equal(w, w_before)
    after = opt.state_dict()["state"]
    assert (after["n_iter"], after["func_evals"]) == (sd["state"]["n_iter"],
                                                     sd["state"]["func_evals"])
    np.testing.assert_array_equal(after["d"], sd["state"]["d"])


def test_closure_exception_restores_params():
    w = W0.copy()
    opt = fastlr.LBFGS([w], line_search_fn="strong_wolfe")
    calls = []

    def closure():
        calls.append(w.copy())
        if len(calls) == 3:
            raise KeyError("boom")
        return float(w @ w), [2 * w]

    with pytest.raises(KeyError, match="boom"):
        opt.step(closure)
    assert not np.array_equal(calls[1], W0)          # the params had moved
    np.testing.assert_array_equal(w, W0)
    assert opt.state["n_iter"] == 0 and opt.state["func_evals"] == 0


def test_named_grads_dict_errors():
    named = {"a": np.ones(2), "b": np.ones(3)}
    opt = fastlr.LBFGS(named)
    with pytest.raises(ValueError, match=r"fastlr\.LBFGS\.step: .*missing from the "
                                         r"closure's grads: 'b'"):
        opt.step(lambda: (1.0, {"a": np.ones(2)}))
    with pytest.raises(ValueError, match=r"grads\['b'\] must have shape \(3,\)"):
        opt.step(lambda: (1.0, {"a": np.ones(2), "b": np.ones(2)}))
    np.testing.assert_array_equal(named["a"], 1.0)


def test_step_arguments_and_reentry():
    opt = fastlr.LBFGS([np.ones(2)])
    with pytest.raises(TypeError, match=r"^fastlr\.LBFGS\.step: closure must be a callable"):
        opt.step(None)
    w = np.ones(2)
    inner = fastlr.LBFGS([w])

    def closure():
        inner.step(lambda: (1.0, [np.ones(2)]))
        return 1.0, [np.ones(2)]

    with pytest.raises(RuntimeError, match="another thread"):
        inner.step(closure)
    np.testing.assert_array_equal(w, 1.0)
    with pytest.raises(TypeError, match=r"^fastlr\.LBFGS\.load_state_dict: strict"):
        opt.load_state_dict(opt.state_dict(), strict="yes")


def test_param_group_writes_are_checked():
    init, rosen = _rosenbrock(np.float64)
    w = init[0].copy()
    opt = fastlr.LBFGS([w], lr=0.5, max_iter=1)
    with pytest.raises(ValueError, match=r"\['lr'\] must be >= 0"):
        opt.param_groups[0]["lr"] = -1.0
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(TypeError, match="cannot be replaced"):
        opt.param_groups[0]["params"] = []
    opt.param_groups[0]["max_iter"] = 3
    opt.param_groups[0]["max_eval"] = None          # torch's default for max_iter 3
    assert opt.param_groups[0]["max_eval"] == 3
    tw = torch.tensor(init[0], requires_grad=True)
    topt = torch.optim.LBFGS([tw], lr=0.5, max_iter=3, max_eval=3)

    def tclosure():
        f, (g,) = rosen(tw.detach().numpy())
        tw.grad = torch.from_numpy(g)
        return f

    for _ in range(3):
        opt.step(lambda: rosen(w))
        topt.step(tclosure)
    assert opt.state["n_iter"] == topt.state[tw]["n_iter"] > 3
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-12)


def test_lowering_history_size_trims_the_history():
    init, rosen = _rosenbrock(np.float64)
    w = init[0].copy()
    opt = fastlr.LBFGS([w], history_size=5, max_iter=8)
    opt.step(lambda: rosen(w))
    assert len(opt.state["old_dirs"]) == 5
    opt.param_groups[0]["history_size"] = 2
    opt.step(lambda: rosen(w))
    assert len(opt.state["old_dirs"]) == len(opt.state["old_stps"]) == len(opt.state["ro"]) == 2
