"""Benchmarks of modelplane (run from the repo root: ``python -m bench.autoscale --quick``)."""
