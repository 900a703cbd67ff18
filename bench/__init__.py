"""Benchmarks: ``python -m bench.<name> [--quick]``. Each measures a baseline in the same run and
prints one JSON object as its last line with both figures and their ratio."""
