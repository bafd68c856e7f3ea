"""Table versions as Parquet files: reading one exactly, and the column that can key two.

Each function opens its own in-memory DuckDB connection (no extension is loaded or
installed, no progress bar is printed, times come back in UTC).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.persistence.connection import NO_EXTENSIONS
from usher_pipeline.persistence.sql import parquet_source, quote_identifier, sql_string

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    Conn = duckdb.DuckDBPyConnection

NOT_KEY = frozenset({"float", "double", "list", "array", "map", "struct", "union"})
Columns = list[tuple[str, Any]]  # [(name, DuckDB type)]
_SETUP = "SET TimeZone = 'UTC'; SET enable_progress_bar = false"  # UTC values, no output


def json_safe(value: Any) -> Any:
    """`value` with every part JSON holds as it is, the rest as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value.isoformat() if isinstance(value, _dt.date | _dt.time) else str(value)


def connect_memory() -> Conn:
    import duckdb

    return duckdb.connect(config=NO_EXTENSIONS).execute(_SETUP)


def parquet_columns(conn: Conn, path: Path) -> Columns:
    relation = conn.sql(f"SELECT * FROM {parquet_source(path)}")
    return list(zip(relation.columns, relation.types, strict=True))


_SCORED_ROWS = 1_000_000  # up to this size every unique column is scored as a key


def parquet_rows(conn: Conn, path: Path) -> int:
    sql = f"SELECT sum(num_rows) FROM parquet_file_metadata({sql_string(str(path))})"
    return int(conn.sql(sql).fetchall()[0][0] or 0)


def load_version(path: Path, *, limit: int | None = None) -> pl.DataFrame:
    """The rows of one version (a Parquet file) as a polars frame, values exactly as stored;
    the first `limit` rows when given."""
    from usher_pipeline.persistence.frames import relation_frame

    with connect_memory() as conn:
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        return relation_frame(conn.sql(f"SELECT * FROM {parquet_source(path)}{tail}"))


def find_unique_column(old: Path, new: Path) -> str | None:
    """Of the columns both versions hold with one type usable as a key (not float, not
    nested), non-NULL and unique in both, the one whose values match the most rows of the two
    (ties: names ending in "id" first, then schema order); None when none matches any row.
    Above a million rows, the first such column, unscored."""
    with connect_memory() as conn:
        return unique_column(conn, Path(old), Path(new))


def unique_column(conn: Conn, old: Path, new: Path) -> str | None:
    old_types, new_cols = (
        {n: str(kind) for n, kind in parquet_columns(conn, old)},
        parquet_columns(conn, new),
    )
    candidates = [
        n for n, kind in new_cols if kind.id not in NOT_KEY and old_types.get(n) == str(kind)
    ]
    unique = []
    for name in sorted(candidates, key=lambda name: not name.lower().endswith("id")):
        col = quote_identifier(name)
        check = f"SELECT count(DISTINCT {col}) = count(*) AND count({col}) = count(*) FROM "
        if all(conn.sql(check + parquet_source(path)).fetchall()[0][0] for path in (old, new)):
            unique.append(name)
        if unique and max(parquet_rows(conn, old), parquet_rows(conn, new)) > _SCORED_ROWS:
            return name  # a large table: the first unique column, the others not scored
    # the key that matches most rows of the two versions (a value that changed in every row
    # is no key); none matching any: whole rows
    shared = [(_shared(conn, old, new, name), name) for name in unique]
    best = max(shared, key=lambda found: found[0], default=(0, None))
    return best[1] if best[0] > 0 else None


def _shared(conn: Conn, old: Path, new: Path, name: str) -> int:
    """How many values of the unique column `name` both versions hold."""
    col = quote_identifier(name)
    sql = (
        f"SELECT count(*) FROM (SELECT {col} FROM {parquet_source(old)}) "
        f"JOIN (SELECT {col} FROM {parquet_source(new)}) USING ({col})"
    )
    return int(conn.sql(sql).fetchall()[0][0])
