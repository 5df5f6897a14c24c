"""FastAPI service: status, history, metrics, control and live feed of tomolock.

Build the app with :func:`create_app` around a :class:`ServiceBackend` (the live pipeline)
and run it in-process with :func:`serve`.
"""

from tomolock.service.api.app import create_app
from tomolock.service.api.backend import ControlRefusedError, ServiceBackend, UnknownScanError
from tomolock.service.api.live import LiveSettings
from tomolock.service.api.server import RunningServer, ServerStartupError, serve

__all__ = [
    "ControlRefusedError",
    "LiveSettings",
    "RunningServer",
    "ServerStartupError",
    "ServiceBackend",
    "UnknownScanError",
    "create_app",
    "serve",
]
