"""The performance guard's own logic (.ci/perfguard.py), without valgrind.

The guard itself runs in CI (`python .ci/perfguard.py`, minutes under valgrind); here: the
parsing of callgrind's output, the per-step arithmetic, the budget comparison and file, the
no-valgrind exits, and every case's driver for a couple of steps (so a renamed API breaks
this test, not only the CI guard).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

import fastlr

GUARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci",
                     "perfguard.py")
pytestmark = pytest.mark.skipif(not os.path.exists(GUARD),
                                reason=".ci/perfguard.py is not in this tree (an sdist?)")


@pytest.fixture(scope="module")
def pg():
    spec = importlib.util.spec_from_file_location("fastlr_perfguard", GUARD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_dump(path, part, total, trigger="--dump-before=sched_get_priority_max",
              keys=("summary", "totals")):
    lines = ["# callgrind format", "version: 1", "creator: callgrind-3.19.0", "pid: 42",
             "cmd:  python perfguard.py --case x --steps 10", f"part: {part}", "",
             f"desc: Trigger: {trigger}", "", "positions: line", "events: Ir"]
    if "summary" in keys:
        lines.append(f"summary: {total}")
    lines += ["", "ob=/usr/lib/libc.so.6", "fn=memcpy", "0 123", ""]
    if "totals" in keys:
        lines.append(f"totals: {total}")
    path.write_text("\n".join(lines) + "\n")


# ---- callgrind output ----------------------------------------------------------------------

@pytest.mark.parametrize("keys", [("summary", "totals"), ("totals",), ("summary",)])
def test_parse_callgrind_total(pg, tmp_path, keys):
    fake_dump(tmp_path / "out", 1, 123456789, keys=keys)
    assert pg.parse_callgrind_total(str(tmp_path / "out")) == 123456789


def test_parse_callgrind_total_refuses_a_file_without_totals(pg, tmp_path):
    (tmp_path / "out").write_text("# callgrind format\nevents: Ir\nfn=main\n0 5\n")
    with pytest.raises(ValueError, match="no 'totals:' or 'summary:' line"):
        pg.parse_callgrind_total(str(tmp_path / "out"))


def test_marker_parts_are_the_triggered_dumps_in_part_order(pg, tmp_path):
    out = tmp_path / "callgrind.out"
    # parts 1..11 (10 sorts after 9, not after 1); the final dump (program termination) is
    # the file without a suffix and is not a marker part
    for k in range(1, 12):
        fake_dump(tmp_path / f"callgrind.out.{k}", k, 1000 * k)
    fake_dump(out, 12, 5, trigger="Program termination")
    (tmp_path / "valgrind.log").write_text("==1== log\n")
    assert pg.marker_parts(str(out)) == [1000 * k for k in range(1, 12)]


def test_per_step_is_the_difference_of_the_phases_over_n(pg):
    # setup, N=10 steps (+ marker overhead 500), 2N steps (+ the same overhead)
    assert pg.per_step([10**9, 10 * 1234 + 500, 20 * 1234 + 500], 10) == 1234


def test_per_step_refuses_unexpected_dumps(pg):
    with pytest.raises(ValueError, match="expected 3 marker dumps"):
        pg.per_step([10**9, 1000, 2000, 4000], 10)
    with pytest.raises(ValueError, match="not about twice"):
        pg.per_step([10**9, 1000, 1000], 10)


# ---- budgets -------------------------------------------------------------------------------

BUDGETS = {"a": {"instructions_per_step": 1000}, "b": {"instructions_per_step": 1000},
           "c": {"instructions_per_step": 1000}}


def verdicts(pg, results, budgets=BUDGETS, tolerance=0.15):
    return {row[0]: row for row in pg.compare(budgets, results, tolerance)}


def test_within_budget_passes(pg):
    rows = verdicts(pg, {"a": {"per_step": 1000.0}, "b": {"per_step": 1149.0},
                         "c": {"per_step": 851.0}})
    for name in "abc":
        assert rows[name][5] is False and rows[name][4] == "ok", rows[name]
    assert rows["b"][3] == pytest.approx(1.149)


def test_over_budget_fails(pg):
    rows = verdicts(pg, {"a": {"per_step": 1151.0}, "b": {"per_step": 4000.0}})
    for name in "ab":
        assert rows[name][5] is True and "OVER BUDGET" in rows[name][4], rows[name]
    # a tighter tolerance fails what 15% lets through
    assert verdicts(pg, {"a": {"per_step": 1100.0}}, tolerance=0.05)["a"][5] is True


def test_much_cheaper_passes_and_suggests_a_refresh(pg):
    row = verdicts(pg, {"a": {"per_step": 500.0}})["a"]
    assert row[5] is False and "cheaper" in row[4] and "--update" in row[4]


def test_a_case_without_budget_fails_clearly(pg):
    row = verdicts(pg, {"new_case": {"per_step": 10.0}})["new_case"]
    assert row[5] is True and "NO BUDGET" in row[4] and "--update" in row[4]


def test_skipped_and_failed_cases(pg):
    rows = verdicts(pg, {"a": {"skipped": "torch not importable"},
                         "b": {"error": "driver exited 1"}})
    assert rows["a"][5] is False and rows["a"][4].startswith("skipped")
    assert rows["b"][5] is True and "driver exited 1" in rows["b"][4]


def test_table_has_one_line_per_case(pg):
    table = pg.format_table(pg.compare(BUDGETS, {"a": {"per_step": 2000.0},
                                                 "b": {"skipped": "x"}}, 0.15))
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["case", "budget"] and len(lines) == 4
    assert "2,000" in lines[2] and "2.000" in lines[2] and "OVER BUDGET" in lines[2]


def test_missing_budget_file_is_a_clear_error(pg, tmp_path):
    with pytest.raises(SystemExit, match="--update"):
        pg.load_budgets(str(tmp_path / "nope.json"))


def test_update_writes_budgets_and_keeps_skipped_ones(pg, tmp_path):
    path = str(tmp_path / "budgets.json")
    names = list(pg.CASES)
    pg.update_budgets({n: {"per_step": 100.0 * (k + 1)} for k, n in enumerate(names)}, path)
    pg.update_budgets({names[0]: {"per_step": 7.4}, names[1]: {"skipped": "x"}}, path)
    data = pg.load_budgets(path)
    assert data["tolerance"] == pg.DEFAULT_TOLERANCE
    assert data["cases"][names[0]]["instructions_per_step"] == 7
    assert data["cases"][names[1]]["instructions_per_step"] == 200     # kept
    assert set(data["cases"]) == set(names)
    rec = data["cases"][names[0]]["recorded_with"]
    assert rec["python"] and rec["numpy"] and rec["fastlr_cpu"] == "baseline"


def test_committed_budgets_cover_every_case(pg):
    data = pg.load_budgets()
    assert set(data["cases"]) == set(pg.CASES), "run `python .ci/perfguard.py --update`"
    assert 0 < data["tolerance"] < 1
    for name, entry in data["cases"].items():
        assert entry["instructions_per_step"] > 0, name
        assert {"python", "numpy", "torch", "machine"} <= set(entry["recorded_with"]), name


# ---- the command line without valgrind ------------------------------------------------------

def test_without_valgrind_ci_fails_and_local_runs_pass(pg, monkeypatch, capsys):
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    assert pg.main([]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err
    monkeypatch.delenv("CI")
    assert pg.main([]) == 0
    assert "skipping" in capsys.readouterr().out


def test_the_guard_imports_only_the_standard_library():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('g', "
            f"{GUARD!r}); m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            f"print(sorted(n for n in ('numpy', 'fastlr', 'torch') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- the drivers, natively ------------------------------------------------------------------

def _torch_importable():
    return importlib.util.find_spec("torch") is not None


@pytest.mark.parametrize("name", ["adam_1x1k_f32", "adam_200x100_f32", "kernels_adam_1k_f32",
                                  "sklearn_adam_mlp_f64", "torch_adam_10x6k4_f32"])
def test_each_driver_runs(pg, name):
    assert name in pg.CASES
    if pg.CASES[name][2] == "torch" and not _torch_importable():
        pytest.skip("torch is not installed")
    # in a subprocess (the drivers set the thread counts), importing this fastlr
    env = dict(os.environ, **pg.DRIVER_ENV)
    top = os.path.dirname(os.path.dirname(os.path.abspath(fastlr.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([top] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, GUARD, "--case", name, "--steps", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_case_is_tested(pg):
    assert set(pg.CASES) == {"adam_1x1k_f32", "adam_200x100_f32", "kernels_adam_1k_f32",
                             "sklearn_adam_mlp_f64", "torch_adam_10x6k4_f32"}
