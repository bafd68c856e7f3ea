"""Content fingerprints: equal rows and columns give an equal fingerprint, wherever they sit.

The fingerprint is computed by DuckDB in one parallel scan: the column names and types, the
row count and the exact (128-bit) sum of the 64-bit hashes of every row. The table in the
database and its sentinel Parquet therefore fingerprint equally, and row order does not
matter (a table is a set of rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence.sql import parquet_source

PREFIX = "fp1:"
_ROW = "__usher_row"


def schema_of(conn: Any, source: str) -> list[list[str]]:
    """[[column, type], ...] of a FROM clause, as DESCRIBE names them (without running it)."""
    relation = conn.sql(f"SELECT * FROM {source}")
    return [[name, str(kind)] for name, kind in zip(relation.columns, relation.types, strict=True)]


def fingerprint_and_schema(conn: Any, source: str) -> tuple[str, int, list[list[str]]]:
    """(fingerprint, row count, [[column, type], ...]) of a FROM clause: a quoted table or a
    read_parquet call."""
    schema = schema_of(conn, source)
    count, total = conn.sql(
        f"SELECT count(*), coalesce(sum(hash({_ROW})), 0) FROM {source} AS {_ROW}"
    ).fetchall()[0]
    return PREFIX + sha256_json([schema, int(count), str(total)])[:32], int(count), schema


def fingerprint_source(conn: Any, source: str) -> tuple[str, int]:
    """(fingerprint, row count) of a FROM clause: a quoted table or a read_parquet call."""
    fingerprint, count, _ = fingerprint_and_schema(conn, source)
    return fingerprint, count


def fingerprint_parquet(path: str | Path) -> tuple[str, int]:
    """(fingerprint, row count) of a Parquet file, read by an in-memory DuckDB (no store lock)."""
    import duckdb

    with duckdb.connect() as conn:
        return fingerprint_source(conn, parquet_source(path))


def short_fingerprint(fingerprint: str | None, missing: str = "") -> str:
    """The first 8 hex digits of a fingerprint, as messages and listings show it; `missing`
    stands for no fingerprint."""
    return (fingerprint or missing).removeprefix(PREFIX)[:8]


__all__ = [
    "PREFIX",
    "fingerprint_and_schema",
    "fingerprint_parquet",
    "fingerprint_source",
    "parquet_source",  # the FROM clause fingerprints read; defined in sql.py
    "schema_of",
    "short_fingerprint",
]
