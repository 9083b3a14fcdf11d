"""Response bodies of the REST API (pydantic), with examples for the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_T = "2026-03-02T08:00:00Z"


class _Model(BaseModel):
    # from_attributes: a schema whose fields match a store record is built from the record
    # (``Instrument.model_validate(record, from_attributes=True)``), not field by field.
    model_config = ConfigDict(frozen=True, from_attributes=True)


class ErrorBody(_Model):
    """Every error response: a stable code and a message for people."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": "instrument_not_found", "detail": "instrument 'x' not found"}]
        }
    )
    error: str = Field(description="stable snake_case error code")
    detail: str = Field(description="what went wrong, for people")


class Health(_Model):
    status: Literal["ok"] = "ok"


class Ready(_Model):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "schema_revision": "0004"}]}
    )
    status: Literal["ready"] = "ready"
    schema_revision: str


class Me(_Model):
    """Who the token belongs to and what it may see."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "alice", "role": "viewer", "instruments": ["nion-ustem-01"]}]
        }
    )
    name: str
    role: Literal["viewer", "operator", "auditor", "admin"]
    instruments: list[str] | None = Field(
        description="granted instrument ids; null for admins, who see every instrument"
    )


class User(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "alice",
                    "role": "viewer",
                    "created_at": _T,
                    "disabled": False,
                    "instruments": ["nion-ustem-01"],
                }
            ]
        }
    )
    name: str
    role: Literal["viewer", "operator", "auditor", "admin"]
    created_at: datetime
    disabled: bool
    instruments: list[str]


class Instrument(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "nion-ustem-01",
                    "vendor": "Nion",
                    "model": "UltraSTEM 100",
                    "serial_number": "US-0042",
                    "control_software_version": "Swift 16.9",
                    "created_at": _T,
                    "updated_at": _T,
                }
            ]
        }
    )
    id: str = Field(description="persistent instrument id")
    vendor: str | None
    model: str | None
    serial_number: str | None
    control_software_version: str | None
    created_at: datetime
    updated_at: datetime


class Channel(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "gun.high_tension",
                    "subsystem": "gun",
                    "quantity": "voltage",
                    "unit": "V",
                    "version": 1,
                    "source_unit": "kV",
                    "lower": 0.0,
                    "upper": 350000.0,
                    "calibration": None,
                    "valid_from": _T,
                }
            ]
        }
    )
    name: str
    subsystem: str
    quantity: str
    unit: str = Field(description="canonical unit of stored values (SI)")
    version: int = Field(description="current version (source unit, limits, calibration)")
    source_unit: str = Field(description="unit the instrument reports in")
    lower: float | None = Field(description="plausible-value lower limit [unit]")
    upper: float | None = Field(description="plausible-value upper limit [unit]")
    calibration: dict[str, Any] | None
    valid_from: datetime


class Estimate(_Model):
    quantity: str = Field(description="twin state quantity (defocus, energy, ...)")
    value: float = Field(description="estimate [unit]")
    std: float | None = Field(description="standard deviation [unit], null when unknown")
    unit: str = Field(description="unit in the twin's conventions (Å, eV, mrad, ...)")
    time: datetime = Field(description="when the twin made the estimate")
    age_s: float = Field(description="at - time [s]")
    calibration_version: str
    twin_version: str


class ChannelValue(_Model):
    channel: str
    subsystem: str
    quantity: str
    unit: str
    value: float = Field(description="last recorded value [unit]")
    source_time: datetime = Field(description="the instrument's time of the sample")
    ingest_time: datetime = Field(description="when the sample was received")
    age_s: float = Field(description="at - source_time [s]")


class State(_Model):
    """The instrument at one time: the twin's estimates and the last recorded sensor values."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "instrument_id": "nion-ustem-01",
                    "at": "2026-03-02T08:10:00Z",
                    "estimates": [
                        {
                            "quantity": "defocus",
                            "value": 52.1,
                            "std": 0.8,
                            "unit": "Å",
                            "time": "2026-03-02T08:09:59.9Z",
                            "age_s": 0.1,
                            "calibration_version": "cal-2026-03",
                            "twin_version": "0.1.0",
                        }
                    ],
                    "channels": [
                        {
                            "channel": "gun.high_tension",
                            "subsystem": "gun",
                            "quantity": "voltage",
                            "unit": "V",
                            "value": 200000.0,
                            "source_time": "2026-03-02T08:09:59.99Z",
                            "ingest_time": "2026-03-02T08:10:00.01Z",
                            "age_s": 0.01,
                        }
                    ],
                }
            ]
        }
    )
    instrument_id: str
    at: datetime
    estimates: list[Estimate]
    channels: list[ChannelValue]


