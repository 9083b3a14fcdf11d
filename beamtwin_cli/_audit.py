"""``beamtwin audit``: keys, checkpoints, export and verification of the tamper-evident log."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from beamtwin_cli._common import CommandError, api_settings, open_store, signer

if TYPE_CHECKING:
    import provenance_store as store
    from api import ApiSettings
    from beamtwin_cli._common import Subparsers


def add_parsers(sub: Subparsers) -> None:
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
    ).set_defaults(func=audit_keygen)
    acp = audit_sub.add_parser(
        "checkpoint",
        help="sign a checkpoint of the log as it is now (BEAMTWIN_AUDIT_SIGNING_KEY) and print "
        "it as JSON, for publishing",
    )
    acp.add_argument("--output", default=None, metavar="FILE", help="write it here too")
    acp.set_defaults(func=audit_checkpoint)
    aexp = audit_sub.add_parser(
        "export", help="write the log and its checkpoints as JSON lines (offline verification)"
    )
    aexp.add_argument("file", metavar="FILE")
    aexp.set_defaults(func=audit_export)
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
    aver.set_defaults(func=audit_verify)


def _trusted_public_key(settings: ApiSettings) -> bytes | None:
    if settings.audit_public_key:
        try:
            key = base64.b64decode(settings.audit_public_key, validate=True)
        except ValueError as exc:
            raise CommandError("BEAMTWIN_AUDIT_PUBLIC_KEY is not base64") from exc
        if len(key) != 32:
            raise CommandError("BEAMTWIN_AUDIT_PUBLIC_KEY must be 32 bytes (base64)")
        return key
    own = signer(settings)
    return None if own is None else own.public_key


def audit_keygen(args: argparse.Namespace) -> int:
    import provenance_store as store

    new = store.AuditSigner.generate()
    print(f"BEAMTWIN_AUDIT_SIGNING_KEY={new.seed_b64()}")
    print(f"BEAMTWIN_AUDIT_PUBLIC_KEY={base64.b64encode(new.public_key).decode()}")
    print(
        "keep the signing key secret (the API signs checkpoints with it); publish the public "
        "key to whoever verifies the log",
        file=sys.stderr,
    )
    return 0


def audit_checkpoint(args: argparse.Namespace) -> int:
    import provenance_store as store

    own = signer(api_settings())
    if own is None:
        raise CommandError(
            "no signing key: set BEAMTWIN_AUDIT_SIGNING_KEY (make one with `beamtwin audit keygen`)"
        )
    with open_store(args) as conn:
        cp = store.latest_checkpoint(conn=conn, signer=own)
    text = json.dumps(cp.to_json(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def audit_export(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        entries = store.all_audit_entries(conn=conn)
        checkpoints = store.list_checkpoints(conn=conn)
    with open(args.file, "w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
        for cp in checkpoints:
            out.write(json.dumps({"checkpoint": cp.to_json()}, sort_keys=True) + "\n")
    print(f"exported {len(entries)} entries and {len(checkpoints)} checkpoints to {args.file}")
    return 0


def _read_export(path: str) -> tuple[list[store.AuditEntry], list[store.Checkpoint]]:
    import provenance_store as store

    entries: list[store.AuditEntry] = []
    checkpoints: list[store.Checkpoint] = []
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if "checkpoint" in obj and "seq" not in obj:
                        checkpoints.append(store.Checkpoint.from_json(obj["checkpoint"]))
                    else:
                        entries.append(store.AuditEntry.from_json(obj))
                except (ValueError, KeyError, TypeError) as exc:
                    raise CommandError(f"{path}:{number}: not an audit export line: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from exc
    return entries, checkpoints


def _read_checkpoint(path: str) -> store.Checkpoint:
    import provenance_store as store

    try:
        return store.Checkpoint.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{path} is not a checkpoint (JSON): {exc}") from exc


def audit_verify(args: argparse.Namespace) -> int:
    import provenance_store as store

    key = _trusted_public_key(api_settings())
    published = [_read_checkpoint(p) for p in args.checkpoint]
    # Dataset and snapshot rows are checked against the log only in database mode.
    record_findings: list[str] = []
    if args.export:
        entries, checkpoints = _read_export(args.export)
        source = args.export
    else:
        with open_store(args) as conn:
            entries = store.all_audit_entries(conn=conn)
            checkpoints = store.list_checkpoints(conn=conn)
            record_findings = store.verify_records(conn=conn)
            record_findings += store.verify_access_records(conn=conn)
        source = "the database, with its dataset, snapshot, user, grant and token records"
    findings = store.verify_audit_log(entries, checkpoints, public_key=key, published=published)
    findings += record_findings
    for finding in findings:
        print(finding)
    if key is None:
        print(
            "note: no trusted public key (BEAMTWIN_AUDIT_PUBLIC_KEY): signatures were checked "
            "with the key stored beside each checkpoint, which proves nothing about who signed",
            file=sys.stderr,
        )
    print(f"note: not covered: {store.AUDIT_NOT_COVERED}", file=sys.stderr)
    if not checkpoints and not published:
        print(
            "note: no checkpoint: only the entries' own hashes and sequence were checked",
            file=sys.stderr,
        )
    summary = (
        f"{len(entries)} entries, {len(checkpoints)} stored and {len(published)} published "
        f"checkpoints from {source}"
    )
    if findings:
        print(f"audit log NOT verified: {len(findings)} finding(s); {summary}", file=sys.stderr)
        return 1
    print(f"audit log verified: {summary}")
    return 0
