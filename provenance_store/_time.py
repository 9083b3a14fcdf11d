"""Time conventions of the store: timezone-aware UTC datetimes at the API, integer
microseconds since the Unix epoch in arrays, and PostgreSQL's own epoch in binary COPY."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provenance_store._errors import InvalidArgument, WrongType

#: The Unix epoch, 1970-01-01T00:00:00Z.
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Origin of every time bucket (rollups and ``date_bin``), 2000-01-01T00:00:00Z.
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
#: PostgreSQL's timestamp epoch (2000-01-01Z) minus the Unix epoch [µs].
PG_EPOCH_OFFSET_US = 946_684_800_000_000
#: The SQL literal of ``BUCKET_ORIGIN``, for ``date_bin``.
BUCKET_ORIGIN_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"

_ONE_US = timedelta(microseconds=1)
#: Earliest and latest representable sample times [µs since the Unix epoch]: the range of
#: Python's ``datetime``, so that every stored time can be returned as one.
MIN_TIME_US = (datetime(1, 1, 1, tzinfo=UTC) - UNIX_EPOCH) // _ONE_US
MAX_TIME_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - UNIX_EPOCH) // _ONE_US


def require_utc(name: str, value: datetime) -> datetime:
    """``value`` converted to UTC; a naive datetime, or one whose UTC time falls outside
    ``datetime``'s range (``9999-12-31T23:59:59-14:00``), is refused with
    :class:`InvalidArgument`."""
    if not isinstance(value, datetime):
        raise WrongType(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(
            f"{name} must be timezone-aware (UTC); got the naive datetime {value.isoformat()}"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidArgument(
            f"{name} ({value.isoformat()}) is outside the times UTC can express "
            "(0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z)"
        ) from None


def to_us(value: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the Unix epoch [µs]."""
    return (value - UNIX_EPOCH) // _ONE_US


def from_us(value: int) -> datetime:
    """Integer microseconds since the Unix epoch [µs] as a UTC datetime."""
    return UNIX_EPOCH + timedelta(microseconds=int(value))


def duration_us(value: timedelta) -> int:
    """A duration in whole microseconds [µs]."""
    return value // _ONE_US


def as_utc(value: datetime) -> datetime:
    """A datetime read from the database (aware, in the session's time zone) in UTC."""
    return value.astimezone(UTC)
