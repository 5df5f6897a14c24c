"""Analytic 3-D phantom of a nano-CT sample, built from ellipsoids and Gaussian blobs.

Every primitive has a closed-form parallel-beam projection, so projections are exact at any
angle and any subpixel shift (see :mod:`tomolock.devices.sim.projector`).

Coordinates are in detector pixels, in the *sample* frame: ``x`` and ``y`` horizontal, ``z``
vertical, origin on the rotation axis at the detector centre. At rotation angle 0 the sample
frame coincides with the lab frame (``x`` along detector columns, ``y`` along the beam, ``z``
along detector rows). Densities are linear attenuation coefficients per pixel, so a line
integral is dimensionless and transmission is ``exp(-line_integral)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

Vec3 = tuple[float, float, float]
Mat3 = tuple[Vec3, Vec3, Vec3]

_IDENTITY: Mat3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _vec3(value: object, name: str) -> Vec3:
    arr = np.asarray(value, dtype=float)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with a hard or smooth edge.

    The density inside is ``density * (1 - r**2) ** edge_exponent`` where ``r`` is the
    ellipsoidal radius (``r = 1`` on the surface). ``edge_exponent = 0`` is a hard-edged
    ellipsoid of uniform density; larger values give a smooth dome-shaped edge. This family
    keeps the projection analytic: the chord integral is proportional to
    ``(1 - q) ** (edge_exponent + 1/2)`` with ``q`` the projected ellipse's quadratic form.

    Parameters
    ----------
    centre : tuple of float
        Centre ``(x, y, z)`` in pixels, sample frame.
    semi_axes : tuple of float
        Semi-axes ``(a, b, c)`` in pixels along the body axes, all > 0.
    density : float
        Attenuation per pixel at the centre; negative for pores (voids in a host).
    rotation : 3x3 tuple of float
        Orthonormal matrix whose columns are the body axes in the sample frame.
    edge_exponent : float
        ``>= 0``; 0 means a hard edge.
    """

    centre: Vec3
    semi_axes: Vec3
    density: float
    rotation: Mat3 = _IDENTITY
    edge_exponent: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre", _vec3(self.centre, "centre"))
        axes = _vec3(self.semi_axes, "semi_axes")
        if min(axes) <= 0:
            raise ValueError(f"semi_axes must be > 0, got {axes}")
        object.__setattr__(self, "semi_axes", axes)
        rot = np.asarray(self.rotation, dtype=float)
        if rot.shape != (3, 3) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-9):
            raise ValueError("rotation must be an orthonormal 3x3 matrix")
        object.__setattr__(self, "rotation", tuple(tuple(float(v) for v in row) for row in rot))
        if not math.isfinite(self.density):
            raise ValueError(f"density must be finite, got {self.density}")
        if not (math.isfinite(self.edge_exponent) and self.edge_exponent >= 0):
            raise ValueError(f"edge_exponent must be >= 0, got {self.edge_exponent}")

    @classmethod
    def sphere(
        cls, centre: Vec3, radius: float, density: float, *, edge_exponent: float = 0.0
    ) -> Ellipsoid:
        """Make a sphere of the given ``radius`` (pixels)."""
        return cls(centre, (radius, radius, radius), density, edge_exponent=edge_exponent)

    @property
    def shape_matrix(self) -> np.ndarray:
        """Symmetric matrix ``A`` with ``(p - c)^T A (p - c) <= 1`` inside (sample frame)."""
        rot = np.asarray(self.rotation)
        return rot @ np.diag(1.0 / np.square(self.semi_axes)) @ rot.T

    @property
    def profile_integral(self) -> float:
        """``c_k`` in the chord integral ``c_k (1-q)^(k+1/2) / sqrt(A_yy)`` (2 for hard edges)."""
        k = self.edge_exponent
        return math.sqrt(math.pi) * math.gamma(k + 1.0) / math.gamma(k + 1.5)

    @property
    def mass(self) -> float:
        """Volume integral of the density (pixels^3 x attenuation per pixel)."""
        k = self.edge_exponent
        radial = math.pi**1.5 * math.gamma(k + 1.0) / math.gamma(k + 2.5)
        return self.density * radial * float(np.prod(self.semi_axes))


