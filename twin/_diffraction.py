"""Measurements of diffraction patterns: the radius of a CBED disk (the convergence semi-angle)
and the ring radii of a polycrystalline standard (the camera length), pure numpy.

* :func:`measure_disk_radius`: the central disk is the set of pixels brighter than halfway
  between the background (the median of the pattern's outer frame) and the disk's plateau (the
  median of its brightest 5 %); the radius is that of a circle of the same area, its standard
  error that of an edge located to +- half a pixel around the circumference
  (``sd = 0.5 px / sqrt(2 pi r / 1 px)``), and ``contrast`` (plateau - background) / plateau
  says how clear the disk is (near 1 for a clean disk, near 0 for none). The convergence
  semi-angle is ``radius * wavelength`` [rad].
* :func:`measure_ring_radii`: the rotational average about the pattern's centre of mass, its
  peaks, and the least-squares scale ``s`` with ``radius_i ~ s / d_i`` over the standard's
  reflections (:data:`STANDARDS`, d-spacings [Å]); ``s`` relative to what the file's reciprocal
  calibration predicts (``1``) measures the camera length's error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from twin._errors import TwinError

__all__ = [
    "STANDARDS",
    "DiffractionError",
    "DiskRadius",
    "RingRadii",
    "measure_disk_radius",
    "measure_ring_radii",
]

#: d-spacings [Å] of the strongest reflections of common calibration standards (fcc Au
#: a = 4.0782 Å: 111 200 220 311; diamond Si a = 5.431 Å: 111 220 311 400).
STANDARDS: dict[str, tuple[float, ...]] = {
    "Au": (2.3546, 2.0391, 1.4419, 1.2296),
    "Si": (3.1356, 1.9201, 1.6375, 1.3578),
}


class DiffractionError(TwinError, ValueError):
    """A pattern that cannot be measured: not 2D, not finite, constant, or an unknown
    standard."""


@dataclass(frozen=True)
class DiskRadius:
    radius: float  # [1/Å]
    radius_error: float  # [1/Å]
    contrast: float  # [1]
    pixels: float  # radius [pixels]


@dataclass(frozen=True)
class RingRadii:
    #: measured ring radii [1/Å] of the matched reflections, by the standard's order.
    radii: tuple[float, ...]
    #: scale of radius against 1/d ([1]; 1 = the file's reciprocal calibration is right).
    scale: float
    scale_error: float
    #: reflections matched, and the rms relative residual of the match.
    matched: int
    residual: float


def _pattern(pattern: ArrayLike) -> np.ndarray:
    array = np.asarray(pattern, dtype=float)
    if array.ndim != 2 or min(array.shape) < 16 or not np.all(np.isfinite(array)):
        raise DiffractionError("a diffraction pattern must be a finite 2D array, >= 16 px")
    if np.ptp(array) == 0:
        raise DiffractionError("the pattern is constant")
    return array


def measure_disk_radius(pattern: ArrayLike, reciprocal_sampling: float) -> DiskRadius:
    """Radius [1/Å] of the central CBED disk of ``pattern`` (pixel size
    ``reciprocal_sampling`` [1/Å per pixel])."""
    array = _pattern(pattern)
    frame = np.concatenate([array[:2].ravel(), array[-2:].ravel(), array[:, :2].ravel(),
                            array[:, -2:].ravel()])  # fmt: skip
    background = float(np.median(frame))
    plateau = float(np.median(array[array >= np.quantile(array, 0.95)]))
    contrast = (plateau - background) / plateau if plateau > 0 else 0.0
    inside = array > 0.5 * (background + plateau)
    r_px = math.sqrt(float(inside.sum()) / math.pi)
    sd_px = 0.5 / math.sqrt(max(2 * math.pi * r_px, 1.0))
    return DiskRadius(
        radius=r_px * reciprocal_sampling,
        radius_error=sd_px * reciprocal_sampling,
        contrast=float(np.clip(contrast, 0.0, 1.0)),
        pixels=r_px,
    )


def measure_ring_radii(pattern: ArrayLike, reciprocal_sampling: float, standard: str) -> RingRadii:
    """Ring radii of a polycrystalline ``standard`` (a key of :data:`STANDARDS`) in
    ``pattern`` and the scale of the file's reciprocal calibration they imply."""
    if standard not in STANDARDS:
        raise DiffractionError(f"unknown standard {standard!r} (known: {', '.join(STANDARDS)})")
    array = _pattern(pattern)
    total = array.sum()
    yy, xx = np.indices(array.shape)
    cy, cx = (yy * array).sum() / total, (xx * array).sum() / total
    r = np.hypot(yy - cy, xx - cx)
    bins = np.round(r).astype(int)
    profile = np.bincount(bins.ravel(), array.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
    # peaks above a smooth background (a running median), beyond the central beam
    width = 7
    padded = np.pad(profile, width, mode="edge")
    base = np.array([np.median(padded[i : i + 2 * width + 1]) for i in range(len(profile))])
    excess = profile - base
    peaks = [
        i for i in range(3, len(profile) - 1)
        if excess[i] > 0 and excess[i] >= excess[i - 1] and excess[i] >= excess[i + 1]
        and excess[i] > 3 * np.std(excess[3:])
    ]  # fmt: skip
    inverse_d = 1.0 / np.asarray(STANDARDS[standard])
    expected_px = inverse_d / reciprocal_sampling
    found, wanted = [], []
    for e in expected_px:
        near = [p for p in peaks if abs(p - e) < 0.15 * e]
        if near:
            found.append(min(near, key=lambda p: abs(p - e)))
            wanted.append(e)
    if len(found) < 2:
        raise DiffractionError(
            f"fewer than two rings of {standard} found within 15 % of where the file's "
            "calibration puts them"
        )
    f, w = np.asarray(found, float), np.asarray(wanted, float)
    scale = float((f @ w) / (w @ w))
    rel = f / (scale * w) - 1
    scale_error = float(scale * max(np.std(rel), 0.5 / f.max()) / math.sqrt(len(f)))
    return RingRadii(
        radii=tuple(float(x) for x in f * reciprocal_sampling),
        scale=scale,
        scale_error=scale_error,
        matched=len(f),
        residual=float(np.sqrt(np.mean(rel**2))),
    )
