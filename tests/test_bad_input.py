"""Bad input: every case fails with the exact kind of error and leaves committed data unchanged.

Each test starts from a store that already holds the table `genes` and checks, after the bad
call, that its fingerprint, its checkpoint and the list of tables are what they were. Cases
that the store accepts (empty frames, nulls, nested types, decimals, dates, time zones,
categoricals) check instead that the data come back as documented in docs/guarantees.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import mounted_read_only

from usher_pipeline.config import ConfigError, load_config
from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import PipelineStore, ProvenanceTracker
from usher_pipeline.persistence.errors import (
    InvalidFrame,
    InvalidTableName,
    QueryFailed,
    ReadOnlyQuery,
    SidecarError,
    SidecarNotFound,
    StoreFileError,
    UnsupportedFrameType,
)
from usher_pipeline.workflow import Job, StepLogError, fetch_in_batches, mock_snakemake
from usher_pipeline.workflow.fetch import BatchMismatch, FileLedger
from usher_pipeline.workflow.merge import merge_provenance

REPO = Path(__file__).resolve().parents[1]
GENES = pl.DataFrame({"gene": ["MYO7A", "USH2A", "CDH23"], "score": [0.9, 0.8, 0.7]})


class Committed:
    """A store holding `genes`, and what it looked like before the bad call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "store" / "pipeline.duckdb"
        self.store = PipelineStore(self.db, lock_timeout=10)
        self.fingerprint = self.store.save_dataframe(GENES, "genes")["fingerprint"]
        self.checkpoint = self.store.get_checkpoint("genes")
        self.tables = self.store.list_tables()

    def assert_unchanged(self) -> None:
        store = PipelineStore(self.db, lock_timeout=10)
        assert store.fingerprint("genes") == self.fingerprint
        assert store.get_checkpoint("genes") == self.checkpoint
        assert store.list_tables() == self.tables
        assert [r["table_name"] for r in store.list_checkpoints()] == ["genes"]


@pytest.fixture
def committed(tmp_path: Path) -> Committed:
    return Committed(tmp_path)


# -- table names -----------------------------------------------------------------------------

