"""The documentation site (docs/): every public name is in the API reference, the pages
generated from the optimizer table and the schedules cover every row and constructor, and
the docstrings shown verbatim while awaiting a fix still exist.

Skipped when Sphinx is not installed (``.ci/docs`` installs it and builds the site itself,
with warnings as errors, and runs its doctests).
"""

import importlib
import importlib.util
import inspect
import pathlib
import re
import sys

import pytest

pytest.importorskip("sphinx", reason="the docs tests need Sphinx (pip install sphinx)")

import fastlr  # noqa: E402
from fastlr import _specs  # noqa: E402

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
API = DOCS / "api"

pytestmark = pytest.mark.skipif(not (DOCS / "conf.py").is_file(), reason=(
    f"{DOCS} is missing: the documentation ships with a source checkout only"))

#: The modules whose public names (``__all__``) the API reference must document.
PUBLIC_MODULES = ("fastlr", "fastlr.kernels", "fastlr.schedules", "fastlr.reference",
                  "fastlr.compat.sklearn", "fastlr.compat.torch", "fastlr.ema",
                  "fastlr.plateau", "fastlr.lr_finder", "fastlr.distributed", "fastlr.plot")


def _extension():
    spec = importlib.util.spec_from_file_location("fastlr_docs_under_test",
                                                  DOCS / "_ext" / "fastlr_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public_names(module_name):
    """(module name, its __all__); fastlr.compat.torch's from the table without torch."""
    if module_name == "fastlr.compat.torch" and importlib.util.find_spec("torch") is None:
        return [r.cls for r in _specs.OPTIMIZERS.values() if r.torch]
    return list(importlib.import_module(module_name).__all__)


def _documented():
    """The targets of the API reference's directives: ``.. autoclass:: fastlr.Adam`` etc."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(API.glob("*.rst")))
    return set(re.findall(r"^\s*\.\. (?:auto\w+|module|data|function|class)::\s+(\S+)\s*$",
                          text, re.M))


def _resolve(target):
    """The object a directive target names, or None (fastlr.compat.torch without torch)."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for attr in parts[k:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_the_api_reference(module_name):
    documented = _documented()
    # a class or function re-exported elsewhere (fastlr.ema.EMA is fastlr.EMA) is
    # documented once, under one of its names
    documented_ids = {id(obj) for obj in map(_resolve, documented)
                      if inspect.isclass(obj) or inspect.isroutine(obj)
                      or inspect.ismodule(obj)}
    missing = []
    module = (importlib.import_module(module_name)
              if importlib.util.find_spec("torch") or module_name != "fastlr.compat.torch"
              else None)
    for name in _public_names(module_name):
        full = f"{module_name}.{name}"
        if full in documented:
            continue
        obj = getattr(module, name, None) if module is not None else None
        if obj is not None and (inspect.isclass(obj) or inspect.isroutine(obj)
                                or inspect.ismodule(obj)) and id(obj) in documented_ids:
            continue
        missing.append(full)
    assert not missing, (f"public names missing from the API reference (docs/api/*.rst): "
                         f"{missing}; add an autoclass/autofunction/autodata/automodule "
                         "directive for each")


def test_public_modules_are_documented_as_modules():
    documented = _documented()
    for name in ("fastlr.kernels", "fastlr.schedules", "fastlr.reference",
                 "fastlr.compat.sklearn", "fastlr.compat.torch", "fastlr.distributed",
                 "fastlr.plot"):
        assert name in documented, f"docs/api: no automodule for {name}"


def test_optimizer_pages_cover_every_row_and_argument(tmp_path):
    ext = _extension()
    ext.generate_optimizers(str(tmp_path))      # raises on an undescribed argument
    pages = {p.stem: p.read_text(encoding="utf-8")
             for p in (tmp_path / "optimizers").glob("*.rst")}
    toc = (tmp_path / "optimizers_toc.inc").read_text(encoding="utf-8")
    for row in _specs.OPTIMIZERS.values():
        page = pages[row.family]
        assert f":class:`fastlr.{row.cls}`" in page and f":class:`fastlr.{row.cls}`" in toc
        assert f"{row.cls} arguments" in page
        fam = _specs.FAMILIES[row.family]
        for h in fam.hypers:
            if h.name not in row.fixed:
                assert f"``{h.pair or h.name}``" in page, (row.cls, h.name)
        for st in fam.state:
            assert f"``{st.name}``" in page, (row.cls, st.name)
        # the formula is the table's text
        assert _specs.KERNEL_DOCS[row.family].strip().splitlines()[2].strip() in page


def test_undescribed_argument_fails_the_build(tmp_path, monkeypatch):
    ext = _extension()
    monkeypatch.setattr(ext, "OPTION_DOCS", {})
    with pytest.raises(Exception, match="OPTION_DOCS"):
        ext.generate_optimizers(str(tmp_path))


def test_every_schedule_constructor_has_a_picture():
    ext = _extension()
    drawn = [n for n in fastlr.schedules.__all__ if n not in ext.NOT_DRAWN]
    assert sorted(drawn) == sorted(ext.SCHEDULE_EXAMPLES), (
        "docs/_ext/fastlr_docs.py SCHEDULE_EXAMPLES must have one example per schedule "
        "constructor of fastlr.schedules.__all__")
    ns = {n: getattr(fastlr.schedules, n) for n in fastlr.schedules.__all__}
    for name, (call, steps) in ext.SCHEDULE_EXAMPLES.items():
        s = eval(call, {"__builtins__": {}}, ns)
        assert call.startswith(name + "(") and steps > 0
        assert s.values(range(steps)).shape == (steps,)


def test_pending_docstring_fixes_name_existing_objects():
    """conf.py's PENDING_DOCSTRING_FIXES: each entry must name a documented object (remove
    an entry once its fix has landed; the site then parses that docstring again)."""
    import runpy

    saved = list(sys.path)
    try:
        conf = runpy.run_path(str(DOCS / "conf.py"))
    finally:
        sys.path[:] = saved
    documented = _documented()
    for name in conf["PENDING_DOCSTRING_FIXES"]:
        owner = name.rsplit(".", 1)[0]
        assert name in documented or owner in documented, name
        module_name, _, attr = name.rpartition(".")
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            obj = importlib.import_module(module_name.rpartition(".")[0])
            obj = getattr(obj, module_name.rpartition(".")[2])
        assert hasattr(obj, attr), f"PENDING_DOCSTRING_FIXES names {name}, which is gone"
