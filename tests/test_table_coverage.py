"""Every row of the optimizer table (``fastlr._specs``) has everything an optimizer needs.

:func:`missing` names, for each row, whatever is absent: the C kernels of its family for
both dtypes (the C API capsules of ``fastlr._kernels``), the validated Python kernel in
``fastlr.kernels``, its NumPy twin in ``fastlr.reference`` with the same signature, the
class in ``fastlr``, its ``fastlr bench`` row, and where the row names a torch class: that
torch has it, a torch parity test of the class (``tests/optim``) and of its bridge
(``tests/compat``), the ``fastlr.compat.torch`` class; the kernel's entry in
``fastlr/_kernels.pyi``; the class in the docs (README.md or docs/).

The last tests append a fake row to copies of the table and check that :func:`missing`
reports exactly what that row lacks: each check can fail.
"""

import dataclasses
import importlib.util
import inspect
import pathlib

import pytest

import fastlr
import fastlr.kernels
import fastlr.reference
from fastlr import _specs
from fastlr._kernels import __pyx_capi__ as CAPI
from fastlr._tools import bench

ROOT = pathlib.Path(__file__).resolve().parent.parent

try:
    import torch
except ImportError:         # the torch checks are skipped (and say so)
    torch = None


def _load(relpath):
    """A test module by path (None when it cannot be imported here, e.g. without torch)."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(f"_coverage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except pytest.skip.Exception:
        return None
    return module


def _classes(cases):
    """The class names a parametrization list holds (the first value of each case)."""
    out = set()
    for case in cases:
        values = case.values if hasattr(case, "values") else case
        out.add(values[0])
    return out


@dataclasses.dataclass
class Env:
    """Where the coverage looks (the real places by default; a test may substitute)."""

    capi: set
    kernels: object
    reference: object
    package: object
    bench_rows: set
    class_parity: set         # classes in the fastlr-vs-torch trajectory parametrizations
    bridge_parity: set        # classes in the compat.torch-vs-torch parametrization
    compat: object            # fastlr.compat.torch, or None without torch
    torch_optim: object       # torch.optim, or None without torch
    stubs: str
    docs: str


def real_env():
    optim_tests = _load("tests/optim/test_optim.py")
    family_tests = _load("tests/optim/test_optim_families.py")
    compat_tests = _load("tests/compat/test_compat_torch.py") if torch is not None else None
    compat = None
    if torch is not None:
        import fastlr.compat.torch as compat
    docs = (ROOT / "README.md").read_text()
    docs += "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    return Env(
        capi=set(CAPI), kernels=fastlr.kernels, reference=fastlr.reference, package=fastlr,
        bench_rows=set(bench.SPECS),
        class_parity=_classes(optim_tests.PARITY_CASES) | _classes(family_tests.FAMILY_CASES),
        bridge_parity=_classes(compat_tests.CASES) if compat_tests is not None else set(),
        compat=compat, torch_optim=torch.optim if torch is not None else None,
        stubs=(ROOT / "fastlr" / "_kernels.pyi").read_text(), docs=docs)


def missing(optimizers, families, env):
    """What each row lacks: a list of "Class: what is missing" lines (empty: complete)."""
    out = []
    for row in optimizers.values():
        def miss(what, row=row):
            out.append(f"{row.cls}: {what}")

        fam = families.get(row.family)
        if fam is None:
            miss(f"no family {row.family!r} in the table")
            continue
        for dtype in ("f32", "f64"):
            for suffix in ("", "_parallel"):
                if f"{fam.name}_{dtype}{suffix}" not in env.capi:
                    miss(f"no C kernel {fam.name}_{dtype}{suffix} in fastlr._kernels")
        fn = getattr(env.kernels, row.kernel, None)
        if not callable(fn) or row.kernel not in getattr(env.kernels, "__all__", ()):
            miss(f"no validated kernel fastlr.kernels.{row.kernel}")
            fn = None
        twin = getattr(env.reference, row.kernel, None)
        if not callable(twin):
            miss(f"no NumPy twin fastlr.reference.{row.kernel}")
        elif fn is not None and inspect.signature(twin) != inspect.signature(fn):
            miss(f"fastlr.reference.{row.kernel} and fastlr.kernels.{row.kernel} have "
                 f"different signatures")
        cls = getattr(env.package, row.cls, None)
        if not (inspect.isclass(cls) and issubclass(cls, fastlr.Optimizer)
                and row.cls in env.package.__all__):
            miss(f"no optimizer class fastlr.{row.cls}")
        if row.kernel not in env.bench_rows:
            miss(f"no fastlr bench row {row.kernel!r}")
        if f"def {row.kernel}(" not in env.stubs:
            miss(f"no stub for {row.kernel} in fastlr/_kernels.pyi")
        if f"`{row.cls}`" not in env.docs:
            miss(f"`{row.cls}` is not in README.md or docs/")
        if not row.torch:
            continue
        if env.torch_optim is None:
            continue                    # no torch here: test_torch_checks_run says so
        if not hasattr(env.torch_optim, row.torch):
            miss(f"torch.optim has no {row.torch}")
            continue
        if row.cls not in env.class_parity:
            miss("no torch parity test of the class (tests/optim PARITY_CASES or "
                 "FAMILY_CASES)")
        if row.cls not in env.bridge_parity:
            miss("no torch parity test of its bridge (tests/compat/test_compat_torch.py "
                 "CASES)")
        bridge = getattr(env.compat, row.cls, None)
        if not (inspect.isclass(bridge)
                and issubclass(bridge, getattr(env.torch_optim, row.torch))):
            miss(f"no fastlr.compat.torch.{row.cls} (a torch.optim.{row.torch})")
    return out


@pytest.fixture(scope="module")
def env():
    return real_env()


def test_every_row_is_complete(env):
    assert missing(_specs.OPTIMIZERS, _specs.FAMILIES, env) == []


def test_torch_checks_run():
    if torch is None:
        pytest.skip("torch not installed: the torch parity and fastlr.compat.torch checks "
                    "of test_every_row_is_complete did not run")
    assert all(hasattr(torch.optim, o.torch) for o in _specs.OPTIMIZERS.values() if o.torch)


def _with_fake_row(torch_name):
    """Copies of the table with a fake family and optimizer appended."""
    families = dict(_specs.FAMILIES)
    families["fakeopt"] = _specs.Family(
        "fakeopt", "FakeHyper", (("double", "lr", ""),), (_specs.State("exp_avg"),),
        (_specs.Hyper("lr", None, "nonneg", True),), "a fake family", uses_step=False)
    optimizers = dict(_specs.OPTIMIZERS)
    optimizers["FakeOpt"] = _specs.Optimizer("FakeOpt", "fakeopt", "fakeopt", "nothing",
                                             "a fake optimizer", torch=torch_name)
    return optimizers, families


def test_a_new_row_without_anything_is_reported(env):
    optimizers, families = _with_fake_row("")
    assert missing(optimizers, families, env) == [
        "FakeOpt: no C kernel fakeopt_f32 in fastlr._kernels",
        "FakeOpt: no C kernel fakeopt_f32_parallel in fastlr._kernels",
        "FakeOpt: no C kernel fakeopt_f64 in fastlr._kernels",
        "FakeOpt: no C kernel fakeopt_f64_parallel in fastlr._kernels",
        "FakeOpt: no validated kernel fastlr.kernels.fakeopt",
        "FakeOpt: no NumPy twin fastlr.reference.fakeopt",
        "FakeOpt: no optimizer class fastlr.FakeOpt",
        "FakeOpt: no fastlr bench row 'fakeopt'",
        "FakeOpt: no stub for fakeopt in fastlr/_kernels.pyi",
        "FakeOpt: `FakeOpt` is not in README.md or docs/",
    ]


def test_a_new_row_with_a_torch_class_is_reported(env):
    if torch is None:
        pytest.skip("torch not installed")
    # a torch class torch lacks
    optimizers, families = _with_fake_row("FakeOpt")
    assert missing(optimizers, families, env)[-1] == "FakeOpt: torch.optim has no FakeOpt"
    # a torch class torch has, but no parity tests and no bridge
    optimizers, families = _with_fake_row("Adam")
    assert missing(optimizers, families, env)[-3:] == [
        "FakeOpt: no torch parity test of the class (tests/optim PARITY_CASES or "
        "FAMILY_CASES)",
        "FakeOpt: no torch parity test of its bridge (tests/compat/test_compat_torch.py "
        "CASES)",
        "FakeOpt: no fastlr.compat.torch.FakeOpt (a torch.optim.Adam)",
    ]


def test_each_check_fails_alone(env):
    """Take one thing away from a complete row (NAdam) at a time: exactly that is named."""
    rows = {"NAdam": _specs.OPTIMIZERS["NAdam"]}

    def without(**changes):
        return missing(rows, _specs.FAMILIES, dataclasses.replace(env, **changes))

    class Hidden:
        """A module without the named attribute."""

        def __init__(self, module, name):
            self._module, self._name = module, name
            self.__all__ = [n for n in getattr(module, "__all__", ()) if n != name]

        def __getattr__(self, attr):
            if attr == self._name:
                raise AttributeError(attr)
            return getattr(self._module, attr)

    def twin(param, grad, exp_avg, exp_avg_sq, *, step, lr):   # another signature
        pass

    class Reference:
        nadam = staticmethod(twin)

    assert without() == []
    assert without(capi=env.capi - {"nadam_f64"}) == [
        "NAdam: no C kernel nadam_f64 in fastlr._kernels"]
    assert without(kernels=Hidden(env.kernels, "nadam")) == [
        "NAdam: no validated kernel fastlr.kernels.nadam"]
    assert without(reference=Hidden(env.reference, "nadam")) == [
        "NAdam: no NumPy twin fastlr.reference.nadam"]
    assert without(reference=Reference) == [
        "NAdam: fastlr.reference.nadam and fastlr.kernels.nadam have different signatures"]
    assert without(package=Hidden(env.package, "NAdam")) == [
        "NAdam: no optimizer class fastlr.NAdam"]
    assert without(bench_rows=env.bench_rows - {"nadam"}) == [
        "NAdam: no fastlr bench row 'nadam'"]
    assert without(stubs=env.stubs.replace("def nadam(", "def nadam_(")) == [
        "NAdam: no stub for nadam in fastlr/_kernels.pyi"]
    assert without(docs=env.docs.replace("`NAdam`", "NAdam")) == [
        "NAdam: `NAdam` is not in README.md or docs/"]
    if torch is None:
        return
    assert without(class_parity=env.class_parity - {"NAdam"}) == [
        "NAdam: no torch parity test of the class (tests/optim PARITY_CASES or FAMILY_CASES)"]
    assert without(bridge_parity=env.bridge_parity - {"NAdam"}) == [
        "NAdam: no torch parity test of its bridge (tests/compat/test_compat_torch.py CASES)"]
    assert without(compat=Hidden(env.compat, "NAdam")) == [
        "NAdam: no fastlr.compat.torch.NAdam (a torch.optim.NAdam)"]
