"""Benchmarks of the gateway (issue 15): ``bench.gateway.overhead``, ``bench.gateway.prefix``."""
