"""Image measurements where the file is read: the twin measures what the data itself shows.

* an HRTEM image (TEM mode, a real-space pixel size): defocus from its Thon rings
  (:func:`twin.fit_thon_rings`), the central 1024^2 pixels at most (a crop keeps the high
  frequencies that carry the rings); the file's Cs when it states one, else 1.2 mm (noted);
* a CBED pattern (``cbed=True``, or a diffraction frame of a STEM/convergent-beam mode):
  the convergence semi-angle from the central disk's radius (:func:`twin.measure_disk_radius`);
* a diffraction pattern of a declared ``standard`` (Au, Si): the scale of the file's
  reciprocal calibration from the rings (:func:`twin.measure_ring_radii`).

Large frames are binned to at most 1024 pixels a side for diffraction, so a measurement costs
seconds at most. Anything else is recorded as ``skipped`` with the reason.
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from pathlib import Path

import numpy as np

from ingest._acquisition import (
    IMAGE_MEASUREMENT_VERSION,
    ImageMeasurement,
    ImageMeasurements,
    NormalizedField,
)
from ingest._vendors._dispatch import _plain_file
from twin import (
    DiffractionError,
    ThonFitError,
    energy2wavelength,
    fit_thon_rings,
    measure_disk_radius,
    measure_ring_radii,
)

_MAX_SIDE = 1024
_ASSUMED_CS_M = 1.2e-3
_RSCIIO = {
    ".dm3": "rsciio.digitalmicrograph",
    ".dm4": "rsciio.digitalmicrograph",
    ".emd": "rsciio.emd",
    ".emi": "rsciio.tia",
    ".ser": "rsciio.tia",
    ".tif": "rsciio.tiff",
    ".tiff": "rsciio.tiff",
    ".mrc": "rsciio.mrc",
}


def _first_frame(path: Path) -> np.ndarray | None:
    with _plain_file(path) as plain:
        return _first_frame_of(plain)


def _first_frame_of(path: Path) -> np.ndarray | None:
    module = _RSCIIO.get(path.suffix.lower())
    if module is None:
        return None
    reader = importlib.import_module(module).file_reader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            results = reader(str(path), lazy=True)
        except Exception:
            return None
        for result in results:
            data = result.get("data")
            if data is None or getattr(data, "ndim", 0) < 2:
                continue
            frame = data[(0,) * (data.ndim - 2)]
            h, w = frame.shape
            top, left = max(0, (h - _MAX_SIDE) // 2), max(0, (w - _MAX_SIDE) // 2)
            crop = frame[top : top + _MAX_SIDE, left : left + _MAX_SIDE]
            return np.asarray(crop.compute() if hasattr(crop, "compute") else crop, float)
    return None


def _value(state: dict[str, NormalizedField], name: str) -> float | None:
    field = state.get(name)
    if field is None or field.quality.value in ("placeholder", "disconnected_default"):
        return None
    return float(field.value) if isinstance(field.value, int | float) else None


def _thon(image: np.ndarray, state: dict[str, NormalizedField]) -> ImageMeasurement:
    energy = _value(state, "beam_energy") or (_value(state, "high_tension") or math.nan)
    pixel = _value(state, "pixel_size")
    if pixel is None or not math.isfinite(energy):
        raise ThonFitError("no pixel size or beam energy in the file")
    cs = _value(state, "spherical_aberration")
    note = None if cs else f"Cs assumed {_ASSUMED_CS_M * 1e3:g} mm (the file states none)"
    tile = 256 if min(image.shape) >= 512 else 128
    fit = fit_thon_rings(
        image, sampling=pixel * 1e10, energy=energy, Cs=(cs or _ASSUMED_CS_M) * 1e10,
        tile_size=tile,
    )  # fmt: skip
    return ImageMeasurement(
        quantity="defocus",
        value=fit.defocus * 1e-10,
        unit="m",
        sd=fit.defocus_error * 1e-10,
        quality=float(np.clip(fit.cross_correlation, -1, 1)),
        method=f"twin.fit_thon_rings tile {tile}",
        note=note if not fit.sign_ambiguous else f"{note or ''} sign ambiguous".strip(),
    )


def _binned(image: np.ndarray) -> tuple[np.ndarray, int]:
    factor = max(1, math.ceil(max(image.shape) / _MAX_SIDE))
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean((1, 3)), factor


def measure_image(
    path: Path,
    state: dict[str, NormalizedField],
    *,
    standard: str | None = None,
    cbed: bool = False,
    image: np.ndarray | None = None,
) -> ImageMeasurements:
    """The image measurements of the data file at ``path`` (see the module docstring), or of
    ``image`` (its first frame, when the caller has read it already)."""

    def skipped(reason: str, shape: list[int] | None = None) -> ImageMeasurements:
        return ImageMeasurements(version=IMAGE_MEASUREMENT_VERSION, skipped=reason,
                                 image_shape=shape)  # fmt: skip

    mode = str(state["acquisition_mode"].value).lower() if "acquisition_mode" in state else ""
    image = _first_frame(path) if image is None else np.asarray(image, dtype=float)
    if image is None:
        return skipped("no 2D image in the file (or not a format with images)")
    if max(image.shape) > _MAX_SIDE:  # the central crop, as for frames read from files
        top, left = (max(0, (n - _MAX_SIDE) // 2) for n in image.shape)
        image = image[top : top + _MAX_SIDE, left : left + _MAX_SIDE]
    shape = list(image.shape)
    stem = re.search(r"\b(stem|cbed)\b", mode) is not None  # not JEOL's "eosTEM"
    diffraction = "diffraction" in mode or "reciprocal_pixel_size" in state
    try:
        if diffraction or cbed or standard:
            q = _value(state, "reciprocal_pixel_size")
            if q is None:
                return skipped("a diffraction pattern without a reciprocal calibration", shape)
            binned, factor = _binned(image)
            sampling = q * factor * 1e-10  # [1/Å per pixel]
            if standard:
                rings = measure_ring_radii(binned, sampling, standard)
                item = ImageMeasurement(
                    quantity="camera_length_scale", value=rings.scale, unit="1",
                    sd=rings.scale_error, quality=1 - rings.residual,
                    method=f"twin.measure_ring_radii {standard}, {rings.matched} rings",
                )  # fmt: skip
            elif cbed or stem:
                energy = _value(state, "beam_energy") or _value(state, "high_tension")
                if energy is None:
                    return skipped("CBED pattern without a beam energy", shape)
                disk = measure_disk_radius(binned, sampling)
                wavelength = energy2wavelength(energy)
                item = ImageMeasurement(
                    quantity="convergence_semiangle", value=disk.radius * wavelength,
                    unit="rad", sd=disk.radius_error * wavelength, quality=disk.contrast,
                    method="twin.measure_disk_radius",
                )  # fmt: skip
            else:
                return skipped("a diffraction pattern of no declared standard and not CBED", shape)
        elif stem:
            return skipped("a STEM image: no Thon rings (HRTEM only)", shape)
        elif min(image.shape) < 256:
            return skipped(f"image {shape} too small for a Thon-ring fit (>= 256 px)", shape)
        else:
            item = _thon(image, state)
    except (ThonFitError, DiffractionError) as exc:
        return skipped(f"measurement failed: {exc}", shape)
    return ImageMeasurements(
        version=IMAGE_MEASUREMENT_VERSION, measurements=[item], image_shape=shape
    )
