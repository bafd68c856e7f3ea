"""Frames in and out of the store: what a table may hold, Parquet in the store's layout, and
DuckDB results handed to polars. Pure conversion; no database file is involved."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher_pipeline.persistence.errors import (
    InvalidFrame,
    StoreDiskFull,
    StoreFileError,
    UnreadableResult,
    UnsupportedFrameType,
)

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    from duckdb.sqltypes import DuckDBPyType

# DuckDB's row group size. A Parquet file whose row groups are whole multiples of it loads as
# full row groups written during the load; other sizes leave a partial group per file row
# group, which the checkpoint at close must merge and compress again into a larger file.
DUCKDB_ROW_GROUP_ROWS = 122_880


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
                frame = pl.from_pandas(df)
            except Exception as exc:  # noqa: BLE001 - pandas/arrow raise many types here
                raise InvalidFrame(
                    f"the pandas DataFrame cannot be stored ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160]}): give its columns plain types"
                ) from None
        elif module == "pyarrow" and kind == "Table":
            frame = pl.from_arrow(df)  # type: ignore[assignment]  # a Table gives a DataFrame
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


__all__ = [
    "DUCKDB_ROW_GROUP_ROWS",
    "is_disk_full",
    "relation_frame",
    "to_polars",
    "write_parquet",
]
