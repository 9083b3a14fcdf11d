"""The acquisition event ``beamtwin.acquisitions.v1``: one Kafka message per registered dataset.

When a microscope writes a data file, ``beamtwin register FILE`` reads it and publishes one
event, keyed by the instrument id, that carries the file's identity (URI, sha256, size), the
acquisition times, who and for which proposal, the verbatim vendor metadata tree, and the
**normalized fields**: the vendor's keys mapped to beamtwin's state vocabulary in one canonical
unit each, every one with the key it came from and a quality marker::

    {"schema": "beamtwin.acquisitions.v1", "dataset_id": "ds-3f1c...", "instrument_id": "titan-01",
     "start_time": "2019-12-05T10:03:44Z", "time_source": "file_metadata", ...,
     "state": {"high_tension": {"value": 300000.0, "unit": "V", "quality": "ok",
                                "source": "Optics.AccelerationVoltage", "source_value": "300000",
                                "source_unit": "V"}, ...},
     "instrument": {"vendor": {"value": "FEI Company", ...}, ...},
     "original_metadata": {...}}

The models below are the contract; ``docs/schemas/acquisition-event.v1.json`` is generated from
them (``python -m ingest._schema``) and ``docs/acquisitions.md`` explains them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

import provenance_store as store
from ingest._wire import IDENTIFIER_PATTERN

ACQUISITION_SCHEMA_ID = "beamtwin.acquisitions.v1"

#: Version of the vendor-key -> state-field mapping in :mod:`ingest._vendors`; bump it when a
#: mapping rule, a unit inference or a quality rule changes, so that events normalized by
#: different rules can be told apart.
MAPPING_VERSION = "1.1.0"

DATASET_ID_PATTERN = r"^ds-[0-9a-f]{32}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class Quality(StrEnum):
    """How far a normalized value can be trusted as a reading of the instrument."""

    #: Read from the file with a stated (or vendor-documented) unit.
    OK = "ok"
    #: A zero the vendor writes when it does not know the value (0 probe current, 0 camera
    #: length, 0 Cs): not a measurement.
    PLACEHOLDER = "placeholder"
    #: The acquisition software reported its microscope channel disconnected, so the value is
    #: the software's default, not the microscope's.
    DISCONNECTED_DEFAULT = "disconnected_default"
    #: The vendor writes the value rounded (coarser than the instrument's resolution); the
    #: note gives the rounding.
    ROUNDED = "rounded"
    #: The file does not say the unit; it was inferred (the note says how).
    UNIT_AMBIGUOUS = "unit_ambiguous"


class TimeSource(StrEnum):
    """Where ``start_time`` and ``end_time`` come from."""

    #: Times recorded in the file with their zone (or as seconds since the Unix epoch).
    FILE_METADATA = "file_metadata"
    #: A local time in the file without a zone, read as UTC (the true zone is unknown).
    FILE_METADATA_NO_ZONE = "file_metadata_no_zone"
    #: The file records no time: its modification time on disk.
    FILE_MTIME = "file_mtime"


#: The per-acquisition state fields: name -> (canonical unit or ``None`` for text, meaning).
STATE_FIELDS: dict[str, tuple[str | None, str]] = {
    "high_tension": ("V", "accelerating voltage of the gun"),
    "beam_energy": ("eV", "kinetic energy of the electrons (= e x high tension)"),
    "extraction_voltage": ("V", "field-emission extractor voltage"),
    "emission_current": ("A", "gun emission current"),
    "probe_current": ("A", "current in the probe / beam at the specimen"),
    "screen_current": ("A", "current measured on the fluorescent screen"),
    "spot_size": ("1", "spot size index as the microscope shows it"),
    "convergence_semiangle": ("rad", "probe convergence semi-angle"),
    "magnification": ("1", "indicated (nominal) magnification"),
    "camera_length": ("m", "camera length"),
    "defocus": ("m", "defocus in abTEM's sign: defocus = -C10, positive = underfocus"),
    "spherical_aberration": ("m", "Cs (C30) as the file states it"),
    "stage_x": ("m", "stage position x"),
    "stage_y": ("m", "stage position y"),
    "stage_z": ("m", "stage position z (height)"),
    "stage_alpha": ("rad", "stage alpha tilt"),
    "stage_beta": ("rad", "stage beta tilt"),
    "dwell_time": ("s", "scan dwell time per probe position"),
    "exposure_time": ("s", "exposure time of one frame"),
    "frame_count": ("1", "frames in the dataset"),
    "pixel_size": ("m", "calibrated size of one pixel at the specimen (x)"),
    "reciprocal_pixel_size": (
        "1/m",
        "diffraction calibration: reciprocal-space size of one pixel (x)",
    ),
    "holder_temperature": ("K", "specimen holder temperature at the start"),
    "holder_pressure": ("Pa", "gas pressure in the holder at the start"),
    "acquisition_mode": (None, "operating mode (TEM, STEM, diffraction ...) as the file says"),
    "detector": (None, "detector or camera that recorded the data"),
    "holder": (None, "specimen holder type"),
    "operator": (None, "user name recorded in the file"),
    "acquisition_start": (None, "acquisition start as recorded in the file (ISO 8601)"),
}

#: The static description of the instrument (as NeXus NXem separates it from the state).
INSTRUMENT_FIELDS: dict[str, tuple[str | None, str]] = {
    "vendor": (None, "manufacturer"),
    "model": (None, "microscope model"),
    "serial_number": (None, "serial number / instrument id of the vendor"),
    "control_software": (None, "acquisition / control software"),
    "control_software_version": (None, "its version"),
    "detector_model": (None, "camera / detector model"),
    "computer_name": (None, "acquisition PC"),
}

StateFieldName = Literal[
    "high_tension",
    "beam_energy",
    "extraction_voltage",
    "emission_current",
    "probe_current",
    "screen_current",
    "spot_size",
    "convergence_semiangle",
    "magnification",
    "camera_length",
    "defocus",
    "spherical_aberration",
    "stage_x",
    "stage_y",
    "stage_z",
    "stage_alpha",
    "stage_beta",
    "dwell_time",
    "exposure_time",
    "frame_count",
    "pixel_size",
    "reciprocal_pixel_size",
    "holder_temperature",
    "holder_pressure",
    "acquisition_mode",
    "detector",
    "holder",
    "operator",
    "acquisition_start",
]
InstrumentFieldName = Literal[
    "vendor",
    "model",
    "serial_number",
    "control_software",
    "control_software_version",
    "detector_model",
    "computer_name",
]


class NormalizedField(BaseModel):
    """One vendor value mapped to a beamtwin field, with where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    value: float | str = Field(
        description="The value in `unit` (numbers) or as text (names, modes, times)."
    )
    unit: str | None = Field(
        description="Canonical unit of the field (`V`, `eV`, `m`, `1/m`, `rad`, `s`, `A`, `K`, "
        "`Pa`, `1`); null for text fields."
    )
    source: str = Field(
        min_length=1,
        description="Key path of the value in `original_metadata` (dotted); `rsciio:` + a "
        "value rosettasciio computed (its axes); `data:` + a reading taken from the data; "
        "`file:NAME:` + the key in a companion file.",
    )
    source_value: Any = Field(description="The value verbatim as the file holds it.")
    source_unit: str | None = Field(
        default=None, description="Unit the file used (stated or inferred, see `quality`)."
    )
    quality: Quality = Field(description="How far the value can be trusted; see the docs.")
    note: str | None = Field(
        default=None,
        description="Why the quality is not `ok`: how a unit was inferred, what the "
        "placeholder or the rounding is.",
    )


