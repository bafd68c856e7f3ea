"""Content fingerprints: equal rows and columns give an equal fingerprint, wherever they sit.

The fingerprint is computed by DuckDB in one parallel scan: the column names and types, the
row count and the exact (128-bit) sum of a 64-bit hash of every row. The row hash encodes
each value's structure as well as its scalars (a NULL list, an empty list and a list holding
NULL differ, as do a NULL struct and a struct of NULLs, and -0.0 and 0.0), which DuckDB's
`hash()` of a nested value alone does not. The table in the database and its sentinel
Parquet therefore fingerprint equally, different contents differently (up to the odds of a
64-bit hash collision), and row order does not matter (a table is a multiset of rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usher_pipeline.hashing import sha256_json
from usher_pipeline.persistence.sql import parquet_source, quote_identifier

# The version of the encoding: a fingerprint of another version never equals one of this,
# so a table recorded by an older version reads as changed (and is reloaded once).
PREFIX = "fp2:"
_FLOATS = frozenset({"float", "double"})
_NESTED = frozenset({"list", "array", "map", "struct", "union"})
_LAMBDA = "__usher_e"


def schema_of(conn: Any, source: str) -> list[list[str]]:
    """[[column, type], ...] of a FROM clause, as DESCRIBE names them (without running it)."""
    return [[name, str(kind)] for name, kind in _columns(conn, source)]


def _columns(conn: Any, source: str) -> list[tuple[str, Any]]:
    relation = conn.sql(f"SELECT * FROM {source}")
    return list(zip(relation.columns, relation.types, strict=True))


def _plain(kind: Any) -> bool:
    """Whether DuckDB's hash of a value of `kind` tells all its values apart: scalars but
    floats (whose hash ignores the sign of zero)."""
    return kind.id not in _NESTED and kind.id not in _FLOATS


def _fields(kind: Any) -> list[Any]:
    """The child types of a nested type, in order (the size of an ARRAY left out)."""
    return [child for _, child in kind.children if not isinstance(child, int)]


def _terms(expr: str, kind: Any, depth: int = 0) -> list[str]:
    """SQL expressions whose combined `hash()` tells apart any two different values of
    `kind` at `expr`: NULL, empty and holding NULL at every level, and the sign of zero.

    The number of terms depends on the type only, so terms of several values may be
    concatenated into one `hash()` call without ambiguity.
    """
    if kind.id in _FLOATS:
        # 1/x is -inf for -0.0 and inf for 0.0, NaN (of either sign: one hash) for NaN; one
        # reference to x keeps planning linear in the number of columns
        return [expr, f"(1.0::DOUBLE / {expr})"]
    if kind.id == "struct":
        fields = _fields(kind)
        if all(_plain(field) for field in fields):
            return [f"({expr} IS NULL)", f"hash({expr})"]
        terms = [f"({expr} IS NULL)"]
        for i, field in enumerate(fields, 1):
            terms += _terms(f"struct_extract_at({expr}, {i})", field, depth)
        return terms
    if kind.id in ("list", "array", "map"):
        if kind.id == "map":
            key, value = _fields(kind)
            length, entries = f"cardinality({expr})", f"map_entries({expr})"
            plain = _plain(key) and _plain(value)
            item = f"{_LAMBDA}{depth}"
            inner = _terms(f"struct_extract_at({item}, 1)", key, depth + 1) + _terms(
                f"struct_extract_at({item}, 2)", value, depth + 1
            )
        else:
            (child,) = _fields(kind)
            length, entries = f"len({expr})", expr
            plain = _plain(child)
            item = f"{_LAMBDA}{depth}"
            inner = _terms(item, child, depth + 1)
        if plain:  # hash() of the list tells its elements apart, the length its size
            return [f"({expr} IS NULL)", length, f"hash({expr})"]
        each = f"list_transform({entries}, lambda {item}: hash({', '.join(inner)}))"
        return [f"({expr} IS NULL)", length, f"hash({each})"]
    return [expr]


def row_hash_sql(columns: list[tuple[str, Any]]) -> str:
    """The SQL expression of one row's 64-bit hash over `columns` ([(name, DuckDB type)])."""
    terms = [term for name, kind in columns for term in _terms(quote_identifier(name), kind)]
    return f"hash({', '.join(terms)})"


def fingerprint_and_schema(conn: Any, source: str) -> tuple[str, int, list[list[str]]]:
    """(fingerprint, row count, [[column, type], ...]) of a FROM clause: a quoted table or a
    read_parquet call."""
    columns = _columns(conn, source)
    schema = [[name, str(kind)] for name, kind in columns]
    count, total = conn.sql(
        f"SELECT count(*), coalesce(sum({row_hash_sql(columns)}), 0) FROM {source}"
    ).fetchall()[0]
    return PREFIX + sha256_json([schema, int(count), str(total)])[:32], int(count), schema


def fingerprint_source(conn: Any, source: str) -> tuple[str, int]:
    """(fingerprint, row count) of a FROM clause: a quoted table or a read_parquet call."""
    fingerprint, count, _ = fingerprint_and_schema(conn, source)
    return fingerprint, count


def fingerprint_parquet(path: str | Path) -> tuple[str, int]:
    """(fingerprint, row count) of a Parquet file, read by an in-memory DuckDB (no store lock)."""
    import duckdb

    from usher_pipeline.persistence.connection import NO_EXTENSIONS

    with duckdb.connect(config=NO_EXTENSIONS) as conn:
        return fingerprint_source(conn, parquet_source(path))


def short_fingerprint(fingerprint: str | None, missing: str = "") -> str:
    """The first 8 hex digits of a fingerprint, as messages and listings show it; `missing`
    stands for no fingerprint."""
    return (fingerprint or missing).split(":", 1)[-1][:8]


__all__ = [
    "PREFIX",
    "fingerprint_and_schema",
    "fingerprint_parquet",
    "fingerprint_source",
    "parquet_source",  # the FROM clause fingerprints read; defined in sql.py
    "row_hash_sql",
    "schema_of",
    "short_fingerprint",
]
