import math

import numpy as np
import pytest

from tomolock.service.feedback.setpoint import DetectorMapping, make_setpoint, validate_axes


def _sp(**kw):
    args = dict(
        scan_id="s1",
        frame=3,
        predicted_drift_um={"x": 0.4, "y": -0.2, "z": -0.1},
        std_um={"x": 0.01, "y": 0.02, "z": 0.03},
        t_valid=10.5,
        angle_deg=12.0,
        confidence=0.9,
        t_created=10.0,
    )
    args.update(kw)
    return make_setpoint(**args)


def test_target_is_minus_predicted_drift_on_default_axes():
    sp = _sp()
    assert sp.axes == ("x", "z")
    assert sp.targets_um == {"x": -0.4, "z": 0.1}
    assert sp.offsets_um == {"x": -0.4, "z": 0.1}
    assert sp.predicted_drift_um == {"x": 0.4, "z": -0.1}
    assert sp.std_um == {"x": 0.01, "z": 0.03}
    assert (sp.t_created, sp.t_valid, sp.angle_deg, sp.confidence) == (10.0, 10.5, 12.0, 0.9)


def test_nominal_offsets_targets_and_y_axis():
    sp = _sp(axes=("x", "y", "z"), nominal_um={"x": 50.0, "y": 40.0, "z": 45.0})
    assert sp.targets_um == pytest.approx({"x": 49.6, "y": 40.2, "z": 45.1})
    # residual seen after correction = drift + offset = 0
    for a in sp.axes:
        assert sp.predicted_drift_um[a] + sp.offsets_um[a] == pytest.approx(0.0)


def test_nan_passes_through_for_interlocks():
    sp = _sp(predicted_drift_um={"x": math.nan, "z": 0.0})
    assert math.isnan(sp.targets_um["x"])
    assert not sp.is_finite()
    assert _sp().is_finite()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"axes": ("x", "q")}, "unknown axes"),
        ({"axes": ("x", "x")}, "repeated"),
        ({"axes": ()}, "at least one"),
        ({"predicted_drift_um": {"x": 1.0}}, "lacks axes"),
        ({"std_um": {"z": 1.0}}, "lacks axes"),
        ({"frame": -1}, "non-negative"),
        ({"scan_id": ""}, "scan_id"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_inputs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _sp(**kw)


def test_validate_axes_keeps_order():
    assert validate_axes(["z", "x"]) == ("z", "x")


@pytest.mark.parametrize("sx", [1, -1])
@pytest.mark.parametrize("sz", [1, -1])
def test_mapping_roundtrip_and_signs(sx, sz):
    m = DetectorMapping(pixel_size_um=0.03, sign_x=sx, sign_z=sz)
    um = m.px_to_um(dy_px=2.0, dx_px=-5.0)
    assert um["x"] == pytest.approx(sx * -5.0 * 0.03)
    assert um["z"] == pytest.approx(sz * 2.0 * 0.03)
    rng = np.random.default_rng(0)
    for x, z in rng.normal(0, 3, size=(20, 2)):
        dy, dx = m.um_to_px(x, z)
        back = m.px_to_um(dy, dx)
        assert back["x"] == pytest.approx(x) and back["z"] == pytest.approx(z)


def test_default_mapping_is_30nm_positive():
    m = DetectorMapping()
    assert m.um_to_px(x_um=0.3, z_um=-0.06) == pytest.approx((-2.0, 10.0))


@pytest.mark.parametrize(
    "kw", [{"pixel_size_um": 0.0}, {"pixel_size_um": math.inf}, {"sign_x": 2}, {"sign_z": 0}]
)
def test_mapping_validation(kw):
    with pytest.raises(ValueError):
        DetectorMapping(**kw)
