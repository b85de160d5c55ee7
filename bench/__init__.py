"""Load benchmarks for KatieDJ (run from the repository root, e.g. ``python -m bench.fanout``)."""
