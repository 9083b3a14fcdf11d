"""``beamtwin adapter nion|tfs|jeol``: read a vendor's control software and publish telemetry
(docs/adapters.md)."""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING

from beamtwin_cli._common import CommandError, add_duration, bootstrap, ingest_settings, supervise

if TYPE_CHECKING:
    from adapters import Adapter, AdapterSettings, Source, UsimInstrument
    from beamtwin_cli._common import Subparsers
    from ingest import TelemetryPublisher


def add_parsers(sub: Subparsers) -> None:
    adapter = sub.add_parser(
        "adapter",
        help="read a microscope's control software (Nion, Thermo Fisher, JEOL) and publish "
        "its telemetry",
        description=(
            "Poll the vendor's control software (optics at BEAMTWIN_ADAPTER_OPTICS_HZ, the stage "
            "at 1 Hz at rest and faster while it moves), publish what changed beyond each "
            "channel's deadband and a full frame every second to BEAMTWIN_TELEMETRY_TOPIC on "
            "BEAMTWIN_KAFKA_BOOTSTRAP. Read-only: no adapter writes to the instrument. A vendor "
            "error or disconnection is reported as a dropout and retried with backoff."
        ),
    )
    vendors = adapter.add_subparsers(dest="vendor", required=True, metavar="VENDOR")
    nion = vendors.add_parser("nion", help="Nion Swift (here: its simulated instrument, usim)")
    nion.add_argument(
        "--usim",
        action="store_true",
        help="start Nion Swift's simulated instrument in this process and read it (on a real "
        "Nion the adapter runs inside Swift: docs/adapters.md)",
    )
    nion.add_argument("--no-events", action="store_true", help="poll only; ignore change events")
    tfs = vendors.add_parser("tfs", help="Thermo Fisher TEM Scripting through temscript-server")
    tfs.add_argument("--host", default="127.0.0.1", help="temscript-server host")
    tfs.add_argument("--port", type=int, default=8080, help="temscript-server port")
    vendors.add_parser("jeol", help="JEOL PyJEM TEM3 (on the microscope PC; untested on hardware)")
    for parser in vendors.choices.values():
        parser.add_argument("--instrument", required=True, metavar="ID", help="instrument id")
        parser.add_argument("--publisher-id", default=None, help="default: adapter-<vendor>")
        add_duration(parser)
        parser.set_defaults(func=run_adapter)


def _source(args: argparse.Namespace) -> Source:
    from adapters import JeolSource, NionSource, TemscriptSource

    if args.vendor == "nion":
        if not args.usim:
            raise CommandError(
                "a separate process cannot reach Nion Swift's instrument: run the adapter "
                "inside Swift (docs/adapters.md), or pass --usim for the simulated instrument"
            )
        return NionSource()
    if args.vendor == "tfs":
        return TemscriptSource(args.host, args.port)
    return JeolSource()


def run_adapter(args: argparse.Namespace) -> int:
    from adapters import AdapterError, AdapterSettings, UsimInstrument
    from ingest import TelemetryPublisher, ensure_topics

    settings = AdapterSettings()
    if getattr(args, "no_events", False):
        settings = settings.model_copy(update={"adapter_use_events": False})
    broker = bootstrap(ingest_settings())
    ensure_topics(broker, {settings.telemetry_topic: ingest_settings().telemetry_partitions})
    try:
        source = _source(args)
        usim = UsimInstrument() if getattr(args, "usim", False) else None
    except AdapterError as exc:
        raise CommandError(str(exc)) from exc
    try:
        with TelemetryPublisher(
            broker,
            topic=settings.telemetry_topic,
            publisher_id=args.publisher_id or f"adapter-{source.name}",
        ) as publisher:
            adapter = _adapter(source, publisher, args, settings)
            supervise(
                f"the {args.vendor} adapter",
                lambda stop, errors: [start_adapter(adapter, stop, errors)],
                banner=f"adapter {source.name} -> {args.instrument} on {broker}; Ctrl-C stops",
                progress=adapter.stats.line,
                duration_s=args.duration,
            )
    finally:
        _close(usim)
    print(adapter.stats.line())
    return 0


def _adapter(
    source: Source,
    publisher: TelemetryPublisher,
    args: argparse.Namespace,
    settings: AdapterSettings,
) -> Adapter:
    from adapters import Adapter

    return Adapter(
        source,
        publisher,
        instrument_id=args.instrument,
        publisher_id=args.publisher_id,
        settings=settings,
    )


def _close(usim: UsimInstrument | None) -> None:
    if usim is not None:
        usim.close()


def start_adapter(
    adapter: Adapter, stop: threading.Event, errors: list[BaseException]
) -> threading.Thread:
    """Run ``adapter`` on a (non-daemon) thread until ``stop``; a crash lands in ``errors``."""

    def run() -> None:
        try:
            adapter.run(stop)
        except BaseException as exc:  # a bug of the adapter: surfaced by the caller
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, name=f"adapter-{adapter.instrument_id}")
    thread.start()
    return thread


class UsimFeed:
    """Nion Swift's simulated instrument published by the Nion adapter, on a thread
    (``beamtwin demo --source usim``). :meth:`close` once the thread has ended."""

    def __init__(self, broker: str, topic: str, instrument: str) -> None:
        from adapters import Adapter, AdapterSettings, NionSource, UsimInstrument
        from ingest import TelemetryPublisher

        self.usim = UsimInstrument()
        self.publisher = TelemetryPublisher(broker, topic=topic, publisher_id="adapter-usim")
        self.adapter = Adapter(
            NionSource(), self.publisher, instrument_id=instrument, settings=AdapterSettings()
        )

    def start(
        self, stop: threading.Event, errors: list[BaseException], duration_s: float | None
    ) -> threading.Thread:
        """Publish until ``stop`` is set or ``duration_s`` has passed."""
        if duration_s is not None:
            timer = threading.Timer(duration_s, self.adapter.stop)
            timer.daemon = True
            timer.start()
        return start_adapter(self.adapter, stop, errors)

    def close(self) -> None:
        self.publisher.close()
        self.usim.close()
