"""Benchmark scripts: run each as ``python -m benchmarks.bench_<name>`` from the repository root."""
