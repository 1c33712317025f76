# Included by cores_baseline.pyx and cores_x86_64_v3.pyx: the same core loops (loops.pxd,
# through the generated adapters of families.pxd), compiled once per instruction-set level
# (setup.py sets the flags per module), exported as a CoreTable in a capsule; likewise the
# scikit-learn-convention loops (sklearn_loops.pxd) as a SklearnCores.
# -ffp-contract=off holds for every variant, so each gives the same bits: IEEE
# add/mul/div/sqrt round the same in every vector width.

from cpython.pycapsule cimport PyCapsule_New

from fastlr._core.families cimport CoreTable, fill_core_table
from fastlr._core.sklearn_loops cimport SklearnCores, fill_sklearn_cores

cdef CoreTable TABLE
fill_core_table(&TABLE)
cdef SklearnCores SKLEARN_TABLE
fill_sklearn_cores(&SKLEARN_TABLE)


def table():
    """The CoreTable of this module's loops, in a capsule named 'fastlr.CoreTable'."""
    return PyCapsule_New(<void*>&TABLE, b"fastlr.CoreTable", NULL)


def sklearn_table():
    """The SklearnCores of this module (sklearn_loops.pxd), in a capsule named
    'fastlr.SklearnCores'."""
    return PyCapsule_New(<void*>&SKLEARN_TABLE, b"fastlr.SklearnCores", NULL)
