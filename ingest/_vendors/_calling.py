"""Calling a rosettasciio reader: its warnings and log lines quietened, the file it leaves open
closed, and only what the event needs kept of its result."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ingest._errors import RejectedMessage
from ingest._vendors._standard import standard_metadata

log = logging.getLogger(__name__)

#: Loggers of the readers, quietened while they read.
_READER_LOGGERS = ("rsciio", "tifffile")


class ReaderFailed(Exception):
    """A reader raised; the message is its exception's type and text."""


def describe(exc: BaseException) -> str:
    """``exc`` as ``package.Type: message`` (the package of its module, none for builtins)."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__.split('.')[0]}.{name}"
    return f"{name}: {exc}".strip().rstrip(":")


def _detach(result: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of a reader's result: metadata (rosettasciio's standard metadata, its
    mapping applied) and axes, and for a 1-d signal its first value; not the (lazy) data,
    which holds the file open."""
    data = result.get("data")
    out = {k: result.get(k) for k in ("original_metadata", "axes")}
    out["metadata"] = standard_metadata(result)
    out["mapping_keys"] = list(result.get("mapping") or {})
    out["first_value"] = None
    if data is not None and getattr(data, "ndim", 0) == 1 and len(data):
        out["first_value"] = float(np.asarray(data[:1])[0])
    return out


_heap_frozen = False


def _collect_young() -> None:
    """A full garbage collection that skips the objects alive at the first call.

    Some readers leave their file in a reference cycle that only a full collection frees;
    with numpy, scipy, jax and sqlalchemy loaded, a full collection costs ~0.2 s, most of
    registering a small file. The first call freezes what is alive then (modules, classes:
    the long-lived heap, ``gc.freeze``), so each later collection scans only what was made
    since.
    """
    global _heap_frozen
    if not _heap_frozen:
        gc.collect()
        gc.freeze()
        _heap_frozen = True
    gc.collect()


def call_reader(reader: Callable[..., Any], path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Run a rosettasciio reader and keep what the event needs.

    Readers warn about vendor quirks (non-uniform time axes, odd TIFF pages) that the event
    reports itself or that end in an ``unreadable_file`` rejection, and some leave the file open
    (lazy data, or a reader that failed half-way): the file is closed here, before returning.

    Raises:
        ReaderFailed: the reader raised (its type and message).
    """
    loggers = [logging.getLogger(name) for name in _READER_LOGGERS]
    levels = [logger.level for logger in loggers]
    failure: str | None = None
    results: list[dict[str, Any]] = []
    try:
        for logger in loggers:
            if not log.isEnabledFor(logging.DEBUG):
                logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                results = [_detach(r) for r in reader(str(path), **kwargs)]
            except Exception as exc:
                failure = describe(exc)
            # Close what the reader left open while its warnings are still silenced.
            _collect_young()
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if failure is not None:
        raise ReaderFailed(failure)
    return results


def read_text(path: Path) -> str:
    """``path`` as UTF-8 text.

    Raises:
        RejectedMessage: ``unreadable_file`` when it is not UTF-8.
    """
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RejectedMessage("unreadable_file", f"{path}: not UTF-8 text") from None
