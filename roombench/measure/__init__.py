"""Measurement: HDR metrics, the summary schema and SLOs, machine metadata."""
