"""Simulated nano-CT beamline with known ground truth: phantom, projector, drift, IOC, stream."""