class TelemetryPoint(_Model):
    """A raw sample (``n`` = 1, mean = min = max = the value, stddev null) or a bucket."""

    time: datetime = Field(description="sample time, or bucket start")
    mean: float
    min: float
    max: float
    n: int = Field(description="samples in the point")
    stddev: float | None = Field(description="sample standard deviation, null when n < 2")


class TelemetrySeries(_Model):
    channel: str
    unit: str
    points: list[TelemetryPoint]


class Telemetry(_Model):
    """Telemetry of several channels over ``[start, end)``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "instrument_id": "nion-ustem-01",
                    "level": "1m",
                    "bucket_s": 60.0,
                    "start": _T,
                    "end": "2026-03-02T09:00:00Z",
                    "series": [
                        {
                            "channel": "gun.high_tension",
                            "unit": "V",
                            "points": [
                                {
                                    "time": _T,
                                    "mean": 200000.1,
                                    "min": 199999.8,
                                    "max": 200000.4,
                                    "n": 6000,
                                    "stddev": 0.12,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )
    instrument_id: str
    level: Literal["raw", "1m", "1h"] = Field(
        description="raw samples, or buckets computed from raw samples / 1 m / 1 h rollups"
    )
    bucket_s: float | None = Field(description="bucket width [s], null for raw samples")
    start: datetime = Field(description="start of the range covered (bucket-aligned)")
    end: datetime = Field(description="end of the range covered, excluded")
    series: list[TelemetrySeries]


class Flag(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "kind": "drift",
                    "quantity": "defocus",
                    "channel": "objective.lens_current",
                    "time": _T,
                    "end_time": None,
                    "expected": 52.0,
                    "observed": 61.3,
                    "residual": 9.3,
                    "tolerance": 4.0,
                    "severity": "warning",
                    "twin_version": "0.1.0",
                    "calibration_version": "cal-2026-03",
                    "detail": {"statistic": "cusum"},
                    "created_at": _T,
                }
            ]
        }
    )
    id: int
    kind: str
    quantity: str | None
    channel: str | None
    time: datetime
    end_time: datetime | None
    expected: float | None
    observed: float | None
    residual: float | None
    tolerance: float | None
    severity: str
    twin_version: str
    calibration_version: str
    detail: dict[str, Any]
    created_at: datetime


class Calibration(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": "cal-2026-03",
                    "valid_from": _T,
                    "body": {"objective_defocus_per_amp": 1.2e4},
                    "created_at": _T,
                }
            ]
        }
    )
    version: str
    valid_from: datetime = Field(description="in force from here until the next version")
    body: dict[str, Any]
    created_at: datetime


class Gap(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "holder.temperature",
                    "start": _T,
                    "end": "2026-03-02T08:05:00Z",
                    "duration_s": 300.0,
                }
            ]
        }
    )
    channel: str
    start: datetime
    end: datetime
    duration_s: float


class AuditCheckpoint(_Model):
    """A signed statement of the audit log's Merkle tree: its size and root hash."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "origin": "beamtwin/audit",
                    "tree_size": 0,
                    "root_hash": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
                    "public_key": "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=",
                    "signature": "...",
                    "checkpoint": (
                        "beamtwin/audit\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
                    ),
                    "created_at": _T,
                }
            ]
        }
    )
    origin: str = Field(description="names the log (first line of the checkpoint)")
    tree_size: int = Field(description="entries covered: seq 0 .. tree_size - 1")
    root_hash: str = Field(description="RFC 6962 Merkle tree hash, standard base64")
    public_key: str = Field(description="Ed25519 public key of the signer, base64 raw 32 bytes")
    signature: str = Field(description="Ed25519 signature of `checkpoint`, base64")
    checkpoint: str = Field(description="the signed text: origin, size, root, one per line")
    created_at: datetime | None = Field(description="when the checkpoint was stored")


