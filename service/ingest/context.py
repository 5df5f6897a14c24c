"""Per-run scan context built from bluesky documents, joined to detector frames.

:class:`ScanContext` is a bluesky callback (an :class:`event_model.DocumentRouter`): subscribe
it to a RunEngine in-process, or feed it from :class:`~.documents.DocumentReceiver`. It keeps,
per run, the start metadata (scan id, plan, planned angles), which data keys carry the rotation
angle, stage, interferometer and microscope readings, and a bounded ring of recent events, so a
frame can be joined to its event by frame number or by time.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from event_model import DocumentRouter
from pydantic import BaseModel, ConfigDict, field_validator

#: Array readings up to this many elements are kept in the event ring; larger ones (inline
#: images) are not, so the ring's memory stays bounded.
MAX_KEPT_ARRAY_SIZE = 64


class DataKeyMap(BaseModel):
    """Which event data keys carry which physical quantity (first candidate present wins).

    Attributes
    ----------
    angle : tuple of str
        Rotation angle, degrees.
    stage_x, stage_y, stage_z : tuple of str
        Fine piezo stage readbacks, micrometres (lab frame).
    interferometer_x, interferometer_y, interferometer_z : tuple of str
        Laser interferometer readbacks, nanometres.
    microscope_x, microscope_y, microscope_z : tuple of str
        Visible-light microscope tracked position, micrometres.
    frame_number : tuple of str
        An explicit detector frame counter in the event, if the plan records one; otherwise
        frames join events by ``seq_num - 1``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    angle: tuple[str, ...] = ("rot_angle", "rotation_angle", "stage-rotation", "stage_rotation")
    stage_x: tuple[str, ...] = ("stage_x", "stage-x", "piezo_x")
    stage_y: tuple[str, ...] = ("stage_y", "stage-y", "piezo_y")
    stage_z: tuple[str, ...] = ("stage_z", "stage-z", "piezo_z")
    interferometer_x: tuple[str, ...] = ("interf_x", "interferometer-x", "interferometer_x")
    interferometer_y: tuple[str, ...] = ("interf_y", "interferometer-y", "interferometer_y")
    interferometer_z: tuple[str, ...] = ("interf_z", "interferometer-z", "interferometer_z")
    microscope_x: tuple[str, ...] = ("vlm_x", "microscope-x", "microscope_x")
    microscope_y: tuple[str, ...] = ("vlm_y", "microscope-y", "microscope_y")
    microscope_z: tuple[str, ...] = ("vlm_z", "microscope-z", "microscope_z")
    frame_number: tuple[str, ...] = ("frame_number", "image_number", "detector-frame_counter")

    @field_validator("*")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or not all(isinstance(k, str) and k for k in v):
            raise ValueError("each role needs at least one non-empty data key name")
        return v

    def resolve(self, data_keys: Mapping[str, Any]) -> dict[str, str]:
        """Map each role to the first of its candidate keys present in ``data_keys``."""
        found: dict[str, str] = {}
        for role, candidates in self:
            for key in candidates:
                if key in data_keys:
                    found[role] = key
                    break
        return found


@dataclass(frozen=True)
class FrameContext:
    """The event a frame was joined to, with its physical readings.

    Attributes
    ----------
    run_uid : str
        Run start uid.
    scan_id : int or None
        The start document's ``scan_id``.
    stream : str
        Event stream name.
    seq_num : int
        Event sequence number (1-based).
    frame_number : int
        Frame number the event stands for (explicit key, else ``seq_num - 1``).
    event_time : float
        Event ``time``, seconds since the Unix epoch.
    matched_by : {"frame_number", "timestamp"}
        How the join was made.
    time_offset_s : float or None
        Query timestamp minus event time, when a timestamp was given.
    angle_deg : float or None
        Rotation angle reading.
    stage_um, interferometer_nm, microscope_um : tuple of 3 float, or None
        x, y, z readings (NaN for an axis not recorded; None if no axis is).
    readings : Mapping
        All kept readings of the event (scalars and small arrays), read-only.
    """

    run_uid: str
    scan_id: int | None
    stream: str
    seq_num: int
    frame_number: int
    event_time: float
    matched_by: Literal["frame_number", "timestamp"]
    time_offset_s: float | None
    angle_deg: float | None
    stage_um: tuple[float, float, float] | None
    interferometer_nm: tuple[float, float, float] | None
    microscope_um: tuple[float, float, float] | None
    readings: Mapping[str, Any]


