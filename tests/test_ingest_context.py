"""ScanContext from synthetic event-model documents with known ground truth."""

import math

import numpy as np
import pytest
from event_model import compose_run
from pydantic import ValidationError

from tomolock.service.ingest import DataKeyMap, ScanContext

NUM = {"dtype": "number", "shape": [], "source": "sim"}
T0 = 1.7e9


def make_run(n=10, *, keys=("rot_angle", "stage_x", "stage_y", "stage_z", "interf_x"),
             frame_key=None, dt=0.5, scan_id=7, md=None, stream="primary"):
    """Emit (name, doc) of a run with n events; reading k of event i is a known function."""
    bundle = compose_run(metadata={"plan_name": "tomo_scan", "scan_id": scan_id, **(md or {})})
    docs = [("start", bundle.start_doc)]
    data_keys = {k: NUM for k in keys}
    if frame_key:
        data_keys[frame_key] = NUM
    desc = bundle.compose_descriptor(name=stream, data_keys=data_keys)
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n):
        data = {k: truth(k, i) for k in keys}
        if frame_key:
            data[frame_key] = 100 + i
        t = T0 + i * dt
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, t),
                                                  time=t)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def truth(key: str, i: int) -> float:
    return {"rot_angle": 2.0 * i, "stage_x": 0.1 * i, "stage_y": -0.2 * i, "stage_z": 0.3,
            "interf_x": 12.5 * i}[key]


def feed(ctx, docs):
    for name, doc in docs:
        ctx(name, doc)


def test_start_metadata_and_stop():
    ctx = ScanContext()
    angles = [0.0, 0.5, 1.0]
    docs = make_run(3, md={"num_projections": 3, "angles_deg": angles})
    feed(ctx, docs[:-1])
    run = ctx.current_run
    assert run.uid == docs[0][1]["uid"]
    assert run.scan_id == 7
    assert run.plan_name == "tomo_scan"
    assert run.num_projections == 3
    np.testing.assert_array_equal(run.angles_deg, angles)
    assert not run.angles_deg.flags.writeable
    assert run.open
    assert run.keys[docs[1][1]["uid"]] == {
        "angle": "rot_angle", "stage_x": "stage_x", "stage_y": "stage_y", "stage_z": "stage_z",
        "interferometer_x": "interf_x",
    }
    feed(ctx, docs[-1:])
    assert not run.open
    assert run.exit_status == "success"


def test_join_by_frame_number_seq_num_minus_one():
    ctx = ScanContext()
    feed(ctx, make_run(10))
    for n in range(10):
        fc = ctx.lookup(frame_number=n)
        assert fc.matched_by == "frame_number"
        assert fc.seq_num == n + 1
        assert fc.frame_number == n
        assert fc.angle_deg == pytest.approx(2.0 * n)
        assert fc.stage_um == pytest.approx((0.1 * n, -0.2 * n, 0.3))
        ix, iy, iz = fc.interferometer_nm
        assert ix == pytest.approx(12.5 * n) and math.isnan(iy) and math.isnan(iz)
        assert fc.microscope_um is None
        assert fc.readings["rot_angle"] == pytest.approx(2.0 * n)
        assert fc.time_offset_s is None
    assert ctx.lookup(frame_number=10) is None


def test_join_by_explicit_frame_key():
    ctx = ScanContext()
    feed(ctx, make_run(5, frame_key="frame_number"))
    fc = ctx.lookup(frame_number=103)
    assert fc.seq_num == 4 and fc.angle_deg == pytest.approx(6.0)
    assert ctx.lookup(frame_number=3) is None


def test_join_by_timestamp_within_tolerance():
    ctx = ScanContext(time_tolerance_s=0.2)
    feed(ctx, make_run(10, dt=0.5))
    fc = ctx.lookup(timestamp=T0 + 3 * 0.5 + 0.12)
    assert fc.matched_by == "timestamp" and fc.seq_num == 4
    assert fc.time_offset_s == pytest.approx(0.12)
    # Unknown frame number falls back to the timestamp.
    fc = ctx.lookup(frame_number=999, timestamp=T0 + 2 * 0.5 - 0.05)
    assert fc.matched_by == "timestamp" and fc.seq_num == 3
    assert ctx.lookup(timestamp=T0 + 3 * 0.5 + 0.25) is None  # between events, > tolerance
    assert ctx.lookup(timestamp=T0 - 10) is None