@dataclass(frozen=True)
class GaussianBlob:
    """Axis-aligned 3-D Gaussian density ``density * exp(-sum(((p - c) / sigma)**2) / 2)``.

    Axis-aligned in the sample frame, so for rotation about ``z`` its projection stays a
    separable 2-D Gaussian and can be integrated exactly over each pixel with ``erf``.

    Parameters
    ----------
    centre : tuple of float
        Centre ``(x, y, z)`` in pixels, sample frame.
    sigma : tuple of float
        Standard deviations ``(sx, sy, sz)`` in pixels, all > 0.
    density : float
        Peak attenuation per pixel.
    """

    centre: Vec3
    sigma: Vec3
    density: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre", _vec3(self.centre, "centre"))
        sig = _vec3(self.sigma, "sigma")
        if min(sig) <= 0:
            raise ValueError(f"sigma must be > 0, got {sig}")
        object.__setattr__(self, "sigma", sig)
        if not math.isfinite(self.density):
            raise ValueError(f"density must be finite, got {self.density}")

    @property
    def mass(self) -> float:
        """Volume integral of the density."""
        return self.density * (2.0 * math.pi) ** 1.5 * float(np.prod(self.sigma))


Primitive = Ellipsoid | GaussianBlob


@dataclass(frozen=True)
class Phantom:
    """A sample as a sum of analytic primitives.

    Parameters
    ----------
    primitives : tuple of Ellipsoid or GaussianBlob
        Densities add where primitives overlap (pores carry negative density).
    size_px : tuple of int
        ``(rows, cols)`` of the detector frame the phantom was designed for.
    seed : int, optional
        Seed it was made with (informational; not part of equality).
    """

    primitives: tuple[Primitive, ...]
    size_px: tuple[int, int] = (512, 512)
    seed: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        prims = tuple(self.primitives)
        for p in prims:
            if not isinstance(p, Ellipsoid | GaussianBlob):
                raise TypeError(f"primitives must be Ellipsoid or GaussianBlob, got {type(p)}")
        object.__setattr__(self, "primitives", prims)
        object.__setattr__(self, "size_px", _check_shape(self.size_px, "size_px"))

    @property
    def ellipsoids(self) -> tuple[Ellipsoid, ...]:
        """The ellipsoids, in order."""
        return tuple(p for p in self.primitives if isinstance(p, Ellipsoid))

    @property
    def blobs(self) -> tuple[GaussianBlob, ...]:
        """The Gaussian blobs, in order."""
        return tuple(p for p in self.primitives if isinstance(p, GaussianBlob))

    @property
    def mass(self) -> float:
        """Total volume integral of the density."""
        return float(sum(p.mass for p in self.primitives))

    def translated(self, offset: Vec3) -> Phantom:
        """Return a copy moved by ``offset = (x, y, z)`` pixels in the sample frame."""
        off = np.asarray(_vec3(offset, "offset"))
        moved: list[Primitive] = []
        for p in self.primitives:
            centre = tuple(float(v) for v in np.asarray(p.centre) + off)
            if isinstance(p, Ellipsoid):
                moved.append(Ellipsoid(centre, p.semi_axes, p.density, p.rotation,
                                       p.edge_exponent))
            else:
                moved.append(GaussianBlob(centre, p.sigma, p.density))
        return Phantom(tuple(moved), self.size_px, self.seed)


def _check_shape(shape: object, name: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in shape)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (rows, cols), got {shape!r}") from None
    if rows < 8 or cols < 8:
        raise ValueError(f"{name} must be at least 8 x 8 pixels, got {(rows, cols)}")
    return rows, cols


def _inside_host(
    rng: np.random.Generator, host: Ellipsoid, n: int, max_radius: float
) -> np.ndarray:
    """Draw ``n`` points uniformly inside ``host`` scaled to ellipsoidal radius ``max_radius``."""
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = max_radius * rng.random(n) ** (1.0 / 3.0)
    body = direction * radius[:, None] * np.asarray(host.semi_axes)
    return body @ np.asarray(host.rotation).T + np.asarray(host.centre)


