"""Computing the verified snapshot of one acquisition from the store.

:func:`compute_snapshot` reads what the acquisition window needs from the provenance store (the
telemetry of the channels the event's fields depend on over ``[start - lookback, end]``, the
last sample before that, how far each channel's telemetry reaches, the calibration in force at
the start and the twin's flags in the window), derives the twin's state under that calibration
(:func:`twin.derive_state`) and hands everything to :func:`twin.build_snapshot`, which holds the
comparison rules (docs/snapshots.md). It writes nothing; storing the body is
``provenance_store.store_snapshot``'s business.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import twin
from ingest import AcquisitionEventV1
from workers._errors import InvalidEvent

__all__ = [
    "COMPLETE_AFTER_S",
    "DEFAULT_LOOKBACK_S",
    "ComputedSnapshot",
    "compute_snapshot",
    "warm_up",
]

#: How far before an acquisition the history is searched for a stale value [s].
DEFAULT_LOOKBACK_S = twin.DEFAULT_SNAPSHOT_CONFIG.lookback_s
#: How long after an acquisition's end telemetry is waited for [s]: after that the snapshot
#: counts as complete even when a channel never caught up (a channel that died during the
#: acquisition would otherwise keep the dataset pending, and recomputed, for ever). Samples
#: that still arrive later are caught by the store's late-sample check
#: (:func:`provenance_store.datasets_to_reverify`).
COMPLETE_AFTER_S = 300.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ComputedSnapshot:
    """A snapshot body and what it was computed with.

    Attributes:
        body: the ``beamtwin.snapshot.v1`` body (JSON-ready), validated against
            :class:`provenance_store.SnapshotBodyV1`.
        twin_version: the twin that derived the state (:data:`twin.TWIN_VERSION`).
        calibration_version: the calibration in force at the acquisition start (the twin's
            default calibration's version when the instrument has none stored).
        telemetry_complete: whether every channel the fields need (of those the instrument
            has telemetry of) had a sample stored at or after the acquisition's end; ``False``
            also when the instrument has no such telemetry at all, so the dataset is verified
            again when telemetry arrives late.
    """

    body: dict[str, Any]
    twin_version: str
    calibration_version: str
    telemetry_complete: bool


def _to_us(t: datetime) -> int:
    return (t - _EPOCH) // _ONE_US


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidEvent(f"not an aware UTC time: {value!r}")
    return value.astimezone(UTC)


def _calibration(
    conn: sa.Connection, instrument_id: str, at: datetime, cache: dict[Any, twin.Calibration]
) -> twin.Calibration:
    record = store.calibration_in_force(conn=conn, instrument_id=instrument_id, at=at)
    if record is None:
        return twin.Calibration(instrument_id=instrument_id)
    key = (instrument_id, record.version)
    calibration = cache.get(key)
    if calibration is None:
        calibration = twin.Calibration.from_dict(record.body)
        cache[key] = calibration
    return calibration


_CALIBRATIONS: dict[Any, twin.Calibration] = {}


_WANTED = frozenset(s.quantity for s in twin.FIELD_SOURCES.values() if s.quantity is not None)


def _derive(
    calibration: twin.Calibration,
    channels: Mapping[str, twin.ChannelSeries],
    *,
    held: Mapping[str, float] | None = None,
    quantities: frozenset[str] = _WANTED,
) -> dict[str, twin.QuantitySeries]:
    """The twin's state on the channels' common time grid; empty when an input channel has no
    telemetry. ``held``: input channels not in ``channels``, held at these values (only for
    quantities that do not depend on them)."""
    held = held or {}
    names = [name for name in twin.INPUT_CHANNELS if name not in held]
    aligned = twin.align_channels(channels, names)
    if aligned is None:
        return {}
    grid, readings = aligned
    estimate = twin.derive_state_series(calibration, readings, held=held)
    return {
        q.name: twin.QuantitySeries(unit=q.unit, time_us=grid, value=estimate.values[q.name])
        for q in twin.STATE_QUANTITIES
        if q.name in quantities
    }


def warm_up(calibration: twin.Calibration | None = None) -> None:
    """Compile the twin's mapping for every input length :func:`compute_snapshot` uses (a
    fraction of a second each), so that no acquisition waits for a compilation later."""
    twin.warm_up_derivation(calibration)


def _read(
    conn: sa.Connection,
    instrument_id: str,
    names: list[str],
    start: datetime,
    end: datetime,
    *,
    with_prior: bool,
) -> dict[str, twin.ChannelSeries]:
    """Samples of ``[start, end)``; ``with_prior``: plus each channel's last sample before."""
    samples = store.read_samples(
        conn=conn, instrument_id=instrument_id, channels=names, start=start, end=end
    )
    before = (
        {
            v.channel: v
            for v in store.as_of(conn=conn, instrument_id=instrument_id, at=start, channels=names)
        }
        if with_prior
        else {}
    )
    out: dict[str, twin.ChannelSeries] = {}
    for name in names:
        s = samples[name]
        t, v = s.time_us, s.value
        prior = before.get(name)
        if prior is not None:
            prior_us = _to_us(prior.source_time)
            if len(t) == 0 or prior_us < int(t[0]):
                t = np.concatenate([[prior_us], t]).astype(np.int64)
                v = np.concatenate([[prior.value], v]).astype(np.float64)
        if len(t):
            out[name] = twin.ChannelSeries(unit=s.unit, time_us=t, value=v)
    return out


