"""Vendor metadata as JSON: what rosettasciio's readers return (numpy scalars and arrays, bytes,
enums, datetimes, ``Box`` mappings) made JSON-compatible for the event."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

#: Largest list kept verbatim in ``original_metadata`` (longer ones, e.g. a holder log's time
#: axis or a colour table, are summarized: they are data, not metadata).
MAX_LIST = 256


def json_safe(value: Any) -> Any:
    """``value`` as JSON-compatible Python: numpy scalars and arrays, bytes, enums, datetimes
    and mappings (rosettasciio's ``Box``) converted; non-finite floats become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(value, np.ndarray):
        if value.size > MAX_LIST:
            return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
        return json_safe(value.tolist())
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST:
            return {"list_length": len(value)}
        return [json_safe(v) for v in value]
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
