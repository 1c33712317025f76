# fastlr/_core/bfloat.pxd -- bfloat16 <-> float32, as inline C (private; no module).
#
# bfloat16 is the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits), kept
# here as uint16 bits. Rounding is to nearest, ties to even: add 0x7FFF plus the lowest kept
# bit, then drop the low 16 bits; overflow rounds to Inf as IEEE rounding does. NaN stays a
# quiet NaN with its sign: its top 16 bits with the quiet bit set (the addition could carry
# a NaN with only low mantissa bits into Inf, or one with high ones into the sign). Widening
# is exact. Written as integer operations on the bits so that GCC vectorizes
# loops that use them (the branch becomes a select).
# Used by fastlr/_core/bf16.pyx (compressed grads of fastlr.distributed) and by the
# bfloat16-state core loops of loops.pxd (state_dtype="bfloat16").

from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy


cdef inline uint16_t bf16_round(float x) noexcept nogil:
    """The bfloat16 nearest x (ties to even), as bits."""
    cdef uint32_t u
    memcpy(&u, &x, 4)
    cdef uint32_t high = u >> 16
    cdef uint32_t rounded = (u + 0x7FFF + (high & 1)) >> 16
    # NaN: its top half with the quiet bit set (sign and payload's top bits kept). One
    # float compare and one select, no branch (a return inside the loop body would stop
    # vectorization), few constants (the loops that use it stay in registers).
    return <uint16_t>((high | 0x0040) if x != x else rounded)


cdef inline float bf16_widen(uint16_t b) noexcept nogil:
    """The float32 value of bfloat16 bits (exact)."""
    cdef uint32_t u = (<uint32_t>b) << 16
    cdef float x
    memcpy(&x, &u, 4)
    return x
