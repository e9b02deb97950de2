"""The generator comparison: ``python -m bench.generators.run`` from the repository root."""
