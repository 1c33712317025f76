"""The package as installed: what ships, what an unbuilt tree says, process-wide side effects."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastlr

PACKAGE_DIR = pathlib.Path(fastlr.__file__).parent
SOURCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "fastlr"


@pytest.mark.skipif(os.environ.get("FASTLR_REQUIRE_INSTALLED") != "1",
                    reason="set FASTLR_REQUIRE_INSTALLED=1 to insist on an installed fastlr")
def test_tests_import_the_installed_package():
    # At the top of a flat-layout clone, `python -m pytest` would import ./fastlr instead.
    assert PACKAGE_DIR.resolve() != SOURCE_DIR.resolve(), (
        f"the tests imported the source tree {PACKAGE_DIR}, not the installed package")


def test_cython_api_and_typing_files_ship():
    for name in ["_kernels.pxd", "_kernels.pyi", "py.typed", "_kernels.pyx", "_core/loops.pxd", "_core/arrays.pxd",
                 "_schedules.pxd", "_schedules.pyi", "_core/engine.pyi"]:
        assert (PACKAGE_DIR / name).is_file(), f"{name} is missing from {PACKAGE_DIR}"
    pxd = (PACKAGE_DIR / "_kernels.pxd").read_text()
    for fn in ["sgd_f32", "sgd_f64", "rmsprop_f32", "rmsprop_f64", "adam_f32", "adam_f64",
               "adam_f32_parallel", "parallel_spans"]:
        assert f" {fn}(" in pxd
    assert (pathlib.Path(fastlr.get_include()) / "fastlr" / "_kernels.pxd").is_file()
    spxd = (PACKAGE_DIR / "_schedules.pxd").read_text()
    for fn in ["schedule_handle", "schedule_value", "schedule_values", "check_schedule_error"]:
        assert f" {fn}(" in spxd


def test_unbuilt_source_tree_says_how_to_build(tmp_path):
    """Importing a source tree without the compiled module gives a helpful error."""
    tree = tmp_path / "clone"
    (tree / "fastlr").mkdir(parents=True)
    for f in SOURCE_DIR.iterdir():
        if f.suffix in (".py", ".pyx", ".pxd"):
            shutil.copy(f, tree / "fastlr" / f.name)
    (tree / "setup.py").write_text("# marker\n")
    proc = subprocess.run([sys.executable, "-c", "import fastlr"], cwd=tree,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "has not been built" in proc.stderr
    assert "pip install ." in proc.stderr
    assert "build_ext --inplace" in proc.stderr


def test_no_flush_to_zero_after_import_and_use():
    """No -ffast-math side effect: subnormals survive (MXCSR FTZ/DAZ untouched)."""
    tiny = np.finfo(np.float64).smallest_subnormal
    p = np.full(8, tiny)
    g = np.zeros(8)
    fastlr.kernels.sgd(p, g, step=1, lr=0.1)
    assert np.all(p == tiny)
    assert np.float64(tiny) * np.float64(1.0) > 0
    assert np.float32(np.finfo(np.float32).smallest_subnormal) * np.float32(1.0) > 0


def test_version_and_openmp_flags():
    assert isinstance(fastlr.__version__, str) and fastlr.__version__
    assert isinstance(fastlr.kernels.HAVE_OPENMP, bool)
    if not fastlr.kernels.HAVE_OPENMP:
        assert fastlr.get_num_threads() == 1


def test_docstring_examples_run():
    import doctest

    import fastlr.distributed
    import fastlr.kernels
    import fastlr.optim
    import fastlr.plateau
    import fastlr.schedules

    for module in (fastlr.kernels, fastlr.schedules, fastlr.optim, fastlr.plateau,
                   fastlr.distributed):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_readme_installs_demo_and_tests_with_one_command():
    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "README.md").is_file():
        pytest.skip("not run from a clone")
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    readme = (root / "README.md").read_text()
    assert 'pip install ".[demo,test]"' in readme
    names = {req.split(">")[0].split("=")[0].split("[")[0].strip().lower()
             for extra in ("demo", "test") for req in extras[extra]}
    # what the demo and the test suite import beyond NumPy
    assert {"matplotlib", "scikit-learn", "pytest", "hypothesis", "cython"} <= names
    # the README says how long the test run takes
    import re

    assert re.search(r"pytest +# the tests: about \d+(\.\d+)?(–\d+)? minutes", readme)
