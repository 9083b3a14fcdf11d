"""The report's chain of custody: for each dataset its file, record and snapshot hashes, and
the audit-log entries that name it, each with its RFC 6962 inclusion proof against the newest
signed checkpoint (``provenance_store.inclusion_proofs``) and whether the proof verifies."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from api._reports._format import b64, iso, json_ready

_DATASET_ID = re.compile(r"ds-[0-9a-f]{32}")


def _checkpoint(conn: sa.Connection, signer: store.AuditSigner | None) -> store.Checkpoint | None:
    """The newest checkpoint (signed first by ``signer`` when the log grew), ``None`` when
    there is none."""
    try:
        return store.latest_checkpoint(conn=conn, signer=signer)
    except store.StoreError:
        return None


def _entries_by_dataset(
    conn: sa.Connection, wanted: set[str]
) -> tuple[dict[str, list[store.AuditEntry]], list[bytes]]:
    """The audit entries naming each ``wanted`` dataset, and every leaf hash of the log."""
    entries: dict[str, list[store.AuditEntry]] = {}
    leaves: list[bytes] = []
    for entry in store.all_audit_entries(conn=conn):
        leaves.append(entry.leaf_hash)
        for ident in set(_DATASET_ID.findall(entry.subject)) & wanted:
            entries.setdefault(ident, []).append(entry)
    return entries, leaves


def entry_matches(ds: Mapping[str, Any], after: Mapping[str, Any]) -> bool | None:
    """Whether the hashes an audit entry recorded agree with the dataset's record and its
    snapshot of the same version; ``None`` when the entry records no hash of them."""
    checks = []
    for key, value in (("file_sha256", ds["file_sha256"]), ("record_sha256", ds["record_sha256"])):
        if key in after:
            checks.append(after[key] == value)
    snap = ds["snapshot"]
    if "body_sha256" in after and snap is not None and after.get("version") == snap["version"]:
        checks.append(after["body_sha256"] == snap["body_sha256"])
    return all(checks) if checks else None


def _entry_record(
    entry: store.AuditEntry,
    ds: Mapping[str, Any],
    proof: list[bytes] | None,
    checkpoint: store.Checkpoint | None,
) -> dict[str, Any]:
    """One audit entry of a dataset: what it recorded, whether that matches the dataset, and
    its inclusion proof (base64) and whether it verifies against ``checkpoint``."""
    after = entry.after if isinstance(entry.after, Mapping) else {}
    verified = (
        checkpoint is not None
        and proof is not None
        and store.verify_inclusion(
            entry.computed_leaf_hash(),
            entry.seq,
            checkpoint.tree_size,
            proof,
            checkpoint.root_hash,
        )
    )
    return {
        "seq": entry.seq,
        "time": iso(entry.time),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "leaf_hash": entry.leaf_hash.hex(),
        "recorded": json_ready(
            {k: after[k] for k in sorted(after) if k.endswith("sha256") or k == "version"}
        ),
        "matches_record": entry_matches(ds, after),
        "inclusion_proof": None if proof is None else [b64(p) for p in proof],
        "verified": verified,
    }


def custody_section(
    conn: sa.Connection,
    datasets: Sequence[dict[str, Any]],
    signer: store.AuditSigner | None,
) -> dict[str, Any]:
    """The checkpoint, whether its signature is valid, how many entries were found and
    proven, and per dataset (in the order given) its hashes and audit entries."""
    checkpoint = _checkpoint(conn, signer)
    entries, leaves = _entries_by_dataset(conn, {d["id"] for d in datasets})
    size = 0 if checkpoint is None else min(checkpoint.tree_size, len(leaves))
    proven = {e.seq for es in entries.values() for e in es if e.seq < size}
    paths = store.inclusion_proofs(leaves[:size], proven)
    out = []
    for ds in datasets:
        snap = ds["snapshot"]
        records = [
            _entry_record(entry, ds, paths.get(entry.seq), checkpoint)
            for entry in entries.get(ds["id"], [])
        ]
        out.append(
            {
                "dataset_id": ds["id"],
                "file_sha256": ds["file_sha256"],
                "record_sha256": ds["record_sha256"],
                "snapshot_version": None if snap is None else snap["version"],
                "snapshot_body_sha256": None if snap is None else snap["body_sha256"],
                "audit_entries": records,
            }
        )
    listed = [r for d in out for r in d["audit_entries"]]
    return {
        "checkpoint": None if checkpoint is None else json_ready(checkpoint.to_json()),
        "checkpoint_signature_valid": None if checkpoint is None else checkpoint.signature_valid(),
        "entries": len(listed),
        "verified": sum(1 for r in listed if r["verified"]),
        "datasets": out,
    }
