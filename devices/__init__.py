"""Beamline devices (ophyd-async) used by tomolock, and their simulations in ``sim``."""
