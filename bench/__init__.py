"""Benchmarks (never run by the test suite). See docs/benchmarks.md."""
