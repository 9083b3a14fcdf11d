"""Registering data files: build each file's acquisition event, publish it keyed by instrument,
and dead-letter the files that cannot be registered, with the reason.

A file that cannot be registered never stops the others. Its dead letter (on the usual
dead-letter topic) has no original message to keep: its value is a small JSON document naming
the file (URI, size, SHA-256 when readable, the instrument, operator and proposal asked for),
its key the instrument id when there is one, and the ``beamtwin.dlq.*`` headers say why
(``unknown_format``, ``unreadable_file``, ``unknown_instrument``, ``schema``), with topic
``beamtwin.acquisitions.v1`` and partition and offset ``-1`` (it never was on a topic).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ingest._acquisition import AcquisitionEventV1
from ingest._deadletter import DeadLetterSender
from ingest._errors import RejectedMessage
from ingest._publisher import ensure_topics
from ingest._sources import AcquisitionPublisher
from ingest._vendors import build_acquisition_event, file_digest, read_vendor_file
from ingest._wire import IDENTIFIER_PATTERN

_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)


@dataclass(frozen=True)
class Registration:
    """The outcome for one file: its event, or why it has none."""

    path: Path
    instrument_id: str | None
    event: AcquisitionEventV1 | None = None
    rejection: RejectedMessage | None = None


def derive_instrument_id(path: Path) -> str:
    """An instrument id from what the file says about its instrument: vendor, model and serial
    number, lower-case, e.g. ``fei-company-titan-3492`` (for auto-registration).

    Raises:
        RejectedMessage: ``unknown_instrument`` when the file names no model.
    """
    meta = read_vendor_file(path)
    parts = [
        str(meta.instrument[name].value)
        for name in ("vendor", "model", "serial_number")
        if name in meta.instrument
    ]
    if "model" not in meta.instrument:
        raise RejectedMessage(
            "unknown_instrument",
            f"{path}: the file does not name its microscope model; pass --instrument ID",
        )
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower()).strip("-")[:128]
    return slug


def prepare(
    paths: Iterable[Path],
    *,
    instrument_id: str | None,
    operator: str | None = None,
    proposal: str | None = None,
    auto_register: bool = False,
    known_instruments: set[str] | None = None,
) -> list[Registration]:
    """Read every file and build its event (nothing is published).

    Args:
        instrument_id: the instrument of every file; ``None`` derives one from each file when
            ``auto_register`` is on and refuses the file otherwise.
        known_instruments: the registered instrument ids, when a registry is at hand; an id
            outside it is refused (``unknown_instrument``) unless ``auto_register``.
    """
    out: list[Registration] = []
    for path in paths:
        which = instrument_id
        try:
            if which is None:
                if not auto_register:
                    raise RejectedMessage(
                        "unknown_instrument",
                        f"{path}: no instrument given: pass --instrument ID (or set "
                        "BEAMTWIN_INGEST_AUTO_REGISTER=true to derive one from the file)",
                    )
                which = derive_instrument_id(path)
            if not _IDENTIFIER_RE.match(which):
                raise RejectedMessage(
                    "schema", f"{path}: instrument id {which!r} does not match {IDENTIFIER_PATTERN}"
                )
            unknown = known_instruments is not None and which not in known_instruments
            if unknown and not auto_register:
                raise RejectedMessage(
                    "unknown_instrument",
                    f"{path}: instrument {which!r} is not registered (register it with "
                    f"`beamtwin instruments register {which}`)",
                )
            event = build_acquisition_event(
                path, instrument_id=which, operator=operator, proposal=proposal
            )
        except RejectedMessage as exc:
            out.append(Registration(path, which, rejection=exc))
        else:
            out.append(Registration(path, which, event=event))
    return out


@dataclass(frozen=True)
class _FileRecord:
    """A file that never was a Kafka record, shaped like one for :class:`DeadLetterSender`."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int = -1
    offset: int = -1
    timestamp: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def dead_letter_value(reg: Registration, *, operator: str | None, proposal: str | None) -> bytes:
    """The value of a refused file's dead letter: what identifies the file."""
    doc: dict[str, Any] = {
        "file": reg.path.absolute().as_uri(),
        "name": reg.path.name,
        "instrument_id": reg.instrument_id,
        "operator": operator,
        "proposal": proposal,
    }
    if reg.path.is_file():
        with contextlib.suppress(OSError):
            doc["sha256"], doc["size_bytes"] = file_digest(reg.path)
    return orjson.dumps(doc)


def worker_id() -> str:
    return f"beamtwin-register@{socket.gethostname()}:{os.getpid()}"


def publish_registrations(
    registrations: Sequence[Registration],
    *,
    bootstrap: str,
    topic: str,
    deadletter_topic: str,
    source: str = "register",
    partitions: int = 12,
    operator: str | None = None,
    proposal: str | None = None,
) -> None:
    """Publish every event of ``registrations`` (key: instrument id, header
    ``beamtwin.source`` naming ``source``: ``register``, ``watch`` or ``bluesky``) and every
    refusal's dead letter, creating the topics if needed, and wait for the broker to
    acknowledge all of them. The one path by which files become acquisition events.

    Raises:
        PublishError / IngestError: the broker is unreachable or did not acknowledge.
    """
    ensure_topics(bootstrap, {topic: partitions, deadletter_topic: 1})
    events = [r.event for r in registrations if r.event is not None]
    refused = [r for r in registrations if r.rejection is not None]
    if events:
        with AcquisitionPublisher(bootstrap, topic=topic, source=source) as publisher:
            for event in events:
                publisher.publish(event)
            publisher.flush()
    if refused:
        who = worker_id().replace("beamtwin-register@", f"beamtwin-{source}@")
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        with DeadLetterSender(bootstrap, topic=deadletter_topic) as sender:
            for reg in refused:
                assert reg.rejection is not None
                record = _FileRecord(
                    topic=topic,
                    key=reg.instrument_id.encode() if reg.instrument_id else None,
                    value=dead_letter_value(reg, operator=operator, proposal=proposal),
                    timestamp=now_ms,
                )
                sender.send(record, reg.rejection, worker=who)
            sender.flush()
