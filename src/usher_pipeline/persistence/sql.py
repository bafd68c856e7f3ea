"""SQL text the store builds: identifiers, literals, table names and the few statements that
inspect a table's existence or columns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from usher_pipeline.persistence.errors import InvalidTableName
from usher_pipeline.settings import MAX_NAME_LENGTH, is_table_name

if TYPE_CHECKING:
    import duckdb


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def sql_string(value: str) -> str:
    """A SQL string literal for `value`."""
    return "'" + value.replace("'", "''") + "'"


def parquet_source(path: str | Path) -> str:
    """The FROM clause that reads one Parquet file."""
    return f"read_parquet({sql_string(str(path))})"


def validate_table_name(name: object, *, internal: bool = False) -> str:
    """Return `name` if it may name a user table (or, with `internal`, one of the store's own
    tables, which start with '_'), else raise InvalidTableName saying why."""
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
    if not is_table_name(name.lstrip("_") if internal else name):
        raise InvalidTableName(
            f"table {shown!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter"
        )
    return name


def table_in(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the main schema of `conn`'s database holds a table `name`."""
    row = conn.sql(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'",
        params=[name],
    ).fetchall()[0]
    return bool(row and row[0])


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


__all__ = [
    "MAX_NAME_LENGTH",
    "parquet_source",
    "quote_identifier",
    "retype_null_columns",
    "sql_string",
    "table_in",
    "validate_table_name",
]
