"""Tests of PipelineStore in one process: tables, checkpoints, names, appends, transactions,
fingerprints, Parquet exports and queries, on real DuckDB files."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from usher_pipeline.config import PipelineConfig, validate_config_dict
from usher_pipeline.errors import UsherError
from usher_pipeline.persistence import (
    DatabaseNotFound,
    InvalidFrame,
    InvalidTableName,
    PipelineStore,
    QueryFailed,
    ReadOnlyQuery,
    StoreError,
    TableNotFound,
    UnreadableResult,
    UnsupportedFrameType,
)
from usher_pipeline.persistence.duckdb_store import (
    CHECKPOINT_COLUMNS,
    DUCKDB_ROW_GROUP_ROWS,
    MAX_NAME_LENGTH,
    relation_frame,
    validate_table_name,
)
from usher_pipeline.persistence.fingerprint import fingerprint_parquet


def genes(n: int = 5, offset: int = 0) -> pl.DataFrame:
    """A small frame of the kind the pipeline stores, with several column types and a null."""
    ids = list(range(offset, offset + n))
    return pl.DataFrame(
        {
            "gene_id": [f"ENSG{i:011d}" for i in ids],
            "score": [i / 10 for i in ids],
            "n_terms": ids,
            "is_candidate": [i % 2 == 0 for i in ids],
            "symbol": [None if i == offset else f"GENE{i}" for i in ids],
            "released": [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in ids],
            "terms": [[f"HP:{i:07d}"] * (i % 3) for i in ids],
        }
    )


def raw_tables(db_path: Path) -> set[str]:
    """Every table in the database file, read without the store."""
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return {row[0] for row in conn.sql("SELECT table_name FROM duckdb_tables()").fetchall()}


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Names in `folder` other than `keep` (temporary files a write should have removed)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- the plan's tests -----------------------------------------------------------------------


def test_store_creates_database(tmp_path: Path) -> None:
    db_path = tmp_path / "nested" / "deeper" / "pipeline.duckdb"
    store = PipelineStore(db_path)
    assert db_path.is_file()
    assert "_checkpoints" in raw_tables(db_path)
    with duckdb.connect(str(db_path), read_only=True) as conn:
        columns = [r[0] for r in conn.sql("DESCRIBE _checkpoints").fetchall()]
        keys = conn.sql(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = '_checkpoints' AND constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    assert columns[:4] == ["table_name", "created_at", "row_count", "description"]
    assert {"fingerprint", "config_hash"} <= set(columns)
    assert keys == [(["table_name"],)]
    assert store.list_checkpoints() == []


def test_save_and_load_polars(store: PipelineStore) -> None:
    frame = genes(7)
    row = store.save_dataframe(frame, "gene_universe", description="all genes")
    assert row["row_count"] == 7
    loaded = store.load_dataframe("gene_universe")
    assert isinstance(loaded, pl.DataFrame)
    assert_frame_equal(loaded, frame)


def test_save_and_load_pandas(store: PipelineStore) -> None:
    frame = pd.DataFrame(
        {"gene_id": ["ENSG1", "ENSG2", "ENSG3"], "score": [0.5, 0.25, 1.0], "rank": [3, 2, 1]}
    )
    store.save_dataframe(frame, "scores")
    loaded = store.load_dataframe("scores", as_polars=False)
    assert isinstance(loaded, pd.DataFrame)
    assert list(loaded.columns) == ["gene_id", "score", "rank"]
    assert loaded["gene_id"].tolist() == ["ENSG1", "ENSG2", "ENSG3"]
    assert loaded["score"].tolist() == [0.5, 0.25, 1.0]
    assert loaded["rank"].tolist() == [3, 2, 1]
    assert str(loaded["rank"].dtype) == "int64"


def test_checkpoint_lifecycle(store: PipelineStore) -> None:
    assert not store.has_checkpoint("evidence")
    assert store.get_checkpoint("evidence") is None
    store.save_dataframe(genes(4), "evidence", description="hearing evidence")
    assert store.has_checkpoint("evidence")
    checkpoint = store.get_checkpoint("evidence")
    assert checkpoint is not None
    assert checkpoint["row_count"] == 4
    assert checkpoint["description"] == "hearing evidence"
    assert store.delete_checkpoint("evidence") is True
    assert not store.has_checkpoint("evidence")
    assert store.load_dataframe("evidence") is None
    assert "evidence" not in raw_tables(store.db_path)
    assert store.delete_checkpoint("evidence") is False


def test_list_checkpoints(store: PipelineStore) -> None:
    store.save_dataframe(genes(3), "zeta", description="last")
    store.save_dataframe(genes(1), "alpha", description="first")
    store.save_dataframe(genes(2), "mid")
    checkpoints = store.list_checkpoints()
    assert isinstance(checkpoints, list)
    assert all(isinstance(c, dict) for c in checkpoints)
    assert [c["table_name"] for c in checkpoints] == ["alpha", "mid", "zeta"]
    assert [c["row_count"] for c in checkpoints] == [1, 2, 3]
    assert [c["description"] for c in checkpoints] == ["first", "", "last"]
    assert all(set(c) == set(CHECKPOINT_COLUMNS) for c in checkpoints)
    assert all(isinstance(c["created_at"], dt.datetime) for c in checkpoints)
    assert store.list_tables() == ["alpha", "mid", "zeta"]


def test_export_parquet(store: PipelineStore, tmp_path: Path) -> None:
    frame = genes(6)
    store.save_dataframe(frame, "gene_universe")
    target = tmp_path / "exports" / "gene_universe.parquet"
    written = store.export_parquet("gene_universe", target)
    assert Path(written) == target
    assert_frame_equal(pl.read_parquet(target), frame)
    assert leftovers(target.parent, {"gene_universe.parquet"}) == []


def test_large_table_loads_as_full_row_groups(store: PipelineStore) -> None:
    # Parquet row groups of another size leave a partial DuckDB row group per file row group,
    # which the checkpoint at close merges and compresses again (and the file grows)
    n = 3 * DUCKDB_ROW_GROUP_ROWS + 1000
    frame = pl.DataFrame({"gene": pl.int_range(n, eager=True), "score": pl.Series([0.5] * n)})
    store.save_dataframe(frame, "wide")
    with duckdb.connect(str(store.db_path), read_only=True) as conn:
        groups = conn.sql(
            "SELECT row_group_id, max(count) FROM pragma_storage_info('wide') "
            "GROUP BY ALL ORDER BY 1"
        ).fetchall()
    assert [rows for _, rows in groups] == [DUCKDB_ROW_GROUP_ROWS] * 3 + [1000]
    assert_frame_equal(store.load_dataframe("wide"), frame)


def test_load_nonexistent_returns_none(store: PipelineStore, tmp_path: Path) -> None:
    assert store.load_dataframe("missing") is None
    assert store.load_dataframe("missing", as_polars=False) is None
    store.save_dataframe(genes(2), "present")
    assert store.load_dataframe("missing") is None
    never_created = PipelineStore(tmp_path / "other" / "none.duckdb")
    assert never_created.load_dataframe("present") is None


def test_context_manager(db_path: Path) -> None:
    with PipelineStore(db_path) as store:
        store.save_dataframe(genes(3), "inside")
    with pytest.raises(StoreError, match="closed"):
        store.load_dataframe("inside")
    with PipelineStore(db_path) as again:
        assert again.load_dataframe("inside").height == 3
    # nothing is left open: a plain read-write connection opens at once
    with duckdb.connect(str(db_path)) as conn:
        assert conn.sql("SELECT count(*) FROM inside").fetchall() == [(3,)]


# -- input types ----------------------------------------------------------------------------


def as_type(frame: pl.DataFrame, kind: str) -> object:
    """`frame` converted to one of the input types the store accepts."""
    return {
        "polars": lambda: frame,
        "lazy": frame.lazy,
        "pandas": frame.to_pandas,
        "arrow": frame.to_arrow,
    }[kind]()


@pytest.mark.parametrize("kind", ["polars", "lazy", "pandas", "arrow"])
def test_every_supported_input_type_stores_the_same_table(store: PipelineStore, kind: str) -> None:
    frame = pl.DataFrame({"gene_id": ["a", "b", "c"], "score": [1.5, 2.5, None], "n": [1, 2, 3]})
    reference = store.save_dataframe(frame, "reference")
    row = store.save_dataframe(as_type(frame, kind), "converted")
    assert row["row_count"] == 3
    assert_frame_equal(store.load_dataframe("converted"), frame)
    assert row["fingerprint"] == reference["fingerprint"]


def test_lazyframe_is_collected_when_saved(store: PipelineStore) -> None:
    lazy = pl.LazyFrame({"x": range(10)}).filter(pl.col("x") % 2 == 0)
    store.save_dataframe(lazy, "evens")
    assert store.load_dataframe("evens")["x"].to_list() == [0, 2, 4, 6, 8]


def test_pyarrow_table_keeps_types(store: PipelineStore) -> None:
    table = pa.table({"d": pa.array([dt.date(2024, 5, 1)]), "i": pa.array([7], pa.int32())})
    store.save_dataframe(table, "arrow_types")
    assert store.load_dataframe("arrow_types").schema == pl.Schema({"d": pl.Date, "i": pl.Int32})


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ([1, 2], "list"),
        ({"a": [1]}, "dict"),
        (None, "NoneType"),
        ("gene_id,score", "str"),
        (pd.Series([1, 2]), "Series"),
        (np.zeros((2, 2)), "ndarray"),
        (pl.Series("x", [1]), "Series"),
    ],
)
def test_unsupported_input_is_refused_naming_its_type(
    store: PipelineStore, value: object, type_name: str
) -> None:
    with pytest.raises(UnsupportedFrameType, match=type_name) as info:
        store.save_dataframe(value, "anything")
    assert isinstance(info.value, UsherError)
    assert "polars DataFrame" in str(info.value)
    assert not store.has_checkpoint("anything")


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "gene universe",
        "gene'universe",
        'gene"universe',
        "x; DROP TABLE _checkpoints; --",
        'x"; DROP TABLE _checkpoints; --',
        "genes--",
        "a.b",
        "main.genes",
        "",
        "1genes",
        "gènes",
        "genes\n",
        "GeneUniverse",
    ],
)
def test_invalid_names_are_refused_and_change_nothing(store: PipelineStore, name: str) -> None:
    store.save_dataframe(genes(2), "kept")
    with pytest.raises(InvalidTableName) as info:
        store.save_dataframe(genes(1), name)
    message = str(info.value)
    assert "letters" in message and "digits" in message and "underscores" in message
    assert repr(name) in message
    assert raw_tables(store.db_path) == {"_checkpoints", "_provenance", "kept"}
    assert [c["table_name"] for c in store.list_checkpoints()] == ["kept"]


@pytest.mark.parametrize("name", ["_private", "_partial_genes", "__x"])
def test_leading_underscore_is_reserved(store: PipelineStore, name: str) -> None:
    with pytest.raises(InvalidTableName, match=r"starts with '_'.*reserved.*starts with a letter"):
        store.save_dataframe(genes(1), name)


@pytest.mark.parametrize("name", ["_checkpoints", "_provenance", "_fetch_batches"])
def test_internal_tables_cannot_be_written_read_or_dropped(store: PipelineStore, name: str) -> None:
    store.save_dataframe(genes(2), "kept")
    calls = [
        lambda: store.save_dataframe(genes(1), name),
        lambda: store.save_dataframe(genes(1), name, replace=False),
        lambda: store.load_dataframe(name),
        lambda: store.delete_checkpoint(name),
        lambda: store.has_checkpoint(name),
        lambda: store.export_parquet(name, store.db_path.parent / "x.parquet"),
    ]
    for call in calls:
        with pytest.raises(InvalidTableName, match=f"'{name}'.*reserved for the store's own"):
            call()
    assert [c["table_name"] for c in store.list_checkpoints()] == ["kept"]
    assert store.get_checkpoint("kept")["row_count"] == 2


@given(st.text(max_size=80) | st.from_regex(r"[a-z_][a-z0-9_]{0,70}", fullmatch=True))
@example("_\n")
@example("x\n" * 40)
@example("genes\n")
def test_accepted_names_are_safe_sql_identifiers(name: str) -> None:
    """Whatever is accepted is a plain identifier: nothing that could end a quoted name."""
    try:
        validate_table_name(name)
    except InvalidTableName as exc:
        assert "\n" not in str(exc)
        return
    assert 1 <= len(name) <= MAX_NAME_LENGTH
    assert name[0].isascii() and name[0].isalpha()
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    assert name == name.lower()


def test_name_length_limit(store: PipelineStore) -> None:
    longest = "g" * MAX_NAME_LENGTH
    store.save_dataframe(genes(1), longest)
    assert store.has_checkpoint(longest)
    too_long = "g" * (MAX_NAME_LENGTH + 1)
    with pytest.raises(InvalidTableName, match=f"{MAX_NAME_LENGTH + 1} characters.*at most"):
        store.save_dataframe(genes(1), too_long)


def test_name_must_be_a_string(store: PipelineStore) -> None:
    with pytest.raises(InvalidTableName, match="is a int, not a string"):
        store.save_dataframe(genes(1), 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["select", "order", "table", "from", "group", "where"])
def test_sql_keywords_work_as_table_names(store: PipelineStore, tmp_path: Path, name: str) -> None:
    store.save_dataframe(genes(2), name)
    store.save_dataframe(genes(3, offset=2), name, replace=False)
    assert store.load_dataframe(name).height == 5
    assert store.get_checkpoint(name)["row_count"] == 5
    assert store.fingerprint(name) == store.get_checkpoint(name)["fingerprint"]
    assert pl.read_parquet(store.export_parquet(name, tmp_path / f"{name}.parquet")).height == 5
    assert store.delete_checkpoint(name)
    assert not store.has_checkpoint(name)


# -- append and replace -------------------------------------------------------------------


def test_append_creates_missing_table_and_records_true_total(store: PipelineStore) -> None:
    first = store.save_dataframe(genes(4), "batches", replace=False)
    assert first["row_count"] == 4
    store.save_dataframe(genes(3, offset=4), "batches", replace=False)
    last = store.save_dataframe(genes(5, offset=7), "batches", replace=False)
    loaded = store.load_dataframe("batches")
    assert last["row_count"] == loaded.height == 12
    assert store.get_checkpoint("batches")["row_count"] == 12
    assert sorted(loaded["n_terms"].to_list()) == list(range(12))
    assert last["fingerprint"] == store.fingerprint("batches")


def test_append_by_column_name_and_replace_resets(store: PipelineStore) -> None:
    store.save_dataframe(pl.DataFrame({"a": [1], "b": ["x"]}), "t", replace=False)
    store.save_dataframe(pl.DataFrame({"b": ["y"], "a": [2]}), "t", replace=False)
    assert store.load_dataframe("t").sort("a").rows() == [(1, "x"), (2, "y")]
    row = store.save_dataframe(pl.DataFrame({"c": [1.0, 2.0, 3.0]}), "t")
    assert row["row_count"] == 3
    assert store.load_dataframe("t").columns == ["c"]
    assert json.loads(store.get_checkpoint("t")["schema_json"]) == [["c", "DOUBLE"]]


def test_append_after_a_batch_without_values_takes_the_new_type(store: PipelineStore) -> None:
    empty = pl.DataFrame({"id": [1], "symbol": [None], "terms": [[None]]})
    assert empty.schema["symbol"] == pl.Null
    store.save_dataframe(empty, "batches", replace=False)
    store.save_dataframe(
        pl.DataFrame({"id": [2], "symbol": ["MYO7A"], "terms": [["HP:0000365"]]}),
        "batches",
        replace=False,
    )
    store.save_dataframe(empty.with_columns(id=pl.lit(3)), "batches", replace=False)
    loaded = store.load_dataframe("batches").sort("id")
    assert loaded.schema == pl.Schema(
        {"id": pl.Int64, "symbol": pl.String, "terms": pl.List(pl.String)}
    )
    assert loaded["symbol"].to_list() == [None, "MYO7A", None]
    assert store.get_checkpoint("batches")["row_count"] == 3
    assert json.loads(store.get_checkpoint("batches")["schema_json"])[1] == ["symbol", "VARCHAR"]


def test_append_with_wrong_columns_is_refused_and_changes_nothing(store: PipelineStore) -> None:
    store.save_dataframe(pl.DataFrame({"a": [1, 2]}), "t")
    before = store.get_checkpoint("t")
    with pytest.raises(InvalidFrame, match="cannot append to table 't'.*replace=True"):
        store.save_dataframe(pl.DataFrame({"zzz": ["x"]}), "t", replace=False)
    assert store.load_dataframe("t")["a"].to_list() == [1, 2]
    assert store.get_checkpoint("t") == before


# -- appends keep values exactly: same columns, same types or a widening that keeps them --------

REFUSED_APPENDS = {
    "fraction_into_integer": (
        {"n": [1.7]},
        "column 'n' is DOUBLE in the new rows but BIGINT",
    ),
    "string_into_float": ({"x": ["2.5"]}, "column 'x' is VARCHAR in the new rows but DOUBLE"),
    "list_into_string": ({"s": [["X"]]}, "column 's' is VARCHAR[] in the new rows but VARCHAR"),
    "integer_into_float": ({"x": [2]}, "column 'x' is BIGINT in the new rows but DOUBLE"),
    "uint64_into_int64": (
        {"n": pl.Series([2**63], dtype=pl.UInt64)},
        "column 'n' is UBIGINT in the new rows but BIGINT",
    ),
    "float_into_float32": (
        {"f": [0.1]},
        "column 'f' is DOUBLE in the new rows but FLOAT",
    ),
    "struct_field_renamed": (
        {"st": [{"b": 1}]},
        "column 'st' is STRUCT(b BIGINT) in the new rows but STRUCT(a BIGINT)",
    ),
    "struct_field_narrowed": (
        {"st": [{"a": 0.5}]},
        "column 'st' is STRUCT(a DOUBLE) in the new rows but STRUCT(a BIGINT)",
    ),
    "list_of_fractions_into_list_of_integers": (
        {"li": [[0.5]]},
        "column 'li' is DOUBLE[] in the new rows but BIGINT[]",
    ),
    "date_into_timestamp": (
        {"ts": [dt.date(2025, 1, 1)]},
        "column 'ts' is DATE in the new rows but TIMESTAMP",
    ),
}

APPEND_BASE = {
    "n": [1],
    "x": [0.5],
    "s": ["a"],
    "f": pl.Series([0.5], dtype=pl.Float32),
    "st": [{"a": 1}],
    "li": [[1]],
    "ts": [dt.datetime(2025, 1, 1)],
}


@pytest.mark.parametrize("case", REFUSED_APPENDS.values(), ids=REFUSED_APPENDS.keys())
def test_append_of_another_type_is_refused_naming_the_column_and_both_types(
    store: PipelineStore, case: tuple[dict[str, object], str]
) -> None:
    change, fragment = case
    store.save_dataframe(pl.DataFrame(APPEND_BASE), "t")
    before, fingerprint = store.get_checkpoint("t"), store.fingerprint("t")
    frame = pl.DataFrame(APPEND_BASE).with_columns(pl.DataFrame(change))
    with pytest.raises(InvalidFrame) as error:
        store.save_dataframe(frame, "t", replace=False)
    message = str(error.value)
    assert message.startswith(f"cannot append to table 't': {fragment} in the table")
    assert message.endswith("or save with replace=True to change the schema")
    assert "\n" not in message
    assert store.get_checkpoint("t") == before and store.fingerprint("t") == fingerprint


def test_append_missing_or_adding_a_column_is_refused_naming_it(store: PipelineStore) -> None:
    store.save_dataframe(pl.DataFrame({"a": [1], "b": ["x"]}), "t")
    before = store.get_checkpoint("t")
    with pytest.raises(InvalidFrame, match=r"lack its column 'b'; add it \(a column of nulls"):
        store.save_dataframe(pl.DataFrame({"a": [2]}), "t", replace=False)
    with pytest.raises(InvalidFrame, match="have column 'c' that the table lacks; drop it"):
        store.save_dataframe(pl.DataFrame({"a": [2], "b": ["y"], "c": [0]}), "t", replace=False)
    with pytest.raises(InvalidFrame, match="lack its column 'b' and have column 'B'"):
        store.save_dataframe(pl.DataFrame({"a": [2], "B": ["y"]}), "t", replace=False)
    assert store.get_checkpoint("t") == before
    assert store.load_dataframe("t").rows() == [(1, "x")]


def test_append_widens_only_where_every_value_is_kept(store: PipelineStore) -> None:
    store.save_dataframe(
        pl.DataFrame(
            {
                "i": [0],
                "f": [0.0],
                "d": pl.Series([Decimal("1.2500")], dtype=pl.Decimal(38, 4)),
                "li": [[0]],
                "st": [{"a": 0, "b": 0.0}],
            }
        ),
        "t",
    )
    small = {
        pl.Int8: -(2**7),
        pl.Int16: -(2**15),
        pl.Int32: -(2**31),
        pl.UInt8: 2**8 - 1,
        pl.UInt16: 2**16 - 1,
        pl.UInt32: 2**32 - 1,
    }
    for dtype, value in small.items():
        store.save_dataframe(
            pl.DataFrame(
                {
                    "i": pl.Series([value], dtype=dtype),
                    "f": pl.Series([0.1], dtype=pl.Float32),
                    "d": pl.from_arrow(pa.array([Decimal("-7.50")], pa.decimal128(10, 2))),
                    "li": pl.Series([[value]], dtype=pl.List(dtype)),
                    "st": [{"a": value, "b": None}],
                }
            ).with_columns(pl.col("st").cast(pl.Struct({"a": dtype, "b": pl.Float32}))),
            "t",
            replace=False,
        )
    loaded = store.load_dataframe("t")
    assert loaded.schema == pl.Schema(
        {
            "i": pl.Int64,
            "f": pl.Float64,
            "d": pl.Decimal(38, 4),
            "li": pl.List(pl.Int64),
            "st": pl.Struct({"a": pl.Int64, "b": pl.Float64}),
        }
    )
    assert loaded["i"].to_list() == [0, *small.values()]
    assert loaded["li"].to_list() == [[0]] + [[v] for v in small.values()]
    assert loaded["f"].to_list()[1] == float(np.float32(0.1))  # Float32's value, exactly
    assert loaded["d"].to_list()[1] == Decimal("-7.5000")
    assert store.get_checkpoint("t")["row_count"] == 7


def test_append_gives_null_parts_of_a_column_the_type_of_the_first_values(
    store: PipelineStore,
) -> None:
    store.save_dataframe(pl.DataFrame({"st": [{"a": None, "b": 1}], "li": [[None]]}), "t")
    store.save_dataframe(
        pl.DataFrame({"st": [{"a": "x", "b": 2}], "li": [[{"p": 1.5}]]}), "t", replace=False
    )
    with pytest.raises(InvalidFrame, match=r"column 'st' is STRUCT\(a BIGINT, b BIGINT\)"):
        store.save_dataframe(
            pl.DataFrame({"st": [{"a": 3, "b": 3}], "li": [[None]]}), "t", replace=False
        )
    loaded = store.load_dataframe("t")
    assert loaded.schema == pl.Schema(
        {
            "st": pl.Struct({"a": pl.String, "b": pl.Int64}),
            "li": pl.List(pl.Struct({"p": pl.Float64})),
        }
    )
    assert loaded.rows() == [({"a": None, "b": 1}, [None]), ({"a": "x", "b": 2}, [{"p": 1.5}])]
    assert json.loads(store.get_checkpoint("t")["schema_json"])[0] == [
        "st",
        "STRUCT(a VARCHAR, b BIGINT)",
    ]


# -- transactions ---------------------------------------------------------------------------


def test_failure_inside_transaction_leaves_neither_table_nor_checkpoint(
    store: PipelineStore,
) -> None:
    store.save_dataframe(genes(2), "existing")
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.save_dataframe(genes(5), "fresh")
        store.save_dataframe(genes(9), "existing")
        store.delete_checkpoint("existing")
        assert not store.has_checkpoint("existing")
        raise RuntimeError("boom")
    assert not store.has_checkpoint("fresh")
    assert store.load_dataframe("fresh") is None
    assert "fresh" not in raw_tables(store.db_path)
    assert store.load_dataframe("existing").height == 2
    assert store.get_checkpoint("existing")["row_count"] == 2


def test_store_error_inside_transaction_rolls_back_earlier_saves(store: PipelineStore) -> None:
    with pytest.raises(InvalidFrame), store.transaction():
        store.save_dataframe(pl.DataFrame({"a": [1]}), "first")
        store.save_dataframe(pl.DataFrame({"b": ["x"]}), "first", replace=False)
    assert store.list_checkpoints() == []


def test_transaction_commits_all_operations_together(store: PipelineStore) -> None:
    with store.transaction() as tx:
        assert tx is store
        store.save_dataframe(genes(2), "one")
        store.save_dataframe(genes(3), "two")
        with store.transaction():  # nested: part of the outer one
            store.save_dataframe(genes(1), "two", replace=False)
        assert store.get_checkpoint("two")["row_count"] == 4
    assert [(c["table_name"], c["row_count"]) for c in store.list_checkpoints()] == [
        ("one", 2),
        ("two", 4),
    ]


def test_read_only_transaction_refuses_writes(store: PipelineStore) -> None:
    store.save_dataframe(genes(2), "t")
    with store.transaction(read_only=True):
        assert store.load_dataframe("t").height == 2
        with pytest.raises(StoreError, match="read-only transaction"):
            store.save_dataframe(genes(1), "u")
    assert not store.has_checkpoint("u")


# -- fingerprints and config hash -----------------------------------------------------------


def test_fingerprint_equal_for_equal_data_and_different_for_changes(
    store: PipelineStore,
) -> None:
    frame = genes(20)
    a = store.save_dataframe(frame, "a")["fingerprint"]
    assert a.startswith("fp2:")
    assert store.save_dataframe(frame.clone(), "b")["fingerprint"] == a
    assert store.save_dataframe(frame.reverse(), "shuffled")["fingerprint"] == a
    changed_value = frame.with_columns(
        pl.when(pl.col("n_terms") == 7).then(8).otherwise(pl.col("n_terms")).alias("n_terms")
    )
    variants = {
        "value": changed_value,
        "row_dropped": frame.head(19),
        "row_duplicated": pl.concat([frame, frame.head(1)]),
        "column_renamed": frame.rename({"score": "score2"}),
        "column_type": frame.with_columns(pl.col("n_terms").cast(pl.Int32)),
        "null_filled": frame.with_columns(pl.col("symbol").fill_null("")),
    }
    seen = {a}
    for name, variant in variants.items():
        fingerprint = store.save_dataframe(variant, name)["fingerprint"]
        assert fingerprint not in seen, name
        seen.add(fingerprint)


def test_fingerprint_of_table_equals_fingerprint_of_its_parquet_export(
    store: PipelineStore, tmp_path: Path
) -> None:
    frame = genes(50).with_columns(
        pl.datetime(2025, 3, 1, 12, 30).alias("seen_at"),
        pl.col("score").cast(pl.Float32).alias("score32"),
        pl.struct(pl.col("n_terms"), pl.col("symbol")).alias("nested"),
    )
    checkpoint = store.save_dataframe(frame, "wide")
    exported = store.export_parquet("wide", tmp_path / "wide.parquet")
    assert fingerprint_parquet(exported) == (checkpoint["fingerprint"], 50)
    assert store.fingerprint("wide") == checkpoint["fingerprint"]
    assert store.fingerprint("absent") is None


def test_config_hash_recorded_when_known(tmp_path: Path) -> None:
    config = validate_config_dict(
        {"versions": {"ensembl_release": 113}, "duckdb_path": str(tmp_path / "c" / "p.duckdb")},
        "test",
    )
    assert isinstance(config, PipelineConfig)
    store = PipelineStore.from_config(config)
    assert store.db_path == tmp_path / "c" / "p.duckdb"
    assert store.lock_timeout == config.store.lock_timeout_seconds
    row = store.save_dataframe(genes(1), "hashed")
    assert row["config_hash"] == config.config_hash()
    assert store.get_checkpoint("hashed")["config_hash"] == config.config_hash()
    plain = PipelineStore(store.db_path)
    plain.save_dataframe(genes(1), "unhashed")
    assert plain.get_checkpoint("unhashed")["config_hash"] is None


def test_ingest_parquet_records_a_config_hash_given_for_one_load(
    store: PipelineStore, tmp_path: Path
) -> None:
    path = tmp_path / "genes.parquet"
    genes(3).write_parquet(path)
    hashed = PipelineStore(store.db_path, config_hash="store-hash")
    row = hashed.ingest_parquet(path, "given", config_hash="load-hash")
    assert row["config_hash"] == "load-hash"
    assert hashed.ingest_parquet(path, "default")["config_hash"] == "store-hash"
    assert hashed.get_checkpoint("given")["config_hash"] == "load-hash"
    assert hashed.get_checkpoint("default")["config_hash"] == "store-hash"
    assert hashed.config_hash == "store-hash"


def test_internal_tables_have_the_catalogs_columns_and_keys(store: PipelineStore) -> None:
    from usher_pipeline.persistence.catalog import CHECKPOINT_TYPES, PROVENANCE_TYPES, Checkpoint

    with duckdb.connect(str(store.db_path), read_only=True) as conn:
        for table, types in (("_checkpoints", CHECKPOINT_TYPES), ("_provenance", PROVENANCE_TYPES)):
            described = [tuple(r[:2]) for r in conn.sql(f"DESCRIBE {table}").fetchall()]
            assert described == list(types.items())
        keys = conn.sql(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'PRIMARY KEY' ORDER BY table_name"
        ).fetchall()
    assert keys == [("_checkpoints", ["table_name"]), ("_provenance", ["run_id", "output_path"])]
    assert tuple(Checkpoint.__annotations__) == CHECKPOINT_COLUMNS
    store.save_dataframe(genes(2), "genes")
    assert tuple(store.get_checkpoint("genes")) == CHECKPOINT_COLUMNS


def test_a_database_made_by_the_earlier_checkpoint_ddl_keeps_working(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with duckdb.connect(str(db_path)) as conn:
        conn.execute(
            "CREATE TABLE _checkpoints (table_name VARCHAR PRIMARY KEY, created_at TIMESTAMP, "
            "row_count BIGINT, description VARCHAR, fingerprint VARCHAR, config_hash VARCHAR, "
            "rule VARCHAR, sentinel VARCHAR, schema_json VARCHAR)"
        )
    store = PipelineStore(db_path)
    store.save_dataframe(genes(2), "genes")
    store.save_dataframe(genes(3), "genes")
    assert [(r["table_name"], r["row_count"]) for r in store.list_checkpoints()] == [("genes", 3)]
    assert store.table_exists("_provenance")


def test_created_at_is_utc(store: PipelineStore) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    store.save_dataframe(genes(1), "t")
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    created = store.get_checkpoint("t")["created_at"]
    assert before <= created <= after


# -- exports --------------------------------------------------------------------------------


def test_export_replaces_target_by_rename_and_leaves_no_temp_files(
    store: PipelineStore, tmp_path: Path
) -> None:
    folder = tmp_path / "tables"
    target = folder / "genes.parquet"
    store.save_dataframe(genes(3), "genes")
    store.export_parquet("genes", target)
    old_inode = target.stat().st_ino
    with open(target, "rb") as old_handle:
        old_bytes = target.read_bytes()
        store.save_dataframe(genes(8), "genes")
        store.export_parquet("genes", target)
        # the old file was replaced, not rewritten: an open reader still sees it whole
        assert old_handle.read() == old_bytes
    assert target.stat().st_ino != old_inode
    assert pl.read_parquet(target).height == 8
    assert leftovers(folder, {"genes.parquet"}) == []


def test_export_of_missing_table_keeps_existing_target(
    store: PipelineStore, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "missing.parquet"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(TableNotFound, match="table 'missing' is not in .*run the rule"):
        store.export_parquet("missing", target)
    assert target.read_bytes() == b"previous"
    assert leftovers(target.parent, {"missing.parquet"}) == []


def test_export_to_a_path_with_quotes_and_spaces(store: PipelineStore, tmp_path: Path) -> None:
    store.save_dataframe(genes(4), "genes")
    target = tmp_path / "it's a folder" / 'odd "name".parquet'
    store.export_parquet("genes", target)
    assert pl.read_parquet(target).height == 4
    assert leftovers(target.parent, {target.name}) == []


def test_saves_leave_only_the_database_and_its_lock_file(store: PipelineStore) -> None:
    store.save_dataframe(genes(3), "a")
    store.save_dataframe(genes(3), "a", replace=False)
    with pytest.raises(InvalidFrame):
        store.save_dataframe(pl.DataFrame({"other": [1]}), "a", replace=False)
    with pytest.raises(RuntimeError), store.transaction():
        store.save_dataframe(genes(2), "b")
        raise RuntimeError("failed job")
    assert leftovers(store.db_path.parent, set()) == [
        "pipeline.duckdb",
        "pipeline.duckdb.lock",
        "pipeline.duckdb.lock.gate",
    ]


def test_threads_of_one_process_share_a_file_safely(db_path: Path) -> None:
    def work(n: int) -> None:
        own = PipelineStore(db_path)
        for k in range(3):
            own.save_dataframe(genes(n + 1), f"thread{n}_{k}")
            own.save_dataframe(genes(1, offset=10 * n + k), "shared", replace=False)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(4)))
    store = PipelineStore(db_path)
    assert len(store.list_checkpoints()) == 13
    assert store.get_checkpoint("shared")["row_count"] == 12
    assert sorted(store.load_dataframe("shared")["n_terms"].to_list()) == sorted(
        10 * n + k for n in range(4) for k in range(3)
    )
    assert store.get_checkpoint("thread3_2")["row_count"] == 4


# -- no connection or lock between operations -----------------------------------------------


def test_store_holds_no_connection_or_lock_between_operations(store: PipelineStore, run_python):
    store.save_dataframe(genes(3), "t")
    assert store.load_dataframe("t").height == 3
    done = run_python(
        """
        import fcntl, os, sys, duckdb
        db = sys.argv[1]
        fd = os.open(db + ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anyone holds the lock
        with duckdb.connect(db) as conn:  # read-write, no retry: fails at once if held
            conn.execute("CREATE TABLE from_outside AS SELECT 42 AS answer")
            print(conn.sql("SELECT row_count FROM _checkpoints").fetchall()[0][0])
        """,
        store.db_path,
    )
    assert done.stdout.strip() == "3"
    assert store.execute_query("SELECT answer FROM from_outside")["answer"].to_list() == [42]
    # this process holds no flock either
    fd = os.open(store.db_path.with_name(store.db_path.name + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# -- queries --------------------------------------------------------------------------------


def test_execute_query_returns_polars(store: PipelineStore) -> None:
    store.save_dataframe(genes(10), "genes")
    result = store.execute_query(
        "SELECT gene_id FROM genes WHERE n_terms >= ? ORDER BY gene_id", params=[8]
    )
    assert isinstance(result, pl.DataFrame)
    assert result["gene_id"].to_list() == ["ENSG00000000008", "ENSG00000000009"]
    named = store.execute_query("SELECT $n * 2 AS twice", params={"n": 21})
    assert named.rows() == [(42,)]
    checkpoints = store.execute_query("SELECT table_name, row_count FROM _checkpoints")
    assert checkpoints.rows() == [("genes", 10)]


def test_execute_query_write_statements_work(store: PipelineStore) -> None:
    store.execute_query("CREATE TABLE notes (gene_id VARCHAR, note VARCHAR)")
    store.execute_query("INSERT INTO notes VALUES (?, ?), (?, ?)", ["G1", "a", "G2", "b"])
    assert store.execute_query("SELECT count(*) AS n FROM notes")["n"].to_list() == [2]
    fresh = PipelineStore(store.db_path.parent / "fresh.duckdb")
    fresh.execute_query("CREATE TABLE made AS SELECT 1 AS one")
    assert fresh.execute_query("SELECT one FROM made").rows() == [(1,)]


def test_execute_query_errors_propagate(store: PipelineStore) -> None:
    with pytest.raises(duckdb.Error):
        store.execute_query("SELECT * FROM no_such_table")


READ_ONLY = (
    "query is read-only and this statement would change the database: use SELECT, DESCRIBE, "
    "SHOW or PRAGMA"
)


def test_query_reads_tables_with_parameters(store: PipelineStore) -> None:
    store.save_dataframe(genes(10), "genes")
    result = store.query("SELECT gene_id FROM genes WHERE n_terms >= ? ORDER BY 1", [8])
    assert result["gene_id"].to_list() == ["ENSG00000000008", "ENSG00000000009"]
    assert store.query("SELECT $n * 2 AS twice", {"n": 21}).rows() == [(42,)]
    assert store.query("SELECT table_name FROM _checkpoints").rows() == [("genes",)]
    assert store.query("DESCRIBE genes").height == genes().width
    assert "genes" in store.query("SHOW TABLES")["name"].to_list()
    assert store.query("PRAGMA version").height == 1


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE notes (a INTEGER)",
        "INSERT INTO genes SELECT * FROM genes",
        "DELETE FROM _checkpoints",
        "DROP TABLE genes",
        "SELECT 1; DROP TABLE genes",
    ],
)
def test_query_refuses_statements_that_write(store: PipelineStore, sql: str) -> None:
    store.save_dataframe(genes(), "genes")
    before = store.list_checkpoints()
    with pytest.raises(ReadOnlyQuery) as outside:
        store.query(sql)
    with store.transaction(), pytest.raises(ReadOnlyQuery) as inside:
        store.query(sql)
    with store.session(), pytest.raises(ReadOnlyQuery) as in_session:
        store.query(sql)
    assert str(outside.value) == str(inside.value) == str(in_session.value) == READ_ONLY
    assert isinstance(outside.value, StoreError)
    assert store.list_tables() == ["genes"]
    assert store.list_checkpoints() == before
    assert_frame_equal(store.load_dataframe("genes"), genes())


def test_query_inside_a_transaction_sees_its_uncommitted_work(store: PipelineStore) -> None:
    with store.transaction() as tx:
        tx.save_dataframe(genes(3), "genes")
        assert tx.query("SELECT count(*) AS n FROM genes").rows() == [(3,)]
        with pytest.raises(StoreError):
            tx.query("INSERT INTO genes SELECT * FROM genes")
        tx.save_dataframe(genes(2), "more")  # the refusal left the transaction usable
    assert store.list_tables() == ["genes", "more"]
    with store.transaction(read_only=True) as tx:
        assert tx.query("SELECT count(*) FROM more").rows() == [(2,)]


def test_query_failure_names_duckdbs_message_in_one_line(store: PipelineStore) -> None:
    with pytest.raises(QueryFailed) as info:
        store.query("SELECT *\n  FROM   no_such_table")
    message = str(info.value)
    assert isinstance(info.value, StoreError) and not isinstance(info.value, ReadOnlyQuery)
    assert message.startswith("query failed (Catalog Error: Table with name no_such_table")
    assert message.endswith("): fix the SQL") and "\n" not in message and "  " not in message
    assert len(message) <= len("query failed (): fix the SQL") + 200
    with pytest.raises(QueryFailed, match="Parser Error"):
        store.query("SELEC 1")


def test_query_of_a_missing_database_names_it(store: PipelineStore) -> None:
    store.db_path.unlink()
    with pytest.raises(DatabaseNotFound) as info:
        store.query("SELECT 1")
    assert str(info.value) == (
        f"database {store.db_path} does not exist: run the workflow or pass --db FILE"
    )
    assert isinstance(info.value, StoreError)
    assert not store.db_path.exists()  # reading does not create the file


def test_table_exists_and_row_count_cover_user_and_internal_tables(
    store: PipelineStore,
) -> None:
    assert store.table_exists("_checkpoints") and store.table_exists("_provenance")
    assert store.row_count("_checkpoints") == 0
    assert not store.table_exists("genes") and store.row_count("genes") is None
    store.save_dataframe(genes(7), "genes")
    store.save_dataframe(genes(0), "empty")
    assert store.table_exists("genes") and store.row_count("genes") == 7
    assert store.row_count("empty") == 0
    assert store.row_count("_checkpoints") == 2
    with store.transaction() as tx:
        tx.save_dataframe(genes(4), "genes", replace=False)
        assert tx.row_count("genes") == 11
        assert tx.table_exists("genes")
    store.delete_checkpoint("genes")
    assert not store.table_exists("genes") and store.row_count("genes") is None
    with pytest.raises(InvalidTableName):
        store.table_exists("genes; DROP TABLE empty")
    store.db_path.unlink()
    assert not store.table_exists("_checkpoints") and store.row_count("empty") is None
    assert not store.db_path.exists()


def test_store_fingerprints_a_parquet_file_as_its_table(
    store: PipelineStore, tmp_path: Path
) -> None:
    path = tmp_path / "genes.parquet"
    genes(6).write_parquet(path)
    outside = store.fingerprint_parquet(path)
    assert outside == fingerprint_parquet(path) and outside[1] == 6
    store.save_dataframe(genes(6), "genes")
    assert outside[0] == store.fingerprint("genes")
    with store.transaction() as tx:
        assert tx.fingerprint_parquet(str(path)) == outside
    with store.session():
        assert store.fingerprint_parquet(path) == outside
    genes(5).write_parquet(path)
    assert store.fingerprint_parquet(path) != outside


RESULT_TYPES = {
    "big": "170141183460469231731687303715884105727::HUGEINT",
    "unsigned": "18446744073709551615::UBIGINT",
    "small": "7::UTINYINT",
    "real": "1.5::FLOAT",
    "money": "12.34::DECIMAL(38, 10)",
    "uuid": "'550e8400-e29b-41d4-a716-446655440000'::UUID",
    "clock": "TIME '12:34:56'",
    "day": "DATE '2024-02-29'",
    "nanos": "TIMESTAMP_NS '2024-01-01 00:00:00.123456789'",
    "seconds": "TIMESTAMP_S '2024-01-01 00:00:01'",
    "aware": "TIMESTAMPTZ '2024-01-01 00:00:00+00'",
    "mood": "'ok'::ENUM('sad', 'ok')",
    "bits": "'0101'::BIT",
    "blob": "'\\xAA'::BLOB",
    "mapping": "MAP {'a': 1}",
    "triple": "[1, 2, 3]::INTEGER[3]",
    "nested": "[{'a': 1, 'b': ['x', NULL]}]",
    "nothing": "NULL",
}


def test_results_load_as_duckdb_would_give_them_to_polars(store: PipelineStore) -> None:
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")  # as the store's connections do
    query = "SELECT " + ", ".join(f"{e} AS {n}" for n, e in RESULT_TYPES.items())
    assert_frame_equal(relation_frame(conn.sql(query)), conn.sql(query).pl())
    store.execute_query(f"CREATE TABLE odd AS {query}")
    assert_frame_equal(store.load_dataframe("odd"), conn.sql(query).pl())
    repeated = "SELECT 1 AS a, 'x' AS A, 2.5 AS a_1, 3 AS a"
    assert store.execute_query(repeated).columns == conn.sql(repeated).pl().columns


@pytest.mark.parametrize(
    ("expression", "kind"),
    [
        ("INTERVAL 3 DAY", "INTERVAL"),
        ("union_value(k := 1)::UNION(k INT, s TEXT)", "UNION(k INTEGER, s VARCHAR)"),
        ("{'inner': [INTERVAL 1 DAY]}", 'STRUCT("inner" INTERVAL[])'),
    ],
)
def test_result_column_polars_cannot_hold_is_named(store, expression, kind) -> None:
    store.execute_query(f"CREATE TABLE odd AS SELECT 1 AS fine, {expression} AS span")
    with pytest.raises(UnreadableResult, match=re.escape(f"column 'span' ({kind}) has a type")):
        store.load_dataframe("odd")
    with pytest.raises(UnreadableResult, match="cast in SQL"):
        store.execute_query("SELECT * FROM odd")


def test_loads_and_queries_never_import_pyarrow(run_python) -> None:
    done = run_python(
        """
        import sys
        import polars as pl
        from usher_pipeline.persistence import PipelineStore

        store = PipelineStore("p/pipeline.duckdb")
        store.save_dataframe(pl.DataFrame({"a": [1, 2], "b": ["x", None]}), "t")
        assert store.load_dataframe("t").rows() == [(1, "x"), (2, None)]
        assert store.execute_query("SELECT sum(a) AS s FROM t").rows() == [(3,)]
        print("pyarrow" in sys.modules)
        """
    )
    assert done.stdout.strip() == "False"


# -- the "Done when" check ----------------------------------------------------------


def test_done_when_snippet_runs_in_a_fresh_process(run_python) -> None:
    done = run_python(
        """
        from usher_pipeline.persistence import PipelineStore, ProvenanceTracker
        import polars as pl

        store = PipelineStore("check/pipeline.duckdb")
        store.save_dataframe(pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "test_table")
        assert store.has_checkpoint("test_table")
        assert store.load_dataframe("test_table").shape == (2, 2)
        assert not store.has_checkpoint("unknown_table")
        tracker = ProvenanceTracker("0.1.0")
        tracker.record_step("check")
        tracker.save_to_store(store)
        store.close()
        print("store and provenance OK")
        """
    )
    assert done.stdout.strip().splitlines()[-1] == "store and provenance OK"
    assert done.stderr == ""


def test_a_load_caps_duckdbs_memory_until_its_connection_closes(db_path: Path) -> None:
    import polars as pl

    def limit(store: PipelineStore) -> str:
        return store.execute_query("SELECT current_setting('memory_limit') AS m")["m"][0]

    capped = PipelineStore(db_path, load_memory_mb=64)
    default = limit(capped)
    with capped.transaction() as tx:
        assert limit(tx) == default  # other writes (e.g. provenance rows) are not capped
        tx.save_dataframe(pl.DataFrame({"a": [1, 2]}), "genes")
        assert limit(tx) == "61.0 MiB"  # 64 MB as DuckDB reports it
    assert limit(capped) == default  # the next connection starts afresh
    uncapped = PipelineStore(db_path, load_memory_mb=None)
    with uncapped.transaction() as tx:
        tx.save_dataframe(pl.DataFrame({"a": [3]}), "genes")
        assert limit(tx) == default


def test_loads_can_record_their_checkpoints_together(store: PipelineStore, tmp_path: Path) -> None:
    import polars as pl

    rows = []
    with store.transaction() as tx:
        for n, name in enumerate(("first", "second")):
            path = tmp_path / f"{name}.parquet"
            pl.DataFrame({"a": list(range(n + 2))}).write_parquet(path)
            rows.append(tx.ingest_parquet(path, name, "loaded", record_checkpoint=False))
        assert not tx.has_checkpoint("first")  # not yet recorded
        tx.record_checkpoints([*rows, {**rows[0], "description": "given twice, last wins"}])
    recorded = {r["table_name"]: r for r in store.list_checkpoints()}
    assert recorded["first"]["description"] == "given twice, last wins"
    assert recorded["second"]["row_count"] == 3
    assert recorded["second"]["fingerprint"] == store.fingerprint("second")
    assert recorded["second"]["created_at"] == rows[1]["created_at"]
