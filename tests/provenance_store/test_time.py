"""The store's time conventions at their edges: a time whose UTC conversion overflows is a
ValueError naming the range, not an OverflowError from deep inside a query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from provenance_store._time import require_utc


@pytest.mark.parametrize(
    "value",
    [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=14))),
        datetime(1, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=14))),
    ],
)
def test_an_overflowing_utc_conversion_is_a_value_error(value: datetime) -> None:
    with pytest.raises(ValueError, match="outside the times UTC can express"):
        require_utc("end", value)


def test_times_inside_the_range_convert_to_utc() -> None:
    value = datetime(9999, 12, 31, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    assert require_utc("end", value) == datetime(9999, 12, 31, 7, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        require_utc("end", datetime(2026, 3, 2))
