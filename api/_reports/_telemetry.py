"""The report's telemetry of an instrument: coverage and gaps of every channel, and the series
of the key channels to plot.

The coverage scan reads the rollups in whole-minute buckets (never every raw sample of a week)
and reads raw samples only inside the stretches that the bucket counts say may hold a gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
from api._reports._format import ceil_minutes, from_us, iso, num, to_us

#: Default: a stretch without samples longer than this is a gap [s] (see ``build_report``).
DEFAULT_GAP_THRESHOLD = timedelta(seconds=10)
#: Most buckets per channel of the coverage scan and the plots.
COVERAGE_POINTS = 2000
#: Channels plotted when the instrument has them, in this order.
KEY_CHANNELS: tuple[str, ...] = (
    "gun.high_tension",
    "gun.emission_current",
    "objective.lens_current",
    "condenser.c1_current",
    "holder.temperature",
    "stage.x",
    "stage.y",
    "stage.z",
)
#: Most channels plotted per instrument.
MAX_PLOTS = 6
#: A channel whose typical sample interval is longer than threshold / this is judged with a
#: threshold of this many intervals, so a slow sensor's normal rhythm is not a gap.
_INTERVALS_PER_GAP = 5

#: Where each channel may hold a gap: windows ``[lo, hi)`` [µs] and its threshold [s].
Plan = tuple[Sequence[tuple[int, int]], float]


def _merge_windows(windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _candidate_windows(
    series: store.Series, start_us: int, end_us: int, width_us: int, threshold_s: float
) -> Plan:
    """Stretches of ``[start_us, end_us)`` that may hold a gap, from the bucket counts: buckets
    without samples, buckets with clearly fewer samples than the channel's typical bucket, and
    the partial buckets at the ends; each widened by one bucket on either side. Also returns
    the channel's threshold [s] (at least ``_INTERVALS_PER_GAP`` typical intervals)."""
    first = start_us - (start_us - series.time_us[0]) % width_us if len(series.time_us) else 0
    n_buckets = -(-(end_us - first) // width_us) if len(series.time_us) else 0
    counts = np.zeros(max(n_buckets, 0), dtype=np.int64)
    index = (series.time_us - first) // width_us
    keep = (index >= 0) & (index < len(counts))
    counts[index[keep]] = series.n[keep]
    inner = counts[1:-1] if len(counts) > 2 else counts
    typical = float(np.median(inner[inner > 0])) if (inner > 0).any() else 0.0
    interval_s = width_us / 1e6 / typical if typical > 0 else math.inf
    # Without a typical bucket (every sample in the end buckets) the asked threshold stands.
    threshold_s = max(threshold_s, _INTERVALS_PER_GAP * interval_s) if typical > 0 else threshold_s
    # A gap of g seconds removes about g / interval samples, at least half of them from one
    # bucket; ask for 40 % of what a threshold-long gap removes (and at least 2 samples).
    deficit = max(2.0, 0.4 * threshold_s / interval_s) if typical > 0 else 0.0
    suspect = (counts == 0) | (counts <= typical - deficit)
    suspect[0] = suspect[-1] = True
    windows = []
    for i in np.flatnonzero(suspect):
        lo = max(start_us, first + (int(i) - 1) * width_us)
        hi = min(end_us, first + (int(i) + 2) * width_us)
        if hi > lo:
            windows.append((lo, hi))
    return _merge_windows(windows), threshold_s


def _window_gaps(
    conn: sa.Connection,
    instrument_id: str,
    plans: Mapping[str, Plan],
    start_us: int,
    end_us: int,
) -> dict[str, list[tuple[int, int]]]:
    """The gaps ``[lo, hi)`` [µs] of each channel, read from raw samples only inside its
    windows; channels with the same window and threshold (the period's ends, mostly) share one
    query."""
    shared: dict[tuple[int, int, float], list[str]] = {}
    for name, (windows, threshold_s) in plans.items():
        for lo, hi in windows:
            shared.setdefault((lo, hi, threshold_s), []).append(name)
    gaps: dict[str, list[tuple[int, int]]] = {name: [] for name in plans}
    for (lo, hi, threshold_s), names in sorted(shared.items()):
        found = store.find_gaps(
            conn=conn,
            instrument_id=instrument_id,
            start=from_us(lo),
            end=from_us(hi),
            threshold=timedelta(seconds=threshold_s),
            channels=names,
        )
        for gap in found:
            g_lo, g_hi = to_us(gap.start), to_us(gap.end)
            # A window edge inside the period is not the channel's last/first sample: only a
            # gap that reaches the period's own ends may stop at a window edge.
            if (g_lo == lo and lo != start_us) or (g_hi == hi and hi != end_us):
                continue
            gaps[gap.channel].append((g_lo, g_hi))
    return gaps


def _channel_entry(
    name: str,
    series: store.Series,
    inside: np.ndarray,
    gaps: Sequence[tuple[int, int]],
    threshold_s: float,
    span_s: float,
) -> dict[str, Any]:
    """One channel's samples, coverage, min/mean/max over the buckets ``inside`` the period
    and its gaps ``[lo, hi)`` [µs]; ``threshold_s`` and ``span_s`` in seconds."""
    missing_s = sum(hi - lo for lo, hi in gaps) / 1e6
    n = series.n[inside]
    some = bool(inside.any())
    return {
        "channel": name,
        "unit": series.unit,
        # Rollup buckets overlapping the period: exact when it is bucket-aligned.
        "samples": int(n.sum()),
        "coverage": num(round(max(0.0, 1.0 - missing_s / span_s), 6)),
        "gap_threshold_s": num(threshold_s),
        "min": num(series.min[inside].min()) if some else None,
        "max": num(series.max[inside].max()) if some else None,
        "mean": num(float((series.mean[inside] * n).sum() / n.sum())) if some else None,
        "gaps": [
            {"start": iso(from_us(lo)), "end": iso(from_us(hi)), "seconds": (hi - lo) / 1e6}
            for lo, hi in sorted(gaps)
        ],
    }


def telemetry_section(
    conn: sa.Connection,
    instrument_id: str,
    start: datetime,
    end: datetime,
    gap_threshold: timedelta,
) -> tuple[dict[str, Any], store.RangeResult]:
    """The coverage and gaps of every channel of the instrument over ``[start, end)``, and the
    rollup read that found them (the plots draw from it)."""
    # Whole minutes, so the scan reads the rollups (never every raw sample of a week).
    bucket = max(
        timedelta(minutes=1), ceil_minutes(store.choose_bucket(end - start, COVERAGE_POINTS))
    )
    result = store.query_range(
        conn=conn, instrument_id=instrument_id, start=start, end=end, bucket=bucket
    )
    start_us, end_us = to_us(start), to_us(end)
    width_us = bucket // timedelta(microseconds=1)
    span_s = (end_us - start_us) / 1e6
    plans: dict[str, Plan] = {}
    for name, series in result.series.items():
        if len(series.time_us):
            plans[name] = _candidate_windows(
                series, start_us, end_us, width_us, gap_threshold.total_seconds()
            )
    found = _window_gaps(conn, instrument_id, plans, start_us, end_us)
    channels = []
    for name in sorted(result.series):
        series = result.series[name]
        inside = (series.time_us + width_us > start_us) & (series.time_us < end_us)
        if name in plans and inside.any():
            gaps, threshold_s = found[name], plans[name][1]
        else:
            gaps, threshold_s = [(start_us, end_us)], gap_threshold.total_seconds()
        channels.append(_channel_entry(name, series, inside, gaps, threshold_s, span_s))
    section = {
        "bucket_s": bucket.total_seconds(),
        "gap_threshold_s": gap_threshold.total_seconds(),
        "channels": channels,
    }
    return section, result


def key_channel_plots(
    result: store.RangeResult,
    start: datetime,
    end: datetime,
    flags: Sequence[store.FlagRecord],
) -> list[dict[str, Any]]:
    """The series to plot (the key channels the instrument has, else its first channels by
    name; at most ``MAX_PLOTS``): bucket times ``t_s`` [s since ``start``], min, mean and max
    per bucket [canonical unit], and the flags on the channel (or on no channel) as marks."""
    names = [c for c in KEY_CHANNELS if c in result.series]
    if not names:
        names = sorted(result.series)[:MAX_PLOTS]
    start_us, end_us = to_us(start), to_us(end)
    plots = []
    for name in names[:MAX_PLOTS]:
        series = result.series[name]
        keep = (series.time_us >= start_us) & (series.time_us < end_us)
        t_s = (series.time_us[keep] - start_us) / 1e6
        marks = [
            {
                "t_s": (to_us(f.time) - start_us) / 1e6,
                "severity": f.severity,
                "kind": f.kind,
                "id": f.id,
            }
            for f in flags
            if f.channel == name or f.channel is None
        ]
        plots.append(
            {
                "channel": name,
                "unit": series.unit,
                "t_s": [num(v) for v in t_s.tolist()],
                "min": [num(v) for v in series.min[keep].tolist()],
                "mean": [num(v) for v in series.mean[keep].tolist()],
                "max": [num(v) for v in series.max[keep].tolist()],
                "flags": marks,
            }
        )
    return plots
