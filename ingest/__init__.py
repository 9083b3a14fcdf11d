"""Telemetry ingest: wire format, validation, dead-lettering, publisher and worker; the twin
worker, which follows the stored telemetry with the twin and stores its estimates and flags; and
the registration of vendor data files as acquisition events (``beamtwin register``)."""

from ingest._acquisition import (
    ACQUISITION_SCHEMA_ID,
    MAPPING_VERSION,
    AcquisitionEventV1,
    NormalizedField,
    Quality,
    TimeSource,
    decode_event,
    encode_event,
)
from ingest._deadletter import (
    DEAD_LETTER_CODES,
    DeadLetterInfo,
    DeadLetterSender,
    dead_letter_headers,
    parse_dead_letter,
)
from ingest._errors import IngestError, PublishError, RejectedMessage
from ingest._publisher import Delivery, TelemetryPublisher, ensure_topics
from ingest._settings import (
    ACQUISITIONS_TOPIC,
    DEADLETTER_TOPIC,
    TELEMETRY_TOPIC,
    IngestSettings,
    TwinSettings,
)
from ingest._twin_worker import TwinStats, TwinWorker
from ingest._units import conversion_to_canonical
from ingest._validate import ChannelDeclaration, KnownChannel, ValidatedFrame, validate_frame
from ingest._vendor import build_acquisition_event, read_vendor_file
from ingest._wire import (
    SCHEMA_ID,
    ColumnV1,
    TelemetryFrameV1,
    build_frame,
    decode_frame,
    encode_frame,
)

__all__ = [
    "ACQUISITIONS_TOPIC",
    "ACQUISITION_SCHEMA_ID",
    "DEADLETTER_TOPIC",
    "DEAD_LETTER_CODES",
    "MAPPING_VERSION",
    "SCHEMA_ID",
    "TELEMETRY_TOPIC",
    "AcquisitionEventV1",
    "ChannelDeclaration",
    "ColumnV1",
    "DeadLetterInfo",
    "DeadLetterSender",
    "Delivery",
    "IngestError",
    "IngestSettings",
    "KnownChannel",
    "NormalizedField",
    "PublishError",
    "Quality",
    "RejectedMessage",
    "TelemetryFrameV1",
    "TelemetryPublisher",
    "TimeSource",
    "TwinSettings",
    "TwinStats",
    "TwinWorker",
    "ValidatedFrame",
    "build_acquisition_event",
    "build_frame",
    "conversion_to_canonical",
    "dead_letter_headers",
    "decode_event",
    "decode_frame",
    "encode_event",
    "encode_frame",
    "ensure_topics",
    "parse_dead_letter",
    "read_vendor_file",
    "validate_frame",
]
