# fastlr/_core/bf16.pyx -- bfloat16 packing for fastlr.distributed's compressed grads.
#
# Design notes
# ------------
# a) Format and rounding: fastlr/_core/bfloat.pxd (nearest even, NaN kept, overflow to
#    Inf). float64 is rounded to float32 first (the caller's contract).
# b) Unpacking is exact (every bfloat16 is a float32); `add_bfloat16` fuses it with the
#    reduce-scatter's addition, acc = base + value, in the accumulator's dtype, the same
#    operation NumPy's `np.add(base, bits_as_float32, out=acc)` performs.
# c) These loops are memory-bound passes (6 bytes per element packing float32, 8 unpacking);
#    one thread, the GIL released. Arguments are typed memoryviews: the Python wrappers
#    (fastlr.distributed.to_bfloat16 / the reduce-scatter) pass contiguous 1-D arrays of
#    matching sizes, checked here before the loops.

cimport cython
from cython cimport floating
from libc.stdint cimport uint16_t

from fastlr._core.bfloat cimport bf16_round, bf16_widen


cdef int _same(Py_ssize_t a, Py_ssize_t b, str what) except -1:
    if a != b:
        raise ValueError(f"fastlr._core.bf16: {what} sizes differ ({a} and {b})")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def pack(const floating[::1] x,           # IN: float32 or float64
         uint16_t[::1] out):              # OUT: bfloat16 bits of float32(x)
    """out[i] = the bfloat16 nearest float32(x[i]) (ties to even), as bits."""
    _same(x.shape[0], out.shape[0], "x and out")
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in range(n):
            out[i] = bf16_round(<float>x[i])


@cython.boundscheck(False)
@cython.wraparound(False)
def add(floating[::1] acc,                # OUT (may be base)
        const floating[::1] base,         # IN
        const uint16_t[::1] bits):        # IN: bfloat16 bits
    """acc[i] = base[i] + bfloat16(bits[i]), in the dtype of acc and base."""
    _same(acc.shape[0], base.shape[0], "acc and base")
    _same(acc.shape[0], bits.shape[0], "acc and bits")
    cdef Py_ssize_t i, n = acc.shape[0]
    with nogil:
        for i in range(n):
            acc[i] = base[i] + <floating>bf16_widen(bits[i])


@cython.boundscheck(False)
@cython.wraparound(False)
def unpack(const uint16_t[::1] bits,      # IN: bfloat16 bits
           floating[::1] out):            # OUT: float32 or float64
    """out[i] = the value of bfloat16 bits[i] (exact)."""
    _same(bits.shape[0], out.shape[0], "bits and out")
    cdef Py_ssize_t i, n = bits.shape[0]
    with nogil:
        for i in range(n):
            out[i] = <floating>bf16_widen(bits[i])
