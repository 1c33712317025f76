# fastlr/_core/mixed_x86_64_v3.pyx -- fastlr/_core/mixed.pyx compiled with -march=x86-64-v3
# (AVX2, FMA; no FMA contraction: the same bits as the baseline build), used when the CPU
# has them (fastlr/_core/dispatch.py: module).
include "mixed.pyx"
