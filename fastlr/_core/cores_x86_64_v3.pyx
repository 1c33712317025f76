# The core loops compiled with -march=x86-64-v3 (AVX2, FMA; no FMA contraction), used when
# the CPU has them. Built only on x86-64 with a compiler that knows the flag.
include "cores.pxi"

TARGET = "x86-64-v3"