class AuditEntry(_Model):
    """One audit log entry; `leaf_hash` = SHA-256(0x00 || canonical JSON of the other fields)."""

    seq: int = Field(description="position in the log and leaf index in the tree, from 0")
    time: datetime = Field(description="when the action was committed")
    actor: str = Field(description="who acted: an API user or cli:<os user>")
    action: str = Field(description="user.add, grant.add, token.revoke, calibration.store, ...")
    subject: str = Field(description="what was acted on: user:alice, grant:alice/stem-01, ...")
    before: Any = Field(description="the subject's state before, null when it did not exist")
    after: Any = Field(description="the subject's state after, null when it was removed")
    reason: str | None = Field(description="why, as given by the actor")
    leaf_hash: str = Field(description="the stored leaf hash, hex")


class AuditInclusionProof(_Model):
    """RFC 6962 audit path of entry `seq` in the tree of `tree_size` entries."""

    seq: int
    tree_size: int
    leaf_hash: str = Field(description="the entry's stored leaf hash, hex")
    path: list[str] = Field(description="sibling hashes from the leaf up, base64")


class AuditConsistencyProof(_Model):
    """RFC 6962 consistency proof between the trees of sizes `first` and `second`."""

    first: int
    second: int
    path: list[str] = Field(description="RFC 6962 PROOF(first, D[second]) hashes, base64")


# ---------------------------------------------------------------------------- datasets
_DS = "ds-0123456789abcdef0123456789abcdef"
_SNAPSHOT_SUMMARY_EXAMPLE: dict[str, Any] = {
    "version": 2,
    "created_at": "2026-03-02T08:15:00Z",
    "actor": "alice",
    "reason": "HT read from the wrong Velox tag",
    "overall": "disagrees",
    "verdict_counts": {"consistent": 11, "disagrees": 1},
    "body_sha256": "9f2c...e1",
    "twin_version": "0.1.0",
    "calibration_version": "cal-2026-03",
    "telemetry_complete": True,
}
_DATASET_EXAMPLE: dict[str, Any] = {
    "id": _DS,
    "instrument_id": "nion-ustem-01",
    "start_time": "2026-03-02T08:10:00Z",
    "end_time": "2026-03-02T08:10:30Z",
    "time_source": "file_metadata",
    "file": {
        "uri": "file:///data/2026-03-02/scan_0001.emd",
        "name": "scan_0001.emd",
        "sha256": "5d41...7c",
        "size_bytes": 52428800,
        "format": "velox_emd",
    },
    "operator": "alice",
    "proposal": "P-2026-017",
    "source": "register",
    "record_sha256": "a1b2...ff",
    "registered_at": "2026-03-02T08:11:00Z",
    "received_at": "2026-03-02T08:11:01Z",
    "current": _SNAPSHOT_SUMMARY_EXAMPLE,
}


class DatasetFile(_Model):
    uri: str = Field(description="where the file lies")
    name: str
    sha256: str = Field(description="SHA-256 of the file's bytes, hex")
    size_bytes: int
    format: str


class SnapshotSummary(_Model):
    """A verified snapshot without its body: version, who made it and why, verdicts."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SNAPSHOT_SUMMARY_EXAMPLE]})
    version: int = Field(description="1, 2, ...; the highest is the current snapshot")
    created_at: datetime
    actor: str = Field(description="who made this version: the snapshot worker or a person")
    reason: str = Field(description="why this version was made")
    overall: str = Field(
        description="worst verdict of the fields: disagrees > stale > placeholder > missing > "
        "unverifiable > consistent"
    )
    verdict_counts: dict[str, int] = Field(description="number of fields per verdict")
    body_sha256: str = Field(description="SHA-256 of the body's canonical JSON, hex")
    twin_version: str
    calibration_version: str
    telemetry_complete: bool = Field(
        description="the instrument's telemetry covered the acquisition when this was made"
    )


class Snapshot(SnapshotSummary):
    """A verified snapshot with its body: state of the instrument during the acquisition,
    channel statistics and gaps, and a verdict per metadata field of the file."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": _DS,
                    **_SNAPSHOT_SUMMARY_EXAMPLE,
                    "body": {
                        "schema": "beamtwin.snapshot.v1",
                        "dataset_id": _DS,
                        "instrument_id": "nion-ustem-01",
                        "window": {"start": "2026-03-02T08:10:00Z", "end": "2026-03-02T08:10:30Z"},
                        "fields": {
                            "high_tension": {
                                "verdict": "disagrees",
                                "reported": 300000.0,
                                "expected": 200000.0,
                                "unit": "V",
                                "tolerance": 500.0,
                                "residual": 100000.0,
                                "quality": "ok",
                                "source": "Optics.AccelerationVoltage",
                                "quantity": "energy",
                                "note": None,
                            }
                        },
                    },
                }
            ]
        }
    )
    dataset_id: str
    body: dict[str, Any] = Field(
        description="the snapshot document (schema beamtwin.snapshot.v1, SI units)"
    )


