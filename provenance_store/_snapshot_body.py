"""The body of a verified snapshot, ``beamtwin.snapshot.v1``: the versioned contract between
the twin that computes it (as plain JSON data, :func:`twin.build_snapshot`) and everything
that stores, serves and reads it.

:class:`SnapshotBodyV1` is that contract as a pydantic model. The worker validates a body
once, where it is built and before it is stored (:func:`validate_snapshot_body`); its JSON
Schema is committed as ``docs/schemas/snapshot-body.v1.json`` (``python -m
provenance_store._schema`` writes it, a test fails when it drifts). docs/snapshots.md says
what each key means.

Every key is always present (``null`` where there is no value), so the schema can require
them all; no other key is allowed. Times are ISO 8601 UTC with a ``Z``, microseconds only
when not zero; numbers are finite (a non-finite value is written as ``null``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from provenance_store._errors import InvalidRecord

SNAPSHOT_BODY_SCHEMA_ID = "beamtwin.snapshot.v1"
#: A time in a body: ISO 8601 UTC, ``Z``, microseconds only when not zero.
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z$"

UtcTime = Annotated[
    str,
    Field(
        pattern=TIME_PATTERN,
        description="ISO 8601 UTC with `Z`; microseconds only when not zero.",
    ),
]
Verdict = Literal["consistent", "disagrees", "stale", "placeholder", "missing", "unverifiable"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SnapshotWindow(_Part):
    """The acquisition interval the snapshot covers."""

    start: UtcTime
    end: UtcTime


class SnapshotTelemetry(_Part):
    """How complete the telemetry was when the snapshot was computed."""

    complete: bool = Field(
        description="Every needed channel (that has any telemetry) had a sample at or after "
        "the window's end."
    )
    watermark: UtcTime | None = Field(
        description="How far the needed telemetry reached (the earliest of the channels' last "
        "samples, capped at the end); null without telemetry."
    )


class SnapshotParameters(_Part):
    """The limits the verdicts were made with (``twin.SnapshotConfig``)."""

    lookback_s: float = Field(ge=0, description="History searched for a stale value [s].")
    context_s: float = Field(ge=0, description="Telemetry before the start used [s].")
    staleness_limit_s: float = Field(
        ge=0, description="A channel silent longer than this makes its fields unverifiable [s]."
    )
    gap_threshold_s: float = Field(gt=0, description="Shortest gap listed [s].")
    k: float = Field(ge=0, description="Coverage factor on the noise term of a tolerance [1].")


class WindowStatistics(_Part):
    """Statistics of one twin quantity over the window, in the unit of the field it serves."""

    unit: str
    n: int = Field(ge=0, description="Samples in the window (non-finite ones dropped).")
    mean: float | None = Field(description="Of the window's samples, else the as-of value.")
    min: float | None
    max: float | None
    std: float | None = Field(description="Sample standard deviation; null when n < 2.")
    drift_rate: float | None = Field(description="Least-squares slope [unit/s]; null when n < 2.")
    as_of_time: UtcTime | None = Field(
        description="Time of the as-of sample when the window holds none, else null."
    )


class ChannelStatistics(WindowStatistics):
    """Statistics of one telemetry channel over the window (canonical unit), with staleness
    and gaps."""

    last_sample_age_s: float | None = Field(
        description="Start minus the time of the last sample at or before it [s]; null when "
        "there is none."
    )
    gaps: list[tuple[UtcTime, UtcTime]] = Field(
        description="[start, end] of each stretch longer than gap_threshold_s without a sample."
    )


class FieldVerdict(_Part):
    """The verdict on one metadata field of the data file."""

    verdict: Verdict
    reported: float | str | None = Field(
        description="The file's value (canonical unit; text for text fields), verbatim."
    )
    expected: float | None = Field(description="The twin's value in the field's unit.")
    unit: str | None = Field(description="The field's canonical unit; null for text fields.")
    tolerance: float | None
    residual: float | None = Field(description="reported - expected (compared fields only).")
    quality: str | None = Field(description="The field's quality marker, from the event.")
    source: str | None = Field(description="The field's vendor key, from the event.")
    quantity: str | None = Field(description="The twin quantity `expected` comes from.")
    channel: str | None = Field(description="The channel `expected` comes from.")
    matched_time: UtcTime | None = Field(
        description="For `stale`: the time whose state the reported value matches."
    )
    note: str | None = Field(description="Why (not compared, unit error, silent channel, ...).")


class SnapshotFlag(_Part):
    """One of the twin's flags overlapping the window."""

    kind: str
    quantity: str | None
    channel: str | None
    time: UtcTime
    severity: str


class ImageComparison(_Part):
    value: float = Field(description="The other side's value [the measurement's unit].")
    z_score: float = Field(description="(measured - value) / the combined sd.")
    verdict: Literal["consistent", "disagrees"] = Field(description="|z| > 3 disagrees.")


class ImageCheck(_Part):
    measured: float = Field(description="What the image itself shows (acquisition event).")
    sd: float = Field(ge=0, description="Its standard uncertainty.")
    unit: str | None = Field(description="Unit of `measured`, `sd` and the values compared.")
    quality: float | None = Field(description="The measurement's quality measure.")
    file: ImageComparison | None = Field(
        description="Against the file's metadata (a sound value only); null without one."
    )
    twin: ImageComparison | None = Field(
        description="Against the twin's estimate over the window; null without one."
    )


class SnapshotBodyV1(_Part):
    """What the instrument's telemetry and the twin recorded during one acquisition, and a
    verdict on each value its data file claims (docs/snapshots.md)."""

    model_config = ConfigDict(
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        title="SnapshotBodyV1",
    )

    schema_id: Literal["beamtwin.snapshot.v1"] = Field(
        alias="schema", description="Body schema id; always `beamtwin.snapshot.v1`."
    )
    dataset_id: str = Field(pattern=r"^ds-[0-9a-f]{32}$", description="From the event.")
    instrument_id: str = Field(min_length=1, description="From the event.")
    window: SnapshotWindow
    twin_version: str = Field(description="The twin that derived the state.")
    calibration_version: str = Field(description="The calibration in force at the start.")
    telemetry: SnapshotTelemetry
    parameters: SnapshotParameters
    state: dict[str, WindowStatistics] = Field(
        description="Twin quantity -> its window statistics (only those a field uses)."
    )
    channels: dict[str, ChannelStatistics] = Field(
        description="Telemetry channel -> its window statistics."
    )
    fields: dict[str, FieldVerdict] = Field(description="Acquisition field -> its verdict.")
    flags: list[SnapshotFlag] = Field(description="The twin's flags in the window, by time.")
    images: dict[str, ImageCheck] = Field(
        description="Image-measured quantity (the acquisition event's `image_measurements`) "
        "-> its checks against the file's metadata and the twin; empty without any."
    )


def validate_snapshot_body(body: Mapping[str, Any]) -> SnapshotBodyV1:
    """``body`` as a :class:`SnapshotBodyV1`.

    Raises:
        InvalidRecord: the body does not follow ``beamtwin.snapshot.v1`` (the message names
            each offending key).
    """
    try:
        return SnapshotBodyV1.model_validate(body)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidRecord(f"not a {SNAPSHOT_BODY_SCHEMA_ID} body: {problems}") from None
