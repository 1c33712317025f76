"""``fastlr bench``'s rows for the optimizers outside the table (Adafactor, Muon,
SparseAdam, LBFGS, the schedule-free ones, LAMB, LARS, Prodigy, D-Adaptation when fastlr
has it): their steppers do the optimizer's update (the fastlr class's step moves the
param; the NumPy twin, and the peer where its update is the same, give the same params),
and they run through ``run`` and the command line with well-formed results. No timing
assertions: only that times exist, are finite and positive."""

import json
import math

import numpy as np
import pytest

import fastlr
from fastlr._tools import bench, cli

EXTRA = bench.extra_rows()
#: peers whose repeated steps are the fastlr step's (the schedule-free package's AdamW and
#: RAdam divide the grad in place, so their later steps see another grad)
SAME_UPDATE_PEERS = {"adafactor": 1e-12, "sparseadam": 1e-12, "lbfgs": 1e-9,
                     "schedulefreesgd": 1e-12, "prodigy": 1e-12, "dadaptadam": 1e-10,
                     "dadaptsgd": 1e-10, "dadaptadagrad": 1e-10,
                     "muon": 1e-4}           # the Newton-Schulz matrices are bfloat16
STEPS = 8       # ScheduleFreeRAdam's first steps are its silent SGD phase (no update)


