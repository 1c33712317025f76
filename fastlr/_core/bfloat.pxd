# fastlr/_core/bfloat.pxd -- bfloat16 <-> float32, as inline C (private; no module).
#
# bfloat16 is the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits), kept
# here as uint16 bits. Rounding is to nearest, ties to even: add 0x7FFF plus the lowest kept
# bit, then drop the low 16 bits; overflow rounds to Inf as IEEE rounding does. NaN stays a
# quiet NaN with its sign (the addition could carry a NaN with only low mantissa bits into
# Inf). Widening is exact. Written as integer operations on the bits so that GCC vectorizes
# loops that use them (the branch becomes a select).
# Used by fastlr/_core/bf16.pyx (compressed grads of fastlr.distributed) and by the
# bfloat16-state core loops of loops.pxd (state_dtype="bfloat16").

from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy


cdef inline uint16_t bf16_round(float x) noexcept nogil:
    """The bfloat16 nearest x (ties to even), as bits."""
    cdef uint32_t u
    memcpy(&u, &x, 4)
    cdef uint32_t rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    cdef uint32_t quiet_nan = ((u >> 16) & 0x8000) | 0x7FC0       # NaN: quiet, sign kept
    # one select, no branch (a return inside the loop body would stop vectorization)
    return <uint16_t>(quiet_nan if (u & 0x7FFFFFFF) > 0x7F800000 else rounded)


cdef inline float bf16_widen(uint16_t b) noexcept nogil:
    """The float32 value of bfloat16 bits (exact)."""
    cdef uint32_t u = (<uint32_t>b) << 16
    cdef float x
    memcpy(&x, &u, 4)
    return x
