"""Audit-report build and render time for a realistic week of one instrument, against a
reference measured in the same run on the same data.

The scenario (a virtual microscope): one instrument, 100 telemetry channels sampled at 10 Hz
for 7 days (6.05e8 samples), gaps injected in some channels, twin flags for injected faults,
and 300 datasets with verified snapshots (about one in ten disagreeing with the telemetry, a few
corrected by a person), all audited.

What is written, and at what scale: a report reads the telemetry through the 1-minute and
1-hour rollups (``telemetry_rollup_1m``, ``telemetry_rollup_1h``, docs/store.md) and reads raw
samples only around suspected gaps and at the period's ends. The bench writes the rollups of
the full 10 Hz week directly (count, mean, m2, min, max per channel and minute, as 600 samples
per minute give them), and the raw 10 Hz samples (through ``insert_samples``, which adds their
rollups) for every window a report reads raw: 20 minutes at each end of the period for every
channel and 20 minutes either side of each injected gap for its channel. Writing all 6e8 raw
samples is left out (hours of COPY and ~40 GB on disk); the report would read the same rows.
``--quick`` is the same with 1 day and 50 datasets.

Printed: ``week_report_s`` (build the report and render JSON, HTML and PDF) and its ratio to
the reference ``range_read_s``: one ``query_range`` of every channel at the report's bucket
width over the period (what a telemetry plot of the week costs).

Run from the repository root: ``python bench/report.py [--quick]``. It uses
``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one; it
creates and drops a throwaway database.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import api as reports  # noqa: E402
import provenance_store as store  # noqa: E402
from beamtwin_cli.embedded import throwaway_database  # noqa: E402

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000
RATE_HZ = 10
TICK_US = 1_000_000 // RATE_HZ
PER_MINUTE = 60 * RATE_HZ
RAW_MARGIN_MIN = 20
N_CHANNELS = 100
#: The named channels (the report's key channels) and their nominal values and noise.
NAMED = (
    ("gun.high_tension", "gun", "voltage", "V", 2.0e5, 0.5),
    ("gun.emission_current", "gun", "current", "A", 5e-6, 1e-9),
    ("objective.lens_current", "objective", "current", "A", 1.5, 1e-6),
    ("condenser.c1_current", "condenser", "current", "A", 0.8, 1e-6),
    ("holder.temperature", "holder", "temperature", "K", 295.0, 0.02),
    ("stage.x", "stage", "length", "m", 1e-6, 1e-10),
    ("stage.y", "stage", "length", "m", -2e-6, 1e-10),
    ("stage.z", "stage", "length", "m", 0.0, 1e-10),
)


def declarations() -> list[store.ChannelDeclaration]:
    decls = [
        store.ChannelDeclaration(
            name=name, subsystem=sub, quantity=q, canonical_unit=unit, source_unit=unit
        )
        for name, sub, q, unit, _, _ in NAMED
    ]
    for k in range(N_CHANNELS - len(NAMED)):
        decls.append(
            store.ChannelDeclaration(
                name=f"detector.aux_{k:02d}",
                subsystem="detector",
                quantity="dimensionless",
                canonical_unit="1",
                source_unit="1",
            )
        )
    return decls


def model(c: int, t_s: np.ndarray) -> tuple[np.ndarray, float]:
    """Channel ``c``'s noise-free value at ``t_s`` [s since T0], and its noise [unit]."""
    if c < len(NAMED):
        nominal, noise = NAMED[c][4], NAMED[c][5]
    else:
        nominal, noise = 1.0 + 0.01 * c, 1e-3
    day = 2 * np.pi * t_s / 86400.0
    value = nominal + 20 * noise * np.sin(day + c)
    if c == 0:  # an HT excursion each day at 13:00 for 5 minutes (a fault)
        value = value + np.where((t_s % 86400 >= 46800) & (t_s % 86400 < 47100), 50.0, 0.0)
    return value, noise


def gaps_of(days: int) -> list[tuple[int, int, int]]:
    """Injected gaps: (channel index, start [µs], end [µs]); not minute-aligned."""
    out = []
    rng = np.random.default_rng(7)
    for g in range(4 * days):
        c = int(rng.integers(0, N_CHANNELS))
        start = T0_US + int((0.05 + 0.9 * (g + rng.random()) / (4 * days)) * days * 86400e6)
        start -= start % TICK_US
        length_s = float(rng.choice([30.0, 95.0, 600.0, 1800.0]))
        out.append((c, start + 3_300_000, start + 3_300_000 + int(length_s * 1e6)))
    return out