#: Version of the image measurements (:class:`ImageMeasurements`); bump it when a method or
#: its quality measure changes.
IMAGE_MEASUREMENT_VERSION = "1.0.0"


class ImageMeasurement(BaseModel):
    """One quantity measured from the data itself (not from the metadata)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    quantity: Literal["defocus", "convergence_semiangle", "camera_length_scale"] = Field(
        description="`defocus` [m, abTEM sign] from a Thon-ring fit of an HRTEM image; "
        "`convergence_semiangle` [rad] from the CBED disk radius; `camera_length_scale` [1] "
        "from the ring radii of a declared standard (1 = the file's calibration is right)."
    )
    value: float = Field(description="The measured value in `unit`.")
    unit: Literal["m", "rad", "1"] = Field(description="Canonical unit of the value.")
    sd: float = Field(ge=0, description="Standard uncertainty of the value (same unit).")
    quality: float = Field(
        ge=-1,
        le=1,
        description="How clearly the data showed it: the Thon fit's cross-correlation, the "
        "disk's contrast, 1 - the rings' rms relative residual.",
    )
    method: str = Field(description="The twin function and its settings.")
    note: str | None = Field(default=None, description="Assumptions (an assumed Cs, ...).")


class ImageMeasurements(BaseModel):
    """The image measurements of one dataset, or why there are none."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: str = Field(description="`IMAGE_MEASUREMENT_VERSION` of the methods used.")
    measurements: list[ImageMeasurement] = Field(default_factory=list)
    skipped: str | None = Field(
        default=None, description="Why nothing was measured (not HRTEM, too small, ...)."
    )
    image_shape: list[int] | None = Field(
        default=None, description="Shape [pixels] of the frame measured, after any crop."
    )


class FileInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="Where the file was read (`file://` URI, absolute path).")
    name: str = Field(description="File name.")
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] = Field(
        description="SHA-256 of the file's bytes (lower-case hex)."
    )
    size_bytes: int = Field(ge=0, description="File size [bytes].")
    format: str = Field(description="Vendor format, e.g. `gatan_dm`, `velox_emd`, `tia_emi`.")
    mtime: AwareDatetime = Field(description="Modification time on disk (UTC).")


class ReaderInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Reader, e.g. `rsciio.digitalmicrograph` or `beamtwin.de_info`.")
    version: str = Field(description="Version of the reader library (rosettasciio's version).")
    mapping_version: str = Field(description="Version of beamtwin's vendor-key mapping.")


class AcquisitionEventV1(BaseModel):
    """One registered dataset (Kafka key: ``instrument_id``)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        title="AcquisitionEventV1",
    )

    schema_id: Literal["beamtwin.acquisitions.v1"] = Field(
        alias="schema", description="Message schema id; always `beamtwin.acquisitions.v1`."
    )
    dataset_id: Annotated[str, Field(pattern=DATASET_ID_PATTERN)] = Field(
        description="Stable id of the dataset: `ds-` + the first 32 hex digits of the file's "
        "SHA-256, so registering the same bytes again gives the same id."
    )
    instrument_id: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)] = Field(
        description="Persistent id of the instrument that acquired it (the Kafka key)."
    )
    start_time: AwareDatetime = Field(description="Acquisition start (UTC).")
    end_time: AwareDatetime = Field(
        description="Acquisition end (UTC); equal to `start_time` when the file records no "
        "duration."
    )
    time_source: TimeSource = Field(description="Where the two times come from.")
    registered_at: AwareDatetime = Field(description="When the event was built (UTC).")
    file: FileInfo
    operator: str | None = Field(default=None, description="Operator, as given at registration.")
    proposal: str | None = Field(default=None, description="Proposal / project, if given.")
    reader: ReaderInfo
    instrument: dict[InstrumentFieldName, NormalizedField] = Field(
        description="Static description of the instrument as the file states it."
    )
    state: dict[StateFieldName, NormalizedField] = Field(
        description="Per-acquisition state, normalized to canonical units."
    )
    original_metadata: dict[str, Any] = Field(
        description="The vendor metadata tree verbatim (numbers, text, lists; bytes decoded)."
    )
    reader_metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="rosettasciio's standard (HyperSpy) metadata tree for the file.",
    )
    image_measurements: ImageMeasurements | None = Field(
        default=None,
        description="Quantities measured from the data itself where the file is read "
        "(Thon rings, CBED disk, a standard's rings), with their uncertainty and quality; "
        "absent for events built without them.",
    )

    @model_validator(mode="after")
    def _units_are_canonical(self) -> AcquisitionEventV1:
        for group, table in (("state", STATE_FIELDS), ("instrument", INSTRUMENT_FIELDS)):
            fields: dict[str, NormalizedField] = getattr(self, group)
            for name, field in fields.items():
                unit = table[name][0]
                if field.unit != unit:
                    raise ValueError(f"{group}.{name}: unit must be {unit!r}, not {field.unit!r}")
                if (unit is None) != isinstance(field.value, str):
                    kind = "text" if unit is None else "a number"
                    raise ValueError(f"{group}.{name}: value must be {kind}")
        if self.end_time < self.start_time:
            raise ValueError("end_time is before start_time")
        return self


def dataset_id_for(sha256_hex: str) -> str:
    """The stable dataset id of a file with this SHA-256 (hex)."""
    return "ds-" + sha256_hex[:32]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_event(event: AcquisitionEventV1) -> bytes:
    """The message value of ``event`` (JSON, UTF-8)."""
    return event.model_dump_json(by_alias=True).encode()


def decode_event(raw: bytes) -> AcquisitionEventV1:
    """Parse one message value (raises pydantic's ``ValidationError``)."""
    return AcquisitionEventV1.model_validate_json(raw)


def dataset_record(
    event: AcquisitionEventV1, *, document: Mapping[str, Any] | None = None
) -> store.DatasetIn:
    """The dataset a validated acquisition event registers, for
    :func:`provenance_store.register_dataset` (which then checks nothing twice).

    Args:
        document: the event's JSON object exactly as it was received (stored verbatim);
            default: the model's own JSON dump.
    """
    return store.DatasetIn(
        id=event.dataset_id,
        instrument_id=event.instrument_id,
        start_time=event.start_time,
        end_time=event.end_time,
        time_source=str(event.time_source.value),
        file_uri=event.file.uri,
        file_name=event.file.name,
        file_sha256=event.file.sha256,
        file_size=event.file.size_bytes,
        file_format=event.file.format,
        operator=event.operator,
        proposal=event.proposal,
        registered_at=event.registered_at,
        event=document if document is not None else event.model_dump(mode="json", by_alias=True),
    )
