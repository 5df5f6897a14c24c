import math
import threading

import numpy as np
import pydantic
import pytest

from tomolock.service.feedback.interlocks import (
    REASONS,
    AxisLimits,
    InterlockConfig,
    Interlocks,
)
from tomolock.service.feedback.setpoint import make_setpoint

EPS = 1e-9


def _sp(drift, *, std=0.01, conf=0.9, t_created=100.0, axes=("x", "z"), nominal=None):
    if not isinstance(drift, dict):
        drift = dict.fromkeys(axes, drift)
    return make_setpoint(
        scan_id="s",
        frame=1,
        predicted_drift_um=drift,
        std_um=dict.fromkeys(axes, std),
        t_valid=t_created + 0.2,
        angle_deg=0.0,
        confidence=conf,
        axes=axes,
        nominal_um=nominal,
        t_created=t_created,
    )


def _cfg(**kw):
    base = dict(
        soft_limits={a: AxisLimits(low=-10.0, high=10.0) for a in "xyz"},
        max_step_um=1.0,
        max_total_correction_um=8.0,
        dead_band_um=0.01,
        min_interval_s=0.0,
        staleness_timeout_s=1.0,
        min_confidence=0.5,
        max_std_um=0.2,
    )
    base.update(kw)
    return InterlockConfig(**base)


HERE = {"x": 0.0, "z": 0.0}


def test_simple_move():
    d = Interlocks(_cfg()).evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True)
    assert d.action == "move"
    assert d.targets_um == pytest.approx({"x": -0.3, "z": -0.3})
    assert d.reasons == ()


def test_step_clipped_toward_target():
    d = Interlocks(_cfg()).evaluate(_sp({"x": 2.5, "z": -0.5}), HERE, 100.1, interferometer_ok=True)
    assert d.action == "move"
    assert d.targets_um == pytest.approx({"x": -1.0, "z": 0.5})
    assert d.axis_reasons["x"] == ("step_clipped",)
    assert "step_clipped" in d.reasons


def test_soft_limit_and_total_correction():
    il = Interlocks(_cfg(max_step_um=5.0, max_total_correction_um=20.0))
    d = il.evaluate(_sp(-30.0), {"x": 9.0, "z": 9.0}, 100.1, interferometer_ok=True)
    assert d.targets_um == pytest.approx({"x": 10.0, "z": 10.0})
    assert "soft_limit" in d.reasons
    il2 = Interlocks(_cfg(max_step_um=5.0, max_total_correction_um=2.0))
    d2 = il2.evaluate(_sp(-3.0), {"x": 1.5, "z": 1.5}, 100.1, interferometer_ok=True)
    assert d2.targets_um == pytest.approx({"x": 2.0, "z": 2.0})
    assert d2.reasons == ("max_total_correction",)


def test_at_limit_becomes_dead_band_hold():
    il = Interlocks(_cfg(max_total_correction_um=20.0))
    d = il.evaluate(_sp(-30.0), {"x": 10.0, "z": 10.0}, 100.1, interferometer_ok=True)
    assert d.action == "hold" and d.targets_um == {}
    assert "dead_band" in d.reasons and "soft_limit" in d.reasons


def test_position_far_outside_limits_never_commands():
    d = Interlocks(_cfg()).evaluate(_sp(-0.0), {"x": 15.0, "z": 0.5}, 100.1, interferometer_ok=True)
    assert "x" not in d.targets_um
    assert "soft_limit" in d.axis_reasons["x"]
    assert d.targets_um == pytest.approx({"z": 0.0})


def test_dead_band_holds():
    d = Interlocks(_cfg()).evaluate(_sp(0.005), HERE, 100.1, interferometer_ok=True)
    assert d.action == "hold" and d.reasons == ("dead_band",) and d.targets_um == {}


@pytest.mark.parametrize(
    ("kw", "now", "reason"),
    [
        ({}, 102.0, "stale"),
        ({}, 98.0, "stale"),  # setpoint from the future: clock mismatch
        ({"conf": 0.2}, 100.1, "low_confidence"),
        ({"std": 0.5}, 100.1, "uncertain"),
        ({"drift": math.nan}, 100.1, "non_finite"),
        ({"drift": math.inf}, 100.1, "non_finite"),
        ({"std": math.nan}, 100.1, "non_finite"),
        ({"conf": math.nan}, 100.1, "non_finite"),
        ({}, math.nan, "non_finite"),
    ],
)
def test_refusals(kw, now, reason):
    drift = kw.pop("drift", 0.3)
    d = Interlocks(_cfg()).evaluate(_sp(drift, **kw), HERE, now, interferometer_ok=True)
    assert d.action == "refuse" and reason in d.reasons and d.targets_um == {}


