"""The pytest plugin tests/plugins/fastlr_sklearn_suite.py, which runs scikit-learn's own
``sklearn.neural_network`` tests with fastlr's optimizers patched in (CI runs the whole
suite; see the plugin's docstring). Here: a few of sklearn's tests in a child pytest, seconds.

(a) MLP tests that train with solver='sgd' and 'adam' pass, and the plugin reports steps of
    both classes (the patch of ``_multilayer_perceptron`` took) from this process's fastlr;
(b) a session in which fastlr never steps fails although its tests pass; its
    ``SGDOptimizer`` is fastlr's (the patch of ``_stochastic_optimizers`` took), and an
    excluded test is skipped with its name and reason in ``-ra``.
"""

import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

import fastlr

pytest.importorskip("sklearn", reason="scikit-learn is not installed: no suite to run")

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def run_suite(tmp_path, modules, select):
    # the child imports the fastlr this process imported (an in-place build or the installed
    # package), runs from an empty folder (no pytest settings of ours apply there)
    env = dict(os.environ)
    paths = [str(PLUGINS)]
    top = Path(fastlr.__file__).resolve().parents[1]
    if top not in {Path(p).resolve() for p in site.getsitepackages()}:
        paths.append(str(top))      # an in-place build (an installed one is found anyway)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    cmd = [sys.executable, "-m", "pytest", "-p", "fastlr_sklearn_suite", "-p",
           "no:cacheprovider", "-q", "-ra", "-k", select, "--pyargs",
           *[f"sklearn.neural_network.tests.{m}" for m in modules]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    counts = {name: (int(built), int(steps)) for name, built, steps in re.findall(
        r"^fastlr (\w+Optimizer): (\d+) built, (\d+) update_params steps$", out, re.M)}
    origin = re.search(r"^fastlr \S+ from (.+)$", out, re.M)
    assert origin and Path(origin.group(1)) == Path(fastlr.__file__), out
    return proc.returncode, counts, out


def test_mlp_tests_step_fastlr_and_pass(tmp_path):
    rc, counts, out = run_suite(tmp_path, ["test_mlp"],
                                "test_mlp_warm_start_no_convergence and not lbfgs")
    assert rc == 0, out
    assert re.search(r"\b4 passed\b", out), out
    assert counts["SGDOptimizer"][1] > 0 and counts["AdamOptimizer"][1] > 0, out
    assert re.search(r"^fastlr steps in total: [1-9]\d*$", out, re.M), out


def test_session_without_fastlr_steps_fails(tmp_path):
    rc, counts, out = run_suite(
        tmp_path, ["test_stochastic_optimizers"],
        "test_base_optimizer or test_sgd_optimizer_trigger_stopping or test_adam_optimizer")
    assert re.search(r"\b2 passed, 1 skipped\b", out), out
    assert rc == 1, out
    assert "fastlr never stepped" in out, out
    assert counts["SGDOptimizer"] == (1, 0), out    # built by the test: fastlr's class
    assert "excludes test_stochastic_optimizers.py::test_adam_optimizer: " in out, out
