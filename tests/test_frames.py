"""Frames at the edges: shapes that need more of DuckDB's memory than the default cap, and
frames whose meaning a table would lose (pandas indexes and Periods, struct fields, Arrow
types polars or DuckDB cannot keep), each stored exactly or refused in one line."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import InvalidFrame, PipelineStore
from usher_pipeline.persistence.frames import LoadOutOfMemory
from usher_pipeline.settings import LOAD_MEMORY_MB


def matrix(columns: int, rows: int) -> pl.DataFrame:
    """A gene column and `columns - 1` Float64 columns, as an expression matrix."""
    rng = np.random.default_rng(columns + rows)
    values = rng.random((rows, columns - 1))
    frame = pl.DataFrame(values, schema=[f"s{c}" for c in range(1, columns)])
    return frame.insert_column(0, pl.Series("gene", [f"G{i}" for i in range(rows)]))


def refused(store: PipelineStore, frame: object, *words: str) -> str:
    """Saving `frame` fails with one line of InvalidFrame naming `words`; nothing is kept."""
    with pytest.raises(InvalidFrame) as error:
        store.save_dataframe(frame, "probe")
    message = str(error.value)
    assert isinstance(error.value, UsherError) and "\n" not in message
    for word in words:
        assert word in message
    assert not store.table_exists("probe") and not store.has_checkpoint("probe")
    return message


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "rows"), [(2_000, 1_000), (500, 10_000), (100, 100_000)], ids=str
)
def test_wide_and_long_frames_save_and_load_back_at_the_default_memory(
    db_path: Path, columns: int, rows: int
) -> None:
    store = PipelineStore(db_path)
    assert store.load_memory_mb == LOAD_MEMORY_MB
    frame = matrix(columns, rows)
    row = store.save_dataframe(frame, "matrix")
    assert row["row_count"] == rows
    assert_frame_equal(store.load_dataframe("matrix"), frame)
    assert leftovers(db_path.parent) == []


def test_a_load_out_of_memory_names_the_setting_and_keeps_committed_data(db_path: Path) -> None:
    store = PipelineStore(db_path, load_memory_mb=16)
    store.save_dataframe(pl.DataFrame({"a": [1]}), "kept")
    before = store.fingerprint("kept")
    # one long string repeated: the file's dictionary holds it once, DuckDB every copy
    frame = pl.DataFrame({"a": ["x" * 100_000] * 1_000})
    with pytest.raises(LoadOutOfMemory) as error:
        store.save_dataframe(frame, "long_strings")
    assert "store.load_memory_mb" in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value, UsherError)
    assert not store.table_exists("long_strings") and store.fingerprint("kept") == before
    assert leftovers(db_path.parent) == []


def leftovers(folder: Path) -> list[str]:
    """Files a load left beside the database (a temporary folder, staging files)."""
    keep = {"pipeline.duckdb", "pipeline.duckdb.lock", "pipeline.duckdb.lock.gate"}
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- pandas ---------------------------------------------------------------------------------


def test_pandas_named_index_is_kept_as_a_column(store: PipelineStore) -> None:
    df = pd.DataFrame({"gene": ["MYO7A", "USH2A"], "score": [0.9, 0.8]}).set_index("gene")
    store.save_dataframe(df, "scores")
    back = store.load_dataframe("scores")
    assert back.columns == ["gene", "score"]
    assert back["gene"].to_list() == ["MYO7A", "USH2A"]


def test_pandas_multiindex_is_kept_as_columns(store: PipelineStore) -> None:
    index = pd.MultiIndex.from_tuples([("MYO7A", 1), ("USH2A", 2)], names=["gene", "exon"])
    store.save_dataframe(pd.DataFrame({"score": [0.9, 0.8]}, index=index), "scores")
    expected = pl.DataFrame({"gene": ["MYO7A", "USH2A"], "exon": [1, 2], "score": [0.9, 0.8]})
    assert_frame_equal(store.load_dataframe("scores"), expected)


def test_pandas_unnamed_index_of_labels_is_kept_as_reset_index_names_it(
    store: PipelineStore,
) -> None:
    df = pd.DataFrame({"score": [0.9, 0.8]}, index=["MYO7A", "USH2A"])
    store.save_dataframe(df, "scores")
    assert store.load_dataframe("scores").columns == ["index", "score"]


@pytest.mark.parametrize("filtered", [False, True], ids=["range_index", "filtered_rows"])
def test_pandas_row_numbers_are_not_stored(store: PipelineStore, filtered: bool) -> None:
    df = pd.DataFrame({"score": [0.9, 0.1, 0.8]})
    if filtered:
        df = df[df["score"] > 0.5]  # the index keeps the positions 0 and 2
    store.save_dataframe(df, "scores")
    assert store.load_dataframe("scores").columns == ["score"]


def test_pandas_index_named_like_a_column_is_refused(store: PipelineStore) -> None:
    df = pd.DataFrame({"gene": ["a"], "score": [1.0]}, index=pd.Index(["x"], name="gene"))
    refused(store, df, "gene", "reset_index(drop=True)")


def test_pandas_period_columns_are_refused(store: PipelineStore) -> None:
    df = pd.DataFrame({"month": pd.period_range("2025-01", periods=2, freq="M")})
    refused(store, df, "month", "pandas.period")


def test_pandas_period_index_is_refused(store: PipelineStore) -> None:
    df = pd.DataFrame({"n": [1, 2]}, index=pd.period_range("2025-01", periods=2, freq="M"))
    refused(store, df, "index", "pandas.period")


# -- structs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "A": 2},
        {"x": {"a": 1, "A": 2}},
        [{"a": 1, "A": 2}],
        {"x": [{"k": {"gene": 1, "Gene": 2}}]},
    ],
    ids=["top", "nested_struct", "in_list", "deep"],
)
def test_struct_fields_differing_only_in_case_are_refused(store: PipelineStore, value) -> None:
    refused(store, pl.DataFrame({"s": [value]}), "'s", "differ only in case")


def test_struct_without_fields_is_refused(store: PipelineStore) -> None:
    frame = pl.DataFrame({"s": [{}, {}]}, schema={"s": pl.Struct([])})
    refused(store, frame, "'s'", "no fields")
    nested = pa.table({"s": pa.array([{"e": {}}], pa.struct([("e", pa.struct([]))]))})
    refused(store, nested, "s.e", "no fields")


# -- pyarrow --------------------------------------------------------------------------------


def test_arrow_duplicate_column_names_are_refused(store: PipelineStore) -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    refused(store, table, "duplicate", "'a'")


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()), "interval"),
        (
            pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1]), pa.array(["x"])]),
            "union",
        ),
        (pa.array([Decimal("1.5")], pa.decimal256(40, 1)), "decimal256"),
        (pa.array([Decimal("1.5")], pa.decimal256(10, 1)), "decimal256"),
        (
            pa.array([[pa.MonthDayNano([1, 2, 3])]], pa.list_(pa.month_day_nano_interval())),
            "interval",
        ),
    ],
    ids=["interval", "union", "decimal256", "small_decimal256", "interval_in_list"],
)
def test_arrow_types_a_table_cannot_keep_are_refused(
    store: PipelineStore, column: pa.Array, words: str
) -> None:
    refused(store, pa.table({"c": column}), "'c'", words)


def test_arrow_decimal128_is_kept_exactly(store: PipelineStore) -> None:
    table = pa.table({"d": pa.array([Decimal("12.345")], pa.decimal128(38, 3))})
    store.save_dataframe(table, "decimals")
    assert store.load_dataframe("decimals")["d"].to_list() == [Decimal("12.345")]


# -- LazyFrames -----------------------------------------------------------------------------


def test_lazyframe_that_fails_on_collect_is_one_line(store: PipelineStore) -> None:
    lazy = pl.LazyFrame({"a": ["x", "1"]}).with_columns(pl.col("a").cast(pl.Int64, strict=True))
    refused(store, lazy, "LazyFrame", "collect")


def test_lazyframe_naming_a_missing_column_is_one_line(store: PipelineStore) -> None:
    refused(store, pl.LazyFrame({"a": [1]}).select("b"), "LazyFrame", "ColumnNotFound")


def test_frames_with_dates_and_indexes_still_round_trip(store: PipelineStore) -> None:
    df = pd.DataFrame(
        {"day": [dt.date(2025, 1, 1)], "score": [1.0]}, index=pd.Index(["G1"], name="gene")
    )
    store.save_dataframe(df, "days")
    assert store.load_dataframe("days").columns == ["gene", "day", "score"]
