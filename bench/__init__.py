"""Benchmarks (`pytest bench/ --benchmark-only`) and the report generator."""
