"""Tools around the library (private): the command line, the demo trainer, the benchmark
and its roofline loops."""
