# fastlr/_core/half.pxd -- IEEE float16 <-> float32 on the bits, as inline C (private; no
# module); the widening and the stochastic rounding of either 16-bit format (float16,
# bfloat16) by a format number, and the random bits' key of a 16-bit param without master.
#
# Written out on the bits (no _Float16: its availability and conversions vary by compiler):
# nearest even, overflow (|x| >= 65520) to Inf, subnormal results rounded at 2^-24, NaN kept
# as a quiet NaN with its sign and top payload bits; widening is exact. Integer operations
# and selects only, so the loops that use them vectorize. Used by fastlr/_core/mixed.pyx
# (16-bit params: adam_mixed, the stochastic rounding of the other optimizers) and by
# fastlr/_core/master16.pxd (the engine's 16-bit params, with or without master weights).

from libc.stdint cimport int32_t, uint16_t, uint32_t
from libc.string cimport memcpy

from fastlr._core.bfloat cimport bf16_round_stochastic, bf16_widen

cdef enum:
    # a 16-bit param's format number
    FMT_F16 = 0
    FMT_BF16 = 1
    # the salt stream of a 16-bit param's stochastic rounding (bfloat.pxd step_salt; 0 and
    # 1 salt the moments, AMSGrad)
    PARAM_STREAM = 2


cdef inline uint32_t sel32(bint c, uint32_t a, uint32_t b) noexcept nogil:
    """a if c else b, as a mask (no branch: Cython writes a conditional expression as an
    if statement, and GCC does not vectorize a loop with nested ones)."""
    return b ^ ((a ^ b) & (<uint32_t>0 - <uint32_t>c))


cdef inline int32_t clamp32(int32_t x, int32_t lo, int32_t hi) noexcept nogil:
    # a signed maximum, then minimum (integers only: one instruction each once vectorized)
    x = lo if x < lo else x
    return hi if x > hi else x


cdef inline float f16_widen(uint16_t h) noexcept nogil:
    """The float32 value of IEEE half bits (exact; NaN payloads kept)."""
    cdef uint32_t sign = (<uint32_t>(h & 0x8000)) << 16
    cdef uint32_t e = (h >> 10) & 0x1F
    cdef uint32_t mant = h & 0x3FF
    cdef uint32_t u_norm = sign | ((e + 112) << 23) | (mant << 13)
    cdef uint32_t u_special = sign | <uint32_t>0x7F800000 | (mant << 13)
    cdef float sub = <float>(<int32_t>mant) * <float>5.9604644775390625e-08     # m * 2^-24
    cdef uint32_t u_sub
    memcpy(&u_sub, &sub, 4)
    u_sub = u_sub | sign
    cdef uint32_t u = sel32(e == 0, u_sub, sel32(e == 31, u_special, u_norm))
    cdef float x
    memcpy(&x, &u, 4)
    return x


cdef inline uint16_t f16_round(float x) noexcept nogil:
    """The IEEE half nearest x (ties to even), as bits: overflow to Inf, subnormals at
    2^-24, NaN a quiet NaN with its sign and top payload bits."""
    cdef uint32_t u
    memcpy(&u, &x, 4)
    cdef uint32_t sign = (u >> 16) & 0x8000
    cdef uint32_t a = u & <uint32_t>0x7FFFFFFF
    cdef int32_t e = <int32_t>(a >> 23)
    # normal results: rebias the exponent (127 -> 15), round the 13 dropped bits
    cdef uint32_t hn = (a - <uint32_t>0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
    # subnormal results: the significand in units of 2^-24, rounded at s dropped bits
    cdef int32_t s = clamp32(126 - e, 1, 25)
    cdef uint32_t mant = (a & <uint32_t>0x7FFFFF) | <uint32_t>0x800000
    cdef uint32_t hs = (mant + ((<uint32_t>1 << (s - 1)) - 1) + ((mant >> s) & 1)) >> s
    cdef uint32_t r = sel32(a >= <uint32_t>0x477FF000, 0x7C00,
                           sel32(a >= <uint32_t>0x38800000, hn, hs))
    r = sel32(a > <uint32_t>0x7F800000, <uint32_t>0x7E00 | ((a >> 13) & 0x3FF), r)
    return <uint16_t>(sign | r)


cdef inline uint16_t f16_round_stochastic(float x, uint32_t rnd) noexcept nogil:
    """x rounded to one of its two neighbouring halves, up with probability (the dropped
    part) / (the gap), for uniform 32-bit rnd; halves are kept; NaN and overflow as
    f16_round (a result past 65504 may round up to Inf)."""
    cdef uint32_t u
    memcpy(&u, &x, 4)
    cdef uint32_t sign = (u >> 16) & 0x8000
    cdef uint32_t a = u & <uint32_t>0x7FFFFFFF
    cdef int32_t e = <int32_t>(a >> 23)
    cdef uint32_t hn = (a - <uint32_t>0x38000000 + (rnd & 0x1FFF)) >> 13
    cdef int32_t s = clamp32(126 - e, 1, 56)
    cdef int32_t sd = clamp32(s - 31, 0, 25)         # bits past 31 dropped by truncation
    s = s - sd
    cdef uint32_t mant = ((a & <uint32_t>0x7FFFFF) | <uint32_t>0x800000) >> sd
    cdef uint32_t hs = (mant + (rnd & ((<uint32_t>1 << s) - 1))) >> s
    cdef uint32_t r = sel32(a >= <uint32_t>0x47800000, 0x7C00,
                           sel32(a >= <uint32_t>0x38800000, hn, hs))
    r = sel32(a > <uint32_t>0x7F800000, <uint32_t>0x7E00 | ((a >> 13) & 0x3FF), r)
    return <uint16_t>(sign | r)


cdef inline float widen16(uint16_t h, int fmt) noexcept nogil:
    return bf16_widen(h) if fmt == FMT_BF16 else f16_widen(h)


cdef inline uint16_t round16_stochastic(float x, uint32_t r, int fmt) noexcept nogil:
    """x rounded stochastically to the format's bits with 32 random bits r (bfloat16 takes
    the high 16, float16 what f16_round_stochastic takes)."""
    return bf16_round_stochastic(x, r >> 16) if fmt == FMT_BF16 else f16_round_stochastic(x, r)


cdef inline uint32_t round_key(float pi, float g) noexcept nogil:
    """The random bits' key of a 16-bit param without master (fastlr/_core/mixed.pyx, note
    c): its widened value's bits with the grad's (widened, as the step applies it) mixed in
    (a 16-bit param alone takes few distinct values, and elements sharing a key share their
    random bits)."""
    cdef uint32_t key, gkey
    memcpy(&key, &pi, 4)
    memcpy(&gkey, &g, 4)
    return key ^ (gkey * <uint32_t>0x2C1B3C6Du)
