"""Argument parsing and dispatch of the ``beamtwin`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beamtwin",
        description=(
            "Microscope digital twin and provenance tracking: telemetry ingest into a "
            "time-series store, state estimation, verified dataset snapshots."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run everything on one machine: embedded PostgreSQL and broker, ingest, the twin, "
        "a virtual microscope",
        description=(
            "Start an embedded PostgreSQL (unless BEAMTWIN_DATABASE_URL is set) and an embedded "
            "Kafka-protocol broker (unless BEAMTWIN_KAFKA_BOOTSTRAP is set), apply migrations, "
            "start ingest workers, a twin worker and a virtual microscope publishing telemetry, "
            "and show live progress until Ctrl-C or --duration."
        ),
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    demo.add_argument("--rate-hz", type=float, default=100.0, help="telemetry ticks per second")
    demo.add_argument(
        "--extra-channels",
        type=int,
        default=68,
        help="sensor channels beyond the 32 standard ones (default: 100 channels in all)",
    )
    demo.add_argument("--workers", type=int, default=1, help="ingest workers in the group")
    demo.add_argument(
        "--bad-frame-every",
        type=int,
        default=100,
        help="publish one deliberately malformed frame every N frames to show dead-lettering "
        "(0: never)",
    )
    demo.add_argument(
        "--data-dir",
        default=None,
        help="where the embedded PostgreSQL keeps its data (default: .beamtwin/ in the cwd)",
    )
    demo.add_argument(
        "--acquisition-every",
        type=float,
        default=15.0,
        help="register a virtual dataset every SECONDS of telemetry, so snapshots appear "
        "(0: never)",
    )
    demo.add_argument(
        "--api-port",
        type=int,
        default=8000,
        help="serve the REST API on 127.0.0.1:PORT with a fresh admin token (0: do not)",
    )
    demo.set_defaults(func="demo")

    db = sub.add_parser("db", help="database schema management")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="apply migrations up to the newest revision")
    up.add_argument("--database-url", default=None, help="default: BEAMTWIN_DATABASE_URL")
    up.set_defaults(func="db_upgrade")
    chk = db_sub.add_parser("check", help="exit 1 unless the schema is at the newest revision")
    chk.add_argument("--database-url", default=None, help="default: BEAMTWIN_DATABASE_URL")
    chk.set_defaults(func="db_check")

    ing = sub.add_parser(
        "ingest",
        help="run ingest workers (BEAMTWIN_DATABASE_URL and BEAMTWIN_KAFKA_BOOTSTRAP required)",
    )
    ing.add_argument("--workers", type=int, default=1, help="workers (threads) in this process")
    ing.set_defaults(func="ingest")

    tw = sub.add_parser(
        "twin",
        help="run the twin worker: state estimates and flags from the stored telemetry "
        "(BEAMTWIN_DATABASE_URL required)",
        description=(
            "Follow the stored telemetry of instruments window by window with the digital twin "
            "and store its state estimates, flags and a resumable cursor (exactly once, across "
            "restarts). Settings: BEAMTWIN_TWIN_WINDOW_S, BEAMTWIN_TWIN_LATENESS_S, "
            "BEAMTWIN_TWIN_FALSE_ALARMS_PER_DAY, ... (see docs/twin-worker.md)."
        ),
    )
    tw.add_argument(
        "--instrument",
        action="append",
        default=None,
        metavar="ID",
        help="an instrument to follow (repeat for several; default: every registered one)",
    )
    tw.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    tw.set_defaults(func="twin")

    inst = sub.add_parser("instruments", help="register and list instruments")
    inst_sub = inst.add_subparsers(dest="inst_command", required=True, metavar="ACTION")
    reg = inst_sub.add_parser("register", help="register (or update) an instrument")
    reg.add_argument("instrument_id", help="persistent id, e.g. nion-ustem-01")
    reg.add_argument("--vendor", default=None)
    reg.add_argument("--model", default=None)
    reg.add_argument("--serial-number", default=None)
    reg.add_argument("--control-software-version", default=None)
    reg.set_defaults(func="instruments_register")
    lst = inst_sub.add_parser("list", help="list registered instruments")
    lst.set_defaults(func="instruments_list")

    srv = sub.add_parser(
        "serve",
        help="serve the REST API (BEAMTWIN_DATABASE_URL required; see docs/api.md)",
        description=(
            "Serve the REST API under /api/v1 with uvicorn. Refuses a database whose schema is "
            "not current. Settings: BEAMTWIN_DATABASE_URL, BEAMTWIN_API_HOST, BEAMTWIN_API_PORT, "
            "BEAMTWIN_API_MAX_POINTS, ... (see docs/api.md)."
        ),
    )
    srv.add_argument("--host", default=None, help="default: BEAMTWIN_API_HOST or 127.0.0.1")
    srv.add_argument("--port", type=int, default=None, help="default: BEAMTWIN_API_PORT or 8000")
    srv.set_defaults(func="serve")

    users = sub.add_parser("users", help="REST API users, their roles and instrument grants")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    uadd = users_sub.add_parser("add", help="add a user")
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, choices=["viewer", "operator", "auditor", "admin"])
    uadd.add_argument("--reason", default=None, help="why (kept in the audit log)")
    uadd.set_defaults(func="users_add")
    users_sub.add_parser("list", help="list users and their grants").set_defaults(func="users_list")
    ugrant = users_sub.add_parser("grant", help="let a user see an instrument")
    ugrant.add_argument("name")
    ugrant.add_argument("instrument_id")
    ugrant.add_argument("--reason", default=None, help="why (kept in the audit log)")
    ugrant.set_defaults(func="users_grant")
    urevoke = users_sub.add_parser("revoke", help="withdraw a user's grant of an instrument")
    urevoke.add_argument("name")
    urevoke.add_argument("instrument_id")
    urevoke.add_argument("--reason", default=None, help="why (kept in the audit log)")
    urevoke.set_defaults(func="users_revoke")

    tokens = sub.add_parser("tokens", help="REST API bearer tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    tcreate = tokens_sub.add_parser(
        "create", help="create a token for a user and print it (shown this once only)"
    )
    tcreate.add_argument("name")
    tcreate.add_argument("--label", default=None, help="what the token is for")
    tcreate.add_argument(
        "--expires-days", type=float, default=None, help="expire after DAYS (default: never)"
    )
    tcreate.add_argument("--reason", default=None, help="why (kept in the audit log)")
    tcreate.set_defaults(func="tokens_create")
    tlist = tokens_sub.add_parser("list", help="list a user's tokens (never the secrets)")
    tlist.add_argument("name")
    tlist.set_defaults(func="tokens_list")
    trevoke = tokens_sub.add_parser("revoke", help="revoke a token by its id")
    trevoke.add_argument("token_id", type=int)
    trevoke.add_argument("--reason", default=None, help="why (kept in the audit log)")
    trevoke.set_defaults(func="tokens_revoke")

    audit = sub.add_parser(
        "audit",
        help="the tamper-evident audit log: keys, checkpoints, export, verification",
        description=(
            "See docs/audit.md. Keys: BEAMTWIN_AUDIT_SIGNING_KEY, BEAMTWIN_AUDIT_PUBLIC_KEY."
        ),
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_sub.add_parser(
        "keygen", help="print a new Ed25519 key pair for signing checkpoints"
    ).set_defaults(func="audit_keygen")
    acp = audit_sub.add_parser(
        "checkpoint",
        help="sign a checkpoint of the log as it is now (BEAMTWIN_AUDIT_SIGNING_KEY) and print "
        "it as JSON, for publishing",
    )
    acp.add_argument("--output", default=None, metavar="FILE", help="write it here too")
    acp.set_defaults(func="audit_checkpoint")
    aexp = audit_sub.add_parser(
        "export", help="write the log and its checkpoints as JSON lines (offline verification)"
    )
    aexp.add_argument("file", metavar="FILE")
    aexp.set_defaults(func="audit_export")
    aver = audit_sub.add_parser(
        "verify",
        help="recompute every leaf hash and the tree, check the checkpoints; exit 1 on a finding",
        description=(
            "Recompute every entry's leaf hash and the Merkle tree, check each stored "
            "checkpoint's signature and root and the consistency between them, and a published "
            "checkpoint (--checkpoint). Reads the database (BEAMTWIN_DATABASE_URL), or an "
            "export (--export) without one. Each finding is printed; exit status 1 if any."
        ),
    )
    aver.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a published checkpoint (JSON of `beamtwin audit checkpoint` or the API); repeatable",
    )
    aver.add_argument("--export", default=None, metavar="FILE", help="verify this export")
    aver.set_defaults(func="audit_verify")

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
    rep.add_argument("--database-url", default=None, help="default: BEAMTWIN_DATABASE_URL")
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
    rep.set_defaults(func="report")

    pv = sub.add_parser(
        "publish-virtual", help="publish a virtual microscope's telemetry to the broker"
    )
    pv.add_argument("--instrument", default="virtual-stem-01", help="instrument id")
    pv.add_argument("--rate-hz", type=float, default=50.0)
    pv.add_argument("--duration", type=float, default=None, help="seconds of telemetry")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--extra-channels", type=int, default=0)
    pv.add_argument("--ticks-per-frame", type=int, default=None, help="default: rate / 10")
    pv.add_argument(
        "--no-pacing",
        action="store_true",
        help="publish as fast as possible instead of in real time",
    )
    pv.set_defaults(func="publish_virtual")

    rh = sub.add_parser(
        "replay-holder-log",
        help="publish a Protochips holder log (CSV) as telemetry with its own times and units",
    )
    rh.add_argument("path", help="the holder log CSV")
    rh.add_argument("--instrument", required=True, help="instrument the holder sits in")
    rh.add_argument(
        "--utc-offset-hours",
        type=float,
        default=0.0,
        help="the log's clock offset from UTC (the file records local time without zone)",
    )
    rh.add_argument("--ticks-per-frame", type=int, default=500)
    rh.set_defaults(func="replay_holder_log")

    rg = sub.add_parser(
        "register",
        help="register data files as acquisition events (vendor metadata normalized)",
        description=(
            "Read each data file (Gatan DM3/DM4, Velox EMD, TIA EMI/SER, TIFF incl. JEOL SightX, "
            "MRC with a Direct Electron _info.txt, DE _info.txt, Protochips CSV; also gzipped), "
            "normalize its metadata and publish one acquisition event per file to "
            "BEAMTWIN_ACQUISITIONS_TOPIC on BEAMTWIN_KAFKA_BOOTSTRAP, keyed by instrument id. "
            "A file that cannot be registered is reported (and dead-lettered when a broker is "
            "configured); the others are still registered; the exit status is then 1."
        ),
    )
    rg.add_argument("files", nargs="+", metavar="FILE", help="data files")
    rg.add_argument(
        "--instrument",
        default=None,
        metavar="ID",
        help="instrument that acquired the files (without it, BEAMTWIN_INGEST_AUTO_REGISTER=true "
        "derives an id from each file's vendor, model and serial number)",
    )
    rg.add_argument("--operator", default=None, help="who acquired the data")
    rg.add_argument("--proposal", default=None, help="proposal / project id")
    rg.add_argument(
        "--dry-run",
        action="store_true",
        help="print each event as one line of JSON instead of publishing (no broker needed)",
    )
    rg.set_defaults(func="register")

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
    ex.set_defaults(func="export")

    snap = sub.add_parser(
        "snapshots",
        help="run the snapshot worker: acquisition events -> datasets and verified snapshots "
        "(BEAMTWIN_DATABASE_URL and BEAMTWIN_KAFKA_BOOTSTRAP required)",
        description=(
            "Consume BEAMTWIN_ACQUISITIONS_TOPIC in the consumer group "
            "BEAMTWIN_SNAPSHOT_GROUP_ID (default beamtwin-snapshots): register each event's "
            "dataset, compute the twin's snapshot of the acquisition and store it, in one "
            "transaction; dead-letter invalid events; every BEAMTWIN_SNAPSHOT_SWEEP_INTERVAL_S "
            "re-verify datasets whose telemetry arrived late (see docs/acquisitions.md)."
        ),
    )
    snap.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    snap.set_defaults(func="snapshots")

    wa = sub.add_parser(
        "watch",
        help="register the data files that appear in a folder (polling, recursive)",
        description=(
            "Scan DIR recursively every --interval seconds; register each new or changed file "
            "once its size and modification time have been stable for --settle seconds, as "
            "`beamtwin register` does (events with source `watch`, refused files "
            "dead-lettered). What was registered is remembered in a state file, so a restart "
            "registers nothing twice. Hidden files and *.tmp/*.part files are skipped."
        ),
    )
    wa.add_argument("directory", metavar="DIR", help="the folder to watch")
    wa.add_argument(
        "--instrument",
        default=None,
        metavar="ID",
        help="instrument that acquires the files (as for `beamtwin register`)",
    )
    wa.add_argument("--operator", default=None, help="who acquires the data")
    wa.add_argument("--proposal", default=None, help="proposal / project id")
    wa.add_argument("--interval", type=float, default=2.0, help="seconds between scans")
    wa.add_argument("--settle", type=float, default=5.0, help="seconds a file must stay unchanged")
    wa.add_argument(
        "--state",
        default=None,
        metavar="FILE",
        help="where to remember registered files (default: DIR/.beamtwin-watch.json)",
    )
    wa.add_argument("--once", action="store_true", help="scan once (no settling wait) and exit")
    wa.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    wa.set_defaults(func="watch")

    bs = sub.add_parser(
        "bluesky",
        help="turn bluesky runs (event-model documents on Kafka) into acquisition events",
        description=(
            "Consume bluesky documents (name, doc) as bluesky-kafka publishes them (msgpack or "
            "JSON) from BEAMTWIN_BLUESKY_TOPIC (default beamtwin.bluesky.v1) and publish one "
            "acquisition event per finished run to BEAMTWIN_ACQUISITIONS_TOPIC; malformed "
            "documents are dead-lettered (see docs/acquisitions.md)."
        ),
    )
    bs.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    bs.set_defaults(func="bluesky")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)
    # Subcommands import their dependencies only when they run, so --help stays fast.
    from beamtwin_cli import _commands

    try:
        code: int = getattr(_commands, args.func)(args)
    except _commands.CommandError as exc:
        print(f"beamtwin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
