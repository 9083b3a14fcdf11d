"""Instrument adapters: read a vendor's control software and publish beamtwin telemetry.

One adapter process per instrument polls its source (Nion Swift's ``stem_controller``, Thermo
Fisher TEM Scripting through ``temscript-server``, JEOL PyJEM's ``TEM3``) and publishes
``beamtwin.telemetry.v1`` frames through :class:`ingest.TelemetryPublisher`: changes beyond a
per-channel deadband, a full frame every second, read times on the source's clock, dropouts
reported and retried. Sources only read: no adapter has a path that writes to the
instrument. Vendor libraries are optional extras (``beamtwin[nion]``, ``beamtwin[tfs]``),
imported only when a source connects. See docs/adapters.md.
"""

from adapters._adapter import Adapter, AdapterStats, FrameSink, Status, encode
from adapters._errors import AdapterError, MappingError, SourceUnavailable, VendorLibraryMissing
from adapters._jeol import JEOL_MAPPING, JeolSource
from adapters._mapping import UNCALIBRATED, ChannelMap, check_mapping
from adapters._nion import NION_MAPPING, NionSource
from adapters._settings import AdapterSettings
from adapters._source import Reading, ReadTimeout, Source, TimedCaller
from adapters._tfs import TFS_MAPPING, TemscriptSource, flatten_state
from adapters._usim import UsimInstrument

__all__ = [
    "JEOL_MAPPING",
    "NION_MAPPING",
    "TFS_MAPPING",
    "UNCALIBRATED",
    "Adapter",
    "AdapterError",
    "AdapterSettings",
    "AdapterStats",
    "ChannelMap",
    "FrameSink",
    "JeolSource",
    "MappingError",
    "NionSource",
    "ReadTimeout",
    "Reading",
    "Source",
    "SourceUnavailable",
    "Status",
    "TemscriptSource",
    "TimedCaller",
    "UsimInstrument",
    "VendorLibraryMissing",
    "check_mapping",
    "encode",
    "flatten_state",
]
