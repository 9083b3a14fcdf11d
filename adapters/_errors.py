"""The adapters' one exception tree."""

from __future__ import annotations


class AdapterError(Exception):
    """Root of every error an instrument adapter raises."""


class SourceUnavailable(AdapterError, ConnectionError):
    """The vendor's control software cannot be reached or did not answer (a dropout)."""


class MappingError(AdapterError, ValueError):
    """A mapping table that cannot be published (a bad channel name, a vendor name twice)."""


class VendorLibraryMissing(AdapterError, ImportError):
    """The vendor library an adapter needs is not installed (``pip install beamtwin[nion]``)."""
