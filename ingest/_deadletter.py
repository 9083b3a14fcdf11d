"""Dead letters: frames the ingest cannot accept, kept verbatim with the reason.

The convention is Kafka Connect's dead-letter queue: the dead-letter record's value is the
original message value byte for byte and its key the original key (so it lands on the same
partition of the dead-letter topic as its instrument's other dead letters), the original
headers are kept, and ``beamtwin.dlq.*`` headers say what was wrong and where the record came
from. Repairing a dead letter and publishing it to the telemetry topic again is safe: the
store's natural key (channel, source time) absorbs whatever part of it was already stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from ingest._errors import NotADeadLetter, PublishError, RejectedMessage
from ingest._settings import DEADLETTER_TOPIC

HEADER_PREFIX = "beamtwin.dlq."
CODE = HEADER_PREFIX + "code"
REASON = HEADER_PREFIX + "reason"
TOPIC = HEADER_PREFIX + "topic"
PARTITION = HEADER_PREFIX + "partition"
OFFSET = HEADER_PREFIX + "offset"
TIMESTAMP = HEADER_PREFIX + "timestamp"
WORKER = HEADER_PREFIX + "worker"
FAILED_AT = HEADER_PREFIX + "failed_at"

#: Every reason code a dead letter can carry, with what it means.
DEAD_LETTER_CODES: dict[str, str] = {
    "too_large": "the message has more bytes, or the frame more ticks x channels, than allowed",
    "malformed_json": "the value is not a JSON document (or not UTF-8, or empty)",
    "schema": "a field is missing, unknown or of the wrong type; the schema id is unknown; a "
    "channel appears twice; a new channel lacks subsystem/quantity; a subsystem is not the "
    "channel name's prefix",
    "non_finite": "a value is NaN or Infinity (send null for a tick without a reading)",
    "length_mismatch": "seqs or a column's values do not have one entry per tick",
    "unknown_unit": "a unit is outside the accepted unit grammar (a symbol or prefix not "
    "in the list, a number, a nested or large power, too many factors, too long) or not one "
    "pint understands",
    "unit_mismatch": "a unit is of another dimension than the channel's quantity kind",
    "out_of_limits": "a converted value lies outside the channel's physically plausible "
    "range, or beyond the largest magnitude the store holds (1e100)",
    "quantity_mismatch": "a column's quantity kind differs from the registered channel's",
    "key_mismatch": "the record's Kafka key is missing or is not the frame's instrument_id",
    "too_many_channels": "the frame would give its instrument more channels than allowed",
    "future_time": "a tick lies further ahead of the ingest clock than allowed",
    "past_time": "a tick lies before the oldest accepted time",
    "unknown_instrument": "the instrument is not registered (and auto-registration is off)",
    "unknown_channel": "the channel is not registered (and auto-registration is off)",
    "channel_conflict": "the frame declares a channel differently from how another worker "
    "registered it at the same time",
    "unknown_format": "a file given to `beamtwin register` has no reader (unknown file name "
    "ending)",
    "unreadable_file": "a file given to `beamtwin register` is missing, empty, truncated or "
    "not of the format its name says",
    "incomplete_run": "a bluesky document of a run whose start document was never seen (a "
    "stop, descriptor or event without its start)",
    "dataset_conflict": "an acquisition event reuses a registered dataset id for another "
    "acquisition (another file, instrument, operator, proposal or time); both versions are "
    "named in the reason",
    "internal_error": "an unexpected error while handling the message, under a consumer whose "
    "error policy dead-letters such errors instead of stopping (the reason quotes the error)",
    "snapshot_failed": "the snapshot of a valid acquisition event could not be computed, "
    "after retries (the reason quotes the error)",
}

#: Longest reason kept in a header [characters].
_MAX_REASON = 4000


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """The context of one dead letter, read back from its headers."""

    code: str
    reason: str
    topic: str
    partition: int
    offset: int
    #: Timestamp of the original record [ms since the Unix epoch]; -1 when it had none.
    timestamp_ms: int
    worker: str
    failed_at: datetime


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dead_letter_headers(
    *,
    code: str,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    worker: str,
    failed_at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    """The ``beamtwin.dlq.*`` headers of a dead letter (values UTF-8 text)."""
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 1] + "…"
    values = {
        CODE: code,
        REASON: reason,
        TOPIC: topic,
        PARTITION: str(int(partition)),
        OFFSET: str(int(offset)),
        TIMESTAMP: str(-1 if timestamp_ms is None else int(timestamp_ms)),
        WORKER: worker,
        FAILED_AT: _rfc3339(failed_at or datetime.now(UTC)),
    }
    return [(name, value.encode()) for name, value in values.items()]


def parse_dead_letter(
    headers: Iterable[tuple[str, bytes | str]] | Mapping[str, bytes | str],
) -> DeadLetterInfo:
    """Read the ``beamtwin.dlq.*`` headers of a dead-letter record.

    Raises:
        NotADeadLetter: when a header is missing or malformed (not a dead letter of beamtwin).
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    text: dict[str, str] = {}
    for name, value in items:
        if name.startswith(HEADER_PREFIX):
            text[name] = value.decode() if isinstance(value, bytes | bytearray) else str(value)
    missing = [
        h for h in (CODE, REASON, TOPIC, PARTITION, OFFSET, WORKER, FAILED_AT) if h not in text
    ]
    if missing:
        raise NotADeadLetter(f"not a dead letter: header(s) {', '.join(missing)} missing")
    try:
        return DeadLetterInfo(
            code=text[CODE],
            reason=text[REASON],
            topic=text[TOPIC],
            partition=int(text[PARTITION]),
            offset=int(text[OFFSET]),
            timestamp_ms=int(text.get(TIMESTAMP, "-1")),
            worker=text[WORKER],
            failed_at=datetime.fromisoformat(text[FAILED_AT]),
        )
    except ValueError as exc:
        raise NotADeadLetter(f"malformed dead-letter header: {exc}") from None