def _have(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_the_rows_outside_the_table():
    assert EXTRA == ("adafactor", "muon", "sparseadam", "lbfgs", "schedulefreesgd",
                     "schedulefreeadamw", "schedulefreeradam", "lamb", "lars",
                     "prodigy") + tuple(n for n in ("dadaptadam", "dadaptsgd", "dadaptadagrad")
                                        if hasattr(fastlr, bench.EXTRA[n].cls)) + (
                                            "adamw_bf16state",)
    for name, row in bench.EXTRA.items():
        assert name == row.cls.lower() or name.startswith(row.cls.lower() + "_")
        assert (row.pattern is None) == bool(row.roofline_note)
        assert (row.reference is None) == bool(row.reference_note)
        assert bool(row.peer) != bool(row.peer_note)
    assert bench.all_optimizers() == bench.OPTIMIZERS + EXTRA
    assert not set(bench.DEFAULT_OPTIMIZERS) & set(EXTRA)       # the default run unchanged
    assert bench.extra_shape("muon", 4096) == (64, 64)
    assert bench.extra_shape("adafactor", 1000) == (25, 40)
    assert bench.extra_shape("lars", 1031) == (1, 1031)           # a prime
    assert bench.extra_shape("prodigy", 4096) == (4096,)


@pytest.mark.parametrize("optimizer", EXTRA)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_steppers_do_the_update(optimizer, dtype):
    """The fastlr stepper moves the param; the twin's gives the same params after the same
    steps (to rounding)."""
    if dtype not in bench.EXTRA[optimizer].dtypes:
        pytest.skip(f"{optimizer} runs {bench.EXTRA[optimizer].dtypes} only")
    base = bench.make_extra_inputs(optimizer, 4096, dtype)
    fast, ref = bench.clone_extra_inputs(base), bench.clone_extra_inputs(base)
    step_fast = bench.extra_fastlr_stepper(optimizer, fast, 1)
    step_ref = bench.extra_reference_stepper(optimizer, ref)
    assert (step_ref is None) == (optimizer == "lbfgs")
    for _ in range(STEPS):
        step_fast()
        if step_ref is not None:
            step_ref()
    assert not np.array_equal(fast["param"], base["param"]), "the fastlr step did nothing"
    for name in base:                    # grads (and the closure's data) are only read
        if name != "param":
            np.testing.assert_array_equal(fast[name], base[name])
    if step_ref is not None:
        rtol = 1e-10 if dtype == "float64" else 2e-5
        np.testing.assert_allclose(fast["param"], ref["param"], rtol=rtol,
                                   atol=rtol * np.abs(ref["param"]).max())


@pytest.mark.parametrize("optimizer", [n for n in EXTRA if n in SAME_UPDATE_PEERS])
def test_peer_stepper_steps_the_given_arrays(optimizer):
    """The peer's step runs on torch views of the arrays (it moves them) and, where its
    update is fastlr's, gives fastlr's params."""
    try:
        bench._import_peer(optimizer)
    except NotImplementedError as e:
        pytest.skip(str(e))
    base = bench.make_extra_inputs(optimizer, 1024, "float64")
    fast, peer = bench.clone_extra_inputs(base), bench.clone_extra_inputs(base)
    step_fast = bench.extra_fastlr_stepper(optimizer, fast, 1)
    step_peer = bench.extra_peer_stepper(optimizer, peer, bench.EXTRA[optimizer].peer_modes[-1])
    for _ in range(3):
        step_fast()
        step_peer()
    assert not np.array_equal(peer["param"], base["param"])
    tol = SAME_UPDATE_PEERS[optimizer]
    np.testing.assert_allclose(peer["param"], fast["param"], rtol=tol,
                               atol=tol * np.abs(fast["param"]).max())


def test_peers_without_torch_counterpart_say_so():
    for name in ("lamb", "lars"):
        with pytest.raises(NotImplementedError, match="no torch counterpart"):
            bench.extra_peer_stepper(name, bench.make_extra_inputs(name, 64))
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; expected one of .*muon"):
        bench.make_extra_inputs("adam", 64)


def _check_rows(result, optimizers, threads=(1,)):
    rows = result["rows"]
    assert [r["optimizer"] for r in rows] == [o for o in optimizers for _ in threads]
    have_torch = result["machine"]["torch"] is not None
    for r in rows:
        row = bench.EXTRA[r["optimizer"]]
        t = r["time_s"]
        assert math.isfinite(t["fastlr"]) and t["fastlr"] > 0
        assert t["numpy"] is None and r["numpy_baseline"] is False
        assert r["shape"] == list(bench.extra_shape(r["optimizer"], r["n"]))
        assert r["title"] == row.title and r["peer"] == bench.peer_label(r["optimizer"])
        if row.reference is None:
            assert t["reference"] is None and r["reference_note"] == row.reference_note
        elif t["reference"] is None:                # a twin this fastlr lacks (the fake)
            assert r["reference_note"].startswith("the NumPy twin's loops are missing")
        else:
            assert t["reference"] > 0 and len(r["samples_s"]["reference"]) == \
                result["config"]["repeat"]
            assert r["speedup"]["reference"] == pytest.approx(t["reference"] / t["fastlr"])
        if row.pattern is None:
            for key in ("gbps", "roofline_gbps", "roofline_fraction", "roofline_time_s",
                        "bytes_per_element"):
                assert r[key] is None
            assert r["roofline_note"] == row.roofline_note
        else:
            for key in ("gbps", "roofline_gbps", "roofline_fraction", "bytes_per_element"):
                assert math.isfinite(r[key]) and r[key] > 0
        if t["torch"] is not None:
            assert have_torch and r["torch_mode"] in (row.peer_modes if row.peer_modes != (None,)
                                                      else ("default",))
            assert r["peer_note"] is None
        else:
            assert r["peer_note"]                 # why: no counterpart, or not installed


@pytest.mark.parametrize("optimizer", EXTRA)
def test_every_row_runs_through_run(optimizer):
    r = bench.run([optimizer], [1024], ["float32"], [1], 1, min_sample=1e-4)
    _check_rows(r, [optimizer])
    assert r["config"]["optimizers"] == [optimizer]
    text = bench.format_report(r)
    assert f"{optimizer}  " in text
    row = bench.EXTRA[optimizer]
    for note in (row.roofline_note, row.reference_note):
        if note:
            assert note in text
    json.loads(json.dumps(r, allow_nan=False))


def test_rows_without_torch_say_why_and_plot(tmp_path):
    names = ["muon", "lamb", "sparseadam"]
    r = bench.run(names, [1024], ["float64"], [1, 2], 1, torch=False, min_sample=1e-4)
    _check_rows(r, names, threads=(1, 2))
    assert {row["peer_note"] for row in r["rows"]} == {
        "torch not used (--no-torch or not installed)",
        "no torch counterpart (torch.optim has no LAMB)"}
    bench.noise_notes(r["rows"])                   # rows without a roofline are judged too
    text = bench.format_report(r)
    assert "roof '-' for muon: compute-bound" in text
    assert "torch '-' for lamb: no torch counterpart" in text
    pytest.importorskip("matplotlib")
    path = tmp_path / "rows.png"
    bench.plot(r, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_table_row_and_extra_rows_in_one_run():
    r = bench.run(["adam", "lars"], [2048], threads=[1], repeat=1, torch=False,
                  min_sample=1e-4)
    assert [row["optimizer"] for row in r["rows"]] == ["adam", "lars"]
    assert "peer" not in r["rows"][0] and r["rows"][1]["peer"] is None
    assert r["rows"][0]["gbps"] > 0 and r["rows"][1]["gbps"] > 0


def test_unknown_names_list_the_choices(capsys, monkeypatch):
    with pytest.raises(ValueError, match="unknown optimizer 'adamfactor'; expected one of "
                                         r"sgd, .*, asgd, adafactor, muon, .*prodigy"):
        bench.run(["adamfactor"], [64], threads=[1], torch=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv("GOMP_SPINCOUNT", str(bench.DEFAULT_SPIN_COUNT))
    assert bench.main(["--optimizers", "muon,adamfactor"]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'adamfactor'; expected one of" in err
    assert ", ".join(bench.all_optimizers()) in err
    assert bench.main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the classes outside it " + ", ".join(EXTRA) in help_text


def test_cli_json_to_stdout(capfd):
    # (fastlr bench may re-run itself in a child process with OpenMP settings: capfd)
    assert cli.main(["bench", "--optimizers", "adafactor,muon", "--sizes", "1K",
                     "--repeat", "1", "--min-sample", "0.001", "--threads", "1",
                     "--json", "-"]) == 0
    out, err = capfd.readouterr()
    result = json.loads(out)
    assert result["format"] == "fastlr-bench-1"
    assert result["config"]["optimizers"] == ["adafactor", "muon"]
    _check_rows(result, ["adafactor", "muon"])
    assert "adafactor" in err and "roof '-' for muon" in err      # the report on stderr


class _FakeDAdaptAdam:
    """A stand-in for fastlr.DAdaptAdam (not on this branch): plain SGD steps."""

    def __init__(self, params, lr=1.0, growth_rate=float("inf")):
        self.params, self.lr = params, lr

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p -= 1e-3 * self.lr * g


def test_dadaptation_rows_appear_when_fastlr_has_the_class(monkeypatch, capsys):
    if hasattr(fastlr, "DAdaptAdam"):
        assert "dadaptadam" in bench.extra_rows()
        return
    assert "dadaptadam" not in bench.all_optimizers()
    monkeypatch.setattr(fastlr, "DAdaptAdam", _FakeDAdaptAdam, raising=False)
    assert bench.extra_rows()[-1] == "dadaptadam"
    r = bench.run(["dadaptadam"], [1024], threads=[1], repeat=1, min_sample=1e-4)
    _check_rows(r, ["dadaptadam"])
    row = r["rows"][0]
    assert row["peer"] == "dadaptation.DAdaptAdam"
    assert row["time_s"]["reference"] is None and "fastlr.optim.dadapt" in row["reference_note"]
    if row["time_s"]["torch"] is None:
        assert row["peer_note"] in ("dadaptation is not installed", "torch is not installed")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv("GOMP_SPINCOUNT", str(bench.DEFAULT_SPIN_COUNT))
    assert bench.main(["--help"]) == 0
    assert "dadaptadam" in capsys.readouterr().out


def test_run_restores_the_thread_counts():
    """The rows set fastlr's (and NumPy's BLAS's, with threadpoolctl) thread count per
    sample; run() puts both back."""
    before = fastlr.get_num_threads(), bench._blas_threads()
    r = bench.run(["muon"], [1024], threads=[1], repeat=1, torch=False, min_sample=1e-4)
    assert (fastlr.get_num_threads(), bench._blas_threads()) == before
    assert r["machine"]["blas_threads_limited"] == (before[1] is not None)
    assert ("NumPy's BLAS limited" in bench.format_report(r)) == (before[1] is not None)


def test_bfloat16_state_row():
    """AdamW's bfloat16-state mode: the class keeps uint16 moments and matches its twin bit
    for bit; the peer is torch's fused AdamW (float32 state), whose first step is the same
    (the unrounded moments drive the update); float64 gives no rows."""
    base = bench.make_extra_inputs("adamw_bf16state", 4096, "float32")
    fast, ref = bench.clone_extra_inputs(base), bench.clone_extra_inputs(base)
    opt = bench._fastlr_class_stepper("adamw_bf16state", fast, 1, build_only=True)
    step_ref = bench.extra_reference_stepper("adamw_bf16state", ref)
    for _ in range(3):
        opt.step([fast["grad"]])
        step_ref()
    assert opt.state[0]["exp_avg"].dtype == np.uint16
    np.testing.assert_array_equal(fast["param"], ref["param"])
    try:
        bench._import_peer("adamw_bf16state")
    except NotImplementedError as e:
        pytest.skip(str(e))
    one, peer = bench.clone_extra_inputs(base), bench.clone_extra_inputs(base)
    bench.extra_fastlr_stepper("adamw_bf16state", one, 1)()
    bench.extra_peer_stepper("adamw_bf16state", peer)()
    np.testing.assert_allclose(peer["param"], one["param"], rtol=1e-6)
    r = bench.run(["adamw_bf16state"], [1024], ["float64", "float32"], [1], 1, torch=False,
                  min_sample=1e-4)
    assert [row["dtype"] for row in r["rows"]] == ["float32"]
