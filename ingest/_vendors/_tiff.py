"""TIFF (``.tif``, ``.tiff``), among them JEOL SightX images whose ImageDescription holds the
microscope's state, read with rosettasciio's ``tiff`` reader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingest._acquisition import INSTRUMENT_FIELDS, STATE_FIELDS
from ingest._vendors._calling import call_reader
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import (
    VendorMetadata,
    first,
    metadata_of,
    parse_iso,
    pixel_size_from_axes,
    set_start,
    start_from_reader_metadata,
)
from ingest._vendors._rules import Rule, both_energies, constant, lookup, normalize
from twin import VELOX_DEFOCUS_TO_C10

_D = "ImageDescription"


def _jeol_rules(tree: Mapping[str, Any]) -> list[Rule]:
    gun = f"{_D}.ElectronGun"
    stage = f"{_D}.GonioStage.StagePosition"
    unit, evidence, conclusive = stage_unit(tree)
    deg = "JEOL writes gonio tilts in degrees (the holder's tilt limits beside them are °)"
    return [
        *both_energies(
            f"{gun}.AccelerationVoltage",
            "V",
            inferred="JEOL SightX writes the accelerating voltage in V (rosettasciio reads it so)",
            zero_is_placeholder=True,
        ),
        Rule(
            "emission_current",
            f"{gun}.EmissionCurrent",
            "uA",
            inferred="JEOL gun emission current read as µA (the unit the JEOL console shows)",
            zero_is_placeholder=True,
        ),
        Rule(
            "probe_current",
            f"{gun}.BeamCurrent",
            "pA",
            inferred="JEOL SightX BeamCurrent read as pA (rosettasciio reads it so)",
            zero_is_placeholder=True,
        ),
        Rule(
            "spot_size",
            f"{_D}.IlluminationSystem.SpotSizeString",
            "1",
            note="the spot size as displayed (SpotSize beside it is the 0-based index)",
        ),
        Rule(
            "defocus",
            f"{_D}.ImageFormingSystem.DefocusValue",
            "text",
            sign=-VELOX_DEFOCUS_TO_C10,
            note="JEOL's defocus sign is not documented; read like Thermo's (as C10)",
        ),
        *(
            Rule(
                name,
                f"{stage}.{key}",
                unit,
                inferred=None if conclusive else evidence,
                note=evidence if conclusive else None,
            )
            for name, key in (("stage_x", "MX"), ("stage_y", "MY"), ("stage_z", "MZ"))
        ),
        Rule("stage_alpha", f"{stage}.TX", "deg", inferred=deg),
        Rule("stage_beta", f"{stage}.TY", "deg", inferred=deg),
        Rule("operator", f"{_D}.Operator", None),
        Rule("acquisition_mode", f"{_D}.Eos.EosMode", None),
        Rule("acquisition_mode", f"{_D}.ImageFormingSystem.ImageFormingMode", None),
        Rule("detector", f"{_D}.ImageSourceDetector", None),
        Rule("holder", f"{_D}.GonioStage.HolderInformation.Name", None),
        *_jeol_mode_rules(tree),
        *_jeol_camera_rules(tree),
    ]


_LIMITS = {"MX": "LimitShiftX", "MY": "LimitShiftY", "MZ": "LimitShiftZ"}


def stage_unit(tree: Mapping[str, Any]) -> tuple[str, str, bool]:
    """The unit of SightX's stage positions (``MX``, ``MY``, ``MZ``), the evidence, and
    whether it is conclusive.

    The file states no unit. The holder's travel limits beside the positions
    (``HolderInformation.LimitShiftX`` ...; ±1250, ±750) are µm: a goniometer travels about a
    millimetre, not a micrometre. A position read as µm outside its limit cannot be µm; when
    every position lies inside its limit read as nm, nm it is (conclusive). When the positions
    fit the limits either way, the file does not tell: µm is kept and marked ambiguous.
    """
    positions = lookup(tree, f"{_D}.GonioStage.StagePosition")
    holder = lookup(tree, f"{_D}.GonioStage.HolderInformation")
    if not (isinstance(positions, Mapping) and isinstance(holder, Mapping)):
        return "um", "no holder limits in the file to tell µm from nm; read as µm", False
    ratios: dict[str, float] = {}
    for key, limit_key in _LIMITS.items():
        value, limits = positions.get(key), holder.get(limit_key)
        if isinstance(value, int | float) and isinstance(limits, Mapping):
            limit = max(abs(float(limits.get("Plus") or 0)), abs(float(limits.get("Minus") or 0)))
            if limit > 0:
                ratios[key] = abs(float(value)) / limit
    if not ratios:
        return "um", "no holder limits in the file to tell µm from nm; read as µm", False
    worst = max(ratios, key=ratios.__getitem__)
    if ratios[worst] > 1.0 and ratios[worst] / 1000 <= 1.0:
        return (
            "nm",
            f"read as nm: as µm, {worst} would be {ratios[worst]:.3g}x its holder limit (the "
            "limits are µm); as nm every position lies inside its limit",
            True,
        )
    if ratios[worst] > 1.0:
        return "um", f"{worst} lies outside its holder limit as µm and as nm; read as µm", False
    return (
        "um",
        "read as µm: every position lies inside its holder limit (µm) read as µm or as nm, so "
        "the file does not tell which",
        False,
    )


def _jeol_mode_rules(tree: Mapping[str, Any]) -> list[Rule]:
    """The selector value: a camera length in diffraction, a magnification in imaging."""
    forming = f"{_D}.ImageFormingSystem"
    mode = lookup(tree, f"{forming}.ModeString")
    selector_unit = lookup(tree, f"{forming}.SelectorUnitString")
    if mode == "DIFF" and isinstance(selector_unit, str):
        return [Rule("camera_length", f"{forming}.SelectorValue", selector_unit)]
    if mode in ("MAG", "LowMAG", "SAMAG", "LMAG"):
        return [Rule("magnification", f"{forming}.SelectorValue", "1", zero_is_placeholder=True)]
    return []


def _jeol_camera_rules(tree: Mapping[str, Any]) -> list[Rule]:
    if lookup(tree, f"{_D}.ImageSourceDetector") != "screenCamera":
        return []
    camera = f"{_D}.JemBaumerCamera.Parameter"
    return [
        Rule("exposure_time", f"{camera}.ExposureTimeString", "text"),
        Rule(
            "exposure_time",
            f"{camera}.ExposureTimeValue",
            "us",
            inferred="JEOL camera ExposureTimeValue read as µs",
        ),
    ]


_JEOL_INSTRUMENT = [
    Rule("vendor", f"{_D}.Manufacturer", None),
    Rule("model", f"{_D}.Instruments", None),
    Rule("detector_model", f"{_D}.JemBaumerCamera.Modelname", None),
]


def read_tiff(path: Path) -> VendorMetadata:
    from rsciio.tiff import file_reader

    result = first(call_reader(file_reader, path, lazy=True))
    return tiff_metadata(json_safe(result["original_metadata"]), result)


def tiff_metadata(tree: dict[str, Any], result: Mapping[str, Any]) -> VendorMetadata:
    """The metadata of a TIFF whose tag tree is ``tree`` (``result``: the reader's)."""
    jeol = isinstance(tree.get(_D), Mapping) and "JEOL" in str(lookup(tree, f"{_D}.Manufacturer"))
    if not jeol:
        meta = metadata_of("tiff", "rsciio.tiff", tree, result)
        meta.state.update(pixel_size_from_axes(result))
        start_from_reader_metadata(meta)
        return meta
    meta = metadata_of("jeol_sightx_tiff", "rsciio.tiff", tree, result)
    meta.state = normalize(tree, _jeol_rules(tree), STATE_FIELDS)
    meta.state.update(pixel_size_from_axes(result))
    meta.instrument = normalize(tree, _JEOL_INSTRUMENT, INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = constant("JEOL SightX", _D)
    when = lookup(tree, f"{_D}.DateTime")
    if isinstance(when, str):
        parsed = parse_iso(when)
        if parsed is not None and parsed.tzinfo is not None:
            set_start(meta, parsed, f"{_D}.DateTime", when, "ISO 8601 with offset")
    return meta