def test_nan_position_refused():
    d = Interlocks(_cfg()).evaluate(
        _sp(0.3), {"x": math.nan, "z": 0.0}, 100.1, interferometer_ok=True
    )
    assert d.action == "refuse" and d.reasons == ("non_finite",)


def test_multiple_refuse_reasons_reported():
    d = Interlocks(_cfg()).evaluate(
        _sp(0.3, conf=0.1, std=1.0), HERE, 105.0, interferometer_ok=True
    )
    assert set(d.reasons) == {"stale", "low_confidence", "uncertain"}


def test_interferometer_loss_holds_only_when_configured():
    d = Interlocks(_cfg()).evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=False)
    assert d.action == "hold" and d.reasons == ("interferometer_lost",)
    d = Interlocks(_cfg(hold_on_interferometer_loss=False)).evaluate(
        _sp(0.3), HERE, 100.1, interferometer_ok=False
    )
    assert d.action == "move"


def test_rate_limit():
    il = Interlocks(_cfg(min_interval_s=0.5))
    d = il.evaluate(_sp(0.3, t_created=100), HERE, 100.0, interferometer_ok=True)
    assert d.action == "move"
    d = il.evaluate(_sp(0.3, t_created=100.2), HERE, 100.2, interferometer_ok=True)
    assert d.action == "hold" and d.reasons == ("rate_limited",)
    assert il.evaluate(_sp(0.3, t_created=100.6), HERE, 100.6, interferometer_ok=True).action == (
        "move"
    )


def test_axis_without_soft_limits_is_refused():
    il = Interlocks(_cfg(soft_limits={"x": AxisLimits(low=-1, high=1)}))
    d = il.evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True)
    assert d.action == "refuse" and d.reasons == ("no_soft_limit",)


def test_disable_enable_and_counters():
    il = Interlocks(_cfg())
    il.disable("operator pressed stop")
    assert not il.enabled and il.disable_reason == "operator pressed stop"
    d = il.evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True)
    assert d.action == "refuse" and d.reasons == ("disabled",) and d.targets_um == {}
    assert "operator pressed stop" in d.detail
    il.enable()
    assert il.enabled and il.disable_reason == ""
    assert il.evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True).action == "move"
    il.evaluate(_sp(0.3), HERE, 105, interferometer_ok=True)
    c = il.counters()
    assert c["actions"] == {"refuse": 2, "move": 1}
    assert c["reasons"] == {"disabled": 1, "stale": 1}
    il.reset_counters()
    assert il.counters() == {"actions": {}, "reasons": {}}


def test_disabled_by_config():
    il = Interlocks(_cfg(enabled=False))
    assert il.evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True).action == "refuse"


def test_disable_from_other_thread_is_immediate():
    il = Interlocks(_cfg())
    stop = threading.Event()
    seen_after: list[str] = []

    def worker():
        while not stop.is_set():
            flag_before = il.enabled
            d = il.evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True)
            if not flag_before:
                seen_after.append(d.action)

    th = threading.Thread(target=worker)
    th.start()
    il.disable("test")
    # Every evaluation started after disable() returned must refuse.
    for _ in range(200):
        d = il.evaluate(_sp(0.3), HERE, 100.1, interferometer_ok=True)
        assert d.action == "refuse"
    for _ in range(1000):  # let the worker see the disabled state a few times
        if len(seen_after) >= 20:
            break
        threading.Event().wait(0.001)
    stop.set()
    th.join(5)
    assert len(seen_after) >= 20 and set(seen_after) == {"refuse"}


