"""Drift estimators: pure numpy/scipy, no I/O."""
