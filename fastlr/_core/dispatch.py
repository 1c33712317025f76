"""Runtime choice of the compiled code: the fastest variant this CPU runs.

Instruction-set levels (:data:`LEVELS`, fastest first): ``x86-64-v4`` (AVX-512),
``x86-64-v3`` (AVX2) and ``baseline``. Every variant gives the same bits (no FMA contraction,
IEEE operations in any vector width; tests compare them).

The core loops (:data:`TARGETS`) are compiled for the baseline instruction set and, on
x86-64, for x86-64-v3 and x86-64-v4: the float32/float64 steps gain nothing from AVX-512
(memory-bound out of cache, divider-bound in it), the bfloat16-state steps do (1.43x over
8 x 2M elements on an Intel Xeon: their roundings' hashes and bit operations).
:func:`default_target` is the table's variant, set at import
(``fastlr._kernels.cpu_target()``).

The kernel modules of the optimizers outside the table (:data:`MODULES`) are compiled for
the baseline and for x86-64-v3 in the same way (``fastlr/_core/<name>_x86_64_v3.pyx``
includes ``<name>.pyx``), and the compute-bound ones also for x86-64-v4
(:data:`MODULE_TARGETS`: int8state and mixed, 1.35-1.65x faster than x86-64-v3 on an Intel
Xeon). :func:`module` imports, once, the fastest variant built for that module that the CPU
runs, up to :func:`level`.

``FASTLR_CPU`` (environment) caps the level, for debugging or comparison: ``baseline`` gives
the baseline builds everywhere; ``x86-64-v3`` the x86-64-v3 table and modules, also on an
AVX-512 CPU; ``x86-64-v4`` the x86-64-v4 table and modules (the x86-64-v3 builds of the
modules that have no x86-64-v4 one). A level that is not built, or that the CPU does not
run, is an ImportError.
"""

import importlib
import os

#: Instruction-set levels, fastest first, and the NumPy CPU feature that says the CPU runs
#: each (``numpy._core._multiarray_umath.__cpu_features__``; AVX512_SKX is x86-64-v4's
#: AVX-512 F/CD/BW/DQ/VL).
LEVELS = ("x86-64-v4", "x86-64-v3", "baseline")
_CPU_FEATURE = {"x86-64-v4": "AVX512_SKX", "x86-64-v3": "X86_V3", "baseline": None}

#: The core-loop table's builds, fastest first.
TARGETS = {"x86-64-v4": "fastlr._core.cores_x86_64_v4",
           "x86-64-v3": "fastlr._core.cores_x86_64_v3", "baseline": "fastlr._core.cores_baseline"}

#: Kernel modules built once per target (fastlr._core.<name> is the baseline build).
MODULES = ("layerwise", "lrfree", "schedulefree", "adafactor", "ema", "dadapt", "int8state",
           "mixed")

#: The levels each kernel module is built for besides the baseline, fastest first
#: (fastlr._core.<name>_x86_64_v3, ...): setup.py's list of extensions.
MODULE_TARGETS = {name: ("x86-64-v3",) for name in MODULES}
MODULE_TARGETS.update(int8state=("x86-64-v4", "x86-64-v3"), mixed=("x86-64-v4", "x86-64-v3"))


def _cpu_has(feature):
    if feature is None:
        return True
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get(feature, False))


def cpu_levels():
    """The levels this CPU runs (built or not), fastest first."""
    return [name for name in LEVELS if _cpu_has(_CPU_FEATURE[name])]


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def available():
    """The core-loop table's variants that are built and that this CPU runs, fastest first."""
    cpu = cpu_levels()
    return [name for name, module in TARGETS.items() if name in cpu and _importable(module)]


def _built(target):
    """Whether anything (the table or a kernel module) is built for ``target``."""
    if target in TARGETS and _importable(TARGETS[target]):
        return True
    return any(target in targets and _importable(_module_name(name, target))
               for name, targets in MODULE_TARGETS.items())


def level():
    """The highest level in use: ``FASTLR_CPU`` when set (checked), else the fastest level
    this CPU runs."""
    cpu = cpu_levels()
    forced = os.environ.get("FASTLR_CPU", "").strip()
    if not forced:
        return cpu[0]
    if forced not in LEVELS:
        raise ImportError(f"FASTLR_CPU={forced!r} is not one of {', '.join(LEVELS)}")
    if forced not in cpu or not _built(forced):
        built = [name for name in cpu if _built(name)]
        raise ImportError(f"FASTLR_CPU={forced!r}: that variant is not built or this CPU "
                          f"does not run it (available: {', '.join(built)})")
    return forced


def _at_most(target, ceiling):
    return LEVELS.index(target) >= LEVELS.index(ceiling)


def default_target():
    """The core-loop table's variant: the fastest one built that the CPU runs, at most
    :func:`level`."""
    ceiling = level()
    return next(name for name in available() if _at_most(name, ceiling))


def _module_name(name, target):
    if target == "baseline":
        return f"fastlr._core.{name}"
    return f"fastlr._core.{name}_{target.replace('-', '_')}"


def module_target(name):
    """The level :func:`module` picks for kernel module ``name``: the fastest one built for
    it that the CPU runs, at most :func:`level`."""
    if name not in MODULES:
        raise ValueError(f"fastlr._core.dispatch.module: {name!r} is not one of {MODULES}")
    ceiling = level()
    cpu = cpu_levels()
    for target in MODULE_TARGETS[name]:
        if target in cpu and _at_most(target, ceiling) and _importable(
                _module_name(name, target)):
            return target
    return "baseline"


def module(name):
    """``fastlr._core.<name>`` compiled for :func:`module_target` (the same functions, the
    same bits in every build)."""
    return importlib.import_module(_module_name(name, module_target(name)))


def variants(name):
    """Every build of kernel module ``name`` that is built and that this CPU runs, as
    ``{level: module}``, fastest first; ``FASTLR_CPU`` aside (tests and benchmarks compare
    them)."""
    if name not in MODULES:
        raise ValueError(f"fastlr._core.dispatch.variants: {name!r} is not one of {MODULES}")
    cpu = cpu_levels()
    out = {}
    for target in MODULE_TARGETS[name] + ("baseline",):
        if target in cpu and _importable(_module_name(name, target)):
            out[target] = importlib.import_module(_module_name(name, target))
    return out


def table(target):
    """The capsule of core loops for ``target``."""
    return importlib.import_module(TARGETS[target]).table()


def sklearn_table(target):
    """The capsule of scikit-learn-convention core loops for ``target``."""
    return importlib.import_module(TARGETS[target]).sklearn_table()
