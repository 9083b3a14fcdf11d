"""What the calibration and forecast job submissions share (``api/_calibration_jobs.py``,
``api/_forecast_jobs.py``): the hashes that find a job again, the versions recorded with it,
the calibration in force as a twin calibration, and reading a finished job's result (its
document and arrays, as the worker stored them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime
from importlib import metadata
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import twin
from api._errors import InvalidRequest

__all__ = ["calibration_prior", "job_arrays", "job_document", "job_sha256", "job_versions"]

BEAMTWIN_VERSION = "0.1.0"


def job_sha256(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def job_versions() -> dict[str, str]:
    out = {"beamtwin": BEAMTWIN_VERSION, "numpy": np.__version__}
    for name, dist in (("pyro", "pyro-ppl"), ("torch", "torch")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(dist)
    return out


def calibration_prior(
    conn: sa.Connection, instrument_id: str, at: datetime
) -> tuple[twin.Calibration, bool]:
    """The calibration in force at ``at`` as a twin calibration, and whether one is stored
    (else the twin's default calibration of the instrument is the prior).

    Raises:
        InvalidRequest: the calibration in force is no twin calibration.
    """
    record = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=at)
    if record is None:
        return twin.Calibration(instrument_id=instrument_id, version="default"), False
    try:
        return twin.Calibration.from_dict(record.body), True
    except (twin.TwinError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"the calibration in force cannot be used: {exc}") from None


# ---------------------------------------------------------------------------- results
def job_document(results: list[store.JobResultRecord]) -> dict[str, Any] | None:
    """The parameters document stored with a job's arrays (the zarr group's ``parameters``):
    a calibration's posterior summary or a forecast; ``None`` when there is none."""
    import zarr

    for result in results:
        if result.media_type != "application/x-zarr":
            continue
        group_url = result.uri.rsplit("/", 1)[0]
        group = zarr.open_group(group_url, mode="r")
        document = group.attrs.get("parameters")
        return dict(document) if isinstance(document, dict) else None
    return None


def job_arrays(results: list[store.JobResultRecord]) -> dict[str, np.ndarray]:
    """The arrays of a job's result, by name."""
    import zarr

    return {
        r.name: np.asarray(zarr.open_array(r.uri, mode="r")[...])
        for r in results
        if r.media_type == "application/x-zarr"
    }
