"""Benchmarks: one headless run, sweeps, reports and plots of result folders."""