@dataclass
class _Event:
    seq_num: int
    time: float
    frame_number: int
    stream: str
    readings: Mapping[str, Any]
    roles: dict[str, float]


@dataclass
class _Stream:
    events: deque[_Event]
    by_frame: dict[int, _Event] = field(default_factory=dict)


@dataclass
class RunContext:
    """What is known about one run.

    Attributes
    ----------
    uid : str
        Run start uid.
    scan_id : int or None
        ``scan_id`` of the start document.
    plan_name : str or None
        ``plan_name`` of the start document.
    start_time : float
        Start document ``time``.
    num_projections : int or None
        Planned number of projections (``num_projections``, else ``num_points``).
    angles_deg : numpy.ndarray or None
        Planned angles (metadata ``angles_deg``), read-only.
    metadata : Mapping
        The start document, read-only.
    stop_time, exit_status : float or None, str or None
        From the stop document, once it arrived.
    streams : dict
        Stream name per descriptor uid.
    keys : dict
        Per descriptor uid, the role -> data key mapping found.
    """

    uid: str
    scan_id: int | None
    plan_name: str | None
    start_time: float
    num_projections: int | None
    angles_deg: np.ndarray | None
    metadata: Mapping[str, Any]
    stop_time: float | None = None
    exit_status: str | None = None
    streams: dict[str, str] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    _events: dict[str, _Stream] = field(default_factory=dict, repr=False)

    @property
    def open(self) -> bool:
        """Whether no stop document has arrived yet."""
        return self.exit_status is None

    def event_count(self, stream: str = "primary") -> int:
        """Return how many events of ``stream`` the ring currently keeps."""
        s = self._events.get(stream)
        return 0 if s is None else len(s.events)


def _require(doc: Mapping[str, Any], key: str, name: str) -> Any:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{name} document must be a mapping, got {type(doc).__name__}")
    try:
        return doc[key]
    except KeyError:
        raise ValueError(f"{name} document lacks required key {key!r}") from None


def _number_or_none(val: Any) -> float | None:
    if isinstance(val, bool):
        return float(val)
    if isinstance(val, (int, float, np.integer, np.floating)):
        return float(val)
    if isinstance(val, np.ndarray) and val.size == 1 and val.dtype.kind in "iuf":
        return float(val.reshape(()))
    return None


def _keep(val: Any) -> bool:
    if isinstance(val, np.ndarray):
        return val.size <= MAX_KEPT_ARRAY_SIZE
    if isinstance(val, (list, tuple)):
        return len(val) <= MAX_KEPT_ARRAY_SIZE
    return True


