"""rosettasciio's standard (HyperSpy) metadata: built from a reader's result as HyperSpy builds
it, and used for the fields no vendor rule found (source ``rsciio:``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ingest._acquisition import STATE_FIELDS, NormalizedField, Quality
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import VendorMetadata
from ingest._vendors._rules import MISSING, Rule, lookup, normalize, set_path

log = logging.getLogger(__name__)

_STANDARD_NOTE = "from rosettasciio's standard metadata (HyperSpy's units)"


def _microscope_rules(base: str) -> list[Rule]:
    """HyperSpy's ``Acquisition_instrument.TEM`` / ``.SEM`` keys, in HyperSpy's units."""
    return [
        Rule("high_tension", f"{base}.beam_energy", "kV", zero_is_placeholder=True),
        Rule("beam_energy", f"{base}.beam_energy", "keV", zero_is_placeholder=True),
        Rule("magnification", f"{base}.magnification", "1", zero_is_placeholder=True),
        Rule("camera_length", f"{base}.camera_length", "mm", zero_is_placeholder=True),
        Rule("probe_current", f"{base}.beam_current", "nA", zero_is_placeholder=True),
        Rule(
            "convergence_semiangle", f"{base}.convergence_angle", "mrad", zero_is_placeholder=True
        ),
        Rule("stage_x", f"{base}.Stage.x", "mm"),
        Rule("stage_y", f"{base}.Stage.y", "mm"),
        Rule("stage_z", f"{base}.Stage.z", "mm"),
        Rule("stage_alpha", f"{base}.Stage.tilt_alpha", "deg"),
        Rule("stage_beta", f"{base}.Stage.tilt_beta", "deg"),
        Rule("dwell_time", f"{base}.dwell_time", "s", zero_is_placeholder=True),
        Rule("exposure_time", f"{base}.Detector.Camera.exposure", "s", zero_is_placeholder=True),
        Rule("acquisition_mode", f"{base}.acquisition_mode", None),
    ]


#: Fields taken from rosettasciio's standard metadata when the vendor rules found nothing
#: (formats without vendor rules here: a plain or SEM TIFF, a non-Velox EMD, an MRC, Bruker
#: BCF, Merlin MIB, EMSA/MSA).
STANDARD_RULES = [
    *_microscope_rules("Acquisition_instrument.TEM"),
    *_microscope_rules("Acquisition_instrument.SEM"),
    Rule("dwell_time", "Acquisition_instrument.dwell_time", "s", zero_is_placeholder=True),
    Rule("operator", "General.authors", None),
]
#: A stage position beyond this [m] is no stage's: HyperSpy's mm is then not the unit.
_LARGEST_STAGE_M = 0.2


def _stage_in_um(f: NormalizedField) -> NormalizedField:
    """A standard stage position too large for mm, read as µm (Bruker writes µm and
    rosettasciio passes the number on as HyperSpy's mm)."""
    value = float(f.value) * 1e-3
    return f.model_copy(
        update={
            "value": value,
            "source_unit": "um",
            "quality": Quality.UNIT_AMBIGUOUS,
            "note": f"HyperSpy's stage unit is mm, but {f.source_value} mm is beyond any stage; "
            "read as µm",
        }
    )


def fill_from_standard(meta: VendorMetadata) -> None:
    """Add the fields that only rosettasciio's standard metadata gives (source ``rsciio:``)."""
    found = normalize(meta.reader_metadata, STANDARD_RULES, STATE_FIELDS)
    for name, f in found.items():
        if name.startswith("stage_") and f.unit == "m" and abs(float(f.value)) > _LARGEST_STAGE_M:
            f = _stage_in_um(f)
        if name not in meta.state:
            note = "; ".join(filter(None, [_STANDARD_NOTE, f.note]))
            meta.state[name] = f.model_copy(update={"source": "rsciio:" + f.source, "note": note})


def standard_metadata(result: Mapping[str, Any]) -> dict[str, Any]:
    """rosettasciio's standard (HyperSpy) metadata of a result: its ``metadata`` with the
    reader's ``mapping`` applied (original key -> (standard key, conversion)), as HyperSpy
    does when it loads the file. A mapping entry whose conversion fails is left out."""
    out: dict[str, Any] = json_safe(result.get("metadata") or {})
    original = result.get("original_metadata") or {}
    for key, target in (result.get("mapping") or {}).items():
        if not target:
            continue
        destination, convert_value = target
        value = lookup(original, key)
        if value is MISSING:
            continue
        try:
            value = convert_value(value) if convert_value is not None else value
        except Exception as exc:
            log.debug("rosettasciio mapping %s -> %s failed: %s", key, destination, exc)
            continue
        set_path(out, destination, json_safe(value))
    return out
