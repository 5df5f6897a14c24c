"""bluesky RunEngine -> Publisher (msgpack) -> 0MQ Proxy on 127.0.0.1 -> DocumentReceiver."""

import asyncio
import pickle
import time
from collections.abc import Callable

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plans as bp
from bluesky.callbacks.zmq import Publisher
from ophyd.sim import SynAxis

from tomolock.service.ingest import (
    DocumentReceiver,
    ProxyProcess,
    ScanContext,
    UnsafePayload,
    pack_document,
    unpack_document,
)

MARKS: list[str] = []


def _mark(what: str) -> str:
    MARKS.append(what)
    return what


class Boom:
    """Unpickling this runs _mark: proof that something called pickle.loads."""

    def __reduce__(self):
        return (_mark, ("unpickled",))


async def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def proxy():
    with ProxyProcess("127.0.0.1") as p:
        assert p.in_address.startswith("tcp://127.0.0.1:")
        yield p


async def connected_publisher(proxy, rx: DocumentReceiver, **kwargs) -> Publisher:
    """A Publisher whose path through the proxy to ``rx`` is known to be up.

    PUB/SUB drops messages until subscriptions propagate; probe with a document name the
    receiver rejects as ``bad_name`` until one arrives.
    """
    pub = Publisher(proxy.in_address, serializer=pack_document, **kwargs)
    before = rx.stats().rejected.get("bad_name", 0)
    deadline = time.monotonic() + 15
    while rx.stats().rejected.get("bad_name", 0) == before:
        assert time.monotonic() < deadline, "no path publisher -> proxy -> receiver"
        pub("probe", {})
        await asyncio.sleep(0.02)
    return pub


def run_tomo_plan(publisher: Publisher, angles: list[float]) -> str:
    """Run a scan over rotation angles in a worker thread, publishing every document."""
    RE = RunEngine({}, context_managers=[])
    RE.subscribe(publisher)
    rot = SynAxis(name="rot_angle")
    stage = [SynAxis(name=f"stage_{a}") for a in "xyz"]
    interf = SynAxis(name="interf_x")
    for k, dev in enumerate([*stage, interf]):
        dev.set(0.25 * (k + 1)).wait()
    md = {"num_projections": len(angles), "angles_deg": angles}
    (uid,) = RE(bp.list_scan([*stage, interf], rot, angles, md=md))
    return uid


async def test_runengine_documents_build_scan_context_and_join_frames(proxy):
    ctx = ScanContext(time_tolerance_s=0.05)
    seen: list[str] = []
    async with DocumentReceiver(proxy.out_address, sinks=[ctx]) as rx:
        rx.subscribe(lambda name, doc: seen.append(name))
        pub = await connected_publisher(proxy, rx)
        angles = [0.0, 1.5, 3.0, 4.5, 6.0]
        uid = await asyncio.to_thread(run_tomo_plan, pub, angles)
        await wait_until(lambda: ctx.run(uid) is not None and not ctx.run(uid).open)
        pub.close()
    stats = rx.stats()
    assert seen == ["start", "descriptor"] + ["event"] * 5 + ["stop"]
    assert stats.accepted == {"start": 1, "descriptor": 1, "event": 5, "stop": 1}
    assert set(stats.rejected) == {"bad_name"}  # only the connection probes
    run = ctx.run(uid)
    assert run.plan_name == "list_scan"
    assert run.num_projections == 5
    np.testing.assert_array_equal(run.angles_deg, angles)
    assert run.exit_status == "success"
    # Frame n <-> event seq_num n + 1, with the rotation angle and stage readings of that step.
    events = []
    for n, angle in enumerate(angles):
        fc = ctx.lookup(frame_number=n, run_uid=uid)
        assert fc.matched_by == "frame_number"
        assert fc.seq_num == n + 1
        assert fc.angle_deg == pytest.approx(angle)
        assert fc.stage_um == pytest.approx((0.25, 0.5, 0.75))
        assert fc.interferometer_nm[0] == pytest.approx(1.0)
        events.append(fc)
    # By time: a frame stamped shortly after event 3 joins event 3.
    fc = ctx.lookup(timestamp=events[3].event_time + 0.001, run_uid=uid)
    assert fc.matched_by == "timestamp" and fc.seq_num == 4
    assert fc.angle_deg == pytest.approx(4.5)