BAD_NAMES = {
    "space": "gene universe",
    "single_quote": "gene's",
    "double_quote": 'gene"s',
    "sql_injection": "genes; DROP TABLE genes; --",
    "sql_comment": "genes--",
    "unicode_letter": "gènes",
    "unicode_cjk": "基因",
    "emoji": "genes_🧬",
    "over_long": "g" * 64,
    "reserved_checkpoints": "_checkpoints",
    "reserved_provenance": "_provenance",
    "reserved_partial": "_partial_genes",
    "empty": "",
    "leading_digit": "1genes",
    "uppercase": "Genes",
    "trailing_newline": "genes\n",
    "dot": "main.genes",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_bad_table_name_is_refused(committed, name):
    with pytest.raises(InvalidTableName) as error:
        committed.store.save_dataframe(pl.DataFrame({"x": [1]}), name)
    assert type(error.value) is InvalidTableName and "name" in str(error.value)
    committed.assert_unchanged()


@pytest.mark.parametrize("name", [None, 42, b"genes"], ids=["none", "int", "bytes"])
def test_table_name_that_is_not_a_string_is_refused(committed, name):
    with pytest.raises(InvalidTableName):
        committed.store.save_dataframe(pl.DataFrame({"x": [1]}), name)
    committed.assert_unchanged()


def test_longest_allowed_name_is_accepted(committed):
    committed.store.save_dataframe(pl.DataFrame({"x": [1]}), "g" * 63)
    assert committed.store.fingerprint("genes") == committed.fingerprint


# -- frames the store refuses ----------------------------------------------------------------

REFUSED_FRAMES = {
    "zero_columns": (lambda: pl.DataFrame(), InvalidFrame),
    "pandas_zero_columns": (lambda: pd.DataFrame(), InvalidFrame),
    "pandas_duplicate_columns": (
        lambda: pd.DataFrame([[1, 2]], columns=["a", "a"]),
        InvalidFrame,
    ),
    "columns_differing_in_case": (lambda: pl.DataFrame({"A": [1], "a": [2]}), InvalidFrame),
    "empty_column_name": (lambda: pl.DataFrame({"": [1]}), InvalidFrame),
    "nul_in_column_name": (lambda: pl.DataFrame({"a\x00b": [1]}), InvalidFrame),
    "pandas_python_objects": (lambda: pd.DataFrame({"a": [object(), object()]}), InvalidFrame),
    "polars_object_column": (
        lambda: pl.DataFrame({"a": [object()]}, schema={"a": pl.Object}),
        InvalidFrame,
    ),
    "pandas_mixed_types": (lambda: pd.DataFrame({"a": [1, "x"]}), InvalidFrame),
    "duration": (lambda: pl.DataFrame({"a": [dt.timedelta(seconds=5)]}), InvalidFrame),
    "duration_in_list": (lambda: pl.DataFrame({"a": [[dt.timedelta(seconds=5)]]}), InvalidFrame),
    "pandas_timedelta": (lambda: pd.DataFrame({"a": pd.to_timedelta([1, 2], "s")}), InvalidFrame),
    "int128": (lambda: pl.DataFrame({"a": pl.Series([2**100], dtype=pl.Int128)}), InvalidFrame),
    "list_object": (lambda: [1, 2, 3], UnsupportedFrameType),
    "dict_object": (lambda: {"a": [1]}, UnsupportedFrameType),
    "numpy_array": (lambda: np.arange(3), UnsupportedFrameType),
    "polars_series": (lambda: pl.Series("a", [1]), UnsupportedFrameType),
    "pandas_index_named_like_a_column": (
        lambda: pd.DataFrame({"gene": ["a"]}, index=pd.Index(["x"], name="gene")),
        InvalidFrame,
    ),
    "pandas_period": (
        lambda: pd.DataFrame({"m": pd.period_range("2025-01", periods=2, freq="M")}),
        InvalidFrame,
    ),
    "pandas_period_index": (
        lambda: pd.DataFrame({"n": [1]}, index=pd.period_range("2025-01", periods=1, freq="M")),
        InvalidFrame,
    ),
    "pandas_interval": (
        lambda: pd.DataFrame({"i": pd.arrays.IntervalArray.from_breaks([0, 1, 2])}),
        InvalidFrame,
    ),
    "struct_fields_differing_in_case": (
        lambda: pl.DataFrame({"s": [{"a": 1, "A": 2}]}),
        InvalidFrame,
    ),
    "struct_fields_differing_in_case_deep": (
        lambda: pl.DataFrame({"s": [{"x": [{"gene": 1, "Gene": 2}]}]}),
        InvalidFrame,
    ),
    "empty_struct": (lambda: pl.DataFrame({"s": [{}]}, schema={"s": pl.Struct([])}), InvalidFrame),
    "arrow_empty_struct": (
        lambda: pa.table({"s": pa.array([{}], pa.struct([]))}),
        InvalidFrame,
    ),
    "arrow_duplicate_columns": (
        lambda: pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"]),
        InvalidFrame,
    ),
    "arrow_interval": (
        lambda: pa.table({"i": pa.array([pa.MonthDayNano([1, 2, 3])])}),
        InvalidFrame,
    ),
    "arrow_union": (
        lambda: pa.table(
            {"u": pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])])}
        ),
        InvalidFrame,
    ),
    "arrow_decimal256": (
        lambda: pa.table({"d": pa.array([Decimal("1.5")], pa.decimal256(40, 1))}),
        InvalidFrame,
    ),
    "arrow_decimal256_in_struct": (
        lambda: pa.table(
            {"s": pa.array([{"d": Decimal("1")}], pa.struct([("d", pa.decimal256(10, 0))]))}
        ),
        InvalidFrame,
    ),
    "lazyframe_failing_cast": (
        lambda: pl.LazyFrame({"a": ["x"]}).with_columns(pl.col("a").cast(pl.Int64)),
        InvalidFrame,
    ),
    "lazyframe_missing_column": (lambda: pl.LazyFrame({"a": [1]}).select("b"), InvalidFrame),
}


@pytest.mark.parametrize("case", REFUSED_FRAMES.values(), ids=REFUSED_FRAMES.keys())
def test_frame_the_store_cannot_keep_is_refused(committed, case):
    make, kind = case
    with pytest.raises(kind) as error:
        committed.store.save_dataframe(make(), "genes")
    assert type(error.value) is kind and isinstance(error.value, UsherError)
    assert "\n" not in str(error.value)  # one sentence
    committed.assert_unchanged()


def test_append_with_other_columns_is_refused(committed):
    with pytest.raises(InvalidFrame):
        committed.store.save_dataframe(pl.DataFrame({"other": [1]}), "genes", replace=False)
    committed.assert_unchanged()


REFUSED_APPENDS = {
    "string_into_float": ({"gene": ["X"], "score": ["0.5"]}, "column 'score' is VARCHAR"),
    "integer_into_float": ({"gene": ["X"], "score": [1]}, "column 'score' is BIGINT"),
    "boolean_into_float": ({"gene": ["X"], "score": [True]}, "column 'score' is BOOLEAN"),
    "list_into_string": ({"gene": [["X"]], "score": [0.5]}, "column 'gene' is VARCHAR[]"),
    "struct_into_string": ({"gene": [{"a": "X"}], "score": [0.5]}, "column 'gene' is STRUCT"),
    "date_into_string": ({"gene": [dt.date(2025, 1, 1)], "score": [0.5]}, "column 'gene' is DATE"),
    "missing_column": ({"gene": ["X"]}, "lack its column 'score'"),
    "extra_column": ({"gene": ["X"], "score": [0.5], "n": [1]}, "have column 'n'"),
    "column_differing_in_case": ({"Gene": ["X"], "score": [0.5]}, "have column 'Gene'"),
}


