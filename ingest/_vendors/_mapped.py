"""Formats rosettasciio reads for which beamtwin has no vendor rules: Bruker BCF, Quantum
Detectors Merlin (``.mib`` with its ``.hdr``), EMSA/MSA spectra and Panta Rhei ``.prz``.
Their fields come from rosettasciio's mapped standard metadata (``Acquisition_instrument``:
beam energy, current, dwell time, stage, magnification, camera length; source ``rsciio:``) and
their times from its ``General.date``/``time``/``time_zone``.

Panta Rhei before 24.03 stores its metadata as a Python pickle; rosettasciio reads it only
with ``allow_restricted_pickle=True``. Unpickling a file from elsewhere can run code, so it is
never done here: such a file registers its data (hash, size, times from the file system) and
says in ``original_metadata`` why its metadata is not read.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingest._errors import RejectedMessage
from ingest._vendors._calling import call_reader
from ingest._vendors._json import json_safe
from ingest._vendors._metadata import (
    VendorMetadata,
    first,
    metadata_of,
    pixel_size_from_axes,
    start_from_reader_metadata,
)

#: format -> (rosettasciio module, reader keyword arguments).
_PLUGINS: dict[str, tuple[str, dict[str, Any]]] = {
    "bruker_bcf": ("rsciio.bruker", {"lazy": True}),
    "merlin_mib": ("rsciio.quantumdetector", {"lazy": True}),
    "emsa_msa": ("rsciio.msa", {}),  # the MSA reader has no lazy mode; a spectrum is small
    "panta_rhei_prz": ("rsciio.pantarhei", {"lazy": True}),
}
PRZ_PICKLE_NOTE = (
    "not read: this Panta Rhei file keeps its metadata as a Python pickle (meta_data.npy), "
    "which rosettasciio loads only with allow_restricted_pickle=True; unpickling a file from "
    "elsewhere can run code, so beamtwin never does it"
)


def _read(fmt: str, path: Path) -> VendorMetadata:
    module, kwargs = _PLUGINS[fmt]
    reader = importlib.import_module(module).file_reader
    results = call_reader(reader, path, **kwargs)
    # A file with several datasets (a BCF: images and the EDS hypermap) describes one
    # acquisition; the dataset with a recorded time has the fullest metadata.
    timed = [r for r in results if (r.get("metadata") or {}).get("General", {}).get("date")]
    result: Mapping[str, Any] = timed[-1] if timed else first(results)
    meta = metadata_of(fmt, module, json_safe(result["original_metadata"]), result)
    meta.state.update(pixel_size_from_axes(result))
    start_from_reader_metadata(meta)
    return meta


def read_bcf(path: Path) -> VendorMetadata:
    return _read("bruker_bcf", path)


def read_msa(path: Path) -> VendorMetadata:
    return _read("emsa_msa", path)


def read_prz(path: Path) -> VendorMetadata:
    meta = _read("panta_rhei_prz", path)
    if not meta.original_metadata:
        meta.original_metadata = {"meta_data": PRZ_PICKLE_NOTE}
    return meta


def read_mib(path: Path) -> VendorMetadata:
    return _read("merlin_mib", path)


def read_merlin_hdr(path: Path) -> VendorMetadata:
    """A Merlin ``.hdr`` registers the ``.mib`` beside it (same name): the header alone has
    no frames."""
    mib = next(
        (p for p in (path.with_suffix(".mib"), path.with_suffix(".MIB")) if p.is_file()), None
    )
    if mib is None:
        raise RejectedMessage(
            "unreadable_file", f"{path}: a Merlin header without its .mib beside it"
        )
    meta = _read("merlin_mib", mib)
    meta.format = "merlin_hdr"
    return meta
