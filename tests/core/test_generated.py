"""The compiled per-family code is generated from the optimizer table (fastlr/_specs.py).

setup.py renders fastlr/**/*.tp with :func:`fastlr._specs.template_namespace`. These tests
render the templates of the source tree in memory and check that the C API (_kernels.pxd)
declares, for every family of the table, its hyperparameter struct with exactly the table's
fields (ABI order) and its four functions; and that a family row added to the table is all
it takes for its declarations, core adapter, engine dispatch and kernel to appear.
"""

import dataclasses
import importlib.util
import pathlib
import re
import sys

import pytest

SOURCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "fastlr"

pytestmark = pytest.mark.skipif(
    not (SOURCE_DIR / "_kernels.pxd.tp").is_file(),
    reason=f"{SOURCE_DIR} has no templates (not a source checkout)")


@pytest.fixture(scope="module")
def specs():
    """fastlr/_specs.py of the source tree, imported by path as setup.py does."""
    pytest.importorskip("Cython.Tempita")
    spec = importlib.util.spec_from_file_location("_specs_under_test", SOURCE_DIR / "_specs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def rendered(specs, namespace=None):
    out = specs.render_templates(str(SOURCE_DIR), namespace, write=False)
    return {pathlib.Path(path).relative_to(SOURCE_DIR).as_posix(): text
            for path, text in out.items()}


def statements(pxd):
    """The declarations of a .pxd: comments dropped, continuation lines joined."""
    out, cur = [], ""
    for line in re.sub(r"#.*", "", pxd).split("\n"):
        if not line.strip():
            continue
        if cur and line.startswith(" ") and cur.rstrip().endswith(","):
            cur += " " + line.strip()
            continue
        if cur:
            out.append(cur)
        cur = line.rstrip()
    out.append(cur)
    return out


def struct_fields(pxd, struct):
    """[(ctype, name), ...] of `ctypedef struct <struct>:` in declaration order."""
    lines = statements(pxd)
    start = lines.index(f"ctypedef struct {struct}:")
    fields = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        ctype, name = line.split()
        fields.append((ctype, name))
    return fields


def function_args(pxd, name):
    """The argument list of `cdef void <name>(...)`, whitespace normalised."""
    for line in statements(pxd):
        m = re.match(rf"cdef void {name}\((.*)\) noexcept nogil$", re.sub(r"\s+", " ", line))
        if m:
            return [a.strip() for a in m.group(1).split(",")]
    raise AssertionError(f"{name} is not declared")


def check_family_declared(pxd, fam):
    assert struct_fields(pxd, fam.struct) == [(c, n) for c, n, _ in fam.c_fields]
    for dt, ctype in (("f32", "float"), ("f64", "double")):
        args = ([f"{ctype}* param", f"const {ctype}* grad"]
                + [f"{ctype}* {st.name}" for st in fam.state]
                + ["Py_ssize_t n", f"const {fam.struct}* h"])
        assert function_args(pxd, f"{fam.name}_{dt}") == args
        assert function_args(pxd, f"{fam.name}_{dt}_parallel") == args + ["int n_threads"]


def test_every_template_renders_with_a_header(specs):
    out = rendered(specs)
    assert set(out) >= {"_kernels.pxd", "_kernels_api.pxi", "_core/families.pxd",
                        "_core/engine_families.pxi"}
    for path, text in out.items():
        assert text.startswith(f"# generated from fastlr/{path}.tp by setup.py from "
                               f"fastlr/_specs.py; do not edit\n")


def test_kernels_pxd_declares_every_family_of_the_table(specs):
    pxd = rendered(specs)["_kernels.pxd"]
    assert specs.FAMILIES
    for fam in specs.FAMILIES.values():
        check_family_declared(pxd, fam)
    # the hand-written part of the C API is there too
    low_precision = ("adam_f32_bf16state", "adam_f32_int8state", "adam_16_f32state",
                     "adam_16_bf16state", "adam_16_int8state")
    for name in ("parallel_spans", "max_threads", "usable_threads", "nadam_mu",
                 *low_precision):
        assert re.search(rf"cdef \w+ {name}\(", pxd)
    assert "PARALLEL_MIN_SIZE = 32768" in pxd
    # ... and nothing else: one struct per family (and the 16-bit param's), four functions
    # per family
    structs = re.findall(r"^ctypedef struct (\w+):", pxd, re.M)
    assert structs == [fam.struct for fam in specs.FAMILIES.values()] + ["Param16"]
    kernels = re.findall(r"^cdef void (\w+)\(", pxd, re.M)
    # + parallel_spans and Adam's low-precision functions
    assert len(kernels) == 4 * len(specs.FAMILIES) + 1 + len(low_precision)


def test_kernel_stubs_follow_the_table(specs):
    import ast
    tree = ast.parse(rendered(specs)["_kernels.pyi"])
    stubs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in specs.kernels():
        args = stubs[name].args
        fam = specs.FAMILIES[specs.OPTIMIZERS[next(
            c for c, o in specs.OPTIMIZERS.items() if o.kernel == name)].family]
        assert [a.arg for a in args.args] == ["param", "grad"] + [st.name for st in fam.state]
        assert [a.arg for a in args.kwonlyargs][-1] == "n_threads"


def test_built_files_match_the_table(specs):
    """The rendered files next to the templates are what the table gives now (setup.py
    rewrites them on every build; a stale one means the build did not run)."""
    for path, text in rendered(specs).items():
        target = SOURCE_DIR / path
        if target.is_file():
            assert target.read_text() == text, f"{target} is stale: rebuild"


def test_a_new_row_is_all_it_takes(specs):
    """A fake family row in a rendered namespace produces its C API declarations, core
    adapters, CoreTable entry, engine dispatch and validated kernel."""
    H = specs.Hyper
    fake = specs.Family(
        "fakeopt", "FakeOptHyper",
        (("double", "lr", ""), ("double", "decay", "the fake decay"),
         ("int64_t", "step", ""), ("int", "maximize", "")),
        (specs.State("slow"), specs.State("fast"), specs.State("extra", "decay > 0")),
        (H("lr", None, "nonneg", True), H("decay", 0.5, "unit", True),
         H("maximize", False, "flag")),
        "FakeOpt (a row added in a test)")
    families = dict(specs.FAMILIES, fakeopt=fake)
    optimizers = dict(specs.OPTIMIZERS, FakeOpt=specs.Optimizer(
        "FakeOpt", "fakeopt", "fakeopt", "nothing", "a fake"))
    docs = dict(specs.KERNEL_DOCS, fakeopt="FakeOpt, in place.")
    out = rendered(specs, specs.template_namespace(families, optimizers, docs))

    pxd = out["_kernels.pxd"]
    for fam in families.values():
        check_family_declared(pxd, fam)
    assert "# ---- FakeOpt (a row added in a test) ----" in pxd

    fams = out["_core/families.pxd"]
    n = len(families) - 1
    assert f"K_FAKEOPT = {n}" in fams and f"N_FAMILIES = {n + 1}" in fams
    assert ("fakeopt_core(<float*>b[0], <const float*>b[1], <float*>b[2], <float*>b[3], "
            "<float*>b[4], n,") in fams
    assert "t.cores[K_FAKEOPT][1] = fakeopt_core_f64" in fams
    assert "FakeOptCoef fakeopt" in fams                      # in the CoefU union

    eng = out["_core/engine_families.pxi"]
    assert "cdef void fakeopt_fill(" in eng
    assert "h.decay = g.h[1].value" in eng and "h.maximize = <int>g.h[2].value" in eng
    assert "if not (g.h[1].value > 0):" in eng               # `extra` exists when decay > 0
    assert "o.fill = fakeopt_fill" in eng and '"fakeopt": K_FAKEOPT' in eng
    assert "('decay', 'in [0, 1)')" in eng                    # its schedulable check

    assert "def fakeopt(\n" in out["_kernels.pyi"]

    api = out["_kernels_api.pxi"]
    assert "def fakeopt(param, grad, slow, fast, extra=None, *, step, lr, decay=0.5, " \
           "maximize=False," in api
    assert 'h.decay = checked_real(fn, "decay", decay, UNIT)' in api
    assert "_need(fn, h.decay > 0, extra, \"extra\", f\"decay={decay!r}\")" in api
    assert "cdef void fakeopt_f64_parallel(" in api
    assert "run_job(CORES.cores[K_FAKEOPT][0], &c, 4, param, grad, slow, fast, extra," in api


def test_a_row_the_kernel_cannot_fill_is_refused(specs):
    fam = specs.FAMILIES["lion"]
    broken = dataclasses.replace(fam, c_fields=fam.c_fields + (("double", "unknown", ""),))
    with pytest.raises(ValueError, match="unknown"):
        specs.template_namespace(dict(specs.FAMILIES, lion=broken))
