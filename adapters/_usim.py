"""Nion Swift's simulated instrument (``nionswift-usim``), started headless in this process.

For tests, benchmarks and ``beamtwin demo --source usim``: the same ``stem_controller`` a real
Nion registers, with the same controls and units. The configuration location is left unset
(usim's default deletes ``./test_data``); the simulated cameras start non-daemon acquisition
threads when they are built, which :meth:`UsimInstrument.close` ends, once.
"""

from __future__ import annotations

import threading
from typing import Any

from adapters._errors import AdapterError, VendorLibraryMissing


class UsimInstrument:
    """A running usim: its ``stem_controller`` registered in Swift's component registry.

    Use as a context manager, or call :meth:`close` once when done. :meth:`stop` takes the
    controller out of the registry (the instrument "goes away", as when Swift quits) and
    :meth:`start` puts it back.
    """

    def __init__(self) -> None:
        try:
            from nion.usim_device import DeviceConfiguration
        except ImportError as exc:
            raise VendorLibraryMissing(
                "nionswift-usim is not installed (pip install 'beamtwin[nion]')"
            ) from exc
        self._config = DeviceConfiguration.AcquisitionContextConfiguration(
            set_configuration_location=False
        )
        self._lock = threading.Lock()
        self._registered = False
        self._closed = False
        self.start()

    @property
    def instrument(self) -> Any:
        """The ``stem_controller`` (``TryGetVal``, ``SetVal``, ``get_control``, ...)."""
        return self._config.instrument

    def start(self) -> None:
        """Register the controller and its cameras and scan device (usim's own ``run``)."""
        with self._lock:
            if self._closed:
                raise AdapterError("this usim instrument is closed")
            if not self._registered:
                self._config.run()
                self._registered = True

    def stop(self) -> None:
        """Take the controller, cameras and scan device out of the registry."""
        with self._lock:
            if self._registered:
                self._config.stop()
                self._registered = False

    def close(self) -> None:
        """Stop, then end the simulated cameras' threads (safe to call more than once)."""
        self.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for camera in (self._config.ronchigram_camera_device, self._config.eels_camera_device):
            camera.close()

    def __enter__(self) -> UsimInstrument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
