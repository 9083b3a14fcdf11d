"""Gatan DigitalMicrograph (``.dm3``, ``.dm4``): the image's tag group, read with
rosettasciio's ``digitalmicrograph`` reader."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingest._acquisition import INSTRUMENT_FIELDS, STATE_FIELDS, NormalizedField, Quality
from ingest._vendors._calling import call_reader
from ingest._vendors._dm_times import set_dm_times
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import VendorMetadata, first, metadata_of
from ingest._vendors._rules import (
    MISSING,
    Rule,
    both_energies,
    constant,
    lookup,
    normalize,
    normalize_with_units,
)


def _tags_path(result: Mapping[str, Any]) -> str:
    """The tag group of the image the file is about (the first is often a thumbnail)."""
    for key in result.get("mapping_keys") or []:
        match = re.match(r"^(ImageList\.TagGroup\d+)\.ImageTags", key)
        if match:
            return match.group(1)
    return "ImageList.TagGroup0"


def _rules(base: str) -> list[Rule]:
    tags = base + ".ImageTags"
    info = tags + ".Microscope Info"
    stage = info + ".Stage Position"
    um = "DigitalMicrograph writes the stage position in µm (rosettasciio reads it so)"
    deg = "DigitalMicrograph writes stage tilts in degrees"
    dim = base + ".ImageData.Calibrations.Dimension.TagGroup0"
    return [
        *both_energies(
            info + ".Voltage",
            "V",
            inferred="DigitalMicrograph writes Microscope Info.Voltage in V",
            confirm=info + ".Formatted Voltage",
            zero_is_placeholder=True,
        ),
        Rule(
            "magnification",
            info + ".Indicated Magnification",
            "1",
            zero_is_placeholder=True,
        ),
        Rule(
            "camera_length",
            info + ".STEM Camera Length",
            "mm",
            inferred="DigitalMicrograph writes the STEM Camera Length in mm (rosettasciio "
            "reads it as mm)",
            zero_is_placeholder=True,
        ),
        Rule("probe_current", info + ".Probe Current (nA)", "nA", zero_is_placeholder=True),
        Rule("emission_current", info + ".Emission Current (µA)", "uA", zero_is_placeholder=True),
        Rule("spherical_aberration", info + ".Cs(mm)", "mm", zero_is_placeholder=True),
        Rule("stage_x", stage + ".Stage X", "um", inferred=um),
        Rule("stage_y", stage + ".Stage Y", "um", inferred=um),
        Rule("stage_z", stage + ".Stage Z", "um", inferred=um),
        Rule("stage_alpha", stage + ".Stage Alpha", "deg", inferred=deg),
        Rule("stage_beta", stage + ".Stage Beta", "deg", inferred=deg),
        Rule(
            "dwell_time",
            tags + ".DigiScan.Sample Time",
            "us",
            inferred="DigiScan's Sample Time is the dwell time in µs (rosettasciio reads it so)",
            zero_is_placeholder=True,
        ),
        Rule(
            "exposure_time",
            tags + ".Acquisition.Parameters.High Level.Exposure (s)",
            "s",
            zero_is_placeholder=True,
        ),
        Rule(
            "dwell_time",
            tags + ".SI.Acquisition.Pixel time (s)",
            "s",
            note="a spectrum image's per-pixel time is its dwell time",
            zero_is_placeholder=True,
        ),
        Rule("pixel_size", dim + ".Scale", "text", zero_is_placeholder=True),
        # A diffraction calibration (1/nm) is reciprocal, never a pixel size.
        Rule("reciprocal_pixel_size", dim + ".Scale", "text", zero_is_placeholder=True),
        Rule("acquisition_mode", info + ".Illumination Mode", None),
        Rule("acquisition_mode", info + ".Operation Mode", None),
        Rule("detector", tags + ".Acquisition.Device.Name", None),
        Rule("detector", tags + ".DataBar.Device Name", None),
        Rule("operator", tags + ".Session Info.Operator", None),
    ]


def _instrument_rules(base: str) -> list[Rule]:
    tags = base + ".ImageTags"
    return [
        Rule(
            "model",
            tags + ".Session Info.Microscope",
            None,
            note="as entered in DigitalMicrograph's session info",
        ),
        Rule(
            "model",
            tags + ".Microscope Info.Name",
            None,
            note="name of DigitalMicrograph's microscope interface",
        ),
        Rule("control_software_version", tags + ".GMS Version.Saved", None),
        Rule("detector_model", tags + ".Acquisition.Device.Name", None),
    ]


def read_dm(path: Path) -> VendorMetadata:
    from rsciio.digitalmicrograph import file_reader

    result = first(call_reader(file_reader, path, lazy=True))
    return dm_metadata(json_safe(result["original_metadata"]), result)


def dm_metadata(tree: dict[str, Any], result: Mapping[str, Any]) -> VendorMetadata:
    """The metadata of a DM file whose tag tree is ``tree`` (``result``: the reader's)."""
    base = _tags_path(result)
    # The pixel size's unit sits next to its scale.
    dim = base + ".ImageData.Calibrations.Dimension.TagGroup0"
    scale_unit = lookup(tree, dim + ".Units")
    units = {dim + ".Scale": scale_unit} if isinstance(scale_unit, str) else {}
    meta = metadata_of("gatan_dm", "rsciio.digitalmicrograph", tree, result)
    meta.state = normalize_with_units(tree, _rules(base), STATE_FIELDS, units)
    diffraction = _diffraction_mode(tree, base + ".ImageTags.Microscope Info")
    if diffraction is not None:
        meta.state["acquisition_mode"] = diffraction
        meta.state.pop("magnification", None)
    meta.instrument = normalize(tree, _instrument_rules(base), INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = constant("Gatan DigitalMicrograph", base)
    set_dm_times(meta, tree, base + ".ImageTags")
    return meta


def _diffraction_mode(tree: Mapping[str, Any], info: str) -> NormalizedField | None:
    """``DIFFRACTION`` when the microscope was in (TEM) diffraction mode.

    ``Operation Mode`` is ``IMAGING`` (TEM), ``SCANNING`` (STEM) or ``DIFFRACTION``; ``Imaging
    Mode`` is the projector's mode. In STEM the projector is always in diffraction (the
    detector sees the diffraction plane) and the scan magnification is real, so only a
    non-scanning acquisition with either mode ``DIFFRACTION`` is a diffraction pattern.
    """
    modes = {key: lookup(tree, f"{info}.{key}") for key in _MODE_KEYS}
    text = {key: str(v).upper() for key, v in modes.items() if v is not MISSING}
    scanning = text.get("Operation Mode") == "SCANNING" or "STEM" in text.get(
        "Illumination Mode", ""
    )
    said = [key for key in ("Operation Mode", "Imaging Mode") if text.get(key) == "DIFFRACTION"]
    if scanning or not said:
        return None
    return NormalizedField(
        value="DIFFRACTION",
        unit=None,
        source=f"{info}.{said[0]}",
        source_value=modes[said[0]],
        quality=Quality.OK,
        note="diffraction mode ("
        + ", ".join(f"{k} = {v!r}" for k, v in modes.items() if v is not MISSING)
        + "): the camera length applies; the indicated magnification is not the "
        "specimen's and is left out (it stays in original_metadata)",
    )


_MODE_KEYS = ("Operation Mode", "Imaging Mode", "Illumination Mode")
