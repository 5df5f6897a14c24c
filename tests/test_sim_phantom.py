"""Analytic phantom and exact projector: determinism, analytic integrals, shift exactness."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomolock.devices.sim.phantom import Ellipsoid, GaussianBlob, Phantom, make_phantom
from tomolock.devices.sim.projector import Projector

SHAPE = (128, 128)


def _rot(*euler_deg: float) -> tuple:
    return tuple(map(tuple, Rotation.from_euler("xyz", euler_deg, degrees=True).as_matrix()))


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(3, size_px=SHAPE)


def test_make_phantom_is_deterministic_and_seed_dependent(phantom: Phantom) -> None:
    again = make_phantom(3, size_px=SHAPE)
    other = make_phantom(4, size_px=SHAPE)
    assert again == phantom
    assert other != phantom
    a = Projector(phantom).line_integrals(33.0, (0.3, -0.7))
    b = Projector(again).line_integrals(33.0, (0.3, -0.7))
    c = Projector(other).line_integrals(33.0, (0.3, -0.7))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_phantom_has_all_kinds_of_features(phantom: Phantom) -> None:
    ells = phantom.ellipsoids
    assert sum(e.density < 0 for e in ells) == 12  # pores
    assert len({round(e.density, 9) for e in ells if e.density > 0}) > 5  # several densities
    assert {e.edge_exponent for e in ells} == {0.0, 1.0}  # hard and smooth edges
    assert len(phantom.blobs) == round(SHAPE[0] * SHAPE[1] / 300)


@pytest.mark.parametrize(
    "ell",
    [
        Ellipsoid.sphere((3.3, -2.1, 1.7), 15.0, 0.02),
        Ellipsoid((-4.0, 6.0, -3.0), (16.0, 10.0, 13.0), 0.03, _rot(20, 30, 40)),
        Ellipsoid((2.0, 1.0, 0.5), (14.0, 11.0, 17.0), 0.05, _rot(70, -10, 5), 1.0),
    ],
    ids=["sphere", "tilted-ellipsoid", "smooth-edge"],
)
@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0, 211.0])
def test_projection_integral_equals_mass(ell: Ellipsoid, angle: float) -> None:
    proj = Projector(Phantom((ell,), (64, 64)), dtype=np.float64)
    total = proj.line_integrals(angle, (0.37, -0.61)).sum()
    assert total == pytest.approx(ell.mass, rel=1.5e-3)


def test_sphere_mass_is_volume_times_density() -> None:
    sph = Ellipsoid.sphere((0, 0, 0), 7.0, 0.5)
    assert sph.mass == pytest.approx(4 / 3 * math.pi * 7.0**3 * 0.5)


@pytest.mark.parametrize(("angle", "expected_u"), [(0.0, 10.0), (90.0, 20.0), (180.0, -10.0)])
def test_blob_projects_to_the_right_place(angle: float, expected_u: float) -> None:
    blob = GaussianBlob((10.0, -20.0, 5.0), (1.5, 2.5, 1.2), 0.3)
    proj = Projector(Phantom((blob,), (64, 64)), dtype=np.float64)
    img = proj.line_integrals(angle)
    cz, cx = proj.centre_px
    rows, cols = np.indices(img.shape)
    assert img.sum() == pytest.approx(blob.mass, rel=1e-5)
    assert (img * cols).sum() / img.sum() == pytest.approx(cx + expected_u, abs=1e-4)
    assert (img * rows).sum() / img.sum() == pytest.approx(cz + 5.0, abs=1e-4)
    # Width along u: sigma_x when the beam is along y (0/180 deg), sigma_y at 90 deg.
    var_u = (img * (cols - cx - expected_u) ** 2).sum() / img.sum()
    sigma_u = 1.5 if angle != 90.0 else 2.5
    assert var_u == pytest.approx(sigma_u**2 + 1 / 12, rel=1e-3)  # + pixel box variance


def test_subpixel_shift_equals_translated_phantom(phantom: Phantom) -> None:
    angle, (dy, dx) = 37.0, (0.37, -2.61)
    t = math.radians(angle)
    moved = phantom.translated((dx * math.cos(t), -dx * math.sin(t), dy))
    shifted = Projector(phantom, dtype=np.float64).line_integrals(angle, (dy, dx))
    translated = Projector(moved, dtype=np.float64).line_integrals(angle)
    assert np.abs(shifted - translated).max() < 1e-9
    assert np.abs(shifted - Projector(phantom, dtype=np.float64).line_integrals(angle)).max() > 0.01


def test_integer_shift_moves_content_by_whole_pixels(phantom: Phantom) -> None:
    proj = Projector(phantom, dtype=np.float64)
    base = proj.line_integrals(52.0, (0.25, 0.4))
    moved = proj.line_integrals(52.0, (3.25, -4.6))  # +3 rows, -5 columns
    assert np.abs(moved[3:, :-5] - base[:-3, 5:]).max() < 1e-9


def test_supersampling_removes_subpixel_bias() -> None:
    sph = Ellipsoid((0.3, -2.1, 1.7), (6.0, 5.0, 7.0), 0.05)

    def centroid_wobble(supersample: int) -> float:
        proj = Projector(Phantom((sph,), (48, 48)), supersample=supersample, dtype=np.float64)
        errs = []
        for dx in np.linspace(0.0, 1.0, 11):
            img = proj.line_integrals(0.0, (0.0, dx))
            errs.append((img.sum(0) * np.arange(48)).sum() / img.sum() - (23.5 + 0.3 + dx))
        return float(np.ptp(errs))

    assert centroid_wobble(1) > 0.01  # point sampling aliases a hard edge
    assert centroid_wobble(4) < 0.004


def test_sample_crosses_frame_edges_at_some_angles(phantom: Phantom) -> None:
    proj = Projector(phantom)
    side_hits = []
    for angle in range(0, 180, 10):
        img = proj.line_integrals(float(angle))
        assert img[0].max() > 0 and img[-1].max() > 0  # taller than the frame
        side_hits.append(img[:, 0].max() > 0 or img[:, -1].max() > 0)
    assert any(side_hits) and not all(side_hits)


def test_transmission_is_in_the_typical_range(phantom: Phantom) -> None:
    trans = np.exp(-Projector(phantom).line_integrals(60.0))
    sample = trans[trans < 0.999]
    assert sample.size > 0.5 * trans.size
    assert 0.2 < np.median(sample) < 0.9
    assert np.percentile(sample, 2) > 0.1


def test_out_buffer_is_reused(phantom: Phantom) -> None:
    proj = Projector(phantom)
    buf = np.full(SHAPE, 7.0, dtype=np.float32)
    result = proj.line_integrals(10.0, (0.1, 0.2), out=buf)
    assert result is buf
    assert np.array_equal(buf, proj.line_integrals(10.0, (0.1, 0.2)))


def test_volume_projects_to_line_integrals() -> None:
    ph = make_phantom(8, size_px=(48, 48), n_texture=30)
    proj = Projector(ph, dtype=np.float64)
    vol = proj.volume(supersample=2)
    assert vol.shape == (48, 48, 48)
    ref = proj.line_integrals(0.0)
    assert np.abs(vol.sum(axis=1) - ref).mean() < 0.04 * ref.mean()
    # The wrong axis (x instead of y) is far off: the check can fail.
    assert np.abs(vol.sum(axis=2) - ref).mean() > 0.2 * ref.mean()


@pytest.mark.parametrize(
    ("make", "exc"),
    [
        (lambda: Ellipsoid((0, 0, 0), (1, -1, 1), 1.0), ValueError),
        (lambda: Ellipsoid((0, 0, 0), (1, 1, 1), 1.0, ((1, 0, 0), (0, 2, 0), (0, 0, 1))),
         ValueError),
        (lambda: Ellipsoid((0, 0, math.nan), (1, 1, 1), 1.0), ValueError),
        (lambda: Ellipsoid((0, 0, 0), (1, 1, 1), 1.0, edge_exponent=-1), ValueError),
        (lambda: GaussianBlob((0, 0, 0), (1, 0, 1), 1.0), ValueError),
        (lambda: Phantom(("sphere",), (64, 64)), TypeError),  # type: ignore[arg-type]
        (lambda: make_phantom(0, size_px=(4, 64)), ValueError),
        (lambda: make_phantom(0, n_pores=-1), ValueError),
        (lambda: Projector(make_phantom(0, size_px=(32, 32)), supersample=0), ValueError),
        (lambda: Projector(make_phantom(0, size_px=(32, 32)), dtype=np.int16), ValueError),
        (lambda: Projector(make_phantom(0, size_px=(32, 32)), edge_band_px=0.1), ValueError),
        (lambda: Projector(make_phantom(0, size_px=(32, 32))).line_integrals(0, (0, math.inf)),
         ValueError),
        (lambda: Projector(make_phantom(0, size_px=(32, 32))).line_integrals(math.nan),
         ValueError),
    ],
)
def test_bad_inputs_raise(make, exc) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc):
        make()


def test_wide_blob_is_not_truncated() -> None:
    blob = GaussianBlob((0.3, 0.0, -0.2), (12.0, 3.0, 11.0), 0.01)  # boxes wider than 101 px
    img = Projector(Phantom((blob,), (160, 160)), dtype=np.float64).line_integrals(0.0)
    assert img.sum() == pytest.approx(blob.mass, rel=1e-5)
