"""Benchmarks and benchmark helpers for serial-bridge (`python -m bench`, see bench/README.md)."""
