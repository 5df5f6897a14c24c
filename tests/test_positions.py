import pytest

from tomolock.service.positions import PositionHistory


def test_offset_is_stepwise_and_relative_to_nominal() -> None:
    h = PositionHistory()
    h.set_nominal({"x": 10.0, "z": -1.0})
    assert h.offset_at(5.0) == {"x": 0.0, "y": 0.0, "z": 0.0}
    h.record(1.0, {"x": 10.5})
    h.record(2.0, {"z": -0.75})
    assert h.offset_at(0.5) == pytest.approx({"x": 0.5, "y": 0.0, "z": 0.0})  # before: oldest
    assert h.offset_at(1.5) == pytest.approx({"x": 0.5, "y": 0.0, "z": 0.0})
    assert h.offset_at(2.0) == pytest.approx({"x": 0.5, "y": 0.0, "z": 0.25})
    h.record(1.7, {"x": 99.0})  # late sample ignored
    assert h.offset_at(3.0)["x"] == pytest.approx(0.5)
    assert h.current()["x"] == pytest.approx(10.5)


def test_bad_inputs() -> None:
    h = PositionHistory()
    with pytest.raises(ValueError, match="unknown axis"):
        h.set_nominal({"q": 1.0})
    with pytest.raises(ValueError, match="finite"):
        h.set_nominal({"x": float("nan")})
    with pytest.raises(ValueError, match="maxlen"):
        PositionHistory(1)