def make_phantom(
    seed: int,
    *,
    size_px: tuple[int, int] = (512, 512),
    n_particles: int = 24,
    n_pores: int = 12,
    n_texture: int | None = None,
    host_attenuation: float = 1.3,
    particle_attenuation: tuple[float, float] = (0.1, 0.6),
    texture_contrast: tuple[float, float] = (0.03, 0.10),
    texture_sigma_px: tuple[float, float] = (0.6, 2.0),
) -> Phantom:
    """Make a seeded phantom of a nano-CT sample.

    A host particle (one large ellipsoid, tilted about the vertical axis and off the rotation
    axis) holds dense internal particles of several densities, hard or smooth edged, randomly
    oriented; spherical pores (voids, negative density, mutually non-overlapping); and fine
    texture of many small Gaussian blobs. The host extends beyond the top and bottom of the
    frame at every angle and beyond the left and right edges at some angles (local
    tomography), and is fully inside horizontally at others.

    Parameters
    ----------
    seed : int
        Random seed; the same seed and arguments give an identical phantom.
    size_px : tuple of int
        ``(rows, cols)`` of the detector frame.
    n_particles, n_pores : int
        Number of internal particles and of pores.
    n_texture : int, optional
        Number of texture blobs; default scales with the frame area (1 per 300 px^2).
    host_attenuation : float
        Line integral through the host along its longest horizontal axis (its thickest
        view); the thinnest view has about 0.6 of it.
    particle_attenuation : tuple of float
        Range of the extra line integral through a particle's centre.
    texture_contrast : tuple of float
        Range of a texture blob's peak line integral (about its relative contrast).
    texture_sigma_px : tuple of float
        Range of the blob standard deviations in pixels.

    Returns
    -------
    Phantom
        With transmission mostly between about 20 % and 90 %.
    """
    rows, cols = _check_shape(size_px, "size_px")
    for name, value in (("n_particles", n_particles), ("n_pores", n_pores)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n_texture is None:
        n_texture = round(rows * cols / 300)
    if int(n_texture) != n_texture or n_texture < 0:
        raise ValueError(f"n_texture must be a non-negative integer, got {n_texture!r}")
    if not host_attenuation > 0:
        raise ValueError(f"host_attenuation must be > 0, got {host_attenuation}")
    for name, (lo, hi) in (("particle_attenuation", particle_attenuation),
                           ("texture_contrast", texture_contrast),
                           ("texture_sigma_px", texture_sigma_px)):
        if not 0 < lo <= hi:
            raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")

    rng = np.random.default_rng(seed)
    # Host: long axis 0.6 cols (crosses the side edges when seen side-on), short axis 0.36
    # cols plus an offset under 0.05 cols (fully inside when seen end-on), height beyond
    # the frame so the top and bottom edges are always crossed.
    offset = rng.uniform(-0.04, 0.04, 2) * cols
    host_axes = (0.6 * cols, 0.36 * cols, 0.75 * rows)
    host_rot = Rotation.from_euler("z", rng.uniform(0, 180), degrees=True).as_matrix()
    host_density = host_attenuation / (2 * host_axes[0])
    host = Ellipsoid((offset[0], offset[1], 0.0), host_axes, host_density, host_rot)
    primitives: list[Primitive] = [host]

    scale = min(rows, cols)
    centres = _inside_host(rng, host, int(n_particles), 0.7)
    for centre in centres:
        radius = rng.uniform(0.02, 0.07) * scale
        axes = radius * rng.uniform(0.7, 1.3, 3)
        extra = rng.uniform(*particle_attenuation)
        k = float(rng.choice([0.0, 0.0, 1.0]))  # mostly hard-edged, some diffuse
        rot = Rotation.random(random_state=rng).as_matrix()
        # Set density so the peak line integral through the centre is about ``extra``.
        density = extra / (2 * radius) * 2.0 / Ellipsoid((0, 0, 0), (1, 1, 1), 1.0,
                                                         edge_exponent=k).profile_integral
        primitives.append(Ellipsoid(tuple(centre), tuple(axes), density, rot, k))

    pores: list[tuple[np.ndarray, float]] = []
    attempts = 0
    while len(pores) < n_pores:
        attempts += 1
        if attempts > 100 * (n_pores + 1):
            raise ValueError(f"could not place {n_pores} non-overlapping pores; use fewer")
        centre = _inside_host(rng, host, 1, 0.75)[0]
        radius = rng.uniform(0.01, 0.04) * scale
        # Overlapping pores would carve negative total density: keep them apart.
        if all(np.linalg.norm(centre - c) > radius + r + 1 for c, r in pores):
            pores.append((centre, radius))
    primitives += [Ellipsoid.sphere(tuple(c), r, -host_density) for c, r in pores]

    blob_centres = _inside_host(rng, host, int(n_texture), 0.95)
    sig = rng.uniform(*texture_sigma_px, (int(n_texture), 3))
    contrast = rng.uniform(*texture_contrast, int(n_texture))
    # Peak line integral of a blob seen along y is density * sqrt(2 pi) * sigma_y.
    dens = contrast / (math.sqrt(2 * math.pi) * sig[:, 1])
    primitives += [GaussianBlob(tuple(c), tuple(s), float(d))
                   for c, s, d in zip(blob_centres, sig, dens, strict=True)]
    return Phantom(tuple(primitives), (rows, cols), seed)
