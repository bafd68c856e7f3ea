"""The one rule for adding rows to rows that exist: an append to a table, a fetch batch to the
batches before it.

The new columns must be the existing ones, by name, and each of the same type or of one that
widens to it without changing a value:

- a narrower integer into a wider one that holds all its values (Int8/16/32 and UInt8/16/32
  into Int64, UInt8 into UInt16, ...);
- Float32 into Float64;
- DECIMAL(p, s) into DECIMAL(p2, s2) with at least as many digits on both sides of the point;
- a column (or a nested value) of type NULL, which holds no value, into any type; and an
  existing column of type NULL (saved from a batch without values) takes the new type;
- lists, fixed-size arrays and maps element by element, structs field by field (the same
  names in the same order).

Anything else (an integer into a float, a string into a number, a list into a string, a
missing or an extra column) is refused: the caller says how to make the change explicit.
Types are compared as DuckDB holds them, so a polars frame and the Parquet file written from
it are judged alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from usher_pipeline.persistence.errors import InvalidFrame
from usher_pipeline.persistence.sql import quote_identifier

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    from duckdb.sqltypes import DuckDBPyType

NULL = "NULL"
_SIGNED = {"TINYINT": 8, "SMALLINT": 16, "INTEGER": 32, "BIGINT": 64, "HUGEINT": 128}
_UNSIGNED = {"UTINYINT": 8, "USMALLINT": 16, "UINTEGER": 32, "UBIGINT": 64, "UHUGEINT": 128}
_NESTED = ("LIST", "ARRAY", "MAP", "STRUCT")


@dataclass(frozen=True)
class ColumnType:
    """A column's type as DuckDB holds it: a leaf name (BIGINT, DECIMAL(38,2), NULL, ...) or
    LIST/ARRAY/MAP/STRUCT with its children (struct fields by name; "" for elements)."""

    name: str
    children: tuple[tuple[str, ColumnType], ...] = ()
    size: int = 0  # the length of an ARRAY

    def sql(self) -> str:
        """The type in DuckDB's SQL, as ALTER TABLE takes it."""
        if self.name == "LIST":
            return f"{self.children[0][1].sql()}[]"
        if self.name == "ARRAY":
            return f"{self.children[0][1].sql()}[{self.size}]"
        if self.name == "MAP":
            return f"MAP({self.children[0][1].sql()}, {self.children[1][1].sql()})"
        if self.name == "STRUCT":
            fields = ", ".join(f"{quote_identifier(n)} {t.sql()}" for n, t in self.children)
            return f"STRUCT({fields})"
        return quote_identifier(NULL) if self.name == NULL else self.name


class Unmatched(ValueError):
    """New columns that do not fit the existing ones; the caller words the error."""

    def __init__(self, missing: list[str], extra: list[str], column: str | None) -> None:
        super().__init__(missing, extra, column)
        self.missing, self.extra, self.column = missing, extra, column


def _fits(old: ColumnType, new: ColumnType) -> ColumnType | None:
    """The type the existing `old` values and the `new` ones share, or None when `new` does not
    widen to `old` exactly."""
    if new == old or new.name == NULL:
        return old
    if old.name == NULL:
        return new
    if new.name in _SIGNED and old.name in _SIGNED:
        return old if _SIGNED[new.name] <= _SIGNED[old.name] else None
    if new.name in _UNSIGNED and old.name in _UNSIGNED:
        return old if _UNSIGNED[new.name] <= _UNSIGNED[old.name] else None
    if new.name in _UNSIGNED and old.name in _SIGNED:
        return old if _UNSIGNED[new.name] < _SIGNED[old.name] else None
    if (new.name, old.name) == ("FLOAT", "DOUBLE"):
        return old
    if new.name.startswith("DECIMAL(") and old.name.startswith("DECIMAL("):
        (p_new, s_new), (p_old, s_old) = _decimal(new.name), _decimal(old.name)
        return old if s_new <= s_old and p_new - s_new <= p_old - s_old else None
    if new.name != old.name or new.name not in _NESTED or new.size != old.size:
        return None
    if [n for n, _ in new.children] != [n for n, _ in old.children]:
        return None  # struct fields renamed, added, dropped or reordered
    children = []
    for (name, old_child), (_, new_child) in zip(old.children, new.children, strict=True):
        shared = _fits(old_child, new_child)
        if shared is None:
            return None
        children.append((name, shared))
    return ColumnType(old.name, tuple(children), old.size)


