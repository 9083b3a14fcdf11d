"""Thermo Fisher Velox EMD (``.emd``, HDF5) with its ``Optics``, ``Stage``, ``Scan``,
``Detectors`` and ``Instrument`` groups, read with rosettasciio's ``emd`` reader; other EMD
files keep rosettasciio's standard metadata only."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from ingest._acquisition import INSTRUMENT_FIELDS, STATE_FIELDS, NormalizedField, Quality
from ingest._vendors._calling import call_reader
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import (
    VendorMetadata,
    first,
    metadata_of,
    start_from_epoch,
    start_from_reader_metadata,
)
from ingest._vendors._rules import (
    MISSING,
    Rule,
    both_energies,
    constant,
    lookup,
    normalize,
    normalize_with_units,
)
from twin import VELOX_DEFOCUS_TO_C10


def _detector_path(tree: Mapping[str, Any]) -> str | None:
    """The ``Detectors`` entry of the detector that recorded the data."""
    detector = lookup(tree, "BinaryResult.Detector")
    found = None
    detectors = lookup(tree, "Detectors")
    if isinstance(detectors, Mapping):
        for key, det in detectors.items():
            if isinstance(det, Mapping) and det.get("DetectorName") == detector:
                found = f"Detectors.{key}"
    return found


_RULES = [
    *both_energies("Optics.AccelerationVoltage", "V", zero_is_placeholder=True),
    Rule("extraction_voltage", "Optics.ExtractorVoltage", "V", zero_is_placeholder=True),
    Rule("spot_size", "Optics.SpotIndex", "1"),
    Rule(
        "convergence_semiangle",
        "Optics.BeamConvergence",
        "rad",
        zero_is_placeholder=True,
        note="read as the semi-angle (an assumption, see docs/optics.md)",
    ),
    Rule("magnification", "Optics.NominalMagnification", "1", zero_is_placeholder=True),
    Rule("camera_length", "Optics.CameraLength", "m", zero_is_placeholder=True),
    Rule(
        "defocus",
        "Optics.Defocus",
        "m",
        sign=-VELOX_DEFOCUS_TO_C10,
        note="Velox Defocus read as C10 (Thermo UI sign, negative = underfocus); defocus = -C10",
    ),
    Rule("screen_current", "Optics.ScreenCurrent", "A", zero_is_placeholder=True),
    Rule("probe_current", "Optics.ProbeCurrent", "A", zero_is_placeholder=True),
    Rule("stage_x", "Stage.Position.x", "m"),
    Rule("stage_y", "Stage.Position.y", "m"),
    Rule("stage_z", "Stage.Position.z", "m"),
    Rule("stage_alpha", "Stage.AlphaTilt", "rad"),
    Rule("stage_beta", "Stage.BetaTilt", "rad"),
    Rule("holder", "Stage.HolderType", None),
    Rule("dwell_time", "Scan.DwellTime", "s", zero_is_placeholder=True),
    Rule("detector", "BinaryResult.Detector", None),
    Rule(
        "acquisition_mode",
        "Optics.OperatingMode",
        None,
        text_map={"1": "TEM", "2": "STEM"},
        note="Velox OperatingMode 1 = TEM, 2 = STEM",
    ),
]

_INSTRUMENT = [
    Rule("vendor", "Instrument.Manufacturer", None),
    Rule("model", "Instrument.InstrumentModel", None),
    Rule("serial_number", "Instrument.InstrumentId", None),
    Rule("control_software_version", "Instrument.ControlSoftwareVersion", None),
    Rule("computer_name", "Instrument.ComputerName", None),
    Rule("detector_model", "BinaryResult.Detector", None),
]

_PIXEL_WIDTH = "BinaryResult.PixelSize.width"


def _rules(tree: Mapping[str, Any]) -> list[Rule]:
    rules = list(_RULES)
    detector = _detector_path(tree)
    if detector:
        rules.append(
            Rule("exposure_time", detector + ".ExposureTime", "s", zero_is_placeholder=True)
        )
    if lookup(tree, "BinaryResult.PixelUnitX") is not MISSING:
        rules.append(Rule("pixel_size", _PIXEL_WIDTH, "text"))
        rules.append(Rule("reciprocal_pixel_size", _PIXEL_WIDTH, "text"))
    return rules


def read_emd(path: Path) -> VendorMetadata:
    from rsciio.emd import file_reader

    result = first(call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    if lookup(tree, "Optics") is MISSING and lookup(tree, "Instrument") is MISSING:
        meta = metadata_of("emd", "rsciio.emd", tree, result)
        start_from_reader_metadata(meta)
        return meta
    meta = metadata_of("velox_emd", "rsciio.emd", tree, result)
    pixel_unit = lookup(tree, "BinaryResult.PixelUnitX")
    units = {_PIXEL_WIDTH: str(pixel_unit)} if pixel_unit is not MISSING else {}
    meta.state = normalize_with_units(tree, _rules(tree), STATE_FIELDS, units)
    frames = _navigation_time_axis(result)
    if frames is not None:
        meta.state["frame_count"] = frames[0]
    meta.instrument = normalize(tree, _INSTRUMENT, INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = constant("Thermo Fisher Velox", "Instrument")
    start = "Acquisition.AcquisitionStartDatetime.DateTime"
    if start_from_epoch(meta, tree, start, "seconds since the Unix epoch") and frames:
        assert meta.start_time is not None
        meta.end_time = meta.start_time + timedelta(seconds=frames[1])
    return meta


def _navigation_time_axis(result: Mapping[str, Any]) -> tuple[NormalizedField, float] | None:
    """Frames of a stack with a time axis, and their total duration [s]."""
    for i, axis in enumerate(result.get("axes") or []):
        if axis.get("navigate") and str(axis.get("units")) == "s":
            size = int(axis["size"])
            count = NormalizedField(
                value=float(size),
                unit="1",
                source=f"rsciio:axes[{i}].size",
                source_value=size,
                source_unit="1",
                quality=Quality.OK,
                note=f"frames along the reader's time axis {axis.get('name')!r}",
            )
            return count, size * float(axis["scale"])
    return None
