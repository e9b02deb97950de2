"""The conformance check: one pass/fail line per contract point."""