def _decimal(name: str) -> tuple[int, int]:
    precision, scale = name.removeprefix("DECIMAL(").removesuffix(")").split(",")
    return int(precision), int(scale)


def combine(old: Mapping[str, ColumnType], new: Mapping[str, ColumnType]) -> dict[str, ColumnType]:
    """The columns that rows of `old` and `new` share, in the order of `old`; raises Unmatched
    for a missing or an extra column, or the first column whose new type does not fit."""
    missing = [name for name in old if name not in new]
    extra = [name for name in new if name not in old]
    if missing or extra:
        raise Unmatched(missing, extra, None)
    shared = {}
    for name, kind in old.items():
        fit = _fits(kind, new[name])
        if fit is None:
            raise Unmatched([], [], name)
        shared[name] = fit
    return shared


# -- DuckDB: appends to a table ---------------------------------------------------------------


def duckdb_type(kind: DuckDBPyType) -> ColumnType:
    """A DuckDB type as a ColumnType."""
    if kind.id in ("list", "array", "map"):
        parts: dict[str, Any] = dict(kind.children)
        if kind.id == "map":
            key, value = duckdb_type(parts["key"]), duckdb_type(parts["value"])
            return ColumnType("MAP", (("key", key), ("value", value)))
        size = int(parts.get("size", 0))
        return ColumnType(kind.id.upper(), (("", duckdb_type(parts["child"])),), size)
    if kind.id == "struct":
        fields: list[tuple[str, Any]] = kind.children
        return ColumnType("STRUCT", tuple((n, duckdb_type(t)) for n, t in fields))
    return ColumnType(NULL if kind.id == "null" else str(kind))


def _columns(relation: duckdb.DuckDBPyRelation) -> dict[str, tuple[ColumnType, str]]:
    return {
        name: (duckdb_type(kind), str(kind))
        for name, kind in zip(relation.columns, relation.types, strict=True)
    }


def prepare_append(conn: duckdb.DuckDBPyConnection, table_name: str, source: str) -> None:
    """Check that the rows of `source` (a FROM clause) fit the columns of `table_name` by the
    rule above, and give the table's NULL-typed parts the types of the new values; raises
    InvalidFrame naming the column, both types and the fix before anything is changed."""
    quoted = quote_identifier(table_name)
    table = _columns(conn.sql(f"SELECT * FROM {quoted}"))
    rows = _columns(conn.sql(f"SELECT * FROM {source}"))
    try:
        shared = combine(
            {n: t for n, (t, _) in table.items()}, {n: t for n, (t, _) in rows.items()}
        )
    except Unmatched as exc:
        raise InvalidFrame(_append_message(table_name, exc, table, rows)) from None
    for name, kind in shared.items():
        if kind != table[name][0]:  # a NULL part of the table's column gets the new type
            conn.execute(
                f"ALTER TABLE {quoted} ALTER COLUMN {quote_identifier(name)} TYPE {kind.sql()}"
            )


def _append_message(
    table_name: str,
    exc: Unmatched,
    table: Mapping[str, tuple[ColumnType, str]],
    rows: Mapping[str, tuple[ColumnType, str]],
) -> str:
    head = f"cannot append to table '{table_name}': "
    change = "or save with replace=True to change the schema"
    if exc.missing or exc.extra:
        lack = f"lack its column{_s(exc.missing)} {_names(exc.missing)}"
        have = f"have column{_s(exc.extra)} {_names(exc.extra)} that the table lacks"
        add = f"add {_them(exc.missing)} (a column of nulls if there are no values)"
        drop = f"drop {_them(exc.extra)}"
        if exc.missing and exc.extra:
            return f"{head}the new rows {lack} and {have}; {add} and {drop}, {change}"
        if exc.missing:
            return f"{head}the new rows {lack}; {add}, {change}"
        return f"{head}the new rows {have}; {drop}, {change}"
    column = str(exc.column)
    old, new = table[column][1], rows[column][1]
    return (
        f"{head}column '{column}' is {new} in the new rows but {old} in the table; cast it to "
        f"{old} before saving, {change}"
    )