async def test_pickle_payloads_are_rejected_and_never_unpickled(proxy):
    # Positive controls: these payloads DO execute code under pickle / msgpack-numpy.
    MARKS.clear()
    pickle.loads(pickle.dumps(Boom()))
    evil_array = {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1],
                  b"data": pickle.dumps(Boom())}
    evil = msgpack.packb({"uid": "u", "time": 1.0, "md": evil_array})
    msgpack.unpackb(evil, object_hook=msgpack_numpy.decode)
    assert MARKS == ["unpickled", "unpickled"]
    MARKS.clear()
    pointer_array = msgpack.packb({"uid": "u", "time": 1.0, "md": {
        b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1], b"data": b"\x01" * 8}})

    pickled = pickle.dumps({"uid": "p1", "time": 1.0, "boom": Boom()})  # bluesky's default

    ctx = ScanContext()
    async with DocumentReceiver(proxy.out_address, sinks=[ctx]) as rx:
        pub = await connected_publisher(proxy, rx)
        # Send crafted payloads through the real Publisher -> Proxy path.
        pub._serializer = lambda doc: doc["payload"]
        for payload in (
            pickled,
            evil,
            pointer_array,
            b"\x93\x01\x02\x03",  # msgpack, but an array, not a map
            msgpack.packb({"uid": "no time"}),  # msgpack map, not a valid start document
        ):
            pub("start", {"payload": payload})
        pub._serializer = pack_document
        pub("start", {"uid": "good", "time": 2.0})
        await wait_until(lambda: ctx.current_run is not None)
        pub.close()
    stats = rx.stats()
    assert MARKS == []
    assert stats.rejected["not_msgpack"] == 2
    assert stats.rejected["object_array"] == 2
    assert stats.rejected["invalid_document"] == 1
    assert stats.accepted == {"start": 1}
    assert [r.uid for r in ctx.runs] == ["good"]


async def test_malformed_framing_and_sink_errors_are_counted():
    rx = DocumentReceiver("127.0.0.1:1", validate=False)

    def bad_sink(name, doc):
        raise RuntimeError("boom")

    assert not rx.handle(b"no-spaces")
    assert not rx.handle(b" start")
    assert not rx.handle(b" nonsense " + pack_document({}))
    rx.subscribe(bad_sink)
    assert not rx.handle(b" start " + pack_document({"uid": "x", "time": 1.0}))
    rx.close()
    assert rx.stats().rejected == {"bad_framing": 2, "bad_name": 1, "sink_error": 1}


def test_prefix_filter():
    rx = DocumentReceiver("127.0.0.1:1", prefix=b"tomo", validate=False)
    assert not rx.handle(b"other start " + pack_document({"uid": "x", "time": 1.0}))
    assert rx.handle(b"tomo start " + pack_document({"uid": "x", "time": 1.0}))
    rx.close()
    with pytest.raises(ValueError, match="prefix"):
        DocumentReceiver("127.0.0.1:1", prefix=b"a b")


def test_numpy_round_trip_numeric_only():
    doc = {"uid": "x", "img": np.arange(12, dtype="<u2").reshape(3, 4), "s": np.float32(1.5),
           "rec": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i8", (2,))]), "c": 1 + 2j}
    out = unpack_document(pack_document(doc))
    np.testing.assert_array_equal(out["img"], doc["img"])
    assert out["img"].dtype == np.dtype("<u2") and not out["img"].flags.writeable
    assert out["s"] == np.float32(1.5)
    assert out["rec"].dtype == doc["rec"].dtype
    assert out["c"] == 1 + 2j
    obj = np.array([{"a": 1}], dtype=object)
    with pytest.raises(UnsafePayload):
        unpack_document(msgpack.packb({"o": obj}, default=msgpack_numpy.encode))
    structured_obj = msgpack.packb({"o": {b"nd": True, b"type": [["a", "|O"]], b"kind": b"V",
                                          b"shape": [1], b"data": b"\0" * 8}})
    with pytest.raises(UnsafePayload):
        unpack_document(structured_obj)
    with pytest.raises(ValueError, match="not a msgpack document"):
        unpack_document(pickle.dumps({"uid": "x"}))
