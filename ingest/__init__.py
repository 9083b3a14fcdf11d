"""Telemetry ingest: wire format, validation, dead-lettering, publisher and worker; and the twin
worker, which follows the stored telemetry with the twin and stores its estimates and flags."""

from ingest._deadletter import (
    DEAD_LETTER_CODES,
    DeadLetterInfo,
    DeadLetterSender,
    dead_letter_headers,
    parse_dead_letter,
)
from ingest._errors import IngestError, PublishError, RejectedMessage
from ingest._publisher import Delivery, TelemetryPublisher, ensure_topics
from ingest._settings import DEADLETTER_TOPIC, TELEMETRY_TOPIC, IngestSettings, TwinSettings
from ingest._twin_worker import TwinStats, TwinWorker
from ingest._units import conversion_to_canonical
from ingest._validate import ChannelDeclaration, KnownChannel, ValidatedFrame, validate_frame
from ingest._wire import (
    SCHEMA_ID,
    ColumnV1,
    TelemetryFrameV1,
    build_frame,
    decode_frame,
    encode_frame,
)

__all__ = [
    "DEADLETTER_TOPIC",
    "DEAD_LETTER_CODES",
    "SCHEMA_ID",
    "TELEMETRY_TOPIC",
    "ChannelDeclaration",
    "ColumnV1",
    "DeadLetterInfo",
    "DeadLetterSender",
    "Delivery",
    "IngestError",
    "IngestSettings",
    "KnownChannel",
    "PublishError",
    "RejectedMessage",
    "TelemetryFrameV1",
    "TelemetryPublisher",
    "TwinSettings",
    "TwinStats",
    "TwinWorker",
    "ValidatedFrame",
    "build_frame",
    "conversion_to_canonical",
    "dead_letter_headers",
    "decode_frame",
    "encode_frame",
    "ensure_topics",
    "parse_dead_letter",
    "validate_frame",
]
