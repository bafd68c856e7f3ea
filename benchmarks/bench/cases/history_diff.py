"""The row-level diff of two versions of a table, against the FULL OUTER JOIN a user would write.

Two Parquet files of `rows` rows x 6 columns (id BIGINT, the key; two DOUBLE, a VARCHAR, a
BIGINT and a categorical VARCHAR) differ in 1% of their rows: 0.4% of the ids change a value,
0.3% are gone and as many are new. The library side is `diff_parquet(old, new, key=["id"])`
(the differing rows, the key checks, counts per column, transitions and samples); the
baseline is the statement that lists the differing rows (added, removed, changed by IS
DISTINCT FROM on every column), materialised as a temporary table in a fresh in-memory
connection. Each variant runs in a fresh interpreter per repetition, in turn (the order
alternates between repetitions), after the files were read once into the OS cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import BENCH, PYTHON, Measure, bench_env, fresh, in_turn
from bench.results import Comparison, Row, Timing

VARIANTS = ("diff_parquet", "join")
COLUMNS = ("score", "weight", "name", "count", "tier")
QUICK_ROWS = 200_000
# the old version; the new one drops ids with i % 1000 < 3, changes one column of each id
# with i % 1000 in 3..6 and adds as many new ids as were dropped
OLD_SQL = """
SELECT i AS id, (i * 0.5)::DOUBLE AS score, ((hash(i) % 100000) / 7.0)::DOUBLE AS weight,
       'gene_' || i AS name, (i % 1000)::BIGINT AS count, ['low', 'mid', 'high'][i % 3 + 1] AS tier
FROM range({rows}) AS t(i)
"""
NEW_SQL = """
SELECT id,
       CASE WHEN id % 1000 = 3 THEN score + 1 ELSE score END AS score, weight,
       CASE WHEN id % 1000 = 4 THEN name || '_renamed' ELSE name END AS name,
       CASE WHEN id % 1000 = 5 THEN count + 1 ELSE count END AS count,
       CASE WHEN id % 1000 = 6 THEN 'top' ELSE tier END AS tier
FROM ({old}) WHERE id % 1000 >= 3
UNION ALL
SELECT i AS id, (i * 0.5)::DOUBLE, 1.0::DOUBLE, 'gene_' || i, 0::BIGINT, 'new'
FROM range({rows}, {rows} + {added}) AS t(i)
"""
JOIN_SQL = """
CREATE TEMP TABLE diff AS
SELECT CASE WHEN o.id IS NULL THEN 'added' WHEN n.id IS NULL THEN 'removed'
            ELSE 'changed' END AS change,
       coalesce(o.id, n.id) AS id, {pairs}
FROM read_parquet('{old}') AS o FULL OUTER JOIN read_parquet('{new}') AS n ON o.id = n.id
WHERE o.id IS NULL OR n.id IS NULL OR {differs}
"""


def expected(rows: int) -> dict[str, int]:
    """The counts the diff must find."""
    full, rest = divmod(rows, 1000)
    dropped = 3 * full + min(rest, 3)
    return {"added": dropped, "removed": dropped, "changed": 4 * full + max(0, min(rest, 7) - 3)}


def prepare(folder: Path, rows: int) -> dict[str, str]:
    """The two versions as Parquet files; their paths."""
    import duckdb

    old, new = folder / "old.parquet", folder / "new.parquet"
    added = expected(rows)["added"]
    with duckdb.connect() as conn:
        conn.execute("SET enable_progress_bar = false")
        old_sql = OLD_SQL.format(rows=rows)
        conn.execute(f"COPY ({old_sql}) TO '{old}' (FORMAT parquet)")
        new_sql = NEW_SQL.format(old=f"SELECT * FROM read_parquet('{old}')", rows=rows, added=added)
        conn.execute(f"COPY ({new_sql}) TO '{new}' (FORMAT parquet)")
        for path in (old, new):  # every column read once, into the OS cache
            conn.sql(f"SELECT max(COLUMNS(*)) FROM read_parquet('{path}')").fetchall()
    return {"old": str(old), "new": str(new)}


def measure_one(variant: str, old: str, new: str) -> dict[str, float]:
    """Seconds, CPU seconds and the counts of one variant, in this interpreter."""
    import duckdb

    from usher_pipeline.persistence.connection import NO_EXTENSIONS
    from usher_pipeline.persistence.tablediff import diff_parquet

    started, cpu = time.perf_counter(), time.process_time()
    if variant == "diff_parquet":
        diff = diff_parquet(Path(old), Path(new), table="bench", key=["id"], label="name")
        counts = {"added": diff.added, "removed": diff.removed, "changed": diff.changed}
    else:
        pairs = ", ".join(f"o.{c} AS {c}_old, n.{c} AS {c}_new" for c in COLUMNS)
        differs = " OR ".join(f"o.{c} IS DISTINCT FROM n.{c}" for c in COLUMNS)
        with duckdb.connect(config=NO_EXTENSIONS) as conn:
            conn.execute("SET enable_progress_bar = false")  # as the library's connection
            conn.execute(JOIN_SQL.format(pairs=pairs, differs=differs, old=old, new=new))
            counts = dict(conn.sql("SELECT change, count(*) FROM diff GROUP BY ALL").fetchall())
    return {
        "seconds": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        **{name: counts.get(name, 0) for name in ("added", "removed", "changed")},
    }


def main() -> None:
    """Entry point of the measuring interpreter: JSON arguments in, JSON timing out."""
    print(json.dumps(measure_one(**json.loads(sys.argv[1]))))


def rows_of(measure: Measure) -> int:
    """10,000,000 rows at full size (`big_rows`), about 200,000 in quick mode."""
    return max(measure.sizes.big_rows, QUICK_ROWS)


def run(measure: Measure) -> list[Row]:
    """diff_parquet against the bare FULL OUTER JOIN, on two versions of `rows_of` rows."""
    rows = rows_of(measure)
    paths = prepare(fresh(measure.work), rows)
    want = expected(rows)
    row = Row(
        f"row-level diff of two Parquet versions of {rows:,} rows x 6 columns, 1% differing",
        "bare DuckDB FULL OUTER JOIN into a temp table",
        "<= 1.2",
        1.2,
    )

    def once(variant: str) -> Timing:
        code = "from bench.cases.history_diff import main; main()"
        result = subprocess.run(
            [PYTHON, "-c", code, json.dumps({"variant": variant, **paths})],
            capture_output=True,
            text=True,
            env=bench_env(PYTHONPATH=str(BENCH)),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"history diff measurement failed:\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        got = {name: report[name] for name in want}
        if got != want:
            raise RuntimeError(f"{variant} found {got}, expected {want}")
        return Timing(report["seconds"], report["cpu"])

    def repetition(rep: int) -> dict[str, Timing]:
        return {variant: once(variant) for variant in in_turn(VARIANTS, rep)}

    comparison = Comparison(row, "diff_parquet", "join")
    return measure.repeat("history_diff", [row], [comparison], repetition)