@pytest.mark.parametrize("case", REFUSED_APPENDS.values(), ids=REFUSED_APPENDS.keys())
def test_append_that_would_change_a_value_or_a_column_is_refused(committed, case):
    columns, fragment = case
    with pytest.raises(InvalidFrame) as error:
        committed.store.save_dataframe(pl.DataFrame(columns), "genes", replace=False)
    assert type(error.value) is InvalidFrame and "\n" not in str(error.value)
    assert fragment in str(error.value) and "replace=True" in str(error.value)
    committed.assert_unchanged()


def test_pandas_append_of_strings_into_a_float_column_is_refused(committed):
    frame = pd.DataFrame({"gene": ["X"], "score": ["0.5"]})
    with pytest.raises(InvalidFrame, match="column 'score' is VARCHAR in the new rows but DOUBLE"):
        committed.store.save_dataframe(frame, "genes", replace=False)
    committed.assert_unchanged()


# -- fetch batches that cannot combine -------------------------------------------------------

BAD_BATCHES = {
    "fraction_after_whole_numbers": (pl.DataFrame({"key": [2], "value": [3.75]}), "as Float64"),
    "string_after_numbers": (pl.DataFrame({"key": [2], "value": ["2"]}), "as String"),
    "list_after_numbers": (pl.DataFrame({"key": [2], "value": [[2]]}), "as List(Int64)"),
    "missing_column": (pl.DataFrame({"key": [2]}), "lacks column 'value'"),
    "extra_column": (pl.DataFrame({"key": [2], "value": [2], "x": [0]}), "has column 'x'"),
}


