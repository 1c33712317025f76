"""`fastlr compare`: the learning-rate sensitivity study (fastlr._tools.compare)."""

import doctest
import io
import json
import math

import numpy as np
import pytest

import fastlr
from fastlr._tools import cli, compare

NAN = float("nan")
PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# the within-5% rule on hand-made loss curves
# ---------------------------------------------------------------------------------------
def test_within_range_is_loss_at_most_1_05_times_best():
    values = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    # 1.05 exactly is within; 1.0501 is not; the best is 1.0 at 1e-2
    r = compare.within_range(values, [1.0501, 1.05, 1.0, 1.049, 3.0])
    assert r["best_loss"] == 1.0 and r["best_value"] == 1e-2
    assert r["within"] == [False, True, True, True, False]
    assert (r["lo"], r["hi"]) == (1e-3, 1e-1)
    assert r["decades"] == pytest.approx(2.0)
    assert r["contiguous"] and not r["lo_at_edge"] and not r["hi_at_edge"]


def test_within_range_is_relative_to_the_best_not_absolute():
    # the same shape scaled by 1000: the same range (an absolute 0.05 would take only one)
    values = [0.1, 1.0, 10.0]
    small = compare.within_range(values, [0.00104, 0.001, 0.0012])
    big = compare.within_range(values, [1.04, 1.0, 1.2])
    assert small["within"] == big["within"] == [True, True, False]


def test_within_range_diverged_runs_are_outside():
    values = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    r = compare.within_range(values, [NAN, 1.0, NAN, 1.01, math.inf])
    assert r["within"] == [False, True, False, True, False]
    assert (r["lo"], r["hi"]) == (1e-2, 1.0)
    assert not r["contiguous"]              # the NaN at 1e-1 is a gap inside the range
    assert r["decades"] == pytest.approx(2.0)
    # a NaN never becomes the best, however it compares
    r = compare.within_range([1.0, 2.0], [NAN, 5.0])
    assert r["best_loss"] == 5.0 and r["within"] == [False, True]


def test_within_range_every_run_diverged():
    r = compare.within_range([1.0, 2.0, 3.0], [NAN, NAN, math.inf])
    assert r["best_loss"] is None and r["lo"] is None and r["decades"] is None
    assert r["within"] == [False, False, False]


def test_within_range_marks_the_ends_of_the_sweep():
    r = compare.within_range([1.0, 10.0, 100.0], [1.0, 1.02, 2.0])
    assert r["lo_at_edge"] and not r["hi_at_edge"]
    r = compare.within_range([1.0, 10.0, 100.0], [5.0, 1.0, 1.0])
    assert r["hi_at_edge"] and not r["lo_at_edge"]
    assert r["best_value"] == 10.0          # ties: the first (smaller) value


def test_within_range_rejects_bad_input():
    with pytest.raises(ValueError, match=r"within_range: values and losses must be 1-d"):
        compare.within_range([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"values must be positive and increasing"):
        compare.within_range([2.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"losses must be >= 0"):
        compare.within_range([1.0, 2.0], [1.0, -0.5])
    with pytest.raises(ValueError, match=r"tolerance must be >= 0"):
        compare.within_range([1.0, 2.0], [1.0, 1.0], tolerance=-0.1)


def test_within_range_docstring_example():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(compare.within_range, "within_range",
                                             globs={"within_range": compare.within_range}):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


def test_sweep_is_log_spaced_and_centered():
    v = compare.sweep(1e-3, 9, 4.0)
    assert v[4] == pytest.approx(1e-3) and v[0] == pytest.approx(1e-5)
    assert v[-1] == pytest.approx(1e-1)
    np.testing.assert_allclose(np.diff(np.log10(v)), 0.5)


# ---------------------------------------------------------------------------------------
# tasks and methods
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(compare.TASKS))
def test_task_gradients_match_finite_differences(name):
    task = compare.TASKS[name](0)
    rng = np.random.default_rng(5)
    params = [p + 0.1 * rng.standard_normal(p.shape) for p in task.init]
    x, y = task.x_train[:20], task.y_train[:20]
    loss, grads = task.loss_and_grads(params, x, y)
    assert loss > 0
    for i, p in enumerate(params):
        for j in rng.choice(p.size, size=min(3, p.size), replace=False):
            idx = np.unravel_index(j, p.shape)
            h = 1e-6
            old = p[idx]
            p[idx] = old + h
            up = task.loss_and_grads(params, x, y)[0]
            p[idx] = old - h
            down = task.loss_and_grads(params, x, y)[0]
            p[idx] = old
            assert grads[i][idx] == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-7)


