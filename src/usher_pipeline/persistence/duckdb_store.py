"""PipelineStore: every intermediate result as a table in one DuckDB file, with checkpoints.

Many processes may each hold a store on the same file: between operations a store holds
neither a DuckDB connection nor a lock. Each operation takes the lock file beside the
database (shared for reads, exclusive for writes), opens DuckDB, works in one transaction and
closes it. `with store.transaction():` groups operations under one lock and one transaction.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.persistence.errors import (
    DatabaseNotFound,
    InvalidFrame,
    InvalidTableName,
    QueryFailed,
    ReadOnlyQuery,
    StoreDiskFull,
    StoreError,
    StoreFileError,
    StoreLockTimeout,
    TableNotFound,
    UnreadableResult,
    UnsupportedFrameType,
)
from usher_pipeline.persistence.fingerprint import (
    fingerprint_and_schema,
    fingerprint_source,
    parquet_source,
    schema_of,
)
from usher_pipeline.persistence.locking import StoreLock

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from usher_pipeline.config.schema import PipelineConfig

CHECKPOINTS = "_checkpoints"
PROVENANCE = "_provenance"
INTERNAL_TABLES = frozenset({CHECKPOINTS, PROVENANCE, "_fetch_batches"})
MAX_NAME_LENGTH = 63
LOAD_MEMORY_MB = 128  # DuckDB's memory limit (MB) from a table load to the close
# DuckDB's row group size. A Parquet file whose row groups are whole multiples of it loads as
# full row groups written during the load; other sizes leave a partial group per file row
# group, which the checkpoint at close must merge and compress again (a third of a 10M-row
# save) into a larger file.
DUCKDB_ROW_GROUP_ROWS = 122_880
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DAMAGED = re.compile(r"Could not read enough bytes|not a valid DuckDB|[Cc]orrupt|checksum")
# What `query` lets through on a connection that could write (a transaction's or a session's):
# the statements a read-only connection would run without changing the database.
_READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL"})
_READ_ONLY_MESSAGE = (
    "query is read-only and this statement would change the database: use SELECT, DESCRIBE, "
    "SHOW or PRAGMA"
)
_DUCKDB_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")

_CHECKPOINTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
    table_name VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    row_count BIGINT,
    description VARCHAR,
    fingerprint VARCHAR,
    config_hash VARCHAR,
    rule VARCHAR,
    sentinel VARCHAR,
    schema_json VARCHAR
)"""

_PROVENANCE_DDL = f"""
CREATE TABLE IF NOT EXISTS {PROVENANCE} (
    run_id VARCHAR,
    output_path VARCHAR,
    created_at TIMESTAMP,
    pipeline_version VARCHAR,
    config_hash VARCHAR,
    metadata VARCHAR,
    PRIMARY KEY (run_id, output_path)
)"""

CHECKPOINT_COLUMNS = (
    "table_name",
    "created_at",
    "row_count",
    "description",
    "fingerprint",
    "config_hash",
    "rule",
    "sentinel",
    "schema_json",
)


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def validate_table_name(name: object, *, internal: bool = False) -> str:
    """Return `name` if it may name a user table, else raise InvalidTableName saying why."""
    if not isinstance(name, str):
        raise InvalidTableName(
            f"table name {name!r} is a {type(name).__name__}, not a string: pass a name such as "
            "'gene_universe'"
        )
    shown = name if len(name) <= 80 else name[:77] + "..."
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidTableName(
            f"table name {shown!r} has {len(name)} characters: use at most {MAX_NAME_LENGTH}"
        )
    if name.startswith("_") and not internal:
        raise InvalidTableName(
            f"table name {name!r} starts with '_', which is reserved for the store's own tables "
            "(_checkpoints, _provenance, ...): choose a name that starts with a letter"
        )
    body = name.lstrip("_") if internal else name
    if not _NAME.fullmatch(body):  # match() would let a trailing newline through
        raise InvalidTableName(
            f"table {shown!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter"
        )
    return name


def _polars_cannot_hold(kind: duckdb.DuckDBPyType) -> bool:
    """Whether a DuckDB type is, or nests, one that polars cannot take from Arrow."""
    if kind.id in ("interval", "union"):
        return True
    if kind.id in ("struct", "list", "map", "array"):
        return any(_polars_cannot_hold(c) for _, c in kind.children if hasattr(c, "id"))
    return False