def _read_means(
    conn: sa.Connection,
    instrument_id: str,
    names: list[str],
    lo: datetime,
    context: datetime,
    bin_s: float,
) -> dict[str, twin.ChannelSeries]:
    """Means of ``bin_s`` buckets (aligned to whole seconds) of ``[lo, context)``, each at the
    middle of its bucket: the lookback history at the resolution the stale search uses, at a
    fraction of the cost of the raw samples."""
    bucket_us = max(round(bin_s * 1e6), 1)
    hi_us = _to_us(context) // bucket_us * bucket_us
    if hi_us <= _to_us(lo):
        return {}
    result = store.query_range(
        conn=conn,
        instrument_id=instrument_id,
        channels=names,
        start=lo,
        end=_EPOCH + timedelta(microseconds=hi_us),
        bucket=timedelta(microseconds=bucket_us),
    )
    return {
        name: twin.ChannelSeries(
            unit=series.unit, time_us=series.time_us + bucket_us // 2, value=series.mean
        )
        for name, series in result.series.items()
        if len(series.time_us)
    }


def _history(
    conn: sa.Connection,
    instrument_id: str,
    calibration: twin.Calibration,
    body: Mapping[str, Any],
    channels: Mapping[str, twin.ChannelSeries],
    lo: datetime,
    context: datetime,
    bin_s: float,
) -> tuple[dict[str, twin.ChannelSeries], dict[str, twin.QuantitySeries]] | None:
    """The history ``[lo, context)`` of what the disagreeing fields of ``body`` come from, as
    ``bin_s`` means, followed by the context already read; ``None`` when no field disagrees."""
    direct: set[str] = set()
    quantities: set[str] = set()
    for name, entry in body["fields"].items():
        if entry["verdict"] != "disagrees":
            continue
        source = twin.FIELD_SOURCES[name]
        if entry["quantity"] is not None:
            quantities.add(entry["quantity"])
            direct.update(source.depends_on)
        elif entry["channel"] is not None:
            direct.add(entry["channel"])
    names = sorted(n for n in direct if n in channels)
    if not names:
        return None
    older = _read_means(conn, instrument_id, names, lo, context, bin_s)
    merged: dict[str, twin.ChannelSeries] = {}
    for name in names:
        now = channels[name]
        before = older.get(name)
        if before is None:
            merged[name] = now
            continue
        keep = now.time_us >= int(before.time_us[-1]) + 1
        merged[name] = twin.ChannelSeries(
            unit=now.unit,
            time_us=np.concatenate([before.time_us, now.time_us[keep]]),
            value=np.concatenate([before.value, now.value[keep]]),
        )
    state: dict[str, twin.QuantitySeries] = {}
    if quantities:
        # Inputs a quantity does not depend on are held constant: they do not change it.
        held = {
            n: float(channels[n].value[-1])
            for n in twin.INPUT_CHANNELS
            if n not in merged and n in channels
        }
        state = _derive(calibration, merged, held=held, quantities=frozenset(quantities))
    return merged, state


