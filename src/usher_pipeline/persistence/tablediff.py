"""The row-level difference of two versions of one table, each a Parquet file (a history object).

A keyed diff is ONE pass of a FULL OUTER JOIN of the two files, whose ungrouped aggregate
counts each side's keys and gathers only the differing rows into a small temporary table;
counts per column, transitions and samples come from that table. Unique keys need no pass of
their own: each row of a version then appears once in the join, so its keys count the
version's rows (from the file's footer); a key in m old and n new rows appears m * n >=
max(m, n) times and breaks that, a repeated unmatched key or a NULL key shows in the table.

Values compare exactly with IS DISTINCT FROM, as DuckDB compares them: NULL -> value is a
change, NULL -> NULL is not, NaN equals NaN, lists and structs compare element by element (a
NULL list differs from an empty one), -0.0 equals 0.0 (the fingerprints tell those apart). A
column whose type changed compares after DuckDB's implicit cast; where DuckDB cannot compare
the two types (a string and any other, a LIST and a number), every matched row counts as
changed in that column. Without a key, the first column unique and non-NULL in both serves
(`find_unique_column`), else whole rows compare as multisets (EXCEPT ALL both ways, over the
common comparable columns): added and removed rows, never changed ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from usher_pipeline.persistence.errors import StoreError
from usher_pipeline.persistence.sql import parquet_source, quote_identifier
from usher_pipeline.persistence.versions import (
    Columns,
    connect_memory,
    find_unique_column,
    json_safe,
    load_version,
    parquet_columns,
    parquet_rows,
    unique_column,
)

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    Conn = duckdb.DuckDBPyConnection

_CATEGORICAL = frozenset({"varchar", "boolean", "enum"})
MAX_TRANSITIONS = 20  # a categorical column with more distinct old->new pairs gets none
KeySource = Literal["declared", "unique column", "whole row"]
_WHOLE = "SELECT 'added' AS change, * FROM a UNION ALL BY NAME SELECT 'removed' AS change, * FROM r"


class KeyNotUnique(StoreError):
    """A key that repeats, or is NULL, in a version of the table."""


class KeyMissing(StoreError):
    """A key column that a version of the table does not hold."""


@dataclass(frozen=True)
class Transition:
    """One old -> new pair of a categorical column (VARCHAR, BOOLEAN, ENUM): how many rows
    made it, up to `keys_per_transition` of their keys (by key) and those rows' new labels."""

    column: str
    old: Any
    new: Any
    rows: int
    keys: tuple[tuple[Any, ...], ...]
    labels: tuple[Any, ...]  # () without a label column


@dataclass(frozen=True)
class TableDiff:
    """What changed between two versions of a table: counts, schema changes, the columns that
    changed and in how many rows, transitions of categorical columns and sample rows."""

    key: tuple[str, ...]
    key_source: KeySource
    rows_old: int
    rows_new: int
    added: int
    removed: int
    changed: int
    columns_added: tuple[str, ...]
    columns_removed: tuple[str, ...]
    types_changed: tuple[tuple[str, str, str], ...]
    changed_columns: tuple[tuple[str, int], ...]
    transitions: tuple[Transition, ...]
    samples: dict[str, list[dict[str, Any]]]

    def as_json(self) -> dict[str, Any]:
        """The diff in JSON-safe values: dates, times, decimals, UUIDs as strings, bytes as
        hex, NaN and infinities as "NaN", "Infinity", "-Infinity"."""
        return {name: json_safe(value) for name, value in asdict(self).items()}


def _comparable(conn: Conn, old: Any, new: Any) -> bool:
    """Whether DuckDB compares values of types `old` and `new` without failing on some."""
    import duckdb

    if str(old) == str(new) or ("VARCHAR" in str(old)) != ("VARCHAR" in str(new)):
        return str(old) == str(new)  # a string cast to another type fails on some values
    try:
        conn.sql(f"SELECT NULL::{old} IS DISTINCT FROM NULL::{new}").fetchall()
    except duckdb.Error:
        return False
    return True


