"""Publish correction setpoints and interlock decisions on a ZMQ PUB socket.

Every message is two frames, ``[topic, body]``; ``body`` is UTF-8 JSON (non-finite numbers
are sent as ``null``, so the JSON is strict). Subscribe to the topic prefix you want.

``b"tomolock.setpoint"`` - a correction the interlocks allowed (``action == "move"``).
``commanded_um`` is what the stage should go to (absolute, micrometres, only the axes to move);
``targets_um`` is what the drift model asked for before limiting::

    {
      "schema": "tomolock-setpoint-1",
      "scan_id": "3f2a...", "frame": 42,
      "t_created": 1718000000.120, "t_valid": 1718000000.400, "angle_deg": 12.6,
      "axes": ["x", "z"],
      "targets_um": {"x": -0.412, "z": 0.087},
      "offsets_um": {"x": -0.412, "z": 0.087},
      "nominal_um": {"x": 0.0, "z": 0.0},
      "predicted_drift_um": {"x": 0.412, "z": -0.087},
      "std_um": {"x": 0.011, "z": 0.008},
      "confidence": 0.93,
      "action": "move",
      "commanded_um": {"x": -0.412, "z": 0.087},
      "reasons": [], "axis_reasons": {"x": [], "z": []},
      "t_decision": 1718000000.121, "mode": "apply"
    }

``b"tomolock.decision"`` - a correction that was held or refused; same fields as above with
``"schema": "tomolock-decision-1"``, ``action`` ``"hold"`` or ``"refuse"``, empty
``commanded_um``, machine-readable ``reasons`` (e.g. ``["stale", "low_confidence"]``) and a
human-readable ``detail``.

The socket binds (the consumers connect) to ``tcp://127.0.0.1:5596`` by default; pass
``port=0`` for a free port and read :attr:`SetpointPublisher.endpoint`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Self

import zmq
import zmq.asyncio

from .interlocks import Decision
from .setpoint import Setpoint

SETPOINT_TOPIC = b"tomolock.setpoint"
DECISION_TOPIC = b"tomolock.decision"
SETPOINT_SCHEMA = "tomolock-setpoint-1"
DECISION_SCHEMA = "tomolock-decision-1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5596


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def encode_message(setpoint: Setpoint, decision: Decision, mode: str = "") -> tuple[bytes, bytes]:
    """Return ``(topic, body)`` for one evaluated setpoint.

    Parameters
    ----------
    setpoint : Setpoint
        The requested correction.
    decision : Decision
        The interlocks' verdict on it.
    mode : str, optional
        Controller mode (``"publish-only"`` or ``"apply"``), informative.

    Returns
    -------
    tuple of bytes
        Topic (:data:`SETPOINT_TOPIC` for a move, :data:`DECISION_TOPIC` otherwise) and JSON.
    """
    is_move = decision.action == "move"
    body = setpoint.to_dict()
    body.update(
        schema=SETPOINT_SCHEMA if is_move else DECISION_SCHEMA,
        action=decision.action,
        commanded_um=dict(decision.targets_um),
        reasons=list(decision.reasons),
        axis_reasons={a: list(r) for a, r in decision.axis_reasons.items()},
        detail=decision.detail,
        t_decision=decision.t,
        mode=mode,
    )
    payload = json.dumps(_json_safe(body), allow_nan=False, separators=(",", ":"))
    return (SETPOINT_TOPIC if is_move else DECISION_TOPIC), payload.encode()


class SetpointPublisher:
    """Asynchronous ZMQ PUB socket for setpoints and decisions.

    Parameters
    ----------
    host : str, optional
        Interface to bind, default ``127.0.0.1`` (bind other interfaces deliberately).
    port : int, optional
        TCP port, default :data:`DEFAULT_PORT`; 0 picks a free port.
    context : zmq.asyncio.Context, optional
        Context to use, default the process-wide instance.
    sndhwm : int, optional
        Send high-water mark per subscriber; beyond it PUB drops new messages for that
        subscriber instead of blocking the controller.

    Examples
    --------
    >>> async with SetpointPublisher(port=0) as pub:  # doctest: +SKIP
    ...     await pub.publish(setpoint, decision)
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        context: zmq.asyncio.Context | None = None,
        sndhwm: int = 1000,
    ) -> None:
        if not host or "*" in host:
            raise ValueError(f"host must be an explicit interface address, got {host!r}")
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be within 0..65535, got {port!r}")
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1, got {sndhwm!r}")
        self.host = host
        self.port = int(port)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sndhwm = sndhwm
        self._sock: zmq.asyncio.Socket | None = None
        self.sent: dict[str, int] = {"setpoint": 0, "decision": 0}

    @property
    def endpoint(self) -> str:
        """The bound endpoint, e.g. ``tcp://127.0.0.1:5596``."""
        if self._sock is None:
            raise RuntimeError("publisher is not started")
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self) -> None:
        """Create and bind the socket (idempotent).

        Raises
        ------
        zmq.ZMQError
            If the address cannot be bound (e.g. port in use).
        """
        if self._sock is not None:
            return
        sock = self._ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self._sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.port == 0:
                sock.bind_to_random_port(f"tcp://{self.host}")
            else:
                sock.bind(f"tcp://{self.host}:{self.port}")
        except zmq.ZMQError:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def publish(self, setpoint: Setpoint, decision: Decision, mode: str = "") -> bytes:
        """Send one evaluated setpoint; return the topic it went out on.

        Parameters
        ----------
        setpoint : Setpoint
            The requested correction.
        decision : Decision
            The interlocks' verdict.
        mode : str, optional
            Controller mode, copied into the message.

        Returns
        -------
        bytes
            :data:`SETPOINT_TOPIC` or :data:`DECISION_TOPIC`.
        """
        if self._sock is None:
            raise RuntimeError("publisher is not started: call start() or use 'async with'")
        topic, body = encode_message(setpoint, decision, mode)
        await self._sock.send_multipart([topic, body])
        self.sent["setpoint" if topic == SETPOINT_TOPIC else "decision"] += 1
        return topic

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
