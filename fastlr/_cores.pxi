# Included by _cores_baseline.pyx and _cores_x86_64_v3.pyx: the same core loops (_core.pxd),
# compiled once per instruction-set level (setup.py sets the flags per module), exported as
# a CoreTable in a capsule. -ffp-contract=off holds for every variant, so each gives the
# same bits: IEEE add/mul/div/sqrt round the same in every vector width.

from cpython.pycapsule cimport PyCapsule_New

from fastlr._core cimport (CoreTable, adam_core_f32, adam_core_f64, rmsprop_core_f32,
                           rmsprop_core_f64, sgd_core_f32, sgd_core_f64)

cdef CoreTable TABLE
TABLE.sgd[0] = sgd_core_f32
TABLE.sgd[1] = sgd_core_f64
TABLE.rmsprop[0] = rmsprop_core_f32
TABLE.rmsprop[1] = rmsprop_core_f64
TABLE.adam[0] = adam_core_f32
TABLE.adam[1] = adam_core_f64


def table():
    """The CoreTable of this module's loops, in a capsule named 'fastlr.CoreTable'."""
    return PyCapsule_New(<void*>&TABLE, b"fastlr.CoreTable", NULL)
