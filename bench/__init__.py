"""Benchmarks: the project's loader, queries and main command measured side by side with baselines."""