def relation_frame(relation: duckdb.DuckDBPyRelation | None) -> pl.DataFrame:
    """The rows of `relation` as a polars DataFrame, handed over as an Arrow C stream; an
    empty frame for None (what `conn.sql` returns for a statement).

    `relation.pl()` goes through a pyarrow table, and importing pyarrow costs each process
    that loads a table 60 ms or more; the stream gives the same types without it. Columns of a
    type polars cannot hold (INTERVAL, UNION, also nested) are refused by name.
    """
    import polars as pl

    if relation is None:
        return pl.DataFrame()
    found = [
        f"'{name}' ({kind})"
        for name, kind in zip(relation.columns, relation.types, strict=True)
        if _polars_cannot_hold(kind)
    ]
    if found:
        what = "column {} has a type" if len(found) == 1 else "columns {} have types"
        raise UnreadableResult(
            f"{what.format(', '.join(found))} polars cannot hold: cast in SQL, e.g. to VARCHAR, "
            "or an INTERVAL to seconds with epoch()"
        )
    if len({name.lower() for name in relation.columns}) < len(relation.columns):
        # repeated names (DuckDB ignores case): a subquery renames them, as pl() does
        relation = relation.query("result", "SELECT * FROM result")
    try:
        return pl.DataFrame(relation)
    except pl.exceptions.PanicException as exc:  # a BaseException: would escape as a crash
        raise UnreadableResult(
            f"the result cannot be handed to polars ({str(exc).splitlines()[0][:160]}): cast "
            "the column it names in SQL, e.g. to VARCHAR"
        ) from None


def to_polars(df: object) -> pl.DataFrame:
    """A polars DataFrame from a polars DataFrame or LazyFrame, a pandas DataFrame or a pyarrow
    Table; anything else is refused naming its type."""
    import polars as pl

    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if isinstance(df, pl.DataFrame):
        frame = df
    else:
        module = type(df).__module__.split(".", 1)[0]
        kind = type(df).__name__
        if module == "pandas" and kind == "DataFrame":
            columns = [str(c) for c in df.columns]  # type: ignore[attr-defined]
            duplicates = sorted({c for c in columns if columns.count(c) > 1})
            if duplicates:
                raise InvalidFrame(
                    f"the DataFrame has duplicate column names {duplicates}: rename them before "
                    "saving"
                )
            try:
                frame = pl.from_pandas(df)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - pandas/arrow raise many types here
                raise InvalidFrame(
                    f"the pandas DataFrame cannot be stored ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160]}): give its columns plain types"
                ) from None
        elif module == "pyarrow" and kind == "Table":
            frame = pl.from_arrow(df)  # type: ignore[assignment]
        else:
            raise UnsupportedFrameType(
                f"cannot save an object of type {type(df).__module__}.{kind}: pass a polars "
                "DataFrame or LazyFrame, a pandas DataFrame or a pyarrow Table"
            )
    if frame.width == 0:
        raise InvalidFrame("the DataFrame has no columns: a table needs at least one column")
    objects = [name for name, dtype in frame.schema.items() if dtype == pl.Object]
    if objects:
        raise InvalidFrame(
            f"columns {objects} hold Python objects, which a table cannot store: convert them to "
            "strings, numbers, lists or structs first"
        )
    if any(not name or "\x00" in name for name in frame.columns):
        raise InvalidFrame(
            "the DataFrame has a column whose name is empty or holds a NUL character: name "
            "every column with printable text"
        )
    folded = [name.casefold() for name in frame.columns]
    clashes = sorted(n for n in frame.columns if folded.count(n.casefold()) > 1)
    if clashes:
        raise InvalidFrame(
            f"columns {clashes} differ only in case, and DuckDB column names ignore case: "
            "rename them before saving"
        )
    lossy = {name: str(dtype) for name, dtype in frame.schema.items() if _unstorable(dtype)}
    if lossy:
        raise InvalidFrame(
            f"columns {lossy} have types a table would silently change (durations, 128-bit "
            "integers): convert durations to numbers of seconds and 128-bit integers to Int64 "
            "or Decimal before saving"
        )
    return frame


