"""Benchmarks: each module prints its figures side by side with timm; `python -m benchmarks` runs them all."""
