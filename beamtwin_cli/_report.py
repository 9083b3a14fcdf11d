"""``beamtwin report`` (audit reports) and ``beamtwin export`` (a dataset's record as
PROV-JSON, an RO-Crate or a NeXus sidecar)."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from beamtwin_cli._common import (
    CommandError,
    add_database_url,
    api_settings,
    aware,
    open_store,
    signer,
)

if TYPE_CHECKING:
    from beamtwin_cli._common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    _add_report(sub)
    _add_export(sub)


def _add_report(sub: Subparsers) -> None:
    rep = sub.add_parser(
        "report",
        help="write an audit report of an instrument and period, or of a proposal "
        "(JSON, HTML or PDF; see docs/reports.md)",
        description=(
            "Build an audit report from the store (BEAMTWIN_DATABASE_URL): datasets and their "
            "verification, twin flags, telemetry coverage and gaps, calibrations in force, "
            "key-channel plots and the chain of custody with Merkle inclusion proofs. A "
            "checkpoint is signed first when BEAMTWIN_AUDIT_SIGNING_KEY is set and the log grew. "
            "The same store contents and arguments give the same bytes."
        ),
    )
    subject = rep.add_mutually_exclusive_group(required=True)
    subject.add_argument("--instrument", metavar="ID", help="report on this instrument")
    subject.add_argument("--proposal", metavar="P", help="report on this proposal")
    rep.add_argument(
        "--start", default=None, help="period start, ISO 8601 with a zone (instrument: required)"
    )
    rep.add_argument(
        "--end",
        default=None,
        help="period end (excluded), ISO 8601 with a zone (instrument: required)",
    )
    rep.add_argument(
        "--format",
        choices=["json", "html", "pdf"],
        default=None,
        help="default: from the output's extension, else json",
    )
    rep.add_argument("--output", required=True, metavar="FILE", help="where to write ('-': stdout)")
    add_database_url(rep)
    rep.add_argument(
        "--gap-threshold",
        type=float,
        default=10.0,
        metavar="S",
        help="a stretch of a channel without samples longer than this is a gap [s]",
    )
    rep.add_argument(
        "--generated-at",
        default=None,
        metavar="TIME",
        help="write this generation time into the report (default: none, for identical bytes)",
    )
    rep.set_defaults(func=report)


def _add_export(sub: Subparsers) -> None:
    ex = sub.add_parser(
        "export",
        help="export a dataset's record as W3C PROV-JSON, an RO-Crate or a NeXus/HDF5 sidecar "
        "(BEAMTWIN_DATABASE_URL required; see docs/exports.md)",
        description=(
            "Export a registered dataset: its provenance graph as W3C PROV-JSON (prov), an "
            "RO-Crate 1.1 with the verified snapshot and the provenance (rocrate), or a NeXus "
            "NXem-style HDF5 sidecar with the snapshot (nexus). rocrate and nexus need a "
            "verified snapshot (exit status 1 without one); an unknown dataset is exit status 2."
        ),
    )
    ex.add_argument("dataset_id", metavar="DATASET_ID", help="the dataset, ds-<32 hex digits>")
    ex.add_argument("--format", required=True, choices=["prov", "rocrate", "nexus"])
    ex.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="prov: a file ('-': standard output); rocrate: a directory; nexus: a file (.nxs)",
    )
    ex.add_argument(
        "--snapshot-version",
        type=int,
        default=None,
        metavar="N",
        help="rocrate/nexus: export snapshot version N (default: the current one)",
    )
    ex.add_argument(
        "--include-file",
        action="store_true",
        help="rocrate: copy the data file into the crate (when its file:// URI exists here)",
    )
    ex.add_argument(
        "--license", default=None, metavar="URL", help="rocrate: the licence of the crate"
    )
    ex.set_defaults(func=export)


# ---------------------------------------------------------------------- report
def report(args: argparse.Namespace) -> int:
    import api as reports

    fmt = args.format or next(
        (f for f in ("json", "html", "pdf") if args.output.lower().endswith(f".{f}")), "json"
    )
    start, end = aware("start", args.start), aware("end", args.end)
    if args.instrument is not None and (start is None or end is None):
        raise CommandError("an instrument report needs --start and --end")
    if args.gap_threshold <= 0:
        raise CommandError("--gap-threshold must be positive")
    settings = api_settings()
    own = signer(settings)
    try:
        with open_store(args) as conn:
            built = reports.build_report(
                conn=conn,
                instrument_id=args.instrument,
                proposal=args.proposal,
                start=start,
                end=end,
                signer=own,
                gap_threshold=timedelta(seconds=args.gap_threshold),
                generated_at=aware("generated-at", args.generated_at),
                # The API's limit (BEAMTWIN_API_MAX_RAW_RANGE_DAYS), with its message.
                max_span=timedelta(days=settings.api_max_raw_range_days),
            )
    except reports.ReportError as exc:
        raise CommandError(str(exc)) from exc
    render = {"json": reports.render_json, "html": reports.render_html, "pdf": reports.render_pdf}
    data = render[fmt](built)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(args.output).write_bytes(data)
        summary = built["summary"]
        print(
            f"wrote {args.output} ({fmt}, {len(data)} bytes): {summary['datasets']} datasets, "
            f"{summary['datasets_disagreeing']} disagreeing, {summary['flags']} flags, "
            f"{summary['gaps']} gaps, {summary['custody_verified']} of "
            f"{summary['custody_entries']} audit entries proven",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------- export
def export(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        dataset = store.get_dataset(conn=conn, dataset_id=args.dataset_id)
        if dataset is None:
            raise CommandError(
                f"no dataset {args.dataset_id!r} is registered (ids look like ds-<32 hex digits>; "
                "`beamtwin register` registers files)"
            )
        if args.snapshot_version is None:
            snapshot = store.current_snapshot(conn=conn, dataset_id=dataset.id)
        else:
            history = store.snapshot_history(conn=conn, dataset_id=dataset.id)
            snapshot = next((s for s in history if s.version == args.snapshot_version), None)
        graph = store.prov_graph(conn=conn, dataset_id=dataset.id)
    output = Path(args.output)
    try:
        if args.format == "prov":
            text = store.prov_json(graph)
            if args.output == "-":
                sys.stdout.write(text)
                return 0
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
            print(f"wrote the PROV-JSON of {dataset.id} to {output}")
            return 0
        if snapshot is None:
            which = (
                "no verified snapshot yet (the snapshot worker, `beamtwin snapshots`, makes one)"
                if args.snapshot_version is None
                else f"no snapshot version {args.snapshot_version}"
            )
            print(f"beamtwin export: error: dataset {dataset.id} has {which}", file=sys.stderr)
            return 1
        if args.format == "rocrate":
            crate = store.write_ro_crate(
                dataset=dataset,
                snapshot=snapshot,
                graph=graph,
                out_dir=output,
                include_file=args.include_file,
                license=args.license,
            )
            print(f"wrote an RO-Crate of {dataset.id} (snapshot v{snapshot.version}) to {crate}")
        else:
            path = store.write_nexus_sidecar(dataset=dataset, snapshot=snapshot, path=output)
            print(f"wrote a NeXus sidecar of {dataset.id} (snapshot v{snapshot.version}) to {path}")
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc}") from exc
    return 0
