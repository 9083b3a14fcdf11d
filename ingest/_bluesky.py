"""bluesky runs -> acquisition events: the ``beamtwin bluesky`` consumer.

bluesky's RunEngine emits event-model documents (``start``, ``descriptor``, ``event`` or
``event_page``, ``stop``, and ``resource``/``datum`` for externally stored data);
bluesky-kafka publishes each as one Kafka message whose value is the pair ``(name, doc)``,
msgpack-encoded (its default, numpy arrays as msgpack-numpy) or JSON. This consumer collects
the documents of each run (by the start document's ``uid``) and, on its ``stop`` document,
publishes **one acquisition event** (:class:`~ingest.AcquisitionEventV1`, header
``beamtwin.source: bluesky``) to ``beamtwin.acquisitions.v1``:

* ``dataset_id``: ``ds-`` + the first 32 hex digits of sha256(run uid): the same run always
  gives the same id.
* ``start_time``/``end_time``: the start and stop documents' ``time``.
* ``instrument_id``: the first of the start document's keys ``BEAMTWIN_BLUESKY_INSTRUMENT_KEYS``
  (default ``beamline_id``, then ``instrument_id``); ``operator`` and ``proposal``: its
  ``operator`` and ``proposal_id``.
* ``state``: event data keys mapped to state fields by :data:`DATA_KEY_FIELDS` (plus
  ``BEAMTWIN_BLUESKY_FIELD_MAP``), converted to the canonical unit from the descriptor's
  ``units``; a data key without units is not mapped. The value is the run's first reading.
* ``file``: ``start["data_path"]`` or ``bluesky://<uid>``; its sha256 and size are those of the
  canonical JSON of the run's documents (in order), which ``original_metadata`` holds verbatim.

Bad input never stops the consumer: a message that decodes to no document, a document without
its required keys (``schema``), and a stop, descriptor or event whose start was never seen
(``incomplete_run``) go to the dead-letter topic with the reason.

Restarts: offsets are committed only up to the first message of the oldest run still open, so
a run cut by a restart is read again from its start, and a finished run is published only when
no run that started before it is still open (see :class:`BlueskyConsumer`): every run gives
exactly one event.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no type hints
import numpy as np
import orjson
import pydantic
from kafka import TopicPartition

from ingest._acquisition import (
    ACQUISITION_SCHEMA_ID,
    STATE_FIELDS,
    AcquisitionEventV1,
    NormalizedField,
    Quality,
    TimeSource,
)
from ingest._consumer import ConsumerConfig, ConsumerCounters, ConsumerLoop
from ingest._errors import IngestError, RejectedMessage
from ingest._settings import BlueskySettings
from ingest._sources import AcquisitionPublisher
from ingest._wire import IDENTIFIER_PATTERN
from provenance_store import canonical_json

log = logging.getLogger(__name__)

#: Version of the data-key -> state-field mapping below; bump it when a rule changes.
BLUESKY_MAPPING_VERSION = "1.0.0"

#: State field -> event data key names that mean it (compared lower-case with ``.``/``-`` as
#: ``_``; a key also matches when it ends in ``_`` + the name, e.g. ``tem_stage_x``).
DATA_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "high_tension": ("high_tension", "ht", "eht", "acceleration_voltage", "accelerating_voltage"),
    "beam_energy": ("beam_energy",),
    "extraction_voltage": ("extraction_voltage", "extractor_voltage"),
    "emission_current": ("emission_current",),
    "probe_current": ("probe_current", "beam_current"),
    "screen_current": ("screen_current",),
    "convergence_semiangle": ("convergence_semiangle", "convergence_angle"),
    "camera_length": ("camera_length",),
    "defocus": ("defocus",),
    "spherical_aberration": ("spherical_aberration", "cs"),
    "stage_x": ("stage_x",),
    "stage_y": ("stage_y",),
    "stage_z": ("stage_z",),
    "stage_alpha": ("stage_alpha", "stage_a", "alpha_tilt"),
    "stage_beta": ("stage_beta", "stage_b", "beta_tilt"),
    "dwell_time": ("dwell_time",),
    "exposure_time": ("exposure_time", "acquire_time"),
    "pixel_size": ("pixel_size",),
    "holder_temperature": ("holder_temperature", "specimen_temperature"),
    "holder_pressure": ("holder_pressure",),
}

_DOCUMENT_NAMES = {
    "start",
    "descriptor",
    "event",
    "event_page",
    "stop",
    "resource",
    "datum",
    "datum_page",
    "stream_resource",
    "stream_datum",
}
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)


def dataset_id_for_run(uid: str) -> str:
    """The stable dataset id of the bluesky run with this start-document uid."""
    return "ds-" + hashlib.sha256(uid.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------- decoding
def _from_msgpack_numpy(obj: dict[Any, Any]) -> Any:
    """msgpack-numpy's encoding of an array or numpy scalar, as plain Python values."""
    nd = obj.get(b"nd", obj.get("nd"))
    if nd is None:
        return obj
    kind = obj.get(b"type", obj.get("type"))
    data = obj.get(b"data", obj.get("data"))
    if isinstance(kind, bytes):
        kind = kind.decode()
    if not isinstance(kind, str) or not isinstance(data, bytes):
        return obj
    try:
        array = np.frombuffer(data, dtype=np.dtype(kind))
        if nd is True:
            shape = obj.get(b"shape", obj.get("shape")) or ()
            return array.reshape(shape).tolist()
        return array[0].item()
    except (TypeError, ValueError):
        return obj