@dataclass
class _Plan:
    """One diff: the key, the label, each version's non-key columns and the common ones as
    (name, index in old_cols, index in new_cols, comparable)."""

    table: str
    old: Path
    new: Path
    key: tuple[str, ...]
    key_source: KeySource
    label: str | None
    old_cols: Columns = field(default_factory=list)
    new_cols: Columns = field(default_factory=list)
    common: list[tuple[str, int, int, bool]] = field(default_factory=list)
    types_changed: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ks(self) -> str:
        return ", ".join(f"k{i}" for i in range(len(self.key)))


def _plan(conn: Conn, old: Path, new: Path, table: str, key: Any, label: str | None) -> _Plan:
    old_all, new_all = parquet_columns(conn, old), parquet_columns(conn, new)
    key = [key] if isinstance(key, str) else key  # one column named alone
    source: KeySource = "declared" if key else "whole row"
    if key is None and (found := unique_column(conn, old, new)):
        key, source = (found,), "unique column"
    plan = _Plan(table, old, new, tuple(key or ()), source, label)
    for path, cols in ((old, old_all), (new, new_all)):
        for column in [k for k in plan.key if k not in {name for name, _ in cols}][:1]:
            raise KeyMissing(
                f"table {table} version {path.name} has no column {column} for its key: "
                f'declare the key with USHER.register("{table}", key=[...]) naming existing '
                "columns"
            )
    plan.old_cols, plan.new_cols = (
        [c for c in cs if c[0] not in plan.key] for cs in (old_all, new_all)
    )
    new_types = {name: str(kind) for name, kind in new_all}
    plan.types_changed = [
        (n, str(k), new_types[n]) for n, k in old_all if new_types.get(n, str(k)) != str(k)
    ]
    new_index = {name: j for j, (name, _) in enumerate(plan.new_cols)}
    for i, (name, kind) in enumerate(plan.old_cols):
        if (j := new_index.get(name)) is not None:
            plan.common.append((name, i, j, _comparable(conn, kind, plan.new_cols[j][1])))
    return plan


def _label_sql(plan: _Plan) -> str:
    """The label of a row of `d`: the new version's, the old one's for a removed row."""
    if plan.label is None:
        return "NULL"
    if plan.label in plan.key:
        return f"k{plan.key.index(plan.label)}"
    at = [
        [f"{p}{i}" for i, (n, _) in enumerate(c) if n == plan.label]
        for p, c in (("o", plan.old_cols), ("n", plan.new_cols))
    ]
    if at[0] and at[1]:
        return f"CASE WHEN nk0 IS NULL THEN {at[0][0]} ELSE {at[1][0]} END"
    return (at[0] or at[1] or ["NULL"])[0]


