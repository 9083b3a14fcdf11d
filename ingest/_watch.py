"""``beamtwin watch DIR``: register the data files that appear in a folder.

The folder is scanned recursively every ``interval_s`` (polling: it works the same on local
disks, NFS and SMB shares, where change notifications are unreliable). A file is registered
once its size and modification time have not changed for ``settle_s`` seconds (a microscope
writing a large file is not read half-written), through the same code path as ``beamtwin
register`` (the same readers, normalization, event and dead letters), with the Kafka header
``beamtwin.source: watch``.

What was registered is remembered in a small JSON state file (default: ``.beamtwin-watch.json``
in the folder), keyed by path, size and modification time, so a restart registers nothing
twice and a file that changes is registered again (its new bytes are a new dataset; the same
bytes give the same dataset id, which the store deduplicates anyway).

Skipped silently: hidden files and folders (names starting with ``.``) and files still being
written by the usual conventions (``*.tmp``, ``*.part``, ``*.partial``, ``*.crdownload``,
``*.swp``, ``*~``). Every other file is registered or dead-lettered as ``beamtwin register``
would (``unknown_format``, ``unreadable_file``, ...), once per version of the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest._errors import IngestError
from ingest._register import Registration, prepare, publish_registrations

log = logging.getLogger(__name__)

#: Default name of the state file inside the watched folder.
STATE_FILE_NAME = ".beamtwin-watch.json"
_STATE_FORMAT = "beamtwin-watch/1"
#: Endings of files that are still being written (or are editor / download leftovers).
PARTIAL_ENDINGS = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", "~")


@dataclass(frozen=True, slots=True)
class FileVersion:
    """One version of a file: where it is, how big, when last modified."""

    path: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        return f"{self.path}|{self.size}|{self.mtime_ns}"


@dataclass
class WatchStats:
    scans: int = 0
    registered: int = 0
    dead_lettered: int = 0
    publish_errors: int = 0
    pending: int = 0
    last_scan_at: float = 0.0


def is_obvious_non_data(relative: Path) -> bool:
    """Hidden files or folders, and files still being written (by naming convention)."""
    if any(part.startswith(".") for part in relative.parts):
        return True
    name = relative.name.lower()
    return name.endswith(PARTIAL_ENDINGS)


class DirectoryWatcher:
    """Registers the files that appear (or change) under ``root``; see the module docstring.

    Args:
        root: the folder to watch (recursively).
        register: called with the stable new file versions; returns their registrations
            (``prepare`` + publishing, see :func:`register_and_publish`). A file whose
            registration raises is retried at the next scan.
        interval_s: pause between scans [s].
        settle_s: how long a file's size and modification time must stay unchanged [s].
        state_path: the state file (default ``root / .beamtwin-watch.json``).
        batch_files: files registered (and remembered) at a time.
        clock_s: a monotonic clock [s].
    """

    def __init__(
        self,
        root: Path,
        *,
        register: Callable[[list[Path]], list[Registration]],
        interval_s: float = 2.0,
        settle_s: float = 5.0,
        state_path: Path | None = None,
        batch_files: int = 50,
        stats: WatchStats | None = None,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if not root.is_dir():
            raise IngestError(f"{root} is not a folder")
        self.root = root.resolve()
        self.register = register
        self.interval_s = interval_s
        self.settle_s = settle_s
        self.batch_files = max(1, batch_files)
        self.state_path = (state_path or self.root / STATE_FILE_NAME).resolve()
        self.stats = stats or WatchStats()
        self._clock_s = clock_s
        #: path -> (version, when it was first seen unchanged)
        self._candidates: dict[str, tuple[FileVersion, float]] = {}
        self._done: dict[str, dict[str, Any]] = self._load_state()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ state file
    def _load_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise IngestError(f"cannot read the watch state {self.state_path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _STATE_FORMAT:
            raise IngestError(f"{self.state_path} is not a beamtwin watch state file")
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}

    def _save_state(self) -> None:
        payload = {"format": _STATE_FORMAT, "root": str(self.root), "files": self._done}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".beamtwin-watch-", dir=self.state_path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(payload, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def registered(self, version: FileVersion) -> bool:
        """Whether this version of the file was registered (or refused) already."""
        return version.key in self._done

    # ------------------------------------------------------------------ scanning
    def _files(self) -> Iterator[FileVersion]:
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:  # a folder removed or unreadable meanwhile
                log.debug("cannot list %s: %s", folder, exc)
                continue
            for entry in entries:
                path = Path(entry.path)
                if is_obvious_non_data(path.relative_to(self.root)):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(path)
                        continue
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                if path.resolve() == self.state_path:
                    continue
                yield FileVersion(str(path), st.st_size, st.st_mtime_ns)

    def stable_new_files(self) -> list[FileVersion]:
        """One scan: the file versions not registered yet whose size and modification time
        have been unchanged for ``settle_s``."""
        now = self._clock_s()
        ready: list[FileVersion] = []
        present: set[str] = set()
        for version in self._files():
            present.add(version.path)
            if self.registered(version):
                self._candidates.pop(version.path, None)
                continue
            seen = self._candidates.get(version.path)
            if seen is None or seen[0] != version:
                self._candidates[version.path] = (version, now)  # new, or changed since
                if self.settle_s > 0:
                    continue
                seen = self._candidates[version.path]
            if now - seen[1] >= self.settle_s:
                ready.append(version)
        for path in set(self._candidates) - present:
            del self._candidates[path]  # deleted before it settled
        self.stats.pending = len(self._candidates) - len(ready)
        return sorted(ready, key=lambda v: v.path)

    def scan_once(self) -> list[Registration]:
        """Scan, register the stable new files, remember them. Returns their registrations.

        Files are registered (and remembered) in batches of ``batch_files``, so a folder that
        already holds many files makes steady progress that a restart keeps."""
        self.stats.scans += 1
        self.stats.last_scan_at = time.time()
        ready = self.stable_new_files()
        out: list[Registration] = []
        for i in range(0, len(ready), self.batch_files):
            if i and self._stop.is_set():
                break
            batch = ready[i : i + self.batch_files]
            try:
                registrations = self.register([Path(v.path) for v in batch])
            except IngestError as exc:
                self.stats.publish_errors += 1
                log.warning(
                    "cannot publish %d file(s); retrying at the next scan: %s", len(batch), exc
                )
                break
            self._remember(batch, registrations)
            out.extend(registrations)
        return out

    def _remember(self, batch: list[FileVersion], registrations: list[Registration]) -> None:
        by_path = {str(r.path): r for r in registrations}
        now = datetime.now(UTC).isoformat()
        for version in batch:
            reg = by_path.get(version.path)
            if reg is None:
                continue
            entry: dict[str, Any] = {"registered_at": now}
            if reg.event is not None:
                entry["dataset_id"] = reg.event.dataset_id
                self.stats.registered += 1
            elif reg.rejection is not None:
                entry["refused"] = reg.rejection.code
                self.stats.dead_lettered += 1
            self._done[version.key] = entry
            self._candidates.pop(version.path, None)
        self._save_state()

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        while not self._stop.is_set():
            self.scan_once()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Registrar:
    """Registers files as ``beamtwin register`` does and publishes them with source ``watch``."""

    bootstrap: str
    topic: str
    deadletter_topic: str
    instrument_id: str | None
    operator: str | None = None
    proposal: str | None = None
    auto_register: bool = False
    known_instruments: set[str] | None = None
    on_new_instruments: Callable[[list[Registration]], None] | None = None
    source: str = "watch"

    def __call__(self, paths: list[Path]) -> list[Registration]:
        registrations = prepare(
            paths,
            instrument_id=self.instrument_id,
            operator=self.operator,
            proposal=self.proposal,
            auto_register=self.auto_register,
            known_instruments=self.known_instruments,
        )
        if self.on_new_instruments is not None:
            self.on_new_instruments(registrations)
        publish_registrations(
            registrations,
            bootstrap=self.bootstrap,
            topic=self.topic,
            deadletter_topic=self.deadletter_topic,
            source=self.source,
            operator=self.operator,
            proposal=self.proposal,
        )
        return registrations
