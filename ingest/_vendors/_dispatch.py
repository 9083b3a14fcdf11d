"""Which reader reads a file (by the ending of its name, also gzipped), and the refusals that
name the file and what went wrong."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ingest._errors import RejectedMessage
from ingest._vendors._blockfile import read_blockfile
from ingest._vendors._calling import ReaderFailed, describe
from ingest._vendors._direct_electron import read_de_info, read_mrc
from ingest._vendors._dm import read_dm
from ingest._vendors._mapped import read_bcf, read_merlin_hdr, read_mib, read_msa, read_prz
from ingest._vendors._metadata import VendorMetadata
from ingest._vendors._protochips import read_protochips
from ingest._vendors._tia import read_tia
from ingest._vendors._tiff import read_tiff
from ingest._vendors._velox import read_emd

#: File name endings -> (format reader, description for the docs and messages). Each reader
#: imports its rosettasciio module when it runs, so importing ``ingest`` loads none of them.
READERS: dict[str, tuple[Callable[[Path], VendorMetadata], str]] = {
    ".dm3": (read_dm, "Gatan DigitalMicrograph 3"),
    ".dm4": (read_dm, "Gatan DigitalMicrograph 4"),
    ".emd": (read_emd, "Thermo Fisher Velox EMD (and other EMD)"),
    ".emi": (read_tia, "FEI TIA EMI (with its .ser)"),
    ".ser": (read_tia, "FEI TIA SER"),
    ".tif": (read_tiff, "TIFF, JEOL SightX"),
    ".tiff": (read_tiff, "TIFF, JEOL SightX"),
    ".mrc": (read_mrc, "MRC, with a Direct Electron _info.txt beside it"),
    "_info.txt": (read_de_info, "Direct Electron acquisition info"),
    ".csv": (read_protochips, "Protochips holder log"),
    ".bcf": (read_bcf, "Bruker Esprit BCF"),
    ".mib": (read_mib, "Quantum Detectors Merlin MIB"),
    ".hdr": (read_merlin_hdr, "Quantum Detectors Merlin header (with its .mib)"),
    ".msa": (read_msa, "EMSA/MSA spectrum"),
    ".ems": (read_msa, "EMSA/MSA spectrum"),
    ".prz": (read_prz, "Panta Rhei PRZ"),
    ".blo": (read_blockfile, "NanoMegas blockfile"),
}


def _reader_for(name: str) -> str | None:
    """The ending of ``READERS`` that ``name`` ends with (the longest), if any."""
    lower = name.lower().removesuffix(".gz")
    for ending in sorted(READERS, key=len, reverse=True):
        if lower.endswith(ending):
            return ending
    return None


@contextlib.contextmanager
def _plain_file(path: Path) -> Iterator[Path]:
    """``path``, or for ``*.gz`` a gunzipped copy in a temporary folder (same base name)."""
    if path.suffix.lower() != ".gz":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="beamtwin-register-") as tmp:
        target = Path(tmp) / path.name[: -len(".gz")]
        try:
            with gzip.open(path, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            raise RejectedMessage("unreadable_file", f"{path}: cannot gunzip ({exc})") from None
        yield target


def read_vendor_file(path: Path) -> VendorMetadata:
    """Read ``path`` and normalize its metadata.

    Raises:
        RejectedMessage: ``unknown_format`` (no reader for the file name's ending),
            ``unreadable_file`` (missing, empty, truncated or corrupt: the reason names the
            file and what the reader said).
    """
    ending = _reader_for(path.name)
    if ending is None:
        known = ", ".join(sorted(READERS))
        raise RejectedMessage(
            "unknown_format",
            f"{path}: no reader for this kind of file (known endings: {known}, also gzipped)",
        )
    reader, description = READERS[ending]
    if not path.is_file():
        raise RejectedMessage("unreadable_file", f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RejectedMessage("unreadable_file", f"{path}: the file is empty (0 bytes)")
    with _plain_file(path) as plain:
        try:
            return reader(plain)
        except RejectedMessage:
            raise
        except Exception as exc:  # readers fail in many ways on truncated or foreign files
            detail = str(exc) if isinstance(exc, ReaderFailed) else describe(exc)
            raise RejectedMessage(
                "unreadable_file",
                f"{path}: cannot be read as {description} ({detail[:500]})",
            ) from None
