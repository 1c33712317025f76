# The core loops compiled with -march=x86-64-v4 (AVX-512; no FMA contraction: the same bits
# as the other builds), used when the CPU has it. Built only on x86-64 with a compiler that
# knows the flag. The float32/float64 steps gain nothing from it (memory-bound out of cache,
# divider-bound in it); the bfloat16-state loops do (their stochastic roundings' hashes and
# bit operations: 1.43x over 8 x 2M on an Intel Xeon).
include "cores.pxi"

TARGET = "x86-64-v4"