def raw_windows(days: int, gaps: list[tuple[int, int, int]]) -> dict[int, list[tuple[int, int]]]:
    """Per channel: minute-aligned [µs) windows written as raw samples."""
    minute = 60_000_000
    end = T0_US + days * 86400 * 1_000_000
    margin = RAW_MARGIN_MIN * minute
    windows: dict[int, list[tuple[int, int]]] = {
        c: [(T0_US, T0_US + margin), (end - margin, end)] for c in range(N_CHANNELS)
    }
    for c, lo, hi in gaps:
        windows[c].append(
            (max(T0_US, lo - lo % minute - margin), min(end, hi - hi % minute + minute + margin))
        )
    for c in windows:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(windows[c]):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        windows[c] = merged
    return windows


def write_rollups(
    engine: sa.Engine, ids: list[int], days: int, windows: dict[int, list[tuple[int, int]]]
) -> int:
    """The 1-minute and 1-hour rollups of the 10 Hz week outside the raw windows."""
    minutes = days * 1440
    t_mid = (np.arange(minutes) * 60 + 30).astype(float)
    minute_us = T0_US + np.arange(minutes, dtype=np.int64) * 60_000_000
    one_m = io.StringIO()
    hour_rows = io.StringIO()
    written = 0
    for c, cid in enumerate(ids):
        mean, noise = model(c, t_mid)
        keep = np.ones(minutes, dtype=bool)
        for lo, hi in windows[c]:
            keep &= ~((minute_us >= lo) & (minute_us < hi))
        n = np.full(minutes, PER_MINUTE)
        m2 = np.full(minutes, (PER_MINUTE - 1) * noise**2)
        lo_v, hi_v = mean - 3 * noise, mean + 3 * noise
        stamps = [
            datetime.fromtimestamp(u / 1e6, tz=UTC).isoformat() for u in minute_us[keep].tolist()
        ]
        for s, a, b, d, e in zip(
            stamps, mean[keep].tolist(), m2[keep].tolist(), lo_v[keep].tolist(),
            hi_v[keep].tolist(), strict=True,
        ):  # fmt: skip
            one_m.write(f"{cid}\t{s}\t{PER_MINUTE}\t{a!r}\t{b!r}\t{d!r}\t{e!r}\n")
        written += int(keep.sum())
        # Hours from the kept minutes (Chan et al.'s merge of equal-size groups).
        hours = minutes // 60
        k = keep.reshape(hours, 60)
        nh = (n.reshape(hours, 60) * k).sum(axis=1)
        mh = np.where(
            nh > 0, (mean.reshape(hours, 60) * k * PER_MINUTE).sum(axis=1) / np.maximum(nh, 1), 0
        )
        dev = (mean.reshape(hours, 60) - mh[:, None]) ** 2 * PER_MINUTE
        m2h = ((m2.reshape(hours, 60) + dev) * k).sum(axis=1)
        mnh = np.where(k, lo_v.reshape(hours, 60), np.inf).min(axis=1)
        mxh = np.where(k, hi_v.reshape(hours, 60), -np.inf).max(axis=1)
        for h in np.flatnonzero(nh > 0).tolist():
            stamp = (T0 + timedelta(hours=h)).isoformat()
            hour_rows.write(
                f"{cid}\t{stamp}\t{int(nh[h])}\t{float(mh[h])!r}\t{float(m2h[h])!r}\t"
                f"{float(mnh[h])!r}\t{float(mxh[h])!r}\n"
            )
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:  # type: ignore[attr-defined]
            cols = "(channel_id, bucket, n, mean, m2, min, max)"
            for table, buffer in (
                ("telemetry_rollup_1m", one_m),
                ("telemetry_rollup_1h", hour_rows),
            ):
                with cur.copy(f"COPY {table} {cols} FROM STDIN") as copy:
                    copy.write(buffer.getvalue())
        raw.commit()
    finally:
        raw.close()
    return written * PER_MINUTE


def write_raw(
    engine: sa.Engine,
    ids: list[int],
    windows: dict[int, list[tuple[int, int]]],
    gaps: list[tuple[int, int, int]],
) -> int:
    rng = np.random.default_rng(1)
    total = 0
    for c, cid in enumerate(ids):
        for lo, hi in windows[c]:
            times = np.arange(lo, hi, TICK_US, dtype=np.int64)
            for gc, glo, ghi in gaps:
                if gc == c:
                    times = times[(times <= glo) | (times >= ghi)]
            mean, noise = model(c, (times - T0_US) / 1e6)
            values = mean + noise * rng.standard_normal(len(times))
            batch = store.SampleBatch(
                channel_id=np.full(len(times), cid, dtype=np.int32),
                source_time_us=times,
                ingest_time_us=times + 2_000,
                value=values,
                seq=np.arange(len(times), dtype=np.int64),
            )
            with engine.begin() as conn:
                total += store.insert_samples(conn=conn, batch=batch)
    return total


