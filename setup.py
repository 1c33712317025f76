"""Build script for fastlr's Cython extensions.

Everything declarative lives in pyproject.toml; this file only says how the compiled
modules are built. Environment switches (all optional, read at build time):

FASTLR_NATIVE=1         add -march=native (a build for this CPU only; never for wheels).
                        Without it the build is portable: baseline x86-64 code, plus the core
                        loops and the kernel modules of fastlr/_core/dispatch.py's MODULES
                        compiled again for x86-64-v3 (AVX2), and the compute-bound kernel
                        modules int8state and mixed a third time for x86-64-v4 (AVX-512);
                        fastlr/_core/dispatch.py picks at run time.
FASTLR_DEBUG_CYTHON=1   turn Cython's boundscheck / wraparound / initializedcheck on.
FASTLR_NO_OPENMP=1      build without OpenMP even when the compiler has it (serial kernels).
FASTLR_ANNOTATE=1       write Cython's annotated HTML next to each .pyx.

Flags: -O3 -fno-math-errno -ffp-contract=off and no fast-math flags at all: results must be
the same bits on every build, NaN and Inf must behave as IEEE says, and linking with
fast-math can flip flush-to-zero for the whole process. -fno-math-errno lets sqrt vectorize.
The <name>_x86_64_v3 / <name>_x86_64_v4 extensions add -march=x86-64-v3 / -march=x86-64-v4
and -mtune=generic; each level is built only on x86-64 when the compiler accepts its flag
(else a line says which are skipped, and the lower levels are used).

Generated sources: before cythonize, every fastlr/**/*.tp (a Tempita template) is rendered
to the same path without .tp, from the optimizer table in fastlr/_specs.py (its
template_namespace); a file is rewritten only when its content changed. The rendered files
are not committed (.gitignore); sdists carry the templates, wheels the rendered files.
"""

import os
import platform
import shutil
import sys
import importlib.util
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _env_flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


DEBUG = _env_flag("FASTLR_DEBUG_CYTHON")

# The one place for compiler directives.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
    "binding": True,
}

# Extensions: (module name, sources). Later modules are added here.
MODULES = [
    # the C API modules (other Cython code cimports them by these names)
    ("fastlr._kernels", ["fastlr/_kernels.pyx"]),
    ("fastlr._schedules", ["fastlr/_schedules.pyx"]),
    # the compiled core: the optimizer engine, the EMA and scikit-learn-convention kernels
    ("fastlr._core.engine", ["fastlr/_core/engine.pyx"]),
    ("fastlr._core.sklearn_kernels", ["fastlr/_core/sklearn_kernels.pyx"]),
    ("fastlr._core.ema", ["fastlr/_core/ema.pyx"]),
    ("fastlr._core.ema_x86_64_v3", ["fastlr/_core/ema_x86_64_v3.pyx"]),
    ("fastlr._core.args", ["fastlr/_core/args.pyx"]),
    # fastlr.compat.torch's step: every tensor of a torch optimizer in one call
    ("fastlr._core.torch_step", ["fastlr/_core/torch_step.pyx"]),
    ("fastlr._core.layerwise", ["fastlr/_core/layerwise.pyx"]),
    ("fastlr._core.layerwise_x86_64_v3", ["fastlr/_core/layerwise_x86_64_v3.pyx"]),
    # fastlr.distributed's bfloat16 grads: packing and the fused unpack-and-add
    ("fastlr._core.bf16", ["fastlr/_core/bf16.pyx"]),
    # row-sparse grads: coalescing and the lazy (touched-rows) updates (fastlr.SparseAdam)
    ("fastlr._core.sparse", ["fastlr/_core/sparse.pyx"]),
    ("fastlr._core.schedulefree", ["fastlr/_core/schedulefree.pyx"]),
    ("fastlr._core.schedulefree_x86_64_v3", ["fastlr/_core/schedulefree_x86_64_v3.pyx"]),
    ("fastlr._core.lrfree", ["fastlr/_core/lrfree.pyx"]),  # Prodigy's two-pass step
    ("fastlr._core.lrfree_x86_64_v3", ["fastlr/_core/lrfree_x86_64_v3.pyx"]),
    ("fastlr._core.dadapt", ["fastlr/_core/dadapt.pyx"]),  # D-Adaptation (Adam, SGD, AdaGrad)
    ("fastlr._core.dadapt_x86_64_v3", ["fastlr/_core/dadapt_x86_64_v3.pyx"]),
    ("fastlr._core.muon", ["fastlr/_core/muon.pyx"]),
    ("fastlr._core.adafactor", ["fastlr/_core/adafactor.pyx"]),
    ("fastlr._core.adafactor_x86_64_v3", ["fastlr/_core/adafactor_x86_64_v3.pyx"]),
    ("fastlr._core.int8state", ["fastlr/_core/int8state.pyx"]),  # 8-bit block-wise Adam state
    ("fastlr._core.int8state_x86_64_v3", ["fastlr/_core/int8state_x86_64_v3.pyx"]),
    ("fastlr._core.mixed", ["fastlr/_core/mixed.pyx"]),  # Adam on 16-bit params (issue #19)
    ("fastlr._core.mixed_x86_64_v3", ["fastlr/_core/mixed_x86_64_v3.pyx"]),
    # x86-64-v4 (AVX-512) builds only where they pay: int8state and mixed measured 1.35-1.65x
    # faster than x86-64-v3 (hashes, integer bit tricks, register pressure), the core loops'
    # bfloat16-state steps 1.43x; the other modules gained nothing (memory- or
    # divider-bound). The list is fastlr/_core/dispatch.py's MODULE_TARGETS and TARGETS
    # (tests/core/test_dispatch.py checks)
    ("fastlr._core.int8state_x86_64_v4", ["fastlr/_core/int8state_x86_64_v4.pyx"]),
    ("fastlr._core.mixed_x86_64_v4", ["fastlr/_core/mixed_x86_64_v4.pyx"]),
    # the core loops, once per instruction-set level (fastlr/_core/dispatch.py picks one at
    # run time)
    ("fastlr._core.cores_baseline", ["fastlr/_core/cores_baseline.pyx"]),
    ("fastlr._core.cores_x86_64_v3", ["fastlr/_core/cores_x86_64_v3.pyx"]),
    ("fastlr._core.cores_x86_64_v4", ["fastlr/_core/cores_x86_64_v4.pyx"]),
    # the benchmark's roofline loops
    ("fastlr._tools.roofline", ["fastlr/_tools/roofline.pyx"]),
]