def _build(conn: Conn, plan: _Plan) -> tuple[int, int]:
    """The one pass: the table `d` of differing rows (s, k*, l, o*, n*, raw keys ok*, nk*) and
    the key checks (KeyNotUnique when a key repeats or is NULL); the rows of the two files."""
    o_key, n_key = ([f"{side}.{quote_identifier(k)}" for k in plan.key] for side in "on")
    # only references to the join's columns: struct_pack copies nothing, the list the rows kept
    fields = [f"{p}k{i} := {p}.{quote_identifier(k)}" for p in "on" for i, k in enumerate(plan.key)]
    fields += [f"o{i} := o.{quote_identifier(name)}" for i, (name, _) in enumerate(plan.old_cols)]
    fields += [f"n{j} := n.{quote_identifier(name)}" for j, (name, _) in enumerate(plan.new_cols)]
    differs = [f"{o_key[0]} IS NULL", f"{n_key[0]} IS NULL"] + [
        f"o.{quote_identifier(c)} IS DISTINCT FROM n.{quote_identifier(c)}" if comp else "true"
        for c, _, _, comp in plan.common
    ]
    conn.execute(
        f"""
        CREATE TEMP TABLE agg AS
        SELECT count({o_key[0]}) AS old_rows, count({n_key[0]}) AS new_rows,
               list(struct_pack({", ".join(fields)})) FILTER ({" OR ".join(differs)}) AS rows
        FROM {parquet_source(plan.old)} AS o FULL OUTER JOIN {parquet_source(plan.new)} AS n
        ON {" AND ".join(f"{a} = {b}" for a, b in zip(o_key, n_key, strict=True))}
        """
    )
    keys = ", ".join(f"coalesce(ok{i}, nk{i}) AS k{i}" for i in range(len(plan.key)))
    status = "CASE WHEN ok0 IS NULL THEN 'added' WHEN nk0 IS NULL THEN 'removed' ELSE 'changed' END"
    conn.execute(
        f"CREATE TEMP TABLE d AS SELECT {status} AS s, {keys}, {_label_sql(plan)} AS l, * FROM "
        "(SELECT unnest(r) FROM (SELECT unnest(rows) AS r FROM agg))"
    )
    # a NULL key part never matches, and the other side of its row is all NULL
    null_key = " OR ".join(f"k{i} IS NULL" for i in range(len(plan.key)))
    unmatched = "FILTER (s <> 'changed')"
    *joined, null_keys, repeated = conn.sql(
        f"SELECT (SELECT old_rows FROM agg), (SELECT new_rows FROM agg), count(*) FILTER "
        f"({null_key}), count(*) {unmatched} - count(DISTINCT row(s, {plan.ks})) {unmatched} FROM d"
    ).fetchall()[0]
    rows = parquet_rows(conn, plan.old), parquet_rows(conn, plan.new)
    if null_keys or repeated or tuple(joined) != rows:
        raise _not_unique(conn, plan)
    return rows


def _not_unique(conn: Conn, plan: _Plan) -> KeyNotUnique:
    """The error naming a version, its key and an example of a NULL or repeated key."""
    shown = plan.key[0] if len(plan.key) == 1 else list(plan.key)
    fix = f'declare a unique key in USHER.register("{plan.table}", key=[...]) or drop key= for '
    fix += "a whole-row diff"
    cols = ", ".join(quote_identifier(k) for k in plan.key)
    nulls = " OR ".join(f"{quote_identifier(k)} IS NULL" for k in plan.key)
    for path in (plan.old, plan.new):
        source, where = parquet_source(path), f"table {plan.table} version {path.name}"
        null_rows = conn.sql(f"SELECT count(*) FROM {source} WHERE {nulls}").fetchall()[0][0]
        if null_rows:
            return KeyNotUnique(f"{where} has {null_rows} row(s) with a NULL in key {shown}: {fix}")
        found = conn.sql(
            f"SELECT {cols}, count(*) FROM {source} GROUP BY ALL HAVING count(*) > 1 "
            "ORDER BY ALL LIMIT 1"
        ).fetchall()
        if found:
            value = found[0][0] if len(plan.key) == 1 else found[0][:-1]
            return KeyNotUnique(
                f"{where} repeats key {shown}: {value!r} appears {found[0][-1]} times: {fix}"
            )
    return KeyNotUnique(f"table {plan.table} key {shown} is not unique: {fix}")


def _whole(conn: Conn, plan: _Plan) -> tuple[int, int]:
    """Tables `r` and `a` of the rows only in the old and only in the new version, multisets
    over the common comparable columns (EXCEPT ALL both ways)."""
    cols = ", ".join(quote_identifier(name) for name, _, _, comp in plan.common if comp)
    old, new = parquet_source(plan.old), parquet_source(plan.new)
    for name, this, other in (("r", old, new), ("a", new, old)):
        rows = f"SELECT {cols} FROM {this} EXCEPT ALL SELECT {cols} FROM {other}"  # or all
        conn.execute(f"CREATE TEMP TABLE {name} AS {rows if cols else f'SELECT * FROM {this}'}")
    return parquet_rows(conn, plan.old), parquet_rows(conn, plan.new)


