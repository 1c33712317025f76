# fastlr/_core/mixed_x86_64_v4.pyx -- fastlr/_core/mixed.pyx compiled with -march=x86-64-v4
# (AVX-512 F/BW/CD/DQ/VL, 32 vector and 8 mask registers; no FMA contraction: the same bits
# as the baseline build), used when the CPU has them (fastlr/_core/dispatch.py: module).
# Built only for the kernel modules where it measured >= 1.3x faster than x86-64-v3.
include "mixed.pyx"
