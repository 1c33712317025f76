"""fastlr's compiled core (private): the fused update loops and their per-ISA builds, the
argument checks, the optimizer engine, and the EMA and scikit-learn-convention kernels."""