@pytest.mark.parametrize("case", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_fetch_batch_that_cannot_combine_stops_the_fetch_at_that_batch(committed, tmp_path, case):
    later, fragment = case
    calls: list[int] = []

    def fetch(keys: list[int]) -> pl.DataFrame:
        calls.append(keys[0])
        return later if keys[0] == 2 else pl.DataFrame({"key": keys, "value": keys})

    ledger = FileLedger(tmp_path / "partial" / "things")
    with pytest.raises(BatchMismatch) as error:
        fetch_in_batches(list(range(5)), fetch, ledger=ledger, batch_size=1, label="things")
    message = str(error.value)
    assert type(error.value) is BatchMismatch and isinstance(error.value, UsherError)
    assert message.startswith("things: batch 3 of 5 (key 2) ") and fragment in message
    assert "\n" not in message
    assert calls == [0, 1, 2]  # no batch after it was fetched
    assert len(ledger.committed()) == 2  # the committed batches stay
    committed.assert_unchanged()


# -- queries ---------------------------------------------------------------------------------

BAD_QUERIES = {
    "drop": ("DROP TABLE genes", ReadOnlyQuery),
    "insert": ("INSERT INTO genes VALUES ('X', 0.1)", ReadOnlyQuery),
    "checkpoint_delete": ("DELETE FROM _checkpoints", ReadOnlyQuery),
    "after_a_select": ("SELECT 1; DROP TABLE genes", ReadOnlyQuery),
    "syntax": ("SELEC * FROM genes", QueryFailed),
    "missing_table": ("SELECT * FROM nope", QueryFailed),
    "missing_column": ("SELECT nope FROM genes", QueryFailed),
    "missing_parameter": ("SELECT * FROM genes WHERE score > ?", QueryFailed),
    "copy_to_a_file": ("COPY (SELECT 1) TO '/nonexistent/x.csv'", ReadOnlyQuery),
    "install_an_extension": ("INSTALL httpfs", ReadOnlyQuery),
    "load_an_extension": ("LOAD httpfs", ReadOnlyQuery),
    "attach_a_database": ("ATTACH '/nonexistent/other.duckdb' AS other", ReadOnlyQuery),
    "export_the_database": ("EXPORT DATABASE '/nonexistent/dump'", ReadOnlyQuery),
    "read_another_file": ("SELECT * FROM read_text('/etc/hostname')", QueryFailed),
}


@pytest.mark.parametrize("case", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_query_that_writes_or_fails_is_refused_in_one_sentence(committed, case):
    sql, kind = case
    with pytest.raises(kind) as error:
        committed.store.query(sql)
    assert type(error.value) is kind and isinstance(error.value, UsherError)
    assert "\n" not in str(error.value)
    committed.assert_unchanged()


# -- frames the store accepts, with the documented result -------------------------------------


def roundtrip(committed: Committed, frame: object, name: str = "probe") -> pl.DataFrame:
    """Save `frame` as a new table, check the committed table did not move, load it back."""
    row = committed.store.save_dataframe(frame, name)
    committed.store.fingerprint("genes")
    assert committed.store.fingerprint("genes") == committed.fingerprint
    assert committed.store.fingerprint(name) == row["fingerprint"]
    return committed.store.load_dataframe(name)


def test_empty_frame_is_allowed_and_keeps_its_schema(committed):
    empty = pl.DataFrame(schema={"gene": pl.String, "score": pl.Float64, "n": pl.Int32})
    back = roundtrip(committed, empty)
    assert back.height == 0 and back.schema == empty.schema
    assert committed.store.get_checkpoint("probe")["row_count"] == 0
    row = pl.DataFrame({"gene": ["X"], "score": [1.0], "n": pl.Series([1], dtype=pl.Int8)})
    committed.store.save_dataframe(row, "probe", replace=False)  # Int8 widens into Int32
    assert committed.store.load_dataframe("probe").schema == empty.schema  # the kept schema
    with pytest.raises(InvalidFrame, match="column 'n' is BIGINT in the new rows but INTEGER"):
        committed.store.save_dataframe(row.cast({"n": pl.Int64}), "probe", replace=False)
    assert committed.store.load_dataframe("probe").height == 1


def test_null_only_columns_round_trip(committed):
    frame = pl.DataFrame({"gene": ["A", "B"], "nothing": [None, None]})
    back = roundtrip(committed, frame)
    assert back.schema["nothing"] == pl.Null and back["nothing"].null_count() == 2
    typed = pl.DataFrame({"x": pl.Series([None, None], dtype=pl.Int16)})
    assert roundtrip(committed, typed, "typed").schema["x"] == pl.Int16


def test_pandas_all_none_column_becomes_strings_of_nulls(committed):
    back = roundtrip(committed, pd.DataFrame({"a": [None, None]}))
    assert back.schema["a"] == pl.String and back["a"].null_count() == 2


def test_nested_lists_and_structs_round_trip(committed):
    frame = pl.DataFrame(
        {
            "terms": [["HP:0000365", "HP:0000479"], [], None],
            "hit": [{"term": "HP:0000365", "depth": 3}, None, {"term": None, "depth": 1}],
            "deep": [[[1, 2], [3]], [[]], None],
        }
    )
    assert roundtrip(committed, frame).equals(frame)


def test_fixed_size_arrays_load_back_as_lists(committed):
    frame = pl.DataFrame({"a": pl.Series([[1, 2], [3, 4]], dtype=pl.Array(pl.Int64, 2))})
    back = roundtrip(committed, frame)
    assert back.schema["a"] == pl.List(pl.Int64)
    assert back["a"].to_list() == [[1, 2], [3, 4]]


def test_decimals_round_trip_exactly(committed):
    values = [Decimal("1.25"), Decimal("-99999999.99"), None]
    frame = pl.DataFrame({"d": pl.Series(values, dtype=pl.Decimal(10, 2))})
    back = roundtrip(committed, frame)
    assert back.schema["d"] == pl.Decimal(10, 2) and back["d"].to_list() == values


def test_dates_and_naive_datetimes_round_trip(committed):
    frame = pl.DataFrame(
        {
            "day": [dt.date(1900, 1, 1), dt.date(2026, 11, 29), None],
            "at": [dt.datetime(1970, 1, 1), dt.datetime(2026, 11, 29, 12, 30, 1, 123456), None],
            "clock": [dt.time(0, 0), dt.time(23, 59, 59, 999999), None],
        }
    )
    assert roundtrip(committed, frame).equals(frame)


def test_time_zone_aware_datetimes_keep_their_instant_and_load_in_utc(committed):
    paris = pl.DataFrame(
        {"at": [dt.datetime(2026, 3, 29, 1, 30), dt.datetime(2026, 10, 25, 2, 30)]}
    ).with_columns(pl.col("at").dt.replace_time_zone("Europe/Paris", ambiguous="earliest"))
    back = roundtrip(committed, paris)
    assert back.schema["at"] == pl.Datetime("us", "UTC")
    assert back["at"].to_list() == paris["at"].dt.convert_time_zone("UTC").to_list()


def test_pandas_time_zone_column_keeps_its_instant(committed):
    frame = pd.DataFrame({"at": pd.to_datetime(["2026-01-01 12:00"]).tz_localize("US/Eastern")})
    back = roundtrip(committed, frame)
    assert back["at"][0] == dt.datetime(2026, 1, 1, 17, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "column",
    [
        pl.Series("tier", ["HIGH", "LOW", None, "HIGH"], dtype=pl.Categorical),
        pl.Series("tier", ["HIGH", "LOW", None, "HIGH"], dtype=pl.Enum(["HIGH", "MEDIUM", "LOW"])),
    ],
    ids=["categorical", "enum"],
)
def test_categoricals_load_back_as_their_strings(committed, column):
    back = roundtrip(committed, column.to_frame())
    assert back.schema["tier"] == pl.String
    assert back["tier"].to_list() == ["HIGH", "LOW", None, "HIGH"]


def test_pandas_categorical_loads_back_as_strings(committed):
    back = roundtrip(committed, pd.DataFrame({"tier": pd.Categorical(["HIGH", "LOW", "HIGH"])}))
    assert back["tier"].to_list() == ["HIGH", "LOW", "HIGH"]


def test_column_names_with_spaces_quotes_and_unicode_round_trip(committed):
    frame = pl.DataFrame({"gene symbol": ["A"], 'say "hi"': [1], "gène": [2.0], "it's": [True]})
    assert roundtrip(committed, frame).equals(frame)


# -- config ------------------------------------------------------------------------------------

VALID = (REPO / "config" / "config.yaml").read_text()
HPO_LINE = 'hpo: "2025-01-16"'
# the upstream weights an older config carries: ignored, but still checked when given
SCORING = "\nscoring:\n  gnomad: 0.20\n  expression: 0.20\n  annotation: 0.15\n" + (
    "  localization: 0.15\n  animal_model: 0.15\n  literature: 0.15\n"
)


def config_case(tmp_path: Path, text: str | None) -> Path:
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    return path


CONFIG_CASES = {
    "missing_file": (None, "does not exist"),
    "yaml_syntax_error": ("versions: {ensembl_release: 113\nscoring: [", "not valid YAML"),
    "empty_file": ("", "empty"),
    "top_level_list": ("- a\n- b\n", "mapping"),
    "unknown_key": (VALID + "\nsurprise: 1\n", "surprise"),
    "misspelt_nested_key": (VALID.replace("max_retries", "max_retry"), "max_retry"),
    "wrong_type": (
        VALID.replace(HPO_LINE, "ensembl_release: latest"),
        "ensembl_release",
    ),
    "weights_do_not_sum_to_one": (
        VALID + SCORING.replace("gnomad: 0.20", "gnomad: 0.30"),
        "sum to",
    ),
    "layer_weights_do_not_sum_to_one": (VALID.replace("weight: 0.4", "weight: 0.5"), "sum to"),
    "negative_rate_limit": (
        VALID.replace("rate_limit_per_second: 5", "rate_limit_per_second: -5"),
        "rate_limit_per_second",
    ),
    "negative_lock_timeout": (
        VALID.replace("lock_timeout_seconds: 120.0", "lock_timeout_seconds: -1"),
        "lock_timeout_seconds",
    ),
    "negative_weight": (
        VALID + SCORING.replace("gnomad: 0.20", "gnomad: -0.20"),
        "gnomad",
    ),
    "ensembl_release_below_100": (
        VALID.replace(HPO_LINE, "ensembl_release: 99"),
        "ensembl_release",
    ),
    "bad_database_mode": (
        VALID.replace("database_mode: job", "database_mode: both"),
        "database_mode",
    ),
    "key_given_twice": (VALID + "\nduckdb_path: other.duckdb\n", "'duckdb_path' twice"),
    "section_given_twice": (VALID + "\napi:\n  max_retries: 2\n", "'api' twice"),
    "infinite_lock_timeout": (
        VALID.replace("lock_timeout_seconds: 120.0", "lock_timeout_seconds: .inf"),
        "lock_timeout_seconds",
    ),
    "lock_timeout_over_a_week": (
        VALID.replace("lock_timeout_seconds: 120.0", "lock_timeout_seconds: 1e10"),
        "lock_timeout_seconds",
    ),
    "infinite_batch_latency": (
        VALID.replace("batch_latency_seconds: 0.05", "batch_latency_seconds: .inf"),
        "batch_latency_seconds",
    ),
    "load_memory_over_1_tb": (
        VALID.replace("load_memory_mb: 128", "load_memory_mb: 100000000000000000000"),
        "load_memory_mb",
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_bad_config_is_refused_with_the_reason(committed, tmp_path, case):
    text, words = case
    path = config_case(tmp_path, text)
    assert text is None or text != VALID
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert type(error.value) is ConfigError
    message = str(error.value)
    assert str(path) in message and words in message
    committed.assert_unchanged()


def test_the_shipped_config_is_valid():
    assert load_config(REPO / "config" / "config.yaml").data_source_versions() == {
        "hpo": "2025-01-16"
    }


# -- the store's file ------------------------------------------------------------------------


def test_store_path_that_is_a_directory_is_refused(committed, tmp_path):
    folder = tmp_path / "adir.duckdb"
    folder.mkdir()
    with pytest.raises(StoreFileError) as error:
        PipelineStore(folder)
    assert str(folder) in str(error.value)
    committed.assert_unchanged()


def test_store_file_that_is_not_duckdb_is_refused_and_left_alone(committed, tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("gene\tscore\nMYO7A\t0.9\n")
    with pytest.raises(StoreFileError) as error:
        PipelineStore(path).list_checkpoints()
    assert str(path) in str(error.value)
    with pytest.raises(StoreFileError):
        PipelineStore(path).save_dataframe(GENES, "genes")
    assert path.read_text() == "gene\tscore\nMYO7A\t0.9\n"
    committed.assert_unchanged()


@pytest.mark.parametrize("keep", [0.5, 4096, 100], ids=["half", "header_only", "100_bytes"])
def test_truncated_store_file_is_reported_not_misread(committed, tmp_path, keep):
    copy = tmp_path / "copy.duckdb"
    shutil.copy(committed.db, copy)
    size = copy.stat().st_size
    os.truncate(copy, int(size * keep) if isinstance(keep, float) else keep)
    with pytest.raises(StoreFileError) as error:
        store = PipelineStore(copy)
        store.load_dataframe("genes")
        store.save_dataframe(GENES, "more")  # a truncation that spares the table's pages
    assert str(copy) in str(error.value) and "repair" in str(error.value)
    committed.assert_unchanged()


@pytest.fixture
def read_only_store(committed):
    """The committed store's folder, made read-only."""
    with mounted_read_only(committed.db.parent):
        yield committed


def test_store_on_a_read_only_folder_refuses_writes_and_still_reads(read_only_store):
    committed = read_only_store
    store = PipelineStore(committed.db, lock_timeout=5)
    with pytest.raises(StoreFileError) as error:
        store.save_dataframe(pl.DataFrame({"x": [1]}), "genes")
    assert str(committed.db.parent) in str(error.value) and "writable" in str(error.value)
    with pytest.raises(StoreFileError):
        store.delete_checkpoint("genes")
    assert store.load_dataframe("genes").sort("gene").equals(GENES.sort("gene"))
    assert store.fingerprint("genes") == committed.fingerprint


def test_store_in_a_folder_that_cannot_be_created_is_refused(read_only_store):
    target = read_only_store.db.parent / "sub" / "pipeline.duckdb"
    with pytest.raises(StoreFileError) as error:
        PipelineStore(target)
    assert str(target.parent) in str(error.value)


# -- the store's file: damage, permissions, names, other formats ------------------------------


def corrupt_copy(tmp_path: Path) -> tuple[Path, pl.DataFrame]:
    """A database holding a table of many blocks, with bytes flipped in its middle; the frame."""
    path = tmp_path / "damaged.duckdb"
    n = 400_000  # strings that do not compress: the table spans many blocks
    frame = pl.DataFrame({"i": range(n), "s": [f"{i * 2654435761 % 2**32:x}" for i in range(n)]})
    PipelineStore(path).save_dataframe(frame, "big")
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(size // 2)
        chunk = handle.read(4096)
        handle.seek(size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    return path, frame


def test_corrupt_block_is_a_file_error_naming_repair_in_every_operation(committed, tmp_path):
    path, frame = corrupt_copy(tmp_path)
    with duckdb.connect(str(path), read_only=True) as raw, pytest.raises(duckdb.Error) as raw_error:
        raw.sql("SELECT sum(i), count(DISTINCT s) FROM big").fetchall()
    assert "checksum" in str(raw_error.value)  # the damage DuckDB finds on reading
    store = PipelineStore(path)
    operations = {
        "load": lambda: store.load_dataframe("big"),
        "fingerprint": lambda: store.fingerprint("big"),
        "query": lambda: store.query("SELECT count(DISTINCT s) FROM big"),
        "export": lambda: store.export_parquet("big", tmp_path / "big.parquet"),
        "append": lambda: store.save_dataframe(frame.head(1), "big", replace=False),
    }
    for name, operation in operations.items():
        with pytest.raises(StoreFileError) as error:
            operation()
        message = str(error.value)
        assert str(path) in message and "usher-pipeline repair" in message, (name, message)
        assert "\n" not in message
    committed.assert_unchanged()


SQLITE_OPEN = """
import sys
from pathlib import Path
from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.errors import StoreFileError
try:
    PipelineStore(sys.argv[1]).list_tables()
except StoreFileError as exc:
    print(exc)
"""


def test_sqlite_file_named_duckdb_is_refused_without_fetching_an_extension(committed, tmp_path):
    import sqlite3

    path = tmp_path / "x.duckdb"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE genes (gene TEXT)")
    before = path.read_bytes()
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_OPEN, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert str(path) in message and "SQLite" in message and "\n" not in message
    assert list(home.iterdir()) == []  # no extension directory: nothing was installed
    assert path.read_bytes() == before
    committed.assert_unchanged()


def test_database_name_too_long_for_the_file_system_is_one_line(committed, tmp_path):
    path = tmp_path / ("g" * 300 + ".duckdb")
    with pytest.raises(StoreFileError) as error:
        PipelineStore(path)
    message = str(error.value)
    assert "long" in message and "duckdb_path" in message and "\n" not in message
    committed.assert_unchanged()


def test_database_name_that_leaves_no_room_for_the_store_suffixes_is_refused(committed, tmp_path):
    path = tmp_path / ("g" * 240 + ".duckdb")  # fits alone, not with `.lock.gate` or staging
    with pytest.raises(StoreFileError, match="bytes"):
        PipelineStore(path)
    assert not path.exists()
    committed.assert_unchanged()


@pytest.fixture
def read_only_file():
    """Bind-mount a file read-only over itself (root only); the folder stays writable."""
    mounted: list[Path] = []

    def make(path: Path) -> Path:
        for step in (
            ["mount", "--bind", str(path), str(path)],
            ["mount", "-o", "remount,bind,ro", str(path)],
        ):
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"cannot make {path} read-only ({done.stderr.strip()}): run as root")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_lock_file_names_the_file_not_the_folder(committed, read_only_file):
    lock = read_only_file(committed.db.with_name(committed.db.name + ".lock"))
    with pytest.raises(StoreFileError) as error:
        committed.store.save_dataframe(pl.DataFrame({"x": [1]}), "more")
    message = str(error.value)
    assert f"lock file {lock}" in message and "chmod" in message
    assert f"make {lock.parent} writable" not in message
    assert committed.store.load_dataframe("genes").height == 3  # reading still works
    committed.assert_unchanged()


def test_read_only_database_file_says_so_and_names_chmod(committed, read_only_file):
    read_only_file(committed.db)
    with pytest.raises(StoreFileError) as error:
        committed.store.save_dataframe(pl.DataFrame({"x": [1]}), "more")
    message = str(error.value)
    assert str(committed.db) in message and "read-only" in message and "chmod" in message
    assert "repair" not in message and "\n" not in message
    assert committed.store.fingerprint("genes") == committed.fingerprint
    committed.assert_unchanged()


def test_query_cannot_write_files_or_install_extensions(committed, tmp_path):
    sentinel = tmp_path / "sentinel.parquet"
    sentinel.write_bytes(b"kept")
    target = tmp_path / "x.csv"
    for sql in (
        f"COPY (SELECT 1) TO '{target}'",
        f"COPY genes TO '{sentinel}' (FORMAT parquet)",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        f"EXPORT DATABASE '{tmp_path / 'dump'}'",
        f"SELECT 1; COPY genes TO '{target}'",
    ):
        for scope in ("alone", "transaction"):
            with pytest.raises(ReadOnlyQuery) as error:
                if scope == "alone":
                    committed.store.query(sql)
                else:
                    with committed.store.transaction():
                        committed.store.query(sql)
            assert "\n" not in str(error.value)
    assert not target.exists() and sentinel.read_bytes() == b"kept"
    assert not (tmp_path / "other.duckdb").exists() and not (tmp_path / "dump").exists()
    with pytest.raises(QueryFailed):  # a SELECT cannot reach other files either
        committed.store.query(f"SELECT * FROM read_text('{sentinel}')")
    committed.assert_unchanged()


# -- provenance inputs -------------------------------------------------------------------------


def job_steplog(root: Path, table: str, db: Path) -> Path:
    """Run a real job saving `table`; its step log path."""
    steplog = root / "results" / "steplogs" / f"{table}.json"
    smk = mock_snakemake(
        "make",
        output={"table": root / "results" / "tables" / f"{table}.parquet", "steplog": steplog},
        config={"duckdb_path": str(db), "store": {"lock_timeout_seconds": 10}},
    )
    with Job(smk) as job:
        job.save(GENES)
    return steplog


def merge(steplogs: list[Path], committed: Committed) -> dict:
    return merge_provenance(
        steplogs,
        pipeline_version="test",
        store=committed.store,
    )


@pytest.mark.parametrize(
    "damage",
    ["missing", "not_json", "truncated_json", "not_a_steplog", "lacks_outputs"],
)
def test_bad_step_log_stops_the_merge_naming_the_file(committed, tmp_path, damage):
    good = job_steplog(tmp_path, "good", committed.db)
    committed.tables = committed.store.list_tables()
    committed.checkpoint = committed.store.get_checkpoint("genes")
    bad = job_steplog(tmp_path, "bad", committed.db)
    committed.tables = committed.store.list_tables()
    text = bad.read_text()
    if damage == "missing":
        bad.unlink()
    elif damage == "not_json":
        bad.write_text("rule: bad\n")
    elif damage == "truncated_json":
        bad.write_text(text[: len(text) // 2])
    elif damage == "not_a_steplog":
        bad.write_text(json.dumps({"hello": "world"}))
    else:
        record = json.loads(text)
        del record["outputs"]
        bad.write_text(json.dumps(record))
    with pytest.raises(StepLogError) as error:
        merge([good, bad], committed)
    assert str(bad) in str(error.value)
    sidecar = tmp_path / "results" / "tables" / "good.provenance.json"
    assert not sidecar.exists()  # nothing half-merged
    assert committed.store.execute_query("SELECT count(*) AS n FROM _provenance")["n"][0] == 0
    assert committed.store.fingerprint("genes") == committed.fingerprint


@pytest.mark.parametrize("damage", ["missing", "not_json", "not_an_object", "binary"])
def test_bad_sidecar_is_reported_naming_the_file(committed, tmp_path, damage):
    output = tmp_path / "out.parquet"
    sidecar = tmp_path / "out.provenance.json"
    ProvenanceTracker("test").save_sidecar(output)
    assert ProvenanceTracker.load_sidecar(output)["pipeline_version"] == "test"
    expected = SidecarError
    if damage == "missing":
        sidecar.unlink()
        expected = SidecarNotFound
    elif damage == "not_json":
        sidecar.write_text("{not json")
    elif damage == "not_an_object":
        sidecar.write_text("[1, 2]")
    else:
        sidecar.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(expected) as error:
        ProvenanceTracker.load_sidecar(output)
    assert str(sidecar) in str(error.value)
    committed.assert_unchanged()


# -- recovery and exports of a run -----------------------------------------------------------


def big_table_run(root: Path) -> tuple[Path, Path]:
    """A run of one real job saving a table of many blocks: (results folder, database)."""
    db = root / "results" / "pipeline.duckdb"
    n = 400_000  # strings that do not compress: the table spans many blocks
    frame = pl.DataFrame({"i": range(n), "s": [f"{i * 2654435761 % 2**32:x}" for i in range(n)]})
    smk = mock_snakemake(
        "make",
        output={
            "table": root / "results" / "tables" / "big.parquet",
            "steplog": root / "results" / "steplogs" / "big.json",
        },
        config={"duckdb_path": str(db), "store": {"lock_timeout_seconds": 10}},
    )
    with Job(smk) as job:
        job.save(frame)
    return root / "results", db


def test_verify_and_repair_of_a_database_with_a_damaged_block(committed, tmp_path):
    from usher_pipeline.audit import repair, verify
    from usher_pipeline.export.run import load_run

    results, db = big_table_run(tmp_path / "run")
    fingerprint = PipelineStore(db).fingerprint("big")
    size = db.stat().st_size
    with db.open("r+b") as handle:
        handle.seek(size // 2)
        chunk = handle.read(4096)
        handle.seek(size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    damaged = db.read_bytes()
    run = load_run(results)
    problems = verify(run, db).problems
    assert [p.kind for p in problems] == ["DATABASE"]
    assert f"database {db} is damaged" in problems[0].message
    assert "`usher-pipeline repair`" in problems[0].message and "\n" not in problems[0].message
    result = repair(run, db)
    assert result.moved_aside is not None and result.moved_aside.read_bytes() == damaged
    assert PipelineStore(db).fingerprint("big") == fingerprint
    assert verify(run, db).ok
    committed.assert_unchanged()


def test_exports_onto_a_directory_or_into_a_read_only_folder_write_nothing(
    read_only_store, tmp_path
):
    from usher_pipeline.export.prov import ProvWriteError, write_prov
    from usher_pipeline.export.rocrate import CrateError, write_rocrate
    from usher_pipeline.export.run import load_run

    root = tmp_path / "run"
    job_steplog(root, "made", root / "results" / "pipeline.duckdb")
    run = load_run(root / "results")
    folder = read_only_store.db.parent
    held = sorted(p.name for p in folder.iterdir())
    cases = {
        "prov_onto_a_directory": (
            lambda: write_prov(run, root),
            ProvWriteError,
            f"{root} is a directory",
        ),
        "prov_into_a_read_only_folder": (
            lambda: write_prov(run, folder / "run.prov.json"),
            ProvWriteError,
            f"make {folder} writable",
        ),
        "crate_into_a_read_only_folder": (
            lambda: write_rocrate(run, folder / "crate", snakefile=REPO / "Snakefile"),
            CrateError,
            f"make {folder} writable",
        ),
    }
    for name, (call, kind, words) in cases.items():
        with pytest.raises(kind) as error:
            call()
        message = str(error.value)
        assert words in message and "\n" not in message, (name, message)
    assert sorted(p.name for p in folder.iterdir()) == held
    read_only_store.assert_unchanged()
