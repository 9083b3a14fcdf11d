"""The telemetry wire format ``beamtwin.telemetry.v1``: one Kafka message = one frame.

A frame is a block of ticks of many channels of one instrument, stored by column so that the
per-message overhead (key, headers, field names) is paid once per block, not once per reading::

    {"schema": "beamtwin.telemetry.v1", "instrument_id": "nion-ustem-01",
     "publisher_id": "ustem-control-pc", "frame_seq": 1042,
     "sent_at": "2026-11-23T12:00:00.120Z",
     "times_ns": [1795435200000000000, ...], "seqs": [52100, ...],
     "columns": [{"channel": "gun.high_tension", "subsystem": "gun", "quantity": "voltage",
                  "unit": "kV", "values": [200.0012, null, ...]}, ...]}

The models below are the contract; ``docs/schemas/telemetry-frame.v1.json`` is generated from
them (``python -m ingest._schema``) and ``docs/wire-format.md`` explains them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ingest._errors import FrameTypeError, InvalidFrame, RejectedMessage
from twin import CHANNEL_NAME_PATTERN, ChannelSpec, QuantityKind, Subsystem

SCHEMA_ID = "beamtwin.telemetry.v1"

#: Instrument and publisher ids: what a hostname or an asset tag looks like.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)
_CHANNEL_RE = re.compile(CHANNEL_NAME_PATTERN)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]

#: Reject-reasons listed in one message before "and N more".
_MAX_LISTED_ERRORS = 5


class ColumnV1(BaseModel):
    """The readings of one channel, one per tick of the frame."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    channel: Annotated[str, Field(pattern=CHANNEL_NAME_PATTERN, max_length=128)] = Field(
        description="Channel name `<subsystem>.<sensor>[.<component>]`, e.g. `gun.high_tension`."
    )
    subsystem: Subsystem | None = Field(
        default=None,
        description="Where the sensor sits; must equal the channel name's prefix. Required "
        "when the channel is not registered yet.",
    )
    quantity: QuantityKind | None = Field(
        default=None,
        description="Quantity kind; fixes the canonical unit the values are stored in. "
        "Required when the channel is not registered yet.",
    )
    unit: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="Unit of `values` as pint understands it (`kV`, `degC`, `Torr`, `nm`, "
        "`mrad`, `1`, ...); must be convertible to the quantity kind's canonical unit."
    )
    values: list[float | None] = Field(
        description="One finite reading per tick (same length as `times_ns`); `null` = no "
        "reading at that tick."
    )
    calibration_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="Id of the calibration record the instrument applied to these values.",
    )


