"""Property-based round trips: a DataFrame saved and loaded back is the DataFrame saved.

"The same" is defined in docs/guarantees.md: equal column names, equal values (NaN equals
NaN, null equals null, row order kept) and equal types after the store's documented type
normalisation (millisecond datetimes load with microsecond precision, time zones load as
UTC, Float16 loads as Float32). The fingerprint depends on content only: equal for a second
save, for the rows in another order, and for the table's Parquet export.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import fingerprint_parquet

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


KINDS: dict[str, tuple[pl.DataType, st.SearchStrategy]] = {
    "i8": (pl.Int8, ints(8, True)),
    "i16": (pl.Int16, ints(16, True)),
    "i32": (pl.Int32, ints(32, True)),
    "i64": (pl.Int64, ints(64, True)),
    "u8": (pl.UInt8, ints(8, False)),
    "u16": (pl.UInt16, ints(16, False)),
    "u32": (pl.UInt32, ints(32, False)),
    "u64": (pl.UInt64, ints(64, False)),
    "f16": (pl.Float16, st.floats(width=16)),
    "f32": (pl.Float32, st.floats(width=32)),
    "f64": (pl.Float64, st.floats()),
    "str": (pl.String, st.text(max_size=20)),
    "bool": (pl.Boolean, st.booleans()),
    "date": (pl.Date, st.dates()),
    "datetime_us": (pl.Datetime("us"), st.datetimes()),
    "datetime_ms": (
        pl.Datetime("ms"),
        st.datetimes().map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    ),
    "datetime_ns": (
        pl.Datetime("ns"),
        st.datetimes(min_value=dt.datetime(1678, 1, 1), max_value=dt.datetime(2261, 12, 31)),
    ),
    "datetime_utc": (
        pl.Datetime("us", "UTC"),
        st.datetimes(timezones=st.just(dt.UTC)),
    ),
    "time": (pl.Time, st.times()),
    "decimal": (
        pl.Decimal(18, 3),
        st.decimals(
            min_value=Decimal("-999999999999999.999"),
            max_value=Decimal("999999999999999.999"),
            places=3,
            allow_nan=False,
            allow_infinity=False,
        ),
    ),
    "binary": (pl.Binary, st.binary(max_size=10)),
    "list_i64": (pl.List(pl.Int64), st.lists(st.none() | ints(64, True), max_size=4)),
    "list_str": (pl.List(pl.String), st.lists(st.none() | st.text(max_size=5), max_size=3)),
    "struct": (
        pl.Struct({"n": pl.Int32, "s": pl.String}),
        st.fixed_dictionaries(
            {"n": st.none() | ints(32, True), "s": st.none() | st.text(max_size=5)}
        ),
    ),
    "null": (pl.Null, st.nothing()),
}

NAMES = st.text(  # any text but NUL, which the store refuses in a column name
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    """A DataFrame of 0-25 rows and 1-4 columns of any supported type, nulls included."""
    rows = draw(st.integers(0, 25))
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique_by=str.casefold))
    columns = []
    for name in names:
        dtype, values = KINDS[draw(st.sampled_from(sorted(KINDS)))]
        cells = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        columns.append(pl.Series(name, cells, dtype=dtype))
    return pl.DataFrame(columns)


def normalised_schema(frame: pl.DataFrame) -> pl.Schema:
    """The schema the store gives back for `frame` (see docs/guarantees.md)."""

    def normal(dtype: pl.DataType) -> pl.DataType:
        if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ms":
            return pl.Datetime("us", dtype.time_zone)
        if dtype == pl.Float16:
            return pl.Float32
        return dtype

    return pl.Schema({name: normal(dtype) for name, dtype in frame.schema.items()})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> PipelineStore:
    return PipelineStore(tmp_path_factory.mktemp("props") / "pipeline.duckdb", lock_timeout=30)


@SETTINGS
@given(frame=frames())
def test_saved_frame_loads_back_equal(store: PipelineStore, frame: pl.DataFrame) -> None:
    row = store.save_dataframe(frame, "probe")
    back = store.load_dataframe("probe")
    assert back.columns == frame.columns
    assert back.schema == normalised_schema(frame)
    assert back.equals(frame)  # NaN == NaN, null == null, same order
    assert row["row_count"] == frame.height
    assert store.fingerprint("probe") == row["fingerprint"]


@SETTINGS
@given(frame=frames(), seed=st.integers(0, 2**32 - 1))
def test_fingerprint_depends_on_content_only(
    store: PipelineStore, tmp_path: Path, frame: pl.DataFrame, seed: int
) -> None:
    first = store.save_dataframe(frame, "probe")["fingerprint"]
    assert store.save_dataframe(frame, "probe")["fingerprint"] == first
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    assert store.save_dataframe(shuffled, "shuffled")["fingerprint"] == first
    export = store.export_parquet("probe", tmp_path / f"probe-{seed}.parquet")
    assert fingerprint_parquet(export) == (first, frame.height)


@SETTINGS
@given(frame=frames(), take=st.integers(0, 5))
def test_append_records_the_fingerprint_of_the_whole_table(
    store: PipelineStore, frame: pl.DataFrame, take: int
) -> None:
    store.save_dataframe(frame, "probe")
    tail = frame.head(take)
    row = store.save_dataframe(tail, "probe", replace=False)
    whole = pl.concat([frame, tail])
    assert row["row_count"] == whole.height
    assert store.fingerprint("probe") == row["fingerprint"]
    assert store.save_dataframe(whole, "whole")["fingerprint"] == row["fingerprint"]