@pytest.mark.parametrize(
    "kw",
    [
        {"max_step_um": 0},
        {"max_step_um": -1},
        {"max_total_correction_um": 0},
        {"dead_band_um": -0.1},
        {"dead_band_um": 2.0},  # >= max_step
        {"min_interval_s": -1},
        {"staleness_timeout_s": 0},
        {"min_confidence": 1.5},
        {"max_std_um": 0},
        {"max_step_um": math.nan},
        {"soft_limits": {"q": {"low": 0, "high": 1}}},
        {"soft_limits": {"x": {"low": 1, "high": 1}}},
        {"soft_limits": {"x": {"low": 0, "high": math.inf}}},
        {"bogus": 1},
    ],
)
def test_config_validation(kw):
    with pytest.raises(pydantic.ValidationError):
        _cfg(**kw)


def test_bad_call_arguments():
    il = Interlocks(_cfg())
    with pytest.raises(ValueError, match="lacks axes"):
        il.evaluate(_sp(0.3), {"x": 0.0}, 100.1, interferometer_ok=True)
    with pytest.raises(TypeError, match="Setpoint"):
        il.evaluate({"x": 1}, HERE, 100.1, interferometer_ok=True)  # type: ignore[arg-type]


def test_random_inputs_respect_invariants():
    rng = np.random.default_rng(12345)
    actions = set()
    for _ in range(2500):
        lows = rng.uniform(-30, 5, 3)
        highs = lows + rng.uniform(0.5, 40, 3)
        step = float(rng.uniform(0.01, 5))
        cfg = InterlockConfig(
            soft_limits={
                a: AxisLimits(low=lo, high=hi) for a, lo, hi in zip("xyz", lows, highs, strict=True)
            },
            max_step_um=step,
            max_total_correction_um=float(rng.uniform(0.1, 30)),
            dead_band_um=float(rng.uniform(0, step * 0.9)),
            min_interval_s=float(rng.choice([0.0, 0.5])),
            staleness_timeout_s=1.0,
            min_confidence=0.5,
            max_std_um=0.3,
            hold_on_interferometer_loss=bool(rng.integers(2)),
            enabled=bool(rng.random() > 0.1),
        )
        il = Interlocks(cfg)
        axes = tuple(a for a in "xyz" if rng.random() > 0.3) or ("x",)
        drift = {a: float(rng.normal(0, 20)) for a in axes}
        if rng.random() < 0.05:
            drift[axes[0]] = float(rng.choice([math.nan, math.inf, -math.inf]))
        nominal = {a: float(rng.uniform(-20, 20)) for a in axes}
        current = {a: float(rng.uniform(-40, 40)) for a in axes}
        conf = float(rng.uniform(0, 1))
        std = float(rng.exponential(0.2))
        now = 100.0 + float(rng.exponential(0.6))
        sp = _sp(drift, std=std, conf=conf, axes=axes, nominal=nominal)
        d = il.evaluate(sp, current, now, interferometer_ok=bool(rng.random() > 0.1))
        actions.add(d.action)
        assert set(d.reasons) <= set(REASONS)
        if d.action != "move":
            assert d.targets_um == {}
        else:
            assert d.targets_um
        if not cfg.enabled:
            assert d.action == "refuse" and "disabled" in d.reasons
        if not all(math.isfinite(v) for v in drift.values()):
            assert d.action == "refuse"
        if conf < 0.5 or std > 0.3 or abs(now - 100.0) > 1.0:
            assert d.action == "refuse"
        for a, t in d.targets_um.items():
            lim = cfg.soft_limits[a]
            assert lim.low - EPS <= t <= lim.high + EPS, "soft limit violated"
            assert abs(t - current[a]) <= cfg.max_step_um + EPS, "max step violated"
            assert abs(t - nominal[a]) <= cfg.max_total_correction_um + EPS
            assert abs(t - current[a]) > cfg.dead_band_um, "dead-band move commanded"
            # Clipping moves toward the (range-limited) request, never past it.
            req = sp.targets_um[a]
            lo = max(lim.low, nominal[a] - cfg.max_total_correction_um)
            hi = min(lim.high, nominal[a] + cfg.max_total_correction_um)
            wanted = min(max(req, lo), hi)
            assert min(current[a], wanted) - EPS <= t <= max(current[a], wanted) + EPS
            if not {"step_clipped", "soft_limit", "max_total_correction"} & set(d.axis_reasons[a]):
                assert t == pytest.approx(req)
    assert actions == {"move", "hold", "refuse"}
