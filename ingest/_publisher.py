"""The telemetry publisher for instrument PCs, and topic creation.

``TelemetryPublisher`` keys every frame by its instrument id, so one instrument's frames keep
their order on one partition, and waits for all in-sync replicas (``acks="all"``) before it
counts a frame as delivered. Publishing is asynchronous: ``publish`` returns a future, and
``flush`` raises :class:`~ingest.PublishError` when any frame since the last flush was lost.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kafka.errors
import numpy.typing as npt
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from ingest._errors import IngestError, InvalidFrame, PublishError
from ingest._settings import TELEMETRY_TOPIC
from ingest._wire import ColumnInput, TelemetryFrameV1, build_frame, encode_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored a frame."""

    topic: str
    partition: int
    offset: int
    #: Record timestamp [ms since the Unix epoch].
    timestamp_ms: int


class TelemetryPublisher:
    """Publishes telemetry frames of one or more instruments to the telemetry topic.

    Create the topic first (:func:`ensure_topics`). Use as a context manager: leaving the
    block flushes (raising :class:`~ingest.PublishError` if a frame was lost) and closes.

    Args:
        bootstrap_servers: ``host:port[,host:port...]`` of the Kafka cluster.
        topic: the telemetry topic.
        publisher_id: who publishes (written into every frame built here).
        linger_ms: how long the producer waits to batch frames together [ms].
        acks: ``"all"`` (default: no loss while one in-sync replica survives), ``1`` or ``0``.
        delivery_timeout_ms: after this long without acknowledgement a frame counts as
            failed [ms].
        max_block_ms: longest wait in ``publish`` for topic metadata or buffer space [ms].
        connect_timeout_ms: longest wait for the first connection to the cluster [ms].
        producer_config: further kafka-python ``KafkaProducer`` settings, e.g.
            ``compression_type="gzip"``.

    Raises:
        PublishError: when no broker answers within ``connect_timeout_ms``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        publisher_id: str,
        topic: str = TELEMETRY_TOPIC,
        linger_ms: int = 20,
        acks: int | str = "all",
        delivery_timeout_ms: int = 120_000,
        max_block_ms: int = 30_000,
        connect_timeout_ms: int = 30_000,
        max_request_size: int = 8 * 1024 * 1024,
        **producer_config: Any,
    ) -> None:
        self.topic = topic
        self.publisher_id = publisher_id
        config: dict[str, Any] = {
            "acks": acks,
            "linger_ms": linger_ms,
            "delivery_timeout_ms": delivery_timeout_ms,
            # kafka-python requires delivery_timeout_ms > linger_ms + request_timeout_ms.
            "request_timeout_ms": min(30_000, delivery_timeout_ms // 2),
            "max_block_ms": max_block_ms,
            "bootstrap_timeout_ms": connect_timeout_ms,
            "max_request_size": max_request_size,
            "client_id": f"beamtwin-publisher-{publisher_id}",
        }
        config.update(producer_config)
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **config)
        except KafkaError as exc:
            raise PublishError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
        self._lock = threading.Lock()
        self._frame_seq: dict[str, int] = {}
        self._in_flight: set[concurrent.futures.Future[Delivery]] = set()
        self._sent = 0
        self._delivered = 0
        self._failed = 0
        self._failed_since_flush = 0
        self._first_error: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ counts
    @property
    def sent(self) -> int:
        """Frames handed to the producer."""
        return self._sent

    @property
    def delivered(self) -> int:
        """Frames the broker acknowledged."""
        return self._delivered

    @property
    def failed(self) -> int:
        """Frames that will never be acknowledged."""
        return self._failed

    @property
    def pending(self) -> int:
        """Frames sent but neither acknowledged nor failed yet."""
        with self._lock:
            return len(self._in_flight)

    # ------------------------------------------------------------------ publishing
    def publish(
        self, frame: bytes | TelemetryFrameV1, *, instrument_id: str | None = None
    ) -> concurrent.futures.Future[Delivery]:
        """Send one frame; the future resolves to its :class:`Delivery` or fails with
        :class:`~ingest.PublishError`.

        ``instrument_id`` (the Kafka key) is required for raw bytes, which are sent as they
        are; for a :class:`TelemetryFrameV1` it defaults to the frame's own.

        Raises:
            PublishError: when the producer refuses the frame at once (no metadata for the
                topic within ``max_block_ms``, frame larger than ``max_request_size``).
        """
        if isinstance(frame, TelemetryFrameV1):
            if instrument_id is not None and instrument_id != frame.instrument_id:
                raise InvalidFrame(
                    f"instrument_id {instrument_id!r} differs from the frame's "
                    f"{frame.instrument_id!r}"
                )
            instrument_id, raw = frame.instrument_id, encode_frame(frame)
        else:
            if instrument_id is None:
                raise InvalidFrame("instrument_id is required to publish raw bytes")
            raw = bytes(frame)
        return self._send(instrument_id, raw)

    def publish_raw(self, raw: bytes, *, instrument_id: str) -> concurrent.futures.Future[Delivery]:
        """Send ``raw`` unchanged (for tools and tests that need malformed frames)."""
        return self._send(instrument_id, bytes(raw))

    def publish_block(
        self,
        instrument_id: str,
        times_ns: npt.ArrayLike,
        seqs: npt.ArrayLike,
        columns: Sequence[ColumnInput],
        *,
        sent_at: datetime | None = None,
        calibration_ids: Mapping[str, str] | None = None,
    ) -> concurrent.futures.Future[Delivery]:
        """Build a frame from numpy arrays (see :func:`~ingest._wire.build_frame`) and send it.

        The frame's ``frame_seq`` counts the frames of ``instrument_id`` sent by this
        publisher, from 0.
        """
        with self._lock:
            frame_seq = self._frame_seq.get(instrument_id, 0)
            self._frame_seq[instrument_id] = frame_seq + 1
        raw = build_frame(
            instrument_id=instrument_id,
            publisher_id=self.publisher_id,
            frame_seq=frame_seq,
            times_ns=times_ns,
            seqs=seqs,
            columns=columns,
            sent_at=sent_at,
            calibration_ids=calibration_ids,
        )
        return self._send(instrument_id, raw)

    def _send(self, instrument_id: str, raw: bytes) -> concurrent.futures.Future[Delivery]:
        if self._closed:
            raise PublishError("the publisher is closed")
        result: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        try:
            kafka_future = self._producer.send(self.topic, key=instrument_id.encode(), value=raw)
        except KafkaError as exc:
            self._record_failure(exc)
            raise PublishError(f"frame of {instrument_id} refused by the producer: {exc}") from exc
        with self._lock:
            self._sent += 1
            self._in_flight.add(result)

        def delivered(metadata: Any) -> None:
            with self._lock:
                self._delivered += 1
                self._in_flight.discard(result)
            result.set_result(
                Delivery(metadata.topic, metadata.partition, metadata.offset, metadata.timestamp)
            )

        def lost(exc: BaseException) -> None:
            with self._lock:
                self._in_flight.discard(result)
            self._record_failure(exc)
            result.set_exception(PublishError(f"frame of {instrument_id} not delivered: {exc}"))

        kafka_future.add_callback(delivered)
        kafka_future.add_errback(lost)
        return result

    def _record_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            self._failed_since_flush += 1
            if self._first_error is None:
                self._first_error = exc
        log.warning("telemetry frame not delivered: %s", str(exc))

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until every frame sent so far is acknowledged or has failed.

        Raises:
            PublishError: when frames are still unconfirmed after ``timeout`` seconds, or
                when any frame failed since the last flush (the count and the first error).
        """
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(
                f"{self.pending} frame(s) not confirmed within {timeout} s: {exc}"
            ) from exc
        with self._lock:
            failed, error = self._failed_since_flush, self._first_error
            self._failed_since_flush, self._first_error = 0, None
        if failed:
            raise PublishError(f"{failed} frame(s) not delivered since the last flush: {error}")

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds) and close the producer."""
        if self._closed:
            return
        self._closed = True
        self._producer.close(timeout=timeout)

    def __enter__(self) -> TelemetryPublisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()


def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = -1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Args:
        topics: topic name -> number of partitions.
        replication_factor: replicas per partition; -1 = the cluster's default
            (``default.replication.factor``).
        timeout_s: longest wait for the cluster [s].

    Raises:
        IngestError: when the cluster cannot be reached or refuses a topic.
    """
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="beamtwin-admin",
            bootstrap_timeout_ms=int(timeout_s * 1000),
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise IngestError(f"cannot reach the broker at {bootstrap_servers}: {exc}") from exc
    created: list[str] = []
    try:
        request = {
            name: {"num_partitions": partitions, "replication_factor": replication_factor}
            for name, partitions in topics.items()
        }
        response = admin.create_topics(request, raise_errors=False)
        for result in response["topics"]:
            code = result["error_code"]
            if code == 0:
                created.append(result["name"])
            elif code == TopicAlreadyExistsError.errno:
                log.debug("topic %s exists", result["name"])
            else:
                error = kafka.errors.for_code(code).__name__
                raise IngestError(
                    f"cannot create topic {result['name']}: {error} "
                    f"{result['error_message'] or ''}".rstrip()
                )
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise IngestError(f"cannot create topics {sorted(topics)}: {exc}") from exc
    finally:
        admin.close()
    return created
