"""Benchmarks (not tests): the engine beside no cache and a zero-overhead ceiling. See docs/performance.md."""
