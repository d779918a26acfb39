"""Benchmarks of the forwarder (not part of the installed package)."""