def _s(names: list[str]) -> str:
    return "s" if len(names) > 1 else ""


def _them(names: list[str]) -> str:
    return "them" if len(names) > 1 else "it"


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


# -- polars: fetch batches ---------------------------------------------------------------------

_POLARS_LEAVES = {
    "Int8": "TINYINT",
    "Int16": "SMALLINT",
    "Int32": "INTEGER",
    "Int64": "BIGINT",
    "UInt8": "UTINYINT",
    "UInt16": "USMALLINT",
    "UInt32": "UINTEGER",
    "UInt64": "UBIGINT",
    "Float16": "FLOAT",
    "Float32": "FLOAT",
    "Float64": "DOUBLE",
    "Boolean": "BOOLEAN",
    "String": "VARCHAR",
    "Categorical": "VARCHAR",
    "Enum": "VARCHAR",
    "Binary": "BLOB",
    "Date": "DATE",
    "Time": "TIME_NS",
    "Null": NULL,
}


def polars_type(dtype: Any) -> ColumnType:
    """A polars type as the ColumnType DuckDB reads from the Parquet file polars writes."""
    import polars as pl

    if isinstance(dtype, pl.List | pl.Array):  # DuckDB reads a polars Array as a LIST
        return ColumnType("LIST", (("", polars_type(dtype.inner)),))
    if isinstance(dtype, pl.Struct):
        return ColumnType("STRUCT", tuple((f.name, polars_type(f.dtype)) for f in dtype.fields))
    if isinstance(dtype, pl.Decimal):
        return ColumnType(f"DECIMAL({dtype.precision or 38},{dtype.scale})")
    if isinstance(dtype, pl.Datetime):
        ns = "_NS" if dtype.time_unit == "ns" else ""
        return ColumnType(f"TIMESTAMP{ns} WITH TIME ZONE" if dtype.time_zone else f"TIMESTAMP{ns}")
    return ColumnType(_POLARS_LEAVES.get(str(dtype.base_type()), str(dtype)))


def _merge_dtype(old: Any, new: Any) -> Any:
    """The polars type that holds the `old` and the `new` values, once `combine` accepted them:
    the old type, with its NULL parts typed by the new values; for two types stored alike
    (String and Categorical, Datetime in ms and in us, ...) the one the store loads back."""
    import polars as pl

    if old == new or new == pl.Null:
        return old
    if old == pl.Null:
        return new
    if isinstance(old, pl.List | pl.Array) and isinstance(new, pl.List | pl.Array):
        return pl.List(_merge_dtype(old.inner, new.inner))
    if isinstance(old, pl.Struct) and isinstance(new, pl.Struct):
        pairs = zip(old.fields, new.fields, strict=True)
        return pl.Struct({f.name: _merge_dtype(f.dtype, g.dtype) for f, g in pairs})
    kind = polars_type(old)
    if kind != polars_type(new):  # a widening into the old type
        return old
    if kind.name == "VARCHAR":
        return pl.String
    if kind.name == "FLOAT":
        return pl.Float32
    if kind.name.startswith("TIMESTAMP"):
        unit: Literal["ns", "us"] = "ns" if kind.name.startswith("TIMESTAMP_NS") else "us"
        return pl.Datetime(unit, "UTC" if "TIME ZONE" in kind.name else None)
    return old


def combine_schemas(old: pl.Schema, new: pl.Schema) -> pl.Schema:
    """The schema that frames of `old` and `new` combine to, in the column order of `old`; raises
    Unmatched as `combine` does."""
    import polars as pl

    combine(
        {n: polars_type(d) for n, d in old.items()}, {n: polars_type(d) for n, d in new.items()}
    )
    return pl.Schema({name: _merge_dtype(dtype, new[name]) for name, dtype in old.items()})


def conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """`frame` with the columns of `schema` in its order and types (a `combine_schemas` result,
    so every cast keeps every value)."""
    import polars as pl

    if frame.schema == schema:
        return frame
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


__all__ = [
    "ColumnType",
    "Unmatched",
    "combine",
    "combine_schemas",
    "conform",
    "duckdb_type",
    "polars_type",
    "prepare_append",
]