def test_lstsq_design_is_ill_conditioned_and_seeded():
    a, b = compare.TASKS["lstsq"](0), compare.TASKS["lstsq"](0)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    cond = np.linalg.cond(a.x_train)
    assert 1e3 / 3 < cond < 1e4
    assert not np.array_equal(compare.TASKS["lstsq"](1).x_train, a.x_train)


def test_digits_task_reuses_the_demo_data():
    task = compare.TASKS["digits"](0)
    x_tr, y_tr = cli.load_data(0)[:2]
    np.testing.assert_array_equal(task.x_train, x_tr)
    np.testing.assert_array_equal(task.y_train, y_tr)
    # the objective is the demo's cross-entropy plus the L2 penalty on the weight matrices
    w1, b1, w2, b2 = task.init
    plain = cli.loss_and_grads(task.init, x_tr[:50], y_tr[:50])[0]
    penalty = 0.5e-3 * (np.sum(w1 * w1) + np.sum(w2 * w2))
    assert task.loss_and_grads(task.init, x_tr[:50], y_tr[:50])[0] == pytest.approx(
        plain + penalty)


AVAILABLE = [m for m in compare.METHODS.values() if m.available()]


@pytest.mark.parametrize("method", AVAILABLE, ids=lambda m: m.name)
def test_each_method_steps_and_lowers_the_least_squares_loss(method):
    task = compare.TASKS["lstsq"](0)
    start = task.loss_and_grads(task.init, task.x_train, task.y_train)[0]
    # a sane value for 200 steps on this problem: ten times the customary default (five for
    # D-Adapt Adam: at ten it diverges on these minibatches, as dadaptation 3.2's DAdaptAdam
    # does step for step)
    factor = 5 if method.cls == "DAdaptAdam" else 10
    r = compare.run_one(task, method, factor * method.default, 200, seed=1)
    assert r["steps"] == 200 and not r["diverged"]
    assert r["train_loss"] < 0.5 * start
    assert math.isfinite(r["heldout_loss"]) and r["heldout_accuracy"] is None
    # the init is copied, never trained on
    assert not np.any(task.init[0])


class _Ascent:
    """An "optimizer" that climbs: params += lr * grad (the final loss ends above the start)."""

    def __init__(self, params, lr):
        self.params, self.lr = params, float(lr)

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p += self.lr * g


def test_a_run_that_ends_above_its_starting_loss_is_diverged(monkeypatch):
    monkeypatch.setattr(fastlr, "Ascent", _Ascent, raising=False)
    climb = compare.Method("ascent", "Ascent", "Ascent", 1e-3, "lr", "constant")
    task = compare.TASKS["logreg"](0)
    r = compare.run_one(task, climb, 1e-3, 20, seed=1)
    assert r["steps"] == 20                 # finite all along: not stopped
    assert r["diverged"] and math.isnan(r["train_loss"])
    assert math.isnan(r["heldout_accuracy"])
    # the same steps downhill are not diverged
    downhill = compare.run_one(task, climb, -1e-3, 20, seed=1)
    assert not downhill["diverged"] and downhill["train_loss"] < task.loss_and_grads(
        task.init, task.x_train, task.y_train)[0]


def test_value_text():
    assert [compare._value(v) for v in (100.0, 31.6227766, 1.0, 0.0316227766, 1e-5)] == \
        ["100", "32", "1", "0.032", "1e-05"]


def test_divergence_is_detected_and_stops_the_run():
    task = compare.TASKS["lstsq"](0)
    r = compare.run_one(task, compare.METHODS["sgd"], 100.0, 200, seed=1)
    assert r["diverged"] and r["steps"] < 200
    assert math.isnan(r["train_loss"]) and math.isnan(r["heldout_loss"])