class Dataset(_Model):
    """A registered acquisition and a summary of its current snapshot (null until verified)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DATASET_EXAMPLE]})
    id: str = Field(description="dataset id, ds- and 32 hex digits")
    instrument_id: str
    start_time: datetime = Field(description="start of the acquisition")
    end_time: datetime = Field(description="end of the acquisition")
    time_source: str = Field(description="where the acquisition times come from")
    file: DatasetFile
    operator: str | None
    proposal: str | None
    source: str = Field(description="how it was registered: register, watch or bluesky")
    record_sha256: str = Field(description="SHA-256 of the record's canonical JSON, hex")
    registered_at: datetime
    received_at: datetime = Field(description="when the store received the record")
    current: SnapshotSummary | None = Field(description="the current (newest) snapshot")


class DatasetDetail(Dataset):
    """A dataset with the acquisition event as it was received."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**_DATASET_EXAMPLE, "event": {"dataset_id": _DS, "...": "..."}}]
        }
    )
    event: dict[str, Any] = Field(description="the acquisition event (beamtwin.acquisition.v1)")


class FieldCorrection(BaseModel):
    """New values of one verified field; attributes left out keep their value."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"verdict": "consistent", "note": "HT checked"}]},
    )
    verdict: (
        Literal["consistent", "disagrees", "stale", "placeholder", "missing", "unverifiable"] | None
    ) = None
    reported: float | str | None = Field(
        default=None, description="the value the file reports [unit]"
    )
    expected: float | None = Field(default=None, description="what the twin expects [unit]")
    unit: str | None = Field(default=None, max_length=64)
    tolerance: float | None = None
    residual: float | None = None
    quality: (
        Literal["ok", "placeholder", "disconnected_default", "rounded", "unit_ambiguous"] | None
    ) = None
    note: str | None = Field(default=None, max_length=2000)


class SnapshotCorrection(BaseModel):
    """A person's correction of the current snapshot: new values of named fields and why."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "reason": "HT tag of this Velox version is in kV; value re-read by hand",
                    "fields": {"high_tension": {"verdict": "consistent", "reported": 200000.0}},
                }
            ]
        },
    )
    reason: str = Field(
        min_length=1, max_length=2000, description="why the snapshot is corrected (required)"
    )
    fields: dict[str, FieldCorrection] = Field(
        min_length=1, description="field name (as in the snapshot's `fields`) -> new values"
    )


class ProvDocument(BaseModel):
    """The dataset's provenance graph as a W3C PROV-JSON document."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "prefix": {"beamtwin": "https://beamtwin.example/ns#"},
                    "entity": {f"beamtwin:dataset/{_DS}": {"prov:label": "scan_0001.emd"}},
                    "activity": {
                        f"beamtwin:acquisition/{_DS}": {
                            "prov:startTime": "2026-03-02T08:10:00Z",
                            "prov:endTime": "2026-03-02T08:10:30Z",
                        }
                    },
                    "agent": {"beamtwin:instrument/nion-ustem-01": {}},
                    "wasGeneratedBy": {
                        "_:g1": {
                            "prov:entity": f"beamtwin:dataset/{_DS}",
                            "prov:activity": f"beamtwin:acquisition/{_DS}",
                        }
                    },
                }
            ]
        },
    )
    prefix: dict[str, str] | None = None
    entity: dict[str, Any] | None = None
    activity: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None