def _unstorable(dtype: Any) -> bool:
    """True for a polars type that does not survive Parquet and DuckDB unchanged in meaning
    (Duration loads back as a bare integer, 128-bit integers as bytes), also when nested."""
    import polars as pl

    if isinstance(dtype, pl.List | pl.Array):
        return _unstorable(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_unstorable(field.dtype) for field in dtype.fields)
    return dtype.base_type() in (pl.Duration, pl.Int128, pl.UInt128)


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write `frame` as Parquet in the store's layout (one file, statistics, zstd, row groups
    of DuckDB's size)."""
    try:
        frame.write_parquet(
            path,
            compression="zstd",
            compression_level=1,
            statistics=True,
            row_group_size=DUCKDB_ROW_GROUP_ROWS,
        )
    except Exception as exc:
        if isinstance(exc, OSError) and not is_disk_full(exc):
            reason = exc.strerror or str(exc).split(" (os error", 1)[0]
            raise StoreFileError(
                f"cannot write {path} ({reason}): make {Path(path).parent} "
                "writable, or point results_dir/duckdb_path at a writable folder"
            ) from None
        if not is_disk_full(exc):
            raise
        if Path(path).exists():
            Path(path).unlink()
        raise StoreDiskFull(
            f"no space left on the device to write {path}: free space there (or move "
            "results_dir/duckdb_path to a larger disk) and rerun; committed tables are unchanged"
        ) from None


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that says the device has no space left (OS, polars or DuckDB)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc)


def retype_null_columns(conn: duckdb.DuckDBPyConnection, table: str, source: str) -> None:
    """Give each column of `table` typed NULL (saved from a batch without values) the type the
    same column has in `source`, before appending `source`; its values are all NULL, so the
    change is lossless, and later batches with values fit. `table` is a quoted identifier."""
    null = '"NULL"'
    current = dict(r[:2] for r in conn.sql(f"DESCRIBE {table}").fetchall())
    for name, new_type in (r[:2] for r in conn.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()):
        old_type = current.get(name)
        if old_type and null in old_type and null not in new_type and old_type != new_type:
            conn.execute(
                f"ALTER TABLE {table} ALTER COLUMN {quote_identifier(name)} TYPE {new_type}"
            )


