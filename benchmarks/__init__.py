"""Benchmarks; run each as a script, e.g. ``python benchmarks/bench_overhead.py``."""