def test_unavailable_method_is_reported(monkeypatch):
    ghost = compare.Method("ghost", "Ghost", "NoSuchOptimizer", 1.0, "multiplier", "cosine")
    monkeypatch.setitem(compare.METHODS, "ghost", ghost)
    progress = io.StringIO()
    results = compare.run_study(tasks=["lstsq"], methods=["ghost", "adamw"], points=2,
                                steps=5, progress=progress)
    assert "no fastlr.NoSuchOptimizer" in progress.getvalue()
    assert [m["available"] for m in results["methods"]] == [False, True]
    assert {r["method"] for r in results["runs"]} == {"adamw"}
    assert "Ghost" in compare.format_table(results)
    assert "unavailable (no fastlr.NoSuchOptimizer)" in compare.format_table(results)


def test_dadapt_is_included_exactly_when_fastlr_has_it():
    m = compare.METHODS["dadapt"]
    assert m.cls == "DAdaptAdam" and m.kind == "multiplier" and m.default == 1.0
    assert m.available() == hasattr(fastlr, "DAdaptAdam")


# ---------------------------------------------------------------------------------------
# the study: a tiny sweep
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return compare.run_study(tasks=["lstsq", "logreg"], methods=["adamw", "prodigy"],
                             points=2, decades=2.0, steps=20, seed=3)


def test_tiny_study_structure(tiny):
    assert [t["name"] for t in tiny["tasks"]] == ["lstsq", "logreg"]
    assert all(t["steps"] == 20 for t in tiny["tasks"])
    assert [m["name"] for m in tiny["methods"]] == ["adamw", "prodigy"]
    assert len(tiny["runs"]) == 2 * 2 * 2
    assert len(tiny["summary"]) == 2 * 2
    adamw = [r for r in tiny["runs"] if r["method"] == "adamw" and r["task"] == "lstsq"]
    assert [r["value"] for r in adamw] == pytest.approx([1e-4, 1e-2])
    assert [r["factor"] for r in adamw] == pytest.approx([0.1, 10.0])
    for s in tiny["summary"]:
        losses = [r["train_loss"] for r in tiny["runs"]
                  if (r["task"], r["method"]) == (s["task"], s["method"])]
        assert s["best_loss"] == np.nanmin(losses)
        assert s["within"] == [x <= 1.05 * s["best_loss"] for x in losses]
    assert tiny["settings"]["rule"].startswith("within: loss finite and loss <= 1.05 * best")


def test_tiny_study_is_deterministic(tiny):
    again = compare.run_study(tasks=["lstsq", "logreg"], methods=["adamw", "prodigy"],
                              points=2, decades=2.0, steps=20, seed=3)
    np.testing.assert_array_equal([r["train_loss"] for r in again["runs"]],
                                  [r["train_loss"] for r in tiny["runs"]])


def test_table_shows_every_run_and_the_ranges(tiny):
    table = compare.format_table(tiny)
    assert "<= 1.05 * the method's best" in table
    for task in tiny["tasks"]:
        assert task["title"] in table
    for r in tiny["runs"]:
        assert (f"{r['train_loss']:.3g}" if not r["diverged"] else " div") in table
    for s in tiny["summary"]:
        assert f"{s['best_loss']:.4g}" in table
    assert "x0.1" in table and "x10" in table
    # the closing sensitivity table: one row per method, one column per task
    closing = table[table.index("\nsensitivity:"):].splitlines()
    assert closing[2].split() == ["method", "lstsq", "logreg"]
    for row, m in zip(closing[3:5], tiny["methods"]):
        assert row.strip().startswith(m["label"])
        for task in tiny["tasks"]:
            s = next(x for x in tiny["summary"]
                     if (x["task"], x["method"]) == (task["name"], m["name"]))
            assert f"{compare._range_text(s)} ({s['decades']:.2g})" in row


def test_json_is_strict_and_round_trips(tiny, tmp_path):
    results = dict(tiny)
    results["runs"] = [dict(tiny["runs"][0], train_loss=NAN, diverged=True)] + tiny["runs"][1:]
    path = tmp_path / "study.json"
    compare.write_json(results, str(path))
    text = path.read_text()
    assert "NaN" not in text
    back = json.loads(text)
    assert back["runs"][0]["train_loss"] is None
    assert back["runs"][1]["train_loss"] == tiny["runs"][1]["train_loss"]
    compare.format_table(back)              # the table reads the JSON back


