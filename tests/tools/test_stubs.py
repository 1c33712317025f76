"""The .pyi stubs of the compiled modules match the built modules.

mypy's stubtest, through .ci/stubtest (what CI runs), over the fastlr these tests imported:
one run (about 5-15 s) for all modules, then one test per module, so a stale stub fails under
its module's name. Skipped without mypy (the test extra installs it). The kernels' stubs are
also compared with the kernels' signatures without mypy, for every kernel of the table.
"""

import ast
import importlib.machinery
import importlib.util
import inspect
import os
import pathlib
import re
import site
import subprocess
import sys

import pytest

import fastlr
from fastlr import _kernels, _specs

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "stubtest"
PACKAGE_DIR = pathlib.Path(fastlr.__file__).resolve().parent

# Stubs of other modules that stubtest finds stale: xfail until fixed. strict: once a stub is
# fixed, its test passes unexpectedly and fails; then delete its entry here.
STALE: dict = {}


def _load_script():
    loader = importlib.machinery.SourceFileLoader("_fastlr_ci_stubtest", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


_ci = _load_script()
MODULES = [m for m in _ci.compiled_modules(PACKAGE_DIR) if m not in _ci.NO_STUB]


@pytest.fixture(scope="module")
def stubtest():
    """(returncode, output, {module: [error lines]}, unattributed lines) of one run."""
    pytest.importorskip("mypy.stubtest", reason="stubtest needs mypy (pip install mypy)")
    env = dict(os.environ)
    parent = str(PACKAGE_DIR.parent)
    if parent not in site.getsitepackages() + [site.getusersitepackages()]:
        # an in-place build (PYTHONPATH or `python -m pytest` at the top of the clone)
        env["PYTHONPATH"] = os.pathsep.join(
            [parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--concise"], env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert f"stubtest: fastlr from {PACKAGE_DIR}\n" in out, out    # the same fastlr
    errors, other = {m: [] for m in MODULES}, []
    if "not checking stubs due to mypy build errors" in out:
        errors = {m: [out] for m in MODULES}
    else:
        for line in out.splitlines():
            if line.startswith(("stubtest: ", "Success: ")) or not line.strip():
                continue
            name = re.match(r"(?:error: )?(fastlr(?:\.\w+)+)", line)
            owner = name and max((m for m in MODULES if (name.group(1) + ".").startswith(m + ".")),
                                 key=len, default=None)
            (errors[owner] if owner else other).append(line)
    return proc.returncode, out, errors, other


@pytest.mark.parametrize("module", [
    pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=f"stale stub: {STALE[m]}"))
    if m in STALE else m for m in MODULES])
def test_stub_matches_the_module(stubtest, module):
    _, _, errors, _ = stubtest
    assert not errors[module], "\n".join(errors[module])


def test_stubtest_says_nothing_else(stubtest):
    """No unused allowlist entry or other complaint; a failing run names a module."""
    returncode, out, errors, other = stubtest
    assert not other, out
    assert returncode == 0 or any(errors.values()), out


def test_every_compiled_module_is_checked():
    assert {"fastlr._kernels", "fastlr._schedules", "fastlr._core.engine"} <= set(MODULES)
    for module in MODULES:
        stub = PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".pyi")
        assert stub.is_file(), f"{module} has no stub {stub}"


def _stub_params(fn):
    """(name, kind, default) of the parameters of a function stub (ast)."""
    a = fn.args
    out = []
    pos_defaults = [inspect.Parameter.empty] * (len(a.args) - len(a.defaults)) + a.defaults
    for arg, default in zip(a.args, pos_defaults):
        out.append((arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, inspect.Parameter.KEYWORD_ONLY,
                    inspect.Parameter.empty if default is None else default))
    return [(n, k, d if d is inspect.Parameter.empty else ast.literal_eval(d))
            for n, k, d in out]


def test_kernel_stubs_match_every_kernel_of_the_table():
    """The shipped _kernels.pyi (rendered from the table) against the kernels' signatures,
    for every kernel of the table: names, order, kinds, defaults; and the return type."""
    tree = ast.parse((PACKAGE_DIR / "_kernels.pyi").read_text())
    stubs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert _specs.kernels()
    for name in _specs.kernels():
        assert name in stubs, f"no stub for the kernel {name}"
        runtime = [(p.name, p.kind, p.default)
                   for p in inspect.signature(getattr(_kernels, name)).parameters.values()]
        assert _stub_params(stubs[name]) == runtime, name
        fam = _specs.family(_specs.OPTIMIZERS[next(
            c for c, o in _specs.OPTIMIZERS.items() if o.kernel == name)].family)
        returns = ast.unparse(stubs[name].returns)
        assert returns == ("float" if fam.scalar_state else "None"), name
