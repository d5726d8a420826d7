"""Benchmark scripts, run from the repository root as `python -m tests.bench.NAME` (see README.md here)."""
