"""The real pipeline the adapters publish into: a fresh telemetry topic on the session's broker,
an ingest worker (auto-registering instruments and channels) storing into the session's
PostgreSQL, and a publisher; plus reading back what was stored."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pytest
import sqlalchemy as sa

import provenance_store as store
from adapters import Adapter, AdapterSettings, AdapterStats, Source, Status
from ingest import TelemetryPublisher
from tests.ingest._support import create_topics, running_worker, settings_for, wait_until

#: Fast settings for tests: the defaults' rates, short timeouts and backoff.
FAST = AdapterSettings(
    adapter_read_timeout_s=0.5, adapter_retry_initial_s=0.05, adapter_retry_max_s=0.2
)


@dataclass
class Pipeline:
    engine: sa.Engine
    publisher: TelemetryPublisher
    bootstrap: str
    topic: str

    def stored(self, instrument: str, channel: str) -> list[tuple[datetime, float]]:
        """(source time, value in the canonical unit) of one channel, in time order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.source_time, s.value FROM telemetry_sample s "
                    "JOIN channel c ON c.id = s.channel_id "
                    "WHERE c.instrument_id = :i AND c.name = :n ORDER BY s.source_time"
                ),
                {"i": instrument, "n": channel},
            ).all()
        return [(r[0], r[1]) for r in rows]

    def latest(self, instrument: str, channel: str) -> float | None:
        rows = self.stored(instrument, channel)
        return rows[-1][1] if rows else None

    def channels(self, instrument: str) -> dict[str, store.ChannelRecord]:
        with self.engine.connect() as conn:
            return dict(store.get_channels(conn=conn, instrument_id=instrument))

    def wait_for(
        self, instrument: str, channel: str, ok: Callable[[float], bool], timeout: float
    ) -> None:
        def arrived() -> bool:
            value = self.latest(instrument, channel)
            return value is not None and ok(value)

        wait_until(arrived, timeout, f"{channel} of {instrument}")


@pytest.fixture()
def pipeline(
    database_url: str, engine: sa.Engine, kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> Iterator[Pipeline]:
    topic, dlq, group = unique_name("adapt"), unique_name("dlq"), unique_name("grp")
    create_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    settings = settings_for(
        database_url,
        kafka_bootstrap,
        topic,
        dlq,
        group,
        ingest_auto_register=True,
        ingest_batch_linger_s=0.02,
    )
    with (
        running_worker(settings, engine),
        TelemetryPublisher(
            kafka_bootstrap, publisher_id="adapter-test", topic=topic, linger_ms=0
        ) as publisher,
    ):
        yield Pipeline(engine=engine, publisher=publisher, bootstrap=kafka_bootstrap, topic=topic)


@dataclass
class Running:
    adapter: Adapter
    stats: AdapterStats
    statuses: list[Status] = field(default_factory=list)


@contextlib.contextmanager
def running_adapter(
    source: Source, pipeline: Pipeline, instrument: str, settings: AdapterSettings = FAST
) -> Iterator[Running]:
    """An adapter polling ``source`` on its own thread; stopped and joined on exit."""
    stats = AdapterStats()
    running = Running(adapter=None, stats=stats)  # type: ignore[arg-type]
    adapter = Adapter(
        source,
        pipeline.publisher,
        instrument_id=instrument,
        settings=settings,
        stats=stats,
        on_status=running.statuses.append,
    )
    running.adapter = adapter
    errors: list[BaseException] = []

    def run() -> None:
        try:
            adapter.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="adapter-under-test")
    thread.start()
    try:
        yield running
    finally:
        adapter.stop()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the adapter did not stop"
    assert not errors, f"the adapter failed: {errors!r}"