def decode_document(raw: bytes | None) -> tuple[str, dict[str, Any]]:
    """The ``(name, doc)`` pair of one message value (msgpack or JSON).

    Raises:
        RejectedMessage: ``malformed_json`` when the value is neither; ``schema`` when it is
            not a (name, document) pair of a known document name.
    """
    if not raw:
        raise RejectedMessage("malformed_json", "empty (null) message value")
    value: Any
    errors: list[str] = []
    looks_like_json = raw.lstrip()[:1] in (b"[", b"{")
    decoders: list[tuple[str, Callable[[bytes], Any]]] = [
        ("JSON", orjson.loads),
        (
            "msgpack",
            lambda b: msgpack.unpackb(
                b, raw=False, strict_map_key=False, object_hook=_from_msgpack_numpy
            ),
        ),
    ]
    if not looks_like_json:
        decoders.reverse()
    for kind, decoder in decoders:
        try:
            value = decoder(raw)
            break
        except Exception as exc:  # the decoders raise many types on foreign bytes
            errors.append(f"{kind}: {exc}")
    else:
        raise RejectedMessage(
            "malformed_json", "neither msgpack nor JSON: " + "; ".join(errors)[:1000]
        )
    if isinstance(value, dict) and set(value) >= {"name", "doc"}:
        value = [value["name"], value["doc"]]
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise RejectedMessage(
            "schema", "a bluesky message is a (name, document) pair; got " + type(value).__name__
        )
    name, doc = value
    if not isinstance(name, str) or name not in _DOCUMENT_NAMES:
        raise RejectedMessage("schema", f"unknown document name {name!r}")
    if not isinstance(doc, dict):
        raise RejectedMessage("schema", f"the {name} document is not a mapping")
    return name, _json_safe(doc)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _require(
    name: str, doc: Mapping[str, Any], keys: Mapping[str, type | tuple[type, ...]]
) -> None:
    for key, kind in keys.items():
        if key not in doc:
            raise RejectedMessage("schema", f"{name} document without {key!r}")
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise RejectedMessage(
                "schema", f"{name} document: {key!r} is {type(doc[key]).__name__}"
            )


_NUMBER = (int, float)


# ---------------------------------------------------------------------- runs
@dataclass
class Run:
    """The documents of one run seen so far, in arrival order."""

    uid: str
    start: dict[str, Any]
    documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    descriptors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (descriptor uid, event) of every event, event pages unpacked.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Where its start document was read (None outside a consumer).
    position: tuple[TopicPartition, int] | None = None


def _events_of_page(page: Mapping[str, Any]) -> list[dict[str, Any]]:
    _require(
        "event_page",
        page,
        {"descriptor": str, "time": list, "data": dict, "timestamps": dict, "seq_num": list},
    )
    n = len(page["time"])
    uids = page.get("uid") or [None] * n
    out = []
    for i in range(n):
        out.append(
            {
                "descriptor": page["descriptor"],
                "uid": uids[i] if i < len(uids) else None,
                "time": page["time"][i],
                "seq_num": page["seq_num"][i] if i < len(page["seq_num"]) else i + 1,
                "data": {k: v[i] for k, v in page["data"].items() if i < len(v)},
                "timestamps": {k: v[i] for k, v in page["timestamps"].items() if i < len(v)},
            }
        )
    return out