class TelemetryFrameV1(BaseModel):
    """One block of ticks of many channels of one instrument (Kafka key: ``instrument_id``).

    Besides the field types, a frame must have one entry per tick in ``seqs`` and in every
    column's ``values``, and no channel twice.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        title="TelemetryFrameV1",
    )

    schema_id: Literal["beamtwin.telemetry.v1"] = Field(
        alias="schema", description="Message schema id; always `beamtwin.telemetry.v1`."
    )
    instrument_id: Identifier = Field(description="Persistent id of the instrument.")
    publisher_id: Identifier = Field(description="Id of the program/PC that published.")
    frame_seq: Annotated[int, Field(ge=0, le=INT64_MAX)] = Field(
        description="Frame counter of the publisher, per instrument (gaps show lost frames)."
    )
    sent_at: AwareDatetime = Field(
        description="When the publisher sent the frame (RFC 3339 with offset, UTC preferred)."
    )
    times_ns: list[Int64] = Field(
        min_length=1,
        description="Source-clock time of each tick [ns since the Unix epoch, UTC].",
    )
    seqs: list[Int64] = Field(
        min_length=1, description="The publisher's tick counter, one per tick."
    )
    columns: list[ColumnV1] = Field(min_length=1, description="One column per channel.")

    @model_validator(mode="after")
    def _same_lengths_and_distinct_channels(self) -> TelemetryFrameV1:
        n_ticks = len(self.times_ns)
        if len(self.seqs) != n_ticks:
            raise PydanticCustomError(
                "length_mismatch",
                "seqs has {got} entries but times_ns has {ticks}",
                {"got": len(self.seqs), "ticks": n_ticks},
            )
        seen: set[str] = set()
        for i, column in enumerate(self.columns):
            if len(column.values) != n_ticks:
                raise PydanticCustomError(
                    "length_mismatch",
                    "columns[{i}].values ({channel}) has {got} entries but times_ns has {ticks}",
                    {
                        "i": i,
                        "channel": column.channel,
                        "got": len(column.values),
                        "ticks": n_ticks,
                    },
                )
            if column.channel in seen:
                raise PydanticCustomError(
                    "duplicate_channel",
                    "columns[{i}]: channel {channel} appears more than once in the frame",
                    {"i": i, "channel": column.channel},
                )
            seen.add(column.channel)
        return self


# ---------------------------------------------------------------------------- decoding
def decode_frame(raw: bytes, *, max_bytes: int) -> TelemetryFrameV1:
    """Parse and check one message value.

    Raises:
        RejectedMessage: ``too_large`` (more than ``max_bytes``; checked before parsing),
            ``malformed_json`` (not JSON, not UTF-8), ``schema`` (missing or unknown fields,
            wrong types, unknown schema id, a channel twice; the reason names the field path,
            e.g. ``columns[2].values[7]: Input should be a valid number``), ``non_finite``
            (NaN or Infinity), ``length_mismatch`` (a column or ``seqs`` not one per tick).
    """
    if len(raw) > max_bytes:
        raise RejectedMessage(
            "too_large",
            f"message is {len(raw)} bytes, more than the limit of {max_bytes} bytes "
            "(send fewer ticks per frame)",
        )
    try:
        return TelemetryFrameV1.model_validate_json(raw)
    except ValidationError as exc:
        raise rejection_from(exc) from None


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def rejection_from(exc: ValidationError) -> RejectedMessage:
    """The :class:`RejectedMessage` for a failed validation of a frame."""
    errors = exc.errors(include_url=False, include_context=False)
    kinds = {e["type"] for e in errors}
    if "json_invalid" in kinds:
        return RejectedMessage("malformed_json", f"not a JSON document: {errors[0]['msg']}")
    if kinds == {"finite_number"}:
        listed = [f"{_path(e['loc'])}: {e['input']!r} is not a finite number" for e in errors]
        return RejectedMessage(
            "non_finite",
            _listing(listed) + " (send null for a tick without a reading)",
        )
    if kinds == {"length_mismatch"}:
        return RejectedMessage("length_mismatch", errors[0]["msg"])
    listed = []
    for e in errors:
        path = _path(e["loc"])
        if e["loc"] == ("schema",) and e["type"] == "literal_error":
            listed.append(f"schema: unknown schema id {e['input']!r} (expected {SCHEMA_ID!r})")
        elif not path:  # errors of the whole frame carry their own location
            listed.append(e["msg"] if e["type"] != "model_type" else "a frame must be an object")
        else:
            listed.append(f"{path}: {e['msg']}")
    return RejectedMessage("schema", _listing(listed))


def _listing(items: list[str]) -> str:
    text = "; ".join(items[:_MAX_LISTED_ERRORS])
    if len(items) > _MAX_LISTED_ERRORS:
        text += f"; and {len(items) - _MAX_LISTED_ERRORS} more"
    return text


# ---------------------------------------------------------------------------- encoding
def encode_frame(frame: TelemetryFrameV1) -> bytes:
    """The message value of ``frame`` (JSON, UTF-8); optional fields left unset are omitted."""
    return frame.model_dump_json(by_alias=True, exclude_none=True).encode()


#: A column for :func:`build_frame`: ``(channel, unit, values)`` or
#: ``(channel, unit, values, spec)``. ``channel`` is a name or a :class:`~twin.ChannelSpec`;
#: a spec (in either place) adds the column's ``subsystem`` and ``quantity``, which a channel
#: needs the first time it is published.
ColumnInput = (
    tuple[ChannelSpec | str, str, npt.ArrayLike]
    | tuple[ChannelSpec | str, str, npt.ArrayLike, ChannelSpec | None]
)


def utc_timestamp(when: datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``, e.g. ``2026-11-23T12:00:00.120Z``."""
    when = datetime.now(UTC) if when is None else when.astimezone(UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int64_ticks(name: str, array: npt.ArrayLike) -> npt.NDArray[np.int64]:
    ticks = np.asarray(array)
    if ticks.ndim != 1 or (ticks.size and ticks.dtype.kind not in "iu"):
        raise FrameTypeError(f"{name} must be a 1-d integer array, not {ticks.dtype} {ticks.shape}")
    return np.ascontiguousarray(ticks, dtype=np.int64)


def build_frame(
    *,
    instrument_id: str,
    publisher_id: str,
    frame_seq: int,
    times_ns: npt.ArrayLike,
    seqs: npt.ArrayLike,
    columns: Sequence[ColumnInput],
    sent_at: datetime | None = None,
    calibration_ids: Mapping[str, str] | None = None,
) -> bytes:
    """Encode a block of ticks as one frame, straight from numpy arrays.

    Args:
        instrument_id: persistent id of the instrument (also the Kafka key).
        publisher_id: id of this publisher.
        frame_seq: this publisher's frame counter for the instrument.
        times_ns: source-clock time of each tick [ns since the Unix epoch, UTC], integers.
        seqs: the source's tick counter, one per tick.
        columns: one :data:`ColumnInput` per channel; ``values`` are floats in ``unit``, one per
            tick. NaN (and ±Infinity, which is no reading either) is sent as ``null``.
        sent_at: defaults to now.
        calibration_ids: channel name -> calibration id applied to its values.

    Raises:
        InvalidFrame / FrameTypeError: when the frame would be refused by the ingest (lengths,
            channel names, ids, a channel twice), so a publisher learns it at the source.
    """
    times = _int64_ticks("times_ns", times_ns)
    ticks = _int64_ticks("seqs", seqs)
    n = len(times)
    if n == 0:
        raise InvalidFrame("a frame needs at least one tick")
    if len(ticks) != n:
        raise InvalidFrame(f"seqs has {len(ticks)} entries but times_ns has {n}")
    if not columns:
        raise InvalidFrame("a frame needs at least one column")
    for label, ident in (("instrument_id", instrument_id), ("publisher_id", publisher_id)):
        if not _IDENTIFIER_RE.match(ident):
            raise InvalidFrame(f"{label} {ident!r} does not match {IDENTIFIER_PATTERN}")
    calibrations = calibration_ids or {}
    out_columns: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, column in enumerate(columns):
        channel, unit, values = column[0], column[1], column[2]
        spec = column[3] if len(column) > 3 else None
        if isinstance(channel, ChannelSpec):
            spec, name = spec or channel, channel.name
        else:
            name = channel
        if not _CHANNEL_RE.match(name):
            raise InvalidFrame(f"columns[{i}]: channel name {name!r} is not <subsystem>.<sensor>")
        if name in seen:
            raise InvalidFrame(f"columns[{i}]: channel {name} appears twice")
        seen.add(name)
        if not unit or not unit.strip():
            raise InvalidFrame(f"columns[{i}] ({name}): unit is empty")
        array = np.ascontiguousarray(values, dtype=np.float64)
        if array.shape != (n,):
            raise InvalidFrame(
                f"columns[{i}] ({name}): values have shape {array.shape}, not ({n},)"
            )
        doc: dict[str, Any] = {"channel": name}
        if spec is not None:
            doc["subsystem"] = spec.subsystem.value
            doc["quantity"] = spec.quantity.value
        doc["unit"] = unit
        doc["values"] = array  # orjson writes NaN and ±Infinity as null
        if name in calibrations:
            doc["calibration_id"] = calibrations[name]
        out_columns.append(doc)
    message = {
        "schema": SCHEMA_ID,
        "instrument_id": instrument_id,
        "publisher_id": publisher_id,
        "frame_seq": int(frame_seq),
        "sent_at": utc_timestamp(sent_at),
        "times_ns": times,
        "seqs": ticks,
        "columns": out_columns,
    }
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
