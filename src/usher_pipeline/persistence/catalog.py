"""The store's own tables, `_checkpoints` and `_provenance`: their columns and types, written
once, from which the DDL and the column lists of the statements that fill them are made."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Final, TypedDict

if TYPE_CHECKING:
    import duckdb

CHECKPOINTS: Final = "_checkpoints"
PROVENANCE: Final = "_provenance"

# column -> DuckDB type; the order is the tables' column order
CHECKPOINT_TYPES: Final[Mapping[str, str]] = {
    "table_name": "VARCHAR",
    "created_at": "TIMESTAMP",
    "row_count": "BIGINT",
    "description": "VARCHAR",
    "fingerprint": "VARCHAR",
    "config_hash": "VARCHAR",
    "rule": "VARCHAR",
    "sentinel": "VARCHAR",
    "schema_json": "VARCHAR",
}
PROVENANCE_TYPES: Final[Mapping[str, str]] = {
    "run_id": "VARCHAR",
    "output_path": "VARCHAR",
    "created_at": "TIMESTAMP",
    "pipeline_version": "VARCHAR",
    "config_hash": "VARCHAR",
    "metadata": "VARCHAR",
}
CHECKPOINT_COLUMNS: Final = tuple(CHECKPOINT_TYPES)
PROVENANCE_COLUMNS: Final = tuple(PROVENANCE_TYPES)


class Checkpoint(TypedDict):
    """One `_checkpoints` row: a committed table, what made it and what it held then."""

    table_name: str
    created_at: datetime
    row_count: int
    description: str
    fingerprint: str
    config_hash: str | None
    rule: str | None
    sentinel: str | None
    schema_json: str  # [[column, type], ...] as JSON


def _create(table: str, types: Mapping[str, str], key: tuple[str, ...]) -> str:
    columns = "".join(f"    {name} {kind},\n" for name, kind in types.items())
    return f"CREATE TABLE IF NOT EXISTS {table} (\n{columns}    PRIMARY KEY ({', '.join(key)})\n)"


CHECKPOINTS_DDL: Final = _create(CHECKPOINTS, CHECKPOINT_TYPES, ("table_name",))
PROVENANCE_DDL: Final = _create(PROVENANCE, PROVENANCE_TYPES, ("run_id", "output_path"))


def ensure_internal(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the store's own tables where they are missing."""
    conn.execute(CHECKPOINTS_DDL)
    conn.execute(PROVENANCE_DDL)


def unnest_columns(types: Mapping[str, str]) -> str:
    """`unnest(?::T[]), ...` for each column: the SELECT list that inserts many rows in one
    statement from one list parameter per column."""
    return ", ".join(f"unnest(?::{kind}[])" for kind in types.values())


__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_COLUMNS",
    "CHECKPOINT_TYPES",
    "PROVENANCE",
    "PROVENANCE_COLUMNS",
    "PROVENANCE_TYPES",
    "Checkpoint",
    "ensure_internal",
    "unnest_columns",
]
