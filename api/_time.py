"""The one parser of every time parameter of every route: ISO 8601 with a time zone, inside the
range the API supports, returned in UTC.

Pydantic's ``AwareDatetime`` also takes plain numbers (``start=1796226000`` as Unix seconds) and
times whose UTC conversion overflows (``9999-12-31T23:59:59-14:00``, a 500 deep in the store);
a parameter typed ``Time`` refuses both with a 422 that says what is accepted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

#: Earliest and latest time a parameter may name (UTC, both included). Wide enough for any
#: record of an electron microscope, and far enough inside ``datetime``'s range that the
#: arithmetic of a request (a range, buckets and gap thresholds of up to ten years) cannot
#: overflow.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2500, 1, 1, tzinfo=UTC)

# Extended ISO 8601 / RFC 3339: a date, ``T`` (or a space), hours and minutes, optional
# seconds and fraction, and a zone (``Z`` or ``±HH:MM``).
_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})",
    re.IGNORECASE,
)
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?", re.IGNORECASE)
_EXPECTED = "an ISO 8601 time with a time zone, e.g. 2026-03-02T08:00:00Z or ...+01:00"


def parse_time(value: Any) -> datetime:
    """A time parameter as a UTC datetime.

    Raises:
        PydanticCustomError: (a ``ValueError``) ``value`` is not an ISO 8601 string with a
            zone (a number, a naive time, a date alone), or names a time outside
            ``[EARLIEST, LATEST]``.
    """
    if isinstance(value, datetime):  # a default or a value a caller built, not a request's
        text = value.isoformat()
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise PydanticCustomError(
            "time_type",
            "expected {expected}, not a {kind}",
            {"expected": _EXPECTED, "kind": type(value).__name__},
        )
    if len(text) <= 64 and _NAIVE.fullmatch(text):
        raise PydanticCustomError("timezone_aware", "Input should have timezone info")
    if len(text) > 64 or not _ISO_8601.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise PydanticCustomError(
            "time_parsing",
            "expected {expected}, not {shown}",
            {"expected": _EXPECTED, "shown": repr(shown)},
        )
    try:
        parsed = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise PydanticCustomError(
            "time_parsing",
            "{text} is not a valid time: {why}",
            {"text": repr(text), "why": str(exc)},
        ) from None
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise PydanticCustomError(
            "time_range",
            "{text} is outside the supported range {earliest} to {latest}",
            {
                "text": text,
                "earliest": f"{EARLIEST:%Y-%m-%dT%H:%M:%SZ}",
                "latest": f"{LATEST:%Y-%m-%dT%H:%M:%SZ}",
            },
        )
    return utc


#: A time parameter: ``Annotated[Time, Query(...)]`` (or ``Time | None``).
Time = Annotated[
    datetime,
    BeforeValidator(parse_time),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": f"ISO 8601 with a time zone, from {EARLIEST:%Y-%m-%dT%H:%M:%SZ} "
            f"to {LATEST:%Y-%m-%dT%H:%M:%SZ}",
        }
    ),
]