@contextmanager
def _diffed(
    old: Path, new: Path, table: str, key: Any, label: str | None
) -> Iterator[tuple[Conn, _Plan, tuple[int, int]]]:
    """(connection, plan, (rows old, rows new)) once the pass has made its temporary tables."""
    with connect_memory() as conn:
        plan = _plan(conn, Path(old), Path(new), table, key, label)
        rows = _build(conn, plan) if plan.key else _whole(conn, plan)
        yield conn, plan, rows


def _records(relation: duckdb.DuckDBPyRelation) -> list[dict[str, Any]]:
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def _flags(plan: _Plan) -> list[str]:
    return [f"o{i} IS DISTINCT FROM n{j}" if c else "true" for _, i, j, c in plan.common]


def _changed_columns(conn: Conn, plan: _Plan) -> list[tuple[str, int]]:
    """(column, rows whose value changed) of each common column that changed, most first."""
    counts = ", ".join(f"count(*) FILTER ({f})" for f in _flags(plan)) or "0"
    per = conn.sql(f"SELECT {counts} FROM d WHERE s = 'changed'").fetchall()[0]
    found = [(c[0], int(n)) for c, n in zip(plan.common, per, strict=False) if n]
    return sorted(found, key=lambda c: -c[1])


def _transitions(conn: Conn, plan: _Plan, changed: set[str], per_pair: int) -> list[Transition]:
    """The old -> new pairs of each changed categorical column with at most 20 of them."""
    found: list[Transition] = []
    for name, i, j, comp in plan.common:
        kinds = {plan.old_cols[i][1].id, plan.new_cols[j][1].id}
        if name not in changed or not comp or not kinds <= _CATEGORICAL:
            continue
        where = f"s = 'changed' AND o{i} IS DISTINCT FROM n{j}"
        pairs = conn.sql(
            f"SELECT o{i}, n{j}, count(*) FROM d WHERE {where} GROUP BY ALL "
            f"ORDER BY 3 DESC, 1, 2 LIMIT {MAX_TRANSITIONS + 1}"
        ).fetchall()
        if len(pairs) > MAX_TRANSITIONS:
            continue
        keyed: dict[tuple[Any, Any], list[tuple[Any, ...]]] = {}
        for row in conn.sql(
            f"SELECT o{i}, n{j}, l, {plan.ks} FROM (SELECT *, row_number() OVER (PARTITION BY "
            f"o{i}, n{j} ORDER BY {plan.ks}) AS __r FROM d WHERE {where}) "
            f"WHERE __r <= {int(per_pair)} ORDER BY {plan.ks}"
        ).fetchall():
            keyed.setdefault((row[0], row[1]), []).append(row[2:])
        for old, new, rows in pairs:
            got = keyed.get((old, new), [])
            labels = tuple(r[0] for r in got) if plan.label is not None else ()
            found.append(Transition(name, old, new, int(rows), tuple(r[1:] for r in got), labels))
    return found


def _samples(conn: Conn, plan: _Plan, n: int) -> dict[str, list[dict[str, Any]]]:
    """The first `n` added, removed and changed rows by key (of a whole-row diff: by value)."""
    sides = (("added", "n", plan.new_cols), ("removed", "o", plan.old_cols))
    if not plan.key:
        return {
            s: _records(conn.sql(f"SELECT * FROM {s[0]} ORDER BY ALL LIMIT {n}")) for s, *_ in sides
        } | {"changed": []}
    keys = ", ".join(f"k{i} AS {quote_identifier(k)}" for i, k in enumerate(plan.key))
    picked = {}
    for side, prefix, cols in sides:
        values = "".join(f", {prefix}{i} AS {quote_identifier(c)}" for i, (c, _) in enumerate(cols))
        where = f"WHERE s = '{side}' ORDER BY {plan.ks} LIMIT {n}"
        picked[side] = _records(conn.sql(f"SELECT {keys}{values} FROM d {where}"))
    cells = "".join(
        f", o{i}, n{j}, {f}" for (_, i, j, _), f in zip(plan.common, _flags(plan), strict=True)
    )
    width, picked["changed"] = len(plan.key) + 1, []
    query = f"SELECT l, {plan.ks}{cells} FROM d WHERE s = 'changed' ORDER BY {plan.ks} LIMIT {n}"
    for row in conn.sql(query).fetchall():
        differ = [(c[0], row[width + 3 * m : width + 3 * m + 3]) for m, c in enumerate(plan.common)]
        old, new = ({name: v[side] for name, v in differ if v[2]} for side in (0, 1))
        key = dict(zip(plan.key, row[1:width], strict=True))
        picked["changed"].append({"key": key, "label": row[0], "old": old, "new": new})
    return picked


