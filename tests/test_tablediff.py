"""The row-level diff of two table versions: real Parquet files compared by DuckDB, checked
against a direct computation in Python."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usher_pipeline.errors import UsherError
from usher_pipeline.persistence.tablediff import (
    KeyMissing,
    KeyNotUnique,
    TableDiff,
    diff_parquet,
    diff_rows,
    find_unique_column,
    load_version,
)


def versions(tmp_path: Path, old: pl.DataFrame, new: pl.DataFrame) -> tuple[Path, Path]:
    """The two frames as Parquet files."""
    paths = tmp_path / "old.parquet", tmp_path / "new.parquet"
    old.write_parquet(paths[0])
    new.write_parquet(paths[1])
    return paths


def python_diff(old: list[dict], new: list[dict], key: str) -> dict:
    """Added, removed and changed rows by key, computed row by row in Python."""
    olds, news = {r[key]: r for r in old}, {r[key]: r for r in new}
    common = [c for c in old[0] if c in new[0] and c != key] if old and new else []
    changed = {
        k: {c for c in common if olds[k][c] != news[k][c]}
        for k in sorted(olds.keys() & news.keys())
    }
    return {
        "added": sorted(news.keys() - olds.keys()),
        "removed": sorted(olds.keys() - news.keys()),
        "changed": {k: cols for k, cols in changed.items() if cols},
    }


rows_strategy = st.dictionaries(
    st.integers(0, 40),
    st.tuples(st.one_of(st.none(), st.integers(-3, 3)), st.sampled_from(["a", "b", None])),
    max_size=30,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old_rows=rows_strategy, new_rows=rows_strategy)
def test_counts_and_samples_match_a_direct_computation(tmp_path: Path, old_rows, new_rows) -> None:
    def frame(rows: dict) -> pl.DataFrame:
        ids = sorted(rows)
        return pl.DataFrame(
            {"id": ids, "v": [rows[i][0] for i in ids], "c": [rows[i][1] for i in ids]},
            schema={"id": pl.Int64, "v": pl.Int64, "c": pl.String},
        )

    old, new = frame(old_rows), frame(new_rows)
    paths = versions(tmp_path, old, new)
    diff = diff_parquet(*paths, table="t", key=["id"], samples=3)
    want = python_diff(old.to_dicts(), new.to_dicts(), "id")
    assert (diff.rows_old, diff.rows_new) == (old.height, new.height)
    assert diff.added == len(want["added"]) and diff.removed == len(want["removed"])
    assert diff.changed == len(want["changed"])
    assert diff.samples["added"] == [r for r in new.to_dicts() if r["id"] in want["added"]][:3]
    assert diff.samples["removed"] == [r for r in old.to_dicts() if r["id"] in want["removed"]][:3]
    olds, news = {r["id"]: r for r in old.to_dicts()}, {r["id"]: r for r in new.to_dicts()}
    expected_changed = [
        {
            "key": {"id": k},
            "label": None,
            "old": {c: olds[k][c] for c in ("v", "c") if c in cols},
            "new": {c: news[k][c] for c in ("v", "c") if c in cols},
        }
        for k, cols in list(want["changed"].items())[:3]
    ]
    assert diff.samples["changed"] == expected_changed
    per_column = {c: sum(c in cols for cols in want["changed"].values()) for c in ("v", "c")}
    assert dict(diff.changed_columns) == {c: n for c, n in per_column.items() if n}
    counts = [n for _, n in diff.changed_columns]
    assert counts == sorted(counts, reverse=True)
    rows = diff_rows(*paths, table="t", key=["id"])
    assert rows.height == diff.added + diff.removed + diff.changed
    assert rows["id"].to_list() == sorted(rows["id"].to_list())
    assert sorted(rows.filter(pl.col("change") == "added")["id"]) == want["added"]
    assert sorted(rows.filter(pl.col("change") == "changed")["id"]) == list(want["changed"])


def test_composite_key_and_nulls_in_values(tmp_path: Path) -> None:
    old = pl.DataFrame({"a": [1, 1, 2, 2], "b": ["x", "y", "x", "y"], "v": [None, None, 1.0, 2.0]})
    new = pl.DataFrame({"a": [1, 1, 2, 3], "b": ["x", "y", "x", "x"], "v": [None, 5.0, 1.0, 0.0]})
    diff = diff_parquet(*versions(tmp_path, old, new), table="t", key=["a", "b"])
    assert diff.key == ("a", "b") and diff.key_source == "declared"
    assert (diff.added, diff.removed, diff.changed) == (1, 1, 1)  # NULL->NULL is no change
    assert diff.samples["changed"] == [
        {"key": {"a": 1, "b": "y"}, "label": None, "old": {"v": None}, "new": {"v": 5.0}}
    ]
    assert diff.samples["removed"] == [{"a": 2, "b": "y", "v": 2.0}]
    assert diff.samples["added"] == [{"a": 3, "b": "x", "v": 0.0}]


def test_nan_equals_nan_and_signed_zero_equals_zero(tmp_path: Path) -> None:
    nan = float("nan")
    old = pl.DataFrame({"id": [1, 2, 3, 4], "x": [nan, nan, -0.0, 1.0]})
    new = pl.DataFrame({"id": [1, 2, 3, 4], "x": [nan, 2.0, 0.0, nan]})
    diff = diff_parquet(*versions(tmp_path, old, new), table="t", key=["id"])
    assert diff.changed == 2
    assert [s["key"]["id"] for s in diff.samples["changed"]] == [2, 4]
    payload = json.loads(json.dumps(diff.as_json(), allow_nan=False))
    assert payload["samples"]["changed"][0]["old"] == {"x": "NaN"}
    assert payload["samples"]["changed"][1]["new"] == {"x": "NaN"}


def test_nested_columns_compare_exactly(tmp_path: Path) -> None:
    schema = {
        "id": pl.Int64,
        "terms": pl.List(pl.Int64),
        "info": pl.Struct({"n": pl.Int64, "s": pl.String}),
    }
    old = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "terms": [[1, None], [], None, [1, 2], [3], [4]],
            "info": [
                {"n": 1, "s": "a"},
                None,
                {"n": None, "s": None},
                {"n": 2, "s": "b"},
                {"n": 3, "s": "c"},
                {"n": 4, "s": "d"},
            ],
        },
        schema=schema,
    )
    new = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "terms": [[1, None], None, None, [2, 1], [3], [4]],
            "info": [
                {"n": 1, "s": "a"},
                None,
                None,
                {"n": 2, "s": "b"},
                {"n": 3, "s": "C"},
                {"n": 4, "s": "d"},
            ],
        },
        schema=schema,
    )
    diff = diff_parquet(*versions(tmp_path, old, new), table="t", key=["id"])
    # [] -> NULL, a struct of NULLs -> NULL, [1, 2] -> [2, 1], 'c' -> 'C' inside a struct
    assert [s["key"]["id"] for s in diff.samples["changed"]] == [2, 3, 4, 5]
    assert dict(diff.changed_columns) == {"terms": 2, "info": 2}
    assert diff.samples["changed"][0]["old"] == {"terms": []}
    assert diff.samples["changed"][0]["new"] == {"terms": None}
    assert diff.samples["changed"][3]["new"] == {"info": {"n": 3, "s": "C"}}
    assert diff.transitions == ()  # nested columns are not categorical


def test_columns_added_removed_and_retyped(tmp_path: Path) -> None:
    old = pl.DataFrame(
        {"id": [1, 2, 3], "gone": [1, 2, 3], "n": [1, 2, 3], "s": ["1", "2", "x"]},
        schema={"id": pl.Int64, "gone": pl.Int64, "n": pl.Int32, "s": pl.String},
    )
    new = pl.DataFrame(
        {"id": [1, 2, 3], "n": [1, 2, 4], "s": [1, 2, 3], "extra": [True, False, True]},
        schema={"id": pl.Int64, "n": pl.Int64, "s": pl.Int64, "extra": pl.Boolean},
    )
    diff = diff_parquet(*versions(tmp_path, old, new), table="t", key=["id"])
    assert diff.columns_added == ("extra",) and diff.columns_removed == ("gone",)
    assert diff.types_changed == (("n", "INTEGER", "BIGINT"), ("s", "VARCHAR", "BIGINT"))
    # INTEGER -> BIGINT compares by value; VARCHAR -> BIGINT cannot: every row changed
    assert dict(diff.changed_columns) == {"s": 3, "n": 1}
    assert diff.changed == 3
    assert diff.samples["added"] == [] and diff.samples["removed"] == []
    rows = diff_rows(*versions(tmp_path, old, new), table="t", key=["id"])
    assert rows.columns == ["change", "id", "n_old", "n_new", "s_old", "s_new"]


def test_whole_row_diff_is_a_multiset_difference(tmp_path: Path) -> None:
    old = pl.DataFrame({"x": [1.5, 1.5, 2.5, None], "y": ["a", "a", "b", "c"]})
    new = pl.DataFrame({"x": [1.5, 2.5, 2.5, None], "y": ["a", "b", "b", "c"]})
    paths = versions(tmp_path, old, new)
    assert find_unique_column(*paths) is None  # floats are no key, y repeats
    diff = diff_parquet(*paths, table="t")
    assert diff.key == () and diff.key_source == "whole row"
    assert (diff.added, diff.removed, diff.changed) == (1, 1, 0)
    assert diff.samples == {
        "added": [{"x": 2.5, "y": "b"}],
        "removed": [{"x": 1.5, "y": "a"}],
        "changed": [],
    }
    rows = diff_rows(*paths, table="t")
    assert rows.to_dicts() == [
        {"change": "added", "x": 2.5, "y": "b"},
        {"change": "removed", "x": 1.5, "y": "a"},
    ]
    same = diff_parquet(paths[0], paths[0], table="t", key=[])
    assert (same.added, same.removed) == (0, 0)


def test_find_unique_column_prefers_id_columns(tmp_path: Path) -> None:
    old = pl.DataFrame(
        {"name": ["a", "b", "c"], "score": [1.0, 2.0, 3.0], "gene_id": [7, 8, 9], "x": [1, 1, 2]}
    )
    new = pl.DataFrame(
        {"name": ["a", "b", "d"], "score": [1.0, 2.0, 4.0], "gene_id": [7, 8, 10], "x": [1, 2, 3]}
    )
    paths = versions(tmp_path, old, new)
    assert find_unique_column(*paths) == "gene_id"
    diff = diff_parquet(*paths, table="t", label="name")
    assert diff.key == ("gene_id",) and diff.key_source == "unique column"
    assert (diff.added, diff.removed, diff.changed) == (1, 1, 1)
    nulls = pl.DataFrame({"name": ["a", "b", "c"], "gene_id": [7, None, 9]})
    paths = versions(tmp_path, nulls, nulls)
    assert find_unique_column(*paths) == "name"  # gene_id holds a NULL


@pytest.mark.parametrize(
    ("old_ids", "new_ids", "example"),
    [
        ([1, 1, 2], [1, 2], "1 appears 2 times"),  # repeated among matched keys
        ([1, 1, 2], [1, 1, 2], "1 appears 2 times"),  # matched twice on both sides
        ([1, 2, 7, 7], [1, 2], "7 appears 2 times"),  # repeated among unmatched keys
        ([1, 2], [1, 2, 5, 5], "5 appears 2 times"),
        ([1, None, 3], [1, 3], "1 row(s) with a NULL in key id"),
    ],
)
def test_key_not_unique(tmp_path: Path, old_ids, new_ids, example) -> None:
    old = pl.DataFrame({"id": old_ids, "v": list(range(len(old_ids)))})
    new = pl.DataFrame({"id": new_ids, "v": list(range(len(new_ids)))})
    paths = versions(tmp_path, old, new)
    with pytest.raises(KeyNotUnique) as error:
        diff_parquet(*paths, table="genes", key=["id"])
    message = str(error.value)
    assert isinstance(error.value, UsherError) and example in message
    assert 'USHER.register("genes", key=[...])' in message and "\n" not in message
    with pytest.raises(KeyNotUnique):
        diff_rows(*paths, table="genes", key=["id"])


def test_key_missing(tmp_path: Path) -> None:
    old = pl.DataFrame({"id": [1], "v": [1]})
    new = pl.DataFrame({"gene": [1], "v": [1]})
    with pytest.raises(KeyMissing, match=r"version new\.parquet has no column id for its key"):
        diff_parquet(*versions(tmp_path, old, new), table="genes", key=["id"])


def test_transitions_carry_keys_and_labels(tmp_path: Path) -> None:
    ids = list(range(10))
    old = pl.DataFrame(
        {
            "id": ids,
            "sym": [f"g{i}" for i in ids],
            "tier": ["low"] * 6 + ["mid"] * 4,
            "ok": [True] * 10,
            "note": [f"n{i}" for i in ids],
        }
    )
    new = pl.DataFrame(
        {
            "id": ids,
            "sym": [f"G{i}" for i in ids],
            "tier": ["mid"] * 3 + ["low"] * 3 + ["high"] * 4,
            "ok": [True] * 9 + [None],
            "note": [f"m{i}" for i in ids],
        }
    )
    paths = versions(tmp_path, old, new)
    diff = diff_parquet(*paths, table="t", key=["id"], label="sym", keys_per_transition=2)
    tiers = [t for t in diff.transitions if t.column == "tier"]
    assert [(t.old, t.new, t.rows) for t in tiers] == [("mid", "high", 4), ("low", "mid", 3)]
    assert tiers[0].keys == ((6,), (7,)) and tiers[0].labels == ("G6", "G7")
    assert tiers[1].keys == ((0,), (1,)) and tiers[1].labels == ("G0", "G1")
    (ok,) = [t for t in diff.transitions if t.column == "ok"]
    assert (ok.old, ok.new, ok.rows, ok.keys) == (True, None, 1, ((9,),))
    assert diff.samples["changed"][0]["label"] == "G0"
    many = pl.DataFrame({"id": list(range(30)), "tier": [f"t{i}" for i in range(30)]})
    other = many.with_columns(pl.col("tier") + "x")
    wide = diff_parquet(*versions(tmp_path, many, other), table="t", key=["id"])
    assert wide.changed == 30 and wide.transitions == ()  # more than 20 distinct pairs


def test_diff_rows_columns(tmp_path: Path) -> None:
    old = pl.DataFrame({"id": [1, 2, 3], "sym": ["a", "b", "c"], "v": [1, 2, 3], "w": [0, 0, 0]})
    new = pl.DataFrame({"id": [2, 3, 4], "sym": ["b", "C", "d"], "v": [2, 9, 4], "w": [0, 0, 0]})
    paths = versions(tmp_path, old, new)
    rows = diff_rows(*paths, table="t", key=["id"], label="sym")
    assert diff_rows(*paths, table="t", key="id", label="sym").equals(rows)  # one column alone
    # rows were added and removed, so every column shows (w never changed)
    assert rows.columns == [
        "change",
        "id",
        "sym",
        "sym_old",
        "sym_new",
        "v_old",
        "v_new",
        "w_old",
        "w_new",
    ]
    assert rows.to_dicts() == [
        {
            "change": "removed",
            "id": 1,
            "sym": "a",
            "sym_old": "a",
            "sym_new": None,
            "v_old": 1,
            "v_new": None,
            "w_old": 0,
            "w_new": None,
        },
        {
            "change": "changed",
            "id": 3,
            "sym": "C",
            "sym_old": "c",
            "sym_new": "C",
            "v_old": 3,
            "v_new": 9,
            "w_old": 0,
            "w_new": 0,
        },
        {
            "change": "added",
            "id": 4,
            "sym": "d",
            "sym_old": None,
            "sym_new": "d",
            "v_old": None,
            "v_new": 4,
            "w_old": None,
            "w_new": 0,
        },
    ]
    changed_only = versions(tmp_path, old, old.with_columns(v=pl.Series([1, 5, 3])))
    only = diff_rows(*changed_only, table="t", key=["id"], label="sym")
    assert only.columns == ["change", "id", "sym", "v_old", "v_new"]  # only what changed


def test_as_json_and_load_version_keep_values(tmp_path: Path) -> None:
    old = pl.DataFrame(
        {
            "id": [1, 2],
            "day": [dt.date(2026, 1, 1), dt.date(2026, 1, 2)],
            "amount": [Decimal("1.10"), Decimal("2.20")],
            "raw": [b"\x00", b"\x01"],
        },
        schema={"id": pl.UInt8, "day": pl.Date, "amount": pl.Decimal(10, 2), "raw": pl.Binary},
    )
    new = old.with_columns(
        pl.Series("amount", [Decimal("1.10"), Decimal("2.21")], dtype=pl.Decimal(10, 2))
    )
    paths = versions(tmp_path, old, new)
    diff = diff_parquet(*paths, table="t", key=["id"])
    assert isinstance(diff, TableDiff)
    assert diff.samples["changed"][0]["new"] == {"amount": Decimal("2.21")}
    payload = json.loads(json.dumps(diff.as_json()))
    assert payload["samples"]["changed"][0]["new"] == {"amount": "2.21"}
    assert payload["key"] == ["id"] and payload["changed_columns"] == [["amount", 1]]
    loaded = load_version(paths[0])
    assert loaded.schema == old.schema and loaded.equals(old)
    assert load_version(paths[1], limit=1).height == 1
    removed = diff_parquet(paths[0], tmp_path / "old.parquet", table="t", key=["id"])
    assert removed.changed == 0
    gone = pl.DataFrame({"id": [2]}, schema={"id": pl.UInt8}).join(old, on="id")
    gone.write_parquet(tmp_path / "one.parquet")
    one = diff_parquet(paths[0], tmp_path / "one.parquet", table="t", key=["id"])
    assert json.dumps(one.as_json())
    assert one.as_json()["samples"]["removed"] == [
        {"id": 1, "day": "2026-01-01", "amount": "1.10", "raw": "00"}
    ]


def test_null_in_a_composite_key_part(tmp_path: Path) -> None:
    old = pl.DataFrame({"a": [1, 1], "b": ["x", None], "v": [1, 2]})
    new = pl.DataFrame({"a": [1], "b": ["x"], "v": [1]})
    with pytest.raises(KeyNotUnique, match=r"old\.parquet has 1 row\(s\) with a NULL in key"):
        diff_parquet(*versions(tmp_path, old, new), table="t", key=["a", "b"])


def test_whole_row_diff_over_the_common_comparable_columns(tmp_path: Path) -> None:
    old = pl.DataFrame({"x": [1.0, 1.0, 2.0], "s": ["a", "b", "c"], "gone": [1, 2, 3]})
    new = pl.DataFrame({"x": [1.0, 3.0, 2.0], "s": [1, 2, 3], "extra": [True, True, False]})
    paths = versions(tmp_path, old, new)
    diff = diff_parquet(*paths, table="t", key=[])
    # s turned from strings into numbers, which cannot compare: only x is compared
    assert diff.types_changed == (("s", "VARCHAR", "BIGINT"),)
    assert (diff.columns_added, diff.columns_removed) == (("extra",), ("gone",))
    assert (diff.added, diff.removed) == (1, 1)
    assert diff.samples["added"] == [{"x": 3.0}] and diff.samples["removed"] == [{"x": 1.0}]
    apart = versions(tmp_path, pl.DataFrame({"a": [1.5, 1.5]}), pl.DataFrame({"b": [2.5]}))
    nothing_common = diff_parquet(*apart, table="t")
    assert (nothing_common.added, nothing_common.removed) == (1, 2)
    assert diff_rows(*apart, table="t").columns == ["change", "b", "a"]


def test_a_unique_column_whose_every_value_changed_is_no_key(tmp_path: Path) -> None:
    old = pl.DataFrame({"records": [40], "at_or_above": [20], "max_value": [998]})
    new = pl.DataFrame({"records": [44], "at_or_above": [23], "max_value": [998]})
    paths = versions(tmp_path, old, new)
    assert find_unique_column(*paths) == "max_value"  # the one value both versions share
    diff = diff_parquet(*paths, table="summary")
    assert (diff.added, diff.removed, diff.changed) == (0, 0, 1)
    moved = pl.DataFrame({"records": [44], "at_or_above": [23], "max_value": [997]})
    paths = versions(tmp_path, old, moved)
    assert find_unique_column(*paths) is None  # nothing shared: whole rows
    assert diff_parquet(*paths, table="summary").key_source == "whole row"
