"""Helpers that start real servers for the tests, the demo and the benchmarks."""
