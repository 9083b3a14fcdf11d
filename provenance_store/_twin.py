"""The twin's output and bookkeeping: state estimates, flags and the twin worker's cursor.

Writes are idempotent on natural keys, so a twin worker that redoes a window after a crash
(its transaction never committed) or replays one on purpose adds nothing twice:

* estimates: ``ON CONFLICT (instrument_id, quantity, time) DO NOTHING``: the first stored
  estimate wins and is never altered (a provenance record must not change under an auditor);
* flags: the natural key ``(instrument_id, kind, quantity, channel, time)``; a flag stored
  again may only *close* an open flag (set its ``end_time``) and raise its severity, so a
  replay converges to the same row;
* the cursor moves by compare-and-set (``expected_until``): two workers that processed the same
  window cannot both commit it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from provenance_store._errors import (
    CursorConflict,
    InstrumentNotFound,
    InvalidArgument,
    InvalidRecord,
    StoreError,
    WrongType,
)
from provenance_store._instruments import instrument_exists
from provenance_store._records import (
    FLAG_KINDS,
    SEVERITIES,
    EstimateRecord,
    FlagIn,
    FlagRecord,
    TwinCursor,
    check_instrument_id,
)
from provenance_store._time import as_utc, require_utc

_ESTIMATE_COLUMNS = (
    "instrument_id, quantity, time, value, std, unit, calibration_version, twin_version"
)
_INSERT_ESTIMATES = sa.text(
    f"""
    WITH inserted AS (
        INSERT INTO twin_estimate ({_ESTIMATE_COLUMNS})
        SELECT * FROM unnest(
            CAST(:instrument_id AS text[]), CAST(:quantity AS text[]),
            CAST(:time AS timestamptz[]), CAST(:value AS float8[]), CAST(:std AS float8[]),
            CAST(:unit AS text[]), CAST(:calibration_version AS text[]),
            CAST(:twin_version AS text[])
        ) AS u({_ESTIMATE_COLUMNS})
        ORDER BY 1, 2, 3
        ON CONFLICT (instrument_id, quantity, time) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM inserted
    """
)
_ESTIMATES_IN_RANGE = f"""
    SELECT {_ESTIMATE_COLUMNS} FROM twin_estimate
    WHERE instrument_id = :instrument_id AND time >= :start AND time < :end
"""
_ESTIMATE_AS_OF = f"""
    SELECT e.* FROM {{quantities}}
    CROSS JOIN LATERAL (
        SELECT {_ESTIMATE_COLUMNS} FROM twin_estimate t
        WHERE t.instrument_id = :instrument_id AND t.quantity = q.quantity AND t.time <= :at
        ORDER BY t.time DESC
        LIMIT 1
    ) e
    ORDER BY e.quantity
"""
_GIVEN_QUANTITIES = "unnest(CAST(:quantities AS text[])) AS q(quantity)"
# The instrument's distinct quantities by a loose index scan of the primary key (one probe
# per quantity instead of reading every estimate).
_ALL_QUANTITIES = """(
    WITH RECURSIVE d(quantity) AS (
        (SELECT quantity FROM twin_estimate WHERE instrument_id = :instrument_id
         ORDER BY quantity LIMIT 1)
        UNION ALL
        SELECT (SELECT t.quantity FROM twin_estimate t
                WHERE t.instrument_id = :instrument_id AND t.quantity > d.quantity
                ORDER BY t.quantity LIMIT 1)
        FROM d WHERE d.quantity IS NOT NULL
    )
    SELECT quantity FROM d WHERE quantity IS NOT NULL
) AS q"""

_FLAG_COLUMNS = (
    "instrument_id, kind, quantity, channel, time, end_time, expected, observed, residual, "
    "tolerance, severity, twin_version, calibration_version, detail"
)
_SEVERITY_RANK = f"array_position(ARRAY[{', '.join(repr(s) for s in SEVERITIES)}], {{0}})"
# On a repeated natural key: close an open flag and raise its severity, nothing else. The
# statement's rows are deduplicated by the caller (DO UPDATE may touch a row only once).
# ``xmax = 0`` tells a freshly inserted row from an updated one.
_INSERT_FLAGS = sa.text(
    f"""
    WITH written AS (
        INSERT INTO twin_flag AS f ({_FLAG_COLUMNS})
        SELECT instrument_id, kind, quantity, channel, time, end_time, expected, observed,
               residual, tolerance, severity, twin_version, calibration_version,
               CAST(detail AS jsonb)
        FROM unnest(
            CAST(:instrument_id AS text[]), CAST(:kind AS text[]), CAST(:quantity AS text[]),
            CAST(:channel AS text[]), CAST(:time AS timestamptz[]),
            CAST(:end_time AS timestamptz[]), CAST(:expected AS float8[]),
            CAST(:observed AS float8[]), CAST(:residual AS float8[]),
            CAST(:tolerance AS float8[]), CAST(:severity AS text[]),
            CAST(:twin_version AS text[]), CAST(:calibration_version AS text[]),
            CAST(:detail AS text[])
        ) AS u({_FLAG_COLUMNS})
        ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (instrument_id, kind, (coalesce(quantity, '')), (coalesce(channel, '')), time)
        DO UPDATE SET
            end_time = coalesce(f.end_time, excluded.end_time),
            severity = CASE WHEN {_SEVERITY_RANK.format("excluded.severity")}
                                 > {_SEVERITY_RANK.format("f.severity")}
                            THEN excluded.severity ELSE f.severity END
        WHERE (f.end_time IS NULL AND excluded.end_time IS NOT NULL)
           OR {_SEVERITY_RANK.format("excluded.severity")} > {_SEVERITY_RANK.format("f.severity")}
        RETURNING (xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted) FROM written
    """
)
_FLAG_SELECT = f"SELECT id, {_FLAG_COLUMNS}, created_at FROM twin_flag"

_CURSOR_COLUMNS = (
    "instrument_id, processed_until, state, twin_version, calibration_version, updated_at"
)
_GET_CURSOR = sa.text(f"SELECT {_CURSOR_COLUMNS} FROM twin_cursor WHERE instrument_id = :i")
_CREATE_CURSOR = sa.text(
    f"""
    INSERT INTO twin_cursor (instrument_id, processed_until, state, twin_version,
                             calibration_version)
    VALUES (:i, :until, CAST(:state AS jsonb), :twin_version, :calibration_version)
    ON CONFLICT (instrument_id) DO NOTHING
    RETURNING {_CURSOR_COLUMNS}
    """
)
_ADVANCE_CURSOR = sa.text(
    f"""
    UPDATE twin_cursor SET processed_until = :until, state = CAST(:state AS jsonb),
        twin_version = :twin_version, calibration_version = :calibration_version,
        updated_at = now()
    WHERE instrument_id = :i AND processed_until = :expected
    RETURNING {_CURSOR_COLUMNS}
    """
)


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _no_single_string(name: str, values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise WrongType(f"{name} must be a sequence of strings, not one string")
    return list(values)


def _check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start = require_utc("start", start)
    end = require_utc("end", end)
    if end <= start:
        raise InvalidArgument(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    return start, end


def _require_instrument(conn: sa.Connection, instrument_id: str) -> None:
    if not instrument_exists(conn, instrument_id):
        raise InstrumentNotFound(instrument_id)


# ---------------------------------------------------------------------------- estimates
def insert_estimates(*, conn: sa.Connection, estimates: Iterable[EstimateRecord]) -> int:
    """Store state estimates in the caller's transaction; returns how many were new.

    An estimate whose ``(instrument_id, quantity, time)`` is already stored is skipped, the
    stored one kept unchanged, so replaying a window adds nothing. A non-finite ``std`` is
    stored as unknown (``NULL``).

    Raises:
        ValueError: a non-finite value or a naive time.
        sqlalchemy.exc.IntegrityError: an unregistered instrument (foreign key).
    """
    rows = list(estimates)
    if not rows:
        return 0
    columns: dict[str, list[Any]] = {
        "instrument_id": [],
        "quantity": [],
        "time": [],
        "value": [],
        "std": [],
        "unit": [],
        "calibration_version": [],
        "twin_version": [],
    }
    for e in rows:
        if not math.isfinite(e.value):
            raise InvalidRecord(f"estimate of {e.quantity} at {e.time.isoformat()} is {e.value}")
        columns["instrument_id"].append(e.instrument_id)
        columns["quantity"].append(e.quantity)
        columns["time"].append(require_utc("time", e.time))
        columns["value"].append(float(e.value))
        columns["std"].append(_finite_or_none(e.std))
        columns["unit"].append(e.unit)
        columns["calibration_version"].append(e.calibration_version)
        columns["twin_version"].append(e.twin_version)
    return int(conn.execute(_INSERT_ESTIMATES, columns).scalar_one())


def _estimate(row: Any) -> EstimateRecord:
    return EstimateRecord(
        instrument_id=row.instrument_id,
        quantity=row.quantity,
        time=as_utc(row.time),
        value=row.value,
        std=row.std,
        unit=row.unit,
        calibration_version=row.calibration_version,
        twin_version=row.twin_version,
    )


def query_estimates(
    *,
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    end: datetime,
    quantities: Sequence[str] | None = None,
) -> list[EstimateRecord]:
    """The estimates of an instrument with times in ``[start, end)`` (UTC), of every quantity
    or of those named, ordered by quantity, then time.

    Raises:
        InstrumentNotFound: the instrument is not registered.
        ValueError: naive datetimes or ``end <= start``.
    """
    start, end = _check_range(start, end)
    names = _no_single_string("quantities", quantities)
    sql = _ESTIMATES_IN_RANGE
    params: dict[str, Any] = {"instrument_id": instrument_id, "start": start, "end": end}
    if names is not None:
        sql += " AND quantity = ANY(:quantities)"
        params["quantities"] = names
    rows = conn.execute(sa.text(sql + " ORDER BY quantity, time"), params).all()
    if not rows:
        _require_instrument(conn, instrument_id)
    return [_estimate(row) for row in rows]


def estimates_as_of(
    *,
    conn: sa.Connection,
    instrument_id: str,
    at: datetime,
    quantities: Sequence[str] | None = None,
) -> list[EstimateRecord]:
    """The twin's latest estimate of each quantity at or before ``at`` (UTC), by quantity.

    One backward index probe per quantity; quantities without an estimate at or before ``at``
    are left out.

    Raises:
        InstrumentNotFound: the instrument is not registered.
        ValueError: a naive ``at``.
    """
    at = require_utc("at", at)
    names = _no_single_string("quantities", quantities)
    params: dict[str, Any] = {"instrument_id": instrument_id, "at": at}
    if names is None:
        sql = _ESTIMATE_AS_OF.format(quantities=_ALL_QUANTITIES)
    else:
        sql = _ESTIMATE_AS_OF.format(quantities=_GIVEN_QUANTITIES)
        params["quantities"] = names
    rows = conn.execute(sa.text(sql), params).all()
    if not rows:
        _require_instrument(conn, instrument_id)
    return [_estimate(row) for row in rows]


@dataclass(frozen=True, slots=True)
class TwinStateAt:
    """The twin's latest estimates of an instrument at a time: values and standard
    deviations by quantity [the twin's units], their ids (``quantity@time``) and the
    calibration version they used (else the one in force then)."""

    values: dict[str, float]
    std: dict[str, float]
    estimate_ids: list[str]
    calibration_version: str | None


def twin_state_at(*, conn: sa.Connection, instrument_id: str, at: datetime) -> TwinStateAt:
    """:func:`estimates_as_of` gathered into one state, with the calibration version.

    Raises:
        InstrumentNotFound: the instrument is not registered.
        ValueError: a naive ``at``.
    """
    from provenance_store._calibrations import calibration_in_force

    records = estimates_as_of(conn=conn, instrument_id=instrument_id, at=at)
    values = {r.quantity: r.value for r in records}
    std = {r.quantity: r.std for r in records if r.std is not None}
    ids = [f"{r.quantity}@{r.time.isoformat()}" for r in records]
    versions = sorted({r.calibration_version for r in records})
    calibration = versions[-1] if versions else None
    if calibration is None:
        in_force = calibration_in_force(conn=conn, instrument_id=instrument_id, at=at)
        calibration = None if in_force is None else in_force.version
    return TwinStateAt(values, std, ids, calibration)


# ---------------------------------------------------------------------------- flags
def _flag_key(flag: FlagIn) -> tuple[str, str, str, str, datetime]:
    return (flag.instrument_id, flag.kind, flag.quantity or "", flag.channel or "", flag.time)


def _merge_duplicate(kept: FlagIn, again: FlagIn) -> FlagIn:
    """What storing ``kept`` then ``again`` leaves, as the ON CONFLICT clause would."""
    severity = max(kept.severity, again.severity, key=SEVERITIES.index)
    end_time = kept.end_time if kept.end_time is not None else again.end_time
    return dataclasses.replace(kept, severity=severity, end_time=end_time)


def insert_flags(*, conn: sa.Connection, flags: Iterable[FlagIn]) -> int:
    """Store flags in the caller's transaction; returns how many were new.

    A flag whose natural key ``(instrument_id, kind, quantity, channel, time)`` is already
    stored is not stored again; it may only close the stored flag (when that one has no
    ``end_time`` yet) and raise its severity. Non-finite numbers are stored as ``NULL``.

    Raises:
        ValueError: a naive time, or ``end_time`` before ``time``.
        sqlalchemy.exc.IntegrityError: an unregistered instrument (foreign key).
    """
    unique: dict[tuple[str, str, str, str, datetime], FlagIn] = {}
    for flag in flags:
        time = require_utc("time", flag.time)
        end_time = None if flag.end_time is None else require_utc("end_time", flag.end_time)
        if end_time is not None and end_time < time:
            raise InvalidRecord(
                f"{flag.kind} flag ends ({end_time.isoformat()}) before it starts "
                f"({time.isoformat()})"
            )
        key = _flag_key(flag)
        unique[key] = _merge_duplicate(unique[key], flag) if key in unique else flag
    if not unique:
        return 0
    columns: dict[str, list[Any]] = {name.strip(): [] for name in _FLAG_COLUMNS.split(",")}
    for f in unique.values():
        columns["instrument_id"].append(f.instrument_id)
        columns["kind"].append(f.kind)
        columns["quantity"].append(f.quantity)
        columns["channel"].append(f.channel)
        columns["time"].append(require_utc("time", f.time))
        columns["end_time"].append(None if f.end_time is None else as_utc(f.end_time))
        for name in ("expected", "observed", "residual", "tolerance"):
            columns[name].append(_finite_or_none(getattr(f, name)))
        columns["severity"].append(f.severity)
        columns["twin_version"].append(f.twin_version)
        columns["calibration_version"].append(f.calibration_version)
        columns["detail"].append(_json(f.detail, what=f"{f.kind} flag detail"))
    return int(conn.execute(_INSERT_FLAGS, columns).scalar_one())


def _flag(row: Any) -> FlagRecord:
    return FlagRecord(
        id=row.id,
        instrument_id=row.instrument_id,
        kind=row.kind,
        quantity=row.quantity,
        channel=row.channel,
        time=as_utc(row.time),
        end_time=None if row.end_time is None else as_utc(row.end_time),
        expected=row.expected,
        observed=row.observed,
        residual=row.residual,
        tolerance=row.tolerance,
        severity=row.severity,
        twin_version=row.twin_version,
        calibration_version=row.calibration_version,
        detail=row.detail,
        created_at=as_utc(row.created_at),
    )


def query_flags(
    *,
    conn: sa.Connection,
    instrument_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    kinds: Sequence[str] | None = None,
    severities: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    quantities: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[FlagRecord]:
    """Flags, ordered by time (then id), filtered by every argument given.

    A flag is in ``[start, end)`` (UTC) when its interval ``[time, end_time]`` meets it (a flag
    without ``end_time`` counts as the instant ``time``). ``kinds``, ``severities``, ``channels``
    and ``quantities`` keep flags whose field is one of those listed; ``limit`` keeps the first
    so many.

    Raises:
        InstrumentNotFound: ``instrument_id`` is given and not registered.
        ValueError: naive datetimes, ``end <= start``, unknown kinds or severities.
    """
    where: list[str] = []
    params: dict[str, Any] = {}
    if instrument_id is not None:
        where.append("instrument_id = :instrument_id")
        params["instrument_id"] = instrument_id
    if start is not None and end is not None:
        start, end = _check_range(start, end)
    if start is not None:
        where.append("coalesce(end_time, time) >= :start")
        params["start"] = require_utc("start", start)
    if end is not None:
        where.append("time < :end")
        params["end"] = require_utc("end", end)
    for column, values, allowed in (
        ("kind", kinds, FLAG_KINDS),
        ("severity", severities, SEVERITIES),
        ("channel", channels, None),
        ("quantity", quantities, None),
    ):
        chosen = _no_single_string(f"{column} filter", values)
        if chosen is None:
            continue
        if allowed is not None:
            unknown = sorted(set(chosen) - set(allowed))
            if unknown:
                raise InvalidArgument(f"unknown flag {column}(s) {unknown}; known: {allowed}")
        where.append(f"{column} = ANY(:{column})")
        params[column] = chosen
    sql = _FLAG_SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY time, id"
    if limit is not None:
        if limit < 1:
            raise InvalidArgument(f"limit must be at least 1, got {limit}")
        sql += " LIMIT :limit"
        params["limit"] = limit
    rows = conn.execute(sa.text(sql), params).all()
    if not rows and instrument_id is not None:
        _require_instrument(conn, instrument_id)
    return [_flag(row) for row in rows]


# ---------------------------------------------------------------------------- the cursor
def _json(value: dict[str, Any], *, what: str) -> str:
    if not isinstance(value, dict):
        raise WrongType(f"{what} must be a JSON object (dict), not {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # NaN or infinity: not JSON, and jsonb refuses it
        raise StoreError(f"{what} is not valid JSON: {exc}") from exc


def _cursor(row: Any) -> TwinCursor:
    return TwinCursor(
        instrument_id=row.instrument_id,
        processed_until=as_utc(row.processed_until),
        state=row.state,
        twin_version=row.twin_version,
        calibration_version=row.calibration_version,
        updated_at=as_utc(row.updated_at),
    )


def get_twin_cursor(*, conn: sa.Connection, instrument_id: str) -> TwinCursor | None:
    """The twin worker's cursor of an instrument, ``None`` before its first window."""
    row = conn.execute(_GET_CURSOR, {"i": instrument_id}).first()
    return None if row is None else _cursor(row)


def save_twin_cursor(
    *,
    conn: sa.Connection,
    instrument_id: str,
    processed_until: datetime,
    state: dict[str, Any],
    twin_version: str,
    calibration_version: str,
    expected_until: datetime | None,
) -> TwinCursor:
    """Move the cursor of an instrument to ``processed_until``, in the caller's transaction.

    Compare-and-set: the stored cursor must be at ``expected_until`` (``None``: no cursor
    stored yet), the value the caller read before computing the window. Otherwise another
    worker got there first and ``CursorConflict`` is raised; the caller must roll back.

    Raises:
        CursorConflict: the stored cursor is not at ``expected_until``.
        ValueError: ``processed_until`` not after ``expected_until``, or naive datetimes.
        StoreError: ``state`` is not JSON (NaN, infinity, non-string keys, ...).
    """
    check_instrument_id(instrument_id)
    until = require_utc("processed_until", processed_until)
    expected = None if expected_until is None else require_utc("expected_until", expected_until)
    if expected is not None and until <= expected:
        raise InvalidArgument(
            f"the cursor only moves forward: {until.isoformat()} is not after "
            f"{expected.isoformat()}"
        )
    params = {
        "i": instrument_id,
        "until": until,
        "state": _json(state, what="the twin state"),
        "twin_version": twin_version,
        "calibration_version": calibration_version,
        "expected": expected,
    }
    if expected is None:
        _require_instrument(conn, instrument_id)
        row = conn.execute(_CREATE_CURSOR, params).first()
    else:
        row = conn.execute(_ADVANCE_CURSOR, params).first()
    if row is None:
        found = get_twin_cursor(conn=conn, instrument_id=instrument_id)
        raise CursorConflict(
            instrument_id,
            None if expected is None else expected.isoformat(),
            None if found is None else found.processed_until.isoformat(),
        )
    return _cursor(row)


def delete_twin_cursor(*, conn: sa.Connection, instrument_id: str) -> bool:
    """Forget the cursor of an instrument (the twin worker starts again from its first sample;
    estimates and flags already stored are kept and not duplicated). Whether one existed."""
    result = conn.execute(
        sa.text("DELETE FROM twin_cursor WHERE instrument_id = :i"), {"i": instrument_id}
    )
    return bool(result.rowcount)