def _normalized_key(key: str) -> str:
    return re.sub(r"[.\-\s]+", "_", key.strip().lower())


def _field_for(key: str, extra: Mapping[str, str]) -> str | None:
    if key in extra:
        return extra[key]
    norm = _normalized_key(key)
    for name, aliases in DATA_KEY_FIELDS.items():
        for alias in aliases:
            if norm == alias or norm.endswith("_" + alias):
                return name
    return None


def _time(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def build_event(
    run: Run,
    stop: Mapping[str, Any],
    *,
    instrument_keys: Sequence[str] = ("beamline_id", "instrument_id"),
    field_map: Mapping[str, str] | None = None,
    registered_at: datetime | None = None,
) -> AcquisitionEventV1:
    """The acquisition event of a finished run (see the module docstring).

    Raises:
        RejectedMessage: ``unknown_instrument`` when the start document names no (valid)
            instrument; ``schema`` when the event does not validate.
    """
    from ingest._vendors import convert  # pint; loaded only when a run ends

    start = run.start
    instrument_id = next(
        (str(start[k]) for k in instrument_keys if start.get(k) not in (None, "")), None
    )
    if instrument_id is None:
        raise RejectedMessage(
            "unknown_instrument",
            f"run {run.uid}: the start document names no instrument (keys tried: "
            f"{', '.join(instrument_keys)})",
        )
    if not _IDENTIFIER_RE.match(instrument_id):
        raise RejectedMessage(
            "schema", f"run {run.uid}: instrument id {instrument_id!r} is not a valid id"
        )
    extra = dict(field_map or {})
    unknown_fields = sorted(set(extra.values()) - set(STATE_FIELDS))
    if unknown_fields:
        raise IngestError(f"BEAMTWIN_BLUESKY_FIELD_MAP names unknown state fields {unknown_fields}")
    documents = [*run.documents, ("stop", dict(stop))]
    original = {
        "start": start,
        "descriptors": list(run.descriptors.values()),
        "events": [event for _, event in run.events],
        "stop": dict(stop),
    }
    state: dict[str, NormalizedField] = {}
    unmapped: dict[str, str] = {}
    ordered = sorted(enumerate(run.events), key=lambda ie: (float(ie[1][1].get("time", 0)), ie[0]))
    for index, (descriptor_uid, event) in ordered:
        descriptor = run.descriptors.get(descriptor_uid, {})
        data_keys = descriptor.get("data_keys") or {}
        for key, raw in (event.get("data") or {}).items():
            name = _field_for(key, extra)
            if name is None or name in state:
                continue
            canonical = STATE_FIELDS[name][0]
            units = (data_keys.get(key) or {}).get("units")
            if canonical is None or not isinstance(raw, int | float) or isinstance(raw, bool):
                continue
            if not units:
                unmapped[key] = f"no units in the descriptor: not mapped to {name}"
                continue
            try:
                value = convert(float(raw), str(units), canonical)
            except Exception as exc:  # pint raises several error types
                unmapped[key] = f"units {units!r} not convertible to {canonical}: {exc}"
                continue
            if not np.isfinite(value):
                continue
            state[name] = NormalizedField(
                value=value,
                unit=canonical,
                source=f"events.{index}.data.{key}",
                source_value=raw,
                source_unit=str(units),
                quality=Quality.OK,
                note=f"first reading of the run (stream {descriptor.get('name', '?')!r})",
            )
    canonical_docs = canonical_json([[n, d] for n, d in documents])
    sha256 = hashlib.sha256(canonical_docs).hexdigest()
    start_time = _time(start["time"])
    end_time = max(_time(stop["time"]), start_time)
    data_path = start.get("data_path")
    if isinstance(data_path, str) and data_path:
        uri = PurePosixPath(data_path).as_uri() if data_path.startswith("/") else data_path
        name = PurePosixPath(data_path.rstrip("/")).name or data_path
    else:
        uri, name = f"bluesky://{run.uid}", run.uid
    versions = start.get("versions")
    if not isinstance(versions, dict):
        versions = {}
    operator, proposal = start.get("operator"), start.get("proposal_id")
    try:
        return AcquisitionEventV1.model_validate(
            {
                "schema": ACQUISITION_SCHEMA_ID,
                "dataset_id": dataset_id_for_run(run.uid),
                "instrument_id": instrument_id,
                "start_time": start_time,
                "end_time": end_time,
                "time_source": TimeSource.FILE_METADATA,
                "registered_at": registered_at or datetime.now(UTC),
                "file": {
                    "uri": uri,
                    "name": name,
                    "sha256": sha256,
                    "size_bytes": len(canonical_docs),
                    "format": "bluesky",
                    "mtime": end_time,
                },
                "operator": None if operator is None else str(operator),
                "proposal": None if proposal is None else str(proposal),
                "reader": {
                    "name": "beamtwin.bluesky",
                    "version": str(versions.get("bluesky", "unknown")),
                    "mapping_version": BLUESKY_MAPPING_VERSION,
                },
                "instrument": {},
                "state": state,
                "original_metadata": original,
                "reader_metadata": {
                    "run_uid": run.uid,
                    "plan_name": start.get("plan_name"),
                    "scan_id": start.get("scan_id"),
                    "exit_status": stop.get("exit_status"),
                    "num_events": stop.get("num_events"),
                    "unmapped_data_keys": unmapped,
                },
            }
        )
    except pydantic.ValidationError as exc:
        raise RejectedMessage("schema", f"run {run.uid}: {exc}"[:2000]) from None


class RunCollector:
    """Collects documents per run and builds the event when a run stops (no Kafka here).

    ``add(name, doc)`` returns the finished run's event on its stop document, else None.
    """

    def __init__(
        self,
        *,
        instrument_keys: Sequence[str] = ("beamline_id", "instrument_id"),
        field_map: Mapping[str, str] | None = None,
    ) -> None:
        self.instrument_keys = tuple(instrument_keys)
        self.field_map = dict(field_map or {})
        self.runs: dict[str, Run] = {}
        self._descriptor_run: dict[str, str] = {}
        self._resource_run: dict[str, str] = {}

    def add(
        self,
        name: str,
        doc: dict[str, Any],
        *,
        position: tuple[TopicPartition, int] | None = None,
    ) -> tuple[Run, AcquisitionEventV1] | None:
        """Take one document. Returns (run, event) when ``doc`` stops a run.

        Raises:
            RejectedMessage: ``schema`` (a required key missing), ``incomplete_run`` (the
                run's start never came), or as :func:`build_event`: the document is dropped.
        """
        if name == "start":
            _require("start", doc, {"uid": str, "time": _NUMBER})
            if doc["uid"] in self.runs:
                return None  # the same start again (a re-delivery): keep the first
            run = Run(uid=doc["uid"], start=doc, position=position)
            run.documents.append((name, doc))
            self.runs[run.uid] = run
            return None
        if name == "descriptor":
            _require("descriptor", doc, {"uid": str, "run_start": str, "data_keys": dict})
            run = self._run(name, doc["run_start"])
            run.descriptors.setdefault(doc["uid"], doc)
            run.documents.append((name, doc))
            self._descriptor_run[doc["uid"]] = run.uid
            return None
        if name in ("event", "event_page"):
            _require(name, doc, {"descriptor": str})
            run_uid = self._descriptor_run.get(doc["descriptor"])
            if run_uid is None:
                raise RejectedMessage(
                    "incomplete_run",
                    f"{name} of descriptor {doc['descriptor']!r}, which was never seen",
                )
            run = self.runs[run_uid]
            if name == "event":
                _require("event", doc, {"data": dict, "time": _NUMBER})
                events = [doc]
            else:
                events = _events_of_page(doc)
            run.events.extend((doc["descriptor"], e) for e in events)
            run.documents.append((name, doc))
            return None
        if name == "stop":
            _require("stop", doc, {"run_start": str, "time": _NUMBER})
            run = self._run(name, doc["run_start"])
            try:
                event = build_event(
                    run, doc, instrument_keys=self.instrument_keys, field_map=self.field_map
                )
            finally:
                self._forget(run)
            return run, event
        if name == "resource":
            run_start = doc.get("run_start")
            if isinstance(run_start, str) and run_start in self.runs:
                self.runs[run_start].documents.append((name, doc))
                if isinstance(doc.get("uid"), str):
                    self._resource_run[doc["uid"]] = run_start
            return None
        # datum, datum_page, stream_*: references into external files, not state.
        return None

    def _run(self, name: str, run_start: str) -> Run:
        run = self.runs.get(run_start)
        if run is None:
            raise RejectedMessage(
                "incomplete_run",
                f"{name} document of run {run_start!r}, whose start was never seen",
            )
        return run

    def _forget(self, run: Run) -> None:
        self.runs.pop(run.uid, None)
        for uid in run.descriptors:
            self._descriptor_run.pop(uid, None)
        for uid, owner in list(self._resource_run.items()):
            if owner == run.uid:
                del self._resource_run[uid]

    def drop_partitions(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the open runs read from these partitions (another consumer re-reads them)."""
        gone = set(partitions)
        for run in list(self.runs.values()):
            if run.position is not None and run.position[0] in gone:
                self._forget(run)


# ---------------------------------------------------------------------- consumer
@dataclass
class BlueskyStats(ConsumerCounters):
    documents: int = 0
    runs_published: int = 0
    #: Finished runs waiting for an older run of their partition to finish first.
    runs_held: int = 0
    runs_abandoned: int = 0
    open_runs: int = 0


@dataclass(frozen=True, slots=True)
class _Finished:
    start_offset: int
    event: AcquisitionEventV1


class BlueskyConsumer:
    """Consumes bluesky documents and publishes one acquisition event per finished run.

    Exactly one event per run, across restarts: on each partition, a finished run's event is
    published only once every run that started before it there has finished too (runs of one
    RunEngine follow each other, so this rarely holds anything back), and the committed offset
    is the start document of the oldest run still open. Every run that starts before the
    committed offset is then published, and every run from it on is not: a restarted consumer
    reads those runs again from their start and publishes each once. A run that stays silent
    (no document) for ``bluesky_run_timeout_s`` is given up: its start document is
    dead-lettered (``incomplete_run``) and the runs behind it go ahead.
    """

    def __init__(
        self,
        settings: BlueskySettings,
        *,
        worker_id: str | None = None,
        stats: BlueskyStats | None = None,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise IngestError("the bluesky consumer needs BEAMTWIN_KAFKA_BOOTSTRAP")
        self.settings = settings
        self.worker_id = worker_id or f"bluesky@{socket.gethostname()}:{os.getpid()}"
        self.stats = stats or BlueskyStats()
        keys = [k.strip() for k in settings.bluesky_instrument_keys.split(",") if k.strip()]
        self.collector = RunCollector(instrument_keys=keys, field_map=settings.bluesky_field_map)
        self._clock_s = clock_s
        self._stop = threading.Event()
        self._loop: ConsumerLoop | None = None
        self._publisher: AcquisitionPublisher | None = None
        #: Next offset to read, and how far it is safe to commit, per partition.
        self._read: dict[TopicPartition, int] = {}
        self._safe: dict[TopicPartition, int] = {}
        #: Finished runs not published yet, by partition.
        self._finished: dict[TopicPartition, list[_Finished]] = {}
        #: The consumed record of each open run's start document, and when the run last had a
        #: document [clock_s].
        self._start_records: dict[str, Any] = {}
        self._last_seen: dict[str, float] = {}

    def stop(self) -> None:
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        s = self.settings
        assert s.kafka_bootstrap is not None
        config = ConsumerConfig(
            bootstrap=s.kafka_bootstrap,
            topics=[s.bluesky_topic],
            group_id=s.bluesky_group_id,
            client_id=f"beamtwin-{self.worker_id}",
            deadletter_topic=s.deadletter_topic,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_records=500,
            max_message_bytes=s.bluesky_max_message_bytes,
        )
        self._loop = ConsumerLoop(config, self, worker_id=self.worker_id, counters=self.stats)
        with AcquisitionPublisher(
            s.kafka_bootstrap, topic=s.acquisitions_topic, source="bluesky"
        ) as self._publisher:
            self._loop.run(self._stop)

    # ------------------------------------------------------------------ the stage
    def max_records(self) -> int:
        return 500

    def take(self, tp: TopicPartition, record: Any) -> None:
        self.stats.documents += 1
        self._read[tp] = record.offset + 1
        self._take(tp, record)

    def due(self, now: float, *, read: bool) -> bool:
        return True  # silent runs are given up on time even when nothing is read

    def flush(self, positions: Mapping[TopicPartition, int], *, wait: bool) -> None:
        """Give up silent runs, publish the finished runs that may go, and work out how far
        each partition may be committed."""
        assert self._publisher is not None
        touched = dict(positions)
        self._give_up_silent_runs(touched)
        for tp in set(self._finished) | set(touched):
            self._release(tp, self._publisher)
        self.stats.open_runs = len(self.collector.runs)
        self.stats.runs_held = sum(len(f) for f in self._finished.values())
        if not touched:
            return
        # Events are acknowledged before the offsets that cover them move.
        self._publisher.flush()
        for tp, next_offset in touched.items():
            held = [f.start_offset for f in self._finished.get(tp, [])]
            self._safe[tp] = min([next_offset, *self._open_starts(tp), *held])

    def safe_offsets(self) -> dict[TopicPartition, int]:
        safe, self._safe = self._safe, {}
        return safe

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        parts = list(partitions)
        gone = [
            r.uid for r in self.collector.runs.values() if r.position and r.position[0] in parts
        ]
        self.collector.drop_partitions(parts)
        for uid in gone:
            self._start_records.pop(uid, None)
            self._last_seen.pop(uid, None)
        for tp in parts:
            self._finished.pop(tp, None)
            self._safe.pop(tp, None)
            self._read.pop(tp, None)

    def _take(self, tp: TopicPartition, record: Any) -> None:
        if len(record.value or b"") > self.settings.bluesky_max_message_bytes:
            raise RejectedMessage(
                "too_large",
                f"{len(record.value)} bytes; at most "
                f"{self.settings.bluesky_max_message_bytes} accepted",
            )
        name, doc = decode_document(record.value)
        run_uid = self._run_of(name, doc)
        finished = self.collector.add(name, doc, position=(tp, record.offset))
        if name == "start" and doc["uid"] not in self._start_records:
            self._start_records[doc["uid"]] = record
        if run_uid is not None:
            self._last_seen[run_uid] = self._clock_s()
        if finished is None:
            return
        run, event = finished
        self._start_records.pop(run.uid, None)
        self._last_seen.pop(run.uid, None)
        start_offset = run.position[1] if run.position is not None else record.offset
        self._finished.setdefault(tp, []).append(_Finished(start_offset, event))

    def _run_of(self, name: str, doc: Mapping[str, Any]) -> str | None:
        if name == "start":
            uid = doc.get("uid")
        elif name in ("descriptor", "stop", "resource"):
            uid = doc.get("run_start")
        else:
            uid = self.collector._descriptor_run.get(str(doc.get("descriptor")))
        return uid if isinstance(uid, str) else None

    def _open_starts(self, tp: TopicPartition) -> list[int]:
        return [
            r.position[1]
            for r in self.collector.runs.values()
            if r.position is not None and r.position[0] == tp
        ]

    def _release(self, tp: TopicPartition, publisher: AcquisitionPublisher) -> None:
        """Publish the finished runs of ``tp`` that no open run started before."""
        held = self._finished.get(tp)
        if not held:
            return
        oldest_open = min(self._open_starts(tp), default=None)
        ready = [f for f in held if oldest_open is None or f.start_offset < oldest_open]
        for finished in sorted(ready, key=lambda f: f.start_offset):
            publisher.publish(finished.event)
            self.stats.runs_published += 1
        self._finished[tp] = [f for f in held if f not in ready]

    def _give_up_silent_runs(self, positions: dict[TopicPartition, int]) -> None:
        limit = self.settings.bluesky_run_timeout_s
        now = self._clock_s()
        for uid, seen in list(self._last_seen.items()):
            run = self.collector.runs.get(uid)
            if run is None:
                self._last_seen.pop(uid, None)
                continue
            if now - seen < limit:
                continue
            record = self._start_records.pop(uid, None)
            self._last_seen.pop(uid, None)
            self.collector._forget(run)
            self.stats.runs_abandoned += 1
            if record is not None:
                self._dead_letter(
                    record,
                    RejectedMessage(
                        "incomplete_run",
                        f"run {uid}: no stop document and no other document for {limit:g} s; "
                        "given up",
                    ),
                )
            if run.position is not None:
                tp = run.position[0]  # its partition's committed offset may move on now
                if tp in self._read:
                    positions.setdefault(tp, self._read[tp])

    def _dead_letter(self, record: Any, rejection: RejectedMessage) -> None:
        assert self._loop is not None
        self._loop.dead_letter(record, rejection)
        self._loop.dead_letters.flush()  # before the offsets that cover it can move
