"""A data file's acquisition event: its identity (hash, size, times) and what its reader found."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

from ingest._acquisition import (
    ACQUISITION_SCHEMA_ID,
    MAPPING_VERSION,
    AcquisitionEventV1,
    FileInfo,
    ReaderInfo,
    TimeSource,
    dataset_id_for,
)
from ingest._errors import RejectedMessage
from ingest._vendors._dispatch import read_vendor_file
from ingest._vendors._image import measure_image
from ingest._vendors._standard import fill_from_standard


def rosettasciio_version() -> str:
    try:
        return importlib_metadata.version("rosettasciio")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - a broken install
        return "unknown"


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
    measure_images: bool = True,
    standard: str | None = None,
    cbed: bool = False,
) -> AcquisitionEventV1:
    """Read ``path`` and build its acquisition event.

    With ``measure_images`` the twin measures the data itself (Thon rings of an HRTEM image,
    the CBED disk when ``cbed``, the rings of a declared ``standard`` such as ``"Au"``); see
    :mod:`._image`.

    Raises:
        RejectedMessage: as :func:`read_vendor_file`; ``schema`` when ``instrument_id`` is
            not a valid id.
    """
    path = path.resolve() if path.exists() else path.absolute()
    meta = read_vendor_file(path)
    fill_from_standard(meta)
    sha256, size = file_digest(path)
    mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
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
                "image_measurements": (
                    measure_image(path, meta.state, standard=standard, cbed=cbed)
                    if measure_images
                    else None
                ),
            }
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise RejectedMessage("schema", f"{path}: {exc}") from None