def test_ring_is_bounded_and_forgets_oldest():
    ctx = ScanContext(max_events=4)
    feed(ctx, make_run(10))
    assert ctx.current_run.event_count() == 4
    assert ctx.lookup(frame_number=5) is None
    assert ctx.lookup(frame_number=6).seq_num == 7
    assert ctx.lookup(frame_number=9).seq_num == 10


def test_runs_bounded_and_selected_by_uid():
    ctx = ScanContext(max_runs=2)
    runs = [make_run(3, scan_id=k) for k in range(3)]
    for docs in runs:
        feed(ctx, docs)
    assert [r.scan_id for r in ctx.runs] == [1, 2]
    assert ctx.run(runs[0][0][1]["uid"]) is None
    assert ctx.lookup(frame_number=0, run_uid=runs[1][0][1]["uid"]).scan_id == 1
    assert ctx.lookup(frame_number=0, run_uid=runs[0][0][1]["uid"]) is None
    assert ctx.lookup(frame_number=0).scan_id == 2


def test_custom_key_names_and_other_streams():
    keys = DataKeyMap(angle=("theta",), microscope_x=("vlm_x",), microscope_z=("vlm_z",))
    ctx = ScanContext(keys, frame_stream="projections")
    bundle = compose_run()
    desc = bundle.compose_descriptor(
        name="projections", data_keys={"theta": NUM, "vlm_x": NUM, "vlm_z": NUM}
    )
    base = bundle.compose_descriptor(name="baseline", data_keys={"theta": NUM})
    feed(ctx, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
               ("descriptor", base.descriptor_doc)])
    ctx("event", base.compose_event(data={"theta": 99.0}, timestamps={"theta": T0}))
    ctx("event", desc.compose_event(data={"theta": 45.0, "vlm_x": 1.5, "vlm_z": -0.5},
                                    timestamps={"theta": T0, "vlm_x": T0, "vlm_z": T0}))
    fc = ctx.lookup(frame_number=0)
    assert fc.stream == "projections"
    assert fc.angle_deg == 45.0
    x, y, z = fc.microscope_um
    assert (x, z) == (1.5, -0.5) and math.isnan(y)
    assert ctx.lookup(frame_number=0, stream="baseline").angle_deg == 99.0


def test_event_page_unpacked_and_large_arrays_not_kept():
    ctx = ScanContext()
    bundle = compose_run()
    img_key = {"dtype": "array", "shape": [64, 64], "source": "sim"}
    desc = bundle.compose_descriptor(name="primary",
                                     data_keys={"rot_angle": NUM, "image": img_key})
    feed(ctx, [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)])
    page = desc.compose_event_page(
        data={"rot_angle": [0.0, 1.0], "image": [np.zeros((64, 64)), np.ones((64, 64))]},
        timestamps={"rot_angle": [T0, T0 + 1], "image": [T0, T0 + 1]},
        seq_num=[1, 2], time=[T0, T0 + 1],
    )
    ctx("event_page", page)
    fc = ctx.lookup(frame_number=1)
    assert fc.angle_deg == 1.0
    assert "image" not in fc.readings


def test_documents_of_unknown_runs_are_ignored_and_counted():
    ctx = ScanContext()
    docs = make_run(2)
    feed(ctx, docs[1:])  # started mid-run: no start document
    assert ctx.current_run is None
    assert ctx.ignored == {"descriptor_unknown_run": 1, "event_unknown_descriptor": 2,
                           "stop_unknown_run": 1}
    assert ctx.lookup(frame_number=0) is None


def test_malformed_documents_raise_clear_errors():
    ctx = ScanContext()
    with pytest.raises(ValueError, match="start document lacks required key 'uid'"):
        ctx("start", {"time": 1.0})
    feed(ctx, make_run(1)[:2])
    with pytest.raises(ValueError, match="event document lacks required key 'seq_num'"):
        ctx("event", {"descriptor": "x", "time": 1.0, "data": {}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({}, "frame_number, a timestamp"), ({"frame_number": -1}, "frame_number"),
     ({"frame_number": True}, "frame_number"), ({"timestamp": math.nan}, "timestamp"),
     ({"timestamp": "now"}, "timestamp")],
)
def test_bad_lookup_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScanContext().lookup(**kwargs)


def test_bad_settings():
    with pytest.raises(ValueError, match="max_events"):
        ScanContext(max_events=0)
    with pytest.raises(ValueError, match="time_tolerance_s"):
        ScanContext(time_tolerance_s=-1)
    with pytest.raises(ValidationError, match="non-empty"):
        DataKeyMap(angle=())
