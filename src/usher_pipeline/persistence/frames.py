"""Frames in and out of the store: what a table may hold, Parquet in the store's layout, and
DuckDB results handed to polars. Pure conversion; no database file is involved."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.persistence.errors import (
    InvalidFrame,
    StoreDiskFull,
    StoreError,
    StoreFileError,
    UnreadableResult,
    UnsupportedFrameType,
)
from usher_pipeline.persistence.sql import sql_string

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    from duckdb.sqltypes import DuckDBPyType

# DuckDB's row group size. A Parquet file whose row groups are whole multiples of it loads as
# full row groups written during the load; other sizes leave a partial group per file row
# group, which the checkpoint at close must merge and compress again into a larger file.
DUCKDB_ROW_GROUP_ROWS = 122_880

# What a load into a table holds in DuckDB's memory, as measured: about 64 KiB for each leaf
# column, plus three times the values of the largest row group the Parquet file holds
# (strings count 16 bytes plus their length), plus a base. Wide frames need far
# more than a long frame of the same size.
_LOAD_COLUMN_BYTES = 64 * 1024
_LOAD_VALUE_COPIES = 3
_LOAD_BASE_MB = 32


class LoadOutOfMemory(StoreError, MemoryError):
    """DuckDB ran out of memory while it loaded a table, even at the limit sized for it."""


def load_memory_mb(conn: duckdb.DuckDBPyConnection, path: str | Path, floor_mb: int) -> int:
    """The memory limit (MB) for loading the Parquet file at `path`: `floor_mb`, or what its
    columns and row groups need (read from the file's footer) when that is more."""
    wide = "type IN ('BYTE_ARRAY', 'FIXED_LEN_BYTE_ARRAY')"
    # a string's length: its share of the chunk, or of its min and max statistics when longer
    # (a dictionary holds a repeated long string once)
    length = (
        "greatest(total_uncompressed_size / greatest(num_values, 1), "
        "coalesce(strlen(stats_max_value), 0), coalesce(strlen(stats_min_value), 0))"
    )
    row = conn.execute(
        f"""
        SELECT sum(need) FROM (
            SELECT max({_LOAD_COLUMN_BYTES} + {_LOAD_VALUE_COPIES} * row_group_num_rows
                * CASE WHEN {wide} THEN 16 + {length} ELSE 8 END) AS need
            FROM parquet_metadata({sql_string(str(path))}) GROUP BY path_in_schema
        )
        """
    ).fetchall()[0]
    needed = int((row[0] or 0) / 2**20) + _LOAD_BASE_MB
    return max(int(floor_mb), needed)


@contextmanager
def out_of_memory_named(table: str, limit: list[int]) -> Iterator[None]:
    """Turn DuckDB's out-of-memory error while loading `table` into one sentence that names
    the setting to raise; `limit` holds the limit set for the load (MB), once known."""
    import duckdb

    try:
        yield
    except duckdb.OutOfMemoryException:
        at = f" at its limit of {limit[-1]} MB" if limit else ""
        raise LoadOutOfMemory(
            f"DuckDB ran out of memory loading table '{table}'{at}: raise "
            "store.load_memory_mb (the job then needs that much more memory) and rerun"
        ) from None


def _polars_cannot_hold(kind: DuckDBPyType) -> bool:
    """Whether a DuckDB type is, or nests, one that polars cannot take from Arrow."""
    if kind.id in ("interval", "union"):
        return True
    if kind.id in ("struct", "list", "map", "array"):
        # children are (name, type) pairs, or numbers and labels (DECIMAL, ENUM): skip those
        return any(
            _polars_cannot_hold(c) for _, c in kind.children if not isinstance(c, int | list)
        )
    return False


def relation_frame(relation: duckdb.DuckDBPyRelation | None) -> pl.DataFrame:
    """The rows of `relation` as a polars DataFrame, handed over as an Arrow C stream; an
    empty frame for None (what `conn.sql` returns for a statement).

    `relation.pl()` goes through a pyarrow table, and importing pyarrow is a cost each process
    that loads a table would pay; the stream gives the same types without it. Columns of a
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
    Table; anything else, and any frame whose values a table would change, is refused."""
    import polars as pl

    if isinstance(df, pl.LazyFrame):
        df = _collect(df)
    if isinstance(df, pl.DataFrame):
        frame = df
    else:
        module = type(df).__module__.split(".", 1)[0]
        kind = type(df).__name__
        if module == "pandas" and kind == "DataFrame":
            frame = _from_pandas(df)
        elif module == "pyarrow" and kind == "Table":
            frame = _from_arrow(df)
        else:
            raise UnsupportedFrameType(
                f"cannot save an object of type {type(df).__module__}.{kind}: pass a polars "
                "DataFrame or LazyFrame, a pandas DataFrame or a pyarrow Table"
            )
    _check_frame(frame)
    return frame


def _reason(exc: BaseException) -> str:
    """`exc` as 'Type: first line' for a one-line message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def _collect(lazy: pl.LazyFrame) -> pl.DataFrame:
    """The LazyFrame's rows; a query that fails (a bad cast, a missing column) is one line."""
    import polars as pl

    try:
        return lazy.collect()
    except (Exception, pl.exceptions.PanicException) as exc:  # a panic is a BaseException
        raise InvalidFrame(
            f"the LazyFrame failed when collected ({_reason(exc)}): fix the query it was built "
            "from, or collect it yourself to see the whole error"
        ) from None


def _from_pandas(df: Any) -> pl.DataFrame:
    """A pandas DataFrame as polars, its row index kept as columns as `reset_index` names
    them, unless it only numbers the rows (an unnamed index of integers: a RangeIndex, or
    the positions left by a filter)."""
    import polars as pl

    columns = [str(c) for c in df.columns]
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise InvalidFrame(
            f"the DataFrame has duplicate column names {duplicates}: rename them before saving"
        )
    index = df.index
    numbers_rows = (
        index.nlevels == 1
        and index.name is None
        and str(index.dtype).lower().startswith(("int", "uint"))
    )
    if not numbers_rows:
        levels = [str(n) for n in index.names]
        try:
            df = df.reset_index()
        except ValueError:  # a level named like a column
            raise InvalidFrame(
                f"the DataFrame's row index {levels} has the name of one of its columns, and "
                "it would be kept as a column: rename the index, or drop it with "
                "reset_index(drop=True), before saving"
            ) from None
    try:
        return pl.from_pandas(df)
    except (Exception, pl.exceptions.PanicException) as exc:  # pandas/arrow raise many types
        raise InvalidFrame(
            f"the pandas DataFrame cannot be stored ({_reason(exc)}): give its columns plain types"
        ) from None


def _from_arrow(table: Any) -> pl.DataFrame:
    """A pyarrow Table as polars; names and types polars or a table cannot keep are refused."""
    import polars as pl

    names = [str(n) for n in table.column_names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidFrame(
            f"the Table has duplicate column names {duplicates}: rename them before saving"
        )
    found = {
        name: str(field.type)
        for name, field in zip(names, table.schema, strict=True)
        if _arrow_unstorable(field.type)
    }
    if found:
        raise InvalidFrame(
            f"columns {found} have Arrow types a table cannot store (intervals, unions, "
            "256-bit decimals): cast intervals to durations in seconds, unions to one type "
            "and decimal256 to decimal128 (precision up to 38) before saving"
        )
    try:
        frame = pl.from_arrow(table)
    except (Exception, pl.exceptions.PanicException) as exc:  # a panic is a BaseException
        raise InvalidFrame(
            f"the pyarrow Table cannot be stored ({_reason(exc)}): give its columns plain types"
        ) from None
    assert isinstance(frame, pl.DataFrame)  # a Table gives a DataFrame
    return frame


def _arrow_unstorable(kind: Any) -> bool:
    """True for an Arrow type polars cannot take or a table cannot keep: intervals, unions and
    256-bit decimals, also nested (children of structs, lists, maps and dictionaries)."""
    import importlib

    types: Any = importlib.import_module("pyarrow.types")  # untyped: pyarrow has no stubs
    if types.is_interval(kind) or types.is_union(kind) or types.is_decimal256(kind):
        return True
    if types.is_struct(kind):
        return any(_arrow_unstorable(kind.field(i).type) for i in range(kind.num_fields))
    if types.is_map(kind):
        return _arrow_unstorable(kind.key_type) or _arrow_unstorable(kind.item_type)
    if types.is_dictionary(kind):
        return _arrow_unstorable(kind.value_type)
    inner = getattr(kind, "value_type", None)  # lists of every kind
    return inner is not None and _arrow_unstorable(inner)


def _check_frame(frame: pl.DataFrame) -> None:
    """Refuse a frame whose names or types a table would not keep as they are."""
    import polars as pl

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
    extended = {
        name: _extension_name(dtype)
        for name, dtype in frame.schema.items()
        if _extension_name(dtype)
    }
    if extended:
        raise InvalidFrame(
            f"columns {extended} have extension types, which a table would store as their bare "
            "storage (a pandas Period as an integer): convert Periods to timestamps "
            "(.dt.to_timestamp()), Intervals to their two bounds and other extension types to "
            "plain ones before saving"
        )
    for name, dtype in frame.schema.items():
        problem = _struct_problem(name, dtype)
        if problem:
            raise InvalidFrame(problem)


def _struct_problem(path: str, dtype: Any) -> str | None:
    """Why a struct in `dtype` (at `path`, nested at any depth) cannot be stored, or None: a
    struct without fields, or fields whose names differ only in case (DuckDB renames one)."""
    import polars as pl

    if isinstance(dtype, pl.List | pl.Array):
        return _struct_problem(f"{path}[]", dtype.inner)
    if not isinstance(dtype, pl.Struct):
        return None
    if not dtype.fields:
        return (
            f"column '{path}' is a struct with no fields, which a table cannot store: give it "
            "a field or drop it before saving"
        )
    names = [field.name for field in dtype.fields]
    folded = [name.casefold() for name in names]
    clashes = sorted(n for n in names if folded.count(n.casefold()) > 1)
    if clashes:
        return (
            f"struct column '{path}' has fields {clashes} that differ only in case, and DuckDB "
            "field names ignore case: rename them before saving"
        )
    for field in dtype.fields:
        problem = _struct_problem(f"{path}.{field.name}", field.dtype)
        if problem:
            return problem
    return None


def _extension_name(dtype: Any) -> str:
    """The name of the first extension type in `dtype` (nested at any depth), or ''."""
    import polars as pl

    if isinstance(dtype, pl.Extension):
        return str(dtype.ext_name())
    if isinstance(dtype, pl.List | pl.Array):
        return _extension_name(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return next((n for f in dtype.fields if (n := _extension_name(f.dtype))), "")
    return ""


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


__all__ = [
    "DUCKDB_ROW_GROUP_ROWS",
    "LoadOutOfMemory",
    "is_disk_full",
    "load_memory_mb",
    "out_of_memory_named",
    "relation_frame",
    "to_polars",
    "write_parquet",
]
