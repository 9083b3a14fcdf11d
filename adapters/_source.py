"""The narrow interface every vendor source implements, and a vendor call with a time limit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar, cast

from adapters._errors import SourceUnavailable
from adapters._mapping import ChannelMap

T = TypeVar("T")

#: One read of a source: vendor name -> value in the mapping's unit; None = no reading.
Reading = Mapping[str, float | None]


class Source(Protocol):
    """What an adapter needs from a vendor's control software, and nothing more.

    ``read`` returns every mapped value at once (one call per poll, so a real instrument is
    asked once, not once per channel). ``subscribe`` is an optional hint: a source whose
    software announces changes calls ``wake`` then, and the adapter reads early; sources
    without events return None. Polling goes on regardless, since events are not promised
    (Nion's ``property_changed_event`` fires on ``SetVal`` only, never on drift).
    """

    #: Short label of the vendor software, for logs (``nion-swift``, ``temscript``, ``pyjem``).
    name: str
    mapping: tuple[ChannelMap, ...]

    def connect(self) -> None:
        """Open the connection; raises on failure (the adapter retries with backoff)."""

    def read(self) -> Reading:
        """Every mapped value, read now."""
        ...

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` when the software announces a change; returns the unsubscriber."""
        ...

    def close(self) -> None:
        """Release the connection (called once per connect, also after a failure)."""


class ReadTimeout(SourceUnavailable, TimeoutError):
    """A vendor call did not return within its time limit (the call is abandoned)."""


class TimedCaller:
    """Runs vendor calls on one helper thread, each with a time limit.

    A call that overruns is abandoned, not killed (Python cannot kill a thread): its helper
    thread is a daemon that exits once the call returns, and the next call gets a fresh
    helper, so a vendor library stuck in one call never stops the adapter.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._helper: _Helper | None = None
        #: Calls abandoned after their time limit.
        self.abandoned = 0

    def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """``fn()`` on the helper thread.

        Raises:
            ReadTimeout: ``fn`` did not return within ``timeout_s`` seconds.
            Exception: whatever ``fn`` raised.
        """
        if self._helper is None:
            self._helper = _Helper(self._name)
        helper = self._helper
        done, box = helper.submit(fn)
        if not done.wait(timeout_s):
            self._helper = None
            helper.retire()
            self.abandoned += 1
            raise ReadTimeout(f"{self._name}: no answer within {timeout_s:g} s")
        if box.error is not None:
            raise box.error
        return cast(T, box.value)

    def close(self) -> None:
        """Stop the helper thread (at once when idle; a stuck call is left to finish)."""
        if self._helper is not None:
            self._helper.retire()
            self._helper = None


class _Box:
    __slots__ = ("error", "value")

    def __init__(self) -> None:
        self.value: object = None
        self.error: BaseException | None = None


class _Helper:
    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._job: tuple[Callable[[], object], _Box, threading.Event] | None = None
        self._retired = False
        self.thread = threading.Thread(target=self._run, name=f"adapter-read-{name}", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[], object]) -> tuple[threading.Event, _Box]:
        done, box = threading.Event(), _Box()
        with self._cond:
            self._job = (fn, box, done)
            self._cond.notify()
        return done, box

    def retire(self) -> None:
        with self._cond:
            self._retired = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._retired:
                    self._cond.wait()
                if self._job is None:
                    return
                fn, box, done = self._job
                self._job = None
            try:
                box.value = fn()
            except BaseException as exc:  # handed to the caller, who decides
                box.error = exc
            done.set()
