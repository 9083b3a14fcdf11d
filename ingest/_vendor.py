"""Read vendor data files and normalize their metadata to beamtwin's state fields.

Files are read with rosettasciio (``rsciio``, HyperSpy's file-IO library): Gatan DigitalMicrograph
(``.dm3``/``.dm4``), Thermo Fisher Velox EMD (``.emd``), FEI TIA (``.emi`` with its ``.ser``, or a
``.ser`` alone), TIFF including JEOL SightX (``.tif``/``.tiff``, also gzipped), MRC (``.mrc``,
with the Direct Electron ``*_info.txt`` beside it) and Protochips holder logs (``.csv``). The
Direct Electron info file (``*_info.txt``) is plain ``key = value`` text and is parsed here.

Every vendor names and scales things its own way. Each format has a table of :class:`Rule`
objects below: which key holds which state field, in which unit (stated in the file, or inferred
and then flagged ``unit_ambiguous`` with a note saying how), which zeros mean "unknown"
(``placeholder``), which values the vendor rounds (``rounded``); the Direct Electron info file's
microscope values are ``disconnected_default`` when it says its microscope channel is
disconnected. Units are converted with pint to the canonical unit of each field (see
:data:`~ingest._acquisition.STATE_FIELDS`). Defocus follows abTEM: ``defocus = -C10``, positive
= underfocus; Thermo Fisher's ``Optics.Defocus`` (and TIA's ``Defocus_um``) are read as ``C10``
(``twin.VELOX_DEFOCUS_TO_C10``, see ``docs/optics.md``).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import gzip
import hashlib
import logging
import math
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from ingest._acquisition import (
    ACQUISITION_SCHEMA_ID,
    INSTRUMENT_FIELDS,
    MAPPING_VERSION,
    STATE_FIELDS,
    AcquisitionEventV1,
    FileInfo,
    NormalizedField,
    Quality,
    ReaderInfo,
    TimeSource,
    dataset_id_for,
)
from ingest._errors import RejectedMessage, UnknownField, VendorFormatError
from ingest._units import _pint_lock, unit_registry
from twin import VELOX_DEFOCUS_TO_C10

log = logging.getLogger(__name__)

#: Largest list kept verbatim in ``original_metadata`` (longer ones, e.g. a holder log's time
#: axis or a colour table, are summarized: they are data, not metadata).
_MAX_LIST = 256
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def rosettasciio_version() -> str:
    try:
        return importlib_metadata.version("rosettasciio")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - a broken install
        return "unknown"


# ---------------------------------------------------------------------------- JSON safety
def json_safe(value: Any) -> Any:
    """``value`` as JSON-compatible Python: numpy scalars and arrays, bytes, enums, datetimes
    and mappings (rosettasciio's ``Box``) converted; non-finite floats become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(value, np.ndarray):
        if value.size > _MAX_LIST:
            return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
        return json_safe(value.tolist())
    if isinstance(value, list | tuple):
        if len(value) > _MAX_LIST:
            return {"list_length": len(value)}
        return [json_safe(v) for v in value]
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# ---------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """Where one field's value is in a vendor tree, and how to read it.

    Attributes:
        name: the state or instrument field.
        path: key path in the tree; a ``str`` with ``.`` separators.
        unit: unit of the stored value (pint syntax); ``None`` for text; ``"text"`` when the
            value is text with its own unit (``"0.0 nm"``, ``"100.00 msec"``).
        inferred: when the file does not state ``unit``: how it was inferred (the field is
            then ``unit_ambiguous`` unless ``confirm`` agrees).
        confirm: a key holding the same value as formatted text with a unit (``"200kV"``);
            when it agrees, the inferred unit counts as stated.
        zero_is_placeholder: a zero means "unknown".
        rounded: the vendor writes the value rounded; the note (``-0.0``, a value rounded from
            a small negative one, is flagged for any numeric field).
        sign: factor applied to the value (defocus conventions).
        text_map: text values translated (``{"1": "TEM"}``).
        note: said about the field whatever its quality.
    """

    name: str
    path: str
    unit: str | None
    inferred: str | None = None
    confirm: str | None = None
    zero_is_placeholder: bool = False
    rounded: str | None = None
    sign: float = 1.0
    text_map: Mapping[str, str] | None = None
    note: str | None = None


_MISSING = object()


def lookup(tree: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``tree`` (``_MISSING`` when absent or empty)."""
    node: Any = tree
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    if node is None or (isinstance(node, str | list | tuple | Mapping) and len(node) == 0):
        return _MISSING
    if isinstance(node, str) and not node.strip():
        return _MISSING
    return node


_UNIT_SPELLINGS = {
    "msec": "ms",
    "usec": "us",
    "sec": "s",
    "Degrees C": "degC",
    "Degrees F": "degF",
    "Milliseconds": "ms",
    "centimeters": "cm",
    "nanometers": "nm",
    "microseconds": "us",
    "nanoseconds": "ns",
    "seconds": "s",
    "x": "1",
    "X": "1",
}


def _pint_unit(unit: str) -> str:
    unit = _UNIT_SPELLINGS.get(unit.strip(), unit.strip())
    return "dimensionless" if unit == "1" else unit


def convert(value: float, unit: str, canonical: str) -> float:
    """``value`` [``unit``] in ``canonical`` (``eV`` from a voltage: e x U)."""
    registry = unit_registry()
    with _pint_lock:
        quantity = registry.Quantity(value, _pint_unit(unit))
        if canonical == "eV" and quantity.check("[electric_potential]"):
            return float(quantity.to("V").magnitude)
        return float(quantity.to(_pint_unit(canonical)).magnitude)


_TEXT_QUANTITY = re.compile(r"^\s*([-+0-9.eE]+)\s*([^\d\s].*?)\s*$")


def parse_text_quantity(text: str) -> tuple[float, str]:
    """``"0.0 nm"`` -> ``(0.0, "nm")``; ``"200kV"`` -> ``(200.0, "kV")``; ``"225kx"`` ->
    ``(225000.0, "1")``."""
    match = _TEXT_QUANTITY.match(text)
    if not match:
        raise VendorFormatError(f"{text!r} is not a number with a unit")
    number, unit = float(match.group(1)), match.group(2)
    if unit.lower() in ("kx", "k x"):
        return number * 1000.0, "1"
    return number, unit


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise VendorFormatError("a boolean is not a number")
    if isinstance(raw, str):
        return float(raw.strip())
    return float(raw)


def apply_rule(
    tree: Mapping[str, Any], rule: Rule, canonical: str | None
) -> NormalizedField | None:
    raw = lookup(tree, rule.path)
    if raw is _MISSING:
        return None
    raw_json = json_safe(raw)
    notes = [rule.note] if rule.note else []
    if canonical is None:  # a text field
        text = str(raw_json).strip()
        if rule.text_map is not None:
            text = rule.text_map.get(text, text)
        return NormalizedField(
            value=text,
            unit=None,
            source=rule.path,
            source_value=raw_json,
            quality=Quality.OK,
            note="; ".join(notes) or None,
        )
    try:
        if rule.unit == "text":
            number, unit = parse_text_quantity(str(raw))
        else:
            number, unit = _number(raw), rule.unit or "1"
        value = convert(number, unit, canonical) * rule.sign
    except Exception as exc:  # a vendor value that is not a number: skip the field
        log.debug("cannot read %s = %r as a number: %s", rule.path, raw, exc)
        return None
    if not math.isfinite(value):
        return None
    quality = Quality.OK
    if rule.inferred:
        confirmed = _confirmed(tree, rule, number, unit)
        if confirmed:
            notes.append(confirmed)
        else:
            quality = Quality.UNIT_AMBIGUOUS
            notes.append(f"unit not stated in the file; {rule.inferred}")
    negative_zero = number == 0.0 and math.copysign(1.0, number) < 0
    if number == 0.0 and rule.zero_is_placeholder:
        quality = Quality.PLACEHOLDER
        notes.append("the vendor writes 0 when the value is unknown")
    elif negative_zero or rule.rounded:
        if quality is Quality.OK:
            quality = Quality.ROUNDED
        if negative_zero:
            notes.append("-0: a small negative value rounded by the vendor")
        if rule.rounded:
            notes.append(rule.rounded)
    if value == 0.0:
        value = 0.0  # no signed zeros in the output: the marker says what it was
    return NormalizedField(
        value=value,
        unit=canonical,
        source=rule.path,
        source_value=raw_json,
        source_unit=unit,
        quality=quality,
        note="; ".join(notes) or None,
    )


def _confirmed(tree: Mapping[str, Any], rule: Rule, number: float, unit: str) -> str | None:
    if rule.confirm is None:
        return None
    text = lookup(tree, rule.confirm)
    if text is _MISSING:
        return None
    try:
        other, other_unit = parse_text_quantity(str(text))
        mine = convert(number, unit, _pint_unit(other_unit))
    except Exception:
        return None
    if math.isclose(mine, other, rel_tol=0.01, abs_tol=1e-12):
        return f"unit {unit} confirmed by {rule.confirm} = {text!r}"
    return None


_QUALITY_RANK = {
    Quality.OK: 0,
    Quality.ROUNDED: 1,
    Quality.UNIT_AMBIGUOUS: 2,
    Quality.DISCONNECTED_DEFAULT: 3,
    Quality.PLACEHOLDER: 4,
}


def normalize(
    tree: Mapping[str, Any],
    rules: Sequence[Rule],
    table: Mapping[str, tuple[str | None, str]],
) -> dict[str, NormalizedField]:
    """Apply ``rules`` to ``tree``; where several rules give a field, the best quality wins
    (then the first rule)."""
    candidates: dict[str, list[NormalizedField]] = {}
    for rule in rules:
        if rule.name not in table:
            raise UnknownField(f"rule for unknown field {rule.name!r}")
        found = apply_rule(tree, rule, table[rule.name][0])
        if found is not None:
            candidates.setdefault(rule.name, []).append(found)
    return {
        name: min(found, key=lambda f: _QUALITY_RANK[f.quality])
        for name, found in candidates.items()
    }


def _both_energies(path: str, unit: str, **kw: Any) -> list[Rule]:
    """``high_tension`` [V] and ``beam_energy`` [eV] from the same key."""
    return [Rule("high_tension", path, unit, **kw), Rule("beam_energy", path, unit, **kw)]


# ------------------------------------------------------------------ rosettasciio's mapping
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


# ---------------------------------------------------------------------------- what a reader gives
@dataclass
class VendorMetadata:
    """What one file says, before it becomes an event."""

    format: str
    reader: str
    original_metadata: dict[str, Any]
    reader_metadata: dict[str, Any] = field(default_factory=dict)
    state: dict[str, NormalizedField] = field(default_factory=dict)
    instrument: dict[str, NormalizedField] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None
    time_source: TimeSource = TimeSource.FILE_METADATA


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _set_start(meta: VendorMetadata, when: datetime, source: str, raw: Any, note: str) -> None:
    meta.start_time = when.astimezone(UTC)
    meta.state["acquisition_start"] = NormalizedField(
        value=_iso(when),
        unit=None,
        source=source,
        source_value=json_safe(raw),
        quality=Quality.OK,
        note=note,
    )


def _epoch_seconds(raw: Any) -> datetime:
    return datetime.fromtimestamp(_number(raw), UTC)


# ---------------------------------------------------------------------------- Gatan DM
def _dm_tags_path(result: Mapping[str, Any]) -> str:
    for key in result.get("mapping_keys") or []:
        match = re.match(r"^(ImageList\.TagGroup\d+)\.ImageTags", key)
        if match:
            return match.group(1)
    return "ImageList.TagGroup0"


def _dm_rules(base: str) -> list[Rule]:
    tags = base + ".ImageTags"
    info = tags + ".Microscope Info"
    stage = info + ".Stage Position"
    um = "DigitalMicrograph writes the stage position in µm (rosettasciio reads it so)"
    deg = "DigitalMicrograph writes stage tilts in degrees"
    dim = base + ".ImageData.Calibrations.Dimension.TagGroup0"
    return [
        *_both_energies(
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
            inferred="DigitalMicrograph's STEM Camera Length is in mm (135 here is a STEM "
            "camera length in mm; rosettasciio reads it as mm)",
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
        Rule("pixel_size", dim + ".Scale", "text", zero_is_placeholder=True),
        Rule("acquisition_mode", info + ".Illumination Mode", None),
        Rule("acquisition_mode", info + ".Operation Mode", None),
        Rule("detector", tags + ".Acquisition.Device.Name", None),
        Rule("detector", tags + ".DataBar.Device Name", None),
        Rule("operator", tags + ".Session Info.Operator", None),
    ]


def _dm_instrument_rules(base: str) -> list[Rule]:
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


def _read_dm(path: Path) -> VendorMetadata:
    from rsciio.digitalmicrograph import file_reader

    result = _first(_call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    base = _dm_tags_path(result)
    # The pixel size's unit sits next to its scale: give the scale that unit as text.
    dim = lookup(tree, base + ".ImageData.Calibrations.Dimension.TagGroup0")
    tree_for_rules = tree
    if isinstance(dim, Mapping) and "Scale" in dim and isinstance(dim.get("Units"), str):
        tree_for_rules = _with(
            tree,
            base + ".ImageData.Calibrations.Dimension.TagGroup0.Scale",
            f"{dim['Scale']} {dim['Units']}",
        )
    meta = _metadata("gatan_dm", "rsciio.digitalmicrograph", tree, result)
    meta.state = normalize(tree_for_rules, _dm_rules(base), STATE_FIELDS)
    if "pixel_size" in meta.state:  # report the verbatim scale, not the joined text
        raw = lookup(tree, base + ".ImageData.Calibrations.Dimension.TagGroup0.Scale")
        meta.state["pixel_size"] = meta.state["pixel_size"].model_copy(update={"source_value": raw})
    meta.instrument = normalize(tree, _dm_instrument_rules(base), INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = _constant("Gatan DigitalMicrograph", base)
    filetime = lookup(tree, base + ".ImageTags.DataBar.Acquisition Time (OS)")
    if filetime is not _MISSING:
        # Windows FILETIME: 100 ns ticks since 1601-01-01 UTC; the DataBar's date and time
        # beside it are local time without a zone.
        when = _FILETIME_EPOCH + timedelta(microseconds=_number(filetime) / 10)
        _set_start(
            meta,
            when,
            base + ".ImageTags.DataBar.Acquisition Time (OS)",
            filetime,
            "Windows FILETIME (100 ns since 1601, UTC)",
        )
    return meta


def _constant(value: str, source: str) -> NormalizedField:
    return NormalizedField(
        value=value,
        unit=None,
        source=source,
        source_value=None,
        quality=Quality.OK,
        note="implied by the file format",
    )


def _with(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``path`` set to ``value`` (copies only the nodes on the path)."""
    parts = path.split(".")
    out = dict(tree)
    node = out
    for part in parts[:-1]:
        child = dict(node[part])
        node[part] = child
        node = child
    node[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------- Velox EMD
def _velox_rules(tree: Mapping[str, Any]) -> list[Rule]:
    detector = lookup(tree, "BinaryResult.Detector")
    detector_path = None
    detectors = lookup(tree, "Detectors")
    if isinstance(detectors, Mapping):
        for key, det in detectors.items():
            if isinstance(det, Mapping) and det.get("DetectorName") == detector:
                detector_path = f"Detectors.{key}"
    rules = [
        *_both_energies("Optics.AccelerationVoltage", "V", zero_is_placeholder=True),
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
            note="Velox Defocus read as C10 (Thermo UI sign, negative = underfocus); "
            "defocus = -C10",
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
    if detector_path:
        rules.append(
            Rule("exposure_time", detector_path + ".ExposureTime", "s", zero_is_placeholder=True)
        )
    if lookup(tree, "BinaryResult.PixelUnitX") is not _MISSING:
        rules.append(Rule("pixel_size", "BinaryResult.PixelSize.width", "text"))
    return rules


_VELOX_INSTRUMENT = [
    Rule("vendor", "Instrument.Manufacturer", None),
    Rule("model", "Instrument.InstrumentModel", None),
    Rule("serial_number", "Instrument.InstrumentId", None),
    Rule("control_software_version", "Instrument.ControlSoftwareVersion", None),
    Rule("computer_name", "Instrument.ComputerName", None),
    Rule("detector_model", "BinaryResult.Detector", None),
]


def _read_emd(path: Path) -> VendorMetadata:
    from rsciio.emd import file_reader

    results = _call_reader(file_reader, path, lazy=True)
    result = _first(results)
    tree = json_safe(result["original_metadata"])
    if lookup(tree, "Optics") is _MISSING and lookup(tree, "Instrument") is _MISSING:
        meta = _metadata("emd", "rsciio.emd", tree, result)
        _start_from_reader_metadata(meta)
        return meta
    meta = _metadata("velox_emd", "rsciio.emd", tree, result)
    rules = _velox_rules(tree)
    rules_tree: dict[str, Any] = tree
    if "PixelUnitX" in (tree.get("BinaryResult") or {}):
        width = lookup(tree, "BinaryResult.PixelSize.width")
        rules_tree = _with(
            tree, "BinaryResult.PixelSize.width", f"{width} {tree['BinaryResult']['PixelUnitX']}"
        )
    meta.state = normalize(rules_tree, rules, STATE_FIELDS)
    if "pixel_size" in meta.state:
        meta.state["pixel_size"] = meta.state["pixel_size"].model_copy(
            update={"source_value": lookup(tree, "BinaryResult.PixelSize.width")}
        )
    frames = _navigation_time_axis(result)
    if frames is not None:
        meta.state["frame_count"] = frames[0]
    meta.instrument = normalize(tree, _VELOX_INSTRUMENT, INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = _constant("Thermo Fisher Velox", "Instrument")
    start = lookup(tree, "Acquisition.AcquisitionStartDatetime.DateTime")
    if start is not _MISSING:
        _set_start(
            meta,
            _epoch_seconds(start),
            "Acquisition.AcquisitionStartDatetime.DateTime",
            start,
            "seconds since the Unix epoch",
        )
        if frames is not None and meta.start_time is not None:
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


# ---------------------------------------------------------------------------- FEI TIA
def _tia_rules(tree: Mapping[str, Any]) -> list[Rule]:
    desc = "ObjectInfo.ExperimentalDescription"
    rounding = "TIA writes ExperimentalDescription numbers with 3 decimals"
    camera = lookup(tree, "ObjectInfo.AcquireInfo.CameraNamePath") is not _MISSING
    return [
        *_both_energies(
            "ObjectInfo.ExperimentalConditions.MicroscopeConditions.AcceleratingVoltage",
            "V",
            zero_is_placeholder=True,
        ),
        *_both_energies(f"{desc}.High tension_kV", "kV", zero_is_placeholder=True),
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


def _tia_instrument(tree: Mapping[str, Any]) -> dict[str, NormalizedField]:
    out = normalize(
        tree,
        [
            Rule("vendor", "ObjectInfo.Manufacturer", None),
            Rule("detector_model", "ObjectInfo.AcquireInfo.CameraNamePath", None),
        ],
        INSTRUMENT_FIELDS,
    )
    source = "ObjectInfo.ExperimentalDescription.Microscope"
    described = lookup(tree, source)
    if isinstance(described, str):
        # "Microscope TalosF200X 200 kV D6308 XTwin": model, HT class, serial, pole piece.
        words = described.removeprefix("Microscope").split()
        note = f"parsed from {described!r}"
        if words:
            out["model"] = NormalizedField(
                value=words[0],
                unit=None,
                source=source,
                source_value=described,
                quality=Quality.OK,
                note=note,
            )
        serial = re.search(r"\b([A-Z]\d{4,})\b", described)
        if serial:
            out["serial_number"] = NormalizedField(
                value=serial.group(1),
                unit=None,
                source=source,
                source_value=described,
                quality=Quality.OK,
                note=note,
            )
    out["control_software"] = _constant("FEI TIA", "ObjectInfo")
    return out


def _read_tia(path: Path) -> VendorMetadata:
    from rsciio.tia import file_reader

    result = _first(_call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    fmt = "tia_emi" if path.suffix.lower() == ".emi" else "tia_ser"
    meta = _metadata(fmt, "rsciio.tia", tree, result)
    meta.state = normalize(tree, _tia_rules(tree), STATE_FIELDS)
    meta.instrument = _tia_instrument(tree)
    start = lookup(tree, "ser_header_parameters.Time")
    if start is not _MISSING:
        _set_start(
            meta,
            _epoch_seconds(start),
            "ser_header_parameters.Time",
            start,
            "SER header time: seconds since the Unix epoch",
        )
    return meta


# ---------------------------------------------------------------------------- TIFF, JEOL SightX
def _jeol_rules(tree: Mapping[str, Any]) -> list[Rule]:
    d = "ImageDescription"
    gun = f"{d}.ElectronGun"
    stage = f"{d}.GonioStage.StagePosition"
    um = "JEOL writes gonio positions in µm (the holder limits beside them, ±1250, are µm)"
    deg = "JEOL writes gonio tilts in degrees (the holder limits beside them, ±10, are °)"
    rules = [
        *_both_energies(
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
            f"{d}.IlluminationSystem.SpotSizeString",
            "1",
            note="the spot size as displayed (SpotSize beside it is the 0-based index)",
        ),
        Rule(
            "defocus",
            f"{d}.ImageFormingSystem.DefocusValue",
            "text",
            sign=-VELOX_DEFOCUS_TO_C10,
            note="JEOL's defocus sign is not documented; read like Thermo's (as C10)",
        ),
        Rule("stage_x", f"{stage}.MX", "um", inferred=um),
        Rule("stage_y", f"{stage}.MY", "um", inferred=um),
        Rule("stage_z", f"{stage}.MZ", "um", inferred=um),
        Rule("stage_alpha", f"{stage}.TX", "deg", inferred=deg),
        Rule("stage_beta", f"{stage}.TY", "deg", inferred=deg),
        Rule("operator", f"{d}.Operator", None),
        Rule("acquisition_mode", f"{d}.Eos.EosMode", None),
        Rule("acquisition_mode", f"{d}.ImageFormingSystem.ImageFormingMode", None),
        Rule("detector", f"{d}.ImageSourceDetector", None),
        Rule("holder", f"{d}.GonioStage.HolderInformation.Name", None),
    ]
    mode = lookup(tree, f"{d}.ImageFormingSystem.ModeString")
    selector_unit = lookup(tree, f"{d}.ImageFormingSystem.SelectorUnitString")
    if mode == "DIFF" and isinstance(selector_unit, str):
        rules.append(Rule("camera_length", f"{d}.ImageFormingSystem.SelectorValue", selector_unit))
    elif mode in ("MAG", "LowMAG", "SAMAG", "LMAG"):
        rules.append(
            Rule(
                "magnification",
                f"{d}.ImageFormingSystem.SelectorValue",
                "1",
                zero_is_placeholder=True,
            )
        )
    if lookup(tree, f"{d}.ImageSourceDetector") == "screenCamera":
        camera = f"{d}.JemBaumerCamera.Parameter"
        rules.append(Rule("exposure_time", f"{camera}.ExposureTimeString", "text"))
        rules.append(
            Rule(
                "exposure_time",
                f"{camera}.ExposureTimeValue",
                "us",
                inferred="JEOL camera ExposureTimeValue read as µs",
            )
        )
    return rules


_JEOL_INSTRUMENT = [
    Rule("vendor", "ImageDescription.Manufacturer", None),
    Rule("model", "ImageDescription.Instruments", None),
    Rule("detector_model", "ImageDescription.JemBaumerCamera.Modelname", None),
]


def _read_tiff(path: Path) -> VendorMetadata:
    from rsciio.tiff import file_reader

    result = _first(_call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    jeol = isinstance(tree.get("ImageDescription"), Mapping) and "JEOL" in str(
        lookup(tree, "ImageDescription.Manufacturer")
    )
    if not jeol:
        meta = _metadata("tiff", "rsciio.tiff", tree, result)
        meta.state.update(_pixel_size_from_axes(result))
        _start_from_reader_metadata(meta)
        return meta
    meta = _metadata("jeol_sightx_tiff", "rsciio.tiff", tree, result)
    meta.state = normalize(tree, _jeol_rules(tree), STATE_FIELDS)
    meta.state.update(_pixel_size_from_axes(result))
    meta.instrument = normalize(tree, _JEOL_INSTRUMENT, INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = _constant("JEOL SightX", "ImageDescription")
    when = lookup(tree, "ImageDescription.DateTime")
    if isinstance(when, str):
        parsed = _parse_iso(when)
        if parsed is not None and parsed.tzinfo is not None:
            _set_start(meta, parsed, "ImageDescription.DateTime", when, "ISO 8601 with offset")
    return meta


def _parse_iso(text: str) -> datetime | None:
    # SightX writes 7 fractional digits ("16:11:26.6205405+09:00"); Python takes at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip())
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _pixel_size_from_axes(result: Mapping[str, Any]) -> dict[str, NormalizedField]:
    """The pixel size the reader calibrated, from its last signal axis."""
    axes = [a for a in result.get("axes") or [] if not a.get("navigate")]
    if not axes:
        return {}
    i = len(result["axes"]) - 1
    axis = axes[-1]
    unit = str(axis.get("units") or "")
    try:
        value = convert(float(axis["scale"]), unit, "m")
    except Exception:
        return {}
    return {
        "pixel_size": NormalizedField(
            value=value,
            unit="m",
            source=f"rsciio:axes[{i}].scale",
            source_value=json_safe(axis["scale"]),
            source_unit=unit,
            quality=Quality.OK,
            note="calibration computed by rosettasciio's reader",
        )
    }


def _start_from_reader_metadata(meta: VendorMetadata) -> None:
    general = meta.reader_metadata.get("General") or {}
    date, time = general.get("date"), general.get("time")
    if not (isinstance(date, str) and isinstance(time, str)):
        return
    parsed = _parse_iso(f"{date}T{time}")
    if parsed is None:
        return
    zone = general.get("time_zone")
    if zone == "UTC":
        parsed = parsed.replace(tzinfo=UTC)
    elif isinstance(zone, str) and re.match(r"^[+-]\d\d:\d\d$", zone):
        parsed = _parse_iso(f"{date}T{time}{zone}") or parsed
    if parsed.tzinfo is None:
        meta.time_source = TimeSource.FILE_METADATA_NO_ZONE
        parsed = parsed.replace(tzinfo=UTC)
    _set_start(meta, parsed, "rsciio:General.date+time", [date, time, zone], "reader metadata")


# ---------------------------------------------------------------------------- Direct Electron
DE_DISCONNECTED = re.compile(r"disconnected", re.IGNORECASE)


def parse_de_info(text: str) -> dict[str, str]:
    """The ``key = value`` lines of a Direct Electron ``*_info.txt`` (keys keep their units in
    parentheses, e.g. ``Exposure Time (seconds)``)."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise VendorFormatError(f"line {n} is not 'key = value': {line[:80]!r}")
        out[key.strip()] = value.strip()
    if not out:
        raise VendorFormatError("no 'key = value' lines")
    return out


_DE_RULES = [
    *_both_energies("Instrument Accelerating Voltage (V)", "V", zero_is_placeholder=True),
    Rule(
        "camera_length",
        "Instrument Project Camera Length (centimeters)",
        "cm",
        zero_is_placeholder=True,
    ),
    Rule("magnification", "Instrument Project Magnification", "1", zero_is_placeholder=True),
    Rule("exposure_time", "Frame Exposure Time (nanoseconds)", "ns", zero_is_placeholder=True),
    Rule("frame_count", "Frame Count", "1"),
    Rule("dwell_time", "Scan - Dwell Time (microseconds)", "us", zero_is_placeholder=True),
    Rule("pixel_size", "Specimen Pixel Size X (nanometers)", "nm", zero_is_placeholder=True),
    Rule("detector", "Camera Name", None),
]
#: Microscope values the DE server takes from the microscope channel (its defaults otherwise);
#: the specimen pixel size is derived from the magnification.
_DE_FROM_MICROSCOPE = {
    "high_tension",
    "beam_energy",
    "camera_length",
    "magnification",
    "pixel_size",
}
_DE_INSTRUMENT = [
    Rule("detector_model", "Camera Model", None),
    Rule("serial_number", "Camera SN", None),
    Rule("control_software_version", "Server Software Version", None),
    Rule("computer_name", "Computer Name", None),
]


def _de_metadata(tree: dict[str, str], prefix: str) -> VendorMetadata:
    meta = VendorMetadata(format="de_info", reader="beamtwin.de_info", original_metadata={})
    meta.state = normalize(tree, _DE_RULES, STATE_FIELDS)
    if "Scan - Enable" in tree and tree["Scan - Enable"].lower() != "enable":
        meta.state.pop("dwell_time", None)
    status = tree.get("Instrument Metadata", "")
    if DE_DISCONNECTED.search(status):
        for name in _DE_FROM_MICROSCOPE & set(meta.state):
            f = meta.state[name]
            meta.state[name] = f.model_copy(
                update={
                    "quality": Quality.DISCONNECTED_DEFAULT,
                    "note": f"Instrument Metadata = {status!r}: the DE server's default, not "
                    "the microscope's value",
                }
            )
    meta.instrument = normalize(tree, _DE_INSTRUMENT, INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = _constant(
        "Direct Electron DE-Server", "Server Software Version"
    )
    stamp = tree.get("Timestamp (seconds since Epoch)")
    if stamp:
        _set_start(
            meta,
            _epoch_seconds(stamp),
            "Timestamp (seconds since Epoch)",
            stamp,
            "seconds since the Unix epoch",
        )
        total = tree.get("Exposure Time (seconds)")
        if total and meta.start_time is not None:
            with contextlib.suppress(ValueError):
                meta.end_time = meta.start_time + timedelta(seconds=float(total))
    if prefix:
        for group in (meta.state, meta.instrument):
            for name, f in group.items():
                group[name] = f.model_copy(update={"source": prefix + f.source})
    return meta


def _read_de_info(path: Path) -> VendorMetadata:
    text = _read_text(path)
    try:
        tree = parse_de_info(text)
    except ValueError as exc:
        raise RejectedMessage(
            "unreadable_file", f"{path}: not a Direct Electron info file ({exc})"
        ) from None
    meta = _de_metadata(tree, "")
    meta.original_metadata = dict(tree)
    return meta


def _de_info_beside(path: Path) -> Path | None:
    """``20241021_00405_info.txt`` for ``20241021_00405_movie.mrc`` (or ``..._final.mrc``)."""
    stem = path.name.removesuffix(path.suffix)
    parts = stem.split("_")
    for n in range(len(parts), 0, -1):
        candidate = path.with_name("_".join(parts[:n]) + "_info.txt")
        if candidate.is_file():
            return candidate
    return None


def _read_mrc(path: Path) -> VendorMetadata:
    from rsciio.mrc import file_reader

    result = _first(_call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    info = _de_info_beside(path)
    if info is None:
        meta = _metadata("mrc", "rsciio.mrc", tree, result)
        meta.state.update(_pixel_size_from_axes(result))
        return meta
    info_tree = parse_de_info(_read_text(info))
    meta = _de_metadata(info_tree, f"file:{info.name}:")
    meta.format, meta.reader = "de_mrc", "rsciio.mrc+beamtwin.de_info"
    meta.original_metadata = {"mrc": tree, "de_info": dict(info_tree)}
    meta.reader_metadata = json_safe(result.get("metadata") or {})
    if "pixel_size" not in meta.state:
        meta.state.update(_pixel_size_from_axes(result))
    return meta


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RejectedMessage("unreadable_file", f"{path}: not UTF-8 text") from None


# ---------------------------------------------------------------------------- Protochips
def _check_complete_csv(path: Path) -> None:
    """A log cut off while it was written (or copied) ends in a partial row: refuse it rather
    than register a dataset without its end."""
    text = _read_text(path)
    if not text.endswith("\n"):
        raise VendorFormatError(
            "the last line is not complete (no line end): the file is truncated"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise VendorFormatError("fewer than two lines")
    width = lines[0].count(",")
    if lines[-1].count(",") != width:
        raise VendorFormatError(
            f"the last line has {lines[-1].count(',') + 1} fields, the header {width + 1}: "
            "the file is truncated"
        )


def _read_protochips(path: Path) -> VendorMetadata:
    from rsciio.protochips import file_reader

    _check_complete_csv(path)
    results = _call_reader(file_reader, path)
    first = _first(results)
    header = first["original_metadata"].get("Protochips_header") or {}
    tree = json_safe(first["original_metadata"])
    meta = _metadata("protochips_log", "rsciio.protochips", tree, first)
    for result in results:
        title = str((result.get("metadata") or {}).get("General", {}).get("title", ""))
        match = re.match(r"^(.*?) \((.*)\)$", title)
        if not match or result["first_value"] is None:
            continue
        channel, unit = match.group(1), match.group(2)
        target = {"Holder Temperature": "holder_temperature", "Holder Pressure": "holder_pressure"}
        if channel not in target:
            continue
        name = target[channel]
        raw = float(result["first_value"])
        canonical = STATE_FIELDS[name][0]
        assert canonical is not None
        meta.state[name] = NormalizedField(
            value=convert(raw, unit, canonical),
            unit=canonical,
            source=f"data:{channel}[0]",
            source_value=raw,
            source_unit=_pint_unit(unit),
            quality=Quality.OK,
            note="first reading of the log; the unit from its header",
        )
    user = header.get("User")
    if isinstance(user, str) and user:
        meta.state["operator"] = NormalizedField(
            value=user,
            unit=None,
            source="Protochips_header.User",
            source_value=user,
            quality=Quality.OK,
        )
    meta.instrument["vendor"] = _constant("Protochips", "Protochips_header")
    start = header.get("Start time")
    if start is not None:
        when = datetime.fromisoformat(str(np.datetime_as_string(start, unit="us")))
        meta.time_source = TimeSource.FILE_METADATA_NO_ZONE
        _set_start(
            meta,
            when.replace(tzinfo=UTC),
            "Protochips_header.Start time",
            start,
            "local time without a zone in the log; read as UTC",
        )
        times = (header.get("Time axis") or {}).get("value")
        units = str((header.get("Time axis") or {}).get("units", "Milliseconds"))
        if times is not None and len(times) and meta.start_time is not None:
            last_s = convert(float(times[-1]), units, "s")
            meta.end_time = meta.start_time + timedelta(seconds=last_s)
    return meta


# ---------------------------------------------------------------------------- dispatch
def _metadata(
    fmt: str, reader: str, tree: dict[str, Any], result: Mapping[str, Any]
) -> VendorMetadata:
    return VendorMetadata(
        format=fmt,
        reader=reader,
        original_metadata=tree,
        reader_metadata=json_safe(result.get("metadata") or {}),
    )


def _first(results: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    if not results:
        raise VendorFormatError("the reader found no dataset in the file")
    return results[0]


class _ReaderFailed(Exception):
    """A reader raised; the message is its exception's type and text."""


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__.split('.')[0]}.{name}"
    return f"{name}: {exc}".strip().rstrip(":")


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    node = tree
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


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
        if value is _MISSING:
            continue
        try:
            value = convert_value(value) if convert_value is not None else value
        except Exception as exc:
            log.debug("rosettasciio mapping %s -> %s failed: %s", key, destination, exc)
            continue
        _set_path(out, destination, json_safe(value))
    return out


def _detach(result: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of a reader's result: metadata (rosettasciio's standard metadata, its
    mapping applied) and axes, and for a 1-d signal its first value; not the (lazy) data,
    which holds the file open."""
    data = result.get("data")
    out = {k: result.get(k) for k in ("original_metadata", "axes")}
    out["metadata"] = standard_metadata(result)
    out["mapping_keys"] = list(result.get("mapping") or {})
    out["first_value"] = None
    if data is not None and getattr(data, "ndim", 0) == 1 and len(data):
        out["first_value"] = float(np.asarray(data[:1])[0])
    return out


_heap_frozen = False


def _collect_young() -> None:
    """A full garbage collection that skips the objects alive at the first call.

    Some readers leave their file in a reference cycle that only a full collection frees;
    with numpy, scipy, jax and sqlalchemy loaded, a full collection costs ~0.2 s, most of
    registering a small file. The first call freezes what is alive then (modules, classes:
    the long-lived heap, ``gc.freeze``), so each later collection scans only what was made
    since.
    """
    global _heap_frozen
    if not _heap_frozen:
        gc.collect()
        gc.freeze()
        _heap_frozen = True
    gc.collect()


def _call_reader(reader: Callable[..., Any], path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Run a rosettasciio reader and keep what the event needs.

    Readers warn about vendor quirks (non-uniform time axes, odd TIFF pages) that the event
    reports itself or that end in an ``unreadable_file`` rejection, and some leave the file open
    (lazy data, or a reader that failed half-way): the file is closed here, before returning.

    Raises:
        _ReaderFailed: the reader raised (its type and message).
    """
    loggers = [logging.getLogger(name) for name in _READER_LOGGERS]
    levels = [logger.level for logger in loggers]
    failure: str | None = None
    results: list[dict[str, Any]] = []
    try:
        for logger in loggers:
            if not log.isEnabledFor(logging.DEBUG):
                logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                results = [_detach(r) for r in reader(str(path), **kwargs)]
            except Exception as exc:
                failure = _describe(exc)
            # Close what the reader left open while its warnings are still silenced.
            _collect_young()
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if failure is not None:
        raise _ReaderFailed(failure)
    return results


#: Loggers of the readers, quietened while they read.
_READER_LOGGERS = ("rsciio", "tifffile")


#: File name endings -> (format reader, description for the docs and messages).
READERS: dict[str, tuple[Callable[[Path], VendorMetadata], str]] = {
    ".dm3": (_read_dm, "Gatan DigitalMicrograph 3"),
    ".dm4": (_read_dm, "Gatan DigitalMicrograph 4"),
    ".emd": (_read_emd, "Thermo Fisher Velox EMD (and other EMD)"),
    ".emi": (_read_tia, "FEI TIA EMI (with its .ser)"),
    ".ser": (_read_tia, "FEI TIA SER"),
    ".tif": (_read_tiff, "TIFF, JEOL SightX"),
    ".tiff": (_read_tiff, "TIFF, JEOL SightX"),
    ".mrc": (_read_mrc, "MRC, with a Direct Electron _info.txt beside it"),
    "_info.txt": (_read_de_info, "Direct Electron acquisition info"),
    ".csv": (_read_protochips, "Protochips holder log"),
}


def _reader_for(name: str) -> tuple[str, Callable[[Path], VendorMetadata]] | None:
    lower = name.lower().removesuffix(".gz")
    for ending in sorted(READERS, key=len, reverse=True):
        if lower.endswith(ending):
            return ending, READERS[ending][0]
    return None


@contextlib.contextmanager
def _plain_file(path: Path) -> Iterator[Path]:
    """``path``, or for ``*.gz`` a gunzipped copy in a temporary folder (same base name)."""
    if path.suffix.lower() != ".gz":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="beamtwin-register-") as tmp:
        target = Path(tmp) / path.name[: -len(".gz")]
        try:
            with gzip.open(path, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            raise RejectedMessage("unreadable_file", f"{path}: cannot gunzip ({exc})") from None
        yield target


def read_vendor_file(path: Path) -> VendorMetadata:
    """Read ``path`` and normalize its metadata.

    Raises:
        RejectedMessage: ``unknown_format`` (no reader for the file name's ending),
            ``unreadable_file`` (missing, empty, truncated or corrupt: the reason names the
            file and what the reader said).
    """
    found = _reader_for(path.name)
    if found is None:
        known = ", ".join(sorted(READERS))
        raise RejectedMessage(
            "unknown_format",
            f"{path}: no reader for this kind of file (known endings: {known}, also gzipped)",
        )
    _, reader = found
    if not path.is_file():
        raise RejectedMessage("unreadable_file", f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RejectedMessage("unreadable_file", f"{path}: the file is empty (0 bytes)")
    with _plain_file(path) as plain:
        try:
            return reader(plain)
        except RejectedMessage:
            raise
        except Exception as exc:  # readers fail in many ways on truncated or foreign files
            detail = str(exc) if isinstance(exc, _ReaderFailed) else _describe(exc)
            raise RejectedMessage(
                "unreadable_file",
                f"{path}: cannot be read as {READERS[found[0]][1]} ({detail[:500]})",
            ) from None


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size [bytes] of ``path``."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def build_acquisition_event(
    path: Path,
    *,
    instrument_id: str,
    operator: str | None = None,
    proposal: str | None = None,
    registered_at: datetime | None = None,
) -> AcquisitionEventV1:
    """Read ``path`` and build its acquisition event.

    Raises:
        RejectedMessage: as :func:`read_vendor_file`; ``schema`` when ``instrument_id`` is
            not a valid id.
    """
    path = path.resolve() if path.exists() else path.absolute()
    meta = read_vendor_file(path)
    fill_from_standard(meta)
    sha256, size = file_digest(path)
    stat = path.stat()
    mtime = datetime.fromtimestamp(stat.st_mtime, UTC)
    start, end, source = meta.start_time, meta.end_time, meta.time_source
    if start is None:
        start, end, source = mtime, mtime, TimeSource.FILE_MTIME
    end = end if end is not None and end >= start else start
    try:
        return AcquisitionEventV1.model_validate(
            {
                "schema": ACQUISITION_SCHEMA_ID,
                "dataset_id": dataset_id_for(sha256),
                "instrument_id": instrument_id,
                "start_time": start,
                "end_time": end,
                "time_source": source,
                "registered_at": registered_at or datetime.now(UTC),
                "file": FileInfo(
                    uri=path.as_uri(),
                    name=path.name,
                    sha256=sha256,
                    size_bytes=size,
                    format=meta.format,
                    mtime=mtime,
                ),
                "operator": operator,
                "proposal": proposal,
                "reader": ReaderInfo(
                    name=meta.reader,
                    version=rosettasciio_version(),
                    mapping_version=MAPPING_VERSION,
                ),
                "instrument": meta.instrument,
                "state": meta.state,
                "original_metadata": meta.original_metadata,
                "reader_metadata": meta.reader_metadata,
            }
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise RejectedMessage("schema", f"{path}: {exc}") from None
