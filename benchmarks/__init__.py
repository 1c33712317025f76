"""asv benchmark suite for fastlr (see asv.conf.json at the top of the repository)."""
