"""Drift model: runout harmonics, thermal drift, sensor fusion, prediction (pure computation)."""