def write_flags(engine: sa.Engine, instrument: str, days: int, gaps: list, names: list) -> int:
    flags = []
    for d in range(days):
        for hour, kind, severity, channel in (
            (13, "disagreement", "critical", "gun.high_tension"),
            (9, "drift", "warning", "stage.x"),
            (17, "stuck", "warning", "detector.aux_07"),
            (21, "setting_change", "info", "objective.lens_current"),
        ):
            flags.append(
                store.FlagIn(
                    instrument_id=instrument,
                    kind=kind,
                    quantity=None,
                    channel=channel,
                    time=T0 + timedelta(days=d, hours=hour, minutes=2),
                    end_time=T0 + timedelta(days=d, hours=hour, minutes=7),
                    expected=1.0,
                    observed=1.4,
                    residual=0.4,
                    tolerance=0.1,
                    severity=severity,
                    twin_version="bench",
                    calibration_version="cal-1",
                )
            )
    for c, lo, hi in gaps:
        flags.append(
            store.FlagIn(
                instrument_id=instrument,
                kind="dropout",
                quantity=None,
                channel=names[c],
                time=datetime.fromtimestamp(lo / 1e6, tz=UTC),
                end_time=datetime.fromtimestamp(hi / 1e6, tz=UTC),
                expected=None,
                observed=None,
                residual=None,
                tolerance=None,
                severity="warning",
                twin_version="bench",
                calibration_version="cal-1",
            )
        )
    with engine.begin() as conn:
        return store.insert_flags(conn=conn, flags=flags)


