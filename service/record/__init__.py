"""Append-only per-scan drift log and export for reconstruction."""
