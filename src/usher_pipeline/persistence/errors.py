"""Errors of the store: each message is one sentence naming the thing and the fix."""

from __future__ import annotations

from usher_pipeline.errors import UsherError


class StoreError(UsherError, RuntimeError):
    """Base class of every error the store raises on purpose."""


class StoreLockTimeout(StoreError):
    """The database stayed locked by another process for longer than the lock timeout."""


class InvalidTableName(StoreError, ValueError):
    """A table name that is not allowed (bad characters, too long, or internal)."""


class UnsupportedFrameType(StoreError, TypeError):
    """An object that is not a polars, pandas or pyarrow table was given to save."""


class InvalidFrame(StoreError, ValueError):
    """A frame the store cannot represent faithfully (no columns, duplicate or object columns)."""


class UnreadableResult(StoreError, TypeError):
    """A query result with a column type that polars cannot hold (INTERVAL, UNION)."""


class StoreFileError(StoreError):
    """The database path is not a usable DuckDB file (a directory, unreadable, corrupt)."""


class StoreDiskFull(StoreError, OSError):
    """The disk filled up during a save; the save was rolled back, earlier commits are intact."""


class TableNotFound(StoreError, KeyError):
    """An operation needs a table that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatabaseNotFound(StoreError, FileNotFoundError):
    """An operation reads a database file that does not exist (yet)."""

    def __str__(self) -> str:  # OSError would prefix an errno
        return str(self.args[0]) if self.args else ""


class ReadOnlyQuery(StoreError, ValueError):
    """A query given to the read-only `PipelineStore.query` would change the database."""


class QueryFailed(StoreError, ValueError):
    """DuckDB refused a query (bad SQL, a missing table or column)."""


class SidecarError(UsherError, ValueError):
    """A provenance sidecar that cannot be read as a JSON object."""


class SidecarNotFound(SidecarError, FileNotFoundError):
    """A provenance sidecar that does not exist (yet)."""


class TransactionAborted(StoreError):
    """A statement failed while it ran inside `transaction()`; DuckDB cannot go on with it."""
