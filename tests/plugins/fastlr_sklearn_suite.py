"""pytest plugin: run scikit-learn's own ``sklearn.neural_network`` tests with fastlr's optimizers.

Load it with ``-p fastlr_sklearn_suite`` (this folder, ``tests/plugins``, on ``PYTHONPATH``)
and point pytest at the tests sklearn ships in its wheel. CI runs it against the installed
fastlr, from ``/`` (at the top of the clone ``import fastlr`` would find the unbuilt
source tree, and the repo's pytest settings would apply)::

    cd / && PYTHONPATH=$REPO/tests/plugins python -m pytest -p fastlr_sklearn_suite \\
        -p no:cacheprovider -q --pyargs sklearn.neural_network.tests

At configure time, before collection, for the whole session, the plugin

* enters :func:`fastlr.compat.sklearn.patch_mlp` (sklearn's ``MLPClassifier`` /
  ``MLPRegressor`` then build fastlr's ``SGDOptimizer`` / ``AdamOptimizer``) and, inside
  it, puts counting subclasses of fastlr's two classes in
  ``sklearn.neural_network._multilayer_perceptron``;
* puts the same counting classes in ``sklearn.neural_network._stochastic_optimizers``, so a
  test module's ``from sklearn.neural_network._stochastic_optimizers import AdamOptimizer``
  (collection imports it after this) gets fastlr's class too. ``BaseOptimizer`` stays
  sklearn's: fastlr has no public base class and sklearn's tests use it on its own.

Each class counts the optimizers built and the ``update_params`` calls that returned (the
steps). The terminal summary prints the counts; a session in which fastlr never stepped
fails (exit status 1) even when every test passed: then the patch did not take and the run
proved nothing. ``--collect-only`` is exempt. At unconfigure the names are restored.

``EXCLUDED`` names the tests that are skipped, with the reason ``-ra`` shows: exactly those
that rely on sklearn's optimizer classes accepting inputs sklearn's own estimators never pass
(fastlr's classes validate their arguments as ``MLPClassifier`` does and raise instead).
Every other test must pass; a test is not excluded because it fails. The summary also
names an exclusion that matched no collected test (renamed upstream, or deselected).
"""

import pytest

# "file::test" (every parametrization) or "file::test[id]" (one) -> why it is skipped
EXCLUDED = {
    "test_stochastic_optimizers.py::test_adam_optimizer":
        "it builds AdamOptimizer with beta_2=1.0 (np.arange(0.995, 1.0, 0.001) ends at 1.0, "
        "for both beta_1), which MLPClassifier/MLPRegressor reject (beta_2 in [0, 1)); "
        "sklearn's class takes it (learning rate sqrt(1 - 1**t) = 0: the step is a no-op), "
        "fastlr's raises ValueError as the estimators' validation does. Its other 10 "
        "(beta_1, beta_2) cases match bit for bit (tests/compat/test_compat_sklearn.py checks "
        "the classes against sklearn's)",
}

_COUNTS = {}          # class name -> {"built": n, "steps": n}
_STATE = {}           # what unconfigure restores


def _counting(base):
    name = base.__name__
    counts = _COUNTS.setdefault(name, {"built": 0, "steps": 0})

    class Counting(base):
        """Counts; otherwise fastlr's class (see the module docstring)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            counts["built"] += 1

        def update_params(self, params, grads):
            super().update_params(params, grads)
            counts["steps"] += 1

    # a module-level name here, so an estimator holding one pickles (joblib tests do)
    Counting.__name__ = Counting.__qualname__ = f"Counting{name}"
    Counting.__module__ = __name__
    globals()[Counting.__name__] = Counting
    return Counting


def total_steps():
    """fastlr steps taken by sklearn's tests in this session so far."""
    return sum(c["steps"] for c in _COUNTS.values())


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    from fastlr.compat import sklearn as fsk
    from sklearn.neural_network import _multilayer_perceptron as mlp
    from sklearn.neural_network import _stochastic_optimizers as so

    names = ("SGDOptimizer", "AdamOptimizer")
    patch = fsk.patch_mlp()
    patch.__enter__()
    _STATE["patch"] = patch
    if (mlp.SGDOptimizer, mlp.AdamOptimizer) != (fsk.SGDOptimizer, fsk.AdamOptimizer):
        raise pytest.UsageError("fastlr.compat.sklearn.patch_mlp() did not patch "
                                "sklearn.neural_network._multilayer_perceptron")
    counting = {n: _counting(getattr(fsk, n)) for n in names}
    _STATE["so"] = {n: getattr(so, n) for n in names}
    for n, cls in counting.items():
        setattr(mlp, n, cls)          # patch_mlp's exit restores sklearn's
        setattr(so, n, cls)
    _STATE["matched"] = set()


def pytest_unconfigure(config):
    saved = _STATE.pop("so", None)
    if saved is not None:
        from sklearn.neural_network import _stochastic_optimizers as so
        for n, obj in saved.items():
            setattr(so, n, obj)
    patch = _STATE.pop("patch", None)
    if patch is not None:
        patch.__exit__(None, None, None)


def _keys(item):
    file = item.path.name if getattr(item, "path", None) else item.nodeid.split("::")[0]
    base = getattr(item, "originalname", None) or item.name.split("[")[0]
    return f"{file}::{item.name}", f"{file}::{base}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        for key in _keys(item):
            if key in EXCLUDED:
                _STATE["matched"].add(key)
                item.add_marker(pytest.mark.skip(
                    reason=f"fastlr_sklearn_suite excludes {key}: {EXCLUDED[key]}"))
                break


def pytest_sessionfinish(session, exitstatus):
    if session.config.option.collectonly:
        return
    if total_steps() == 0 and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    tr.section("fastlr_sklearn_suite")
    import fastlr
    tr.write_line(f"fastlr {fastlr.__version__} from {fastlr.__file__}")
    for name, c in sorted(_COUNTS.items()):
        tr.write_line(f"fastlr {name}: {c['built']} built, {c['steps']} update_params steps")
    tr.write_line(f"fastlr steps in total: {total_steps()}")
    unmatched = sorted(set(EXCLUDED) - _STATE.get("matched", set()))
    for key in unmatched:
        tr.write_line(f"exclusion matched no collected test: {key}")
    if total_steps() == 0 and not config.option.collectonly:
        tr.write_line("FAILED: fastlr never stepped (the patch did not take, or no selected "
                      "test trains an MLP with solver='sgd'/'adam')", red=True, bold=True)
