"""The exception tree of the provenance store: one root, ``StoreError``."""

from __future__ import annotations

UPGRADE_COMMAND = "beamtwin db upgrade"


class StoreError(Exception):
    """Root of every error the provenance store raises on purpose."""


class SchemaOutdatedError(StoreError):
    """The database's schema revision is not the one this code needs.

    Attributes:
        current: the database's Alembic revision, ``None`` for an empty database.
        required: the revision this code needs (the newest migration, "head").
        database: the database URL (password masked), for the message.
    """

    def __init__(self, current: str | None, required: str, *, database: str | None = None):
        self.current = current
        self.required = required
        self.database = database
        super().__init__(self._message())

    def _message(self) -> str:
        target = f" --database-url '{self.database}'" if self.database else " --database-url URL"
        if self.current is None:
            state = "has no beamtwin schema (empty database)"
        else:
            state = f"is at schema revision {self.current}"
        return (
            f"the database {state}; this version of beamtwin needs revision {self.required}. "
            f"Run `{UPGRADE_COMMAND}` (with BEAMTWIN_DATABASE_URL set), or "
            f"`{UPGRADE_COMMAND}{target}`."
        )


class SchemaTooNewError(SchemaOutdatedError):
    """The database was migrated by a newer beamtwin: its revision is unknown to this code.

    The upgrade command cannot help here; beamtwin itself has to be upgraded.
    """

    def _message(self) -> str:
        return (
            f"the database is at schema revision {self.current}, which this version of beamtwin "
            f"does not know (it needs {self.required}): a newer beamtwin migrated it. "
            "Upgrade beamtwin; do not downgrade a database that holds telemetry."
        )


class InstrumentNotFound(StoreError, KeyError):
    """No instrument with this persistent id is registered."""

    def __init__(self, instrument_id: str):
        self.instrument_id = instrument_id
        super().__init__(instrument_id)

    def __str__(self) -> str:
        return (
            f"instrument {self.instrument_id!r} is not registered "
            "(register it with `beamtwin instruments register`)"
        )


class ChannelNotFound(StoreError, KeyError):
    """A channel name that the instrument does not have."""

    def __init__(self, instrument_id: str, names: list[str]):
        self.instrument_id = instrument_id
        self.names = names
        super().__init__(names[0] if len(names) == 1 else names)

    def __str__(self) -> str:
        return f"instrument {self.instrument_id!r} has no channel(s) {', '.join(self.names)}"


class ChannelConflict(StoreError, ValueError):
    """A channel name re-declared with a different quantity kind, subsystem or canonical unit.

    A different source unit, limits or calibration is not a conflict: it makes a new channel
    version. A different quantity kind would make the stored values of one channel mean two
    different things, so it is refused.
    """


class CursorConflict(StoreError):
    """The twin cursor is not where the writer expected it: another twin worker moved it.

    The writer's transaction must be rolled back and the window recomputed from the stored
    cursor; nothing it computed may be kept.
    """

    def __init__(self, instrument_id: str, expected: str | None, found: str | None):
        self.instrument_id = instrument_id
        self.expected = expected
        self.found = found
        super().__init__(
            f"the twin cursor of {instrument_id!r} is at {found or 'nothing'}, not at "
            f"{expected or 'nothing'} as expected: another twin worker processed this window"
        )


class SnapshotConflict(StoreError):
    """A correction made against a snapshot version that is no longer the current one."""

    def __init__(self, dataset_id: str, expected: int, found: int):
        self.dataset_id = dataset_id
        self.expected = expected
        self.found = found
        super().__init__(
            f"the snapshot of {dataset_id} is at version {found}, not {expected}: it changed "
            "since it was read; read it again and correct that version"
        )


class CalibrationConflict(StoreError, ValueError):
    """A calibration version stored again with a different body or valid-from time.

    Calibration versions are immutable records: a changed calibration needs a new version.
    """


class ApiUserNotFound(StoreError, KeyError):
    """No REST API user with this name."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"no API user named {self.name!r} (add one with `beamtwin users add`)"


class ApiUserConflict(StoreError, ValueError):
    """An API user name that is already taken."""


class ApiTokenNotFound(StoreError, KeyError):
    """No API token with this id."""

    def __init__(self, token_id: int):
        self.token_id = token_id
        super().__init__(token_id)

    def __str__(self) -> str:
        return f"no API token with id {self.token_id}"


class TooManySamples(StoreError, ValueError):
    """A raw-samples-only range read in which a channel has more samples than allowed."""

    def __init__(self, instrument_id: str, max_points: int):
        self.instrument_id = instrument_id
        self.max_points = max_points
        super().__init__(
            f"a channel of {instrument_id!r} has more than {max_points} raw samples in the range"
        )


class SampleValueOutOfRange(StoreError, ValueError):
    """A sample value the rollups cannot hold: NaN, infinite, or of a magnitude beyond the
    store's limit (``MAX_SAMPLE_MAGNITUDE``)."""

    def __init__(self, value: float, index: int, limit: float):
        self.value = value
        self.index = index
        self.limit = limit
        super().__init__(
            f"sample {index} of the batch has the value {value!r}; the store holds finite "
            f"values of magnitude up to {limit:g}"
        )


class DatasetNotFound(StoreError, KeyError):
    """No dataset with this id is registered."""

    def __init__(self, dataset_id: str):
        self.dataset_id = dataset_id
        super().__init__(dataset_id)

    def __str__(self) -> str:
        return f"dataset {self.dataset_id!r} is not registered"


class InvalidArgument(StoreError, ValueError):
    """An argument a store function refuses: a naive time, an end not after its start, a
    limit, bucket, span or threshold that is not positive, an unknown role or flag kind, a
    cursor that would move back."""


class InvalidRecord(InvalidArgument):
    """A record the store refuses: a dataset event or snapshot with a missing or malformed
    field, an unknown verdict or source, a correction without a reason; a malformed instrument
    id, channel declaration, sample batch, flag, estimate or calibration; a provenance graph
    that PROV cannot express."""


class WrongType(StoreError, TypeError):
    """A value of the wrong type given to the store: one string where a sequence of names
    belongs, a list where a numpy array belongs, a date that is not a ``datetime``."""
