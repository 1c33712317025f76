# fastlr/_core/layerwise_x86_64_v3.pyx -- LAMB and LARS (fastlr/_core/layerwise.pyx)
# compiled with -march=x86-64-v3 (AVX2, FMA; no FMA contraction: the same bits as the
# baseline build), used when the CPU has them (fastlr/_core/dispatch.py: module).
include "layerwise.pyx"