BASE_COMPILE_ARGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
# adam_mixed's unswitched loops (fastlr/_core/mixed.pyx: one inline loop, called with
# constant flags) each need the element and its roundings inlined; past GCC's default
# budgets some were not (float16 rounding called per element: 7-11x slower). Budgets
# without a practical limit, for that module only (bits unchanged: -ffp-contract=off).
MIXED_INLINE_ARGS = ["--param", "large-function-growth=100000",
                     "--param", "large-function-insns=100000",
                     "--param", "large-unit-insns=100000",
                     "--param", "inline-unit-growth=100000",
                     "--param", "max-inline-insns-single=100000"]
OPENMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
}
"""


PLAIN_TEST = "int main(void) { return 0; }\n"


class BuildExt(build_ext):
    """build_ext that picks compiler flags and detects OpenMP with a compile test."""

    def _compiles_with(self, flags, source=None):
        tmp = tempfile.mkdtemp(prefix="fastlr-cc-")
        try:
            src = os.path.join(tmp, "omp_test.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST if source is None else source)
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            self.compiler.link_executable(
                objs, "omp_test", output_dir=tmp, extra_postargs=flags
            )
            return True
        except Exception:
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        if ctype == "msvc":
            compile_args, omp_flags = ["/O2", "/fp:precise"], ["/openmp"]
        else:
            compile_args, omp_flags = list(BASE_COMPILE_ARGS), ["-fopenmp"]
            if _env_flag("FASTLR_NATIVE"):
                compile_args.append("-march=native")
        use_openmp = False
        if _env_flag("FASTLR_NO_OPENMP"):
            print("fastlr: FASTLR_NO_OPENMP set; building serial kernels")
        elif self._compiles_with(omp_flags):
            use_openmp = True
        else:
            print(
                "fastlr: WARNING: the compiler has no OpenMP support; building serial "
                "kernels (results are identical, large arrays use one core)",
                file=sys.stderr,
            )
        x86_64 = ctype != "msvc" and platform.machine().lower() in ("x86_64", "amd64")
        # the instruction-set levels: extension name suffix -> flags, when the compiler
        # accepts them (else None: those extensions are skipped)
        levels = {}
        for level in ("x86-64-v3", "x86-64-v4"):
            flags = [f"-march={level}", "-mtune=generic"]
            ok = x86_64 and self._compiles_with(flags, source=PLAIN_TEST)
            levels["_" + level.replace("-", "_")] = flags if ok else None
            if not ok:
                print(f"fastlr: not building the {level} variants (not x86-64, or the "
                      f"compiler lacks -march={level}); lower levels are used")
        inline_mixed = ctype != "msvc" and self._compiles_with(MIXED_INLINE_ARGS,
                                                               source=PLAIN_TEST)
        kept = []
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + (omp_flags if use_openmp else [])
            if inline_mixed and ext.name.startswith("fastlr._core.mixed"):
                ext.extra_compile_args = ext.extra_compile_args + MIXED_INLINE_ARGS
            ext.extra_link_args = omp_flags if use_openmp else []
            suffix = ext.name[ext.name.rfind("_x86_64_"):]
            if suffix in levels:
                if levels[suffix] is None:
                    continue
                ext.extra_compile_args = ext.extra_compile_args + levels[suffix]
            kept.append(ext)
        self.extensions = kept
        super().build_extensions()


HERE = os.path.dirname(os.path.abspath(__file__))


def render_templates():
    """Render fastlr/**/*.tp from the table (fastlr/_specs.py, imported by path: the
    package is not built yet)."""
    spec = importlib.util.spec_from_file_location(
        "_fastlr_specs", os.path.join(HERE, "fastlr", "_specs.py"))
    specs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = specs           # dataclasses look their module up
    try:
        spec.loader.exec_module(specs)
        specs.render_templates(os.path.join(HERE, "fastlr"))
    finally:
        del sys.modules[spec.name]


def extensions():
    render_templates()
    exts = [
        Extension(
            name,
            sources,
            include_dirs=[np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")],
        )
        for name, sources in MODULES
    ]
    return cythonize(
        exts,
        compiler_directives=DIRECTIVES,
        annotate=_env_flag("FASTLR_ANNOTATE"),
        # Rebuild when a debug switch flips, not only when sources change.
        force=DEBUG,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt}, zip_safe=False)
