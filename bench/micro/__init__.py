"""Micro-benchmarks: ``python -m bench.micro.bench_metrics``, ``python -m bench.micro.bench_transport``."""
