"""Experiment results as artifacts under the artifact root (``BEAMTWIN_ARTIFACT_ROOT``: a
local folder or any fsspec URL): one zarr group of arrays and a NeXus/HDF5 file per attempt
of a job, with the SHA-256 of each.

An attempt writes under ``<root>/jobs/<job id>/attempt-<n>/``; only the attempt that
completes the job is recorded in the store, and the folders of the others (a worker killed
mid-write, a failed or cancelled run) are removed, so nothing half-written stays.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import numpy as np

from provenance_store import JobResultIn
from simulations import ExperimentResult, nexus_bytes

__all__ = ["array_sha256", "attempt_url", "remove_attempts", "write_result"]

ZARR_MEDIA_TYPE = "application/x-zarr"
NEXUS_MEDIA_TYPE = "application/x-hdf5"


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def attempt_url(root: str, job_id: str, attempt: int) -> str:
    return _join(root, "jobs", job_id, f"attempt-{attempt}")


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 (hex) of an array's dtype, shape and little-endian C-order bytes."""
    data = np.ascontiguousarray(array)
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    digest = hashlib.sha256(json.dumps([data.dtype.str, list(data.shape)]).encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def remove_attempts(root: str, job_id: str, *, keep: str | None = None) -> list[str]:
    """Remove the attempt folders of a job except ``keep``; the removed URLs."""
    fs, path = fsspec.core.url_to_fs(_join(root, "jobs", job_id))
    if not fs.exists(path):
        return []
    removed = []
    keep_path = None if keep is None else fsspec.core.url_to_fs(keep)[1].rstrip("/")
    for entry in fs.ls(path, detail=False):
        if keep_path is not None and entry.rstrip("/") == keep_path:
            continue
        fs.rm(entry, recursive=True)
        removed.append(entry)
    return removed


def write_result(url: str, result: ExperimentResult) -> tuple[list[JobResultIn], dict[str, Any]]:
    """Write the arrays as the zarr group ``<url>/arrays.zarr`` and a NeXus file
    ``<url>/result.nxs``; the result rows (one per array, ``uri`` = the zarr array's URL,
    and one for the NeXus file) and the parameters document written beside them."""
    import zarr

    arrays_url = _join(url, "arrays.zarr")
    group = zarr.open_group(arrays_url, mode="w")
    rows = []
    for name, array in sorted(result.arrays.items()):
        data = np.ascontiguousarray(array, dtype=np.float64)
        stored = group.create_array(name, shape=data.shape, dtype=data.dtype, overwrite=True)
        stored[...] = data
        stored.attrs.update(dict(result.axes.get(name, {})))
        rows.append(
            JobResultIn(
                name=name,
                media_type=ZARR_MEDIA_TYPE,
                uri=_join(arrays_url, name),
                sha256=array_sha256(data),
                size_bytes=int(data.nbytes),
                shape=tuple(int(n) for n in data.shape),
                dtype=str(data.dtype),
            )
        )
    group.attrs["parameters"] = json.loads(json.dumps(result.parameters, default=str))
    nexus = nexus_bytes(result.arrays, result.axes, result.parameters)
    nexus_url = _join(url, "result.nxs")
    with fsspec.open(nexus_url, "wb") as handle:
        handle.write(nexus)
    rows.append(
        JobResultIn(
            name="result.nxs",
            media_type=NEXUS_MEDIA_TYPE,
            uri=nexus_url,
            sha256=hashlib.sha256(nexus).hexdigest(),
            size_bytes=len(nexus),
        )
    )
    return rows, result.parameters
