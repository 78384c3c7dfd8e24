"""Benchmarks run by hand (`uv run python -m bench.<name>`); the CI tests call their harnesses at a small size."""
