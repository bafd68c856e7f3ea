"""Fingerprints tell contents apart: equal exactly when two tables hold the same multiset of
rows, nested values at any depth included (NULL, empty and holding NULL at every level, the
sign of zero), for a table in the database and for its Parquet file alike.

The reference is a Python canonical form of each row that tells None, [] and [None] apart,
a NULL struct from a struct of NULLs, and -0.0 from 0.0 (every NaN is one value).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from usher_pipeline.persistence import PipelineStore
from usher_pipeline.persistence.fingerprint import (
    PREFIX,
    fingerprint_parquet,
    fingerprint_source,
    short_fingerprint,
)
from usher_pipeline.persistence.sql import parquet_source, sql_string


@dataclass(frozen=True)
class Kind:
    """A column type: its Arrow type, a strategy for its values (None included) and the
    canonical form of a value."""

    arrow: pa.DataType
    values: st.SearchStrategy[Any]
    canon: Callable[[Any], Any]


def _float(x: float) -> Any:
    return ("nan",) if math.isnan(x) else ("f", x, math.copysign(1.0, x))


def _nullable(canon: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else canon(v)


LEAVES = [
    Kind(pa.int64(), st.sampled_from([0, 1, -1, 2**63 - 1]), lambda v: ("i", v)),
    Kind(pa.float64(), st.sampled_from([0.0, -0.0, 1.5, math.inf, math.nan, -math.nan]), _float),
    Kind(pa.string(), st.sampled_from(["", "a", "null", "[]"]), lambda v: ("s", v)),
    Kind(pa.bool_(), st.booleans(), lambda v: ("b", v)),
    Kind(pa.binary(), st.sampled_from([b"", b"\x00", b"a"]), lambda v: ("y", v)),
    Kind(
        pa.decimal128(20, 3),
        st.sampled_from([Decimal("0.000"), Decimal("1.500"), Decimal("-1.500")]),
        lambda v: ("d", v),
    ),
    Kind(
        pa.timestamp("us"),
        st.sampled_from([dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, 0, 0, 0, 1)]),
        lambda v: ("t", v),
    ),
]
KEYS = [LEAVES[0], LEAVES[2]]  # map keys: integers or strings


def nullable(kind: Kind) -> Kind:
    """`kind` whose values may also be None (NULL at this level)."""
    return Kind(kind.arrow, st.none() | kind.values, _nullable(kind.canon))


def list_of(child: Kind) -> Kind:
    return Kind(
        pa.list_(child.arrow),
        st.lists(child.values, max_size=3),
        lambda v: ("l", tuple(child.canon(e) for e in v)),
    )


def array_of(child: Kind) -> Kind:
    return Kind(
        pa.list_(child.arrow, 2),
        st.lists(child.values, min_size=2, max_size=2),
        lambda v: ("a", tuple(child.canon(e) for e in v)),
    )


def struct_of(first: Kind, second: Kind) -> Kind:
    return Kind(
        pa.struct([("p", first.arrow), ("q", second.arrow)]),
        st.fixed_dictionaries({"p": first.values, "q": second.values}),
        lambda v: ("r", first.canon(v["p"]), second.canon(v["q"])),
    )


def map_of(key: Kind, value: Kind) -> Kind:
    return Kind(
        pa.map_(key.arrow, value.arrow),
        st.lists(st.tuples(key.values, value.values), max_size=3, unique_by=lambda kv: kv[0]),
        lambda v: ("m", tuple((key.canon(k), value.canon(x)) for k, x in v)),
    )


@st.composite
def kinds(draw: st.DrawFn, depth: int = 3) -> Kind:
    """A nullable column type up to `depth` levels of lists, fixed arrays, structs and maps."""
    shape = draw(st.sampled_from(["leaf", "list", "array", "struct", "map"] if depth else ["leaf"]))
    if shape == "leaf":
        return nullable(draw(st.sampled_from(LEAVES)))
    child = draw(kinds(depth - 1))
    if shape == "list":
        return nullable(list_of(child))
    if shape == "array":
        return nullable(array_of(child))
    if shape == "struct":
        return nullable(struct_of(child, draw(kinds(depth - 1))))
    return nullable(map_of(draw(st.sampled_from(KEYS)), child))


@dataclass(frozen=True)
class Table:
    """Rows of the columns `kinds`: an Arrow table and the multiset of canonical rows."""

    arrow: pa.Table
    canonical: Counter[Any]


def table_of(columns: list[Kind], rows: list[tuple[Any, ...]]) -> Table:
    arrays = [pa.array([row[i] for row in rows], type=kind.arrow) for i, kind in enumerate(columns)]
    names = [f"c{i}" for i in range(len(columns))]
    canonical = Counter(
        tuple(kind.canon(v) for kind, v in zip(columns, row, strict=True)) for row in rows
    )
    return Table(pa.Table.from_arrays(arrays, names=names), canonical)


def fingerprints(
    conn: duckdb.DuckDBPyConnection, folder: Path, name: str, table: Table
) -> tuple[str, str]:
    """The fingerprints of `table` loaded into DuckDB as it is (fixed arrays kept) and of its
    Parquet file, the latter checked equal for the table loaded from that file and for that
    table's export."""
    conn.register("source", table.arrow)
    conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM source")
    conn.unregister("source")
    direct, rows = fingerprint_source(conn, name)
    assert rows == table.arrow.num_rows
    written = folder / f"{name}.parquet"
    pq.write_table(table.arrow, written)
    conn.execute(f"CREATE OR REPLACE TABLE {name}_p AS SELECT * FROM {parquet_source(written)}")
    exported = folder / f"{name}_export.parquet"
    conn.execute(f"COPY {name}_p TO {sql_string(str(exported))} (FORMAT parquet)")
    from_file = fingerprint_source(conn, parquet_source(written))
    assert fingerprint_source(conn, f"{name}_p") == from_file
    assert fingerprint_source(conn, parquet_source(exported)) == from_file
    return direct, from_file[0]


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Table, Table]:
    """Two tables of the same columns: equal as multisets (a permutation), a row apart, as
    many other rows, or any other rows."""
    columns = [nullable(LEAVES[0])] + draw(st.lists(kinds(), min_size=1, max_size=2))
    row = st.tuples(*(kind.values for kind in columns))
    first = draw(st.lists(row, min_size=1, max_size=5))
    how = draw(st.sampled_from(["permuted", "one row changed", "other rows", "other count"]))
    if how == "permuted":
        second = draw(st.permutations(first))
    elif how == "one row changed":
        second = list(first)
        second[draw(st.integers(0, len(first) - 1))] = draw(row)
    elif how == "other rows":
        second = draw(st.lists(row, min_size=len(first), max_size=len(first)))
    else:
        second = draw(st.lists(row, max_size=5))
    return table_of(columns, first), table_of(columns, list(second))


