"""Benchmarks and load-test scenarios."""
