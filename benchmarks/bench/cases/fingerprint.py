"""The content fingerprint of a table with nested columns, against the previous encoding.

Both encodings run in one fresh interpreter per repetition, in turn (the order alternates
between repetitions), on the same table in a DuckDB file and on its Parquet copy. The
baseline is the previous fingerprint: the sum of DuckDB's `hash()` of each whole row, which
cannot tell a NULL list from an empty one (`FP1_SQL`, kept here as it was).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import BENCH, PYTHON, Measure, bench_env, fresh, in_turn
from bench.results import Comparison, Row, Timing

FP1_SQL = "SELECT count(*), coalesce(sum(hash(__usher_row)), 0) FROM {source} AS __usher_row"
VARIANTS = ("fp2", "fp1")
# rows: an id, a list of 0-4 integers (NULL every 10th row, a NULL element now and then) and
# a struct of an integer and a string (NULL every 13th row)
TABLE_SQL = """
CREATE TABLE big AS
SELECT i AS id,
       CASE WHEN i % 10 = 0 THEN NULL
            ELSE list_slice([i, CASE WHEN i % 7 = 0 THEN NULL ELSE i * 3 END, i % 11, 0],
                            1, i % 5) END AS terms,
       CASE WHEN i % 13 = 0 THEN NULL
            ELSE struct_pack(n := (i % 1000)::INTEGER, label := 'gene_' || (i % 100)) END AS info
FROM range({rows}) AS t(i)
"""


def fp1(conn: Any, source: str) -> tuple[str, int]:
    """The previous fingerprint, computed as the library computed it."""
    from usher_pipeline.hashing import sha256_json
    from usher_pipeline.persistence.fingerprint import schema_of

    schema = schema_of(conn, source)
    count, total = conn.sql(FP1_SQL.format(source=source)).fetchall()[0]
    return "fp1:" + sha256_json([schema, int(count), str(total)])[:32], int(count)


def prepare(folder: Path, rows: int) -> dict[str, str]:
    """The table in a DuckDB file and its Parquet copy; their paths."""
    import duckdb

    db, parquet = folder / "nested.duckdb", folder / "nested.parquet"
    with duckdb.connect(str(db)) as conn:
        conn.execute(TABLE_SQL.format(rows=rows))
        conn.execute(f"COPY big TO '{parquet}' (FORMAT parquet)")
    return {"db": str(db), "parquet": str(parquet)}


def measure_in_turn(db: str, parquet: str, order: list[str]) -> dict[str, dict[str, float]]:
    """Seconds and CPU seconds of each encoding on the table and on the Parquet file, in
    `order`, after one unmeasured run of each (the file read once into the OS cache)."""
    import duckdb

    from usher_pipeline.persistence.fingerprint import fingerprint_source
    from usher_pipeline.persistence.sql import parquet_source

    compute = {"fp2": fingerprint_source, "fp1": fp1}
    sources = {"table": "big", "parquet": parquet_source(parquet)}
    timings: dict[str, dict[str, float]] = {}
    with duckdb.connect(db, read_only=True) as conn:
        for where, source in sources.items():
            for variant in order:
                compute[variant](conn, source)
            for variant in order:
                started, cpu = time.perf_counter(), time.process_time()
                _, count = compute[variant](conn, source)
                timings[f"{variant} {where}"] = {
                    "seconds": time.perf_counter() - started,
                    "cpu": time.process_time() - cpu,
                    "rows": count,
                }
    return timings


def main() -> None:
    """Entry point of the measuring interpreter: JSON arguments in, JSON timings out."""
    print(json.dumps(measure_in_turn(**json.loads(sys.argv[1]))))


def run(measure: Measure) -> list[Row]:
    """The two encodings on `big_rows` rows, in the database and in Parquet."""
    rows = measure.sizes.big_rows
    paths = prepare(fresh(measure.work), rows)
    label = f"{rows:,} rows with a list and a struct column"
    table = Row(f"fingerprint of a table of {label}", "previous fingerprint (fp1)", "report", None)
    sentinel = Row(
        f"fingerprint of a Parquet file of {label}", "previous fingerprint (fp1)", "report", None
    )

    def repetition(rep: int) -> dict[str, Timing]:
        arguments = json.dumps({**paths, "order": in_turn(VARIANTS, rep)})
        code = "from bench.cases.fingerprint import main; main()"
        result = subprocess.run(
            [PYTHON, "-c", code, arguments],
            capture_output=True,
            text=True,
            env=bench_env(PYTHONPATH=str(BENCH)),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"fingerprint measurement failed:\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        for name, timing in report.items():
            if timing["rows"] != rows:
                raise RuntimeError(f"{name} counted {timing['rows']} rows, expected {rows}")
        return {name: Timing(t["seconds"], t["cpu"]) for name, t in report.items()}

    comparisons = [
        Comparison(table, "fp2 table", "fp1 table", names=("fp2", "fp1")),
        Comparison(sentinel, "fp2 parquet", "fp1 parquet", names=("fp2", "fp1")),
    ]
    return measure.repeat("fingerprint", [table, sentinel], comparisons, repetition)
