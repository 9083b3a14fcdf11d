"""Read vendor data files and normalize their metadata to beamtwin's state fields.

Files are read with rosettasciio (``rsciio``, HyperSpy's file-IO library): Gatan DigitalMicrograph
(``.dm3``/``.dm4``), Thermo Fisher Velox EMD (``.emd``), FEI TIA (``.emi`` with its ``.ser``, or a
``.ser`` alone), TIFF including JEOL SightX (``.tif``/``.tiff``, also gzipped), MRC (``.mrc``,
with the Direct Electron ``*_info.txt`` beside it) and Protochips holder logs (``.csv``). The
Direct Electron info file (``*_info.txt``) is plain ``key = value`` text and is parsed here.

Every vendor names and scales things its own way. Each format has a table of rules (see
:mod:`._rules`) in its own module: which key holds which state field, in which unit (stated in
the file, or inferred and then flagged ``unit_ambiguous`` with a note saying how), which zeros
mean "unknown" (``placeholder``), which values the vendor rounds (``rounded``); the Direct
Electron info file's microscope values are ``disconnected_default`` when it says its microscope
channel is disconnected. Units are converted with pint to the canonical unit of each field (see
:data:`~ingest._acquisition.STATE_FIELDS`). Defocus follows abTEM: ``defocus = -C10``, positive
= underfocus; Thermo Fisher's ``Optics.Defocus`` (and TIA's ``Defocus_um``) are read as ``C10``
(``twin.VELOX_DEFOCUS_TO_C10``, see ``docs/optics.md``).

Modules: ``_rules`` (the rule engine), ``_quantities`` (units as vendors write them),
``_json``, ``_metadata`` (what a reader gives, times, axes), ``_standard`` (rosettasciio's
standard metadata), ``_calling`` (running a rosettasciio reader), one module per vendor
(``_dm``, ``_velox``, ``_tia``, ``_tiff``, ``_direct_electron``, ``_protochips``),
``_dispatch`` (file ending -> reader) and ``_event`` (the acquisition event).
"""

from ingest._vendors._dispatch import READERS, read_vendor_file
from ingest._vendors._event import build_acquisition_event, file_digest, rosettasciio_version
from ingest._vendors._image import measure_image
from ingest._vendors._metadata import VendorMetadata
from ingest._vendors._quantities import convert

__all__ = [
    "READERS",
    "VendorMetadata",
    "build_acquisition_event",
    "convert",
    "file_digest",
    "measure_image",
    "read_vendor_file",
    "rosettasciio_version",
]
