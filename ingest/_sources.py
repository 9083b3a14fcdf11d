"""Publishing acquisition events with the name of what registered them.

Three producers publish acquisition events to ``beamtwin.acquisitions.v1``: ``beamtwin
register`` (files named on the command line), ``beamtwin watch`` (files appearing in a folder)
and ``beamtwin bluesky`` (bluesky runs). The event itself is the same for all of them; the
Kafka header ``beamtwin.source`` says which one it was (``register`` when absent), and the
snapshot worker stores it as the dataset's ``source``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from ingest._acquisition import AcquisitionEventV1, encode_event
from ingest._errors import PublishError, UnknownSource

#: Kafka header naming what registered the dataset.
SOURCE_HEADER = "beamtwin.source"
#: The values it may take; ``register`` is assumed when the header is absent.
SOURCES = ("register", "watch", "bluesky")


def source_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The registering source named by a record's headers: ``register`` when none is named,
    ``None`` when the header names something unknown."""
    for name, value in headers or ():
        if name == SOURCE_HEADER:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text if text in SOURCES else None
    return "register"


class AcquisitionPublisher:
    """Publishes acquisition events (key: instrument id, header ``beamtwin.source``) and waits
    for the broker's acknowledgement in :meth:`flush`."""

    def __init__(self, bootstrap_servers: str, *, topic: str, source: str) -> None:
        if source not in SOURCES:
            raise UnknownSource(f"source must be one of {SOURCES}, not {source!r}")
        self.topic = topic
        self.source = source
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                acks="all",
                linger_ms=5,
                max_request_size=64 * 1024 * 1024,
                client_id=f"beamtwin-{source}",
            )
        except KafkaError as exc:
            raise PublishError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
        self._futures: list[Any] = []

    def publish(self, event: AcquisitionEventV1) -> None:
        self.publish_raw(encode_event(event), instrument_id=event.instrument_id)

    def publish_raw(self, value: bytes, *, instrument_id: str) -> None:
        try:
            future = self._producer.send(
                self.topic,
                key=instrument_id.encode(),
                value=value,
                headers=[(SOURCE_HEADER, self.source.encode())],
            )
        except KafkaError as exc:
            raise PublishError(f"acquisition event refused by the producer: {exc}") from exc
        self._futures.append(future)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the broker acknowledged every event sent so far.

        Raises:
            PublishError: when one was not acknowledged.
        """
        futures, self._futures = self._futures, []
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(f"acquisition events not acknowledged: {exc}") from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "no answer"
            raise PublishError(f"{len(failed)} acquisition event(s) not acknowledged: {first}")

    def close(self) -> None:
        self._producer.close(timeout=10)

    def __enter__(self) -> AcquisitionPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
