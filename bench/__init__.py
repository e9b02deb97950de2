"""Benchmark drivers of roombench (not part of the package): sweeps/, micro/, generators/."""
