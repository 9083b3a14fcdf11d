"""The tamper-evident audit log: append-only entries, an RFC 6962 Merkle tree over their leaf
hashes, Ed25519-signed checkpoints of its root, and the verification that names what changed.

An entry's leaf hash is ``SHA-256(0x00 || canonical_entry_bytes(entry))``; entry ``seq`` is leaf
``seq`` of the tree (``seq`` starts at 0, without gaps). A checkpoint is the text::

    <origin>\\n<tree size, decimal>\\n<root hash, standard base64>\\n

(the body of a C2SP ``tlog-checkpoint``), signed with Ed25519; the store keeps the signature and
the public key with it.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from provenance_store._errors import StoreError
from provenance_store._merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
)
from provenance_store._time import as_utc

DEFAULT_ORIGIN = "beamtwin/audit"
#: Actor of an entry whose writer did not say who acted.
UNKNOWN_ACTOR = "unknown"
#: Serializes appends, so ``seq`` is gapless and in commit order ("beamaudt").
_APPEND_LOCK_KEY = 0x62_65_61_6D_61_75_64_74

_NEXT = sa.text(
    """
    SELECT coalesce(max(seq) + 1, 0) AS seq, now() AS time,
           CAST(:before AS jsonb) AS before, CAST(:after AS jsonb) AS after
    FROM audit_log
    """
)
_INSERT = sa.text(
    """
    INSERT INTO audit_log (seq, time, actor, action, subject, before, after, reason, leaf_hash)
    VALUES (:seq, :time, :actor, :action, :subject, CAST(:before AS jsonb),
            CAST(:after AS jsonb), :reason, :leaf_hash)
    """
)
_ENTRY_COLUMNS = "seq, time, actor, action, subject, before, after, reason, leaf_hash"
_ENTRIES = sa.text(
    f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq >= :start ORDER BY seq LIMIT :limit"
)
#: The instrument an audit entry is about (SQL over ``audit_log``'s columns), NULL for an
#: entry about no instrument (a user, a token).
AUDIT_ENTRY_INSTRUMENT = """
    CASE
      WHEN action LIKE 'grant.%' THEN coalesce(after->>'instrument', before->>'instrument')
      WHEN action LIKE 'calibration.%' THEN substring(subject from '^calibration:(.*)/[^/]*$')
      WHEN action LIKE 'dataset.%'
        THEN coalesce(after->>'instrument_id', before->>'instrument_id')
      WHEN action LIKE 'snapshot.%' THEN (
        SELECT d.instrument_id FROM dataset d
        WHERE d.id = substring(audit_log.subject from '^snapshot:(.*)/v[0-9]+$'))
      WHEN action LIKE 'job.%' THEN coalesce(after->>'instrument_id', before->>'instrument_id')
    END
