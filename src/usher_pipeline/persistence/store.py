"""PipelineStore: every intermediate result as a table in one DuckDB file, with checkpoints.

Many processes may each hold a store on the same file: between operations a store holds
neither a DuckDB connection nor a lock. Each operation takes the lock file beside the
database (shared for reads, exclusive for writes), opens DuckDB, works in one transaction and
closes it. `with store.transaction():` groups operations under one lock and one transaction.
The connections, transactions and sessions are in `connection.StoreConnection`; this module
holds what the store does with tables, checkpoints and provenance rows. It runs past 450
lines because it is the one public face of the store: every operation a user calls is a
method here, and the parts it uses (frames, SQL, catalog, appends) live in their own modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from usher_pipeline._io import remove_stale_temps, temp_path_for
from usher_pipeline.persistence.appends import prepare_append
from usher_pipeline.persistence.catalog import (
    CHECKPOINT_COLUMNS,
    CHECKPOINT_TYPES,
    CHECKPOINTS,
    PROVENANCE,
    Checkpoint,
    unnest_columns,
)
from usher_pipeline.persistence.connection import NO_EXTENSIONS, StoreConnection
from usher_pipeline.persistence.errors import (
    DatabaseNotFound,
    QueryFailed,
    ReadOnlyQuery,
    TableNotFound,
)
from usher_pipeline.persistence.fingerprint import (
    fingerprint_and_schema,
    fingerprint_source,
    schema_of,
)
from usher_pipeline.persistence.frames import (
    load_memory_mb,
    out_of_memory_named,
    relation_frame,
    to_polars,
    write_parquet,
)
from usher_pipeline.persistence.sql import (
    parquet_source,
    quote_identifier,
    table_in,
    validate_table_name,
)
from usher_pipeline.settings import DEFAULT_LOCK_TIMEOUT_S, LOAD_MEMORY_MB

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from usher_pipeline.config.schema import PipelineConfig

# What `query` lets through on a connection that could write (a transaction's or a session's):
# the statements a read-only connection would run without changing the database.
_READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL"})
_READ_ONLY_MESSAGE = (
    "query is read-only and this statement would change the database: use SELECT, DESCRIBE, "
    "SHOW or PRAGMA"
)
# What `query` refuses on any connection: statements that reach files, extensions or the
# network outside the database (INSTALL parses as LOAD; an unknown kind is refused too).
_OUTSIDE_STATEMENTS = frozenset({"COPY", "EXPORT", "LOAD", "ATTACH", "DETACH", "UNKNOWN"})
_OUTSIDE_MESSAGE = (
    "query reads the database only and refuses COPY, EXPORT, INSTALL, LOAD and ATTACH, which "
    "reach other files, extensions or the network: use SELECT, and export_parquet to write a "
    "table to a file"
)


def _statement_kinds(conn: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
    """The kinds of the statements in `sql` ('UNKNOWN' for one the Python API cannot name)."""
    kinds = set()
    try:
        for statement in conn.extract_statements(sql):
            kinds.add(statement.type.name)
    except ValueError:  # a kind newer than the Python API's enum
        kinds.add("UNKNOWN")
    return kinds


class PipelineStore(StoreConnection):
    """Tables and their checkpoints in one DuckDB file shared by many processes."""

    def __init__(
        self,
        db_path: str | Path,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        config_hash: str | None = None,
        load_memory_mb: int | None = LOAD_MEMORY_MB,
    ) -> None:
        super().__init__(db_path, lock_timeout)
        self.config_hash = config_hash
        self.load_memory_mb = load_memory_mb
        self._capped: duckdb.DuckDBPyConnection | None = None  # memory capped for loads
        self._capped_mb = 0  # the limit set on it (MB)
        if not self.db_path.exists():  # create the file with `_checkpoints`, then let go
            with self.transaction():
                pass

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: PipelineConfig) -> PipelineStore:
        """A store on `config.duckdb_path` with the configured lock timeout and config hash."""
        return cls(
            config.duckdb_path,
            lock_timeout=config.store.lock_timeout_seconds,
            config_hash=config.config_hash(),
            load_memory_mb=config.store.load_memory_mb,
        )

    def __repr__(self) -> str:
        return f"PipelineStore({str(self.db_path)!r})"

    # -- writing ---------------------------------------------------------------------------

    def save_dataframe(
        self,
        df: object,
        table_name: str,
        description: str = "",
        replace: bool = True,
        *,
        rule: str | None = None,
    ) -> Checkpoint:
        """Store `df` as `table_name` and record its checkpoint, in one transaction.

        `replace=False` appends (creating the table if absent); the checkpoint then records
        the table's true total. An append must have the table's columns and types, or
        widenings that keep every value (`persistence.appends`), else InvalidFrame is raised
        and nothing changes. Returns the checkpoint row.
        """
        validate_table_name(table_name)
        frame = to_polars(df)
        remove_stale_temps(self.db_path)  # staging files of writers killed mid-save
        staging = temp_path_for(self.db_path, ".ingest.parquet")
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
        config_hash: str | None = None,
    ) -> Checkpoint:
        """Load a Parquet file into `table_name` and record its checkpoint, in one transaction.

        A `fingerprint` and `row_count` computed beforehand from the same file (outside the
        lock) are trusted for a replace; otherwise they are computed from the new table in
        the same connection (one scan of data DuckDB already holds, no second database).
        With `record_checkpoint=False` the checkpoint row is only returned: the caller
        records it with `record_checkpoints` in the same transaction (one statement for many
        loads). `config_hash` overrides the store's for this checkpoint.
        """
        validate_table_name(table_name)
        source = parquet_source(parquet_path)
        quoted = quote_identifier(table_name)
        limit: list[int] = []  # the memory limit of this load, for its out-of-memory error
        with out_of_memory_named(table_name, limit), self._write() as conn:
            if self.load_memory_mb:
                # A load streams: a small buffer pool, kept until the connection closes and
                # checkpoints, holds a job near its frame's size (DuckDB's default is 80% of
                # the node's RAM, whatever the job was granted) at a small cost in the
                # load's speed. Wide files need more per row group: the limit grows to what
                # the file's columns need, and never shrinks on the same connection.
                limit.append(load_memory_mb(conn, parquet_path, self.load_memory_mb))
                if conn is not self._capped or limit[-1] > self._capped_mb:
                    conn.execute(f"SET memory_limit = '{limit[-1]}MB'")
                    self._capped, self._capped_mb = conn, limit[-1]
            if replace or not table_in(conn, table_name):
                conn.execute(f"CREATE OR REPLACE TABLE {quoted} AS SELECT * FROM {source}")
            else:
                # the same columns and types, or widenings that keep every value: checked
                # before anything is written (appends.py states the rule)
                prepare_append(conn, table_name, source)
                conn.execute(f"INSERT INTO {quoted} BY NAME SELECT * FROM {source}")
            if not replace or fingerprint is None or row_count is None:
                # an append, including the first one, records the table's total
                fingerprint, row_count, schema = fingerprint_and_schema(conn, quoted)
            else:
                schema = schema_of(conn, quoted)
            row = Checkpoint(
                table_name=table_name,
                created_at=created_at or datetime.now(UTC).replace(tzinfo=None),
                row_count=int(row_count or 0),
                description=description,
                fingerprint=fingerprint,
                config_hash=self.config_hash if config_hash is None else config_hash,
                rule=rule,
                sentinel=str(sentinel) if sentinel is not None else None,
                schema_json=json.dumps(schema),
            )
            if record_checkpoint:
                self.record_checkpoints([row])
        return row

    def record_checkpoints(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace checkpoint rows (as `ingest_parquet` returns them): one delete
        and one insert, in the caller's transaction or a new one (cheaper than INSERT OR
        REPLACE, which every job pays)."""
        latest = {row["table_name"]: row for row in rows}  # a table given twice keeps its last
        if not latest:
            return
        columns = [[row[name] for row in latest.values()] for name in CHECKPOINT_COLUMNS]
        selects = unnest_columns(CHECKPOINT_TYPES)
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
            existed = table_in(conn, table_name)
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
            return conn is not None and table_in(conn, table_name)

    def row_count(self, table_name: str) -> int | None:
        """The number of rows of `table_name` (internal tables allowed), or None when absent."""
        validate_table_name(table_name, internal=True)
        with self._read() as conn:
            if conn is None or not table_in(conn, table_name):
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

        with duckdb.connect(config=NO_EXTENSIONS) as conn:
            return fingerprint_source(conn, parquet_source(path))

    def query(
        self,
        sql: str,
        params: list[Any] | dict[str, Any] | None = None,
        *,
        readable: Sequence[str | Path] = (),
    ) -> pl.DataFrame:
        """Run read-only SQL and return its result as a polars DataFrame.

        Outside a transaction it runs on a read-only connection under the shared lock, so
        queries never block one another, and without access to other files or the network;
        inside one, statements that could write are refused before they run. Statements that
        reach outside the database (COPY, EXPORT, INSTALL, LOAD, ATTACH) are always refused.
        Raises ReadOnlyQuery for a statement that would change the database or reach outside
        it, and QueryFailed for any other error DuckDB reports. `readable` folders (the run
        history's) may be read from too, outside a transaction: nothing else.
        """
        import duckdb

        shared = self._conn is not None or self._held is not None
        if not shared and not self.db_path.exists():
            raise DatabaseNotFound(
                f"database {self.db_path} does not exist: run the workflow or pass --db FILE"
            )
        try:
            folders = [Path(p) for p in readable]
            with self.connect(write=False, external_access=False, readable=folders) as conn:
                kinds = _statement_kinds(conn, sql)
                if kinds & _OUTSIDE_STATEMENTS:
                    raise ReadOnlyQuery(_OUTSIDE_MESSAGE)
                if shared and not kinds <= _READ_STATEMENTS:
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
            if conn is None or not table_in(conn, CHECKPOINTS):
                return False
            row = conn.sql(
                f"SELECT count(*) FROM {CHECKPOINTS} WHERE table_name = ?", params=[table_name]
            ).fetchall()[0]
            return bool(row and row[0])

    def get_checkpoint(self, table_name: str) -> Checkpoint | None:
        """The checkpoint row of `table_name`, or None."""
        validate_table_name(table_name)
        rows = [r for r in self.list_checkpoints() if r["table_name"] == table_name]
        return rows[0] if rows else None

    def list_checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint row as a dict, ordered by table name."""
        with self._read() as conn:
            if conn is None or not table_in(conn, CHECKPOINTS):
                return []
            cursor = conn.sql(
                f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM {CHECKPOINTS} ORDER BY table_name"
            )
            rows = cursor.fetchall()
            return [cast(Checkpoint, dict(zip(CHECKPOINT_COLUMNS, r, strict=True))) for r in rows]

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

    @overload
    def load_dataframe(
        self, table_name: str, as_polars: Literal[True] = True
    ) -> pl.DataFrame | None: ...

    @overload
    def load_dataframe(self, table_name: str, as_polars: bool) -> Any: ...  # pandas: no stubs

    def load_dataframe(self, table_name: str, as_polars: bool = True) -> Any:
        """The table as a polars (or pandas) DataFrame, or None when it does not exist."""
        validate_table_name(table_name)
        with self._read() as conn:
            if conn is None or not table_in(conn, table_name):
                return None
            relation = conn.sql(f"SELECT * FROM {quote_identifier(table_name)}")
            return relation_frame(relation) if as_polars else relation.df()

    def fingerprint(self, table_name: str) -> str | None:
        """The content fingerprint of the table as stored now, or None when it does not exist."""
        validate_table_name(table_name)
        with self._read() as conn:
            if conn is None or not table_in(conn, table_name):
                return None
            return fingerprint_source(conn, quote_identifier(table_name))[0]

    def export_parquet(self, table_name: str, output_path: str | Path) -> Path:
        """Write the table to `output_path` as Parquet, through a temporary name and a rename."""
        validate_table_name(table_name)
        from usher_pipeline._io import atomic_path

        target = Path(output_path)
        with self._read() as conn:
            if conn is None or not table_in(conn, table_name):
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
        """Insert or update one `_provenance` row (`ProvenanceTracker.save_to_store`)."""
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
        in one statement (`ProvenanceTracker.save_many_to_store`, which the provenance merge
        uses): one INSERT per row gets slower as the table grows. A path given twice keeps its
        last metadata. Returns the rows written."""
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


__all__ = ["PipelineStore"]