class ScanContext(DocumentRouter):
    """Build per-run scan context from bluesky documents and join frames to events.

    Parameters
    ----------
    keys : DataKeyMap, optional
        Data key names per physical role.
    frame_stream : str
        Stream whose events stand for detector frames (one event per projection).
    max_events : int
        Events kept per run and stream (ring; oldest forgotten first).
    max_runs : int
        Runs kept (oldest forgotten first).
    time_tolerance_s : float
        Largest ``|frame timestamp - event time|`` accepted by a timestamp join.

    Notes
    -----
    Not thread-safe. When subscribed to a RunEngine in another thread, hand documents to the
    loop that owns this object (``loop.call_soon_threadsafe``). Documents for runs or
    descriptors it never saw (e.g. it started mid-run) are ignored and counted in
    :attr:`ignored`.
    """

    def __init__(
        self,
        keys: DataKeyMap | None = None,
        *,
        frame_stream: str = "primary",
        max_events: int = 1024,
        max_runs: int = 8,
        time_tolerance_s: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1, got {max_events!r}")
        if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
            raise ValueError(f"max_runs must be an int >= 1, got {max_runs!r}")
        if not (isinstance(time_tolerance_s, (int, float)) and time_tolerance_s >= 0):
            raise ValueError(f"time_tolerance_s must be a number >= 0, got {time_tolerance_s!r}")
        if not isinstance(frame_stream, str) or not frame_stream:
            raise ValueError(f"frame_stream must be a non-empty string, got {frame_stream!r}")
        self.keys = keys if keys is not None else DataKeyMap()
        self.frame_stream = frame_stream
        self.max_events = max_events
        self.max_runs = max_runs
        self.time_tolerance_s = float(time_tolerance_s)
        self._runs: OrderedDict[str, RunContext] = OrderedDict()
        self._descriptor_run: dict[str, str] = {}
        #: Documents that could not be attached, per reason.
        self.ignored: Counter[str] = Counter()

    # ------------------------------------------------------------------ queries
    @property
    def runs(self) -> list[RunContext]:
        """Known runs, oldest first."""
        return list(self._runs.values())

    @property
    def current_run(self) -> RunContext | None:
        """The most recently started run (open or not), or None."""
        return next(reversed(self._runs.values()), None)

    def run(self, uid: str) -> RunContext | None:
        """Return the run with start uid ``uid``, if still kept."""
        return self._runs.get(uid)

    def lookup(
        self,
        frame_number: int | None = None,
        timestamp: float | None = None,
        *,
        run_uid: str | None = None,
        stream: str | None = None,
    ) -> FrameContext | None:
        """Join a frame to the closest event.

        Parameters
        ----------
        frame_number : int, optional
            Frame number within the scan (0-based); tried first.
        timestamp : float, optional
            Frame timestamp (seconds since the epoch); used when the frame number does not
            match a kept event: the nearest event within ``time_tolerance_s`` wins.
        run_uid : str, optional
            Run to search; the current run by default.
        stream : str, optional
            Event stream; ``frame_stream`` by default.

        Returns
        -------
        FrameContext or None
            None when the run is unknown or nothing matches.

        Raises
        ------
        ValueError
            If neither ``frame_number`` nor ``timestamp`` is given, or either is invalid.
        """
        if frame_number is None and timestamp is None:
            raise ValueError("lookup needs a frame_number, a timestamp, or both")
        if frame_number is not None and (
            isinstance(frame_number, bool)
            or not isinstance(frame_number, (int, np.integer))
            or frame_number < 0
        ):
            raise ValueError(f"frame_number must be an int >= 0, got {frame_number!r}")
        if timestamp is not None and (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, (int, float))
            or not math.isfinite(timestamp)
        ):
            raise ValueError(f"timestamp must be a finite number, got {timestamp!r}")
        run = self._runs.get(run_uid) if run_uid is not None else self.current_run
        if run is None:
            return None
        ring = run._events.get(stream or self.frame_stream)
        if ring is None or not ring.events:
            return None
        if frame_number is not None:
            ev = ring.by_frame.get(int(frame_number))
            if ev is not None:
                return self._context(run, ev, "frame_number", timestamp)
        if timestamp is not None:
            ev = min(ring.events, key=lambda e: abs(e.time - timestamp))
            if abs(ev.time - timestamp) <= self.time_tolerance_s:
                return self._context(run, ev, "timestamp", timestamp)
        return None

    @staticmethod
    def _context(
        run: RunContext,
        ev: _Event,
        how: Literal["frame_number", "timestamp"],
        timestamp: float | None,
    ) -> FrameContext:
        def triple(prefix: str) -> tuple[float, float, float] | None:
            vals = [ev.roles.get(f"{prefix}_{axis}") for axis in "xyz"]
            if all(v is None for v in vals):
                return None
            x, y, z = (math.nan if v is None else v for v in vals)
            return (x, y, z)

        return FrameContext(
            run_uid=run.uid,
            scan_id=run.scan_id,
            stream=ev.stream,
            seq_num=ev.seq_num,
            frame_number=ev.frame_number,
            event_time=ev.time,
            matched_by=how,
            time_offset_s=None if timestamp is None else timestamp - ev.time,
            angle_deg=ev.roles.get("angle"),
            stage_um=triple("stage"),
            interferometer_nm=triple("interferometer"),
            microscope_um=triple("microscope"),
            readings=ev.readings,
        )

    # ------------------------------------------------------------------ documents
    def start(self, doc: dict[str, Any]) -> None:
        """Open a run from a start document."""
        uid = _require(doc, "uid", "start")
        start_time = float(_require(doc, "time", "start"))
        scan_id = doc.get("scan_id")
        num = doc.get("num_projections", doc.get("num_points"))
        angles = doc.get("angles_deg")
        angles_arr: np.ndarray | None = None
        if angles is not None:
            try:
                angles_arr = np.array(angles, dtype=float).reshape(-1)
            except (TypeError, ValueError):
                self.ignored["bad_angles_metadata"] += 1
            else:
                angles_arr.flags.writeable = False
        run = RunContext(
            uid=uid,
            scan_id=scan_id if isinstance(scan_id, int) and not isinstance(scan_id, bool) else None,
            plan_name=doc.get("plan_name") if isinstance(doc.get("plan_name"), str) else None,
            start_time=start_time,
            num_projections=num if isinstance(num, int) and not isinstance(num, bool) else None,
            angles_deg=angles_arr,
            metadata=MappingProxyType(dict(doc)),
        )
        self._runs[uid] = run
        self._runs.move_to_end(uid)
        while len(self._runs) > self.max_runs:
            _, old = self._runs.popitem(last=False)
            for desc_uid in old.streams:
                self._descriptor_run.pop(desc_uid, None)

    def descriptor(self, doc: dict[str, Any]) -> None:
        """Register an event descriptor and find the role keys in its data keys."""
        uid = _require(doc, "uid", "descriptor")
        run_uid = _require(doc, "run_start", "descriptor")
        data_keys = _require(doc, "data_keys", "descriptor")
        run = self._runs.get(run_uid)
        if run is None:
            self.ignored["descriptor_unknown_run"] += 1
            return
        stream = doc.get("name", "primary")
        run.streams[uid] = stream
        run.keys[uid] = self.keys.resolve(data_keys)
        run._events.setdefault(stream, _Stream(deque(maxlen=self.max_events)))
        self._descriptor_run[uid] = run_uid

    def event(self, doc: dict[str, Any]) -> None:
        """Add an event to its run's ring."""
        desc_uid = _require(doc, "descriptor", "event")
        seq_num = _require(doc, "seq_num", "event")
        ev_time = float(_require(doc, "time", "event"))
        data = _require(doc, "data", "event")
        run = self._runs.get(self._descriptor_run.get(desc_uid, ""))
        if run is None:
            self.ignored["event_unknown_descriptor"] += 1
            return
        keys = run.keys[desc_uid]
        roles: dict[str, float] = {}
        for role, key in keys.items():
            val = _number_or_none(data.get(key))
            if val is not None:
                roles[role] = val
        frame_number = roles.pop("frame_number", None)
        frame = int(frame_number) if frame_number is not None else int(seq_num) - 1
        stream = run.streams[desc_uid]
        ring = run._events[stream]
        if len(ring.events) == ring.events.maxlen:
            old = ring.events[0]
            if ring.by_frame.get(old.frame_number) is old:
                del ring.by_frame[old.frame_number]
        readings = MappingProxyType({k: v for k, v in data.items() if _keep(v)})
        ev = _Event(int(seq_num), ev_time, frame, stream, readings, roles)
        ring.events.append(ev)
        ring.by_frame[frame] = ev

    def stop(self, doc: dict[str, Any]) -> None:
        """Close a run from its stop document."""
        run_uid = _require(doc, "run_start", "stop")
        run = self._runs.get(run_uid)
        if run is None:
            self.ignored["stop_unknown_run"] += 1
            return
        run.stop_time = float(_require(doc, "time", "stop"))
        run.exit_status = str(_require(doc, "exit_status", "stop"))


__all__ = ["MAX_KEPT_ARRAY_SIZE", "DataKeyMap", "FrameContext", "RunContext", "ScanContext"]
