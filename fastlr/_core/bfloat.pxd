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
# bfloat16-state core loops of loops.pxd (state_dtype="bfloat16"), which round
# stochastically (bf16_round_stochastic): with nearest rounding, an Adam second moment
# cannot decay (v * 0.999 is within half a bfloat16 ulp of v, so it rounds back to v).

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
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


cdef inline uint32_t random_bits(uint32_t key, uint32_t salt) noexcept nogil:
    """32 pseudo-random bits for one element and one step: murmur3's 32-bit finalizer of
    key * 0x9E3779B1 ^ salt (key: the element's param bits, which differ between elements;
    salt: per step, `step_salt`). No random state: the same bits for any thread count or
    chunking, and a checkpoint resumes the same sequence."""
    cdef uint32_t h = (key * <uint32_t>0x9E3779B1u) ^ salt
    h = h ^ (h >> 16)
    h = h * <uint32_t>0x85EBCA6Bu
    h = h ^ (h >> 13)
    h = h * <uint32_t>0xC2B2AE35u
    return h ^ (h >> 16)


cdef inline uint16_t bf16_round_stochastic(float x, uint32_t r16) noexcept nogil:
    """x rounded to one of its two neighbouring bfloat16 values, up with probability (its
    low 16 bits) / 65536 for a uniform 16-bit r16 (`random_bits`), so that the expected
    stored value is x: the low bits plus r16, then the low 16 bits dropped. Values that are
    already bfloat16 are kept; NaN as in bf16_round; overflow rounds to Inf."""
    cdef uint32_t u
    memcpy(&u, &x, 4)
    cdef uint32_t rounded = (u + r16) >> 16
    return <uint16_t>(((u >> 16) | 0x0040) if x != x else rounded)


cdef inline uint32_t step_salt(int64_t step, uint32_t stream) noexcept nogil:
    """A 32-bit value for update `step` and stream `stream` (splitmix64's finalizer of
    3 * step + stream): the salt of random_bits."""
    cdef uint64_t z = (<uint64_t>step) * 3u + stream + <uint64_t>0x9E3779B97F4A7C15u
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9u
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBu
    return <uint32_t>(z ^ (z >> 31))


cdef inline float bf16_widen(uint16_t b) noexcept nogil:
    """The float32 value of bfloat16 bits (exact)."""
    cdef uint32_t u = (<uint32_t>b) << 16
    cdef float x
    memcpy(&x, &u, 4)
    return x
