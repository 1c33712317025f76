# fastlr/_core/bf16.pyx -- bfloat16 packing for fastlr.distributed's compressed grads.
#
# Design notes
# ------------
# a) Format. bfloat16 is the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa
#    bits). Packing rounds to nearest, ties to even, by adding 0x7FFF plus the lowest kept
#    bit before dropping the low 16 bits; overflow rounds to Inf as IEEE rounding does.
#    NaN is kept a (quiet) NaN with its sign: the addition could carry a NaN with only low
#    mantissa bits into Inf. float64 is rounded to float32 first (the caller's contract).
# b) Unpacking is exact (every bfloat16 is a float32); `add_bfloat16` fuses it with the
#    reduce-scatter's addition, acc = base + value, in the accumulator's dtype, the same
#    operation NumPy's `np.add(base, bits_as_float32, out=acc)` performs.
# c) These loops are memory-bound passes (6 bytes per element packing float32, 8 unpacking);
#    one thread, the GIL released. Arguments are typed memoryviews: the Python wrappers
#    (fastlr.distributed.to_bfloat16 / the reduce-scatter) pass contiguous 1-D arrays of
#    matching sizes, checked here before the loops.

cimport cython
from cython cimport floating
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy


cdef inline uint16_t pack_one(float x) noexcept nogil:
    cdef uint32_t u
    memcpy(&u, &x, 4)
    if (u & 0x7FFFFFFF) > 0x7F800000:                      # NaN: quiet, sign kept
        return <uint16_t>(((u >> 16) & 0x8000) | 0x7FC0)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return <uint16_t>(u >> 16)


cdef inline float unpack(uint16_t b) noexcept nogil:
    cdef uint32_t u = (<uint32_t>b) << 16
    cdef float x
    memcpy(&x, &u, 4)
    return x


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
            out[i] = pack_one(<float>x[i])


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
            acc[i] = base[i] + <floating>unpack(bits[i])