def compute_snapshot(
    *,
    conn: sa.Connection,
    event: AcquisitionEventV1,
    lookback_s: float | None = None,
    now: datetime | None = None,
    config: twin.SnapshotConfig | None = None,
    complete_after_s: float = COMPLETE_AFTER_S,
) -> ComputedSnapshot:
    """The snapshot of one acquisition from what the store holds now.

    Args:
        conn: a connection on the provenance store (read only; the caller owns the
            transaction).
        event: the acquisition event, validated (times reach the twin as datetimes: nothing
            is parsed twice).
        lookback_s: history before the start searched for a stale value [s]; default
            ``config.lookback_s`` (:data:`DEFAULT_LOOKBACK_S`, 600 s).
        now: the time telemetry is counted up to for completeness (default: the wall clock);
            samples stamped later are ignored for it.
        config: tolerances and limits (default :data:`twin.DEFAULT_SNAPSHOT_CONFIG`).
        complete_after_s: this long after the end (or after the event's ``registered_at``,
            when later) the telemetry counts as complete whether or not every channel reached
            ``end`` (when the instrument has any telemetry of the fields' channels).

    Raises:
        provenance_store.InstrumentNotFound: the event's instrument is not registered.
        InvalidEvent: bad times in the event.
        provenance_store.InvalidRecord: the body does not follow ``beamtwin.snapshot.v1``
            (:class:`provenance_store.SnapshotBodyV1`).
    """
    ev: dict[str, Any] = event.model_dump(mode="json", by_alias=True)
    instrument_id = event.instrument_id
    start, end = event.start_time.astimezone(UTC), event.end_time.astimezone(UTC)
    ev["start_time"], ev["end_time"] = start, end
    if end < start:
        raise InvalidEvent("the acquisition ends before it starts")
    base = config or twin.DEFAULT_SNAPSHOT_CONFIG
    cfg = base if lookback_s is None else dataclasses.replace(base, lookback_s=lookback_s)
    now = datetime.now(UTC) if now is None else _as_datetime(now)
    lo = start - timedelta(seconds=cfg.lookback_s)
    context = start - timedelta(seconds=cfg.context_s)

    # Telemetry is waited for from the acquisition's end, or from its registration when the
    # dataset was registered later (a backlog of files, a replay).
    waited_from = max(end, event.registered_at.astimezone(UTC))
    known = store.get_channels(conn=conn, instrument_id=instrument_id)
    present = [name for name in twin.snapshot_channels() if name in known]
    channels: dict[str, twin.ChannelSeries] = {}
    complete = False
    watermark: datetime | None = None
    if present:
        channels = _read(conn, instrument_id, present, context, end + _ONE_US, with_prior=True)
        latest = store.as_of(conn=conn, instrument_id=instrument_id, at=now, channels=present)
        if latest:
            reach = min(v.source_time for v in latest)
            # A declared channel that never reported is absent, not late: it does not count.
            # Waited long enough, a channel that has not caught up is a gap (the body shows
            # it), no longer pending. Without any telemetry the snapshot stays incomplete.
            complete = reach >= end or now >= waited_from + timedelta(seconds=complete_after_s)
            watermark = min(reach, end)
    calibration = _calibration(conn, instrument_id, start, _CALIBRATIONS)
    state = _derive(calibration, channels)
    flags = [
        {
            "kind": f.kind,
            "quantity": f.quantity,
            "channel": f.channel,
            "time": f.time,
            "severity": f.severity,
        }
        for f in store.query_flags(
            conn=conn, instrument_id=instrument_id, start=start, end=end + _ONE_US
        )
    ]
    common: dict[str, Any] = {
        "event": ev,
        "channels": channels,
        "state": state,
        "twin_version": twin.TWIN_VERSION,
        "calibration_version": calibration.version,
        "telemetry_complete": complete,
        "watermark": watermark,
        "flags": flags,
        "config": cfg,
    }
    body = twin.build_snapshot(**common)
    if lo < context:
        # Only a field that disagrees with the window can be stale: read the lookback history
        # of just the channels those fields depend on, and decide again with it.
        history = _history(
            conn, instrument_id, calibration, body, channels, lo, context, cfg.stale_bin_s
        )
        if history is not None:
            body = twin.build_snapshot(
                **common, history_channels=history[0], history_state=history[1]
            )
    # The twin builds plain data; the contract is checked once, here, before it is stored.
    store.validate_snapshot_body(body)
    return ComputedSnapshot(
        body=body,
        twin_version=twin.TWIN_VERSION,
        calibration_version=calibration.version,
        telemetry_complete=complete,
    )
