"""Measurements of diffraction patterns: the radius of a CBED disk (the convergence semi-angle)
and the ring radii of a polycrystalline standard (the camera length), pure numpy.

* :func:`measure_disk_radius`: the central disk is the set of pixels brighter than halfway
  between the background (the median of the pattern's outer frame) and the disk's plateau (the
  median of its brightest 5 %); the radius is that of a circle of the same area, its standard
  error that of an edge located to +- half a pixel around the circumference
  (``sd = 0.5 px / sqrt(2 pi r / 1 px)``), and ``contrast`` (plateau - background) / plateau
  says how clear the disk is (near 1 for a clean disk, near 0 for none). The convergence
  semi-angle is ``radius * wavelength`` [rad].
* :func:`measure_ring_radii`: the rotational average about the central beam's centre of
  mass; its peaks (four standard errors of the bin's mean above the mean of side bands 4-7 px
  either side, located to a fraction of a pixel by a parabola through three bins); the scale
  within +-15 % that lines the strongest peaks up with the standard's reflections (the
  innermost one, 111, among them); and the least-squares scale ``s`` with
  ``radius_i ~ s / d_i`` over the matched reflections (:data:`STANDARDS`, d-spacings [Å]).
  ``s`` relative to what the file's reciprocal calibration predicts (``1``) measures the
  camera length's error.
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
    """A pattern that cannot be measured: not 2D, not finite, constant, an unknown standard,
    or a reciprocal pixel size that is not a positive number."""


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
    if not (math.isfinite(reciprocal_sampling) and reciprocal_sampling > 0):
        raise DiffractionError(
            f"the reciprocal pixel size must be finite and > 0 1/Å, not {reciprocal_sampling!r}"
        )
    array = _pattern(pattern)
    yy, xx = np.indices(array.shape)
    # the centre: the central beam's (pixels above halfway from the median to the maximum);
    # the whole pattern's centre of mass is pulled off by a background cut by the frame
    weight = array * (array >= 0.5 * (float(np.median(array)) + float(array.max())))
    total = weight.sum()
    cy, cx = (yy * weight).sum() / total, (xx * weight).sum() / total
    r = np.hypot(yy - cy, xx - cx)
    bins = np.round(r).astype(int)
    counts = np.bincount(bins.ravel())
    n = np.maximum(counts, 1)
    profile = np.bincount(bins.ravel(), array.ravel()) / n
    # standard error of each bin's mean, from the spread of its pixels
    spread = np.bincount(bins.ravel(), array.ravel() ** 2) / n - profile**2
    se = np.sqrt(np.maximum(spread, 0.0) / n)
    # radii with at least a quarter of their circle inside the pattern (not the corners)
    usable = counts >= 0.25 * 2 * np.pi * np.maximum(np.arange(len(counts)), 1)
    profile = profile[: int(np.argmin(usable[1:])) + 1] if not usable[1:].all() else profile
    # peaks above the local background, beyond the central beam, that stand four standard
    # errors out of the noise; their height in standard errors. The background at a radius is
    # the mean of two side bands 4-7 px either side: a sloping background cancels, a ring
    # (a few px wide) does not leak into it, as it does into a running median
    padded = np.pad(profile, 7, mode="edge")
    sides = [padded[7 + k : 7 + k + len(profile)] for k in (-7, -6, -5, -4, 4, 5, 6, 7)]
    excess = profile - np.mean(sides, axis=0)
    peaks, heights = [], []
    for i in range(3, len(profile) - 1):
        e0, e1, e2 = excess[i - 1], excess[i], excess[i + 1]
        if e1 > 4 * se[i] and e1 >= e0 and e1 >= e2:
            curvature = min(e0 - 2 * e1 + e2, -1e-300)
            peaks.append(i + 0.5 * (e0 - e2) / curvature)  # vertex of the parabola
            heights.append(e1 / max(se[i], 1e-300))
    position, height = np.asarray(peaks, float), np.asarray(heights, float)
    wanted_all = 1.0 / np.asarray(STANDARDS[standard]) / reciprocal_sampling
    # the scale within +-15 % that lines up the strongest peaks with the standard's rings
    # (each ring: the highest peak within 1.5 % of where the scale puts it), not each ring
    # its nearest peak, which a noise peak beside the ring can be. The first reflection is
    # the standard's innermost ring: a scale that leaves strong peaks inside it (between 0.3
    # and 0.95 of its radius) unexplained loses their heights (two outer rings whose ratio
    # resembles two inner ones' are not taken for them), and that ring, the strongest of
    # both standards (111), must be among those found.
    best_score, found, wanted = 0.0, [], []
    for trial in np.linspace(0.85, 1.15, 1201):
        predicted = trial * wanted_all
        chosen, score = [], 0.0
        for e, w in zip(predicted, wanted_all, strict=True):
            near = np.abs(position - e) < 0.015 * e
            if near.any():
                j = int(np.flatnonzero(near)[np.argmax(height[near])])
                chosen.append((float(position[j]), float(w)))
                score += float(height[j])
        inner = (position > 0.3 * predicted.min()) & (position < 0.95 * predicted.min())
        score -= float(height[inner].sum())
        if len(chosen) >= 2 and chosen[0][1] == wanted_all[0] and score > best_score:
            best_score = score
            found, wanted = [c[0] for c in chosen], [c[1] for c in chosen]
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
