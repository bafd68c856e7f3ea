"""Save a large frame and read it back, each variant in a fresh process."""

from __future__ import annotations

from bench.harness import FULL, Measure, fresh, in_turn
from bench.results import Comparison, Row, Timing

SAVES = ("store", "bare_duckdb", "polars_parquet")
LOADS = ("load_dataframe", "bare_select", "job_read", "read_parquet")
# (columns, rows) of the wide and the long frame, each saved at the default settings;
# --quick saves a tenth of the rows
SHAPES = {"wide": (2_000, 10_000), "long": (100, 1_000_000)}


def run(measure: Measure) -> list[Row]:
    """N rows x 6 columns: Job.save against a bare DuckDB table and a bare Parquet write, and
    the library's two reads against their bare counterparts; the saving process's peak RSS."""
    sizes = measure.sizes
    data = fresh(measure.work) / "frame.parquet"
    frame_mb = measure.worker("make_frame", path=str(data), rows=sizes.big_rows)["frame_mb"]
    label = f"{sizes.big_rows:,} rows x 6"
    save = Row(
        f"save {label} (Job.save: table, sentinel, fingerprint)",
        "bare DuckDB CREATE TABLE AS SELECT * FROM df",
        "<= 1.15",
        1.15,
    )
    parquet = Row(f"save {label} (Job.save)", "polars write_parquet alone", "report", None)
    rss_limit = 1.5 * frame_mb + 300
    memory = Row(
        f"save {label}: peak RSS of the saving process",
        f"1.5 x frame ({frame_mb:.0f} MB) + 300 MB = {rss_limit:.0f} MB",
        "<= 1.0",
        1.0,
        extra=f"frame {frame_mb:.0f} MB (polars estimated_size)",
    )
    load = Row(f"load_dataframe of {label}", "bare DuckDB SELECT * into polars", "<= 1.1", 1.1)
    read = Row(
        f"downstream read of the {label} sentinel (Job.read)", "polars read_parquet", "<= 1.1", 1.1
    )
    store = measure.work / "store" / "results"
    paths = {
        "db": str(store / "pipeline.duckdb"),
        "bare_db": str(measure.work / "bare_duckdb" / "bare.duckdb"),
        "sentinel": str(store / "tables" / "big.parquet"),
    }

    def repetition(rep: int) -> dict[str, Timing]:
        timings = {}
        for variant in in_turn(SAVES, rep):
            out = fresh(measure.work / variant)
            timings[variant] = measure.timed_worker(
                "save", variant=variant, data=str(data), out=str(out)
            )
        runs: dict[str, list[Timing]] = {variant: [] for variant in LOADS}
        for inner in range(sizes.load_repeats):  # short runs: the median of a few
            for variant in in_turn(LOADS, rep + inner):
                runs[variant].append(measure.timed_worker("load", variant=variant, **paths))
        for variant, timed in runs.items():
            timings[variant] = sorted(timed, key=lambda t: t.seconds)[len(timed) // 2]
        rss = timings["store"].peak_rss_mb or 0.0
        memory.add(rss / rss_limit)
        memory.peak("store", rss)
        return timings

    comparisons = [
        Comparison(save, "store", "bare_duckdb", rss=True),
        Comparison(parquet, "store", "polars_parquet", rss=True),
        Comparison(load, "load_dataframe", "bare_select", rss=True),
        Comparison(read, "job_read", "read_parquet", rss=True),
    ]
    rows = measure.repeat("big frame", [save, parquet, memory, load, read], comparisons, repetition)
    return rows + [row for shape in SHAPES for row in shaped(measure, shape)]


def shaped(measure: Measure, shape: str) -> list[Row]:
    """A wide or a long frame saved by Job.save at the default `store.load_memory_mb`,
    against a bare DuckDB table (DuckDB's own memory limit); both processes' peak RSS."""
    columns, rows = SHAPES[shape]
    if measure.sizes.big_rows < FULL.big_rows:
        rows //= 10
    data = fresh(measure.work / shape) / "frame.parquet"
    frame_mb = measure.worker("make_shaped", path=str(data), columns=columns, rows=rows)["frame_mb"]
    row = Row(
        f"save {columns:,} columns x {rows:,} rows ({shape}; Job.save at the default memory)",
        "bare DuckDB CREATE TABLE AS SELECT * FROM df",
        "report",
        None,
        extra=f"frame {frame_mb:.0f} MB (polars estimated_size)",
    )

    def repetition(rep: int) -> dict[str, Timing]:
        timings = {}
        for variant in in_turn(("store", "bare_duckdb"), rep):
            out = fresh(measure.work / shape / variant)
            timings[variant] = measure.timed_worker(
                "save", variant=variant, data=str(data), out=str(out)
            )
        return timings

    comparison = Comparison(row, "store", "bare_duckdb", rss=True)
    return measure.repeat(f"{shape} frame", [row], [comparison], repetition)