class PipelineStore:
    """Tables and their checkpoints in one DuckDB file shared by many processes."""

    def __init__(
        self,
        db_path: str | Path,
        lock_timeout: float = 120.0,
        config_hash: str | None = None,
        load_memory_mb: int | None = LOAD_MEMORY_MB,
    ) -> None:
        self.db_path = Path(db_path)
        self.load_memory_mb = load_memory_mb
        if self.db_path.is_dir():
            raise StoreFileError(
                f"database path {self.db_path} is a directory: point duckdb_path at a file "
                f"inside it, e.g. {self.db_path}/pipeline.duckdb"
            )
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreFileError(
                f"cannot create the folder {self.db_path.parent} of the database "
                f"({exc.strerror}): point duckdb_path at a writable folder"
            ) from None
        self.lock_timeout = float(lock_timeout)
        self.config_hash = config_hash
        self._lock = StoreLock(self.db_path, self.lock_timeout)
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._conn_writable = False
        self._held: duckdb.DuckDBPyConnection | None = None  # see session()
        self._capped: duckdb.DuckDBPyConnection | None = None  # memory capped for loads
        self._closed = False
        if not self.db_path.exists():  # create the file with `_checkpoints`, then let go
            with self.transaction():
                pass

    # -- construction and lifetime -------------------------------------------------------

    @classmethod
    def from_config(cls, config: PipelineConfig) -> PipelineStore:
        """A store on `config.duckdb_path` with the configured lock timeout and config hash."""
        return cls(
            config.duckdb_path,
            lock_timeout=config.store.lock_timeout_seconds,
            config_hash=config.config_hash(),
            load_memory_mb=config.store.load_memory_mb,
        )

    def close(self) -> None:
        """Mark the store closed; it holds no connection between operations."""
        self._closed = True

    def __enter__(self) -> PipelineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PipelineStore({str(self.db_path)!r})"

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def connect(self, write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection under the store's lock (exclusive when `write`), closed after.

        Inside `transaction()` the transaction's connection is reused.
        """
        if self._closed:
            raise StoreError(f"store {self.db_path} is closed: open a new PipelineStore")
        if self._conn is not None:
            if write and not self._conn_writable:
                raise StoreError(
                    f"cannot write to {self.db_path} inside a read-only transaction: use "
                    "store.transaction() without read_only"
                )
            yield self._conn
            return
        if self._held is not None:
            yield self._held
            return
        import duckdb

        with self._lock.hold(exclusive=write) as deadline:
            conn = self._open(read_only=not write, deadline=deadline)
            try:
                yield conn
            except duckdb.IOException as exc:  # a damaged file often opens, then fails to read
                if _DAMAGED.search(str(exc)):
                    raise self._file_error(exc) from None
                raise
            finally:
                conn.close()

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[PipelineStore]:
        """Run several operations under one lock and one transaction: all commit or none."""
        if self._conn is not None:
            yield self  # nested: part of the outer transaction
            return
        with self.connect(write=not read_only) as conn:
            self._conn, self._conn_writable = conn, not read_only
            try:
                conn.execute("BEGIN TRANSACTION")
                if not read_only:
                    self._ensure_internal(conn)
                yield self
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
                if is_disk_full(exc) and not isinstance(exc, StoreDiskFull):
                    raise StoreDiskFull(
                        f"no space left on the device of {self.db_path}: free space there (or "
                        "move duckdb_path to a larger disk) and rerun; the transaction was "
                        "rolled back and committed tables are unchanged"
                    ) from None
                raise
            finally:
                self._conn, self._conn_writable = None, False

    @contextmanager
    def session(self) -> Iterator[PipelineStore]:
        """Hold the write lock and one connection for many operations, each committed on its own.

        Unlike `transaction()`, work done before a failure stays committed; unlike separate
        operations, the database is opened (and checkpointed at close) once.
        """
        if self._conn is not None or self._held is not None:
            raise StoreError(
                f"a session on {self.db_path} cannot start inside a transaction or another "
                "session: open it first"
            )
        with self.connect(write=True) as conn:
            self._held = conn
            try:
                yield self
            finally:
                self._held = None

    def _open(self, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        import duckdb

        started = time.monotonic()
        delay = 0.005
        noted = read_only  # a writer holding the lock file says whom it waits for, once
        while True:
            try:
                conn = duckdb.connect(str(self.db_path), read_only=read_only)
                # time-zone-aware columns load back in UTC, whatever the host's zone
                conn.execute("SET TimeZone = 'UTC'")
                self._lock.note_opened()  # whoever held the file outside the lock has let go
                return conn
            except duckdb.IOException as exc:
                message = str(exc)
                holder = _DUCKDB_HOLDER.search(message)
                if holder is None:
                    raise self._file_error(exc) from None
                who = f"PID {holder.group(2)} ({os.path.basename(holder.group(1))})"
                if not noted:
                    self._lock.note_waiting_for(who)
                    noted = True
                now = time.monotonic()
                if now >= deadline:
                    raise self._lock.timeout_error(now - started, who) from None
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 0.1)
            except duckdb.Error as exc:
                raise self._file_error(exc) from None

    def _file_error(self, exc: Exception) -> StoreFileError:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreFileError(
            f"cannot open {self.db_path} as a DuckDB database ({first[:200]}): move the file "
            "away and rebuild it with `usher-pipeline repair`, or point duckdb_path elsewhere"
        )

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writable connection inside one transaction (the caller's, or a new one)."""
        if self._conn is not None:
            with self.connect(write=True) as conn:
                yield conn
            return
        with self.transaction():
            assert self._conn is not None
            yield self._conn

    @contextmanager
    def _read(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A read connection, or None when the database file does not exist yet."""
        if self._conn is None and not self.db_path.exists():
            yield None
            return
        with self.connect(write=False) as conn:
            yield conn

    @staticmethod
    def _ensure_internal(conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(_CHECKPOINTS_DDL)
        conn.execute(_PROVENANCE_DDL)

    @staticmethod
    def _table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
        row = conn.sql(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'",
            params=[name],
        ).fetchall()[0]
        return bool(row and row[0])

    # -- writing ---------------------------------------------------------------------------

    def save_dataframe(
        self,
        df: object,
        table_name: str,
        description: str = "",
        replace: bool = True,
        *,
        rule: str | None = None,
    ) -> dict[str, Any]:
        """Store `df` as `table_name` and record its checkpoint, in one transaction.

        `replace=False` appends (creating the table if absent); the checkpoint then records
        the table's true total. Returns the checkpoint row.
        """
        validate_table_name(table_name)
        frame = to_polars(df)
        staging = self.db_path.with_name(
            f".{self.db_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.ingest.parquet"
        )
        try:
            write_parquet(frame, staging)
            return self.ingest_parquet(
                staging, table_name, description=description, replace=replace, rule=rule
            )
        finally:
            if staging.exists():  # unlink of a missing file fails on a read-only disk
                staging.unlink()

    def ingest_parquet(
        self,
        parquet_path: str | Path,
        table_name: str,
        description: str = "",
        replace: bool = True,
        *,
        rule: str | None = None,
        sentinel: str | Path | None = None,
        fingerprint: str | None = None,
        row_count: int | None = None,
        created_at: datetime | None = None,
        record_checkpoint: bool = True,
    ) -> dict[str, Any]:
        """Load a Parquet file into `table_name` and record its checkpoint, in one transaction.

        A `fingerprint` and `row_count` computed beforehand from the same file (outside the
        lock) are trusted for a replace; otherwise they are computed from the new table in
        the same connection (one scan of data DuckDB already holds, no second database).
        With `record_checkpoint=False` the checkpoint row is only returned: the caller
        records it with `record_checkpoints` in the same transaction (one statement for many
        loads).
        """
        validate_table_name(table_name)
        source = parquet_source(parquet_path)
        quoted = quote_identifier(table_name)
        with self._write() as conn:
            if self.load_memory_mb and conn is not self._capped:
                # A load streams: a small buffer pool, kept until the connection closes and
                # checkpoints, holds a job near its frame's size (DuckDB's default is 80% of
                # the node's RAM, whatever the job was granted) for a few per cent of the
                # load's speed.
                conn.execute(f"SET memory_limit = '{int(self.load_memory_mb)}MB'")
                self._capped = conn
            if replace or not self._table_exists(conn, table_name):
                conn.execute(f"CREATE OR REPLACE TABLE {quoted} AS SELECT * FROM {source}")
            else:
                try:
                    retype_null_columns(conn, quoted, source)
                    conn.execute(f"INSERT INTO {quoted} BY NAME SELECT * FROM {source}")
                except Exception as exc:  # noqa: BLE001 - DuckDB raises several binder errors
                    first = str(exc).splitlines()[0][:200]
                    raise InvalidFrame(
                        f"cannot append to table '{table_name}': the new rows do not match its "
                        f"columns ({first}); save with replace=True to change the schema"
                    ) from None
            if not replace or fingerprint is None or row_count is None:
                # an append, including the first one, records the table's total
                fingerprint, row_count, schema = fingerprint_and_schema(conn, quoted)
            else:
                schema = schema_of(conn, quoted)
            row = {
                "table_name": table_name,
                "created_at": created_at or datetime.now(UTC).replace(tzinfo=None),
                "row_count": int(row_count or 0),
                "description": description,
                "fingerprint": fingerprint,
                "config_hash": self.config_hash,
                "rule": rule,
                "sentinel": str(sentinel) if sentinel is not None else None,
                "schema_json": json.dumps(schema),
            }
            if record_checkpoint:
                self.record_checkpoints([row])
        return row

    def record_checkpoints(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace checkpoint rows (as `ingest_parquet` returns them): one delete
        and one insert, in the caller's transaction or a new one (a third cheaper than
        INSERT OR REPLACE, which every job pays)."""
        latest = {row["table_name"]: row for row in rows}  # a table given twice keeps its last
        if not latest:
            return
        columns = [[row[name] for row in latest.values()] for name in CHECKPOINT_COLUMNS]
        types = {"created_at": "TIMESTAMP[]", "row_count": "BIGINT[]"}
        selects = ", ".join(
            f"unnest(?::{types.get(name, 'VARCHAR[]')})" for name in CHECKPOINT_COLUMNS
        )
        with self._write() as conn:
            conn.execute(
                f"DELETE FROM {CHECKPOINTS} WHERE list_contains(?::VARCHAR[], table_name)",
                [list(latest)],
            )
            conn.execute(f"INSERT INTO {CHECKPOINTS} SELECT {selects}", columns)

    def delete_checkpoint(self, table_name: str) -> bool:
        """Drop a table and its checkpoint together; False when neither existed."""
        validate_table_name(table_name)
        with self._write() as conn:
            existed = self._table_exists(conn, table_name)
            conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(table_name)}")
            deleted = conn.sql(
                f"DELETE FROM {CHECKPOINTS} WHERE table_name = ? RETURNING table_name",
                params=[table_name],
            ).fetchall()
        return existed or bool(deleted)

    # -- reading ---------------------------------------------------------------------------

    def table_exists(self, table_name: str) -> bool:
        """Whether the database holds `table_name` (the store's own tables, such as
        `_checkpoints`, included); False when the database file does not exist."""
        validate_table_name(table_name, internal=True)
        with self._read() as conn:
            return conn is not None and self._table_exists(conn, table_name)

    def row_count(self, table_name: str) -> int | None:
        """The number of rows of `table_name` (internal tables allowed), or None when absent."""
        validate_table_name(table_name, internal=True)
        with self._read() as conn:
            if conn is None or not self._table_exists(conn, table_name):
                return None
            row = conn.sql(f"SELECT count(*) FROM {quote_identifier(table_name)}").fetchall()[0]
            return int(row[0])

    def fingerprint_parquet(self, path: str | Path) -> tuple[str, int]:
        """(fingerprint, row count) of a Parquet file: in the store's connection inside
        `transaction()` or `session()` (no second database), else in an in-memory DuckDB
        (no lock)."""
        if self._conn is not None or self._held is not None:
            with self.connect(write=False) as conn:
                return fingerprint_source(conn, parquet_source(path))
        import duckdb

        with duckdb.connect() as conn:
            return fingerprint_source(conn, parquet_source(path))

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run read-only SQL and return its result as a polars DataFrame.

        Outside a transaction it runs on a read-only connection under the shared lock, so
        queries never block one another; inside one, statements that could write are refused
        before they run. Raises ReadOnlyQuery for a statement that would change the database
        and QueryFailed for any other error DuckDB reports.
        """
        import duckdb

        shared = self._conn is not None or self._held is not None
        if not shared and not self.db_path.exists():
            raise DatabaseNotFound(
                f"database {self.db_path} does not exist: run the workflow or pass --db FILE"
            )
        try:
            with self.connect(write=False) as conn:
                if shared:
                    kinds = {s.type.name for s in conn.extract_statements(sql)}
                    if not kinds <= _READ_STATEMENTS:
                        raise ReadOnlyQuery(_READ_ONLY_MESSAGE)
                return relation_frame(conn.sql(sql, params=params))
        except duckdb.Error as exc:
            first = " ".join(str(exc).split())[:200]
            if "read-only" in first:
                raise ReadOnlyQuery(_READ_ONLY_MESSAGE) from None
            raise QueryFailed(f"query failed ({first}): fix the SQL") from None

    def has_checkpoint(self, table_name: str) -> bool:
        """True when `table_name` was committed (its checkpoint row exists)."""
        validate_table_name(table_name)
        with self._read() as conn:
            if conn is None or not self._table_exists(conn, CHECKPOINTS):
                return False
            row = conn.sql(
                f"SELECT count(*) FROM {CHECKPOINTS} WHERE table_name = ?", params=[table_name]
            ).fetchall()[0]
            return bool(row and row[0])

    def get_checkpoint(self, table_name: str) -> dict[str, Any] | None:
        """The checkpoint row of `table_name`, or None."""
        validate_table_name(table_name)
        rows = [r for r in self.list_checkpoints() if r["table_name"] == table_name]
        return rows[0] if rows else None

    def list_checkpoints(self) -> list[dict[str, Any]]:
        """Every checkpoint row as a dict, ordered by table name."""
        with self._read() as conn:
            if conn is None or not self._table_exists(conn, CHECKPOINTS):
                return []
            cursor = conn.sql(
                f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM {CHECKPOINTS} ORDER BY table_name"
            )
            return [dict(zip(CHECKPOINT_COLUMNS, r, strict=True)) for r in cursor.fetchall()]

    def list_tables(self) -> list[str]:
        """Names of the user tables in the database (internal tables excluded)."""
        with self._read() as conn:
            if conn is None:
                return []
            rows = conn.sql(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                "AND NOT starts_with(table_name, '_') ORDER BY table_name"
            ).fetchall()
            return [r[0] for r in rows]

    def load_dataframe(self, table_name: str, as_polars: bool = True) -> Any:
        """The table as a polars (or pandas) DataFrame, or None when it does not exist."""
        validate_table_name(table_name)
        with self._read() as conn:
            if conn is None or not self._table_exists(conn, table_name):
                return None
            relation = conn.sql(f"SELECT * FROM {quote_identifier(table_name)}")
            return relation_frame(relation) if as_polars else relation.df()

    def fingerprint(self, table_name: str) -> str | None:
        """The content fingerprint of the table as stored now, or None when it does not exist."""
        validate_table_name(table_name)
        with self._read() as conn:
            if conn is None or not self._table_exists(conn, table_name):
                return None
            return fingerprint_source(conn, quote_identifier(table_name))[0]

    def export_parquet(self, table_name: str, output_path: str | Path) -> Path:
        """Write the table to `output_path` as Parquet, through a temporary name and a rename."""
        validate_table_name(table_name)
        from usher_pipeline._io import atomic_path

        target = Path(output_path)
        with self._read() as conn:
            if conn is None or not self._table_exists(conn, table_name):
                raise TableNotFound(
                    f"table '{table_name}' is not in {self.db_path}: run the rule that makes it "
                    "before exporting"
                )
            with atomic_path(target) as tmp:
                conn.execute(
                    f"COPY (SELECT * FROM {quote_identifier(table_name)}) TO "
                    f"'{str(tmp).replace(chr(39), chr(39) * 2)}' "
                    "(FORMAT parquet, COMPRESSION zstd)"
                )
        return target

    def execute_query(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        """Run SQL and return the result as a polars DataFrame (empty for statements).

        Queries run on a read-only connection under a shared lock, so they never block one
        another; a statement that writes is retried once under the exclusive lock.
        """
        import duckdb

        def run(conn: duckdb.DuckDBPyConnection) -> pl.DataFrame:
            return relation_frame(conn.sql(query, params=params))

        if self._conn is not None:
            return run(self._conn)
        if self.db_path.exists():
            try:
                with self.connect(write=False) as conn:
                    return run(conn)
            except duckdb.Error as exc:
                if "read-only" not in str(exc):
                    raise
        with self._write() as conn:
            return run(conn)

    def record_provenance(
        self,
        run_id: str,
        output_path: str,
        metadata: dict[str, Any],
    ) -> None:
        """Insert or update one `_provenance` row (used by ProvenanceTracker and the merge)."""
        created = metadata.get("created_at")
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO {PROVENANCE} VALUES (?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    output_path,
                    created,
                    metadata.get("pipeline_version"),
                    metadata.get("config_hash"),
                    json.dumps(metadata, sort_keys=True, default=str),
                ],
            )

    def record_provenance_many(
        self, run_id: str, rows: Sequence[tuple[str, dict[str, Any]]]
    ) -> int:
        """Insert or update the `_provenance` rows of one run, given as (output path, metadata),
        in one statement: the merge writes thousands, and one INSERT each gets slower as the
        table grows. A path given twice keeps its last metadata. Returns the rows written."""
        latest = dict(rows)
        if not latest:
            return 0
        columns: list[list[Any]] = [[], [], [], [], []]
        for output_path, metadata in latest.items():
            columns[0].append(output_path)
            columns[1].append(metadata.get("created_at"))
            columns[2].append(metadata.get("pipeline_version"))
            columns[3].append(metadata.get("config_hash"))
            columns[4].append(json.dumps(metadata, sort_keys=True, default=str))
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO {PROVENANCE} SELECT ?::VARCHAR, unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
                "unnest(?::VARCHAR[])",
                [run_id, *columns],
            )
        return len(latest)


__all__ = [
    "CHECKPOINTS",
    "PROVENANCE",
    "PipelineStore",
    "StoreError",
    "StoreLockTimeout",
    "quote_identifier",
    "retype_null_columns",
    "to_polars",
    "validate_table_name",
]
