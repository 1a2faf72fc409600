"""Benchmarks, the regression gate and the GPU check (not installed; run from the repo root)."""
