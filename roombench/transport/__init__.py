"""Transports: one connection each, one interface (base), one file per implementation."""
