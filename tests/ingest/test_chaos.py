"""Chaos (slow): ingest workers killed, stopped, restarted, added and cut off from the
database at random for 60 s under a paced publisher; every sample stored exactly once after,
and the group still works."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.ingest._chaos import run_chaos


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_loses_and_duplicates_nothing(
    database_url: str, kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    report = run_chaos(database_url, kafka_bootstrap, names=unique_name, duration_s=60.0)
    print("\n".join(report.lines()))
    print("actions:", " ".join(report.actions))
    assert report.published > 0
    assert report.stored == report.published, report
    assert report.duplicated == 0, report
    assert report.kills + report.terms >= 2, f"too little chaos: {report.actions}"
    assert report.group_healthy, report
