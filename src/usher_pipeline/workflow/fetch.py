"""Resumable batched fetch: commit each finished batch, fetch only what is missing after a crash.

Keys are cut into batches; each batch gets an id from its keys and the fetch's signature (the
hash of the settings that shape the result), so a restart with the same keys and settings
recognises what was already committed, and a changed setting never reuses stale batches. A
ledger keeps the committed batches: in the store (`job` database mode) or as Parquet files
beside the outputs (`head` mode, where jobs must not write the database).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from usher_pipeline._io import atomic_path, remove_stale_temps, write_json_atomic
from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence.duckdb_store import (
    PipelineStore,
    quote_identifier,
    relation_frame,
    retype_null_columns,
    to_polars,
    write_parquet,
)
from usher_pipeline.persistence.fingerprint import parquet_source

if TYPE_CHECKING:
    import duckdb
    import polars as pl

log = logging.getLogger("usher_pipeline.fetch")

AUDIT_VARIABLE = "USHER_FETCH_AUDIT"
BATCHES = "_fetch_batches"
_BATCHES_DDL = f"""
CREATE TABLE IF NOT EXISTS {BATCHES} (
    table_name VARCHAR,
    batch_id VARCHAR,
    batch_index INTEGER,
    n_keys INTEGER,
    n_rows BIGINT,
    committed_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (table_name, batch_id)
)"""


def _audit(event: str, table: str, batch_id: str) -> None:
    """Append an event to the file named by USHER_FETCH_AUDIT (used by restart tests)."""
    target = os.environ.get(AUDIT_VARIABLE)
    if target:
        line = f"{event} {table} {batch_id}\n".encode()
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def progress_path(sentinel: str | Path) -> Path:
    """Where the fetch of the table behind `sentinel` notes how far it got (see
    `remaining_share`)."""
    target = Path(sentinel)
    return target.parent / ".partial" / f"{target.stem}.progress.json"


def write_progress(path: Path, committed: int, total: int) -> None:
    """Note that `committed` of `total` batches are committed (atomic, not synced: a hint)."""
    write_json_atomic(path, {"batches_committed": committed, "batches_total": total})


def remaining_share(sentinel: str | Path) -> float:
    """The share of its batches a fetch still has to fetch, from its progress note: 1.0 for a
    fetch that never started (or whose note is unreadable), less for one a crash interrupted.

    Snakemake reads it as the priority of a fetch job (`usher_fetch_priority`), so that on a
    resume with fewer cores than jobs the fetches with the most left to do start first and the
    interrupted ones fill in beside them: the run ends sooner than the other way round.
    """
    try:
        note = json.loads(progress_path(sentinel).read_text(encoding="utf-8"))
        total, committed = int(note["batches_total"]), int(note["batches_committed"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0
    if total <= 0:
        return 1.0
    return min(1.0, max(0.0, (total - committed) / total))


def plan_batches(keys: Sequence[Any], batch_size: int, signature: str) -> list[tuple[str, list]]:
    """Cut `keys` into (batch id, keys) pairs; the id depends on the keys and the signature."""
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}: use a whole number of at least 1")
    batches = []
    for start in range(0, len(keys), batch_size):
        chunk = list(keys[start : start + batch_size])
        batches.append((sha256_json([signature, chunk])[:24], chunk))
    return batches


class BatchLedger(Protocol):
    """Where committed batches live until the complete table is saved."""

    def committed(self) -> set[str]: ...

    def commit(self, batch_id: str, index: int, n_keys: int, frame: pl.DataFrame) -> None: ...

    def load(self, batch_ids: Sequence[str]) -> pl.DataFrame | None: ...

    def cleanup_in(self, conn: duckdb.DuckDBPyConnection | None) -> None: ...


class StoreLedger:
    """Batches as rows of `_partial_<table>` plus `_fetch_batches` records, one commit each."""

    def __init__(self, store: PipelineStore, table: str) -> None:
        self.store = store
        self.table = table
        # staging files of batches whose job was killed mid-commit
        remove_stale_temps(store.db_path, (".batch.parquet", ".ingest.parquet"))
        self.staging = quote_identifier(f"_partial_{table}")

    def committed(self) -> set[str]:
        with self.store.connect(write=False) if self.store.db_path.exists() else _nothing() as c:
            if c is None or not PipelineStore._table_exists(c, BATCHES):
                return set()
            rows = c.sql(
                f"SELECT batch_id FROM {BATCHES} WHERE table_name = ?", params=[self.table]
            ).fetchall()
            return {r[0] for r in rows}

    def commit(self, batch_id: str, index: int, n_keys: int, frame: pl.DataFrame) -> None:
        import polars as pl

        staged = frame.with_columns(
            pl.lit(batch_id).alias("_batch_id"),
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_batch_row"),
        )
        path = self.store.db_path.with_name(
            f".{self.store.db_path.name}.{os.getpid()}.{batch_id}.batch.parquet"
        )
        try:
            write_parquet(staged, path)
            source = parquet_source(path)
            with self.store.transaction() as store, store.connect() as conn:
                conn.execute(_BATCHES_DDL)
                if PipelineStore._table_exists(conn, f"_partial_{self.table}"):
                    conn.execute(f"DELETE FROM {self.staging} WHERE _batch_id = ?", [batch_id])
                    retype_null_columns(conn, self.staging, source)
                    conn.execute(f"INSERT INTO {self.staging} BY NAME SELECT * FROM {source}")
                else:
                    conn.execute(f"CREATE TABLE {self.staging} AS SELECT * FROM {source}")
                conn.execute(
                    f"INSERT OR REPLACE INTO {BATCHES} (table_name, batch_id, batch_index, "
                    "n_keys, n_rows) VALUES (?, ?, ?, ?, ?)",
                    [self.table, batch_id, index, n_keys, frame.height],
                )
        finally:
            path.unlink(missing_ok=True)

    def load(self, batch_ids: Sequence[str]) -> pl.DataFrame | None:
        if not batch_ids:
            return None
        order = {batch_id: i for i, batch_id in enumerate(batch_ids)}
        with self.store.connect(write=False) as conn:
            frame = relation_frame(conn.sql(f"SELECT * FROM {self.staging}"))
        import polars as pl

        frame = frame.filter(pl.col("_batch_id").is_in(list(order)))
        frame = frame.with_columns(
            pl.col("_batch_id").replace_strict(order, return_dtype=pl.Int64).alias("_batch_order")
        ).sort("_batch_order", "_batch_row")
        return frame.drop("_batch_id", "_batch_row", "_batch_order")

    def cleanup_in(self, conn: duckdb.DuckDBPyConnection | None) -> None:
        if conn is None:
            return
        conn.execute(f"DROP TABLE IF EXISTS {self.staging}")
        if PipelineStore._table_exists(conn, BATCHES):
            conn.execute(f"DELETE FROM {BATCHES} WHERE table_name = ?", [self.table])


class FileLedger:
    """Batches as Parquet files in a folder (for jobs that must not write the database)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def committed(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {p.name.removesuffix(".parquet") for p in self.folder.glob("*.parquet")}

    def commit(self, batch_id: str, index: int, n_keys: int, frame: pl.DataFrame) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{batch_id}.parquet") as tmp:
            write_parquet(frame, tmp)

    def load(self, batch_ids: Sequence[str]) -> pl.DataFrame | None:
        import polars as pl

        if not batch_ids:
            return None
        return pl.concat(
            [pl.read_parquet(self.folder / f"{b}.parquet") for b in batch_ids],
            how="vertical_relaxed",
        )

    def cleanup_in(self, conn: duckdb.DuckDBPyConnection | None) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def fetch_in_batches(
    keys: Sequence[Any],
    fetch: Callable[[list[Any]], Any],
    *,
    ledger: BatchLedger,
    batch_size: int,
    signature: str = "",
    label: str = "fetch",
    progress: Callable[[str], None] | None = None,
    on_commit: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Fetch `keys` in batches through `fetch`, committing each batch to `ledger` as it arrives.

    Returns the concatenated result in key order and a summary (batches total, resumed,
    fetched, seconds). Batches already committed by an earlier, interrupted run are not
    fetched again. `on_commit(committed, total)` is called once the plan is known and after
    each commit.
    """
    import polars as pl

    report = progress or log.info
    plan = plan_batches(keys, batch_size, signature)
    done = ledger.committed()
    todo = [(i, bid, chunk) for i, (bid, chunk) in enumerate(plan) if bid not in done]
    resumed = len(plan) - len(todo)
    report(
        f"{label}: {len(plan)} batches of up to {batch_size} keys; {resumed} already committed, "
        f"{len(todo)} to fetch"
    )
    if on_commit is not None:
        on_commit(resumed, len(plan))
    started = time.monotonic()
    last_report = 0.0
    for n, (index, batch_id, chunk) in enumerate(todo, start=1):
        frame = to_polars(fetch(chunk))
        _audit("fetched", label, batch_id)
        ledger.commit(batch_id, index, len(chunk), frame)
        _audit("committed", label, batch_id)
        if on_commit is not None:
            on_commit(resumed + n, len(plan))
        now = time.monotonic()
        if now - last_report >= 1.0 or n == len(todo):
            last_report = now
            elapsed = now - started
            rate = n / elapsed if elapsed > 0 else float("inf")
            eta = (len(todo) - n) / rate if rate > 0 else 0.0
            report(
                f"{label}: {resumed + n}/{len(plan)} batches ({100 * (resumed + n) // len(plan)}%)"
                f", {rate:.1f} batches/s, ETA {eta:.0f} s"
            )
    result = ledger.load([bid for bid, _ in plan])
    if result is None:
        result = pl.DataFrame()
    summary = {
        "batches_total": len(plan),
        "batches_resumed": resumed,
        "batches_fetched": len(todo),
        "batch_size": batch_size,
        "keys": len(keys),
        "fetch_seconds": round(time.monotonic() - started, 3),
    }
    return result, summary
