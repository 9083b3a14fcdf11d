"""What moves data into beamtwin: the Kafka contracts (telemetry wire format, acquisition
events, dead letters) and their JSON Schemas, the telemetry ingest worker (validate,
dead-letter, idempotent batched COPY into the store), the publishers, and the producers of
acquisition events: vendor-file readers (``beamtwin register`` / ``watch``) and the bluesky
consumer. Long-running processes that join the store with the twin live in :mod:`workers`."""

from ingest._acquisition import (
    ACQUISITION_SCHEMA_ID,
    INSTRUMENT_FIELDS,
    MAPPING_VERSION,
    STATE_FIELDS,
    AcquisitionEventV1,
    NormalizedField,
    Quality,
    TimeSource,
    dataset_id_for,
    dataset_record,
    decode_event,
    encode_event,
)
from ingest._bluesky import BlueskyConsumer, BlueskyStats
from ingest._consumer import (
    Action,
    ConsumerConfig,
    ConsumerCounters,
    ConsumerLoop,
    ConsumerStage,
    ErrorPolicy,
)
from ingest._deadletter import (
    DEAD_LETTER_CODES,
    DeadLetterInfo,
    DeadLetterSender,
    dead_letter_headers,
    parse_dead_letter,
)
from ingest._errors import (
    FrameTypeError,
    IngestError,
    InvalidFrame,
    NotADeadLetter,
    PublishError,
    RejectedMessage,
    UnknownField,
    UnknownSource,
    VendorFormatError,
)
from ingest._publisher import Delivery, TelemetryPublisher, ensure_topics
from ingest._register import Registration, prepare, publish_registrations
from ingest._retry import TRANSIENT_DB_ERRORS, RetryPolicy, WorkerStopped, with_db
from ingest._settings import (
    ACQUISITIONS_TOPIC,
    BLUESKY_TOPIC,
    DEADLETTER_TOPIC,
    TELEMETRY_TOPIC,
    BlueskySettings,
    IngestSettings,
)
from ingest._sources import SOURCE_HEADER, SOURCES, AcquisitionPublisher, source_of
from ingest._units import conversion_to_canonical
from ingest._validate import (
    ChannelDeclaration,
    KnownChannel,
    ValidatedFrame,
    check_key,
    validate_frame,
)
from ingest._vendors import build_acquisition_event, read_vendor_file
from ingest._watch import DirectoryWatcher, Registrar, WatchStats
from ingest._wire import (
    SCHEMA_ID,
    ColumnV1,
    TelemetryFrameV1,
    build_frame,
    decode_frame,
    encode_frame,
)
from ingest._worker import IngestStats, IngestWorker

__all__ = [
    "ACQUISITIONS_TOPIC",
    "ACQUISITION_SCHEMA_ID",
    "BLUESKY_TOPIC",
    "DEADLETTER_TOPIC",
    "DEAD_LETTER_CODES",
    "INSTRUMENT_FIELDS",
    "MAPPING_VERSION",
    "SCHEMA_ID",
    "SOURCES",
    "SOURCE_HEADER",
    "STATE_FIELDS",
    "TELEMETRY_TOPIC",
    "TRANSIENT_DB_ERRORS",
    "AcquisitionEventV1",
    "AcquisitionPublisher",
    "Action",
    "BlueskyConsumer",
    "BlueskySettings",
    "BlueskyStats",
    "ChannelDeclaration",
    "ColumnV1",
    "ConsumerConfig",
    "ConsumerCounters",
    "ConsumerLoop",
    "ConsumerStage",
    "DeadLetterInfo",
    "DeadLetterSender",
    "Delivery",
    "DirectoryWatcher",
    "ErrorPolicy",
    "FrameTypeError",
    "IngestError",
    "IngestSettings",
    "IngestStats",
    "IngestWorker",
    "InvalidFrame",
    "KnownChannel",
    "NormalizedField",
    "NotADeadLetter",
    "PublishError",
    "Quality",
    "Registrar",
    "Registration",
    "RejectedMessage",
    "RetryPolicy",
    "TelemetryFrameV1",
    "TelemetryPublisher",
    "TimeSource",
    "UnknownField",
    "UnknownSource",
    "ValidatedFrame",
    "VendorFormatError",
    "WatchStats",
    "WorkerStopped",
    "build_acquisition_event",
    "build_frame",
    "check_key",
    "conversion_to_canonical",
    "dataset_id_for",
    "dataset_record",
    "dead_letter_headers",
    "decode_event",
    "decode_frame",
    "encode_event",
    "encode_frame",
    "ensure_topics",
    "parse_dead_letter",
    "prepare",
    "publish_registrations",
    "read_vendor_file",
    "source_of",
    "validate_frame",
    "with_db",
]