class DeadLetterSender:
    """Publishes dead letters and tells whether the broker has acknowledged all of them.

    A caller may commit the offsets of dead-lettered records only after :meth:`flush` returned
    without raising: otherwise the record would be neither stored nor dead-lettered.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = DEADLETTER_TOPIC,
        max_request_size: int = 64 * 1024 * 1024,
        **producer_config: Any,
    ) -> None:
        self.topic = topic
        config: dict[str, Any] = {
            "acks": "all",
            "linger_ms": 5,
            "max_request_size": max_request_size,
            "client_id": "beamtwin-deadletter",
        }
        config.update(producer_config)
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **config)
        except KafkaError as exc:
            raise PublishError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
        self._lock = threading.Lock()
        self._unacknowledged: list[Any] = []

    def send(self, record: Any, rejection: RejectedMessage, *, worker: str) -> Any:
        """Queue the dead letter of ``record``; returns kafka-python's future of its metadata.

        ``record`` is the consumed record (a kafka-python ``ConsumerRecord``: ``topic``,
        ``partition``, ``offset``, ``timestamp`` [ms], ``key``, ``value``, ``headers``).

        Raises:
            PublishError: when the producer refuses the record outright (no metadata for the
                dead-letter topic within ``max_block_ms``, record too large).
        """
        kept = [(k, v) for k, v in (record.headers or []) if not k.startswith(HEADER_PREFIX)]
        headers = kept + dead_letter_headers(
            code=rejection.code,
            reason=rejection.reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            worker=worker,
        )
        value = record.value
        if value is None and record.key is None:
            value = b""  # Kafka clients refuse a record with neither key nor value
        try:
            future = self._producer.send(self.topic, key=record.key, value=value, headers=headers)
        except KafkaError as exc:
            raise PublishError(
                f"dead letter of {record.topic}[{record.partition}]@{record.offset} refused: {exc}"
            ) from exc
        with self._lock:
            self._unacknowledged.append(future)
        return future

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until the broker acknowledged every dead letter sent so far.

        Raises:
            PublishError: when one was not acknowledged (in ``timeout`` seconds, or at all).
        """
        with self._lock:
            futures, self._unacknowledged = self._unacknowledged, []
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(
                f"{sum(not f.is_done for f in futures)} dead letter(s) not acknowledged "
                f"within {timeout} s: {exc}"
            ) from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "no answer"
            raise PublishError(
                f"{len(failed)} of {len(futures)} dead letter(s) not acknowledged: {first}"
            )

    def close(self, timeout: float = 10.0) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> DeadLetterSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
