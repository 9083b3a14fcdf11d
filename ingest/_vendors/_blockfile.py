"""NanoMegas / ASTAR blockfiles (``.blo``): precession-diffraction scans. The header is a fixed
little-endian record (rosettasciio's ``blockfile`` layout) read here directly: rosettasciio's
reader imports scikit-image (for writing), a large dependency for ~240 bytes of header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ingest._acquisition import STATE_FIELDS
from ingest._errors import VendorFormatError
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import VendorMetadata, set_start
from ingest._vendors._rules import Rule, both_energies, normalize

_HEADER = np.dtype(
    [
        ("ID", "S6"),
        ("MAGIC", "<u2"),
        ("Data_offset_1", "<u4"),
        ("Data_offset_2", "<u4"),
        ("UNKNOWN1", "<u4"),
        ("DP_SZ", "<u2"),
        ("DP_rotation", "<u2"),
        ("NX", "<u2"),
        ("NY", "<u2"),
        ("Scan_rotation", "<u2"),
        ("SX", "<f8"),
        ("SY", "<f8"),
        ("Beam_energy", "<u4"),
        ("SDP", "<u2"),
        ("Camera_length", "<u4"),
        ("Acquisition_time", "<f8"),
        *[(f"Centering_N{i}", "<f8") for i in range(8)],
        *[(f"Distortion_N{i:02d}", "<f8") for i in range(14)],
    ]
)
#: The free-text note after the header is read up to this many bytes.
_MAX_NOTE = 64 * 1024
_SERIAL_EPOCH = datetime(1899, 12, 30, tzinfo=UTC)
_H = "blockfile_header"
_RULES = [
    *both_energies(
        f"{_H}.Beam_energy",
        "V",
        inferred="the blockfile header's Beam_energy is in V (rosettasciio maps it so)",
        zero_is_placeholder=True,
    ),
    Rule(
        "camera_length",
        f"{_H}.Camera_length",
        "mm",
        sign=0.1,
        inferred="the blockfile header's Camera_length is in 0.1 mm (rosettasciio's header "
        "layout says [10 * mm]); the value x 0.1 is in mm",
        zero_is_placeholder=True,
    ),
    Rule(
        "pixel_size",
        f"{_H}.SX",
        "nm",
        inferred="the blockfile header's SX is the scan step in nm (rosettasciio reads it so)",
        zero_is_placeholder=True,
    ),
]


def read_header(path: Path) -> dict[str, Any]:
    """The header record and its note (bounded reads: the record and at most 64 KiB)."""
    with path.open("rb") as f:
        raw = f.read(_HEADER.itemsize)
        if len(raw) < _HEADER.itemsize:
            raise VendorFormatError(f"{len(raw)} bytes: shorter than a blockfile header")
        record = np.frombuffer(raw, dtype=_HEADER, count=1)[0]
        if bytes(record["ID"]) != b"IMGBLO":
            raise VendorFormatError(f"not a blockfile (starts with {bytes(record['ID'])!r})")
        header: dict[str, Any] = {name: json_safe(record[name]) for name in _HEADER.names or ()}
        note_size = max(0, min(int(record["Data_offset_1"]) - f.tell(), _MAX_NOTE))
        header["Note"] = f.read(note_size).decode("latin1").strip("\x00")
    expected = int(record["Data_offset_2"]) + int(record["NX"]) * int(record["NY"]) * (
        int(record["DP_SZ"]) ** 2 + 6
    )
    size = path.stat().st_size
    if size < expected:
        raise VendorFormatError(
            f"{size} bytes, the header promises {expected}: the file is truncated"
        )
    return header


def read_blockfile(path: Path) -> VendorMetadata:
    header = read_header(path)
    tree = {_H: header}
    meta = VendorMetadata(format="blockfile", reader="beamtwin.blockfile", original_metadata=tree)
    meta.state = normalize(tree, _RULES, STATE_FIELDS)
    serial = header["Acquisition_time"]
    if isinstance(serial, float) and serial > 0:
        when = _SERIAL_EPOCH + timedelta(days=serial)
        note = "serial date (days since 1899-12-30, UTC), as rosettasciio reads it"
        set_start(meta, when, f"{_H}.Acquisition_time", serial, note)
    return meta
