# Included by _cores_baseline.pyx and _cores_x86_64_v3.pyx: the same core loops (_core.pxd),
# compiled once per instruction-set level (setup.py sets the flags per module), exported as
# a CoreTable in a capsule. -ffp-contract=off holds for every variant, so each gives the
# same bits: IEEE add/mul/div/sqrt round the same in every vector width.

from cpython.pycapsule cimport PyCapsule_New

from fastlr._core.loops cimport (CoreTable, adam_core_f32, adam_core_f64, rmsprop_core_f32,
                           rmsprop_core_f64, sgd_core_f32, sgd_core_f64, nonfinite_f32,
                           nonfinite_f64, sumsq_f32, sumsq_f64)
from fastlr._core.loops cimport (
    adagrad_core_f32, adagrad_core_f64, adadelta_core_f32, adadelta_core_f64, adamax_core_f32, adamax_core_f64, nadam_core_f32, nadam_core_f64, radam_core_f32, radam_core_f64, lion_core_f32, lion_core_f64)

cdef CoreTable TABLE
TABLE.sgd[0] = sgd_core_f32
TABLE.sgd[1] = sgd_core_f64
TABLE.rmsprop[0] = rmsprop_core_f32
TABLE.rmsprop[1] = rmsprop_core_f64
TABLE.adam[0] = adam_core_f32
TABLE.adam[1] = adam_core_f64
TABLE.adagrad[0] = adagrad_core_f32
TABLE.adagrad[1] = adagrad_core_f64
TABLE.adadelta[0] = adadelta_core_f32
TABLE.adadelta[1] = adadelta_core_f64
TABLE.adamax[0] = adamax_core_f32
TABLE.adamax[1] = adamax_core_f64
TABLE.nadam[0] = nadam_core_f32
TABLE.nadam[1] = nadam_core_f64
TABLE.radam[0] = radam_core_f32
TABLE.radam[1] = radam_core_f64
TABLE.lion[0] = lion_core_f32
TABLE.lion[1] = lion_core_f64
TABLE.sumsq[0] = sumsq_f32
TABLE.sumsq[1] = sumsq_f64
TABLE.nonfinite[0] = nonfinite_f32
TABLE.nonfinite[1] = nonfinite_f64


def table():
    """The CoreTable of this module's loops, in a capsule named 'fastlr.CoreTable'."""
    return PyCapsule_New(<void*>&TABLE, b"fastlr.CoreTable", NULL)