"""
_ENTRIES_OF_INSTRUMENTS = sa.text(
    f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE seq >= :start "
    f"AND ({AUDIT_ENTRY_INSTRUMENT}) = ANY(:instruments) ORDER BY seq LIMIT :limit"
)
_ALL_ENTRIES = sa.text(f"SELECT {_ENTRY_COLUMNS} FROM audit_log ORDER BY seq")
_LEAVES = sa.text("SELECT leaf_hash FROM audit_log WHERE seq < :n ORDER BY seq")
_SIZE = sa.text("SELECT count(*) FROM audit_log")
_CP_COLUMNS = "tree_size, root_hash, origin, public_key, signature, created_at"
_LATEST_CP = sa.text(f"SELECT {_CP_COLUMNS} FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1")
_ALL_CPS = sa.text(f"SELECT {_CP_COLUMNS} FROM audit_checkpoint ORDER BY tree_size")
_INSERT_CP = sa.text(
    """
    INSERT INTO audit_checkpoint (tree_size, root_hash, origin, public_key, signature)
    VALUES (:tree_size, :root_hash, :origin, :public_key, :signature)
    ON CONFLICT (tree_size) DO NOTHING
    """
)
_GET_CP = sa.text(f"SELECT {_CP_COLUMNS} FROM audit_checkpoint WHERE tree_size = :n")


#: What ``beamtwin audit verify`` does not check (it checks the log and its checkpoints, and the
#: dataset, snapshot, user, grant and token rows against the log): rows changed in SQL there
#: are not found.
AUDIT_NOT_COVERED = (
    "the PROV graph (prov_node, prov_relation), calibration rows after they were stored, "
    "instruments and channels, telemetry samples and rollups, twin estimates and flags, "
    "token hashes and last use, users and tokens older than the audit log"
)


class AuditRangeError(StoreError, ValueError):
    """A sequence number or tree size the audit log does not have (yet)."""


# ---------------------------------------------------------------------------- canonical form
def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise StoreError(f"an audit entry cannot hold the number {value!r}")
    if isinstance(value, Mapping):
        return {str(k): _canonical_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    return value


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2026-03-02T08:00:00.000000Z``."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value``: object keys sorted, no whitespace, UTF-8 (no
    ``\\u`` escapes beyond JSON's required ones), integers in full, floats in their shortest
    round-trip form (Python's ``repr``: ``0.1``, ``1e-07``, ``1e+16``), NaN and infinities
    refused, datetimes as ``format_time`` strings.

    Raises:
        StoreError: a non-finite float or a value JSON cannot hold.
    """
    try:
        text = json.dumps(
            _canonical_value(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"not canonical JSON: {exc}") from exc
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry. ``before``/``after`` are the subject's state (JSON values, ``None``
    when it did not exist / does not exist any more); ``leaf_hash`` is the stored hash."""

    seq: int
    time: datetime
    actor: str
    action: str
    subject: str
    before: Any
    after: Any
    reason: str | None
    leaf_hash: bytes

    def content(self) -> dict[str, Any]:
        """The hashed fields (everything but ``leaf_hash``)."""
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }

    def computed_leaf_hash(self) -> bytes:
        """The leaf hash the entry's fields give now."""
        return leaf_hash(canonical_json(self.content()))

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object (the export format; ``leaf_hash`` in hex)."""
        return {
            **_canonical_value(self.content()),
            "leaf_hash": self.leaf_hash.hex(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AuditEntry:
        return cls(
            seq=int(obj["seq"]),
            time=datetime.fromisoformat(obj["time"]).astimezone(UTC),
            actor=obj["actor"],
            action=obj["action"],
            subject=obj["subject"],
            before=obj.get("before"),
            after=obj.get("after"),
            reason=obj.get("reason"),
            leaf_hash=bytes.fromhex(obj["leaf_hash"]),
        )


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        time=as_utc(row.time),
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        before=row.before,
        after=row.after,
        reason=row.reason,
        leaf_hash=bytes(row.leaf_hash),
    )


def append_audit(
    *,
    conn: sa.Connection,
    actor: str | None,
    action: str,
    subject: str,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
) -> AuditEntry:
    """Append an entry in the caller's transaction (it commits or rolls back with the action
    it records). Appends are serialized by a transaction-level advisory lock, so ``seq`` has
    no gaps and follows commit order.

    ``before``/``after`` pass through PostgreSQL's ``jsonb`` before they are hashed, so the
    hash is of exactly the values the database gives back.
    """
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _APPEND_LOCK_KEY})
    before_text = None if before is None else canonical_json(before).decode()
    after_text = None if after is None else canonical_json(after).decode()
    head = conn.execute(_NEXT, {"before": before_text, "after": after_text}).one()
    entry = AuditEntry(
        seq=int(head.seq),
        time=as_utc(head.time),
        actor=actor or UNKNOWN_ACTOR,
        action=action,
        subject=subject,
        before=head.before,
        after=head.after,
        reason=reason,
        leaf_hash=b"",
    )
    digest = entry.computed_leaf_hash()
    conn.execute(
        _INSERT,
        {
            **entry.content(),
            "before": before_text,
            "after": after_text,
            "leaf_hash": digest,
        },
    )
    return AuditEntry(**{**entry.content(), "leaf_hash": digest})


def audit_size(*, conn: sa.Connection) -> int:
    """How many entries the log holds."""
    return int(conn.execute(_SIZE).scalar_one())


def audit_entries(
    *,
    conn: sa.Connection,
    start_seq: int = 0,
    limit: int = 100,
    instruments: Collection[str] | None = None,
) -> list[AuditEntry]:
    """Up to ``limit`` entries from ``start_seq`` on, by ``seq``.

    ``instruments``: only the entries about one of these instruments (``AUDIT_ENTRY_INSTRUMENT``
    says which an entry is about: a grant's, a calibration's, a dataset's or a snapshot's
    instrument); entries about no instrument (users, tokens) are left out too. ``None``: every
    entry.
    """
    if instruments is None:
        rows = conn.execute(_ENTRIES, {"start": start_seq, "limit": limit})
    else:
        rows = conn.execute(
            _ENTRIES_OF_INSTRUMENTS,
            {"start": start_seq, "limit": limit, "instruments": sorted(instruments)},
        )
    return [_entry(r) for r in rows]


def all_audit_entries(*, conn: sa.Connection) -> list[AuditEntry]:
    """Every entry, by ``seq`` (for verification and export)."""
    return [_entry(r) for r in conn.execute(_ALL_ENTRIES)]


def _leaves(conn: sa.Connection, n: int) -> list[bytes]:
    leaves = [bytes(h) for h in conn.execute(_LEAVES, {"n": n}).scalars()]
    if len(leaves) != n:
        raise AuditRangeError(f"the audit log holds {len(leaves)} entries, not {n}")
    return leaves


def audit_inclusion_proof(*, conn: sa.Connection, seq: int, tree_size: int) -> list[bytes]:
    """The RFC 6962 audit path of entry ``seq`` in the tree of the first ``tree_size`` entries.

    Raises:
        AuditRangeError: ``seq >= tree_size`` or the log is smaller than ``tree_size``.
    """
    if not 0 <= seq < tree_size:
        raise AuditRangeError(f"entry {seq} is not in a tree of size {tree_size}")
    return inclusion_proof(_leaves(conn, tree_size), seq)


def audit_consistency_proof(*, conn: sa.Connection, first: int, second: int) -> list[bytes]:
    """The RFC 6962 consistency proof between the trees of sizes ``first <= second``.

    Raises:
        AuditRangeError: ``first > second`` or the log is smaller than ``second``.
    """
    if not 0 <= first <= second:
        raise AuditRangeError(f"first ({first}) must be between 0 and second ({second})")
    return consistency_proof(_leaves(conn, second), first)


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_text(origin: str, tree_size: int, root: bytes) -> str:
    """The signed text of a checkpoint: origin, size and base64 root, one per line."""
    return f"{origin}\n{tree_size}\n{base64.b64encode(root).decode()}\n"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the tree's size and root hash."""

    tree_size: int
    root_hash: bytes
    origin: str
    public_key: bytes
    signature: bytes
    created_at: datetime | None = None

    @property
    def text(self) -> str:
        return checkpoint_text(self.origin, self.tree_size, self.root_hash)

    def signature_valid(self, public_key: bytes | None = None) -> bool:
        """Whether the signature is by ``public_key`` (default: the key stored with it)."""
        key = Ed25519PublicKey.from_public_bytes(public_key or self.public_key)
        try:
            key.verify(self.signature, self.text.encode("utf-8"))
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as JSON (the published-checkpoint file format)."""
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "public_key": base64.b64encode(self.public_key).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "checkpoint": self.text,
            "created_at": None if self.created_at is None else format_time(self.created_at),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Checkpoint:
        created = obj.get("created_at")
        return cls(
            tree_size=int(obj["tree_size"]),
            root_hash=base64.b64decode(obj["root_hash"]),
            origin=obj["origin"],
            public_key=base64.b64decode(obj["public_key"]),
            signature=base64.b64decode(obj["signature"]),
            created_at=None if created is None else datetime.fromisoformat(created),
        )


class AuditSigner:
    """An Ed25519 signing key for checkpoints (from a base64 raw 32-byte seed)."""

    def __init__(self, private_key: Ed25519PrivateKey, origin: str = DEFAULT_ORIGIN):
        self._key = private_key
        self.origin = origin
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def from_seed_b64(cls, seed: str, origin: str = DEFAULT_ORIGIN) -> AuditSigner:
        try:
            raw = base64.b64decode(seed, validate=True)
        except ValueError as exc:
            raise StoreError("the audit signing key is not base64") from exc
        if len(raw) != 32:
            raise StoreError("the audit signing key must be a base64 raw 32-byte Ed25519 seed")
        return cls(Ed25519PrivateKey.from_private_bytes(raw), origin)

    @classmethod
    def generate(cls, origin: str = DEFAULT_ORIGIN) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate(), origin)

    def seed_b64(self) -> str:
        raw = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return base64.b64encode(raw).decode()

    def sign(self, tree_size: int, root: bytes) -> Checkpoint:
        text = checkpoint_text(self.origin, tree_size, root)
        return Checkpoint(
            tree_size=tree_size,
            root_hash=root,
            origin=self.origin,
            public_key=self.public_key,
            signature=self._key.sign(text.encode("utf-8")),
        )

    def __repr__(self) -> str:  # never the key
        return f"AuditSigner(origin={self.origin!r})"


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        tree_size=int(row.tree_size),
        root_hash=bytes(row.root_hash),
        origin=row.origin,
        public_key=bytes(row.public_key),
        signature=bytes(row.signature),
        created_at=as_utc(row.created_at),
    )


def latest_checkpoint(*, conn: sa.Connection, signer: AuditSigner | None = None) -> Checkpoint:
    """The newest signed checkpoint; with ``signer``, a new one is made and stored first when
    the log grew since the newest (or none exists yet).

    Raises:
        StoreError: no checkpoint exists and no signer was given.
    """
    row = conn.execute(_LATEST_CP).first()
    if signer is None:
        if row is None:
            raise StoreError("the audit log has no checkpoint yet")
        return _checkpoint(row)
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _APPEND_LOCK_KEY})
    size = audit_size(conn=conn)
    row = conn.execute(_LATEST_CP).first()
    if row is not None and int(row.tree_size) >= size:
        return _checkpoint(row)
    cp = signer.sign(size, root_hash(_leaves(conn, size)))
    conn.execute(
        _INSERT_CP,
        {
            "tree_size": cp.tree_size,
            "root_hash": cp.root_hash,
            "origin": cp.origin,
            "public_key": cp.public_key,
            "signature": cp.signature,
        },
    )
    return _checkpoint(conn.execute(_GET_CP, {"n": size}).one())


def list_checkpoints(*, conn: sa.Connection) -> list[Checkpoint]:
    """Every stored checkpoint, by tree size."""
    return [_checkpoint(r) for r in conn.execute(_ALL_CPS)]


# ---------------------------------------------------------------------------- verification
def _ranges(numbers: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _missing(lo: int, hi: int) -> str:
    return f"entry {lo} missing" if lo == hi else f"entries {lo}..{hi} missing"


def verify_audit_log(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[Checkpoint],
    *,
    public_key: bytes | None = None,
    published: Sequence[Checkpoint] = (),
) -> list[str]:
    """What is wrong with the log, in words; empty when it verifies.

    Recomputes every entry's leaf hash from its fields (an altered entry), finds gaps in
    ``seq`` (deleted entries, also past the end when a checkpoint is larger than the log),
    recomputes the tree root at every checkpoint's size from the recomputed leaves (an entry
    altered together with its stored hash), checks each checkpoint's signature (by
    ``public_key`` when given, else by the key stored with it) and the consistency of each
    checkpoint with the next, and checks ``published`` checkpoints the same way.
    """
    findings: list[str] = []
    by_seq: dict[int, AuditEntry] = {}
    for entry in entries:
        if entry.seq in by_seq:
            findings.append(f"entry seq {entry.seq} appears more than once")
        by_seq.setdefault(entry.seq, entry)
    for entry in entries:
        if entry.computed_leaf_hash() != entry.leaf_hash:
            findings.append(f"entry seq {entry.seq} altered: leaf hash mismatch")
    all_cps = [("checkpoint", cp) for cp in checkpoints] + [
        ("published checkpoint", cp) for cp in published
    ]
    end = max([0, *(seq + 1 for seq in by_seq), *(cp.tree_size for _, cp in all_cps)])
    for lo, hi in _ranges(s for s in range(end) if s not in by_seq):
        findings.append(_missing(lo, hi))
    complete = len(by_seq) == end
    leaves = [by_seq[s].computed_leaf_hash() for s in range(end)] if complete else []
    roots: dict[int, bytes] = {}
    for kind, cp in all_cps:
        if not cp.signature_valid(public_key):
            findings.append(f"{kind} {cp.tree_size} signature invalid")
        if not complete:
            findings.append(f"{kind} {cp.tree_size} cannot be checked: entries are missing")
            continue
        root = roots.setdefault(cp.tree_size, root_hash(leaves[: cp.tree_size]))
        if root != cp.root_hash:
            findings.append(f"{kind} {cp.tree_size} root mismatch")
    ordered = sorted(checkpoints, key=lambda cp: cp.tree_size)
    if complete:
        for first, second in itertools.pairwise(ordered):
            proof = consistency_proof(leaves[: second.tree_size], first.tree_size)
            if not verify_consistency(
                first.tree_size, second.tree_size, first.root_hash, second.root_hash, proof
            ):
                findings.append(
                    f"checkpoints {first.tree_size} and {second.tree_size} are not consistent"
                )
    return findings