def write_datasets(engine: sa.Engine, instrument: str, days: int, n: int) -> int:
    disagreeing = 0
    with engine.begin() as conn:
        for i in range(n):
            sha = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
            start = T0 + timedelta(seconds=int((i + 0.5) * days * 86400 / n))
            event = {
                "schema": "beamtwin.acquisitions.v1",
                "dataset_id": "ds-" + sha[:32],
                "instrument_id": instrument,
                "start_time": start.isoformat(),
                "end_time": (start + timedelta(seconds=20)).isoformat(),
                "time_source": "file_metadata",
                "registered_at": (start + timedelta(minutes=1)).isoformat(),
                "file": {
                    "uri": f"file:///data/bench/{i:04d}.emd",
                    "name": f"{i:04d}.emd",
                    "sha256": sha,
                    "size_bytes": 10_000_000 + i,
                    "format": "velox_emd",
                    "mtime": start.isoformat(),
                },
                "operator": f"user{i % 5}",
                "proposal": f"P-{i % 4}",
                "reader": {"name": "rsciio.emd", "version": "0.7", "mapping_version": "1"},
                "instrument": {},
                "state": {},
                "original_metadata": {},
            }
            record, _ = store.register_dataset(
                conn=conn, event=event, source="register", actor="bench"
            )
            bad = i % 10 == 3
            disagreeing += bad
            reported = 3.0e5 if bad else 2.0e5
            body = {
                "schema": "beamtwin.snapshot.v1",
                "dataset_id": record.id,
                "instrument_id": instrument,
                "fields": {
                    "high_tension": {
                        "verdict": "disagrees" if bad else "consistent",
                        "reported": reported,
                        "expected": 2.0e5,
                        "unit": "V",
                        "tolerance": 100.0,
                        "residual": reported - 2.0e5,
                        "quality": "ok",
                    },
                    "defocus": {
                        "verdict": "stale" if i % 17 == 5 else "consistent",
                        "reported": 5e-8,
                        "expected": 5e-8,
                        "unit": "m",
                        "tolerance": 1e-9,
                        "residual": 0.0,
                        "quality": "ok",
                    },
                },
            }
            store.store_snapshot(
                conn=conn,
                dataset_id=record.id,
                body=body,
                twin_version="bench",
                calibration_version="cal-1",
                telemetry_complete=True,
                actor="bench",
                reason="verification",
            )
            if i % 50 == 13:
                store.correct_snapshot(
                    conn=conn, dataset_id=record.id, body=body, actor="bench", reason="reviewed"
                )
    return disagreeing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 day and 50 datasets (< 1 min)")
    parser.add_argument(
        "--save", default=None, metavar="DIR", help="also write report.{json,html,pdf} there"
    )
    args = parser.parse_args()
    days, n_datasets = (1, 50) if args.quick else (7, 300)
    start, end = T0, T0 + timedelta(days=days)

    database = contextlib.ExitStack()
    url = database.enter_context(throwaway_database())
    try:
        store.upgrade_schema(url)
        engine = store.create_store_engine(url)
        instrument = "bench-stem"
        decls = declarations()
        with engine.begin() as conn:
            store.register_instrument(
                conn=conn, instrument=store.InstrumentIn(id=instrument, vendor="virtual")
            )
            chans = store.ensure_channels(
                conn=conn, instrument_id=instrument, declarations=decls, valid_from=T0
            )
            store.store_calibration(
                conn=conn, instrument_id=instrument, version="cal-1", valid_from=T0, body={"k": 1}
            )
            store.store_calibration(
                conn=conn,
                instrument_id=instrument,
                version="cal-2",
                valid_from=T0 + timedelta(hours=12),
                body={"k": 2},
            )
        names = [d.name for d in decls]
        ids = [chans[n].id for n in names]
        gaps = gaps_of(days)
        windows = raw_windows(days, gaps)
        t = time.perf_counter()
        represented = write_rollups(engine, ids, days, windows)
        raw = write_raw(engine, ids, windows, gaps)
        n_flags = write_flags(engine, instrument, days, gaps, names)
        disagreeing = write_datasets(engine, instrument, days, n_datasets)
        setup_s = time.perf_counter() - t
        full = N_CHANNELS * RATE_HZ * days * 86400
        print(
            f"# scale: 1 instrument, {N_CHANNELS} channels at {RATE_HZ} Hz for {days} day(s) "
            f"= {full:.3g} samples represented; rollups written for {represented:.3g} of them, "
            f"raw samples written: {raw:,} (period ends and around {len(gaps)} injected gaps); "
            f"{n_flags} flags, {n_datasets} datasets ({disagreeing} disagreeing); "
            f"setup {setup_s:.1f} s"
        )
        signer = store.AuditSigner.generate()

        parts: dict[str, float] = {}

        def report_once() -> tuple[float, dict, list[int]]:
            t0 = time.perf_counter()
            with engine.begin() as conn:
                built = reports.build_report(
                    conn=conn, instrument_id=instrument, start=start, end=end, signer=signer
                )
            parts["build"] = time.perf_counter() - t0
            sizes = []
            for fmt, render in (
                ("json", reports.render_json),
                ("html", reports.render_html),
                ("pdf", reports.render_pdf),
            ):
                t1 = time.perf_counter()
                sizes.append(len(render(built)))
                parts[fmt] = time.perf_counter() - t1
            return time.perf_counter() - t0, built, sizes

        report_once()  # warm-up: imports matplotlib, signs the first checkpoint
        elapsed, built, sizes = report_once()
        t0 = time.perf_counter()
        with engine.connect() as conn:
            bucket = built["instruments"][0]["telemetry"]["bucket_s"]
            store.query_range(
                conn=conn,
                instrument_id=instrument,
                start=start,
                end=end,
                bucket=timedelta(seconds=bucket),
            )
        range_read_s = time.perf_counter() - t0
        if args.save:
            out = Path(args.save)
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_bytes(reports.render_json(built))
            (out / "report.html").write_bytes(reports.render_html(built))
            (out / "report.pdf").write_bytes(reports.render_pdf(built))
        summary = built["summary"]
        found = summary["gaps"]
        print(
            f"# report: {summary['datasets']} datasets, {summary['datasets_disagreeing']} "
            f"disagreeing, {summary['flags']} flags, {found} gaps found ({len(gaps)} injected), "
            f"{summary['custody_verified']}/{summary['custody_entries']} audit entries proven; "
            f"bytes json {sizes[0]:,}, html {sizes[1]:,}, pdf {sizes[2]:,}"
        )
        assert summary["datasets_disagreeing"] == disagreeing
        assert summary["flags"] == n_flags, "an injected fault (flag) is missing from the report"
        assert found >= len(gaps), "an injected gap was not found"
        print("# time: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
        print(f"# reference: query_range of {N_CHANNELS} channels, {bucket:g} s buckets")
        print(f"range_read_s: {range_read_s:.3f}")
        print(f"week_report_s: {elapsed:.3f}")
        print(f"week_report_vs_range_read: {elapsed / range_read_s:.1f}")
        engine.dispose()
    finally:
        database.close()  # drops the database (and stops an embedded server)


if __name__ == "__main__":
    main()
