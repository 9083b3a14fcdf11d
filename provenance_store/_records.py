"""Record types that go in and out of the store.

Times are timezone-aware UTC ``datetime`` objects, or integer microseconds since the Unix epoch
(``*_us`` arrays). Sample values are in the channel's canonical unit, the one SI unit of its
quantity kind (``V``, ``A``, ``m``, ``rad``, ``K``, ``Pa``, ``s``, ``Hz``, ``1``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from provenance_store._errors import InvalidRecord, WrongType
from provenance_store._time import MAX_TIME_US, MIN_TIME_US, from_us

#: Where on the column a sensor sits (the ``channel.subsystem`` CHECK constraint).
SUBSYSTEMS: tuple[str, ...] = (
    "gun",
    "condenser",
    "objective",
    "corrector",
    "projector",
    "stage",
    "holder",
    "detector",
    "vacuum",
    "scan",
)
#: Physical kinds of channel values (the ``channel.quantity`` CHECK constraint).
QUANTITY_KINDS: tuple[str, ...] = (
    "voltage",
    "current",
    "length",
    "angle",
    "temperature",
    "pressure",
    "time",
    "frequency",
    "dimensionless",
)
#: A persistent instrument id: letters, digits and ``._:-``, at most 128 characters.
INSTRUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_INSTRUMENT_ID_RE = re.compile(INSTRUMENT_ID_PATTERN)
#: Longest channel name [characters].
MAX_CHANNEL_NAME_LENGTH = 128

RangeLevel = Literal["raw", "1m", "1h"]


# ---------------------------------------------------------------------------- instruments
@dataclass(frozen=True, slots=True)
class InstrumentIn:
    """An instrument to register (or whose metadata to update).

    ``id`` is the persistent, human-readable id (``nion-ustem-01``); it never changes. Fields left
    ``None`` keep what the store already holds: registration never erases metadata.
    """

    id: str
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    control_software_version: str | None = None

    def __post_init__(self) -> None:
        check_instrument_id(self.id)


@dataclass(frozen=True, slots=True)
class InstrumentRecord:
    """A registered instrument. ``created_at``/``updated_at`` are UTC."""

    id: str
    vendor: str | None
    model: str | None
    serial_number: str | None
    control_software_version: str | None
    created_at: datetime
    updated_at: datetime


def check_instrument_id(instrument_id: str) -> str:
    """``instrument_id`` if it is a well-formed persistent id, else :class:`InvalidRecord`."""
    if not isinstance(instrument_id, str) or not _INSTRUMENT_ID_RE.match(instrument_id):
        raise InvalidRecord(
            f"instrument id {instrument_id!r} is not a persistent id (letters, digits and "
            "'._:-', starting with a letter or digit, at most 128 characters)"
        )
    return instrument_id


# ---------------------------------------------------------------------------- channels
@dataclass(frozen=True, slots=True)
class ChannelDeclaration:
    """A channel as a publisher declares it.

    Attributes:
        name: the channel's name on its instrument (``objective.lens_current``).
        subsystem: one of ``SUBSYSTEMS``.
        quantity: one of ``QUANTITY_KINDS``.
        canonical_unit: the unit stored values are in (the quantity kind's SI unit, ``A``).
        source_unit: the unit the instrument reports in (``mA``); values are converted before
            they reach the store.
        lower, upper: plausible-value limits [canonical unit], ``None`` for unbounded.
        calibration: the calibration in effect (a JSON object: id, coefficients, ...) or None.

    ``name``, ``subsystem``, ``quantity`` and ``canonical_unit`` are the channel's identity;
    ``source_unit``, the limits and the calibration are versioned.
    """

    name: str
    subsystem: str
    quantity: str
    canonical_unit: str
    source_unit: str
    lower: float | None = None
    upper: float | None = None
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_declaration(self)


def check_declaration(decl: ChannelDeclaration) -> None:
    """:class:`InvalidRecord` unless ``decl`` names a known subsystem and quantity kind and has sane
    limits."""
    if not decl.name or len(decl.name) > MAX_CHANNEL_NAME_LENGTH:
        raise InvalidRecord(
            f"channel name {decl.name!r} must have 1 to {MAX_CHANNEL_NAME_LENGTH} characters"
        )
    if decl.subsystem not in SUBSYSTEMS:
        raise InvalidRecord(
            f"channel {decl.name}: subsystem {decl.subsystem!r} is not one of {SUBSYSTEMS}"
        )
    if decl.quantity not in QUANTITY_KINDS:
        raise InvalidRecord(
            f"channel {decl.name}: quantity {decl.quantity!r} is not one of {QUANTITY_KINDS}"
        )
    if not decl.canonical_unit or not decl.source_unit:
        raise InvalidRecord(f"channel {decl.name}: canonical_unit and source_unit must be given")
    for label, limit in (("lower", decl.lower), ("upper", decl.upper)):
        if limit is not None and math.isnan(limit):
            raise InvalidRecord(f"channel {decl.name}: {label} limit is NaN")
    if decl.lower is not None and decl.upper is not None and decl.lower > decl.upper:
        raise InvalidRecord(
            f"channel {decl.name}: lower limit {decl.lower} is above upper limit {decl.upper}"
        )


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A channel and one of its versions (the current one, unless asked otherwise).

    ``id`` is the stable channel identity that samples refer to; ``version`` counts from 1 and
    grows whenever ``source_unit``, the limits [canonical unit] or the calibration change.
    ``valid_from`` (UTC) is when that version took effect on the instrument.
    """

    id: int
    instrument_id: str
    name: str
    subsystem: str
    quantity: str
    canonical_unit: str
    version: int
    source_unit: str
    lower: float | None
    upper: float | None
    calibration: dict[str, Any] | None
    valid_from: datetime


# ---------------------------------------------------------------------------- samples
_BATCH_DTYPES: dict[str, np.dtype[Any]] = {
    "channel_id": np.dtype(np.int32),
    "source_time_us": np.dtype(np.int64),
    "ingest_time_us": np.dtype(np.int64),
    "value": np.dtype(np.float64),
    "seq": np.dtype(np.int64),
}


@dataclass(frozen=True, eq=False)
class SampleBatch:
    """Telemetry samples to store, as equal-length one-dimensional arrays (native byte order).

    Attributes:
        channel_id: ``int32``, ids of channels (``ChannelRecord.id``).
        source_time_us: ``int64`` [µs since the Unix epoch, UTC], the instrument's clock.
        ingest_time_us: ``int64`` [µs since the Unix epoch, UTC], when the sample was received.
        value: ``float64`` [canonical unit of the channel], finite.
        seq: ``int64``, the publisher's tick counter.

    A sample is identified by ``(channel_id, source_time_us)``: storing the same one twice keeps
    the first.
    """

    channel_id: npt.NDArray[np.int32]
    source_time_us: npt.NDArray[np.int64]
    ingest_time_us: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        n: int | None = None
        for name, dtype in _BATCH_DTYPES.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray):
                raise WrongType(f"SampleBatch.{name} must be a numpy array")
            if array.ndim != 1:
                raise InvalidRecord(
                    f"SampleBatch.{name} must be one-dimensional, got {array.shape}"
                )
            if array.dtype != dtype:
                raise InvalidRecord(
                    f"SampleBatch.{name} must have dtype {dtype}, got {array.dtype}"
                )
            if n is None:
                n = array.shape[0]
            elif array.shape[0] != n:
                raise InvalidRecord(
                    f"SampleBatch arrays differ in length: {name} has {array.shape[0]}, "
                    f"channel_id has {n}"
                )
        if n:
            if not np.isfinite(self.value).all():
                raise InvalidRecord("SampleBatch.value holds NaN or infinite values")
            for name in ("source_time_us", "ingest_time_us"):
                times = getattr(self, name)
                if times.min() < MIN_TIME_US or times.max() > MAX_TIME_US:
                    raise InvalidRecord(f"SampleBatch.{name} holds times outside years 1..9999")

    def __len__(self) -> int:
        return int(self.channel_id.shape[0])


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One point of a series: a raw sample (``n == 1``) or a time bucket.

    ``time`` is the sample time or the bucket start (UTC); ``mean``, ``min``, ``max`` and
    ``stddev`` (sample standard deviation, NaN when ``n < 2``) are in the channel's unit.
    """

    time: datetime
    mean: float
    min: float
    max: float
    n: int
    stddev: float


def _empty_f8() -> npt.NDArray[np.float64]:
    return np.empty(0, dtype=np.float64)


def _empty_i8() -> npt.NDArray[np.int64]:
    return np.empty(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Series:
    """The points of one channel, as equal-length arrays in time order.

    Attributes:
        channel: the channel name.
        unit: the channel's canonical unit, the unit of ``mean``/``min``/``max``/``stddev``.
        time_us: ``int64`` [µs since the Unix epoch, UTC], sample times or bucket starts.
        mean, min, max: ``float64`` [unit]; for raw samples all three are the value.
        n: ``int64``, samples per point (1 for raw samples).
        stddev: ``float64`` [unit], sample standard deviation, NaN where ``n < 2``.
    """

    channel: str
    unit: str
    time_us: npt.NDArray[np.int64] = field(default_factory=_empty_i8)
    mean: npt.NDArray[np.float64] = field(default_factory=_empty_f8)
    min: npt.NDArray[np.float64] = field(default_factory=_empty_f8)
    max: npt.NDArray[np.float64] = field(default_factory=_empty_f8)
    n: npt.NDArray[np.int64] = field(default_factory=_empty_i8)
    stddev: npt.NDArray[np.float64] = field(default_factory=_empty_f8)

    def __len__(self) -> int:
        return int(self.time_us.shape[0])

    def times(self) -> list[datetime]:
        """``time_us`` as UTC datetimes."""
        return [from_us(t) for t in self.time_us.tolist()]

    def points(self) -> list[SeriesPoint]:
        """The series as a list of points."""
        return [
            SeriesPoint(time=from_us(t), mean=m, min=lo, max=hi, n=k, stddev=s)
            for t, m, lo, hi, k, s in zip(
                self.time_us.tolist(),
                self.mean.tolist(),
                self.min.tolist(),
                self.max.tolist(),
                self.n.tolist(),
                self.stddev.tolist(),
                strict=True,
            )
        ]


@dataclass(frozen=True, eq=False)
class RangeResult:
    """Telemetry of several channels over a time range.

    Attributes:
        level: where the points come from: ``"raw"`` samples (``bucket is None``) or raw
            samples aggregated into ``bucket``-wide buckets, or the ``"1m"``/``"1h"`` rollups
            re-aggregated into ``bucket``-wide buckets.
        bucket: the bucket width, ``None`` for raw samples.
        start, end: the time range the points cover (UTC, ``start`` included, ``end``
            excluded). Buckets are aligned to 2000-01-01T00:00Z and returned whole, so for
            bucketed levels this is the requested range widened to bucket edges.
        series: channel name -> its series (empty when the channel has no data in range).
    """

    level: RangeLevel
    bucket: timedelta | None
    start: datetime
    end: datetime
    series: dict[str, Series]


@dataclass(frozen=True, slots=True)
class LastValue:
    """The most recent sample of a channel at some time ``at``.

    ``value`` is in ``unit`` (the canonical unit); ``source_time``/``ingest_time`` are UTC;
    ``age = at - source_time``.
    """

    channel: str
    subsystem: str
    quantity: str
    unit: str
    value: float
    source_time: datetime
    ingest_time: datetime
    age: timedelta


@dataclass(frozen=True, slots=True)
class Gap:
    """An interval ``[start, end]`` (UTC) in which channel ``channel`` has no sample inside."""

    channel: str
    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        """``end - start``."""
        return self.end - self.start


# ---------------------------------------------------------------------------- the twin's output
#: Kinds of twin flags (the ``twin_flag.kind`` CHECK constraint): a reading the model cannot
#: explain, a persistent shift of a channel, a sensor repeating one reading, a silent channel,
#: image-derived state disagreeing with telemetry, a set value (dwell time, aperture) changed.
FLAG_KINDS: tuple[str, ...] = (
    "disagreement",
    "drift",
    "stuck",
    "dropout",
    "image_disagreement",
    "setting_change",
    "clock_offset",
)
#: Severities of twin flags, least severe first (the ``twin_flag.severity`` CHECK constraint).
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class EstimateRecord:
    """The twin's estimate of one state quantity of an instrument at one time.

    Attributes:
        instrument_id: the instrument's persistent id.
        quantity: the state quantity (``defocus``, ``energy``, ... of ``twin.STATE_QUANTITIES``).
        time: the report instant (UTC, microsecond resolution).
        value: the estimate [unit].
        std: its standard deviation [unit], ``None`` when unknown.
        unit: the quantity's unit in the twin's conventions (``Å``, ``eV``, ``mrad``, ...).
        calibration_version, twin_version: what produced the estimate.

    ``(instrument_id, quantity, time)`` identifies it: storing it again keeps the first.
    """

    instrument_id: str
    quantity: str
    time: datetime
    value: float
    std: float | None
    unit: str
    calibration_version: str
    twin_version: str


@dataclass(frozen=True, slots=True)
class FlagIn:
    """Something the twin noticed: a disagreement, drift, stuck sensor, dropout, ...

    Attributes:
        instrument_id: the instrument's persistent id.
        kind: one of ``FLAG_KINDS``.
        quantity: the state quantity concerned (``defocus``), ``None`` for none.
        channel: the telemetry channel concerned (``objective.lens_current``), ``None`` for none.
        time: when it started (UTC); ``end_time`` when it ended, ``None`` while open or for an
            instant.
        expected, observed, residual, tolerance: what the twin expected, what was observed,
            their difference and the tolerance it exceeded [unit of the channel or quantity];
            ``None`` where they do not apply (a non-finite value is stored as ``None``).
        severity: one of ``SEVERITIES``.
        twin_version, calibration_version: what raised the flag.
        detail: further JSON-ready facts (statistic, threshold, false-alarm rate, ...).

    The natural key is ``(instrument_id, kind, quantity, channel, time)``: a flag raised again
    (a replayed window) is not stored twice.
    """

    instrument_id: str
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
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_instrument_id(self.instrument_id)
        if self.kind not in FLAG_KINDS:
            raise InvalidRecord(f"flag kind {self.kind!r} is not one of {FLAG_KINDS}")
        if self.severity not in SEVERITIES:
            raise InvalidRecord(f"flag severity {self.severity!r} is not one of {SEVERITIES}")


@dataclass(frozen=True, slots=True)
class FlagRecord:
    """A stored flag: the fields of :class:`FlagIn`, its row ``id`` and ``created_at`` (UTC)."""

    id: int
    instrument_id: str
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


@dataclass(frozen=True, slots=True)
class TwinCursor:
    """How far the twin worker has processed an instrument's telemetry.

    Attributes:
        instrument_id: the instrument's persistent id.
        processed_until: every sample with a source time before this (UTC) has been processed;
            the next window starts here.
        state: the twin tracker's checkpoint after that window (JSON).
        twin_version, calibration_version: what produced the checkpoint.
        updated_at: when the cursor last moved (UTC, the database's clock).
    """

    instrument_id: str
    processed_until: datetime
    state: dict[str, Any]
    twin_version: str
    calibration_version: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CalibrationRecord:
    """One version of an instrument's calibration.

    ``body`` is the calibration as a JSON object (``twin.Calibration.to_dict()``); the store does
    not interpret it. A version is in force from ``valid_from`` (UTC) until the next version's
    ``valid_from``.
    """

    instrument_id: str
    version: str
    valid_from: datetime
    body: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, eq=False)
class ChannelSamples:
    """The raw samples of one channel in a time range, in time order.

    Attributes:
        channel: the channel name.
        unit: its canonical unit, the unit of ``value``.
        time_us: ``int64`` [µs since the Unix epoch, UTC], source times.
        value: ``float64`` [unit].
    """

    channel: str
    unit: str
    time_us: npt.NDArray[np.int64] = field(default_factory=_empty_i8)
    value: npt.NDArray[np.float64] = field(default_factory=_empty_f8)

    def __len__(self) -> int:
        return int(self.time_us.shape[0])

    def times_s(self) -> npt.NDArray[np.float64]:
        """``time_us`` as float seconds since the Unix epoch [s]."""
        return self.time_us.astype(np.float64) / 1e6


# ---------------------------------------------------------------------------- API access
#: Roles of REST API users (the ``api_user.role`` CHECK constraint). What each may do is the
#: API's business; the store only keeps the name.
API_ROLES: tuple[str, ...] = ("viewer", "operator", "auditor", "admin")


@dataclass(frozen=True, slots=True)
class ApiUserRecord:
    """A REST API user. ``created_at`` is UTC; a disabled user's tokens are all refused."""

    id: int
    name: str
    role: str
    created_at: datetime
    disabled: bool


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    """An API token's bookkeeping (never the token itself: only its SHA-256 is stored).

    Times are UTC; ``expires_at``/``revoked_at``/``last_used_at`` are ``None`` for never.
    ``last_used_at`` is updated at most once a minute.
    """

    id: int
    user_id: int
    user_name: str
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewApiToken:
    """A freshly created token: ``token`` is the secret, returned this once and never again."""

    token: str
    record: ApiTokenRecord


# ---------------------------------------------------------------------------- datasets
#: Where a dataset registration came from (the ``dataset.source`` CHECK constraint).
DATASET_SOURCES: tuple[str, ...] = ("register", "watch", "bluesky")
#: Verdicts of a snapshot field (the ``snapshot.overall`` CHECK constraint).
VERDICTS: tuple[str, ...] = (
    "consistent",
    "disagrees",
    "stale",
    "placeholder",
    "missing",
    "unverifiable",
)
#: The verdicts worst first: a snapshot's ``overall`` verdict is the worst of its fields'
#: (``unverifiable`` when it has none).
VERDICTS_WORST_FIRST: tuple[str, ...] = (
    "disagrees",
    "stale",
    "placeholder",
    "missing",
    "unverifiable",
    "consistent",
)


@dataclass(frozen=True, slots=True)
class DatasetIn:
    """A dataset to register, from an acquisition event its producer has validated already
    (``ingest.dataset_record`` builds it from the event's model): the store takes these
    fields as they are and stores ``event`` (the event's JSON document) verbatim.

    Attributes:
        id: ``ds-`` + the first 32 hex digits of the file's SHA-256.
        start_time, end_time, registered_at: aware datetimes (UTC).
        file_size: [bytes].
        event: the whole acquisition event as a JSON object.
    """

    id: str
    instrument_id: str
    start_time: datetime
    end_time: datetime
    time_source: str
    file_uri: str
    file_name: str
    file_sha256: str
    file_size: int
    file_format: str
    operator: str | None
    proposal: str | None
    registered_at: datetime
    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """A registered dataset: one acquisition event as the store first received it.

    Attributes:
        id: ``ds-`` + the first 32 hex digits of the file's SHA-256.
        instrument_id: the instrument that acquired it.
        start_time, end_time: the acquisition interval (UTC).
        time_source: where the times come from (``file_metadata``, ``file_mtime``, ...).
        file_uri, file_name, file_sha256, file_size, file_format: the file's identity; size
            [bytes], SHA-256 in lower-case hex.
        operator, proposal: as given at registration, ``None`` when not given.
        source: how it was registered (one of ``DATASET_SOURCES``).
        event: the whole acquisition event (JSON object).
        record_sha256: SHA-256 (hex) of the canonical JSON of every other field.
        registered_at: when the event was built (UTC, from the event).
        received_at: when the store received it (UTC, the database's clock).
    """

    id: str
    instrument_id: str
    start_time: datetime
    end_time: datetime
    time_source: str
    file_uri: str
    file_name: str
    file_sha256: str
    file_size: int
    file_format: str
    operator: str | None
    proposal: str | None
    source: str
    event: dict[str, Any]
    record_sha256: str
    registered_at: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One version of a dataset's verified state.

    Attributes:
        dataset_id: the dataset.
        version: 1, 2, ...; the highest is the dataset's current snapshot.
        created_at: when it was stored (UTC, transaction time).
        actor: who stored it (the snapshot worker, or the person who corrected it).
        reason: why this version exists (``initial verification``, the correction's reason).
        body: the snapshot (JSON object, ``beamtwin.snapshot.v1``).
        body_sha256: SHA-256 (hex) of the body's canonical JSON.
        overall: the worst verdict of the body's fields (one of ``VERDICTS``).
        verdict_counts: verdict -> number of fields with it (only verdicts that occur).
        twin_version, calibration_version: what produced it.
        telemetry_complete: whether all telemetry of the acquisition window had arrived.
    """

    dataset_id: str
    version: int
    created_at: datetime
    actor: str
    reason: str
    body: dict[str, Any]
    body_sha256: str
    overall: str
    verdict_counts: dict[str, int]
    twin_version: str
    calibration_version: str
    telemetry_complete: bool


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """A dataset and its current snapshot (``None`` before it is verified)."""

    dataset: DatasetRecord
    current: SnapshotRecord | None


# ---------------------------------------------------------------------------- provenance
@dataclass(frozen=True, slots=True)
class ProvNode:
    """A W3C PROV node: an entity, activity or agent with a stable ``beamtwin:`` id.

    ``prov_type`` is its PROV type (``prov:Person``, ``beamtwin:Snapshot``, ...);
    ``start_time``/``end_time`` (UTC) are set for activities.
    """

    id: str
    kind: str
    prov_type: str | None
    label: str | None
    attributes: dict[str, Any]
    start_time: datetime | None
    end_time: datetime | None


@dataclass(frozen=True, slots=True)
class ProvRelation:
    """A PROV relation ``subject relation object`` (``snapshot wasGeneratedBy verification``),
    with the time it holds from (UTC) when known."""

    relation: str
    subject: str
    object: str
    time: datetime | None
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProvGraph:
    """The PROV nodes and relations reachable from a dataset."""

    nodes: tuple[ProvNode, ...]
    relations: tuple[ProvRelation, ...]
