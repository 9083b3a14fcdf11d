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
    first,
    metadata_of,
    start_from_epoch,
)
from ingest._vendors._rules import MISSING, Rule, both_energies, constant, lookup, normalize
from twin import VELOX_DEFOCUS_TO_C10


def _rules(tree: Mapping[str, Any]) -> list[Rule]:
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
        Rule(
            "pixel_size",
            "ser_header_parameters.CalibrationDeltaX",
            "m",
            inferred="SER calibrations are in metres by the TIA SER format",
            zero_is_placeholder=True,
        ),
        Rule("frame_count", "ser_header_parameters.ValidNumberElements", "1"),
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


def read_tia(path: Path) -> VendorMetadata:
    from rsciio.tia import file_reader

    result = first(call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    fmt = "tia_emi" if path.suffix.lower() == ".emi" else "tia_ser"
    meta = metadata_of(fmt, "rsciio.tia", tree, result)
    meta.state = normalize(tree, _rules(tree), STATE_FIELDS)
    meta.instrument = _instrument(tree)
    note = "SER header time: seconds since the Unix epoch"
    start_from_epoch(meta, tree, "ser_header_parameters.Time", note)
    return meta
