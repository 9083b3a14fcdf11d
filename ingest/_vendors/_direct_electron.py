"""Direct Electron cameras: the acquisition info file (``*_info.txt``, plain ``key = value``
text, parsed here) and the MRC movie (``.mrc``, read with rosettasciio's ``mrc`` reader) that
takes its metadata from the info file beside it."""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from pathlib import Path

from ingest._acquisition import INSTRUMENT_FIELDS, STATE_FIELDS, Quality
from ingest._errors import RejectedMessage, VendorFormatError
from ingest._vendors._calling import call_reader, read_text
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import (
    VendorMetadata,
    first,
    metadata_of,
    pixel_size_from_axes,
    start_from_epoch,
)
from ingest._vendors._rules import Rule, both_energies, constant, normalize

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


_RULES = [
    *both_energies("Instrument Accelerating Voltage (V)", "V", zero_is_placeholder=True),
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
_FROM_MICROSCOPE = {
    "high_tension",
    "beam_energy",
    "camera_length",
    "magnification",
    "pixel_size",
}
_INSTRUMENT = [
    Rule("detector_model", "Camera Model", None),
    Rule("serial_number", "Camera SN", None),
    Rule("control_software_version", "Server Software Version", None),
    Rule("computer_name", "Computer Name", None),
]


def _mark_disconnected(meta: VendorMetadata, tree: dict[str, str]) -> None:
    status = tree.get("Instrument Metadata", "")
    if not DE_DISCONNECTED.search(status):
        return
    for name in _FROM_MICROSCOPE & set(meta.state):
        meta.state[name] = meta.state[name].model_copy(
            update={
                "quality": Quality.DISCONNECTED_DEFAULT,
                "note": f"Instrument Metadata = {status!r}: the DE server's default, not "
                "the microscope's value",
            }
        )


#: What the DE server writes for a microscope value it could not read.
_SENTINELS = frozenset({"-1", "unknown", ""})


def _mark_suspect(meta: VendorMetadata, tree: dict[str, str]) -> None:
    """When most of the file's ``Instrument ...`` values are the DE server's "not known"
    sentinels, the microscope channel did not report: the microscope values that are not
    sentinels themselves are the server's defaults too, most likely."""
    instrument = {k: v for k, v in tree.items() if k.startswith("Instrument ")}
    instrument.pop("Instrument Metadata", None)
    unknown = [k for k, v in instrument.items() if v.strip().lower() in _SENTINELS]
    if not instrument or len(unknown) * 2 <= len(instrument):
        return
    note = (
        f"{len(unknown)} of the file's {len(instrument)} Instrument values are the DE "
        "server's 'not known' sentinels (-1, Unknown): its microscope channel did not "
        "report, so this value is most likely the server's default, not the microscope's"
    )
    for name in _FROM_MICROSCOPE & set(meta.state):
        if meta.state[name].quality is Quality.OK:
            meta.state[name] = meta.state[name].model_copy(
                update={"quality": Quality.DISCONNECTED_DEFAULT, "note": note}
            )


def _set_times(meta: VendorMetadata, tree: dict[str, str]) -> None:
    if not start_from_epoch(
        meta, tree, "Timestamp (seconds since Epoch)", "seconds since the Unix epoch"
    ):
        return
    total = tree.get("Exposure Time (seconds)")
    if total and meta.start_time is not None:
        with contextlib.suppress(ValueError):
            meta.end_time = meta.start_time + timedelta(seconds=float(total))


def _de_metadata(tree: dict[str, str], prefix: str) -> VendorMetadata:
    meta = VendorMetadata(format="de_info", reader="beamtwin.de_info", original_metadata={})
    meta.state = normalize(tree, _RULES, STATE_FIELDS)
    if "Scan - Enable" in tree and tree["Scan - Enable"].lower() != "enable":
        meta.state.pop("dwell_time", None)
    _mark_disconnected(meta, tree)
    _mark_suspect(meta, tree)
    meta.instrument = normalize(tree, _INSTRUMENT, INSTRUMENT_FIELDS)
    meta.instrument["control_software"] = constant(
        "Direct Electron DE-Server", "Server Software Version"
    )
    _set_times(meta, tree)
    if prefix:
        for group in (meta.state, meta.instrument):
            for name, f in group.items():
                group[name] = f.model_copy(update={"source": prefix + f.source})
    return meta


def read_de_info(path: Path) -> VendorMetadata:
    text = read_text(path)
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


def read_mrc(path: Path) -> VendorMetadata:
    from rsciio.mrc import file_reader

    result = first(call_reader(file_reader, path, lazy=True))
    tree = json_safe(result["original_metadata"])
    info = _de_info_beside(path)
    if info is None:
        meta = metadata_of("mrc", "rsciio.mrc", tree, result)
        meta.state.update(pixel_size_from_axes(result))
        return meta
    info_tree = parse_de_info(read_text(info))
    meta = _de_metadata(info_tree, f"file:{info.name}:")
    meta.format, meta.reader = "de_mrc", "rsciio.mrc+beamtwin.de_info"
    meta.original_metadata = {"mrc": tree, "de_info": dict(info_tree)}
    meta.reader_metadata = json_safe(result.get("metadata") or {})
    if "pixel_size" not in meta.state:
        meta.state.update(pixel_size_from_axes(result))
    return meta
