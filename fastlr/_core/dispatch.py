"""Runtime choice of the compiled core loops: the fastest variant this CPU runs.

The loops are compiled twice (setup.py): for the baseline instruction set and, on x86-64,
for x86-64-v3 (AVX2). Both give the same bits (no FMA contraction, IEEE operations in any
vector width; tests compare them). ``FASTLR_CPU=baseline`` (environment) forces the
baseline, for debugging or comparison.

The kernel modules of the optimizers outside the table (:data:`MODULES`) are compiled twice
in the same way (``fastlr/_core/<name>_x86_64_v3.pyx`` includes ``<name>.pyx``);
:func:`module` imports the variant for :func:`default_target`, once, at import time.
"""

import importlib
import os

TARGETS = {"x86-64-v3": "fastlr._core.cores_x86_64_v3", "baseline": "fastlr._core.cores_baseline"}
_CPU_FEATURE = {"x86-64-v3": "X86_V3", "baseline": None}


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


def available():
    """The variants that are built and that this CPU runs, fastest first."""
    names = []
    for name, module in TARGETS.items():
        if not _cpu_has(_CPU_FEATURE[name]):
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        names.append(name)
    return names


def default_target():
    names = available()
    forced = os.environ.get("FASTLR_CPU", "").strip()
    if forced:
        if forced not in TARGETS:
            raise ImportError(f"FASTLR_CPU={forced!r} is not one of {', '.join(TARGETS)}")
        if forced not in names:
            raise ImportError(f"FASTLR_CPU={forced!r}: that variant is not built or this CPU "
                              f"does not run it (available: {', '.join(names)})")
        return forced
    return names[0]


#: Kernel modules built once per target (fastlr._core.<name> is the baseline build).
MODULES = ("layerwise", "lrfree", "schedulefree", "adafactor", "ema", "dadapt", "int8state",
           "mixed")


def module(name):
    """``fastlr._core.<name>`` compiled for :func:`default_target` when that variant is
    built, else its baseline build (the same functions, the same bits)."""
    if name not in MODULES:
        raise ValueError(f"fastlr._core.dispatch.module: {name!r} is not one of {MODULES}")
    target = default_target()
    if target != "baseline":
        try:
            return importlib.import_module(f"fastlr._core.{name}_{target.replace('-', '_')}")
        except ImportError:
            pass
    return importlib.import_module(f"fastlr._core.{name}")


def table(target):
    """The capsule of core loops for ``target``."""
    return importlib.import_module(TARGETS[target]).table()


def sklearn_table(target):
    """The capsule of scikit-learn-convention core loops for ``target``."""
    return importlib.import_module(TARGETS[target]).sklearn_table()
