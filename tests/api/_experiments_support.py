"""Experiment jobs of the API tests' world, made by the store's functions: a finished one
(with a real zarr array as its result) on each instrument."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import zarr

import provenance_store as store

STATE = {"energy": 200e3, "convergence_semiangle": 20.0, "aberrations": {"C10": -30.0}}


def spec_document(instrument: str | None, **fields: Any) -> dict[str, Any]:
    """A small HRTEM spec (a fresh seed unless given)."""
    return {
        "instrument": instrument,
        "state": STATE,
        "specimen": {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 1}},
        "mode": {"mode": "hrtem"},
        "sampling": 0.1,
        "seed": secrets.randbelow(2**40),
        **fields,
    }


@dataclass(frozen=True)
class Experiments:
    granted: str  # a finished job on the granted instrument
    ungranted: str  # a finished job on the ungranted instrument


def finished_job(conn: sa.Connection, instrument: str, folder: Path) -> str:
    digest = hashlib.sha256(secrets.token_bytes(8)).hexdigest()
    job, _ = store.submit_job(
        conn=conn,
        kind="experiment",
        owner="world",
        spec=spec_document(instrument),
        spec_sha256=digest,
        seed=1,
        instrument_id=instrument,
        state={"state": STATE, "uncertainty": None},
        state_sha256=digest,
        cost={"seconds": 0.1, "memory_bytes": 1000},
    )
    claimed = store.claim_job(conn=conn, worker="world", lease_seconds=60, kinds=["experiment"])
    while claimed is not None and claimed.id != job.id:  # jobs other tests queued
        store.fail_job(conn=conn, job_id=claimed.id, worker="world", error="not this test's")
        claimed = store.claim_job(conn=conn, worker="world", lease_seconds=60)
    image = np.outer(np.arange(8.0), np.ones(6))
    url = str(folder / job.id / "arrays.zarr")
    stored = zarr.open_group(url, mode="w").create_array("image", shape=(8, 6), dtype="f8")
    stored[...] = image
    stored.attrs.update({"dims": ["x", "y"], "sampling": [0.1, 0.1], "units": ["Å", "Å"]})
    result = store.JobResultIn(
        name="image",
        media_type="application/x-zarr",
        uri=f"{url}/image",
        sha256=hashlib.sha256(image.tobytes()).hexdigest(),
        size_bytes=image.nbytes,
        shape=(8, 6),
        dtype="float64",
    )
    store.complete_job(conn=conn, job_id=job.id, worker="world", results=[result])
    return job.id