def test_png_is_written(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "study.png"
    compare.plot(tiny, str(path))
    assert path.read_bytes()[:8] == PNG


def test_run_study_rejects_bad_arguments():
    fn = "fastlr._tools.compare.run_study"
    for kwargs, match in (({"tasks": ["nope"]}, "tasks must be a non-empty list"),
                          ({"methods": []}, "methods must be a non-empty list"),
                          ({"points": 1}, "points must be an int >= 2"),
                          ({"decades": 0}, r"decades must be in \(0, 12\]"),
                          ({"epochs": 1, "steps": 1}, "give epochs or steps, not both"),
                          ({"steps": 0}, "steps must be an int >= 1")):
        with pytest.raises(ValueError, match=f"{fn}: {match}"):
            compare.run_study(**kwargs)


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------
def test_command_runs_through_fastlr_main(tmp_path, capsys):
    path = tmp_path / "out.json"
    status = cli.main(["compare", "--tasks", "lstsq", "--methods", "sgd,adamw", "--points",
                       "2", "--steps", "10", "--json", str(path)])
    assert status == 0
    out, err = capsys.readouterr()
    assert "least squares" in out and "within 5% of best" in out
    assert "lstsq" in err and f"wrote {path}" in err       # progress on stderr
    data = json.loads(path.read_text())
    assert [m["name"] for m in data["methods"]] == ["sgd", "adamw"]


def test_command_quiet_writes_nothing_on_stderr(capsys):
    assert compare.main(["--tasks", "lstsq", "--methods", "sgd", "--points", "2",
                         "--steps", "5", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "SGD momentum 0.9" in out


def test_command_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "c.png"
    assert compare.main(["--tasks", "logreg", "--methods", "prodigy", "--points", "2",
                         "--steps", "5", "--png", str(path), "--quiet"]) == 0
    assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv, message", [
    (["--points", "1"], "--points must be >= 2, got 1"),
    (["--tasks", "mnist"], "argument --tasks: unknown task 'mnist'; expected one of digits, "
                           "lstsq, logreg"),
    (["--methods", "adam"], "argument --methods: unknown method 'adam'"),
    (["--epochs", "2", "--steps", "3"], "argument --steps: not allowed with argument "
                                        "--epochs"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "1"], "--steps must be >= 2 for adamw, sgd (a warmup-cosine schedule needs "
                       "a step after its warmup step), got 1"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--decades", "-1"], "--decades must be in (0, 12], got -1"),
    (["--png", "/no/such/folder/x.png"], "--png: cannot write /no/such/folder/x.png: no "
                                         "folder /no/such/folder"),
    (["--json", "/no/such/folder/x.json"], "--json: cannot write"),
])
def test_command_argument_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        compare.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"fastlr compare: error: {message}" in err


def test_command_help_explains_the_study(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("usage: fastlr compare", "within 5% of the best", "1.05 * best",
                 "digits", "lstsq", "logreg", "Prodigy", "D-Adapt Adam", "--png", "--json",
                 "--quiet"):
        assert text in out


def test_study_runs_on_one_thread_and_restores_the_settings():
    before = fastlr.get_num_threads()
    blas = compare._openblas()
    blas_before = blas[0]() if blas is not None else None
    with compare._one_thread() as blas_threads:
        assert fastlr.get_num_threads() == 1
        if blas is not None:
            assert blas_threads == 1 and blas[0]() == 1
    assert fastlr.get_num_threads() == before
    if blas is not None:
        assert blas[0]() == blas_before


def test_command_png_without_matplotlib_says_how_to_install(monkeypatch, tmp_path, capsys):
    from fastlr import plot

    def missing():
        raise ImportError("fastlr's plots need matplotlib: pip install 'fastlr[plot]' "
                          "(or pip install matplotlib)")

    monkeypatch.setattr(plot, "require_matplotlib", missing)
    with pytest.raises(SystemExit) as info:
        compare.main(["--png", str(tmp_path / "x.png"), "--steps", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "fastlr compare: error: --png: fastlr's plots need matplotlib: pip install" in err
    assert not (tmp_path / "x.png").exists()
