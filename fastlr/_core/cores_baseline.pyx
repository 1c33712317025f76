# The core loops for the baseline instruction set of the build (x86-64: SSE2).
include "cores.pxi"

TARGET = "baseline"
