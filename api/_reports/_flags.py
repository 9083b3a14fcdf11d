"""The report's twin flags of an instrument: counted by severity and kind, and listed by
severity (most severe first), each list by time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import provenance_store as store
from api._reports._format import json_ready

#: Severities, most severe first.
SEVERITY_ORDER = tuple(reversed(store.SEVERITIES))
#: The fields of a flag the report lists, in this order.
_FLAG_FIELDS = (
    "id",
    "kind",
    "severity",
    "quantity",
    "channel",
    "time",
    "end_time",
    "expected",
    "observed",
    "residual",
    "tolerance",
    "twin_version",
    "calibration_version",
)


def flag_entry(flag: store.FlagRecord) -> dict[str, Any]:
    """One flag, JSON-ready (times as ISO strings, values in the channel's canonical unit)."""
    return json_ready({name: getattr(flag, name) for name in _FLAG_FIELDS})


def flags_section(flags: Sequence[store.FlagRecord]) -> dict[str, Any]:
    """``total``, ``counts`` (severity -> kind -> count) and ``by_severity`` (severity -> flags
    in the order given)."""
    counts: dict[str, dict[str, int]] = {s: {} for s in SEVERITY_ORDER}
    by_severity: dict[str, list[dict[str, Any]]] = {s: [] for s in SEVERITY_ORDER}
    for flag in flags:
        kinds = counts.setdefault(flag.severity, {})
        kinds[flag.kind] = kinds.get(flag.kind, 0) + 1
        by_severity.setdefault(flag.severity, []).append(flag_entry(flag))
    return {
        "total": len(flags),
        "counts": {s: dict(sorted(k.items())) for s, k in counts.items()},
        "by_severity": by_severity,
    }