def diff_parquet(
    old: Path,
    new: Path,
    *,
    table: str,
    key: Sequence[str] | None = None,
    label: str | None = None,
    samples: int = 5,
    keys_per_transition: int = 50,
) -> TableDiff:
    """The difference between two versions (Parquet files) of `table`, rows matched by `key`
    (None: a unique column, else whole rows; the module's docstring says how values compare);
    `label` names the column shown beside keys, `samples` how many rows of each kind are
    kept as examples. KeyMissing or KeyNotUnique when the key does not fit both versions."""
    with _diffed(old, new, table, key, label) as (conn, plan, rows):
        rows_of = (
            f"SELECT s, count(*) FROM {'d' if plan.key else f'({_WHOLE}) AS w (s)'} GROUP BY s"
        )
        counts = dict(conn.sql(rows_of).fetchall())
        columns = _changed_columns(conn, plan) if plan.key else []
        changed = {name for name, _ in columns}
        transitions = _transitions(conn, plan, changed, keys_per_transition)
        old_names, new_names = ({n for n, _ in cols} for cols in (plan.old_cols, plan.new_cols))
        return TableDiff(
            plan.key,
            plan.key_source,
            *rows,
            int(counts.get("added", 0)),
            int(counts.get("removed", 0)),
            int(counts.get("changed", 0)),
            tuple(n for n, _ in plan.new_cols if n not in old_names),
            tuple(n for n, _ in plan.old_cols if n not in new_names),
            tuple(plan.types_changed),
            tuple(columns),
            tuple(transitions),
            _samples(conn, plan, int(samples)),
        )


def diff_rows(
    old: Path, new: Path, *, table: str, key: Sequence[str] | None = None, label: str | None = None
) -> pl.DataFrame:
    """Every differing row of two versions of `table`, by key: `change` ("added", "removed",
    "changed"), the key columns, the label, then `<col>_old` and `<col>_new` of each common
    non-key column that changed in some row (of every common column when rows were added or
    removed, so that their values show); of a whole-row diff, `change` and the row's
    columns. Rows are matched and compared as `diff_parquet` does."""
    from usher_pipeline.persistence.frames import relation_frame

    with _diffed(old, new, table, key, label) as (conn, plan, _):
        if not plan.key:
            return relation_frame(conn.sql(f"SELECT * FROM ({_WHOLE}) ORDER BY ALL"))
        parts = ["s AS change"] + [f"k{i} AS {quote_identifier(k)}" for i, k in enumerate(plan.key)]
        if plan.label is not None and plan.label not in plan.key:
            parts.append(f"l AS {quote_identifier(plan.label)}")
        changed = dict(_changed_columns(conn, plan))
        whole = conn.sql("SELECT count(*) FROM d WHERE s <> 'changed'").fetchall()[0][0] > 0
        parts += [  # added and removed rows show every column, so every column is listed
            f"{side}{k} AS {quote_identifier(f'{name}_{which}')}"
            for name, i, j, _ in plan.common
            if name in changed or whole
            for side, k, which in (("o", i, "old"), ("n", j, "new"))
        ]
        return relation_frame(conn.sql(f"SELECT {', '.join(parts)} FROM d ORDER BY {plan.ks}, s"))


__all__ = [
    "KeyMissing",
    "KeyNotUnique",
    "TableDiff",
    "Transition",
    "diff_parquet",
    "diff_rows",
    "find_unique_column",
    "json_safe",
    "load_version",
]