@pytest.fixture(scope="module")
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as connection:  # one for every example: each connect takes a while
        yield connection


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pair=pairs())
def test_fingerprints_are_equal_exactly_when_the_rows_are(
    conn: duckdb.DuckDBPyConnection, pair: tuple[Table, Table], tmp_path: Path
) -> None:
    first, second = pair
    a_direct, a_file = fingerprints(conn, tmp_path, "a", first)
    b_direct, b_file = fingerprints(conn, tmp_path, "b", second)
    same = first.canonical == second.canonical
    event("equal rows" if same else "different rows")
    assert (a_direct == b_direct) is same, (first.canonical, second.canonical)
    assert (a_file == b_file) is same, (first.canonical, second.canonical)


# -- through the store ----------------------------------------------------------------------

COLLIDING = {  # values DuckDB's hash() alone gives equal hashes
    "list": (pl.List(pl.Int64), [None, [], [None], [0], [0, 0]]),
    "struct": (pl.Struct({"n": pl.Int32}), [None, {"n": None}, {"n": 0}]),
    "list of lists": (
        pl.List(pl.List(pl.Int64)),
        [None, [], [None], [[]], [[None]], [[], []], [None, []]],
    ),
    "struct with a list": (
        pl.Struct({"ids": pl.List(pl.Int64)}),
        [None, {"ids": None}, {"ids": []}, {"ids": [None]}],
    ),
    "list of structs": (
        pl.List(pl.Struct({"n": pl.Int32})),
        [None, [], [None], [{"n": None}], [{"n": 0}]],
    ),
    "fixed array": (pl.Array(pl.Int64, 2), [None, [None, None], [0, None], [None, 0]]),
    "float": (pl.Float64, [None, 0.0, -0.0]),
    "list of floats": (pl.List(pl.Float64), [[0.0], [-0.0], [None], []]),
}


@pytest.fixture
def store(tmp_path: Path) -> PipelineStore:
    return PipelineStore(tmp_path / "pipeline.duckdb", lock_timeout=30)


@pytest.mark.parametrize("name", sorted(COLLIDING))
def test_each_nested_value_has_its_own_fingerprint(
    store: PipelineStore, tmp_path: Path, name: str
) -> None:
    dtype, values = COLLIDING[name]
    seen: dict[str, Any] = {}
    for i, value in enumerate(values):
        frame = pl.DataFrame({"id": [1], "v": pl.Series([value], dtype=dtype)})
        row = store.save_dataframe(frame, f"t{i}")
        export = store.export_parquet(f"t{i}", tmp_path / f"t{i}.parquet")
        assert fingerprint_parquet(export) == (row["fingerprint"], 1)
        assert row["fingerprint"] not in seen, (value, seen.get(row["fingerprint"]))
        seen[row["fingerprint"]] = value


def test_a_changed_sentinel_no_longer_matches_its_checkpoint(
    store: PipelineStore, tmp_path: Path
) -> None:
    """What the head-node ingest compares: a sentinel whose [] became [None] is changed."""
    before = pl.DataFrame({"gene": ["A", "B"], "terms": [["x"], []]})
    checkpoint = store.save_dataframe(before, "genes")
    sentinel = tmp_path / "genes.parquet"
    before.with_columns(pl.Series("terms", [["x"], [None]])).write_parquet(sentinel)
    assert store.fingerprint_parquet(sentinel)[0] != checkpoint["fingerprint"]
    before.write_parquet(sentinel)
    assert store.fingerprint_parquet(sentinel) == (checkpoint["fingerprint"], 2)


def test_the_prefix_names_the_version_and_short_forms_skip_it(store: PipelineStore) -> None:
    fingerprint = store.save_dataframe(pl.DataFrame({"n": [1]}), "t")["fingerprint"]
    assert PREFIX == "fp2:" and fingerprint.startswith(PREFIX)
    assert short_fingerprint(fingerprint) == fingerprint[len(PREFIX) :][:8]
    assert short_fingerprint("fp1:0123456789abcdef") == "01234567"  # an older version's
    assert short_fingerprint(None, missing="none") == "none"
