"""Conversions shared by the report's sections: times as ISO strings or integer microseconds,
numbers as JSON numbers, bytes as base64, periods rounded to whole minutes."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(value: datetime) -> str:
    """``value`` in UTC as ISO 8601 with microseconds and ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def num(value: float | np.floating[Any] | int | None) -> float | int | None:
    """A JSON number: ``None`` for a missing or non-finite one; numpy scalars as Python ones."""
    if value is None:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def json_ready(value: Any) -> Any:
    """``value`` with datetimes as ISO strings and non-finite floats as ``None``."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, float | np.floating):
        return num(value)
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def b64(data: bytes) -> str:
    """``data`` as base64 text."""
    return base64.b64encode(data).decode()


def to_us(value: datetime) -> int:
    """``value`` as microseconds since the Unix epoch [µs]."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    """The UTC time ``value`` microseconds [µs] after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=int(value))


def floor_minute(value: datetime) -> datetime:
    """``value`` rounded down to a whole minute."""
    return value.replace(second=0, microsecond=0)


def ceil_minute(value: datetime) -> datetime:
    """``value`` rounded up to a whole minute."""
    floor = floor_minute(value)
    return floor if floor == value else floor + timedelta(minutes=1)


def ceil_minutes(value: timedelta) -> timedelta:
    """The duration ``value`` rounded up to whole minutes."""
    return timedelta(minutes=-(-value // timedelta(minutes=1)))
