"""Shared fixtures: one simulated beamline IOC per test session, ophyd-async devices per test.

Import the fixtures you use into a test module (``from sim_fixtures import sim_beamline``).
Importing this module picks a CA port free on TCP and UDP and sets the CA client environment
*before* any CA client library is used in this process (libca reads it at context creation),
then creates the CA context itself, in the libca aioca uses: aioca adopts a context it did not
create and then does not destroy it at exit, where its teardown can segfault (rc 139).
Import it before anything uses Channel Access (``pytest_plugins = ["sim_fixtures"]``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from tomolock.devices.sim.beamline import SimBeamline, ca_client_env, reserve_ca_port
from tomolock.devices.sim.ioc import IocConfig

CA_PORT = reserve_ca_port()
os.environ.update(ca_client_env(CA_PORT))

from epicscorelibs.ca import cadef  # noqa: E402  (after the environment, on purpose)

if not cadef.libca.ca_current_context():
    cadef.ca_context_create(1)  # preemptive callbacks, as aioca would create it

#: Settings of the test beamline: small frames, fast motors, few darks/flats.
TEST_CONFIG = IocConfig(
    prefix="TST:",
    shape=(256, 256),
    n_darks=2,
    n_flats=2,
    rot_velocity_deg_s=360.0,
    piezo_velocity_um_s=200.0,
    rot_limits_deg=(-400.0, 400.0),
    piezo_limits_um=(-20.0, 20.0),
    exposure_s=0.005,
    drift_seed=7,
)

_lock = threading.Lock()
_shared: SimBeamline | None = None
_users = 0


def _acquire_beamline() -> SimBeamline:
    # Test modules each import the fixture; pytest may then hold one fixture definition per
    # module. One process must serve one IOC per port, so share a refcounted instance.
    global _shared, _users
    with _lock:
        if _shared is None:
            _shared = SimBeamline(config=TEST_CONFIG, port=CA_PORT).start()
        _users += 1
        return _shared


def _release_beamline() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users == 0 and _shared is not None:
            _shared.stop()
            _shared = None


@pytest.fixture(scope="session")
def sim_beamline() -> Iterator[SimBeamline]:
    """The running simulated beamline (IOC subprocess), shared by the whole session."""
    bl = _acquire_beamline()
    try:
        yield bl
    finally:
        _release_beamline()


@dataclass
class SimDevices:
    """Connected ophyd-async devices of the simulated beamline."""

    stage: object
    interferometer: object
    microscope: object
    detector: object
    beamline: SimBeamline


@pytest.fixture
async def sim_devices(sim_beamline: SimBeamline) -> AsyncIterator[SimDevices]:
    """Connect every device; after the test, stop the motors and drop aioca's channels."""
    import aioca
    from ophyd_async.core import init_devices

    from tomolock.devices import (
        DetectorStream,
        LaserInterferometer,
        SampleStage,
        VisibleLightMicroscope,
    )

    p = sim_beamline.prefixes
    async with init_devices():
        stage = SampleStage(p.stage)
        ifm = LaserInterferometer(p.interferometer)
        vlm = VisibleLightMicroscope(p.microscope)
        det = DetectorStream(p.detector)
    try:
        yield SimDevices(stage, ifm, vlm, det, sim_beamline)
    finally:
        for motor in (stage.rotation, stage.x, stage.y, stage.z):
            await motor.stop()
        # Subscriptions of this test's event loop must not outlive it.
        aioca.purge_channel_caches()
