"""FEI TIA (``.emi`` with its ``.ser``, or a ``.ser`` alone): the EMI's experimental
description and conditions and the SER header, read with rosettasciio's ``tia`` reader."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingest._acquisition import INSTRUMENT_FIELDS, STATE_FIELDS, NormalizedField, Quality
from ingest._vendors._calling import call_reader
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import (
    VendorMetadata,
    epoch_seconds,
    first,
    metadata_of,
    start_from_epoch,
)
from ingest._vendors._rules import MISSING, Rule, both_energies, constant, lookup, normalize
from twin import VELOX_DEFOCUS_TO_C10

_SER = "ser_header_parameters"


def _calibration_rule(reciprocal: bool) -> Rule:
    """The SER calibration: a pixel size [m], or in diffraction a reciprocal one [1/m]."""
    if reciprocal:
        return Rule(
            "reciprocal_pixel_size",
            f"{_SER}.CalibrationDeltaX",
            "1/m",
            inferred="SER calibrations are SI; this one is reciprocal, so 1/m (a diffraction "
            "pattern: rosettasciio's reader gives the axes in 1 / nm from the EMI's mode, or "
            "the value is far too large for a pixel size in m)",
            zero_is_placeholder=True,
        )
    return Rule(
        "pixel_size",
        f"{_SER}.CalibrationDeltaX",
        "m",
        inferred="SER calibrations are in metres by the TIA SER format",
        zero_is_placeholder=True,
    )


def _rules(tree: Mapping[str, Any], reciprocal: bool) -> list[Rule]:
    desc = "ObjectInfo.ExperimentalDescription"
    rounding = "TIA writes ExperimentalDescription numbers with 3 decimals"
    camera = lookup(tree, "ObjectInfo.AcquireInfo.CameraNamePath") is not MISSING
    return [
        *both_energies(
            "ObjectInfo.ExperimentalConditions.MicroscopeConditions.AcceleratingVoltage",
            "V",
            zero_is_placeholder=True,
        ),
        *both_energies(f"{desc}.High tension_kV", "kV", zero_is_placeholder=True),
        Rule("extraction_voltage", f"{desc}.Extraction voltage_V", "V", zero_is_placeholder=True),
        Rule("emission_current", f"{desc}.Emission_uA", "uA", zero_is_placeholder=True),
        Rule("spot_size", f"{desc}.Spot size", "1"),
        Rule("magnification", f"{desc}.Magnification_x", "1", zero_is_placeholder=True),
        Rule("camera_length", f"{desc}.Camera length_m", "m", zero_is_placeholder=True),
        Rule(
            "defocus",
            f"{desc}.Defocus_um",
            "um",
            sign=-VELOX_DEFOCUS_TO_C10,
            rounded=rounding + " (1 nm)",
            note="TIA Defocus read as C10 (Thermo UI sign); defocus = -C10",
        ),
        Rule("stage_x", f"{desc}.Stage X_um", "um", rounded=rounding + " (1 nm)"),
        Rule("stage_y", f"{desc}.Stage Y_um", "um", rounded=rounding + " (1 nm)"),
        Rule("stage_z", f"{desc}.Stage Z_um", "um", rounded=rounding + " (1 nm)"),
        Rule("stage_alpha", f"{desc}.Stage A_deg", "deg", rounded=rounding + " (0.001°)"),
        Rule("stage_beta", f"{desc}.Stage B_deg", "deg", rounded=rounding + " (0.001°)"),
        Rule(
            "exposure_time" if camera else "dwell_time",
            "ObjectInfo.AcquireInfo.DwellTimePath",
            "s",
            inferred="TIA's DwellTimePath is in seconds (the camera exposure for a camera "
            "image, the dwell time for a scan)",
            zero_is_placeholder=True,
        ),
        _calibration_rule(reciprocal),
        Rule("frame_count", f"{_SER}.ValidNumberElements", "1"),
        Rule("detector", "ObjectInfo.AcquireInfo.CameraNamePath", None),
        Rule("acquisition_mode", f"{desc}.Mode", None),
        Rule("operator", f"{desc}.User", None),
    ]


_INSTRUMENT = [
    Rule("vendor", "ObjectInfo.Manufacturer", None),
    Rule("detector_model", "ObjectInfo.AcquireInfo.CameraNamePath", None),
]


def _instrument(tree: Mapping[str, Any]) -> dict[str, NormalizedField]:
    out = normalize(tree, _INSTRUMENT, INSTRUMENT_FIELDS)
    source = "ObjectInfo.ExperimentalDescription.Microscope"
    described = lookup(tree, source)
    if isinstance(described, str):
        # "Microscope TalosF200X 200 kV D6308 XTwin": model, HT class, serial, pole piece.
        words = described.removeprefix("Microscope").split()
        serial = re.search(r"\b([A-Z]\d{4,})\b", described)
        parsed = {"model": words[0] if words else None, "serial_number": serial and serial[1]}
        for name, value in parsed.items():
            if value:
                out[name] = NormalizedField(
                    value=value,
                    unit=None,
                    source=source,
                    source_value=described,
                    quality=Quality.OK,
                    note=f"parsed from {described!r}",
                )
    out["control_software"] = constant("FEI TIA", "ObjectInfo")
    return out


def _one_element(tree: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """``tree`` with the SER header's per-element lists (a series: calibrations, times) cut
    to their first element, and the valid elements' times."""
    header = lookup(tree, _SER)
    if not isinstance(header, Mapping):
        return tree, []
    count = header.get("TotalNumberElements")
    valid = int(header.get("ValidNumberElements") or 0)
    cut = {
        key: value[0] if isinstance(value, list) and value and len(value) == count else value
        for key, value in header.items()
    }
    times = header.get("Time")
    times = times[:valid] if isinstance(times, list) else [times]
    return {**tree, _SER: cut}, [t for t in times if t is not None]


#: Largest real-space SER calibration taken as a pixel size [m]: a pixel of a millimetre at
#: the specimen is no TEM image; diffraction calibrations in 1/m are 1e6 to 1e10.
_LARGEST_PIXEL_M = 1e-3


def _reciprocal(result: Mapping[str, Any], tree: Mapping[str, Any]) -> bool:
    """Whether the SER calibration is reciprocal (a diffraction pattern): rosettasciio's axes
    are in 1/length (it knows the mode from the EMI), or, for a SER alone, the calibration is
    far too large for a pixel size in metres."""
    units = [str(a.get("units") or "") for a in result.get("axes") or [] if not a.get("navigate")]
    if any(u.startswith("1") and "/" in u for u in units):
        return True
    delta = lookup(tree, f"{_SER}.CalibrationDeltaX")
    return isinstance(delta, int | float) and abs(delta) > _LARGEST_PIXEL_M


def read_tia(path: Path) -> VendorMetadata:
    from rsciio.tia import file_reader

    result = first(call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    fmt = "tia_emi" if path.suffix.lower() == ".emi" else "tia_ser"
    meta = metadata_of(fmt, "rsciio.tia", tree, result)
    one, times = _one_element(tree)
    meta.state = normalize(one, _rules(one, _reciprocal(result, one)), STATE_FIELDS)
    meta.instrument = _instrument(tree)
    note = "SER header time: seconds since the Unix epoch"
    if start_from_epoch(meta, one, f"{_SER}.Time", note) and len(times) > 1:
        meta.end_time = epoch_seconds(times[-1])
    return meta
