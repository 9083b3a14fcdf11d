"""rosettasciio's standard (HyperSpy) metadata: built from a reader's result as HyperSpy builds
it, and used for the fields no vendor rule found (source ``rsciio:``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ingest._acquisition import STATE_FIELDS
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import VendorMetadata
from ingest._vendors._rules import MISSING, Rule, lookup, normalize, set_path

log = logging.getLogger(__name__)

_TEM = "Acquisition_instrument.TEM"
_STANDARD_NOTE = "from rosettasciio's standard metadata (HyperSpy's units)"
#: Fields taken from rosettasciio's standard metadata when the vendor rules found nothing
#: (formats without vendor rules here: a plain TIFF, a non-Velox EMD, an MRC).
STANDARD_RULES = [
    Rule("high_tension", f"{_TEM}.beam_energy", "kV", zero_is_placeholder=True),
    Rule("beam_energy", f"{_TEM}.beam_energy", "keV", zero_is_placeholder=True),
    Rule("magnification", f"{_TEM}.magnification", "1", zero_is_placeholder=True),
    Rule("camera_length", f"{_TEM}.camera_length", "mm", zero_is_placeholder=True),
    Rule("probe_current", f"{_TEM}.beam_current", "nA", zero_is_placeholder=True),
    Rule("convergence_semiangle", f"{_TEM}.convergence_angle", "mrad", zero_is_placeholder=True),
    Rule("stage_x", f"{_TEM}.Stage.x", "mm"),
    Rule("stage_y", f"{_TEM}.Stage.y", "mm"),
    Rule("stage_z", f"{_TEM}.Stage.z", "mm"),
    Rule("stage_alpha", f"{_TEM}.Stage.tilt_alpha", "deg"),
    Rule("stage_beta", f"{_TEM}.Stage.tilt_beta", "deg"),
    Rule("dwell_time", f"{_TEM}.dwell_time", "s", zero_is_placeholder=True),
    Rule("exposure_time", f"{_TEM}.Detector.Camera.exposure", "s", zero_is_placeholder=True),
    Rule("acquisition_mode", f"{_TEM}.acquisition_mode", None),
    Rule("operator", "General.authors", None),
]


def fill_from_standard(meta: VendorMetadata) -> None:
    """Add the fields that only rosettasciio's standard metadata gives (source ``rsciio:``)."""
    found = normalize(meta.reader_metadata, STANDARD_RULES, STATE_FIELDS)
    for name, f in found.items():
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
