"""Small jobs: plain polars vs the library writing the database in its jobs vs head-node ingest."""

from __future__ import annotations

from bench.harness import Measure, check_tables, template_workflow
from bench.results import Comparison, Row, Timing

# the three variants in a different order in each repetition
ORDERS = [("plain", "job", "head"), ("head", "job", "plain"), ("job", "plain", "head")]


def run(measure: Measure) -> list[Row]:
    """N + N small jobs (a source table each, and a job reading it) on each side."""
    n, rows = measure.sizes.small_jobs, measure.sizes.small_rows
    baseline = "plain polars read/write_parquet"
    job = Row(f"{n} + {n} small jobs, database written by jobs", baseline, "<= 1.4", 1.4)
    head = Row(f"{n} + {n} small jobs, head-node ingest", baseline, "<= 1.1", 1.1)

    def repetition(rep: int) -> dict[str, Timing]:
        timings = {}
        for variant in ORDERS[rep % len(ORDERS)]:
            if variant == "plain":
                workflow = template_workflow(measure.work / variant, "plain", n, rows)
            else:
                workflow = template_workflow(measure.work / variant, "library", n, rows, variant)
            timings[variant] = measure.snakemake(workflow)
            if variant != "plain":
                check_tables(workflow.folder, 2 * n)
        return timings

    # both rows name the library's times "library"
    names = ("library", "plain")
    comparisons = [Comparison(job, "job", "plain", names), Comparison(head, "head", "plain", names)]
    return measure.repeat("small jobs", [job, head], comparisons, repetition)
